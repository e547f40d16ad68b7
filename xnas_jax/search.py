"""Architecture search with XNAS (or the DARTS baseline): ``python -m xnas_jax.search``.

Data flows one way: config -> data (two halves on the device) -> supernet ->
jitted search step (:mod:`xnas_jax.search_step`) -> the epoch loop here, over
the run harness (:mod:`xnas_jax.runs`).

Each run writes into its own folder (default ``runs/search/<date-time>``):
``genotype.json`` / ``genotype.txt`` (the discretized cell), ``normal.png`` /
``reduce.png`` (pictures of the cells), ``log.jsonl`` (one record per epoch:
losses, accuracies, mixture weights, rewards, active experts, genotype),
``arch_*.png`` / ``active_experts.png`` / ``losses.png`` (plots),
``config.json``, ``tensorboard/`` and ``checkpoints/``.  Ctrl-C or SIGTERM
saves the step in flight and exits with status 130; ``--resume`` continues
to the same result as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from xnas_jax import cli, configs, genotypes, kernels, optimizers, plotting, runs, search_step
from xnas_jax.checkpointing import CheckpointError
from xnas_jax.configs import SearchConfig
from xnas_jax.data import augment, datasets, order, specs
from xnas_jax.prng import prng_key
from xnas_jax.search_step import CELL_TYPES, SearchState
from xnas_jax.supernet import VARIABLES_LAYOUT, SearchNetwork, count_params, validate_ops


def build_model(config: SearchConfig, num_classes: int) -> SearchNetwork:
    """The supernet of a (resolved) config."""
    return SearchNetwork(
        num_classes=num_classes, channels=config.channels, layers=config.layers,
        ops=tuple(config.ops), steps=config.nodes, dtype=kernels.dtype_from_name(config.dtype),
        depthwise=config.depthwise,
    )


def check_image_size(image_shape: Sequence[int], layers: int) -> None:
    """Each reduction halves the image with stride-2 ops on an even size."""
    height, width = image_shape[0], image_shape[1]
    for _ in genotypes.reduction_layers(layers):
        if height < 2 or width < 2 or height % 2 or width % 2:
            raise ValueError(
                f"images of {image_shape[0]}x{image_shape[1]} are too small or odd-sized for "
                f"the 2 reductions of a {layers}-cell network: each reduction needs an even "
                f"size >= 2 (e.g. 8x8, 28x28, 32x32)"
            )
        height, width = height // 2, width // 2


def weight_optimizer(config: SearchConfig, total_steps: int) -> optax.GradientTransformation:
    """DARTS's search optimizer of the network weights: SGD with a cosine-annealed rate."""
    schedule = optax.cosine_decay_schedule(
        config.learning_rate, max(total_steps, 1),
        alpha=config.learning_rate_min / config.learning_rate)
    return optimizers.weight_optimizer(schedule, momentum=config.momentum,
                                       weight_decay=config.weight_decay,
                                       grad_clip=config.grad_clip)


def arch_optimizer(config: SearchConfig, total_steps: int):
    """The architecture optimizer and the per-cell-type learning rates used."""
    if config.optimizer == "darts":
        tx = optimizers.darts(config.darts_learning_rate, config.darts_weight_decay)
        return tx, {kind: config.darts_learning_rate for kind in CELL_TYPES}
    return search_step.xnas_arch_optimizer(
        num_experts=len(config.ops), layers=config.layers, total_steps=total_steps,
        feedbacks_per_step=config.batch_size, reward_bound=config.reward_bound,
        wipeout_factor=config.wipeout_factor,
        learning_rates={"normal": config.arch_learning_rate_normal,
                        "reduce": config.arch_learning_rate_reduce},
    )


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
        "dataset": config.dataset,
        "image_shape": list(spec.image_shape),
        "channels": config.channels,
        "layers": config.layers,
        "ops": list(config.ops),
        "params": count_params(shapes["params"]),
        "mixture_weights": {k: list(v.shape) for k, v in shapes["arch"].items()},
        "mixture_weight_count": count_params(shapes["arch"]),
    }


# ------------------------------------------------------------------ data


class SearchData(NamedTuple):
    """The two halves of the training set on the device, and what the step needs."""

    weights: augment.DeviceData  # trains the network weights (Algorithm 1 line 4)
    arch: augment.DeviceData  # rewards the experts (lines 5-13)
    preprocess: search_step.Preprocess
    image_shape: tuple[int, ...]
    num_classes: int
    steps_per_epoch: int


def load_data(config: SearchConfig, log=print) -> tuple[SearchConfig, SearchData]:
    """Loads, subsets and splits the data; fills the config's crop padding.

    Raises:
      DatasetError, ValueError: missing data, or images and batch that do not
        fit the network.
    """
    started = time.perf_counter()
    dataset = datasets.load_dataset(config.dataset, "train", config.data_dir,
                                    cache_dir=config.cache_dir)
    log(f"loaded {len(dataset.labels)} {config.dataset} images in "
        f"{time.perf_counter() - started:.1f} s")
    if config.max_train_examples:
        dataset = order.subset(dataset, config.max_train_examples, seed=config.seed)
    dataset = order.downsample(dataset, config.downsample)
    image_shape = tuple(int(d) for d in dataset.images.shape[1:])
    check_image_size(image_shape, config.layers)
    if config.crop_padding is None:
        config = dataclasses.replace(config, crop_padding=specs.default_crop_padding(image_shape))
    weight_half, arch_half = order.search_split(dataset, seed=config.seed)
    steps_per_epoch = min(len(weight_half.labels), len(arch_half.labels)) // config.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"--batch-size {config.batch_size} is larger than half of the "
                         f"{len(dataset.labels)} training images")
    if config.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    mean, std = specs.channel_stats(dataset.images)
    preprocess = search_step.Preprocess(tuple(float(m) for m in mean),
                                        tuple(float(s) for s in std),
                                        config.crop_padding, bool(config.flip))
    return config, SearchData(augment.to_device(weight_half), augment.to_device(arch_half),
                              preprocess, image_shape, dataset.num_classes, steps_per_epoch)


# ------------------------------------------------------------------ state


def create_train_state(config: SearchConfig, data: SearchData):
    """The supernet, its optimizers and the initial :class:`SearchState`.

    Returns:
      ``(model, state, weight_tx, arch_tx, arch_learning_rates)``.
    """
    total_steps = data.steps_per_epoch * config.epochs
    model = build_model(config, data.num_classes)
    weight_tx = weight_optimizer(config, total_steps)
    arch_tx, arch_rates = arch_optimizer(config, total_steps)
    state = search_step.create_search_state(prng_key(config.seed), model, data.image_shape,
                                            weight_tx, arch_tx)
    return model, state, weight_tx, arch_tx, arch_rates


class _Steps:
    """The compiled search step for each set of surviving experts (compiled once per set)."""

    def __init__(self, config: SearchConfig, model, weight_tx, arch_tx, preprocess, log):
        self.config, self.model, self.log = config, model, log
        self.weight_tx, self.arch_tx, self.preprocess = weight_tx, arch_tx, preprocess
        self.compiled: dict[Any, Any] = {}
        self.compile_seconds = 0.0

    def __call__(self, state: SearchState, example_args):
        config = self.config
        computed = (search_step.computed_experts(tuple(config.ops), state.arch)
                    if config.skip_wiped_out else {kind: tuple(config.ops) for kind in CELL_TYPES})
        key = (computed["normal"], computed["reduce"])
        if key not in self.compiled:
            started = time.perf_counter()
            jitted = search_step.make_search_step(
                search_step.with_computed(self.model, computed), self.weight_tx, self.arch_tx,
                self.preprocess,
                feedback_clip=config.reward_bound if config.optimizer == "xnas" else None,
                single_trace=config.single_trace,
            )
            self.compiled[key] = jitted.lower(state, *example_args).compile()
            seconds = time.perf_counter() - started
            self.compile_seconds += seconds
            self.log(f"compiled the search step ({len(computed['normal'])} normal, "
                     f"{len(computed['reduce'])} reduce experts) in {seconds:.1f} s")
        return self.compiled[key], computed


# ------------------------------------------------------------------ loop

# Per-step values written to TensorBoard (every --log-every steps).
_STEP_SCALARS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "reward_abs_max",
                 "clipped_normal", "clipped_reduce", "active_normal", "active_reduce")


def train_and_evaluate(config: SearchConfig) -> dict[str, Any]:
    """Runs a whole search and writes its outputs; returns the final epoch's record.

    Raises:
      DatasetError, CheckpointError, RunError, ValueError: for bad input (the
        CLI turns them into one-line messages).
    """
    config = config.resolved()
    validate_ops(config.ops)
    directory = runs.locate_run(config.out_dir, config.runs_root, config.resume)
    config, data = load_data(config)
    config_fingerprint = {**configs.fingerprint(config), "supernet_layout": VARIABLES_LAYOUT,
                          "search_state_layout": search_step.STATE_LAYOUT}
    with runs.Run(directory, kind="search", config=dataclasses.asdict(config),
                  fingerprint=config_fingerprint, runs_root=config.runs_root,
                  resume=config.resume, keep_checkpoints=config.keep_checkpoints,
                  progress=config.progress, fresh=config.out_dir is None) as run:
        model, state, weight_tx, arch_tx, arch_rates = create_train_state(config, data)
        state, step = run.restore(state)
        steps = _Steps(config, model, weight_tx, arch_tx, data.preprocess, run.print)
        run.print(
            f"search in {run.directory}: {config.dataset} ({len(data.weights.labels)} + "
            f"{len(data.arch.labels)} images {'x'.join(map(str, data.image_shape))}), "
            f"{config.layers} cells of C={config.channels}, {config.epochs} epochs x "
            f"{data.steps_per_epoch} steps of batch {config.batch_size}, {config.optimizer} "
            f"(arch lr normal {arch_rates['normal']:.3g}, reduce {arch_rates['reduce']:.3g})")
        state = _search_loop(config, data, run, steps, state, step)
        record = run.records[-1] if run.records else None
        if record is None:
            raise ValueError("the search ran no epoch")
        _write_outputs(config, run, state)
        run.finish(step=record["step"], val_accuracy=record["val_accuracy"])
    return record


def _search_loop(config: SearchConfig, data: SearchData, run: runs.Run, steps: _Steps,
                 state: SearchState, step: int) -> SearchState:
    """The epochs from ``step`` on.  A stop saves the epoch's per-step metrics so far
    with the checkpoint, so that a resumed epoch logs what an uninterrupted one does."""
    base_key = prng_key(config.seed + 1)
    steps_per_epoch = data.steps_per_epoch
    per_step: list[dict[str, Any]] = []  # this epoch's metrics (device arrays until read)
    if step % steps_per_epoch:
        per_step = list(run.checkpoints.metadata(step).get("partial_steps") or [])
    try:
        for epoch in range(step // steps_per_epoch, config.epochs):
            weight_order = order.batch_indices(
                order.epoch_permutation(config.seed, epoch, len(data.weights.labels)),
                config.batch_size)
            arch_order = order.batch_indices(
                order.epoch_permutation(config.seed + 1, epoch, len(data.arch.labels)),
                config.batch_size)
            step_fn, computed = steps(
                state, (data.weights, data.arch, weight_order[0], arch_order[0], base_key))
            started = time.perf_counter()
            first = step - epoch * steps_per_epoch
            if len(per_step) != first:  # the metrics of a resumed epoch's first steps
                per_step = []
            bar = run.progress(steps_per_epoch, first, f"epoch {epoch + 1}/{config.epochs}")
            try:
                for i in range(first, steps_per_epoch):
                    state, metrics = step_fn(state, data.weights, data.arch, weight_order[i],
                                             arch_order[i], jax.random.fold_in(base_key, step))
                    per_step.append(metrics)
                    step += 1
                    if (i + 1) % config.log_every == 0:
                        bar.set_postfix(loss=f"{float(metrics['train_loss']):.3f}",
                                        val=f"{float(metrics['val_loss']):.3f}")
                    bar.update(1)
                    run.raise_if_stop_requested()
            finally:
                bar.close()
            per_step = jax.device_get(per_step)
            seconds = time.perf_counter() - started
            record = _epoch_record(config, epoch + 1, step, state, per_step, computed, seconds,
                                   steps.compile_seconds, run.records)
            # The images of this process's steps only (a resumed epoch ran fewer).
            record["images_per_second"] = (2 * config.batch_size * (steps_per_epoch - first)
                                           / max(seconds, 1e-9))
            for offset, metrics in enumerate(per_step):
                at = step - len(per_step) + offset + 1
                if at % config.log_every == 0 or at == step:
                    run.scalars(at, {f"step/{k}": metrics[k] for k in _STEP_SCALARS})
            run.scalars(step, {"epoch/entropy": record["entropy"],
                               "epoch/val_accuracy": record["val_accuracy"],
                               "epoch/images_per_second": record["images_per_second"]})
            run.save(step, state, {"epoch": epoch + 1})
            run.log(record)
            run.print(_epoch_line(record))
            per_step = []
    except (KeyboardInterrupt, runs.StopRequested):
        partial = [{k: float(v) for k, v in m.items()} for m in jax.device_get(per_step)]
        run.stop(step, state, {"epoch": step / steps_per_epoch, "partial_steps": partial})
    return state


def _epoch_record(config, epoch, step, state: SearchState, per_step, computed, seconds,
                  compile_seconds, previous):
    count = len(per_step)
    # float32 means, as the step computes its metrics (a resumed epoch's saved
    # metrics come back as Python floats).
    means = {k: float(np.mean(np.asarray([m[k] for m in per_step], np.float32)))
             for k in per_step[0]}
    arch = {k: np.asarray(jax.device_get(v)) for k, v in state.arch.items()}
    rewards = {k: np.asarray(jax.device_get(v)) for k, v in state.rewards.items()}
    # The first step whose update wiped out an expert (of the whole search).
    first_wipeout = next((r["first_wipeout_step"] for r in previous
                          if r.get("first_wipeout_step") is not None), None)
    if first_wipeout is None:
        total = sum(v.size for v in arch.values())
        first_wipeout = next((step - count + 1 + i for i, m in enumerate(per_step)
                              if sum(int(m[f"active_{k}"]) for k in CELL_TYPES) < total), None)
    selection = _selection(config, arch, rewards)
    return {
        "epoch": epoch,
        "step": step,
        **{k: means[k] for k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy")},
        "reward_abs_max": max(float(m["reward_abs_max"]) for m in per_step),
        "clipped_fraction": {k: means[f"clipped_{k}"] for k in CELL_TYPES},
        "active_experts": {k: int((v > 0).sum()) for k, v in arch.items()},
        "active_fraction": float(sum((v > 0).sum() for v in arch.values()))
        / sum(v.size for v in arch.values()),
        "first_wipeout_step": first_wipeout,
        "active_per_step": [[int(m[f"active_{k}"]) for k in CELL_TYPES] for m in per_step],
        "computed": {k: list(v) for k, v in computed.items()},
        "entropy": search_step.expert_weights_entropy(arch),
        "seconds": seconds,
        "compile_seconds_total": compile_seconds,
        "genotype": genotypes.genotype_to_dict(_genotype(config, arch, rewards), config.ops),
        "selection_rule": selection["rule"],
        "arch": {k: np.round(v, 6).tolist() for k, v in arch.items()},
        "rewards": {k: np.round(v, 4).tolist() for k, v in rewards.items()},
    }


def _rule_rewards(config, rewards):
    """The rewards the genotype ranks edges by: XNAS's evidence; DARTS keeps max u."""
    return rewards if config.optimizer == "xnas" else None


def _genotype(config, arch, rewards) -> genotypes.Genotype:
    return genotypes.discretize(arch["normal"], arch["reduce"], config.ops, config.nodes,
                                _rule_rewards(config, rewards))


def _selection(config, arch, rewards) -> dict[str, Any]:
    return genotypes.selection_record(arch, config.ops, config.nodes,
                                      _rule_rewards(config, rewards))


def _epoch_line(record) -> str:
    return (
        f"epoch {record['epoch']}: train loss {record['train_loss']:.4f} "
        f"acc {100 * record['train_accuracy']:.1f}% | val loss {record['val_loss']:.4f} "
        f"acc {100 * record['val_accuracy']:.1f}% | active experts normal "
        f"{record['active_experts']['normal']} reduce {record['active_experts']['reduce']} "
        f"| clipped rewards {100 * record['clipped_fraction']['normal']:.0f}% / "
        f"{100 * record['clipped_fraction']['reduce']:.0f}% "
        f"| {record['images_per_second']:.0f} img/s"
    )


def _write_outputs(config: SearchConfig, run: runs.Run, state: SearchState) -> None:
    out_dir, history = run.directory, run.records
    arch = {k: np.asarray(jax.device_get(v)) for k, v in state.arch.items()}
    rewards = {k: np.asarray(jax.device_get(v)) for k, v in state.rewards.items()}
    genotype = _genotype(config, arch, rewards)
    genotypes.save_genotype(genotype, out_dir / "genotype.json", config.ops,
                            selection=_selection(config, arch, rewards))
    text = genotypes.format_genotype(genotype)
    (out_dir / "genotype.txt").write_text(text + "\n")
    for cell in CELL_TYPES:
        plotting.plot_cell(genotype, cell, out_dir / f"{cell}.png")
        plotting.plot_arch_trajectories(history, config.ops, cell, out_dir / f"arch_{cell}.png")
    plotting.plot_active_experts(history, out_dir / "active_experts.png")
    plotting.plot_losses(history, out_dir / "losses.png")
    run.print(f"genotype ({out_dir / 'genotype.json'}):\n{text}")


# ------------------------------------------------------------------ CLI


def parser() -> cli.ArgumentParser:
    """The command line: every :class:`SearchConfig` field, plus ``--summary``."""
    p = configs.build_parser(
        SearchConfig, prog="python -m xnas_jax.search",
        description="Differentiable architecture search with XNAS (Nayman et al., 2019) on the "
        "DARTS search space. Each run writes a new folder under --runs-root.")
    p.add_argument("--summary", action="store_true",
                   help="print one JSON line (parameter count, mixture shapes) and exit")
    return p


def parse_args(argv: Sequence[str] | None = None):
    """The :class:`SearchConfig` of a command line, and the parsed flags."""
    return configs.parse_command_line(SearchConfig, parser(), argv)


def main(argv: Sequence[str] | None = None) -> None:
    """The command line: one-line ``error: ...`` and exit 2 on bad input."""
    config, args = parse_args(argv)
    try:
        validate_ops(config.ops)
        resolved = config.resolved()
        spec_shape = specs.DATASETS[config.dataset].image_shape
        if args.summary:
            check_image_size(spec_shape or (32, 32), resolved.layers)
            print(json.dumps(summary(resolved)))
            return
        if spec_shape is not None:  # fail fast, before loading anything
            check_image_size(spec_shape, resolved.layers)
        if config.compilation_cache:
            cli.enable_compilation_cache(config.compilation_cache)
        train_and_evaluate(config)
    except (specs.DatasetError, CheckpointError, genotypes.GenotypeError, ValueError) as error:
        cli.fail(str(error))


if __name__ == "__main__":
    main()
