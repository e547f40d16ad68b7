"""Architecture search with XNAS (or the DARTS baseline): ``python -m xnas_jax.search``.

Data flows one way, in :func:`train_and_evaluate`: config -> data (two
halves per seed on the devices, :mod:`xnas_jax.data.loading`) -> the space's
supernet -> the searches' state and their jitted step
(:func:`xnas_jax.search_step.create_train_state`) -> the shared epoch loop
(:mod:`xnas_jax.loop`) over the run folder (:mod:`xnas_jax.runs`).  Each
epoch ends in :mod:`xnas_jax.search_report`, a sink on the host that turns
the searches' results into the epoch's record, line and TensorBoard view, and
at the end into the genotype files and plots.

Each run writes into its own folder (default ``runs/search/<date-time>``):
``genotype.json`` / ``genotype.txt`` / ``genotype.py`` (the discretized cell;
the last in the DARTS repository's form), ``normal.png`` /
``reduce.png`` (pictures of the cells), ``log.jsonl`` (one record per epoch:
losses, accuracies, mixture weights, rewards, active experts, genotype),
``arch_*.png`` / ``active_experts.png`` / ``losses.png`` (plots),
``config.json``, ``tensorboard/`` (losses, accuracies, both optimizers'
learning rates, u per cell type as images and histograms, the genotype as
text each epoch, the cell drawings at the end) and ``checkpoints/``.  Ctrl-C or
SIGTERM saves the step in flight and exits with status 130; ``--resume`` continues
to the same result as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from xnas_jax import cli, configs, loop, parallel, runs, search_report, search_step, spaces
from xnas_jax.spaces.darts import genotypes
from xnas_jax.checkpointing import CheckpointError
from xnas_jax.configs import SearchConfig
from xnas_jax.data import loading, specs
from xnas_jax.search_step import SearchState
from xnas_jax.spaces.ops import count_params
from xnas_jax.spaces.darts.supernet import VARIABLES_LAYOUT


def summary(config: SearchConfig) -> dict[str, Any]:
    """Parameter count and mixture-weight shapes, without compiling anything."""
    spec = specs.DATASETS[config.dataset]
    if spec.image_shape is None or spec.num_classes is None:
        raise ValueError(f"--summary needs a dataset of known shape, not {config.dataset!r}")
    model = spaces.get_space(config.space).build(config, spec.num_classes)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((2, *spec.image_shape)), train=True)
    )
    mesh = parallel.make_mesh(len(config.seed_list), config.devices)
    parallel.check_batch(mesh, config.batch_size)
    return {
        "space": config.space,
        "dataset": config.dataset,
        "image_shape": list(spec.image_shape),
        "channels": config.channels,
        "layers": config.layers,
        "ops": list(config.ops),
        "params": count_params(shapes["params"]),
        "mixture_weights": {k: list(v.shape) for k, v in shapes["arch"].items()},
        "mixture_weight_count": count_params(shapes["arch"]),
        "seeds": list(config.seed_list),
        "mesh": parallel.describe(mesh),
    }


def train_and_evaluate(config: SearchConfig) -> dict[str, Any]:
    """Runs a whole search (or several seeds at once) and writes its outputs.

    Config -> data (two halves per seed, on the devices) -> the space's
    supernet -> the searches' state and step -> the shared epoch loop ->
    the genotypes.  Returns the final epoch's record.

    Raises:
      DatasetError, CheckpointError, MeshError, RunError, ValueError: for bad
        input (the CLI turns them into one-line messages).
    """
    directory = runs.locate_run(config.out_dir, config.runs_root, config.resume)
    config = config.resolved()
    space = spaces.get_space(config.space)
    mesh = parallel.make_mesh(len(config.seed_list), config.devices)
    parallel.check_batch(mesh, config.batch_size)
    data = loading.load_search_data(config, mesh, log=print if parallel.is_writer() else _quiet)
    space.check_image_size(data.image_shape, config.layers)
    config = configs.with_data_defaults(config, data_shards=data.layout.count,
                                        image_shape=data.image_shape)
    fingerprint = {**configs.fingerprint(config), "supernet_layout": VARIABLES_LAYOUT,
                   "search_state_layout": search_step.STATE_LAYOUT}
    with runs.Run(directory, kind="search", config=dataclasses.asdict(config),
                  fingerprint=fingerprint, runs_root=config.runs_root,
                  resume=config.resume, keep_checkpoints=config.keep_checkpoints,
                  progress=config.progress, fresh=config.out_dir is None,
                  resolved={"mesh": parallel.describe(mesh)}) as run:
        model = space.build(config, data.num_classes)
        state, steps = search_step.create_train_state(config, model, data, mesh, run.print)
        line = search_report.opening_line(config, data, run.directory,
                                          steps.method.learning_rates,
                                          mesh.shape[parallel.SEED], mesh.shape[parallel.DATA])
        step_scalars = search_report.step_scalars(config.seed_list, sorted(state.arch))
        state, step = run.restore(state)
        run.print(line)

        def end_epoch(epoch: loop.Epoch, state: SearchState):
            host = search_step.host_results(state, steps.method)
            return search_report.end_epoch(
                config, space, epoch, host, dict(steps.computed), steps.compile_seconds,
                data.steps_per_epoch, steps.method.learning_rates, steps.schedule,
                previous=run.records, draw=run.writer)

        def postfix(per_step):
            return {"loss": f"{per_step[-1]['train_loss'].mean():.3f}",
                    "val": f"{per_step[-1]['val_loss'].mean():.3f}"}

        state = loop.run_epochs(
            run, state, step, epochs=config.epochs, steps_per_epoch=data.steps_per_epoch,
            start_epoch=steps.start_epoch, end_epoch=end_epoch, log_every=config.log_every,
            postfix=postfix, step_scalars=step_scalars)
        if not run.records:
            raise ValueError("the search ran no epoch")
        search_report.write_outputs(config, space, run,
                                    search_step.host_results(state, steps.method))
        record = run.records[-1]
        run.finish(step=record["step"], val_accuracy=record["val_accuracy"])
    return record


def _quiet(*args: Any) -> None:
    pass


# ------------------------------------------------------------------ CLI


def parser() -> cli.ArgumentParser:
    """The command line: every :class:`SearchConfig` field, plus ``--summary``."""
    p = configs.build_parser(
        SearchConfig, prog="python -m xnas_jax.search",
        description="Differentiable architecture search with XNAS (Nayman et al., 2019) on the "
        "DARTS search space. Each run writes a new folder under --runs-root.")
    p.add_argument("--summary", action="store_true",
                   help="print one JSON line (parameter count, mixture shapes, seeds, device "
                   "mesh) and exit")
    return p


def parse_args(argv: Sequence[str] | None = None):
    """The :class:`SearchConfig` of a command line, and the parsed flags."""
    return configs.parse_command_line(SearchConfig, parser(), argv)


def main(argv: Sequence[str] | None = None) -> None:
    """The command line: one-line ``error: ...`` and exit 2 on bad input."""
    config, args = parse_args(argv)
    try:
        parallel.initialize_distributed(config.coordinator_address, config.num_processes,
                                        config.process_id)
        resolved = config.resolved()
        space = spaces.get_space(resolved.space)
        spec_shape = specs.DATASETS[config.dataset].image_shape
        if args.summary:
            space.check_image_size(spec_shape or (32, 32), resolved.layers)
            print(json.dumps(summary(resolved)))
            return
        if spec_shape is not None:  # fail fast, before loading anything
            space.check_image_size(spec_shape, resolved.layers)
        cli.use_compilation_cache(config.compilation_cache)
        train_and_evaluate(config)
    except (specs.DatasetError, CheckpointError, genotypes.GenotypeError, ValueError) as error:
        cli.fail(str(error))  # MeshError, ConfigError and RunError are ValueErrors


if __name__ == "__main__":
    main()
