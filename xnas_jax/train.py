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

The parts follow the Flax examples: :func:`create_train_state` builds the
model and optimizer; :func:`train_step` / :func:`eval_step` are pure
functions of (state, batch), compiled once (the train step donates its
state); :func:`train_and_evaluate` is the loop over the run harness
(:mod:`xnas_jax.runs`: run folder, ``config.json``, ``log.jsonl``,
TensorBoard scalars, step-numbered checkpoints, stop on SIGINT/SIGTERM with
exact resume) and writes ``results.json``.  Data stays uint8 on the device;
cropping, flipping, AutoAugment, normalization and cutout happen inside the
compiled step.

``--summary`` prints the parameter count and multiply-adds as one JSON line
without touching any data.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from xnas_jax import cli, configs, loop, optimizers, parallel, runs, spaces
from xnas_jax.spaces.darts import evalnet
from xnas_jax.spaces import kernels
from xnas_jax.checkpointing import CheckpointError
from xnas_jax.configs import ConfigError, TrainConfig
from xnas_jax.data import augment, autoaugment, order, shards, specs
from xnas_jax.prng import prng_key

__all__ = [
    "TrainState",
    "Setup",
    "read_cell",
    "resolve_setup",
    "learning_rate_schedule",
    "create_optimizer",
    "create_train_state",
    "train_step",
    "eval_step",
    "train_and_evaluate",
    "summary",
    "parse_args",
    "main",
]

# Shapes known without data, for --summary only (no loader exists for them).
_SUMMARY_ONLY_DATASETS = {"imagenet": ((224, 224, 3), 1000)}
RESULTS_FILE = "results.json"


class TrainState(train_state.TrainState):
    """Flax's TrainState (step, params, opt_state, apply_fn, tx) plus BN statistics."""

    batch_stats: Any


@dataclasses.dataclass(frozen=True)
class Setup:
    """What a config resolves to once the data's shape is known."""

    genotype: dict[str, Any]  # the cell, JSON-ready, in its space's form.
    genotype_name: str  # a published name, an nb201 cell string, or "custom".
    space: str  # the cell's search space, which builds the network.
    variant: str  # the evaluation network (--network): cifar, imagenet, nb201.
    channels: int
    layers: int
    image_shape: tuple[int, int, int]  # (H, W, C)
    num_classes: int
    crop_padding: int
    flip: bool
    cutout: int


# --------------------------------------------------------------------------
# Configuration.


def read_cell(config: TrainConfig) -> spaces.FoundCell:
    """The cell of ``config.genotype`` and its space (:func:`xnas_jax.spaces.read_genotype`).

    Raises:
      ValueError: one line, for a genotype that no space reads or a space
        that cannot train.
    """
    cell = spaces.read_genotype(config.genotype)
    spaces.training_space(cell.space)
    return cell


def resolve_setup(
    config: TrainConfig, image_shape: Sequence[int], num_classes: int,
    cell: spaces.FoundCell | None = None,
) -> Setup:
    """Fills the size- and data-dependent defaults of ``config``.

    ``cell`` is :func:`read_cell` of the config, read here when not given.
    The network's default channels and layers are the space's
    (``networks``), or those of ``--size``.
    """
    cell = read_cell(config) if cell is None else cell
    if config.size is not None:
        size = evalnet.SIZES[config.size]
        variant, channels, layers = size.variant, size.channels, size.layers
    else:
        variant = config.network
        channels, layers = spaces.training_space(cell.space).networks[variant]
    channels = config.channels if config.channels is not None else channels
    layers = config.layers if config.layers is not None else layers
    crop_padding = config.crop_padding
    if crop_padding is None:
        crop_padding = specs.default_crop_padding(image_shape)
    cutout = config.cutout if config.cutout is not None else specs.default_cutout(image_shape)
    flip = config.flip
    if flip is None:  # the dataset's own fact; natural images for summary-only ones.
        flip = specs.DATASETS[config.dataset].flip if config.dataset in specs.DATASETS else True
    if config.autoaugment and image_shape[-1] != 3:
        raise ConfigError(
            f"AutoAugment's CIFAR-10 policy needs RGB images, not {image_shape[-1]} channel(s): "
            "pass --no-autoaugment"
        )
    return Setup(
        genotype=cell.genotype,
        genotype_name=cell.name,
        space=cell.space,
        variant=variant,
        channels=channels,
        layers=layers,
        image_shape=tuple(int(d) for d in image_shape),
        num_classes=int(num_classes),
        crop_padding=crop_padding,
        flip=flip,
        cutout=cutout,
    )


def build_model(config: TrainConfig, setup: Setup) -> nn.Module:
    """The evaluation network of a run, as the cell's space builds it.

    Whatever the space, the network is called as ``(images, train=...,
    drop_prob=...)`` and returns ``(logits, aux_logits)``.
    """
    try:
        return spaces.training_space(setup.space).evaluation_network(
            setup.genotype,
            setup.num_classes,
            network=setup.variant,
            channels=setup.channels,
            layers=setup.layers,
            auxiliary=config.auxiliary_weight > 0,
            dtype=kernels.dtype_from_name(config.dtype),
        )
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _network_summary(model: nn.Module, setup: Setup) -> dict[str, int]:
    """Parameters and multiply-adds (:func:`evalnet.network_summary`, which counts any
    network of the training interface); a network that does not fit the images is a
    ConfigError."""
    try:
        return evalnet.network_summary(model, setup.image_shape)
    except ValueError as error:
        raise ConfigError(f"images of shape {setup.image_shape}: {error}") from None


# --------------------------------------------------------------------------
# Optimizer.


def learning_rate_schedule(config: TrainConfig, steps_per_epoch: int) -> optax.Schedule:
    """The run's per-step learning rate (DARTS anneals per epoch; per step is smoother)."""
    total_steps = config.epochs * steps_per_epoch
    if config.learning_rate_schedule == "cosine":
        return optax.cosine_decay_schedule(
            config.learning_rate, total_steps, alpha=config.learning_rate_min / config.learning_rate
        )
    return optimizers.power_cosine_schedule(
        config.learning_rate,
        total_steps,
        cycles=config.cycles,
        cycle_decay=config.cycle_decay,
        exponent=config.power_exponent,
        end_value=config.learning_rate_min,
    )


def create_optimizer(config: TrainConfig, schedule: optax.Schedule) -> optax.GradientTransformation:
    """The network-weight optimizer of the config (:func:`xnas_jax.optimizers.weight_optimizer`)."""
    return optimizers.weight_optimizer(schedule, momentum=config.momentum,
                                       nesterov=config.nesterov,
                                       weight_decay=config.weight_decay,
                                       grad_clip=config.grad_clip)


def create_train_state(
    rng: jax.Array, model: nn.Module, image_shape: Sequence[int], tx: optax.GradientTransformation
) -> TrainState:
    """Initializes the network (in training mode, so the auxiliary tower exists)."""
    params_rng, drop_rng = jax.random.split(rng)
    images = jnp.zeros((1, *image_shape), jnp.float32)
    init = jax.jit(functools.partial(model.init, train=True, drop_prob=0.0))
    variables = init({"params": params_rng, evalnet.DROP_PATH_RNG: drop_rng}, images)
    state = TrainState.create(
        apply_fn=model.apply, params=variables["params"], tx=tx,
        batch_stats=variables["batch_stats"],
    )  # fmt: skip
    # An int32 array rather than the Python 0 of TrainState.create, so the
    # step keeps one type (the compiled step and checkpoints rely on it).
    return state.replace(step=jnp.zeros((), jnp.int32))


def checkpoint_tree(state: TrainState) -> dict[str, Any]:
    """The arrays of a state that a checkpoint holds."""
    return {
        "step": state.step,
        "params": state.params,
        "batch_stats": state.batch_stats,
        "opt_state": state.opt_state,
    }


# --------------------------------------------------------------------------
# Steps.


def _cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float) -> jax.Array:
    targets = jax.nn.one_hot(labels, logits.shape[-1])
    if smoothing:
        targets = optax.smooth_labels(targets, smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    config: TrainConfig,
    setup: Setup,
    steps_per_epoch: int,
    mean: jax.Array,
    std: jax.Array,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One SGD step on a uint8 batch ``{"image", "label"}``.

    The randomness (crop, flip, AutoAugment, cutout, drop-path) is drawn from
    ``fold_in(key(seed), step)``, so it is a function of the step alone and a
    resumed run repeats it.  The drop-path rate of the step's epoch is
    ``drop_path_prob * epoch / epochs`` (DARTS), computed from ``state.step``.

    Returns:
      The new state and ``{"loss", "accuracy", "aux_loss"}``, batch means
      (loss is the objective: cross entropy + auxiliary_weight * aux_loss).
    """
    rng = jax.random.fold_in(prng_key(config.seed), state.step)
    crop_rng, cutout_rng, drop_rng = jax.random.split(rng, 3)
    images = augment.augment(crop_rng, batch["image"], setup.crop_padding, setup.flip)
    if config.autoaugment:  # after crop and flip, before cutout, as in the references
        images = autoaugment.autoaugment(jax.random.fold_in(rng, 3), images)
    images = augment.normalize(images, mean, std)
    images = augment.cutout(cutout_rng, images, setup.cutout)
    labels = batch["label"]

    drop_prob = None
    if config.drop_path_prob > 0:
        epoch = state.step // steps_per_epoch
        drop_prob = config.drop_path_prob * epoch.astype(jnp.float32) / config.epochs

    def loss_fn(params):
        (logits, aux_logits), updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            images,
            train=True,
            drop_prob=drop_prob,
            rngs={evalnet.DROP_PATH_RNG: drop_rng},
            mutable=["batch_stats"],
        )
        loss = jnp.mean(_cross_entropy(logits, labels, config.label_smoothing))
        aux_loss = jnp.zeros(())
        if aux_logits is not None:
            aux_loss = jnp.mean(_cross_entropy(aux_logits, labels, config.label_smoothing))
        objective = loss + config.auxiliary_weight * aux_loss
        return objective, (logits, aux_loss, updates["batch_stats"])

    grads, (logits, aux_loss, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    # The metrics are recomputed outside the differentiated function so that
    # the logged loss is the plain cross entropy of the main head.
    loss = jnp.mean(_cross_entropy(logits, labels, config.label_smoothing))
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    metrics = {
        "loss": loss,
        "aux_loss": aux_loss,
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
    }
    return state, metrics


def eval_step(
    state: TrainState, batch: dict[str, jax.Array], *, mean: jax.Array, std: jax.Array
) -> dict[str, jax.Array]:
    """Sums over a (padded) uint8 batch ``{"image", "label", "mask"}``.

    Returns:
      ``{"loss", "correct", "count"}`` summed over the examples with mask 1.
    """
    images = augment.normalize(batch["image"], mean, std)
    logits, _ = state.apply_fn(
        {"params": state.params, "batch_stats": state.batch_stats}, images, train=False
    )
    mask = batch["mask"].astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    return {
        "loss": jnp.sum(loss * mask),
        "correct": jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * mask),
        "count": jnp.sum(mask),
    }


# --------------------------------------------------------------------------
# The loop.


def _load_data(config: TrainConfig, mesh):
    """This process's shards of the train and test splits (:mod:`xnas_jax.data.shards`).

    Each process reads only the shards its devices hold.  Training shards are
    cut to one size (a batch takes ``batch_size / K`` examples of each); test
    shards stay whole, so that every test image is evaluated once.

    Returns:
      ``(layout, train, test)``.
    """
    count = config.data_shards
    layout = shards.layout(mesh, count, {"--batch-size": config.batch_size,
                                         "--eval-batch-size": config.eval_batch_size})

    def prepare(limit):
        def shrink(dataset):
            if limit is not None:
                dataset = order.subset(dataset, max(limit // count, 1), config.seed)
            return order.downsample(dataset, config.downsample)
        return shrink

    train = shards.load_split(config.dataset, "train", config.data_dir, config.cache_dir,
                              layout, mesh, prepare(config.max_train_examples), equal=True)
    test_dir = config.test_data_dir if config.test_data_dir is not None else config.data_dir
    try:
        test = shards.load_split(config.dataset, "test", test_dir, config.cache_dir, layout,
                                 mesh, prepare(config.max_test_examples), equal=False)
    except specs.DatasetError as error:
        raise specs.DatasetError(
            f"{error} (the test split is read from --test-data-dir, else --data-dir)"
        ) from None
    if train.image_shape != test.image_shape:
        raise specs.DatasetError(
            f"train images are {train.image_shape} but test images are {test.image_shape} "
            "(H, W, C)"
        )
    if train.size * count < config.batch_size:
        raise specs.DatasetError(
            f"{config.dataset}/train has {train.size * count} examples, fewer than "
            f"--batch-size {config.batch_size}"
        )
    return layout, train, test


def _evaluate(eval_fn: Callable, gather: Callable, state: TrainState, data: shards.DeviceShards,
              sizes: Sequence[int], batch_size: int, mesh,
              layout: shards.ShardLayout) -> dict[str, float]:
    """Loss and accuracy over every example of every shard, masking the padding."""
    per_shard = batch_size // layout.count
    held = int(data.labels.shape[1])
    split = parallel.batch_sharding(mesh)
    totals = None
    for start in range(0, max(sizes), per_shard):
        local = np.arange(start, start + per_shard)
        indices = layout.device_indices(np.broadcast_to(np.minimum(local, held - 1),
                                                        (layout.count, per_shard)), held)
        batch = gather(data, parallel.global_array(indices, split))
        batch["mask"] = parallel.global_array(
            np.concatenate([local < size for size in sizes]), split)
        sums = eval_fn(state, batch)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = parallel.to_host(totals)
    return {
        "loss": float(totals["loss"] / totals["count"]),
        "accuracy": float(totals["correct"] / totals["count"]),
    }


def make_gather(mesh) -> Callable:
    """``gather(data, indices)``: a batch from each device's own shards, split over ``data``."""
    def batch(data: shards.DeviceShards, indices: jax.Array) -> dict[str, jax.Array]:
        return dict(zip(("image", "label"), shards.gather(data, indices, mesh)))

    return jax.jit(batch, out_shardings=parallel.batch_sharding(mesh))


def train_and_evaluate(config: TrainConfig) -> dict[str, Any]:
    """Trains and evaluates in a run folder (:mod:`xnas_jax.runs`); writes ``results.json``.

    Returns:
      The results also written to ``results.json``.

    Raises:
      GenotypeError, DatasetError, CheckpointError, ConfigError, RunError: a
        bad genotype, missing data, checkpoints that cannot be continued, or
        settings that do not fit the data.
    """
    cell = read_cell(config)
    mesh = parallel.make_mesh(1, config.devices)
    parallel.check_batch(mesh, config.batch_size)
    parallel.check_batch(mesh, config.eval_batch_size, "--eval-batch-size")
    directory = runs.locate_run(config.out_dir, config.runs_root, config.resume)
    if config.data_shards is None:
        config = dataclasses.replace(config, data_shards=shards.default_count(mesh))
    layout, train_data, test_data = _load_data(config, mesh)
    setup = resolve_setup(config, train_data.image_shape, train_data.num_classes, cell)
    model = build_model(config, setup)
    stats = _network_summary(model, setup)
    mean, std = jnp.asarray(train_data.mean), jnp.asarray(train_data.std)
    steps_per_epoch = train_data.size // (config.batch_size // layout.count)
    if config.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    if (config.learning_rate_schedule == "power_cosine"
            and config.cycles > config.epochs * steps_per_epoch):
        raise ConfigError(
            f"--cycles {config.cycles} exceeds the run's {config.epochs * steps_per_epoch} steps")
    schedule = learning_rate_schedule(config, steps_per_epoch)
    resolved = {f.name: getattr(setup, f.name) for f in dataclasses.fields(Setup)
                if f.name not in ("genotype",)}
    resolved["mesh"] = parallel.describe(mesh)
    with runs.Run(directory, kind="train",
                  config=dataclasses.asdict(config), resolved=resolved,
                  fingerprint={**configs.fingerprint(config),
                               "genotype": cell.genotype},
                  runs_root=config.runs_root, resume=config.resume,
                  keep_checkpoints=config.keep_checkpoints, progress=config.progress,
                  fresh=config.out_dir is None) as run:
        state = create_train_state(prng_key(config.seed), model, setup.image_shape,
                                   create_optimizer(config, schedule))
        # Replicated over the mesh, like a restored state, so that a fresh and
        # a resumed run compile the same program (and share the compilation cache).
        everywhere = parallel.replicated(mesh)
        state = jax.tree.map(lambda a: parallel.global_array(parallel.to_host(a), everywhere),
                             state)
        restored, step = run.restore(checkpoint_tree(state))
        state = state.replace(**restored)

        train_device, test_device = (shards.to_devices(d, layout, mesh)
                                     for d in (train_data, test_data))
        gather = make_gather(mesh)
        split = parallel.batch_sharding(mesh)
        step_fn = functools.partial(train_step, config=config, setup=setup,
                                    steps_per_epoch=steps_per_epoch, mean=mean, std=std)
        eval_fn = functools.partial(eval_step, mean=mean, std=std)
        # Compiled ahead of time, once: a call with other shapes would fail
        # instead of silently retracing.  That takes a minute or more: say so.
        run.print("compiling the training and evaluation steps...")
        compile_start = time.perf_counter()
        example = gather(train_device, parallel.global_array(
            np.zeros(config.batch_size, np.int32), split))
        p_train_step = jax.jit(step_fn, donate_argnums=0, in_shardings=(everywhere, split),
                               out_shardings=everywhere).lower(state, example).compile()
        eval_example = gather(test_device, parallel.global_array(
            np.zeros(config.eval_batch_size, np.int32), split))
        eval_example["mask"] = parallel.global_array(np.ones(config.eval_batch_size, bool), split)
        p_eval_step = jax.jit(eval_fn, in_shardings=(everywhere, split),
                              out_shardings=everywhere).lower(state, eval_example).compile()
        compile_time = time.perf_counter() - compile_start
        run.print(f"training in {run.directory}: {setup.genotype_name} on {config.dataset}, "
                  f"{config.epochs} epochs x {steps_per_epoch} steps of batch "
                  f"{config.batch_size} (compiled in {compile_time:.1f} s)")

        throughputs: list[float] = []
        last: dict[str, Any] = {}  # the last epoch's record and test metrics

        def start_epoch(epoch, state):
            batches = loop.shard_batches(layout, np.arange(train_data.size), config.seed, epoch,
                                         config.batch_size, steps_per_epoch, train_data.size)
            return p_train_step, lambda i: (
                gather(train_device, parallel.global_array(batches[i], split)),)

        def end_epoch(epoch: loop.Epoch, state):
            means = loop.mean_metrics(epoch.metrics)
            images_per_second = ((steps_per_epoch - epoch.first) * config.batch_size
                                 / epoch.seconds)
            throughputs.append(images_per_second)
            eval_start = time.perf_counter()
            last["test"] = _evaluate(p_eval_step, gather, state, test_device, test_data.sizes,
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
            run.scalars(epoch.step, {"epoch/test_loss": record["test_loss"],
                                     "epoch/test_accuracy": record["test_accuracy"],
                                     "epoch/train_loss": record["train_loss"],
                                     "epoch/learning_rate": lr})
            last["record"] = record
            return record, json.dumps(record)

        def postfix(per_step):
            means = loop.mean_metrics(per_step)
            return {"loss": f"{means['loss']:.4f}", "acc": f"{means['accuracy']:.4f}"}

        run_start = time.perf_counter()
        state = loop.run_epochs(
            run, state, step, epochs=config.epochs, steps_per_epoch=steps_per_epoch,
            start_epoch=start_epoch, end_epoch=end_epoch, log_every=config.log_every,
            postfix=postfix,
            step_scalars=lambda m: {f"step/{k}": float(v) for k, v in m.items()},
            checkpoint=checkpoint_tree)
        test_metrics, epoch_record = last.get("test"), last.get("record")

        if test_metrics is None:  # resumed a finished run: evaluate what it left.
            test_metrics = _evaluate(p_eval_step, gather, state, test_device, test_data.sizes,
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


def summary(
    config: TrainConfig,
    image_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """Parameters and multiply-adds of the config's network, without data.

    The input shape and class count come from the dataset's known spec
    (``specs.DATASETS``), or the arguments for datasets without one.
    """
    cell = read_cell(config)
    if config.dataset in _SUMMARY_ONLY_DATASETS:
        known_shape, known_classes = _SUMMARY_ONLY_DATASETS[config.dataset]
    else:
        spec = specs.DATASETS[config.dataset]
        known_shape, known_classes = spec.image_shape, spec.num_classes
    image_shape = tuple(image_shape) if image_shape is not None else known_shape
    num_classes = num_classes if num_classes is not None else known_classes
    if image_shape is None or num_classes is None:
        raise ConfigError(
            f"the shape of {config.dataset!r} images is only known from the data: "
            f"pass --image-size and --num-classes with --summary"
        )
    setup = resolve_setup(config, image_shape, num_classes, cell)
    stats = _network_summary(build_model(config, setup), setup)
    return {
        "genotype": setup.genotype_name,
        "space": setup.space,
        "dataset": config.dataset,
        **stats,
        "flops_method": "analytic multiply-adds of conv and dense layers, inference network",
        "network": setup.variant,
        "channels": setup.channels,
        "layers": setup.layers,
        "num_classes": setup.num_classes,
        "input_shape": list(setup.image_shape),
        "recipe": {**configs.recipe_settings(config), "cutout": setup.cutout},
    }


def parser() -> cli.ArgumentParser:
    """The command line: every :class:`TrainConfig` field, plus ``--summary`` and its shape."""
    p = configs.build_parser(
        TrainConfig, prog="python -m xnas_jax.train",
        description="Train the evaluation network of a cell (XNAS section 4.2). Each run "
        "writes a new folder under --runs-root.",
        choices={"dataset": sorted(specs.DATASETS) + sorted(_SUMMARY_ONLY_DATASETS)})
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
            print(json.dumps(summary(config, image_shape, args.num_classes)), flush=True)
            return 0
        if config.dataset in _SUMMARY_ONLY_DATASETS:
            cli.fail(
                f"--dataset {config.dataset} is only known by its shape, for --summary; to train, "
                f"pass its images as --dataset image_folder --data-dir DIR"
            )
        read_cell(config)  # fail before touching the disk.
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
