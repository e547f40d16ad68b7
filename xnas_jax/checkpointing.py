"""Step-numbered checkpoints of a run: one pytree plus JSON metadata.

A thin layer over orbax's ``CheckpointManager``, used by the run harness
(:mod:`xnas_jax.runs`) for the search and the training alike.  It adds the
guarantees a long run needs on top of orbax:

* **No silent overwrite.**  Opening a directory that already holds checkpoints
  without ``resume=True`` is an error (a fresh run would otherwise mix its
  checkpoints with an older run's), and saving a step that exists is an error.
* **Compatibility is checked, not assumed.**  Each checkpoint stores the run's
  *fingerprint* (a JSON dict of the settings that make two runs the same run:
  architecture, data, optimizer, schedule...) and the *signature* of the
  pytree (path, shape and dtype of every leaf).  Resuming with a different
  fingerprint, or into a target pytree of another structure, fails with a
  message naming the directory and the first differences.
* **Corruption is detected.**  Each checkpoint stores a SHA-256 digest of
  every array.  A checkpoint orbax cannot read (missing or garbled files, bad
  JSON), or whose arrays do not match their digests (flipped bytes that still
  decode), raises :class:`CorruptCheckpoint` naming its path and the first bad
  array.  :meth:`Checkpointer.restore_latest_good` moves such a checkpoint
  aside (to ``<directory>/../corrupt/<step>``), says so, and falls back to the
  previous one: never silently, and never deleting anything.

Typical use::

    with Checkpointer(out_dir / "checkpoints", fingerprint=config_dict,
                      max_to_keep=3, resume=args.resume) as checkpoints:
        restored = checkpoints.restore_latest(state_tree)  # None on a fresh run
        start = 0 if restored is None else restored.step
        if restored is not None:
            state_tree = restored.tree
        for epoch in range(start, epochs):
            state_tree = ...  # one epoch of work
            checkpoints.save(epoch + 1, state_tree, {"epoch": epoch + 1, ...})

The step number is the caller's choice; both loops use the optimizer steps
completed, so ``restored.step`` is the step to continue from.  Leaves are
arrays (numpy or jax, typed PRNG keys included) or Python scalars.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from xnas_jax import parallel

__all__ = [
    "CheckpointError", "CorruptCheckpoint", "Restored", "Checkpointer", "tree_signature",
    "tree_checksums",
]

_FORMAT = "xnas_jax.checkpoint/1"
_STATE = "state"
_METADATA = "metadata"
_MAX_LISTED = 5  # differences quoted in an error message.


class CheckpointError(RuntimeError):
    """A checkpoint directory cannot be used as asked: it holds another run's
    checkpoints, an incompatible or corrupt checkpoint, or the step exists."""


class CorruptCheckpoint(CheckpointError):
    """A checkpoint whose files cannot be read or whose arrays fail their digests."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


@dataclasses.dataclass(frozen=True)
class Restored:
    """What :meth:`Checkpointer.restore_latest` returns."""

    step: int  # the checkpoint's step (the trainers use epochs completed).
    tree: Any  # the pytree, in the structure and placement of the target.
    metadata: dict[str, Any]  # the caller's metadata saved with it.


def tree_signature(tree: Any) -> dict[str, list]:
    """``{leaf path: [shape, dtype]}`` of a pytree, as stored in checkpoints.

    Leaves may be arrays or ``jax.ShapeDtypeStruct``; Python scalars count as
    0-d arrays.
    """
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    signature = {}
    for path, leaf in leaves:
        if not hasattr(leaf, "shape"):
            leaf = np.asarray(leaf)
        signature[jax.tree_util.keystr(path)] = [list(leaf.shape), str(leaf.dtype)]
    return signature


def _leaf_bytes(leaf: Any) -> bytes:
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
    array = parallel.to_host(leaf)
    return str(array.dtype).encode() + str(array.shape).encode() + array.tobytes()


def tree_checksums(tree: Any) -> dict[str, str]:
    """``{leaf path: SHA-256 hex digest of dtype, shape and bytes}`` of a pytree.

    Saved with every checkpoint and recomputed on restore, so that a file
    whose bytes changed on disk is caught before the run uses it.
    """
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        jax.tree_util.keystr(path): hashlib.sha256(_leaf_bytes(leaf)).hexdigest()
        for path, leaf in leaves
    }


def _place_like(restored: Any, target: Any) -> Any:
    sharding = getattr(target, "sharding", None)
    if sharding is None or not isinstance(restored, jax.Array):
        return restored
    return jax.device_put(restored, sharding)


def _jsonable(value: Mapping[str, Any], what: str) -> dict[str, Any]:
    # A JSON round trip normalizes tuples to lists, so saved and current
    # fingerprints compare equal when they describe the same settings.
    try:
        return json.loads(json.dumps(dict(value), sort_keys=True))
    except (TypeError, ValueError) as error:
        raise TypeError(f"{what} must be JSON-serializable: {error}") from None


def _differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    missing = object()
    lines = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key, missing), current.get(key, missing)
        if old != new:
            show = lambda v: "(absent)" if v is missing else json.dumps(v)  # noqa: E731
            lines.append(f"{key}: saved {show(old)}, now {show(new)}")
    return lines


def _summarize(lines: list[str]) -> str:
    shown = "; ".join(lines[:_MAX_LISTED])
    if len(lines) > _MAX_LISTED:
        shown += f"; and {len(lines) - _MAX_LISTED} more"
    return shown


def _reason(error: BaseException, limit: int = 300) -> str:
    """An exception as one line of at most about ``limit`` characters, with its type."""
    reason = " ".join(str(error).split())
    if len(reason) > limit:
        reason = reason[:limit] + "..."
    return f"{type(error).__name__}: {reason}"


def _tree_bytes(tree: Any) -> int:
    """About the bytes a checkpoint of ``tree`` takes: its arrays, and orbax's files per leaf."""
    leaves = jax.tree.leaves(tree)
    arrays = sum(int(np.prod(np.shape(leaf))) * np.dtype(getattr(leaf, "dtype", np.float64)
                                                         ).itemsize
                 if not (isinstance(leaf, jax.Array)
                         and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key))
                 else jax.random.key_data(leaf).nbytes for leaf in leaves)
    return arrays + 1024 * len(leaves) + 65536


class Checkpointer:
    """The checkpoints of one run in one directory (see the module docstring).

    Args:
      directory: where the step subdirectories live (created if needed).
      fingerprint: JSON-serializable settings that must match for a resume.
      max_to_keep: how many of the newest checkpoints to keep (older ones are
        deleted after each save).
      resume: whether existing checkpoints may be continued.  Without it an
        existing checkpoint is an error.
      tolerate_corrupt: open even if the latest checkpoint's metadata is
        unreadable (for :meth:`restore_latest_good`, which moves it aside).

    Raises:
      CheckpointError: if the directory holds checkpoints and ``resume`` is
        False, or if ``resume`` is True and the latest checkpoint's metadata
        is unreadable or its fingerprint differs from ``fingerprint``.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        fingerprint: Mapping[str, Any],
        max_to_keep: int = 3,
        resume: bool = False,
        tolerate_corrupt: bool = False,
    ):
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
        self.directory = Path(directory).absolute()
        self.fingerprint = _jsonable(fingerprint, "fingerprint")
        try:
            self._manager = ocp.CheckpointManager(
                self.directory,
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=max_to_keep,
                    create=True,
                    # Saves are small (one network) and once per epoch; a
                    # synchronous save keeps "saved" meaning "on disk".
                    enable_async_checkpointing=False,
                ),
            )
        except Exception as error:  # orbax raises many types for a bad path.
            raise CheckpointError(
                f"cannot open checkpoint directory {str(self.directory)!r}: {error}"
            ) from None
        try:
            existing = self.steps
            if existing and not resume:
                raise CheckpointError(
                    f"checkpoint directory {str(self.directory)!r} already holds checkpoints "
                    f"(steps {existing}); pass --resume to continue that run, or choose "
                    f"another output directory"
                )
            if existing:
                try:
                    self._check_fingerprint(existing[-1])
                except CorruptCheckpoint:
                    if not tolerate_corrupt:
                        raise
        except BaseException:
            self._manager.close()
            raise

    # -- queries ----------------------------------------------------------

    @property
    def steps(self) -> list[int]:
        """The saved steps, oldest first."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    @property
    def latest_step(self) -> int | None:
        steps = self.steps
        return steps[-1] if steps else None

    def step_path(self, step: int) -> Path:
        return self.directory / str(step)

    def metadata(self, step: int | None = None) -> dict[str, Any]:
        """The caller's metadata saved with ``step`` (default: the latest)."""
        return self._read_metadata(self._resolve(step))["user"]

    # -- save / restore ---------------------------------------------------

    def save(self, step: int, tree: Any, metadata: Mapping[str, Any] | None = None) -> None:
        """Writes ``tree`` and ``metadata`` as checkpoint ``step`` (blocking).

        The room it needs is reserved first (:meth:`_reserve`), so that a
        full disk is found before orbax starts writing: orbax's writes run on
        several threads, and when one fails the others print tracebacks as
        they end.  A write that fails all the same leaves the earlier
        checkpoints as they were: orbax writes into a temporary folder and
        renames it when complete, and the unfinished folder is replaced when
        the step is saved again.

        Raises:
          CheckpointError: if ``step`` is already saved (never overwritten), or
            cannot be written (naming the step that stands).
          TypeError: if ``metadata`` is not JSON-serializable.
        """
        step = int(step)
        saved_before = self.steps
        if step in saved_before:
            raise CheckpointError(
                f"checkpoint {str(self.step_path(step))!r} already exists; refusing to overwrite it"
            )
        record = {
            "format": _FORMAT,
            "step": step,
            "fingerprint": self.fingerprint,
            "signature": tree_signature(tree),
            "checksums": tree_checksums(tree),
            "user": _jsonable(metadata or {}, "metadata"),
        }
        try:
            self._reserve(step, _tree_bytes(tree))
            saved = self._manager.save(
                step,
                args=ocp.args.Composite(
                    **{_STATE: ocp.args.StandardSave(tree), _METADATA: ocp.args.JsonSave(record)}
                ),
            )
            self._manager.wait_until_finished()
        except Exception as error:  # a full disk, a file-size limit, a lost mount...
            kept = (f"checkpoint {saved_before[-1]} is intact: make room and continue with "
                    f"--resume" if saved_before else "no earlier checkpoint")
            raise CheckpointError(
                f"cannot write checkpoint {str(self.step_path(step))!r} "
                f"({_reason(error)}); {kept}") from None
        if not saved:  # orbax declines some saves silently; this one must happen.
            raise CheckpointError(f"orbax did not save checkpoint {str(self.step_path(step))!r}")

    def restore_latest(self, target: Any) -> Restored | None:
        """Restores the newest checkpoint into the structure of ``target``.

        Args:
          target: a pytree of arrays or ``jax.ShapeDtypeStruct`` with the
            structure, shapes and dtypes of the saved tree (e.g. a freshly
            initialized state); the result takes its placement.

        Returns:
          None if the directory holds no checkpoint, else a :class:`Restored`.

        Raises:
          CheckpointError: if the checkpoint is corrupt, was written by a run
            with another fingerprint, or holds a tree of another structure.
        """
        step = self.latest_step
        if step is None:
            return None
        return self.restore(step, target)

    def restore(self, step: int, target: Any) -> Restored:
        """Like :meth:`restore_latest`, for a given step."""
        step = self._resolve(step)
        record = self._check_fingerprint(step)
        differences = _differences(record["signature"], tree_signature(target))
        if differences:
            raise CheckpointError(
                f"checkpoint {str(self.step_path(step))!r} holds a tree of another structure "
                f"than this run's: {_summarize(differences)}"
            )
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(target)}),
            )
        except Exception as error:
            raise self._corrupt(step, error) from None
        # Leaves take the target's sharding.  They come back committed to
        # their device: a caller that wants the same compiled program for a
        # fresh and a restored tree commits the fresh one too (device_put).
        saved_sums = record.get("checksums", {})
        for path, digest in tree_checksums(restored[_STATE]).items():
            if saved_sums.get(path, digest) != digest:
                raise CorruptCheckpoint(
                    f"checkpoint {str(self.step_path(step))!r} is corrupt: array {path} does not "
                    f"match the digest saved with it", step)
        tree = jax.tree.map(_place_like, restored[_STATE], target)
        return Restored(step=step, tree=tree, metadata=record["user"])

    def restore_latest_good(self, target: Any, log=None) -> Restored | None:
        """The newest checkpoint that restores intact, moving corrupt ones aside.

        A corrupt checkpoint (unreadable, or an array that fails its digest)
        is moved to ``<directory>/../corrupt/<step>`` and reported through
        ``log`` (default: stderr); the previous checkpoint is tried next.
        Fingerprint and structure mismatches are errors, not corruption.

        Returns:
          None if the directory holds no checkpoint, else a :class:`Restored`.

        Raises:
          CheckpointError: if every checkpoint is corrupt, or one was written
            by another run.
        """
        log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        while (step := self.latest_step) is not None:
            try:
                return self.restore(step, target)
            except CorruptCheckpoint as error:
                moved = self._quarantine(step)
                earlier = self.latest_step
                log(f"warning: {error}; moved it to {str(moved)!r}; "
                    + (f"resuming from step {earlier}" if earlier is not None
                       else "no earlier checkpoint, starting over"))
        return None

    def _quarantine(self, step: int) -> Path:
        corrupt = self.directory.parent / "corrupt"
        destination = corrupt / str(step)
        suffix = 1
        while destination.exists():
            suffix += 1
            destination = corrupt / f"{step}.{suffix}"
        parallel.barrier(f"found checkpoint {step} corrupt")
        if parallel.is_writer():  # process 0 moves it; the others wait for that
            corrupt.mkdir(exist_ok=True)
            shutil.move(str(self.step_path(step)), destination)
        parallel.barrier(f"moved checkpoint {step}")
        self._manager.reload()
        return destination

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- internals --------------------------------------------------------

    def _resolve(self, step: int | None) -> int:
        steps = self.steps
        if step is None:
            if not steps:
                raise CheckpointError(f"no checkpoint in {str(self.directory)!r}")
            return steps[-1]
        if step not in steps:
            raise CheckpointError(
                f"no checkpoint for step {step} in {str(self.directory)!r} (saved: {steps})"
            )
        return step

    def _reserve(self, step: int, size: int) -> None:
        """Checks that ``size`` bytes can be written here, by allocating them in a file.

        Raises:
          OSError: no space left (ENOSPC), a file-size limit (EFBIG), ...
        """
        probe = self.directory / f".room_for_step_{step}.process_{jax.process_index()}"
        try:
            with probe.open("wb") as f:
                if hasattr(os, "posix_fallocate"):
                    os.posix_fallocate(f.fileno(), 0, size)
                else:  # pragma: no cover (not Linux)
                    f.truncate(size)
        finally:
            probe.unlink(missing_ok=True)

    def _corrupt(self, step: int, error: BaseException) -> CheckpointError:
        return CorruptCheckpoint(
            f"checkpoint {str(self.step_path(step))!r} is corrupt or unreadable "
            f"({_reason(error)})", step)

    def _read_metadata(self, step: int) -> dict[str, Any]:
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(**{_METADATA: ocp.args.JsonRestore()})
            )
            record = restored[_METADATA]
        except Exception as error:
            raise self._corrupt(step, error) from None
        if not isinstance(record, dict) or record.get("format") != _FORMAT:
            raise CheckpointError(
                f"checkpoint {str(self.step_path(step))!r} was not written by "
                f"xnas_jax.checkpointing (metadata format "
                f"{record.get('format') if isinstance(record, dict) else record!r})"
            )
        return record

    def _check_fingerprint(self, step: int) -> dict[str, Any]:
        record = self._read_metadata(step)
        differences = _differences(record["fingerprint"], self.fingerprint)
        if differences:
            raise CheckpointError(
                f"checkpoint {str(self.step_path(step))!r} was written by an incompatible run "
                f"({_summarize(differences)}); resume with the original settings or use "
                f"another output directory"
            )
        return record
