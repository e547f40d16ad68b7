"""Architecture search with XNAS (or the DARTS baseline): ``python -m xnas_jax.search``.

Data flows one way: config -> data (two halves on the device,
:mod:`xnas_jax.data.loading`) -> the space's supernet -> the jitted search
step (:mod:`xnas_jax.search_step`) -> the shared epoch loop
(:mod:`xnas_jax.loop`) over the run harness (:mod:`xnas_jax.runs`);
:mod:`xnas_jax.search_report` writes what a search reports.

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
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from xnas_jax import (cli, configs, loop, optimizers, parallel, runs, search_report,
                      search_step, spaces)
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
        "mesh": parallel.describe(make_mesh(config)),
    }


def make_mesh(config: SearchConfig):
    """The ``seed x data`` mesh of a config; checks that the batch splits over it.

    Raises:
      MeshError: too many devices asked for, or a batch that does not split.
    """
    mesh = parallel.make_mesh(len(config.seed_list), config.devices)
    parallel.check_batch(mesh, config.batch_size)
    return mesh


# ------------------------------------------------------------------ data


def load_data(config: SearchConfig, space: spaces.SearchSpace, mesh,
              log=print) -> tuple[SearchConfig, loading.SearchData]:
    """This process's shards of the training set, split per seed
    (:func:`xnas_jax.data.loading.load_search_data`), and the config with the data's
    defaults filled in (:func:`xnas_jax.configs.with_data_defaults`).

    Raises:
      DatasetError, MeshError, ValueError: missing data, or images, batch and
        shards that do not fit the network or the mesh.
    """
    data = loading.load_search_data(config, mesh, log)
    space.check_image_size(data.image_shape, config.layers)
    return configs.with_data_defaults(config, data_shards=data.layout.count,
                                      image_shape=data.image_shape), data



def preprocess(config: SearchConfig, data: loading.SearchData) -> search_step.Preprocess:
    """How the step augments and normalizes the data's uint8 batches."""
    return search_step.Preprocess(data.mean, data.std, config.crop_padding, bool(config.flip))


# ------------------------------------------------------------------ state


def create_train_state(config: SearchConfig, space: spaces.SearchSpace,
                       data: loading.SearchData, mesh):
    """The supernet, its optimizers and the initial states of the searches (seed axis first).

    Returns:
      ``(model, state, weight_tx, method)``: the architecture method
      (:func:`search_step.make_arch_method`) plays its rounds over the steps
      after the warm-up, XNAS's horizon T.
    """
    total_steps = data.steps_per_epoch * config.epochs
    model = space.build(config, data.num_classes)
    method = search_step.make_arch_method(
        config, model.feedback_replicas(),
        total_steps - config.warmup_epochs * data.steps_per_epoch)
    weight_tx = search_step.weight_optimizer(config, total_steps)
    state = search_step.create_search_states(search_step.seed_keys(config.seed_list), model,
                                             data.image_shape, weight_tx, method.tx, mesh)
    return model, state, weight_tx, method


class SearchSteps:
    """The compiled search step for each set of surviving experts (compiled once per set)."""

    def __init__(self, config: SearchConfig, model, weight_tx, method: search_step.ArchMethod,
                 preprocess, mesh, log, warmup_steps: int = 0):
        self.config, self.model, self.log, self.mesh = config, model, log, mesh
        self.warmup_steps = warmup_steps
        self.weight_tx, self.method, self.preprocess = weight_tx, method, preprocess
        self.compiled: dict[Any, Any] = {}
        self.compile_seconds = 0.0

    def __call__(self, state: SearchState, example_args):
        config = self.config
        computed = (search_step.computed_experts(
            tuple(config.ops), optimizers.active_experts(state.arch_opt_state))
                    if config.skip_wiped_out else {kind: tuple(config.ops) for kind in state.arch})
        key = tuple(computed[kind] for kind in sorted(computed))
        if key not in self.compiled:
            experts = ", ".join(f"{len(v)} {k}" for k, v in computed.items())
            # Tracing and compiling take a minute or more: say so before the wait.
            self.log(f"compiling the search step ({experts} experts)...")
            started = time.perf_counter()
            jitted = search_step.make_search_step(
                search_step.with_computed(self.model, computed), self.weight_tx, self.method,
                self.preprocess, mesh=self.mesh, warmup_steps=self.warmup_steps,
            )
            self.compiled[key] = jitted.lower(state, *example_args).compile()
            seconds = time.perf_counter() - started
            self.compile_seconds += seconds
            self.log(f"compiled the search step ({experts} experts) in {seconds:.1f} s")
        return self.compiled[key], computed


# ------------------------------------------------------------------ loop

def train_and_evaluate(config: SearchConfig) -> dict[str, Any]:
    """Runs a whole search (or several seeds at once) and writes its outputs.

    Returns the final epoch's record.

    Raises:
      DatasetError, CheckpointError, MeshError, RunError, ValueError: for bad
        input (the CLI turns them into one-line messages).
    """
    config = config.resolved()
    space = spaces.get_space(config.space)
    mesh = make_mesh(config)
    directory = runs.locate_run(config.out_dir, config.runs_root, config.resume)
    config, data = load_data(config, space, mesh,
                             log=print if parallel.is_writer() else _quiet)
    config_fingerprint = {**configs.fingerprint(config), "supernet_layout": VARIABLES_LAYOUT,
                          "search_state_layout": search_step.STATE_LAYOUT}
    with runs.Run(directory, kind="search", config=dataclasses.asdict(config),
                  fingerprint=config_fingerprint, runs_root=config.runs_root,
                  resume=config.resume, keep_checkpoints=config.keep_checkpoints,
                  progress=config.progress, fresh=config.out_dir is None,
                  resolved={"mesh": parallel.describe(mesh)}) as run:
        model, state, weight_tx, method = create_train_state(config, space, data, mesh)
        state, step = run.restore(state)
        state = _search_loop(config, space, data, run, model, weight_tx, method, state, step,
                             mesh)
        record = run.records[-1] if run.records else None
        if record is None:
            raise ValueError("the search ran no epoch")
        search_report.write_outputs(config, space, method, run, state)
        run.finish(step=record["step"], val_accuracy=record["val_accuracy"])
    return record


def _quiet(*args: Any) -> None:
    pass


def _search_loop(config: SearchConfig, space: spaces.SearchSpace, data: loading.SearchData,
                 run: runs.Run, model, weight_tx, method: search_step.ArchMethod,
                 state: SearchState, step: int, mesh) -> SearchState:
    """The epochs from ``step`` on (:func:`xnas_jax.loop.run_epochs`), after a line that
    says what runs."""
    arch_rates = method.learning_rates
    steps = SearchSteps(config, model, weight_tx, method, preprocess(config, data), mesh,
                        run.print, warmup_steps=config.warmup_epochs * data.steps_per_epoch)
    line = search_report.opening_line(config, data, run.directory, arch_rates,
                                      mesh.shape[parallel.SEED], mesh.shape[parallel.DATA])
    schedule = search_step.weight_schedule(config, data.steps_per_epoch * config.epochs)
    run.print(line)
    seeds = config.seed_list
    keys = parallel.global_array(search_step.seed_keys([s + 1 for s in seeds]),
                                 parallel.seed_sharding(mesh))
    split = parallel.batch_sharding(mesh, seeded=True)
    computed: dict[str, tuple[str, ...]] = {}

    def start_epoch(epoch, state):
        weight_order, arch_order = loading.search_batches(data, config.seed_list, epoch,
                                                           config.batch_size)
        batch = lambda i: (data.data, parallel.global_array(weight_order[i], split),  # noqa: E731
                           parallel.global_array(arch_order[i], split), keys)
        step_fn, experts = steps(state, batch(0))
        computed.update(experts)
        return step_fn, batch

    def end_epoch(epoch: loop.Epoch, state):
        return search_report.end_epoch(
            config, space, method, run, epoch, search_step.host_results(state),
            dict(computed), steps.compile_seconds, data.steps_per_epoch, arch_rates, schedule)

    def postfix(per_step):
        return {"loss": f"{per_step[-1]['train_loss'].mean():.3f}",
                "val": f"{per_step[-1]['val_loss'].mean():.3f}"}

    return loop.run_epochs(
        run, state, step, epochs=config.epochs, steps_per_epoch=data.steps_per_epoch,
        start_epoch=start_epoch, end_epoch=end_epoch, log_every=config.log_every,
        postfix=postfix, step_scalars=search_report.step_scalars(seeds, sorted(state.arch)))


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
