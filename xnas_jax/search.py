"""Architecture search with XNAS (or the DARTS baseline): ``python -m xnas_jax.search``.

Data flows one way: config -> data (two halves on the device) -> supernet ->
jitted search step -> epoch loop -> checkpoints, log, genotype, plots.

Outputs in ``--out-dir``: ``genotype.json`` and ``genotype.txt`` (the
discretized cell), ``normal.png`` / ``reduce.png`` (pictures of the cells),
``log.jsonl`` (one record per epoch: losses, accuracies, mixture weights,
active experts, genotype), ``arch_normal.png`` / ``arch_reduce.png`` /
``active_experts.png`` / ``losses.png`` (plots) and ``checkpoints/``.

Interrupting a run (Ctrl-C, SIGTERM) lets the step in flight finish, saves a
checkpoint at that step and exits with status 130; a second Ctrl-C stops at
once, keeping the last checkpoint.  ``--resume`` continues the run, and on the
same machine the resumed run ends with the same weights and genotype as an
uninterrupted one.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from xnas_jax import checkpointing, cli, configs, genotypes, input_pipeline, plotting
from xnas_jax import optimizers, search_step
from xnas_jax.prng import prng_key
from xnas_jax.search_step import CELL_TYPES, SearchState
from xnas_jax.supernet import (
    VARIABLES_LAYOUT, SearchNetwork, count_params, reduction_layers, validate_ops,
)


class _Interrupted(Exception):
    pass


class _StopRequest:
    """Signal handler: the first SIGINT/SIGTERM asks the loop to stop after the
    current step (the step donates its input state, so raising inside it could
    lose the state); a second SIGINT raises KeyboardInterrupt at once."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print(
            f"\n{signal.Signals(signum).name}: stopping after the current step to save a "
            "checkpoint (Ctrl-C again to stop at once)",
            file=sys.stderr, flush=True,
        )

    def install(self) -> dict[int, Any]:
        """Installs itself for SIGINT and SIGTERM; returns the previous handlers."""
        if threading.current_thread() is not threading.main_thread():
            return {}  # signals are only delivered to the main thread
        return {signum: signal.signal(signum, self) for signum in (signal.SIGINT, signal.SIGTERM)}


def _is_deleted(tree: Any) -> bool:
    """True if a donated step consumed these arrays (its result was then lost)."""
    return any(getattr(leaf, "is_deleted", lambda: False)() for leaf in jax.tree.leaves(tree))


def build_model(config: configs.SearchConfig, num_classes: int) -> SearchNetwork:
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[config.dtype]
    return SearchNetwork(
        num_classes=num_classes,
        channels=config.channels,
        layers=config.layers,
        ops=tuple(config.ops),
        steps=config.nodes,
        dtype=dtype,
        depthwise=config.depthwise,
    )


def check_image_size(image_shape: Sequence[int], layers: int) -> None:
    """Each reduction halves the image with stride-2 ops on an even size."""
    height, width = image_shape[0], image_shape[1]
    for _ in reduction_layers(layers):
        if height < 2 or width < 2 or height % 2 or width % 2:
            raise ValueError(
                f"images of {image_shape[0]}x{image_shape[1]} are too small or odd-sized for "
                f"the 2 reductions of a {layers}-cell network: each reduction needs an even "
                f"size >= 2 (e.g. 8x8, 28x28, 32x32)"
            )
        height, width = height // 2, width // 2


def arch_optimizer(config: configs.SearchConfig, total_steps: int):
    """The architecture optimizer and the per-cell-type learning rates used."""
    if config.optimizer == "darts":
        tx = optimizers.darts(config.darts_learning_rate, config.darts_weight_decay)
        return tx, {kind: config.darts_learning_rate for kind in CELL_TYPES}
    return search_step.xnas_arch_optimizer(
        num_experts=len(config.ops),
        layers=config.layers,
        total_steps=total_steps,
        feedbacks_per_step=config.batch_size,
        reward_bound=config.reward_bound,
        wipeout_factor=config.wipeout_factor,
        learning_rates={
            "normal": config.arch_learning_rate_normal,
            "reduce": config.arch_learning_rate_reduce,
        },
    )


def summary(config: configs.SearchConfig) -> dict[str, Any]:
    """Parameter count and mixture-weight shapes, without compiling anything."""
    spec = input_pipeline.DATASETS[config.dataset]
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


class _History:
    """The per-epoch records, mirrored in ``log.jsonl`` (append-only)."""

    def __init__(self, path: Path, keep_until_epoch: int):
        self.path = path
        self.records: list[dict[str, Any]] = []
        if path.exists():  # a resumed run keeps the records its checkpoint covers
            for line in path.read_text().splitlines():
                record = json.loads(line)
                if record["epoch"] <= keep_until_epoch:
                    self.records.append(record)
        path.write_text("".join(json.dumps(r) + "\n" for r in self.records))

    def append(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def run_search(config: configs.SearchConfig) -> dict[str, Any]:
    """Runs a whole search and writes its outputs; returns the final record.

    Raises:
      input_pipeline.DatasetError, checkpointing.CheckpointError, ValueError:
        for bad input (the CLI turns them into one-line messages).
    """
    config = config.resolved()
    validate_ops(config.ops)
    out_dir = cli.writable_dir(config.out_dir, "--out-dir")
    # Before any heavy work: an existing run without --resume, or another
    # run's checkpoints, fail here.
    checkpoints = checkpointing.Checkpointer(
        out_dir / "checkpoints",
        # A checkpoint of another supernet layout cannot be restored into this one.
        fingerprint={**config.fingerprint(), "supernet_layout": VARIABLES_LAYOUT,
                     "search_state_layout": search_step.STATE_LAYOUT},
        max_to_keep=config.keep_checkpoints,
        resume=config.resume,
    )

    # Data: the training set split 50/50 into a weight half and an arch half.
    print(f"loading {config.dataset} ...", end=" ", flush=True)
    started = time.perf_counter()
    dataset = input_pipeline.load_dataset(
        config.dataset, "train", config.data_dir, cache_dir=config.cache_dir
    )
    print(f"{len(dataset.labels)} images in {time.perf_counter() - started:.1f} s", flush=True)
    if config.max_examples:
        dataset = input_pipeline.subset(dataset, config.max_examples, seed=config.seed)
    dataset = input_pipeline.downsample(dataset, config.downsample)
    check_image_size(dataset.images.shape[1:], config.layers)
    weight_half, arch_half = input_pipeline.search_split(dataset, seed=config.seed)
    steps_per_epoch = min(len(weight_half.labels), len(arch_half.labels)) // config.batch_size
    if steps_per_epoch < 1:
        raise ValueError(
            f"--batch-size {config.batch_size} is larger than half of the "
            f"{len(dataset.labels)} training images"
        )
    if config.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    total_steps = steps_per_epoch * config.epochs
    mean, std = input_pipeline.channel_stats(dataset.images)
    preprocess = search_step.Preprocess(
        tuple(float(m) for m in mean), tuple(float(s) for s in std),
        config.crop_padding, bool(config.flip),
    )
    weight_data = input_pipeline.to_device(weight_half)
    arch_data = input_pipeline.to_device(arch_half)

    # Model, optimizers, state.
    model = build_model(config, dataset.num_classes)
    weight_tx = search_step.weight_optimizer(
        config.learning_rate, config.learning_rate_min, config.momentum,
        config.weight_decay, config.grad_clip, total_steps,
    )
    arch_tx, arch_rates = arch_optimizer(config, total_steps)
    image_shape = tuple(dataset.images.shape[1:])
    state = search_step.create_search_state(
        prng_key(config.seed), model, image_shape, weight_tx, arch_tx
    )

    start_step = 0
    restored = checkpoints.restore_latest(state)
    if restored is not None:
        state, start_step = restored.tree, restored.step
    history = _History(out_dir / "log.jsonl", keep_until_epoch=start_step // steps_per_epoch)
    print(
        f"search: {config.dataset} ({len(weight_half.labels)} + {len(arch_half.labels)} images "
        f"{'x'.join(map(str, image_shape))}), {config.layers} cells of C={config.channels}, "
        f"{config.epochs} epochs x {steps_per_epoch} steps of batch {config.batch_size}, "
        f"{config.optimizer} (arch lr normal {arch_rates['normal']:.3g}, "
        f"reduce {arch_rates['reduce']:.3g})"
        + (f"; resuming at step {start_step}" if start_step else ""),
        flush=True,
    )

    steps_cache: dict[Any, Any] = {}
    compile_seconds = [0.0]

    def step_for(state: SearchState, example_args) -> Any:
        """The compiled step for the experts still alive (compiled once per set)."""
        computed = (
            search_step.computed_experts(tuple(config.ops), state.arch)
            if config.skip_wiped_out
            else {kind: tuple(config.ops) for kind in CELL_TYPES}
        )
        key = (computed["normal"], computed["reduce"])
        if key not in steps_cache:
            print(
                f"compiling the search step ({len(computed['normal'])} normal, "
                f"{len(computed['reduce'])} reduce experts) ...", end=" ", flush=True,
            )
            started = time.perf_counter()
            jitted = search_step.make_search_step(
                search_step.with_computed(model, computed), weight_tx, arch_tx, preprocess,
                feedback_clip=config.reward_bound if config.optimizer == "xnas" else None,
                single_trace=config.single_trace,
            )
            steps_cache[key] = jitted.lower(state, *example_args).compile()
            seconds = time.perf_counter() - started
            compile_seconds[0] += seconds
            print(f"{seconds:.1f} s", flush=True)
        return steps_cache[key], computed

    stop = _StopRequest()
    previous_handlers = stop.install()
    base_key = prng_key(config.seed + 1)
    step = start_step
    record = history.records[-1] if history.records else None
    try:
        for epoch in range(start_step // steps_per_epoch, config.epochs):
            weight_order = input_pipeline.batch_indices(
                input_pipeline.epoch_permutation(config.seed, epoch, len(weight_half.labels)),
                config.batch_size,
            )
            arch_order = input_pipeline.batch_indices(
                input_pipeline.epoch_permutation(config.seed + 1, epoch, len(arch_half.labels)),
                config.batch_size,
            )
            step_fn, computed = step_for(
                state, (weight_data, arch_data, weight_order[0], arch_order[0], base_key)
            )
            per_step: list[dict[str, Any]] = []  # device arrays: read once per epoch
            started = time.perf_counter()
            first = step - epoch * steps_per_epoch
            progress = _progress(config, epoch, steps_per_epoch, first)
            try:
                for i in range(first, steps_per_epoch):
                    state, metrics = step_fn(
                        state, weight_data, arch_data,
                        weight_order[i], arch_order[i], jax.random.fold_in(base_key, step),
                    )
                    per_step.append(metrics)
                    step += 1
                    if progress is not None and (i + 1) % config.log_every == 0:
                        progress.set_postfix(
                            loss=f"{float(metrics['train_loss']):.3f}",
                            val=f"{float(metrics['val_loss']):.3f}",
                        )
                    if progress is not None:
                        progress.update(1)
                    if stop.requested:
                        raise _Interrupted()
            finally:
                if progress is not None:
                    progress.close()
            per_step = jax.device_get(per_step)
            seconds = time.perf_counter() - started
            record = _epoch_record(
                config, epoch + 1, step, state, per_step, computed, seconds, compile_seconds[0],
                history.records,
            )
            checkpoints.save(step, state, {"epoch": epoch + 1})
            history.append(record)
            print(_epoch_line(record), flush=True)
    except (KeyboardInterrupt, _Interrupted):
        if _is_deleted(state):  # stopped inside a step, after it took the state
            saved = max(checkpoints.steps, default=None)
            where = f"the last checkpoint is step {saved}" if saved is not None else "no checkpoint"
            message = f"interrupted during step {step + 1}, whose state is lost; {where}"
        else:
            if step not in checkpoints.steps:
                checkpoints.save(step, state, {"epoch": step / steps_per_epoch})
            message = f"interrupted at step {step}: checkpoint saved"
        checkpoints.close()
        print(
            f"\n{message} in {out_dir / 'checkpoints'}; continue with --resume",
            file=sys.stderr, flush=True,
        )
        raise SystemExit(130)
    finally:
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
    checkpoints.close()
    if record is None:
        raise ValueError("the search ran no epoch")
    _write_outputs(config, out_dir, history.records, state)
    return record


def _progress(config, epoch, total, first):
    if not config.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=first, desc=f"epoch {epoch + 1}/{config.epochs}",
        leave=False, dynamic_ncols=True, file=sys.stderr,
    )


def _epoch_record(config, epoch, step, state: SearchState, per_step, computed, seconds,
                  compile_seconds, previous):
    count = len(per_step)
    means = {k: float(np.mean([m[k] for m in per_step])) for k in per_step[0]}
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
        "images_per_second": 2 * config.batch_size * count / max(seconds, 1e-9),
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


def _write_outputs(config, out_dir: Path, history, state: SearchState) -> None:
    arch = {k: np.asarray(jax.device_get(v)) for k, v in state.arch.items()}
    rewards = {k: np.asarray(jax.device_get(v)) for k, v in state.rewards.items()}
    genotype = _genotype(config, arch, rewards)
    genotypes.save_genotype(genotype, out_dir / "genotype.json", config.ops,
                            selection=_selection(config, arch, rewards))
    text = genotypes.format_genotype(genotype)
    (out_dir / "genotype.txt").write_text(text + "\n")
    for cell in CELL_TYPES:
        genotypes.plot_cell(genotype, cell, out_dir / f"{cell}.png")
        plotting.plot_arch_trajectories(history, config.ops, cell, out_dir / f"arch_{cell}.png")
    plotting.plot_active_experts(history, out_dir / "active_experts.png")
    plotting.plot_losses(history, out_dir / "losses.png")
    print(f"genotype ({out_dir / 'genotype.json'}):\n{text}", flush=True)


# --------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    d = configs.SearchConfig()
    p = cli.ArgumentParser(
        prog="python -m xnas_jax.search",
        description="Differentiable architecture search with XNAS (Nayman et al., 2019) "
        "on the DARTS search space. Defaults marked 'by dataset' are a small network on the "
        "embedded digits and the DARTS search network (C=16, 8 cells) elsewhere.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=d.dataset, choices=sorted(input_pipeline.DATASETS),
                   help="dataset; 'digits' is embedded (no download)")
    g.add_argument("--data-dir", default=None,
                   help="local data: official files (CIFAR python batches, MNIST IDX), an "
                   "image folder/zip of <split>/<class>/<image>, or a tfds data dir")
    g.add_argument("--cache-dir", default=None, help="cache decoded arrays here (.npz)")
    g.add_argument("--max-examples", type=cli.positive_int, default=None,
                   help="use at most this many training images (quick runs)")
    g.add_argument("--downsample", type=cli.positive_int, default=d.downsample,
                   help="average blocks of N x N pixels (e.g. 2: CIFAR at 16x16, for CPU "
                   "proxies)")
    g.add_argument("--crop-padding", type=cli.non_negative_int, default=None,
                   help="random-crop padding (by dataset: 4 for 32x32, 1 for digits)")
    g.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="random horizontal flips (by dataset: natural images only)")
    g = p.add_argument_group("supernet")
    g.add_argument("--channels", type=cli.positive_int, default=None,
                   help="initial channels C (by dataset: 8 digits, 16 otherwise)")
    g.add_argument("--layers", type=cli.positive_int, default=None,
                   help="number of cells (by dataset: 5 digits, 8 otherwise)")
    g.add_argument("--nodes", type=cli.positive_int, default=d.nodes,
                   help="intermediate nodes per cell")
    g.add_argument("--ops", default=",".join(d.ops),
                   help=f"comma-separated experts, from: {','.join(genotypes.PRIMITIVES)}")
    g.add_argument("--dtype", default=d.dtype, choices=["float32", "bfloat16"],
                   help="computation dtype (parameters stay float32)")
    g.add_argument("--depthwise", default=d.depthwise, choices=["shifts", "conv"],
                   help="depthwise convolution as shifted slices (custom VJP) or XLA's "
                   "grouped convolution: the same function, different speed and compile time")
    g = p.add_argument_group("schedule")
    g.add_argument("--epochs", type=cli.positive_int, default=None,
                   help="search epochs (by dataset: 10 digits, 50 otherwise)")
    g.add_argument("--batch-size", type=cli.positive_int, default=None,
                   help="batch size of each half (96, the paper's)")
    g.add_argument("--max-steps-per-epoch", type=cli.positive_int, default=None,
                   help="cap the steps of an epoch (quick runs)")
    g.add_argument("--seed", type=cli.non_negative_int, default=d.seed,
                   help="seed of the initialization, data order, split and augmentation")
    g = p.add_argument_group("network weights")
    g.add_argument("--learning-rate", type=cli.positive_float, default=d.learning_rate,
                   help="initial SGD learning rate of the network weights (cosine-annealed)")
    g.add_argument("--learning-rate-min", type=cli.non_negative_float,
                   default=d.learning_rate_min, help="final learning rate of the cosine schedule")
    g.add_argument("--momentum", type=cli.non_negative_float, default=d.momentum,
                   help="SGD momentum of the network weights")
    g.add_argument("--weight-decay", type=cli.non_negative_float, default=d.weight_decay,
                   help="L2 weight decay of the network weights")
    g.add_argument("--grad-clip", type=cli.positive_float, default=d.grad_clip,
                   help="global-norm gradient clip of the network weights")
    g = p.add_argument_group("architecture weights")
    g.add_argument("--optimizer", default=d.optimizer, choices=["xnas", "darts"],
                   help="xnas, or the DARTS baseline (Adam on softmax logits)")
    g.add_argument("--reward-bound", type=cli.positive_float, default=d.reward_bound,
                   help="XNAS reward clip L")
    g.add_argument("--wipeout-factor", type=_wipeout_factor, default=d.wipeout_factor,
                   help="XNAS zeta in (0, 1]; 1 is the theory's safe wipeout")
    g.add_argument("--arch-lr-normal", type=cli.positive_float, default=None,
                   help="XNAS learning rate of normal cells (default: eta* of eq. 4)")
    g.add_argument("--arch-lr-reduce", type=cli.positive_float, default=None,
                   help="XNAS learning rate of reduction cells (default: eta* of eq. 4)")
    g.add_argument("--darts-learning-rate", type=cli.positive_float,
                   default=d.darts_learning_rate, help="Adam learning rate of --optimizer darts")
    g.add_argument("--darts-weight-decay", type=cli.non_negative_float,
                   default=d.darts_weight_decay,
                   help="L2 decay on the softmax logits of --optimizer darts")
    g.add_argument("--no-skip-wiped-out", dest="skip_wiped_out", action="store_false",
                   help="compute experts even when wiped out on every edge")
    g.add_argument("--single-trace", action="store_true",
                   help="run the weight and the architecture pass as one loop: the supernet is "
                        "traced and compiled once instead of twice (less compile time), but each "
                        "pass also computes the other's gradient (more time per step)")
    g = p.add_argument_group("output")
    g.add_argument("--out-dir", default=d.out_dir, help="where results and checkpoints go")
    g.add_argument("--resume", action="store_true",
                   help="continue the run whose checkpoints are in --out-dir")
    g.add_argument("--log-every", type=cli.positive_int, default=d.log_every,
                   help="steps between progress updates")
    g.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar")
    g.add_argument("--compilation-cache", default=None, metavar="DIR",
                   help="persistent XLA compilation cache: repeated runs skip compiling")
    g.add_argument("--summary", action="store_true",
                   help="print one JSON line (parameter count, mixture shapes) and exit")
    return p


def _wipeout_factor(text: str) -> float:
    value = cli.positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def config_from_args(args: argparse.Namespace) -> configs.SearchConfig:
    ops = tuple(name.strip() for name in args.ops.split(",") if name.strip())
    return configs.SearchConfig(
        dataset=args.dataset, data_dir=args.data_dir, cache_dir=args.cache_dir,
        max_examples=args.max_examples, downsample=args.downsample,
        crop_padding=args.crop_padding, flip=args.flip,
        channels=args.channels, layers=args.layers, nodes=args.nodes, ops=ops, dtype=args.dtype,
        depthwise=args.depthwise,
        epochs=args.epochs, batch_size=args.batch_size,
        max_steps_per_epoch=args.max_steps_per_epoch, seed=args.seed,
        learning_rate=args.learning_rate, learning_rate_min=args.learning_rate_min,
        momentum=args.momentum, weight_decay=args.weight_decay, grad_clip=args.grad_clip,
        optimizer=args.optimizer, reward_bound=args.reward_bound,
        wipeout_factor=args.wipeout_factor, arch_learning_rate_normal=args.arch_lr_normal,
        arch_learning_rate_reduce=args.arch_lr_reduce,
        darts_learning_rate=args.darts_learning_rate,
        darts_weight_decay=args.darts_weight_decay, skip_wiped_out=args.skip_wiped_out,
        single_trace=args.single_trace, out_dir=args.out_dir, resume=args.resume,
        log_every=args.log_every,
        progress=args.progress,
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    config = config_from_args(args)
    try:
        validate_ops(config.ops)
        if args.summary:
            resolved = config.resolved()
            check_image_size(input_pipeline.DATASETS[config.dataset].image_shape or (32, 32),
                             resolved.layers)
            print(json.dumps(summary(resolved)))
            return
        if args.compilation_cache:
            cli.enable_compilation_cache(args.compilation_cache)
        resolved = config.resolved()
        spec_shape = input_pipeline.DATASETS[config.dataset].image_shape
        if spec_shape is not None:  # fail fast, before loading anything
            check_image_size(spec_shape, resolved.layers)
        cli.writable_dir(config.out_dir, "--out-dir")
        run_search(config)
    except (
        input_pipeline.DatasetError,
        checkpointing.CheckpointError,
        genotypes.GenotypeError,
        ValueError,
    ) as error:
        cli.fail(str(error))


if __name__ == "__main__":
    main()
