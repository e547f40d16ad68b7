"""The epoch loop that the search and the training share.

Both are the same loop over a run folder (:class:`xnas_jax.runs.Run`): each
epoch draws its batches (:func:`xnas_jax.data.loading.shard_batches`, a pure
function of seed, epoch and shard, so a resumed run sees the batches it
would have seen), runs a compiled step over them with a progress bar, and ends with a
report (:class:`EpochReport`) whose summaries, record, checkpoint and line are written in
that order.  A stop request
(SIGINT, SIGTERM) saves the step in flight together with the epoch's
per-step metrics so far, and a resumed epoch logs what an uninterrupted one
does.  :mod:`xnas_jax.search` and :mod:`xnas_jax.train` pass their step,
state and epoch record; the loop is all the rest.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from xnas_jax import parallel, runs

__all__ = ["Epoch", "EpochReport", "run_epochs", "mean_metrics"]


class Epoch(NamedTuple):
    """What the loop hands the end of an epoch."""

    index: int  # 0-based
    step: int  # the steps taken at its end
    first: int  # the step within the epoch this process started at (> 0: resumed)
    metrics: list[dict[str, np.ndarray]]  # every step's metrics of the epoch, on the host
    seconds: float  # the wall time of this process's steps


class EpochReport(NamedTuple):
    """What the end of an epoch hands back to the loop to write."""

    record: dict[str, Any]  # appended to ``log.jsonl``
    line: str  # printed
    # TensorBoard summaries at the epoch's last step: the keywords of
    # :meth:`xnas_jax.runs.Run.summaries` (scalars, histograms, images, texts).
    summaries: dict[str, Any]


def run_epochs(
    run: runs.Run,
    state: Any,
    step: int,
    *,
    epochs: int,
    steps_per_epoch: int,
    start_epoch: Callable[[int, Any], tuple[Callable[..., Any], Callable[[int], Sequence[Any]]]],
    end_epoch: Callable[[Epoch, Any], EpochReport],
    log_every: int,
    postfix: Callable[[list[dict[str, np.ndarray]]], Mapping[str, str]],
    step_scalars: Callable[[dict[str, np.ndarray]], Mapping[str, float]],
    checkpoint: Callable[[Any], Any] = lambda state: state,
) -> Any:
    """Runs the epochs from ``step`` on; returns the final state.

    Args:
      run: the run folder (progress, logs, checkpoints, stop requests).
      state: the state at ``step`` (fresh, or restored by ``run.restore``).
      step: the steps already taken.
      epochs, steps_per_epoch: the run's length.
      start_epoch: ``(epoch, state) -> (step_fn, batch)``: the compiled step
        ``step_fn(state, *batch(i)) -> (state, metrics)`` and the arguments
        of the epoch's i-th step.
      end_epoch: ``(epoch, state) -> EpochReport``: the epoch's log record,
        the line printed for it and its TensorBoard summaries.
      log_every: every this many steps the progress bar shows ``postfix`` of
        the epoch's metrics so far (one read from the device), and the steps
        at multiples of it (and the last) write ``step_scalars`` of their
        metrics to TensorBoard.
      checkpoint: the tree a checkpoint holds of a state.

    Raises:
      SystemExit: after a stop request, with the step in flight saved
        (:meth:`runs.Run.stop`).
    """
    per_step: list[Any] = []  # this epoch's metrics (device arrays until read)
    if step % steps_per_epoch:  # a resumed epoch: the metrics of its first steps
        per_step = [{k: np.asarray(v, np.float32) for k, v in m.items()}
                    for m in run.checkpoints.metadata(step).get("partial_steps") or []]
    try:
        for epoch in range(step // steps_per_epoch, epochs):
            step_fn, batch = start_epoch(epoch, state)
            first = step - epoch * steps_per_epoch
            if len(per_step) != first:  # saved by another version: start the sums afresh
                per_step = []
            started = time.perf_counter()
            bar = run.progress(steps_per_epoch, first, f"epoch {epoch + 1}/{epochs}")
            try:
                for i in range(first, steps_per_epoch):
                    state, metrics = step_fn(state, *batch(i))
                    per_step.append(metrics)
                    step += 1
                    if (i + 1) % log_every == 0 or i + 1 == steps_per_epoch:
                        bar.set_postfix(**postfix(parallel.to_host(per_step)))
                    bar.update(1)
                    run.raise_if_stop_requested()
            finally:
                bar.close()
            per_step = parallel.to_host(per_step)
            seconds = time.perf_counter() - started
            for offset, metrics in enumerate(per_step):
                at = step - len(per_step) + offset + 1
                if at % log_every == 0 or at == step:
                    run.summaries(at, scalars=step_scalars(metrics))
            report = end_epoch(Epoch(epoch, step, first, per_step, seconds), state)
            run.summaries(step, **report.summaries)
            # The record before the checkpoint: a run killed between the two
            # resumes from the checkpoint before, cutting the record away, and
            # writes it again; the other order would lose it (the checkpoint
            # stands, its record not).
            run.log(report.record)
            run.save(step, checkpoint(state), {"epoch": epoch + 1})
            run.print(report.line)
            per_step = []
    except (KeyboardInterrupt, runs.StopRequested):
        partial = [{k: np.asarray(v).tolist() for k, v in m.items()}
                   for m in parallel.to_host(per_step)]
        run.stop(step, checkpoint(state), {"epoch": step / steps_per_epoch,
                                           "partial_steps": partial})
    return state


def mean_metrics(per_step: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Each metric's mean over the steps, in float32 as the steps computed them (a
    resumed epoch's saved metrics come back as Python floats)."""
    return {k: np.mean(np.asarray([m[k] for m in per_step], np.float32), axis=0)
            for k in per_step[0]}
