"""The network of a found cell, its state and its training steps, in the Flax
examples' form.

:func:`resolve_setup` fills what a config leaves to the data, and
:func:`build_model` builds the network through the cell's space;
:func:`create_train_state` builds the state and :func:`create_optimizer` its
optimizer; :func:`train_step` and :func:`eval_step` are pure functions of
(state, batch), which :mod:`xnas_jax.train` compiles once (the train step
donates its state) and runs in the shared loop (:mod:`xnas_jax.loop`).
Data stays uint8 on the device; cropping, flipping, AutoAugment,
normalization and cutout happen inside the compiled step.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from xnas_jax import configs, optimizers, parallel, spaces
from xnas_jax.configs import ConfigError, TrainConfig
from xnas_jax.data import augment, autoaugment, shards, specs
from xnas_jax.prng import prng_key
from xnas_jax.spaces import kernels
from xnas_jax.spaces.darts import evalnet

__all__ = ["Setup", "read_cell", "resolve_setup", "build_model", "network_summary", "summary",
           "SUMMARY_ONLY_DATASETS", "TrainState", "learning_rate_schedule", "create_optimizer",
           "create_train_state", "checkpoint_tree", "train_step", "eval_step", "evaluate",
           "compile_steps", "make_gather"]


# Shapes known without data, for --summary only (no loader exists for them).
SUMMARY_ONLY_DATASETS = {"imagenet": ((224, 224, 3), 1000)}


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
    data = configs.with_data_defaults(config, image_shape=image_shape)
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
        crop_padding=data.crop_padding,
        flip=data.flip,
        cutout=data.cutout,
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


def network_summary(model: nn.Module, setup: Setup) -> dict[str, int]:
    """Parameters and multiply-adds (:func:`evalnet.network_summary`, which counts any
    network of the training interface); a network that does not fit the images is a
    ConfigError."""
    try:
        return evalnet.network_summary(model, setup.image_shape)
    except ValueError as error:
        raise ConfigError(f"images of shape {setup.image_shape}: {error}") from None


# --------------------------------------------------------------------------
# The loop.


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
    if config.dataset in SUMMARY_ONLY_DATASETS:
        known_shape, known_classes = SUMMARY_ONLY_DATASETS[config.dataset]
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
    stats = network_summary(build_model(config, setup), setup)
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


class TrainState(train_state.TrainState):
    """Flax's TrainState (step, params, opt_state, apply_fn, tx) plus BN statistics."""

    batch_stats: Any


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


def evaluate(eval_fn: Callable, gather: Callable, state: TrainState, data: shards.DeviceShards,
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


def compile_steps(state: TrainState, mesh, train_fn: Callable, eval_fn: Callable,
                  train_example: dict[str, jax.Array],
                  eval_example: dict[str, jax.Array]) -> tuple[Callable, Callable]:
    """The train and eval steps, compiled ahead of time for the example batches' shapes
    (the eval batch gains its mask): the state replicated over ``mesh``, each batch
    split over ``data``; the train step donates its state."""
    everywhere, split = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    eval_example = {**eval_example, "mask": parallel.global_array(
        np.ones(eval_example["label"].shape[0], bool), split)}
    train = jax.jit(train_fn, donate_argnums=0, in_shardings=(everywhere, split),
                    out_shardings=everywhere).lower(state, train_example).compile()
    evaluate = jax.jit(eval_fn, in_shardings=(everywhere, split),
                       out_shardings=everywhere).lower(state, eval_example).compile()
    return train, evaluate


def make_gather(mesh) -> Callable:
    """``gather(data, indices)``: a batch from each device's own shards, split over ``data``."""
    def batch(data: shards.DeviceShards, indices: jax.Array) -> dict[str, jax.Array]:
        return dict(zip(("image", "label"), shards.gather(data, indices, mesh)))

    return jax.jit(batch, out_shardings=parallel.batch_sharding(mesh))
