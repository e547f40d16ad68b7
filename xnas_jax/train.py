"""Trains the evaluation network of a found cell from scratch.

``python -m xnas_jax.train --genotype XNAS --dataset cifar10 --data-dir DIR``

Named recipes (``--recipe``, :data:`RECIPES`) set every optimization and
regularization setting at once, and each flag overrides one: ``xnas``, the
recipe of XNAS section 4.2 (1,500 epochs, Nesterov momentum, 5 cycles of
power-cosine annealing, cutout, scheduled drop-path, auxiliary tower, label
smoothing, AutoAugment, weight decay); ``darts``, DARTS's recipe (600
epochs, momentum, cosine annealing, cutout, drop-path, auxiliary tower),
which the XNAS paper calls XNAS-Plain; and ``xnas-imagenet``, the paper's
ImageNet recipe (section 4.3).  Test evaluation after every epoch.

The parts follow the Flax examples: :class:`Config` holds every
hyper-parameter; :func:`create_train_state` builds the model and optimizer;
:func:`train_step` / :func:`eval_step` are pure functions of (state, batch),
compiled once (the train step donates its state); :func:`train_and_evaluate`
is the thin loop that feeds them, logs one JSON line per epoch
(``log.jsonl``), checkpoints every epoch (resumable with ``--resume``) and
writes ``results.json``.  Data stays uint8 on the device; cropping, flipping,
AutoAugment, normalization and cutout happen inside the compiled step.

``--summary`` prints the parameter count and multiply-adds as one JSON line
without touching any data.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from tqdm import tqdm

from xnas_jax import autoaugment, cli, evalnet, genotypes, input_pipeline
from xnas_jax.prng import prng_key
from xnas_jax.checkpointing import CheckpointError, Checkpointer

__all__ = [
    "Config",
    "ConfigError",
    "RECIPES",
    "recipe_config",
    "TrainState",
    "Setup",
    "resolve_setup",
    "power_cosine_schedule",
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

# Datasets with digits or strokes, whose mirror images are other things.
_NO_FLIP_DATASETS = frozenset({"digits", "mnist", "fashion_mnist"})
# Shapes known without data, for --summary only (no loader exists for them).
_SUMMARY_ONLY_DATASETS = {"imagenet": ((224, 224, 3), 1000)}
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Config fields that do not change what a run computes: they may differ when
# resuming (everything else must match the checkpoint's run).
_RUN_MANAGEMENT_FIELDS = frozenset({
    "genotype", "data_dir", "test_data_dir", "eval_batch_size", "max_test_examples", "log_every",
    "keep_checkpoints", "progress",
})  # fmt: skip
LOG_FILE = "log.jsonl"
RESULTS_FILE = "results.json"
CHECKPOINT_DIR = "checkpoints"


@dataclasses.dataclass(frozen=True)
class Config:
    """Every hyper-parameter of an evaluation run (defaults: the ``darts`` recipe).

    :func:`recipe_config` builds the config of a named recipe (:data:`RECIPES`).
    """

    recipe: str = "darts"  # the named recipe the settings started from.
    genotype: str = "XNAS"  # a published name, a JSON file, or a JSON string.
    dataset: str = "cifar10"
    data_dir: str | None = None
    test_data_dir: str | None = None  # where the test split lies; default data_dir.
    # Network: a named size sets all three; explicit channels/layers override it.
    size: str | None = None  # a key of evalnet.SIZES, e.g. "xnas-small".
    network: str = "cifar"  # "cifar" or "imagenet" (the mobile setting).
    channels: int | None = None  # None: 36 (cifar) / 48 (imagenet).
    layers: int | None = None  # None: 20 (cifar) / 14 (imagenet).
    dtype: str = "float32"  # or "bfloat16": activations; params and BN stats stay float32.
    # Optimization.
    epochs: int = 600
    batch_size: int = 96
    learning_rate: float = 0.025
    lr_min: float = 0.0
    lr_schedule: str = "cosine"  # or "power_cosine" (XNAS section 4.2, after sharpDARTS).
    cycles: int = 1  # power_cosine: annealing cycles over the run (the paper: 5).
    cycle_decay: float = 0.5  # power_cosine: peak multiplier from one cycle to the next.
    power_exponent: float = 10.0  # power_cosine: the base of the power curve.
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    # Regularization.
    auxiliary_weight: float = 0.4  # 0 removes the auxiliary tower.
    drop_path_prob: float = 0.2  # reached linearly at the last epoch.
    label_smoothing: float = 0.0
    autoaugment: bool = False  # the CIFAR-10 policy of Cubuk et al., on the device.
    cutout: int | None = None  # None: 16 at 32x32, proportional for other sizes.
    crop_padding: int | None = None  # None: 4 at 32x32, proportional, at least 1.
    flip: bool | None = None  # None: all but digit-like datasets.
    # Run.
    seed: int = 0
    eval_batch_size: int = 256
    max_train_examples: int | None = None
    max_test_examples: int | None = None
    max_steps_per_epoch: int | None = None
    log_every: int = 50  # steps between progress-bar updates (host reads).
    keep_checkpoints: int = 3
    progress: bool = True


class ConfigError(ValueError):
    """Settings that do not fit together or with the data."""


# Named recipes: the settings a recipe fixes, and the network it is for.
# XNAS section 4.2 gives, for CIFAR-10: 1,500 epochs of batch 96, SGD with
# Nesterov momentum, 5 cycles of power-cosine annealing with amplitude decay
# 0.5, cutout, scheduled drop-path, auxiliary towers, label smoothing,
# AutoAugment and weight decay; for ImageNet: 250 epochs, one power-cosine
# cycle, Nesterov momentum.  The values it does not give come from the works
# it cites: the power-cosine curve (exponent 10) from sharpDARTS (Hundt et
# al. 2019); the learning rate, momentum, weight decay, gradient clip, cutout
# size, drop-path probability and auxiliary weight from DARTS's CIFAR-10
# training (Liu et al. 2019), and for ImageNet its ImageNet training (batch
# 128, rate 0.1, weight decay 3e-5, no drop-path, no cutout); the label
# smoothing factor 0.1 from DARTS's ImageNet training, the only one of the
# cited works that smooths labels.  ``darts`` is DARTS's own CIFAR-10
# recipe, which the XNAS paper calls XNAS-Plain (2.48% error).
_DARTS_CIFAR = dict(
    epochs=600, batch_size=96, learning_rate=0.025, lr_min=0.0, lr_schedule="cosine",
    cycles=1, cycle_decay=0.5, power_exponent=10.0, momentum=0.9, nesterov=False,
    weight_decay=3e-4, grad_clip=5.0, auxiliary_weight=0.4, drop_path_prob=0.2,
    label_smoothing=0.0, autoaugment=False, cutout=None,
)
RECIPES: dict[str, tuple[str, dict[str, Any]]] = {
    "darts": ("cifar", _DARTS_CIFAR),
    "xnas": ("cifar", dict(
        _DARTS_CIFAR, epochs=1500, lr_schedule="power_cosine", cycles=5, nesterov=True,
        label_smoothing=0.1, autoaugment=True,
    )),
    "xnas-imagenet": ("imagenet", dict(
        _DARTS_CIFAR, epochs=250, batch_size=128, learning_rate=0.1, lr_schedule="power_cosine",
        cycles=1, nesterov=True, weight_decay=3e-5, drop_path_prob=0.0, label_smoothing=0.1,
        cutout=0,
    )),
}  # fmt: skip
RECIPE_FIELDS = frozenset(_DARTS_CIFAR)


def recipe_config(recipe: str, **overrides: Any) -> Config:
    """The :class:`Config` of a named recipe, with ``overrides`` on top.

    Raises:
      ConfigError: for an unknown recipe, or a network (``network`` or the
        variant of ``size``) that the recipe is not for.
    """
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}; known: {', '.join(sorted(RECIPES))}")
    network, settings = RECIPES[recipe]
    size = overrides.get("size")
    chosen = evalnet.SIZES[size].variant if size is not None else overrides.get("network", network)
    if chosen != network:
        others = [name for name, (net, _) in RECIPES.items() if net == chosen]
        raise ConfigError(
            f"recipe {recipe!r} is for the {network} network, not {chosen}"
            + (f"; use --recipe {' or '.join(others)}" if others else "")
        )
    return Config(**{**settings, "network": network, **overrides, "recipe": recipe})


def recipe_settings(config: Config) -> dict[str, Any]:
    """The recipe-controlled settings of a config, as resolved (JSON-ready)."""
    return {"recipe": config.recipe, "network": config.network,
            **{name: getattr(config, name) for name in sorted(RECIPE_FIELDS)}}


class TrainState(train_state.TrainState):
    """Flax's TrainState (step, params, opt_state, apply_fn, tx) plus BN statistics."""

    batch_stats: Any


@dataclasses.dataclass(frozen=True)
class Setup:
    """What a config resolves to once the data's shape is known."""

    genotype: genotypes.Genotype
    genotype_name: str  # the published name, or "custom".
    variant: str
    channels: int
    layers: int
    image_shape: tuple[int, int, int]  # (H, W, C)
    num_classes: int
    crop_padding: int
    flip: bool
    cutout: int


# --------------------------------------------------------------------------
# Configuration.


def _genotype_name(spec: str) -> str:
    names = {name.lower(): name for name in genotypes.PUBLISHED}
    return names.get(spec.strip().lower(), "custom")


def resolve_setup(
    config: Config, image_shape: Sequence[int], num_classes: int, genotype: genotypes.Genotype
) -> Setup:
    """Fills the size- and data-dependent defaults of ``config``."""
    if config.size is not None:
        size = evalnet.SIZES[config.size]
        variant, channels, layers = size.variant, size.channels, size.layers
    else:
        default = evalnet.VARIANTS[config.network]
        variant, channels, layers = config.network, default.channels, default.layers
    channels = config.channels if config.channels is not None else channels
    layers = config.layers if config.layers is not None else layers
    side = min(image_shape[0], image_shape[1])
    # DARTS's 4-pixel crop padding and 16-pixel cutout are for 32x32 images.
    crop_padding = config.crop_padding
    if crop_padding is None:
        crop_padding = max(1, round(4 * side / 32))
    cutout = config.cutout if config.cutout is not None else round(16 * side / 32)
    flip = config.flip if config.flip is not None else config.dataset not in _NO_FLIP_DATASETS
    if config.autoaugment and image_shape[-1] != 3:
        raise ConfigError(
            f"AutoAugment's CIFAR-10 policy needs RGB images, not {image_shape[-1]} channel(s): "
            "pass --no-autoaugment"
        )
    return Setup(
        genotype=genotype,
        genotype_name=_genotype_name(config.genotype),
        variant=variant,
        channels=channels,
        layers=layers,
        image_shape=tuple(int(d) for d in image_shape),
        num_classes=int(num_classes),
        crop_padding=crop_padding,
        flip=flip,
        cutout=cutout,
    )


def build_model(config: Config, setup: Setup) -> nn.Module:
    """The evaluation network of a run."""
    try:
        return evalnet.build_network(
            setup.genotype,
            setup.num_classes,
            variant=setup.variant,
            channels=setup.channels,
            layers=setup.layers,
            auxiliary=config.auxiliary_weight > 0,
            dtype=_DTYPES[config.dtype],
        )
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _network_summary(model: nn.Module, setup: Setup) -> dict[str, int]:
    """evalnet.network_summary; a network that does not fit the images is a ConfigError."""
    try:
        return evalnet.network_summary(model, setup.image_shape)
    except ValueError as error:
        raise ConfigError(f"images of shape {setup.image_shape}: {error}") from None


# --------------------------------------------------------------------------
# Optimizer.


def power_cosine_schedule(
    peak_value: float,
    total_steps: int,
    cycles: int = 1,
    cycle_decay: float = 0.5,
    exponent: float = 10.0,
    end_value: float = 0.0,
) -> optax.Schedule:
    """Cycles of power-cosine annealing (Hundt et al., sharpDARTS, 2019).

    Used by XNAS section 4.2 ("5 cycles of power cosine annealing learning
    rate, with amplitude decay factor of 0.5 per cycle").  Within a cycle of
    ``T`` steps, with ``c(t) = (1 + cos(pi t / T)) / 2`` the cosine proportion,
    the rate is ``end + (peak_k - end) * (exponent**c - 1) / (exponent - 1)``:
    it leaves the peak faster than cosine annealing and lingers less at the
    end; ``exponent = 1`` is plain cosine annealing.  The k-th cycle's peak is
    ``peak_value * cycle_decay**k``.

    Args:
      peak_value: the first cycle's initial rate.
      total_steps: steps of the whole run (split into equal cycles).
      cycles: the number of cycles, >= 1.
      cycle_decay: peak multiplier from one cycle to the next.
      exponent: the power curve's base, >= 1.
      end_value: the rate at the end of every cycle.

    Returns:
      An optax schedule (step -> rate); steps past the end keep ``end_value``.
    """
    if cycles < 1 or total_steps < cycles:
        raise ValueError(
            f"need 1 <= cycles <= total_steps, got cycles={cycles}, total_steps={total_steps}"
        )
    if exponent < 1:
        raise ValueError(f"exponent must be >= 1, got {exponent}")
    cycle_steps = total_steps / cycles

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        step = jnp.minimum(jnp.asarray(step, jnp.float32), total_steps)
        cycle = jnp.minimum(jnp.floor(step / cycle_steps), cycles - 1)
        progress = (step - cycle * cycle_steps) / cycle_steps
        cosine = (1 + jnp.cos(jnp.pi * progress)) / 2
        if exponent == 1:
            proportion = cosine
        else:
            proportion = (jnp.power(exponent, cosine) - 1) / (exponent - 1)
        peak = peak_value * jnp.power(cycle_decay, cycle)
        return end_value + (peak - end_value) * proportion

    return schedule


def learning_rate_schedule(config: Config, steps_per_epoch: int) -> optax.Schedule:
    """The run's per-step learning rate (DARTS anneals per epoch; per step is smoother)."""
    total_steps = config.epochs * steps_per_epoch
    if config.lr_schedule == "cosine":
        return optax.cosine_decay_schedule(
            config.learning_rate, total_steps, alpha=config.lr_min / config.learning_rate
        )
    return power_cosine_schedule(
        config.learning_rate,
        total_steps,
        cycles=config.cycles,
        cycle_decay=config.cycle_decay,
        exponent=config.power_exponent,
        end_value=config.lr_min,
    )


def create_optimizer(config: Config, schedule: optax.Schedule) -> optax.GradientTransformation:
    """PyTorch's SGD as DARTS uses it: the loss gradient is clipped by global
    norm, then weight decay (on every parameter) is added, then momentum."""
    return optax.chain(
        optax.clip_by_global_norm(config.grad_clip),
        optax.add_decayed_weights(config.weight_decay),
        optax.sgd(schedule, momentum=config.momentum, nesterov=config.nesterov),
    )


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
    config: Config,
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
    images = input_pipeline.augment(crop_rng, batch["image"], setup.crop_padding, setup.flip)
    if config.autoaugment:  # after crop and flip, before cutout, as in the references
        images = autoaugment.autoaugment(jax.random.fold_in(rng, 3), images)
    images = input_pipeline.normalize(images, mean, std)
    images = input_pipeline.cutout(cutout_rng, images, setup.cutout)
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
    images = input_pipeline.normalize(batch["image"], mean, std)
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


def _fingerprint(config: Config, genotype: genotypes.Genotype) -> dict[str, Any]:
    fields = {
        key: value
        for key, value in dataclasses.asdict(config).items()
        if key not in _RUN_MANAGEMENT_FIELDS
    }
    fields["genotype"] = genotypes.genotype_to_dict(genotype)
    return fields


def _load_data(config: Config):
    """The train and test splits, subset as the config asks."""
    train = input_pipeline.load_dataset(config.dataset, "train", config.data_dir)
    test_dir = config.test_data_dir if config.test_data_dir is not None else config.data_dir
    try:
        test = input_pipeline.load_dataset(config.dataset, "test", test_dir)
    except input_pipeline.DatasetError as error:
        raise input_pipeline.DatasetError(
            f"{error} (the test split is read from --test-data-dir, else --data-dir)"
        ) from None
    if config.max_train_examples is not None:
        train = input_pipeline.subset(train, config.max_train_examples, config.seed)
    if config.max_test_examples is not None:
        test = input_pipeline.subset(test, config.max_test_examples, config.seed)
    if train.images.shape[1:] != test.images.shape[1:]:
        raise input_pipeline.DatasetError(
            f"train images are {train.images.shape[1:]} but test images are "
            f"{test.images.shape[1:]} (H, W, C)"
        )
    if len(train.labels) < config.batch_size:
        raise input_pipeline.DatasetError(
            f"{train.name} has {len(train.labels)} examples, fewer than --batch-size "
            f"{config.batch_size}"
        )
    return train, test


def _train_epoch(
    p_train_step: Callable,
    state: TrainState,
    data: input_pipeline.DeviceData,
    config: Config,
    epoch: int,
    steps_per_epoch: int,
) -> tuple[TrainState, dict[str, float]]:
    """One epoch of compiled steps; returns the state and the summed metrics."""
    permutation = input_pipeline.epoch_permutation(config.seed, epoch, len(data.labels))
    batches = input_pipeline.batch_indices(permutation, config.batch_size)[:steps_per_epoch]
    bar = tqdm(
        total=steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
        disable=not config.progress, file=sys.stderr,
    )  # fmt: skip
    sums = None
    for step_in_epoch, indices in enumerate(batches):
        state, metrics = p_train_step(state, _gather(data, jnp.asarray(indices, jnp.int32)))
        sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
        done = step_in_epoch + 1
        if done % config.log_every == 0 or done == steps_per_epoch:
            shown = jax.device_get(sums)  # the only host read, every log_every steps
            bar.set_postfix(
                loss=f"{shown['loss'] / done:.4f}", acc=f"{shown['accuracy'] / done:.4f}"
            )
        bar.update(1)
    bar.close()
    return state, jax.device_get(sums)


def _evaluate(eval_fn: Callable, state: TrainState, data, batch_size: int) -> dict[str, float]:
    """Loss and accuracy over a whole device dataset, padding the last batch."""
    n = int(data.labels.shape[0])
    totals = None
    for start in range(0, n, batch_size):
        indices = np.arange(start, start + batch_size)
        batch = _gather(data, jnp.asarray(np.minimum(indices, n - 1), jnp.int32))
        batch["mask"] = jnp.asarray(indices < n)
        sums = eval_fn(state, batch)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    return {
        "loss": float(totals["loss"] / totals["count"]),
        "accuracy": float(totals["correct"] / totals["count"]),
    }


@jax.jit
def _gather(data: input_pipeline.DeviceData, indices: jax.Array) -> dict[str, jax.Array]:
    return data.batch(indices)


def _write_json(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


def _truncate_log(path: Path, last_epoch: int) -> None:
    """Keeps the log lines of epochs up to ``last_epoch`` (those checkpointed)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in kept if json.loads(line).get("epoch", 0) <= last_epoch]
    path.write_text("".join(line + "\n" for line in kept))


def train_and_evaluate(
    config: Config, workdir: str | os.PathLike, *, resume: bool = False
) -> dict[str, Any]:
    """Trains and evaluates; checkpoints, ``log.jsonl`` and ``results.json`` go
    to ``workdir``.

    Args:
      config: the run.
      workdir: the output directory (created if needed).
      resume: continue from the latest checkpoint in ``workdir/checkpoints``
        (a fresh start if there is none).  Without it, existing checkpoints
        are an error.

    Returns:
      The results also written to ``results.json``.

    Raises:
      GenotypeError, DatasetError, CheckpointError, ConfigError: a bad
        genotype, missing data, checkpoints that cannot be continued, or
        settings that do not fit the data.
    """
    workdir = Path(workdir)
    genotype = genotypes.get_genotype(config.genotype)
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoints = Checkpointer(
        workdir / CHECKPOINT_DIR,
        fingerprint=_fingerprint(config, genotype),
        max_to_keep=config.keep_checkpoints,
        resume=resume,
    )
    with checkpoints:
        return _run(config, workdir, genotype, checkpoints)


def _run(
    config: Config, workdir: Path, genotype: genotypes.Genotype, checkpoints: Checkpointer
) -> dict[str, Any]:
    train_data, test_data = _load_data(config)
    setup = resolve_setup(config, train_data.images.shape[1:], train_data.num_classes, genotype)
    model = build_model(config, setup)
    stats = _network_summary(model, setup)
    mean, std = (jnp.asarray(s) for s in train_data.channel_stats)

    n_train = len(train_data.labels)
    steps_per_epoch = n_train // config.batch_size
    if config.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    if config.lr_schedule == "power_cosine" and config.cycles > config.epochs * steps_per_epoch:
        raise ConfigError(
            f"--cycles {config.cycles} exceeds the run's {config.epochs * steps_per_epoch} steps"
        )
    schedule = learning_rate_schedule(config, steps_per_epoch)
    state = create_train_state(
        prng_key(config.seed), model, setup.image_shape, create_optimizer(config, schedule)
    )

    # Committed to the device like a restored state, so that a fresh and a
    # resumed run compile the same program (and share the compilation cache).
    state = jax.device_put(state, jax.devices()[0])
    start_epoch = 0
    restored = checkpoints.restore_latest(checkpoint_tree(state))
    log_path = workdir / LOG_FILE
    if restored is not None:
        state = state.replace(**restored.tree)
        start_epoch = restored.step
        _truncate_log(log_path, start_epoch)
        tqdm.write(f"resumed from {checkpoints.step_path(restored.step)} (epoch {start_epoch})")
    elif log_path.exists():
        log_path.unlink()  # a fresh run: the log of a run that never checkpointed.

    train_device = input_pipeline.to_device(train_data)
    test_device = input_pipeline.to_device(test_data)
    step_fn = functools.partial(
        train_step, config=config, setup=setup, steps_per_epoch=steps_per_epoch, mean=mean, std=std
    )
    eval_fn = functools.partial(eval_step, mean=mean, std=std)
    # Compiled ahead of time, once: a call with other shapes would fail
    # instead of silently retracing.
    compile_start = time.perf_counter()
    example = _gather(train_device, jnp.arange(config.batch_size, dtype=jnp.int32))
    p_train_step = jax.jit(step_fn, donate_argnums=0).lower(state, example).compile()
    eval_example = dict(_gather(test_device, jnp.zeros(config.eval_batch_size, jnp.int32)))
    eval_example["mask"] = jnp.ones(config.eval_batch_size, bool)
    p_eval_step = jax.jit(eval_fn).lower(state, eval_example).compile()
    compile_time = time.perf_counter() - compile_start

    log_file = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 (closed below)
    throughputs, epoch_record, test_metrics = [], None, None
    run_start = time.perf_counter()
    try:
        for epoch in range(start_epoch, config.epochs):
            lr = float(schedule(epoch * steps_per_epoch))
            epoch_start = time.perf_counter()
            state, sums = _train_epoch(
                p_train_step, state, train_device, config, epoch, steps_per_epoch
            )
            train_time = time.perf_counter() - epoch_start
            images_per_second = steps_per_epoch * config.batch_size / train_time
            throughputs.append(images_per_second)

            eval_start = time.perf_counter()
            test_metrics = _evaluate(p_eval_step, state, test_device, config.eval_batch_size)
            eval_time = time.perf_counter() - eval_start
            epoch_record = {
                "epoch": epoch + 1,
                "step": int(jax.device_get(state.step)),
                "lr": lr,
                "drop_path_prob": config.drop_path_prob * epoch / config.epochs,
                "train_loss": float(sums["loss"] / steps_per_epoch),
                "train_aux_loss": float(sums["aux_loss"] / steps_per_epoch),
                "train_accuracy": float(sums["accuracy"] / steps_per_epoch),
                "test_loss": test_metrics["loss"],
                "test_accuracy": test_metrics["accuracy"],
                "train_time_s": round(train_time, 3),
                "eval_time_s": round(eval_time, 3),
                "train_images_per_s": round(images_per_second, 1),
                "eval_images_per_s": round(len(test_data.labels) / eval_time, 1),
            }
            checkpoints.save(epoch + 1, checkpoint_tree(state), epoch_record)
            log_file.write(json.dumps(epoch_record) + "\n")
            log_file.flush()
            tqdm.write(json.dumps(epoch_record))
    finally:
        log_file.close()

    if test_metrics is None:  # resumed a finished run: evaluate what it left.
        test_metrics = _evaluate(p_eval_step, state, test_device, config.eval_batch_size)
    # The first epoch of a process warms caches; later epochs show the rate.
    steady = throughputs[1:] or throughputs
    results = {
        "genotype": setup.genotype_name,
        "genotype_cell": genotypes.genotype_to_dict(genotype),
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
        **stats,
        "config": dataclasses.asdict(config),
    }
    _write_json(workdir / RESULTS_FILE, results)
    return results


# --------------------------------------------------------------------------
# Summary and command line.


def summary(
    config: Config,
    image_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """Parameters and multiply-adds of the config's network, without data.

    The input shape and class count come from the dataset's known spec
    (``input_pipeline.DATASETS``), or the arguments for datasets without one.
    """
    genotype = genotypes.get_genotype(config.genotype)
    if config.dataset in _SUMMARY_ONLY_DATASETS:
        known_shape, known_classes = _SUMMARY_ONLY_DATASETS[config.dataset]
    else:
        spec = input_pipeline.DATASETS[config.dataset]
        known_shape, known_classes = spec.image_shape, spec.num_classes
    image_shape = tuple(image_shape) if image_shape is not None else known_shape
    num_classes = num_classes if num_classes is not None else known_classes
    if image_shape is None or num_classes is None:
        raise ConfigError(
            f"the shape of {config.dataset!r} images is only known from the data: "
            f"pass --image-size and --num-classes with --summary"
        )
    setup = resolve_setup(config, image_shape, num_classes, genotype)
    stats = _network_summary(build_model(config, setup), setup)
    return {
        "genotype": setup.genotype_name,
        "dataset": config.dataset,
        **stats,
        "flops_method": "analytic multiply-adds of conv and dense layers, inference network",
        "network": setup.variant,
        "channels": setup.channels,
        "layers": setup.layers,
        "num_classes": setup.num_classes,
        "input_shape": list(setup.image_shape),
        "recipe": {**recipe_settings(config), "cutout": setup.cutout},
    }


def _build_parser() -> cli.ArgumentParser:
    defaults = Config()
    parser = cli.ArgumentParser(
        prog="python -m xnas_jax.train",
        description="Train the evaluation network of a cell (XNAS section 4.2).",
    )
    add = parser.add_argument
    add("--genotype", default=defaults.genotype,
        help=f"published name ({', '.join(genotypes.PUBLISHED)}), JSON file or JSON string")
    add("--dataset", default=defaults.dataset,
        choices=sorted(input_pipeline.DATASETS) + sorted(_SUMMARY_ONLY_DATASETS))
    add("--data-dir", default=None)
    add("--test-data-dir", default=None, help="where the test split lies (default: --data-dir)")
    add("--out-dir", default="runs/train", help="checkpoints, log.jsonl and results.json")
    add("--resume", action="store_true", help="continue from the latest checkpoint in --out-dir")
    add("--summary", action="store_true",
        help="print params and FLOPs as one JSON line and exit (reads no data)")
    add("--image-size", type=cli.positive_int, default=None,
        help="--summary: square image side when the dataset does not fix it")
    add("--image-channels", type=cli.positive_int, default=3,
        help="--summary: image channels when the dataset does not fix them")
    add("--num-classes", type=cli.positive_int, default=None,
        help="--summary: classes when the dataset does not fix them")
    add("--size", choices=sorted(evalnet.SIZES), default=None,
        help="a named network (sets --network, --channels, --layers)")
    add("--network", choices=sorted(evalnet.VARIANTS), default=None,
        help="the network variant (default: the recipe's)")
    add("--channels", type=cli.positive_int, default=None)
    add("--layers", type=cli.positive_int, default=None)
    add("--dtype", choices=sorted(_DTYPES), default=defaults.dtype)
    g = parser.add_argument_group(
        "recipe", "a named recipe sets all of these; each flag given overrides it "
        "(--summary prints the result)")
    g.add_argument("--recipe", choices=sorted(RECIPES), default=defaults.recipe,
                   help="xnas: XNAS section 4.2 (CIFAR); darts: DARTS's (XNAS-Plain); "
                   "xnas-imagenet: the paper's ImageNet recipe")
    add = g.add_argument
    add("--epochs", type=cli.positive_int, default=None)
    add("--batch-size", type=cli.positive_int, default=None)
    add("--learning-rate", "--lr", type=cli.positive_float, default=None)
    add("--lr-min", type=cli.non_negative_float, default=None)
    add("--lr-schedule", choices=("cosine", "power_cosine"), default=None)
    add("--cycles", type=cli.positive_int, default=None)
    add("--cycle-decay", type=cli.positive_float, default=None)
    add("--power-exponent", type=cli.positive_float, default=None)
    add("--momentum", type=cli.probability, default=None)
    add("--nesterov", action=argparse.BooleanOptionalAction, default=None)
    add("--weight-decay", type=cli.non_negative_float, default=None)
    add("--grad-clip", type=cli.positive_float, default=None)
    add("--auxiliary-weight", type=cli.non_negative_float, default=None)
    add("--drop-path-prob", type=cli.probability, default=None)
    add("--label-smoothing", type=cli.probability, default=None)
    add("--autoaugment", action=argparse.BooleanOptionalAction, default=None,
        help="the CIFAR-10 AutoAugment policy, per image inside the step")
    add("--cutout", type=cli.non_negative_int, default=None,
        help="side; 16 at 32x32 unless the recipe says otherwise")
    add = parser.add_argument
    add("--eval-batch-size", type=cli.positive_int, default=defaults.eval_batch_size)
    add("--crop-padding", type=cli.non_negative_int, default=None, help="default 4 at 32x32")
    add("--flip", action=argparse.BooleanOptionalAction, default=None,
        help="random horizontal flips (default: on, off for digit datasets)")
    add("--seed", type=cli.non_negative_int, default=defaults.seed)
    add("--max-train-examples", type=cli.positive_int, default=None)
    add("--max-test-examples", type=cli.positive_int, default=None)
    add("--max-steps-per-epoch", type=cli.positive_int, default=None)
    add("--log-every", type=cli.positive_int, default=defaults.log_every)
    add("--keep-checkpoints", type=cli.positive_int, default=defaults.keep_checkpoints)
    add("--no-progress", dest="progress", action="store_false", help="no progress bar")
    add("--compilation-cache", default=None, metavar="DIR",
        help="JAX's persistent compilation cache: a resumed run skips recompiling")
    return parser  # fmt: skip


def parse_args(argv: Sequence[str] | None = None) -> tuple[Config, argparse.Namespace]:
    """The :class:`Config` of a command line, and the parsed flags."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    fields = {f.name for f in dataclasses.fields(Config)} - {"recipe"}
    # The recipe's settings, then every flag given (None: not given).
    overrides = {k: v for k, v in vars(args).items()
                 if k in fields and not (v is None and (k in RECIPE_FIELDS or k == "network"))}
    try:
        config = recipe_config(args.recipe, **overrides)
    except ConfigError as error:
        parser.error(str(error))
    if config.lr_min >= config.learning_rate:
        parser.error(
            f"--lr-min {config.lr_min} must be below --learning-rate {config.learning_rate}"
        )
    if config.lr_schedule == "power_cosine" and config.power_exponent < 1:
        parser.error(f"--power-exponent must be >= 1, got {config.power_exponent}")
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
        genotypes.get_genotype(config.genotype)  # fail before touching the disk.
        try:
            out_dir = cli.writable_dir(args.out_dir, "--out-dir")
            if args.compilation_cache is not None:
                cli.enable_compilation_cache(args.compilation_cache)
        except ValueError as error:
            cli.fail(str(error))
        results = train_and_evaluate(config, out_dir, resume=args.resume)
    except (
        genotypes.GenotypeError,
        input_pipeline.DatasetError,
        CheckpointError,
        ConfigError,
    ) as error:
        cli.fail(str(error))
    print(json.dumps({k: v for k, v in results.items() if k not in ("config", "genotype_cell")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
