"""Architecture search with XNAS (or the DARTS baseline): ``python -m xnas_jax.search``.

Data flows one way: config -> data (two halves on the device) -> supernet ->
jitted search step (:mod:`xnas_jax.search_step`) -> the epoch loop here, over
the run harness (:mod:`xnas_jax.runs`).

Each run writes into its own folder (default ``runs/search/<date-time>``):
``genotype.json`` / ``genotype.txt`` / ``genotype.py`` (the discretized cell;
the last in the DARTS repository's form), ``normal.png`` /
``reduce.png`` (pictures of the cells), ``log.jsonl`` (one record per epoch:
losses, accuracies, mixture weights, rewards, active experts, genotype),
``arch_*.png`` / ``active_experts.png`` / ``losses.png`` (plots),
``config.json``, ``tensorboard/`` (losses, accuracies, both optimizers'
learning rates, u per cell type as images and histograms, the genotype as
text each epoch, the cell drawings at the end) and ``checkpoints/``.  Ctrl-C or SIGTERM
saves the step in flight and exits with status 130; ``--resume`` continues
to the same result as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image

from xnas_jax import cli, configs, optimizers, parallel, plotting, runs, search_step, spaces
from xnas_jax.spaces.darts import genotypes
from xnas_jax.checkpointing import CheckpointError
from xnas_jax.configs import SearchConfig
from xnas_jax.data import order, shards, specs
from xnas_jax.search_step import SearchState
from xnas_jax.spaces.ops import count_params
from xnas_jax.spaces.darts.supernet import VARIABLES_LAYOUT


def build_model(config: SearchConfig, num_classes: int):
    """The supernet of a (resolved) config, in its search space."""
    return spaces.get_space(config.space).build(config, num_classes)


def check_image_size(image_shape: Sequence[int], config: SearchConfig) -> None:
    """The images fit the space's network (its reductions), else a one-line ValueError."""
    spaces.get_space(config.space).check_image_size(image_shape, config.layers)


def weight_schedule(config: SearchConfig, total_steps: int) -> optax.Schedule:
    """The network weights' learning rate at each step: DARTS's cosine annealing."""
    return optax.cosine_decay_schedule(
        config.learning_rate, max(total_steps, 1),
        alpha=config.learning_rate_min / config.learning_rate)


def weight_optimizer(config: SearchConfig, total_steps: int) -> optax.GradientTransformation:
    """DARTS's search optimizer of the network weights: SGD with a cosine-annealed rate."""
    schedule = weight_schedule(config, total_steps)
    return optimizers.weight_optimizer(schedule, momentum=config.momentum,
                                       weight_decay=config.weight_decay,
                                       grad_clip=config.grad_clip)


def check_arch_settings(config: SearchConfig) -> None:
    """The warm-up leaves rounds to play, and the skip remedies have a space that has them.

    Raises:
      ValueError: one line naming the setting.
    """
    if config.warmup_epochs >= config.epochs:
        raise ValueError(f"--warmup-epochs {config.warmup_epochs} leaves no architecture round "
                         f"in {config.epochs} epochs: it must be less than --epochs")
    for name in ("skip_cap", "normalized_rewards"):
        if getattr(config, name) not in (None, False) and config.space != "nb201":
            raise ValueError(f"--{name.replace('_', '-')} is implemented for --space nb201, "
                             f"not {config.space}")


def summary(config: SearchConfig) -> dict[str, Any]:
    """Parameter count and mixture-weight shapes, without compiling anything."""
    spec = specs.DATASETS[config.dataset]
    if spec.image_shape is None or spec.num_classes is None:
        raise ValueError(f"--summary needs a dataset of known shape, not {config.dataset!r}")
    model = build_model(config, spec.num_classes)
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


class SearchData(NamedTuple):
    """This process's training shards on the devices, each search's split, and what the step
    needs."""

    data: shards.DeviceShards  # the shards of the training set, split over ``data``
    layout: shards.ShardLayout
    shard_size: int  # the examples of each shard
    # (S, ceil(n/2)) / (S, floor(n/2)): each search's halves, as indices into
    # every shard of n examples: one trains the network weights (Algorithm 1
    # line 4), the other rewards the experts (lines 5-13).
    weight_halves: np.ndarray
    arch_halves: np.ndarray
    preprocess: search_step.Preprocess
    image_shape: tuple[int, ...]
    num_classes: int
    steps_per_epoch: int


def load_data(config: SearchConfig, mesh, log=print) -> tuple[SearchConfig, SearchData]:
    """Loads, subsets and splits this process's data shards (one split per seed).

    The training set is cut into ``config.data_shards`` shards
    (:mod:`xnas_jax.data.shards`; default: one per process), and each process
    reads only the shards that its devices hold.  Each search's split into
    weight and architecture halves is the same within every shard; a batch
    takes ``batch_size / K`` examples of each shard.  Also fills the crop
    padding and the shard count into the config.

    Raises:
      DatasetError, MeshError, ValueError: missing data, or images, batch and
        shards that do not fit the network or the mesh.
    """
    if config.data_shards is None:
        config = dataclasses.replace(config, data_shards=shards.default_count(mesh))
    count = config.data_shards
    layout = shards.layout(mesh, count, {"--batch-size": config.batch_size})
    if config.max_train_examples and config.max_train_examples < count:
        raise ValueError(f"--max-train-examples {config.max_train_examples} is fewer than "
                         f"--data-shards {count}")

    def prepare(dataset):
        if config.train_per_class:
            dataset = order.balanced_subset(dataset, max(config.train_per_class // count, 1),
                                            seed=0)
        if config.max_train_examples:
            # One subset for every seed: it defines the data, the seeds vary the rest.
            dataset = order.subset(dataset, config.max_train_examples // count, seed=0)
        return order.downsample(dataset, config.downsample)

    started = time.perf_counter()
    split = shards.load_split(config.dataset, "train", config.data_dir, config.cache_dir,
                              layout, mesh, prepare, equal=True)
    log(f"loaded {config.dataset} in {time.perf_counter() - started:.1f} s: "
        f"{shards.describe(split)}")
    image_shape = split.image_shape
    check_image_size(image_shape, config)
    if config.crop_padding is None:
        config = dataclasses.replace(config, crop_padding=specs.default_crop_padding(image_shape))
    n = split.size
    if n < 2:
        raise ValueError(f"a search needs at least 2 training images per data shard, "
                         f"{config.dataset} has {n}")
    halves = [order.search_split_indices(n, seed) for seed in config.seed_list]
    weight_halves = np.stack([w for w, _ in halves])
    arch_halves = np.stack([a for _, a in halves])
    per_shard = config.batch_size // count
    steps_per_epoch = min(weight_halves.shape[1], arch_halves.shape[1]) // per_shard
    if steps_per_epoch < 1:
        raise ValueError(f"--batch-size {config.batch_size} is larger than half of the "
                         f"{n * count} training images")
    if config.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    preprocess = search_step.Preprocess(tuple(float(m) for m in split.mean),
                                        tuple(float(s) for s in split.std),
                                        config.crop_padding, bool(config.flip))
    return config, SearchData(shards.to_devices(split, layout, mesh), layout, n, weight_halves,
                              arch_halves, preprocess, image_shape, split.num_classes,
                              steps_per_epoch)


# ------------------------------------------------------------------ state


def create_train_state(config: SearchConfig, data: SearchData, mesh):
    """The supernet, its optimizers and the initial states of the searches (seed axis first).

    Returns:
      ``(model, state, weight_tx, method)``: the architecture method
      (:func:`search_step.make_arch_method`) plays its rounds over the steps
      after the warm-up, XNAS's horizon T.
    """
    total_steps = data.steps_per_epoch * config.epochs
    model = build_model(config, data.num_classes)
    weight_tx = weight_optimizer(config, total_steps)
    method = search_step.make_arch_method(
        config, model.feedback_replicas(),
        total_steps - config.warmup_epochs * data.steps_per_epoch)
    state = search_step.create_search_states(search_step.seed_keys(config.seed_list), model,
                                             data.image_shape, weight_tx, method.tx, mesh)
    return model, state, weight_tx, method


class _Steps:
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

def _step_scalars(cell_types: Sequence[str]) -> tuple[str, ...]:
    """Per-step values written to TensorBoard (every --log-every steps)."""
    return ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "reward_abs_max",
            *(f"clipped_{k}" for k in cell_types), *(f"active_{k}" for k in cell_types))


def train_and_evaluate(config: SearchConfig) -> dict[str, Any]:
    """Runs a whole search (or several seeds at once) and writes its outputs.

    Returns the final epoch's record.

    Raises:
      DatasetError, CheckpointError, MeshError, RunError, ValueError: for bad
        input (the CLI turns them into one-line messages).
    """
    config = config.resolved()
    space = spaces.get_space(config.space)
    space.validate_ops(config.ops)
    check_arch_settings(config)
    mesh = make_mesh(config)
    directory = runs.locate_run(config.out_dir, config.runs_root, config.resume)
    config, data = load_data(config, mesh, log=print if parallel.is_writer() else _quiet)
    config_fingerprint = {**configs.fingerprint(config), "supernet_layout": VARIABLES_LAYOUT,
                          "search_state_layout": search_step.STATE_LAYOUT}
    with runs.Run(directory, kind="search", config=dataclasses.asdict(config),
                  fingerprint=config_fingerprint, runs_root=config.runs_root,
                  resume=config.resume, keep_checkpoints=config.keep_checkpoints,
                  progress=config.progress, fresh=config.out_dir is None,
                  resolved={"mesh": parallel.describe(mesh)}) as run:
        model, state, weight_tx, method = create_train_state(config, data, mesh)
        arch_rates = method.learning_rates
        state, step = run.restore(state)
        steps = _Steps(config, model, weight_tx, method, data.preprocess, mesh, run.print,
                       warmup_steps=config.warmup_epochs * data.steps_per_epoch)
        seeds = config.seed_list
        run.print(
            f"search in {run.directory}: {config.dataset} "
            f"({data.weight_halves.shape[1] * data.layout.count} + "
            f"{data.arch_halves.shape[1] * data.layout.count} images "
            f"{'x'.join(map(str, data.image_shape))}), "
            f"{config.space} space, {config.layers} cells"
            + (" per stage" if config.space == "nb201" else "")
            + f" of C={config.channels}, {config.epochs} epochs x "
            f"{data.steps_per_epoch} steps of batch {config.batch_size}, {config.optimizer} "
            "(arch lr " + ", ".join(f"{k} {v:.3g}" for k, v in arch_rates.items()) + ")"
            + (f", seeds {','.join(map(str, seeds))}" if len(seeds) > 1 else "")
            + (f", mesh seed {mesh.shape[parallel.SEED]} x data {mesh.shape[parallel.DATA]}"
               if mesh.devices.size > 1 else ""))
        state = _search_loop(config, data, run, steps, state, step, mesh, arch_rates)
        record = run.records[-1] if run.records else None
        if record is None:
            raise ValueError("the search ran no epoch")
        _write_outputs(config, run, state)
        run.finish(step=record["step"], val_accuracy=record["val_accuracy"])
    return record


def _quiet(*args: Any) -> None:
    pass


def _epoch_batches(config: SearchConfig, data: SearchData, epoch: int):
    """(steps, S, B) per-device indices of each search's two batches of an epoch.

    Each shard has its own order (:func:`order.epoch_permutation`); a batch
    is ``B / K`` examples of each.
    """
    per_shard = config.batch_size // data.layout.count

    def half(halves, offset):
        return np.stack([
            data.layout.device_indices(np.stack([
                halves[s][order.batch_indices(
                    order.epoch_permutation(seed + offset, epoch, halves.shape[1], shard),
                    per_shard)[:data.steps_per_epoch]]
                for shard in range(data.layout.count)], axis=1), data.shard_size)
            for s, seed in enumerate(config.seed_list)], axis=1)

    return half(data.weight_halves, 0), half(data.arch_halves, 1)


def _search_loop(config: SearchConfig, data: SearchData, run: runs.Run, steps: _Steps,
                 state: SearchState, step: int, mesh,
                 arch_rates: dict[str, float]) -> SearchState:
    """The epochs from ``step`` on.  A stop saves the epoch's per-step metrics so far
    with the checkpoint, so that a resumed epoch logs what an uninterrupted one does."""
    seeds = config.seed_list
    keys = parallel.global_array(search_step.seed_keys([s + 1 for s in seeds]),
                                 parallel.seed_sharding(mesh))
    split = parallel.batch_sharding(mesh, seeded=True)
    steps_per_epoch = data.steps_per_epoch
    per_step: list[dict[str, Any]] = []  # this epoch's metrics (device arrays until read)
    if step % steps_per_epoch:
        per_step = [{k: np.asarray(v, np.float32) for k, v in m.items()}
                    for m in run.checkpoints.metadata(step).get("partial_steps") or []]
    try:
        for epoch in range(step // steps_per_epoch, config.epochs):
            weight_order, arch_order = _epoch_batches(config, data, epoch)
            batch = lambda i: (parallel.global_array(weight_order[i], split),  # noqa: E731
                               parallel.global_array(arch_order[i], split))
            step_fn, computed = steps(state, (data.data, *batch(0), keys))
            started = time.perf_counter()
            first = step - epoch * steps_per_epoch
            if len(per_step) != first:  # the metrics of a resumed epoch's first steps
                per_step = []
            bar = run.progress(steps_per_epoch, first, f"epoch {epoch + 1}/{config.epochs}")
            try:
                for i in range(first, steps_per_epoch):
                    state, metrics = step_fn(state, data.data, *batch(i), keys)
                    per_step.append(metrics)
                    step += 1
                    if (i + 1) % config.log_every == 0:
                        shown = parallel.to_host({k: metrics[k] for k in ("train_loss",
                                                                          "val_loss")})
                        bar.set_postfix(loss=f"{shown['train_loss'].mean():.3f}",
                                        val=f"{shown['val_loss'].mean():.3f}")
                    bar.update(1)
                    run.raise_if_stop_requested()
            finally:
                bar.close()
            per_step = parallel.to_host(per_step)
            host = _host_results(state)
            seconds = time.perf_counter() - started
            record = _epoch_records(config, epoch + 1, step, host, per_step, computed, seconds,
                                    steps.compile_seconds, run.records)
            # The images of this process's steps only (a resumed epoch ran fewer).
            record["images_per_second"] = (2 * config.batch_size * len(seeds)
                                           * (steps_per_epoch - first) / max(seconds, 1e-9))
            for offset, metrics in enumerate(per_step):
                at = step - len(per_step) + offset + 1
                if at % config.log_every == 0 or at == step:
                    run.scalars(at, _seed_scalars(seeds, "step", {
                        k: metrics[k] for k in _step_scalars(sorted(state.arch))}))
            run.scalars(step, {**_seed_scalars(seeds, "epoch", {
                k: np.asarray([r[k] for r in _per_seed(record)])
                for k in ("entropy", "val_accuracy")}),
                "epoch/images_per_second": record["images_per_second"]})
            _epoch_board(config, run, epoch, steps_per_epoch, record, arch_rates)
            # The record first: a run killed between the two resumes from the
            # checkpoint before, cutting the record away, and writes it again;
            # the other order would lose it (the checkpoint stands, its record not).
            run.log(record)
            run.save(step, state, {"epoch": epoch + 1})
            run.print(_epoch_line(record))
            per_step = []
    except (KeyboardInterrupt, runs.StopRequested):
        partial = [{k: [float(x) for x in np.ravel(v)] for k, v in m.items()}
                   for m in parallel.to_host(per_step)]
        run.stop(step, state, {"epoch": step / steps_per_epoch, "partial_steps": partial})
    return state


def _host_results(state: SearchState) -> dict[str, Any]:
    """The searches' mixture weights, accumulated rewards and active masks, on the host."""
    return parallel.to_host({"arch": state.arch, "rewards": state.rewards,
                             "active": optimizers.active_experts(state.arch_opt_state)})


def _epoch_board(config: SearchConfig, run: runs.Run, epoch: int, steps_per_epoch: int,
                 record: dict[str, Any], arch_rates: dict[str, float]) -> None:
    """TensorBoard's view of an epoch beyond its scalars: the learning rates of both
    optimizers (at the epoch's first step), and per search the mixture weights u of
    each cell type (an image of the edges and a histogram) and the genotype as text."""
    if not run.writer:
        return
    step = record["step"]
    schedule = weight_schedule(config, steps_per_epoch * config.epochs)
    run.scalars(step, {"epoch/learning_rate": float(schedule(epoch * steps_per_epoch)),
                       **{f"epoch/arch_learning_rate/{cell}": rate
                          for cell, rate in arch_rates.items()}})
    space = spaces.get_space(config.space)
    labels = space.edge_labels(config.nodes)
    for seed, seeded in zip(config.seed_list, _per_seed(record)):
        prefix = f"seed{seed}/" if len(config.seed_list) > 1 else ""
        for cell, weights in seeded["arch"].items():
            run.histogram(step, f"{prefix}arch/u/{cell}", weights)
            run.image(step, f"{prefix}arch/edges/{cell}", plotting.figure_pixels(
                plotting.plot_edge_weights(np.asarray(weights), config.ops, labels,
                                           f"{cell}: u at epoch {epoch + 1}")))
        text = space.text(seeded["genotype"])
        run.text(step, f"{prefix}genotype", "\n".join("    " + line
                                                      for line in text.splitlines()))


def _per_seed(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-search records of an epoch record (one search: the record itself)."""
    return record.get("seeds") or [record]


def _seed_scalars(seeds, prefix: str, values: dict[str, np.ndarray]) -> dict[str, float]:
    """TensorBoard tags: ``prefix/name`` for one search, ``seed<s>/prefix/name`` for several."""
    if len(seeds) == 1:
        return {f"{prefix}/{k}": float(np.ravel(v)[0]) for k, v in values.items()}
    return {f"seed{seed}/{prefix}/{k}": float(np.ravel(v)[i])
            for k, v in values.items() for i, seed in enumerate(seeds)}


def _epoch_records(config, epoch, step, host, per_step, computed, seconds, compile_seconds,
                   previous) -> dict[str, Any]:
    """The log record of an epoch: one search's record, or the seeds' records and their means."""
    seeds = config.seed_list
    records = []
    for i, seed in enumerate(seeds):
        arch = {k: v[i] for k, v in host["arch"].items()}
        rewards = {k: v[i] for k, v in host["rewards"].items()}
        active = {k: v[i] for k, v in host["active"].items()}
        metrics = [{k: np.ravel(v)[i] for k, v in m.items()} for m in per_step]
        earlier = [_per_seed(r)[i] for r in previous]
        records.append(_epoch_record(config, epoch, step, arch, rewards, active, metrics,
                                     computed, seconds, compile_seconds, earlier))
    if len(seeds) == 1:
        return records[0]
    means = {k: float(np.mean([r[k] for r in records]))
             for k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "entropy")}
    for seed, r in zip(seeds, records):
        r["seed"] = seed
    return {"epoch": epoch, "step": step, **means, "seconds": seconds,
            "compile_seconds_total": compile_seconds,
            "computed": {k: list(v) for k, v in computed.items()}, "seeds": records}


def _epoch_record(config, epoch, step, arch, rewards, active, per_step, computed, seconds,
                  compile_seconds, previous):
    """One search's record of an epoch (NumPy mixture weights, rewards, active masks and
    metrics)."""
    count = len(per_step)
    # float32 means, as the step computes its metrics (a resumed epoch's saved
    # metrics come back as Python floats).
    means = {k: float(np.mean(np.asarray([m[k] for m in per_step], np.float32)))
             for k in per_step[0]}
    # The first step whose update wiped out an expert (of the whole search).
    first_wipeout = next((r["first_wipeout_step"] for r in previous
                          if r.get("first_wipeout_step") is not None), None)
    if first_wipeout is None:
        total = sum(v.size for v in arch.values())
        first_wipeout = next((step - count + 1 + i for i, m in enumerate(per_step)
                              if sum(int(m[f"active_{k}"]) for k in arch) < total), None)
    space = spaces.get_space(config.space)
    evidence = _rule_rewards(config, rewards)
    return {
        "epoch": epoch,
        "step": step,
        **{k: means[k] for k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy")},
        "reward_abs_max": max(float(m["reward_abs_max"]) for m in per_step),
        "clipped_fraction": {k: means[f"clipped_{k}"] for k in arch},
        "active_experts": {k: int(m.sum()) for k, m in active.items()},
        "active_fraction": float(sum(m.sum() for m in active.values()))
        / sum(m.size for m in active.values()),
        "first_wipeout_step": first_wipeout,
        "active_per_step": [[int(m[f"active_{k}"]) for k in arch] for m in per_step],
        "computed": {k: list(v) for k, v in computed.items()},
        "entropy": search_step.expert_weights_entropy(arch),
        "seconds": seconds,
        "compile_seconds_total": compile_seconds,
        "genotype": space.discretize(config, arch, evidence),
        "selection_rule": space.selection_rule(config, arch, evidence),
        "arch": {k: np.round(v, 6).tolist() for k, v in arch.items()},
        "active": {k: np.asarray(m, np.int8).tolist() for k, m in active.items()},
        "rewards": {k: np.round(v, 4).tolist() for k, v in rewards.items()},
    }


def _rule_rewards(config, rewards):
    """The evidence the genotype ranks edges by: the architecture method's
    (:func:`search_step.selection_evidence`; XNAS: the rewards, DARTS: None, max u)."""
    return search_step.selection_evidence(config.optimizer, rewards)


def _epoch_line(record) -> str:
    if "seeds" in record:
        return (
            f"epoch {record['epoch']}: {len(record['seeds'])} seeds, mean train loss "
            f"{record['train_loss']:.4f} | val acc "
            + " ".join(f"{100 * r['val_accuracy']:.1f}%" for r in record["seeds"])
            + " | active experts "
            + " ".join("/".join(str(v) for v in r["active_experts"].values())
                       for r in record["seeds"])
            + f" | {record['images_per_second']:.0f} img/s"
        )
    return (
        f"epoch {record['epoch']}: train loss {record['train_loss']:.4f} "
        f"acc {100 * record['train_accuracy']:.1f}% | val loss {record['val_loss']:.4f} "
        f"acc {100 * record['val_accuracy']:.1f}% | active experts "
        + " ".join(f"{k} {v}" for k, v in record["active_experts"].items())
        + " | clipped rewards "
        + " / ".join(f"{100 * v:.0f}%" for v in record["clipped_fraction"].values())
        + f" | {record['images_per_second']:.0f} img/s"
    )


def stability(genotype_dicts: Sequence[dict[str, Any]], nodes: int) -> dict[str, Any]:
    """How many seeds agree on each kept edge, and on its operation.

    Args:
      genotype_dicts: each seed's :func:`genotypes.genotype_to_dict`.
      nodes: intermediate nodes per cell.

    Returns:
      Per cell type, the kept edges (node, input) with the number of seeds
      that keep them and the most common operation with its count, sorted by
      agreement; and ``edge_agreement`` / ``op_agreement``: the mean over the
      seeds' kept edges of the fraction of seeds that keep the same edge / the
      same edge with the same operation.
    """
    seeds = len(genotype_dicts)
    summary: dict[str, Any] = {"seeds": seeds}
    if genotype_dicts[0].get("space") == "nb201":  # every edge is kept: agree on its op?
        per_edge = [np.unique([g["ops"][e] for g in genotype_dicts], return_counts=True)
                    for e in range(len(genotype_dicts[0]["ops"]))]
        summary["cell"] = {
            "edges": [{"edge": e, "op": str(ops[np.argmax(n)]), "op_seeds": int(n.max())}
                      for e, (ops, n) in enumerate(per_edge)],
            "edge_agreement": 1.0,
            "op_agreement": float(np.mean([
                dict(zip(*per_edge[e]))[g["ops"][e]] / seeds
                for g in genotype_dicts for e in range(len(per_edge))])),
        }
        return summary
    for cell in ("normal", "reduce"):
        edges: dict[tuple[int, int], dict[str, int]] = {}
        kept = []
        for g in genotype_dicts:
            chosen = [(op, int(inp)) for op, inp in g[cell]]
            for index, (op, inp) in enumerate(chosen):
                node = index // 2
                ops = edges.setdefault((node, inp), {})
                ops[op] = ops.get(op, 0) + 1
                kept.append((node, inp, op))
        table = []
        for (node, inp), ops in edges.items():
            op, count = max(ops.items(), key=lambda kv: (kv[1], kv[0]))
            table.append({"node": node, "input": inp, "seeds": sum(ops.values()),
                          "op": op, "op_seeds": count})
        table.sort(key=lambda r: (-r["seeds"], -r["op_seeds"], r["node"], r["input"]))
        summary[cell] = {
            "edges": table,
            "edge_agreement": float(np.mean([sum(edges[(n, i)].values()) / seeds
                                             for n, i, _ in kept])),
            "op_agreement": float(np.mean([edges[(n, i)][op] / seeds for n, i, op in kept])),
        }
    return summary


def _write_outputs(config: SearchConfig, run: runs.Run, state: SearchState) -> None:
    """The genotype(s) and plots; with several seeds, one folder per seed, the best seed's
    genotype at the top and ``seeds.json`` (per-seed results and their stability)."""
    host = _host_results(state)
    if not run.writer:
        return
    out_dir, seeds = run.directory, config.seed_list
    results = []
    for i, seed in enumerate(seeds):
        arch = {k: v[i] for k, v in host["arch"].items()}
        rewards = {k: v[i] for k, v in host["rewards"].items()}
        history = [_per_seed(r)[i] for r in run.records]
        folder = out_dir if len(seeds) == 1 else out_dir / f"seed_{seed}"
        genotype = _write_seed(config, folder, arch, rewards, history)
        for picture in spaces.get_space(config.space).pictures():  # the cells, drawn
            prefix = f"seed{seed}/" if len(seeds) > 1 else ""
            with Image.open(folder / picture) as image:
                run.image(history[-1]["step"], f"{prefix}cell/{Path(picture).stem}",
                          np.asarray(image.convert("RGB")))
        results.append({"seed": seed, "val_accuracy": history[-1]["val_accuracy"],
                        "genotype": genotype,
                        "text": spaces.get_space(config.space).text(genotype)})
    best = max(range(len(seeds)), key=lambda i: (results[i]["val_accuracy"], -i))
    if len(seeds) > 1:
        space = spaces.get_space(config.space)
        for name in space.files():
            shutil.copyfile(out_dir / f"seed_{seeds[best]}" / name, out_dir / name)
        agreement = stability([r["genotype"] for r in results], config.nodes)
        (out_dir / "seeds.json").write_text(json.dumps({
            "best_seed": seeds[best], "seeds": results, "stability": agreement}, indent=2) + "\n")
        if config.space == "darts":
            plotting.plot_seed_agreement(agreement, out_dir / "stability.png")
        for r in results:
            run.print(f"seed {r['seed']}: val acc {100 * r['val_accuracy']:.1f}%")
        run.print(_stability_text(agreement))
        run.print(f"best seed {seeds[best]} (final validation accuracy)")
    run.print(f"genotype ({out_dir / 'genotype.json'}):\n{results[best]['text']}")


def _write_seed(config, folder, arch, rewards, history) -> dict[str, Any]:
    """One search's genotype files, cell pictures and plots; returns its genotype dict."""
    folder.mkdir(parents=True, exist_ok=True)
    genotype = spaces.get_space(config.space).write(config, folder, arch,
                                                    _rule_rewards(config, rewards))
    for cell in arch:
        plotting.plot_arch_trajectories(history, config.ops, cell, folder / f"arch_{cell}.png")
    plotting.plot_active_experts(history, folder / "active_experts.png")
    plotting.plot_losses(history, folder / "losses.png")
    return genotype


def _stability_text(agreement: dict[str, Any]) -> str:
    lines = [f"stability over {agreement['seeds']} seeds:"]
    for cell in [c for c in ("normal", "reduce", "cell") if c in agreement]:
        part = agreement[cell]
        lines.append(f"  {cell}: {100 * part['edge_agreement']:.0f}% of kept edges and "
                     f"{100 * part['op_agreement']:.0f}% of their operations agree")
    return "\n".join(lines)


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
        spaces.get_space(resolved.space).validate_ops(resolved.ops)
        spec_shape = specs.DATASETS[config.dataset].image_shape
        if args.summary:
            check_image_size(spec_shape or (32, 32), resolved)
            print(json.dumps(summary(resolved)))
            return
        if spec_shape is not None:  # fail fast, before loading anything
            check_image_size(spec_shape, resolved)
        cli.use_compilation_cache(config.compilation_cache)
        train_and_evaluate(config)
    except (specs.DatasetError, CheckpointError, genotypes.GenotypeError, ValueError) as error:
        cli.fail(str(error))  # MeshError, ConfigError and RunError are ValueErrors


if __name__ == "__main__":
    main()
