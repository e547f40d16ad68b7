"""Trains the evaluation network of a found cell from scratch.

``python -m xnas_jax.train --genotype XNAS --dataset cifar10 --data-dir DIR``

The cell may be of any space that trains its cells
(:class:`xnas_jax.spaces.TrainableSpace`): a DARTS cell (a published name or
a DARTS search's ``genotype.json``) or an nb201 one (its cell string or an
nb201 search's ``genotype.json``); :func:`xnas_jax.spaces.read_genotype`
finds its space, and the space builds the evaluation network.

Named recipes (``--recipe``, :data:`xnas_jax.configs.RECIPES`) set every
optimization and regularization setting at once, and each flag overrides
one: ``xnas``, the recipe of XNAS section 4.2; ``darts``, DARTS's recipe,
which the XNAS paper calls XNAS-Plain; ``xnas-imagenet`` (section 4.3); and
``nb201``, NAS-Bench-201's own training.  Without ``--recipe`` a cell takes
its space's recipe (darts, or nb201).  Test evaluation after every epoch.

The parts follow the Flax examples: the state and the pure steps are in
:mod:`xnas_jax.train_step`; :func:`train_and_evaluate` compiles them once
and runs them in the shared epoch loop (:mod:`xnas_jax.loop`) over the run
harness (:mod:`xnas_jax.runs`: run folder, ``config.json``, ``log.jsonl``,
TensorBoard scalars, step-numbered checkpoints, stop on SIGINT/SIGTERM with
exact resume), and writes ``results.json``.
``--summary`` prints the parameter count and multiply-adds as one JSON line
without touching any data.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from xnas_jax import cli, configs, loop, parallel, runs
from xnas_jax import train_step as steps
from xnas_jax.checkpointing import CheckpointError
from xnas_jax.configs import ConfigError, TrainConfig
from xnas_jax.data import loading, shards, specs
from xnas_jax.prng import prng_key

__all__ = ["train_and_evaluate", "parse_args", "main"]

RESULTS_FILE = "results.json"


def train_and_evaluate(config: TrainConfig) -> dict[str, Any]:
    """Trains and evaluates in a run folder (:mod:`xnas_jax.runs`); writes ``results.json``.

    Returns:
      The results also written to ``results.json``.

    Raises:
      GenotypeError, DatasetError, CheckpointError, ConfigError, RunError: a
        bad genotype, missing data, checkpoints that cannot be continued, or
        settings that do not fit the data.
    """
    cell = steps.read_cell(config)
    mesh = parallel.make_mesh(1, config.devices)
    parallel.check_batch(mesh, config.batch_size)
    parallel.check_batch(mesh, config.eval_batch_size, "--eval-batch-size")
    directory = runs.locate_run(config.out_dir, config.runs_root, config.resume)
    config = configs.with_data_defaults(config, data_shards=shards.default_count(mesh))
    layout, train_data, test_data = loading.load_train_data(config, mesh)
    setup = steps.resolve_setup(config, train_data.image_shape, train_data.num_classes, cell)
    model = steps.build_model(config, setup)
    stats = steps.network_summary(model, setup)
    mean, std = jnp.asarray(train_data.mean), jnp.asarray(train_data.std)
    steps_per_epoch = train_data.size // (config.batch_size // layout.count)
    if config.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    if (config.learning_rate_schedule == "power_cosine"
            and config.cycles > config.epochs * steps_per_epoch):
        raise ConfigError(
            f"--cycles {config.cycles} exceeds the run's {config.epochs * steps_per_epoch} steps")
    schedule = steps.learning_rate_schedule(config, steps_per_epoch)
    resolved = {f.name: getattr(setup, f.name) for f in dataclasses.fields(steps.Setup)
                if f.name not in ("genotype",)}
    resolved["mesh"] = parallel.describe(mesh)
    with runs.Run(directory, kind="train",
                  config=dataclasses.asdict(config), resolved=resolved,
                  fingerprint={**configs.fingerprint(config),
                               "genotype": cell.genotype},
                  runs_root=config.runs_root, resume=config.resume,
                  keep_checkpoints=config.keep_checkpoints, progress=config.progress,
                  fresh=config.out_dir is None) as run:
        state = steps.create_train_state(prng_key(config.seed), model, setup.image_shape,
                                   steps.create_optimizer(config, schedule))
        # Replicated over the mesh, like a restored state, so that a fresh and
        # a resumed run compile the same program (and share the compilation cache).
        everywhere = parallel.replicated(mesh)
        state = jax.tree.map(lambda a: parallel.global_array(parallel.to_host(a), everywhere),
                             state)
        restored, step = run.restore(steps.checkpoint_tree(state))
        state = state.replace(**restored)

        train_device, test_device = (shards.to_devices(d, layout, mesh)
                                     for d in (train_data, test_data))
        gather = steps.make_gather(mesh)
        split = parallel.batch_sharding(mesh)
        step_fn = functools.partial(steps.train_step, config=config, setup=setup,
                                    steps_per_epoch=steps_per_epoch, mean=mean, std=std)
        eval_fn = functools.partial(steps.eval_step, mean=mean, std=std)
        # Compiled ahead of time, once: a call with other shapes would fail
        # instead of silently retracing.  That takes a minute or more: say so.
        run.print("compiling the training and evaluation steps...")
        compile_start = time.perf_counter()
        p_train_step, p_eval_step = steps.compile_steps(
            state, mesh, step_fn, eval_fn, gather(train_device, parallel.global_array(
                np.zeros(config.batch_size, np.int32), split)),
            gather(test_device, parallel.global_array(
                np.zeros(config.eval_batch_size, np.int32), split)))
        compile_time = time.perf_counter() - compile_start
        run.print(f"training in {run.directory}: {setup.genotype_name} on {config.dataset}, "
                  f"{config.epochs} epochs x {steps_per_epoch} steps of batch "
                  f"{config.batch_size} (compiled in {compile_time:.1f} s)")

        throughputs: list[float] = []
        last: dict[str, Any] = {}  # the last epoch's record and test metrics

        def start_epoch(epoch, state):
            batches = loading.shard_batches(layout, np.arange(train_data.size), config.seed,
                                            epoch, config.batch_size, steps_per_epoch,
                                            train_data.size)
            return p_train_step, lambda i: (
                gather(train_device, parallel.global_array(batches[i], split)),)

        def end_epoch(epoch: loop.Epoch, state):
            means = loop.mean_metrics(epoch.metrics)
            images_per_second = ((steps_per_epoch - epoch.first) * config.batch_size
                                 / epoch.seconds)
            throughputs.append(images_per_second)
            eval_start = time.perf_counter()
            last["test"] = steps.evaluate(p_eval_step, gather, state, test_device, test_data.sizes,
                                     config.eval_batch_size, mesh, layout)
            eval_time = time.perf_counter() - eval_start
            lr = float(schedule(epoch.index * steps_per_epoch))
            record = {
                "epoch": epoch.index + 1,
                "step": epoch.step,
                "lr": lr,
                "drop_path_prob": config.drop_path_prob * epoch.index / config.epochs,
                "train_loss": float(means["loss"]),
                "train_aux_loss": float(means["aux_loss"]),
                "train_accuracy": float(means["accuracy"]),
                "test_loss": last["test"]["loss"],
                "test_accuracy": last["test"]["accuracy"],
                "train_time_s": round(epoch.seconds, 3),
                "eval_time_s": round(eval_time, 3),
                "train_images_per_s": round(images_per_second, 1),
                "eval_images_per_s": round(sum(test_data.sizes) / eval_time, 1),
            }
            last["record"] = record
            scalars = {"epoch/test_loss": record["test_loss"],
                       "epoch/test_accuracy": record["test_accuracy"],
                       "epoch/train_loss": record["train_loss"], "epoch/learning_rate": lr}
            return loop.EpochReport(record, json.dumps(record), {"scalars": scalars})

        def postfix(per_step):
            means = loop.mean_metrics(per_step)
            return {"loss": f"{means['loss']:.4f}", "acc": f"{means['accuracy']:.4f}"}

        run_start = time.perf_counter()
        state = loop.run_epochs(
            run, state, step, epochs=config.epochs, steps_per_epoch=steps_per_epoch,
            start_epoch=start_epoch, end_epoch=end_epoch, log_every=config.log_every,
            postfix=postfix,
            step_scalars=lambda m: {f"step/{k}": float(v) for k, v in m.items()},
            checkpoint=steps.checkpoint_tree)
        test_metrics, epoch_record = last.get("test"), last.get("record")

        if test_metrics is None:  # resumed a finished run: evaluate what it left.
            test_metrics = steps.evaluate(p_eval_step, gather, state, test_device, test_data.sizes,
                                     config.eval_batch_size, mesh, layout)
        # The first epoch of a process warms caches; later epochs show the rate.
        steady = throughputs[1:] or throughputs
        results = {
            "genotype": setup.genotype_name,
            "genotype_cell": cell.genotype,
            "space": cell.space,
            "dataset": config.dataset,
            "network": setup.variant,
            "channels": setup.channels,
            "layers": setup.layers,
            "epochs": config.epochs,
            "test_accuracy": test_metrics["accuracy"],
            "test_error": round(100.0 * (1.0 - test_metrics["accuracy"]), 4),
            "test_loss": test_metrics["loss"],
            "train_images_per_s": round(float(np.median(steady)), 1) if steady else None,
            "eval_images_per_s": epoch_record["eval_images_per_s"] if epoch_record else None,
            "compile_time_s": round(compile_time, 2),
            "run_time_s": round(time.perf_counter() - run_start, 2),
            "device": str(jax.devices()[0].device_kind),
            "mesh": parallel.describe(mesh),
            **stats,
            "run_dir": str(run.directory),
            "config": dataclasses.asdict(config),
        }
        if run.writer:
            (run.directory / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
        run.finish(test_accuracy=results["test_accuracy"])
    return results


# --------------------------------------------------------------------------
# Summary and command line.


def parser() -> cli.ArgumentParser:
    """The command line: every :class:`TrainConfig` field, plus ``--summary`` and its shape."""
    p = configs.build_parser(
        TrainConfig, prog="python -m xnas_jax.train",
        description="Train the evaluation network of a cell (XNAS section 4.2). Each run "
        "writes a new folder under --runs-root.",
        choices={"dataset": sorted(specs.DATASETS) + sorted(steps.SUMMARY_ONLY_DATASETS)})
    g = p.add_argument_group("summary")
    g.add_argument("--summary", action="store_true",
                   help="print params and FLOPs as one JSON line and exit (reads no data)")
    g.add_argument("--image-size", type=cli.positive_int, default=None,
                   help="--summary: square image side when the dataset does not fix it")
    g.add_argument("--image-channels", type=cli.positive_int, default=3,
                   help="--summary: image channels when the dataset does not fix them")
    g.add_argument("--num-classes", type=cli.positive_int, default=None,
                   help="--summary: classes when the dataset does not fix them")
    return p


def parse_args(argv: Sequence[str] | None = None):
    """The :class:`TrainConfig` of a command line, and the parsed flags."""
    p = parser()
    config, args = configs.parse_command_line(TrainConfig, p, argv)
    if config.learning_rate_min >= config.learning_rate:
        p.error(f"--learning-rate-min {config.learning_rate_min} must be below --learning-rate "
                f"{config.learning_rate}")
    if config.learning_rate_schedule == "power_cosine" and config.power_exponent < 1:
        p.error(f"--power-exponent must be >= 1, got {config.power_exponent}")
    return config, args


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: one-line ``error: ...`` and exit 2 on bad input."""
    config, args = parse_args(argv)
    try:
        if args.summary:
            image_shape = None
            if args.image_size is not None:
                image_shape = (args.image_size, args.image_size, args.image_channels)
            print(json.dumps(steps.summary(config, image_shape, args.num_classes)), flush=True)
            return 0
        if config.dataset in steps.SUMMARY_ONLY_DATASETS:
            cli.fail(
                f"--dataset {config.dataset} is only known by its shape, for --summary; to train, "
                f"pass its images as --dataset image_folder --data-dir DIR"
            )
        steps.read_cell(config)  # fail before touching the disk.
        parallel.initialize_distributed(config.coordinator_address, config.num_processes,
                                        config.process_id)
        cli.use_compilation_cache(config.compilation_cache)
        results = train_and_evaluate(config)
    except (specs.DatasetError, CheckpointError, ValueError) as error:
        cli.fail(str(error))
    if parallel.is_writer():
        print(json.dumps({k: v for k, v in results.items()
                          if k not in ("config", "genotype_cell")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
