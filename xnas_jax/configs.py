"""Every hyper-parameter of a search and of a training run, and their command lines.

:class:`SearchConfig` and :class:`TrainConfig` are plain frozen dataclasses,
as in the Flax examples.  Both command lines are generated from their fields
(:func:`build_parser`): a field ``max_train_examples`` is the flag
``--max-train-examples`` in both, with the help, check and default written
once in :data:`FLAGS`.  ``--config FILE`` (JSON or YAML) sets fields too;
flags given on the command line override it.

Settings that do not change what a run computes (where it writes, how often
it reports) are :data:`VOLATILE`: they may differ when a run is resumed.
Everything else forms the run's fingerprint (:func:`fingerprint`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any, NamedTuple, Sequence, TypeVar

from xnas_jax import cli, spaces
from xnas_jax.spaces.darts import evalnet, genotypes
from xnas_jax.spaces import kernels
from xnas_jax.spaces.nb201 import network as nb201
from xnas_jax.data import specs

__all__ = [
    "SearchConfig", "TrainConfig", "ConfigError", "with_data_defaults", "FLAGS", "VOLATILE",
    "RETIRED", "RECIPES", "RECIPE_FIELDS", "recipe_config", "recipe_settings", "build_parser",
    "config_from_args",
    "fingerprint", "SEARCH_DEFAULTS", "parse_command_line",
]


class ConfigError(ValueError):
    """Settings that do not fit together or with the data."""


# ------------------------------------------------------------------ search

# The smallest search that still exercises the whole method: the README's
# quick run on the embedded digits (8x8 grayscale) finishes in minutes on a
# 2-core CPU.  Other datasets get the DARTS/XNAS search network, with the
# paper's batch of 96 (XNAS section 4.1).
SEARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": dict(channels=8, layers=5, epochs=10),
    "*": dict(channels=16, layers=8, epochs=50),
}


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """An XNAS (or DARTS) search.  ``None`` fields take the dataset's default."""

    # Data.
    dataset: str = "digits"
    data_dir: str | None = None
    cache_dir: str | None = None
    max_train_examples: int | None = None
    train_per_class: int | None = None
    downsample: int = 1
    crop_padding: int | None = None
    flip: bool | None = None
    # Supernet.
    space: str = "darts"
    channels: int | None = None
    layers: int | None = None
    nodes: int = 4
    ops: tuple[str, ...] | None = None
    dtype: str = "float32"
    # Schedule.
    epochs: int | None = None
    batch_size: int = 96
    max_steps_per_epoch: int | None = None
    seed: int = 0
    seeds: int | tuple[int, ...] | None = None
    # Network weights (DARTS's recipe).
    learning_rate: float = 0.025
    learning_rate_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    # Architecture weights.
    optimizer: str = "xnas"
    reward_bound: float = 1.0
    wipeout_factor: float = 1.0
    arch_learning_rate_normal: float | None = None
    arch_learning_rate_reduce: float | None = None
    darts_learning_rate: float = 3e-4
    darts_weight_decay: float = 1e-3
    warmup_epochs: int = 0
    skip_cap: int | None = None
    normalized_rewards: bool = False
    skip_wiped_out: bool = True
    # Run.
    out_dir: str | None = None
    runs_root: str = "runs/search"
    resume: bool = False
    log_every: int = 10
    keep_checkpoints: int = 2
    progress: bool = True
    compilation_cache: str | bool | None = None  # None: the user's cache; False: none.
    # Devices and processes.
    devices: int | None = None
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    data_shards: int | None = None

    @property
    def seed_list(self) -> tuple[int, ...]:
        """The searches' seeds: ``seeds`` as a list, N seeds from ``seed``, or ``(seed,)``."""
        if self.seeds is None:
            return (self.seed,)
        if isinstance(self.seeds, int):
            return tuple(range(self.seed, self.seed + self.seeds))
        return tuple(int(s) for s in self.seeds)

    def resolved(self) -> SearchConfig:
        """The config with the dataset's and the space's defaults filled in where a field is
        None (known before any data is read; the rest: :func:`with_data_defaults`), checked
        against its space.

        Raises:
          ConfigError: an unknown space or operation, a warm-up that leaves no
            architecture round, or a skip remedy in a space that has none (one line).
        """
        defaults = dict(SEARCH_DEFAULTS.get(self.dataset, SEARCH_DEFAULTS["*"]))
        try:
            space = spaces.get_space(self.space)
            defaults["ops"] = space.default_ops
            filled = {k: v for k, v in defaults.items() if getattr(self, k) is None}
            space.validate_ops(filled.get("ops", self.ops))
        except ValueError as error:
            raise ConfigError(f"--space: {error}" if self.space not in spaces.SPACES
                              else str(error)) from None
        epochs = filled.get("epochs", self.epochs)
        if self.warmup_epochs >= epochs:
            raise ConfigError(f"--warmup-epochs {self.warmup_epochs} leaves no architecture "
                              f"round in {epochs} epochs: it must be less than --epochs")
        for name in ("skip_cap", "normalized_rewards"):
            if getattr(self, name) not in (None, False) and self.space != "nb201":
                raise ConfigError(f"--{name.replace('_', '-')} is implemented for --space "
                                  f"nb201, not {self.space}")
        seeds = self.seed_list
        return dataclasses.replace(self, **filled, seed=seeds[0], seeds=seeds)


# ------------------------------------------------------------------ training


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every hyper-parameter of an evaluation run (defaults: the ``darts`` recipe).

    :func:`recipe_config` builds the config of a named recipe (:data:`RECIPES`).
    """

    recipe: str = "darts"
    genotype: str = "XNAS"
    # Data.
    dataset: str = "cifar10"
    data_dir: str | None = None
    test_data_dir: str | None = None
    cache_dir: str | None = None
    max_train_examples: int | None = None
    max_test_examples: int | None = None
    downsample: int = 1
    crop_padding: int | None = None
    flip: bool | None = None
    # Network: a named size sets all three; explicit channels/layers override it.
    size: str | None = None
    network: str = "cifar"
    channels: int | None = None
    layers: int | None = None
    dtype: str = "float32"
    # Optimization.
    epochs: int = 600
    batch_size: int = 96
    max_steps_per_epoch: int | None = None
    seed: int = 0
    learning_rate: float = 0.025
    learning_rate_min: float = 0.0
    learning_rate_schedule: str = "cosine"
    cycles: int = 1
    cycle_decay: float = 0.5
    power_exponent: float = 10.0
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 3e-4
    grad_clip: float | None = 5.0  # None: no clipping
    # Regularization.
    auxiliary_weight: float = 0.4
    drop_path_prob: float = 0.2
    label_smoothing: float = 0.0
    autoaugment: bool = False
    cutout: int | None = None
    # Run.
    eval_batch_size: int = 256
    out_dir: str | None = None
    runs_root: str = "runs/train"
    resume: bool = False
    log_every: int = 50
    keep_checkpoints: int = 3
    progress: bool = True
    compilation_cache: str | bool | None = None  # None: the user's cache; False: none.
    # Devices and processes.
    devices: int | None = None
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    data_shards: int | None = None


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
# recipe, which the XNAS paper calls XNAS-Plain (2.48% error).  ``nb201`` is
# NAS-Bench-201's own training of its cells (Dong & Yang 2020, section 2.3):
# 200 epochs of batch 256, Nesterov SGD with momentum 0.9, rate 0.1 annealed
# by cosine to 0, weight decay 5e-4, random crop (padding 4 at 32x32) and
# flip only; it clips no gradient and its network has no auxiliary tower
# and no drop-path.  It is the default recipe of an nb201 cell.
_DARTS_CIFAR = dict(
    epochs=600, batch_size=96, learning_rate=0.025, learning_rate_min=0.0,
    learning_rate_schedule="cosine", cycles=1, cycle_decay=0.5, power_exponent=10.0,
    momentum=0.9, nesterov=False, weight_decay=3e-4, grad_clip=5.0, auxiliary_weight=0.4,
    drop_path_prob=0.2, label_smoothing=0.0, autoaugment=False, cutout=None,
)
RECIPES: dict[str, tuple[str, dict[str, Any]]] = {
    "darts": ("cifar", _DARTS_CIFAR),
    "xnas": ("cifar", dict(
        _DARTS_CIFAR, epochs=1500, learning_rate_schedule="power_cosine", cycles=5,
        nesterov=True, label_smoothing=0.1, autoaugment=True,
    )),
    "xnas-imagenet": ("imagenet", dict(
        _DARTS_CIFAR, epochs=250, batch_size=128, learning_rate=0.1,
        learning_rate_schedule="power_cosine", cycles=1, nesterov=True, weight_decay=3e-5,
        drop_path_prob=0.0, label_smoothing=0.1, cutout=0,
    )),
    "nb201": ("nb201", dict(
        _DARTS_CIFAR, epochs=200, batch_size=256, learning_rate=0.1, learning_rate_min=0.0,
        nesterov=True, weight_decay=5e-4, grad_clip=None, auxiliary_weight=0.0,
        drop_path_prob=0.0, cutout=0,
    )),
}  # fmt: skip
RECIPE_FIELDS = frozenset(_DARTS_CIFAR)


def _cell_space(genotype: str) -> spaces.TrainableSpace:
    """The space of the cell ``genotype`` names (:func:`xnas_jax.spaces.read_genotype`)."""
    try:
        return spaces.training_space(spaces.read_genotype(genotype).space)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _check_space(space: spaces.TrainableSpace, network: str, chosen_by: str,
                 auxiliary_weight: float = 0.0, drop_path_prob: float = 0.0) -> None:
    """The network, auxiliary tower and drop-path asked for are ones the cell's space has."""
    fits = [name for name, (net, _) in RECIPES.items() if net in space.networks]
    if network not in space.networks:
        advice = (f"leave {chosen_by.split()[0]} out" if not chosen_by.startswith("--recipe")
                  else f"pass --recipe {' or '.join(fits)}, or leave --recipe out (the "
                       f"{space.default_recipe} recipe)")
        raise ConfigError(
            f"a cell of the {space.name} space trains the {' or '.join(space.networks)} "
            f"network, not the {network} network of {chosen_by}: {advice}")
    if auxiliary_weight > 0 and not space.auxiliary_head:
        raise ConfigError(
            f"--auxiliary-weight {auxiliary_weight}: the {space.name} network has no auxiliary "
            f"tower; pass --auxiliary-weight 0 (as the {space.default_recipe} recipe does)")
    if drop_path_prob > 0 and not space.drop_path:
        raise ConfigError(
            f"--drop-path-prob {drop_path_prob}: the {space.name} network has no drop-path; "
            f"pass --drop-path-prob 0 (as the {space.default_recipe} recipe does)")


def recipe_config(recipe: str | None, **overrides: Any) -> TrainConfig:
    """The :class:`TrainConfig` of a named recipe, with ``overrides`` on top.

    ``recipe`` None takes the default recipe of the cell's space (the
    genotype of ``overrides``, else :class:`TrainConfig`'s): ``nb201`` for an
    nb201 cell, ``darts`` for a DARTS cell.

    Raises:
      ConfigError: for an unknown recipe, a genotype that no space reads, a
        network (``network`` or the variant of ``size``) that the recipe or
        the cell's space is not for, or an auxiliary tower or drop-path that
        the space's network does not have.
    """
    space = _cell_space(overrides.get("genotype", TrainConfig.genotype))
    if recipe is None:
        recipe = space.default_recipe
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}; known: {', '.join(sorted(RECIPES))}")
    network, settings = RECIPES[recipe]
    size = overrides.get("size")
    chosen = evalnet.SIZES[size].variant if size is not None else overrides.get("network", network)
    chosen_by = (f"--size {size}" if size is not None else "--network"
                 if "network" in overrides else f"--recipe {recipe}")
    _check_space(space, chosen, chosen_by)
    if chosen != network:
        others = [name for name, (net, _) in RECIPES.items() if net == chosen]
        raise ConfigError(
            f"recipe {recipe!r} is for the {network} network, not {chosen}"
            + (f"; use --recipe {' or '.join(others)}" if others else "")
        )
    config = TrainConfig(**{**settings, "network": network, **overrides, "recipe": recipe})
    _check_space(space, config.network, chosen_by, config.auxiliary_weight,
                 config.drop_path_prob)
    return config


def recipe_settings(config: TrainConfig) -> dict[str, Any]:
    """The recipe-controlled settings of a config, as resolved (JSON-ready)."""
    return {"recipe": config.recipe, "network": config.network,
            **{name: getattr(config, name) for name in sorted(RECIPE_FIELDS)}}


# ------------------------------------------------------------------ fingerprint

# Fields that do not change what a run computes: they may differ on resume.
VOLATILE = frozenset({
    "out_dir", "runs_root", "resume", "log_every", "keep_checkpoints", "progress",
    "compilation_cache", "cache_dir", "data_dir", "test_data_dir", "eval_batch_size",
    "max_test_examples", "genotype", "devices", "coordinator_address",
    "num_processes", "process_id",
})  # fmt: skip


def with_data_defaults(config: SearchConfig | TrainConfig, *, data_shards: int | None = None,
                       image_shape: Sequence[int] | None = None) -> Any:
    """The config with the defaults that depend on the data filled in where a field is None.

    The one place they are resolved, for search and training alike:
    ``data_shards`` (one per process: ``shards.default_count`` of the mesh,
    passed before loading), then from the images' shape ``crop_padding`` and
    (training) ``cutout``, and ``flip`` from the dataset (natural images for a
    dataset known by its shape only).
    """
    values: dict[str, Any] = {}
    if config.data_shards is None and data_shards is not None:
        values["data_shards"] = data_shards
    if image_shape is not None:
        if config.crop_padding is None:
            values["crop_padding"] = specs.default_crop_padding(image_shape)
        if getattr(config, "cutout", 0) is None:
            values["cutout"] = specs.default_cutout(image_shape)
    if config.flip is None:
        values["flip"] = (specs.DATASETS[config.dataset].flip if config.dataset in specs.DATASETS
                          else True)
    return dataclasses.replace(config, **values)


# Search settings that left the command line (benchmark switches, the same
# results either way), with the value every run now has (None: never part of
# the fingerprint).  The config.json and the checkpoints of a run made before
# still hold them: a --config file's are ignored, and the fingerprint keeps
# the value, so that such a run resumes.
RETIRED = {"depthwise": "shifts", "single_trace": None}


def fingerprint(config: SearchConfig | TrainConfig) -> dict[str, Any]:
    """The settings that make two runs the same run (checked on resume)."""
    return {
        **({k: v for k, v in RETIRED.items() if v is not None}
           if isinstance(config, SearchConfig) else {}),
        **{key: (list(value) if isinstance(value, tuple) else value)
           for key, value in dataclasses.asdict(config).items()
           if key not in VOLATILE},
    }


# ------------------------------------------------------------------ command lines


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _seeds(text: str) -> int | tuple[int, ...]:
    """``4``: four seeds from --seed; ``0,3,7``: those seeds."""
    if "," not in text:
        return cli.positive_int(text)
    seeds = tuple(cli.non_negative_int(t.strip()) for t in text.split(",") if t.strip())
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct seeds, got {text!r}")
    return seeds


def _wipeout_factor(text: str) -> float:
    value = cli.positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


# The command each config is for: a :class:`Flag`'s help or default text may
# differ between them (a dict keyed by command).
COMMANDS: dict[type, str] = {SearchConfig: "search", TrainConfig: "train"}

# The flags that change how fast a run goes and how it compiles (its numbers
# at most by rounding): --help lists them apart, under this group.
ADVANCED = "advanced: speed and compilation"

PerCommand = str | dict[str, str]


class Flag(NamedTuple):
    """How a field appears on the command line.

    ``help`` and ``default`` are one text for both commands, or a dict of a
    text per command (:data:`COMMANDS`), where the two commands' flags mean
    different things (e.g. a search's batch holds images of each half).
    """

    group: str
    help: PerCommand
    type: Any = None  # an argparse type; None: a string (bool fields: --x/--no-x).
    choices: Sequence[str] | None = None
    default: PerCommand | None = None  # the help's default text where the field's is None.

    def text(self, command: str) -> tuple[str, str | None]:
        """The help and default texts of this flag in ``command``."""
        return tuple(value[command] if isinstance(value, dict) else value
                     for value in (self.help, self.default))


_DATASETS = tuple(sorted(specs.DATASETS))
FLAGS: dict[str, Flag] = {
    # Data.
    "dataset": Flag("data", "dataset; 'digits' is embedded (no download)", choices=_DATASETS),
    "data_dir": Flag("data", "local data: official files (CIFAR python batches, MNIST IDX), an "
                     "image folder/zip of <split>/<class>/<image>, or a tfds data dir",
                     default="none: digits is embedded, others come from tensorflow-datasets' "
                     "own folder"),
    "test_data_dir": Flag("data", "where the test split lies", default="--data-dir"),
    "cache_dir": Flag("data", "cache decoded arrays here (.npz): later runs skip decoding",
                      default="none: decode every run"),
    "max_train_examples": Flag("data", "use at most this many training images (quick runs)",
                               cli.positive_int, default="all"),
    "max_test_examples": Flag("data", "evaluate on at most this many test images",
                              cli.positive_int, default="all"),
    "train_per_class": Flag("data", "a class-balanced subset: this many training images of "
                            "each class (the NB201 table's proxy)", cli.positive_int,
                            default="all"),
    "downsample": Flag("data", "average blocks of N x N pixels (2: CIFAR at 16x16, for CPU "
                       "proxies)", cli.positive_int),
    "crop_padding": Flag("data", "random-crop padding", cli.non_negative_int,
                         default="4 at 32x32, in proportion for other sizes, at least 1"),
    "flip": Flag("data", "random horizontal flips", default="the dataset's: natural images "
                 "only"),
    # Networks.
    "channels": Flag("network", {"search": "initial channels C of the supernet",
                                 "train": "initial channels C of the evaluation network"},
                     cli.positive_int,
                     default={"search": "8 on digits, else 16",
                              "train": "--size's, else the --network's: cifar 36, imagenet 48, "
                                       "nb201 16"}),
    "layers": Flag("network", {"search": "number of cells of the supernet (nb201: cells per "
                               "stage)",
                               "train": "number of cells of the evaluation network (nb201: "
                                        "cells per stage)"},
                   cli.positive_int,
                   default={"search": "5 on digits, else 8",
                            "train": "--size's, else the --network's: cifar 20, imagenet 14, "
                                     "nb201 5"}),
    "space": Flag("network", "the search space: darts (DARTS's cell, the XNAS paper's), "
                  "nb201 (NAS-Bench-201's), or one registered with "
                  "xnas_jax.spaces.register_space"),
    "nodes": Flag("network", "intermediate nodes per cell (nb201: all nodes, input and "
                  "output included)", cli.positive_int),
    "ops": Flag("network", f"comma-separated experts searched on every edge, from: "
                f"{','.join(genotypes.PRIMITIVES)} (nb201: its own {len(nb201.NB201_OPS)})",
                _comma_list,
                default=f"the space's: darts: the XNAS paper's "
                f"{len(genotypes.XNAS_PRIMITIVES)}, all but none; nb201: its "
                f"{len(nb201.NB201_OPS)}"),
    "dtype": Flag(ADVANCED, "computation dtype (parameters stay float32); bfloat16 is faster "
                  "on GPUs and TPUs and rounds more", choices=tuple(kernels.DTYPES)),
    "genotype": Flag("network", f"the cell: a published DARTS name "
                     f"({', '.join(genotypes.PUBLISHED)}), an nb201 cell string "
                     f"'|op~0|+|op~0|op~1|', a search's genotype.json, or a JSON string"),
    "size": Flag("network", "a named network (sets --network, --channels, --layers)",
                 choices=tuple(sorted(evalnet.SIZES)), default="none"),
    "network": Flag("network", "the evaluation network: DARTS's cifar or imagenet variant, or "
                    "nb201 (an nb201 cell's)",
                    choices=tuple(sorted(network for space in spaces.SPACES.values()
                                         if isinstance(space, spaces.TrainableSpace)
                                         for network in space.networks))),
    # Schedule.
    "recipe": Flag("optimization", "a named training recipe: xnas (XNAS section 4.2), darts "
                   "(DARTS's, the paper's XNAS-Plain), xnas-imagenet, nb201 "
                   "(NAS-Bench-201's, an nb201 cell's default); each flag given "
                   "overrides one of its settings (--summary prints them)",
                   choices=tuple(sorted(RECIPES))),
    "epochs": Flag("optimization", "epochs", cli.positive_int, default="10 on digits, else 50"),
    "batch_size": Flag("optimization", {
        "search": "images per step from each half of the training set: one batch for the "
                  "weights, one for the architecture",
        "train": "images per training step"}, cli.positive_int),
    "max_steps_per_epoch": Flag("optimization", "cap the steps of an epoch (quick runs)",
                                cli.positive_int, default="none"),
    "seed": Flag("optimization", {
        "search": "seed of the initialization, the split into halves, the data order and "
                  "augmentation",
        "train": "seed of the initialization, data order, augmentation and drop-path"},
        cli.non_negative_int),
    "seeds": Flag("optimization", "searches run at once, in one program: N (seeds --seed ... "
                  "--seed+N-1) or a list 0,3,7; each has its own initialization, split and "
                  "order", _seeds, default="1"),
    "learning_rate": Flag("optimization", "initial SGD learning rate of the network weights",
                          cli.positive_float),
    "learning_rate_min": Flag("optimization", {
        "search": "final learning rate of the weights' cosine annealing",
        "train": "final learning rate of the annealing"}, cli.non_negative_float),
    "learning_rate_schedule": Flag("optimization", "cosine annealing, or power-cosine cycles",
                                   choices=("cosine", "power_cosine")),
    "cycles": Flag("optimization", "power_cosine: annealing cycles", cli.positive_int),
    "cycle_decay": Flag("optimization", "power_cosine: peak factor per cycle",
                        cli.positive_float),
    "power_exponent": Flag("optimization", "power_cosine: the power curve's base",
                           cli.positive_float),
    "momentum": Flag("optimization", "SGD momentum of the network weights", cli.probability),
    "nesterov": Flag("optimization", "Nesterov momentum"),
    "weight_decay": Flag("optimization", "L2 weight decay of the network weights",
                         cli.non_negative_float),
    "grad_clip": Flag("optimization", "global-norm gradient clip of the network weights "
                      "(the nb201 recipe clips none)", cli.positive_float),
    # Regularization.
    "auxiliary_weight": Flag("regularization", "weight of the auxiliary tower's loss (0: none)",
                             cli.non_negative_float),
    "drop_path_prob": Flag("regularization", "drop-path probability, reached at the last epoch",
                           cli.probability),
    "label_smoothing": Flag("regularization", "label smoothing", cli.probability),
    "autoaugment": Flag("regularization", "the CIFAR-10 AutoAugment policy, inside the step"),
    "cutout": Flag("regularization", "cutout side", cli.non_negative_int,
                   default="16 at 32x32, in proportion for other sizes"),
    # Architecture weights.
    "optimizer": Flag("architecture weights", "xnas, or the DARTS baseline (Adam on softmax "
                      "logits)", choices=("xnas", "darts")),
    "reward_bound": Flag("architecture weights", "XNAS reward clip L", cli.positive_float),
    "wipeout_factor": Flag("architecture weights", "XNAS zeta in (0, 1]; 1 is the theory's safe "
                           "wipeout", _wipeout_factor),
    "arch_learning_rate_normal": Flag("architecture weights", "XNAS learning rate of normal "
                                      "cells", cli.positive_float, default="eta* of eq. 4"),
    "arch_learning_rate_reduce": Flag("architecture weights", "XNAS learning rate of reduction "
                                      "cells", cli.positive_float, default="eta* of eq. 4"),
    "darts_learning_rate": Flag("architecture weights", "Adam learning rate of --optimizer "
                                "darts", cli.positive_float),
    "darts_weight_decay": Flag("architecture weights", "L2 decay on the softmax logits of "
                               "--optimizer darts", cli.non_negative_float),
    "warmup_epochs": Flag("architecture weights", "epochs in which only the network weights "
                          "train: u stays uniform and no reward counts; the horizon T is the "
                          "steps after them (0: the paper's algorithm)", cli.non_negative_int),
    "skip_cap": Flag("architecture weights", "at most this many skip_connect edges in the "
                     "genotype: the weakest skips, by the selection's evidence, take their "
                     "edge's next op (--space nb201)", cli.non_negative_int, default="no cap"),
    "normalized_rewards": Flag("architecture weights", "rewards on each expert's output divided "
                               "by its per-image RMS, so that an expert's scale does not "
                               "weigh in (--space nb201; the outputs are unchanged)"),
    "skip_wiped_out": Flag(ADVANCED, "leave out experts wiped out on every edge (the same "
                           "results, less work)"),
    # Run.
    "eval_batch_size": Flag("run", "batch size of the test evaluation", cli.positive_int),
    "out_dir": Flag("run", "the run folder (a finished run's folder is never reused)",
                    default="a new <runs-root>/<date-time>"),
    "runs_root": Flag("run", "where new run folders go, with a 'latest' link"),
    "resume": Flag("run", "continue the run in --out-dir, else the newest unfinished run under "
                   "--runs-root"),
    "log_every": Flag("run", "steps between progress updates and TensorBoard scalars",
                      cli.positive_int),
    "keep_checkpoints": Flag("run", "how many of the newest checkpoints to keep",
                             cli.positive_int),
    "progress": Flag("run", "progress bars"),
    "devices": Flag("devices", "use the first N devices", cli.positive_int,
                    default="all devices of all processes"),
    "coordinator_address": Flag("devices", "join a multi-process run: host:port of process "
                                "0, or 'auto' to detect the cluster (also "
                                "JAX_COORDINATOR_ADDRESS)", default="one process"),
    "num_processes": Flag("devices", "processes of a multi-process run (also "
                          "JAX_NUM_PROCESSES)", cli.positive_int, default="none"),
    "process_id": Flag("devices", "this process's index (also JAX_PROCESS_ID)",
                       cli.non_negative_int, default="none"),
    "data_shards": Flag("devices", "cut the training data into K shards, each read only by "
                        "the processes whose devices hold it; it fixes the data order, so a "
                        "resume keeps it", cli.positive_int,
                        default="one per process"),
    "compilation_cache": Flag(ADVANCED, "persistent XLA compilation cache in this folder: a "
                              "repeated run loads its compiled programs instead of compiling "
                              "them; --no-compilation-cache turns it off",
                              default=f"on, in {cli.DEFAULT_COMPILATION_CACHE}"),
}

Config = TypeVar("Config", SearchConfig, TrainConfig)


def build_parser(config_class: type, prog: str, description: str,
                 choices: dict[str, Sequence[str]] | None = None) -> cli.ArgumentParser:
    """The command line of ``config_class``: one flag per field, from :data:`FLAGS`.

    Flags default to ``argparse.SUPPRESS``, so the parsed namespace holds only
    what the command line gave; the dataclass holds the defaults.  ``choices``
    replaces the choices of some flags (e.g. datasets known only by shape).
    """
    choices = choices or {}
    command = COMMANDS[config_class]
    parser = cli.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", metavar="FILE",
                        help="a JSON or YAML file of settings; flags override it")
    fields = dataclasses.fields(config_class)
    # The groups in the order of their first flag, the advanced ones last.
    names = dict.fromkeys(FLAGS[f.name].group for f in fields if FLAGS[f.name].group != ADVANCED)
    groups = {name: parser.add_argument_group(name) for name in [*names, ADVANCED]}
    for field in fields:
        flag = FLAGS[field.name]
        help_text, default_text = flag.text(command)
        value = field.default
        if value is None:
            if default_text is None:
                raise TypeError(f"FLAGS[{field.name!r}] needs a default text: "
                                f"{config_class.__name__}.{field.name} defaults to None")
            default = default_text
        elif isinstance(value, (str, tuple)):
            default = ",".join(value) if isinstance(value, tuple) else value
        else:
            default = json.dumps(value)
        if config_class is TrainConfig and field.name in RECIPE_FIELDS:
            default = f"set by --recipe; darts: {default}"
        option = "--" + field.name.replace("_", "-")
        kwargs: dict[str, Any] = dict(default=argparse.SUPPRESS,
                                      help=f"{help_text} (default: {default})")
        group = groups[flag.group]
        if field.type in ("bool", "bool | None"):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif field.type == "str | bool | None":  # --x DIR, and --no-x for False.
            group.add_argument(option, metavar="DIR", **kwargs)
            kwargs = dict(dest=field.name, action="store_false", default=argparse.SUPPRESS,
                          help=f"turn {option} off")
            option = "--no-" + option[2:]
        else:
            if flag.type is not None:
                kwargs["type"] = flag.type
            if choices.get(field.name, flag.choices) is not None:
                kwargs["choices"] = choices.get(field.name, flag.choices)
        group.add_argument(option, **kwargs)
    # The same choices check the values of a --config file (config_from_args).
    parser.set_defaults(_choices=dict(choices))
    return parser


def _file_value(field: dataclasses.Field, value: Any, where: str,
                choices: Sequence[str] | None) -> Any:
    """A ``--config`` file's value of ``field``, checked and converted as its flag's text is.

    Numbers and lists go through the flag's own ``type`` (as the text the
    flag would be given: ``10``, ``0,3,7``, ``0,`` for a list of one), so a file accepts what the
    command line accepts and refuses what it refuses; booleans must be
    true/false; null only where the field may be None.

    Raises:
      ConfigError: naming ``where`` (the file and the key) and the problem.
    """
    flag = FLAGS[field.name]
    kind = str(field.type)
    if value is None:
        if "None" in kind:
            return None
        raise ConfigError(f"{where}: expected a value, got null")
    if kind.startswith("bool"):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    scalar = isinstance(value, (str, int, float)) and not isinstance(value, bool)
    listed = isinstance(value, (list, tuple)) and all(
        isinstance(v, (str, int)) and not isinstance(v, bool) for v in value)
    if flag.type is None:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
    elif not (scalar or (listed and "tuple" in kind)):
        raise ConfigError(f"{where}: expected {'a list or ' if 'tuple' in kind else ''}"
                          f"a single value, got {value!r}")
    else:
        text = str(value)
        if listed:  # a list of one is a list: ``--seeds 0,`` (``--seeds 0`` counts seeds)
            text = ",".join(str(v) for v in value) + ("," if len(value) == 1 else "")
        try:
            value = flag.type(text)
        except (argparse.ArgumentTypeError, ValueError) as error:
            raise ConfigError(f"{where}: {error}") from None
    choices = choices or flag.choices
    if choices is not None and value not in choices:
        raise ConfigError(f"{where}: invalid choice {value!r} (choose from "
                          f"{', '.join(map(str, choices))})")
    return value


def _read_config_file(path: str, config_class: type,
                      choices: dict[str, Sequence[str]] | None = None) -> dict[str, Any]:
    """The settings of a ``--config`` file, each checked as its flag would be."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ConfigError(f"--config {path!r}: {error.strerror or error}") from None
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            values = yaml.safe_load(text)
        else:
            values = json.loads(text)
    except Exception as error:  # JSON and YAML raise their own types.
        raise ConfigError(f"--config {path!r} is not valid JSON/YAML: "
                          f"{' '.join(str(error).split())}") from None
    if isinstance(values, dict) and isinstance(values.get("config"), dict):
        values = values["config"]  # a run's config.json
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path!r} must hold a mapping of settings")
    names = {f.name for f in dataclasses.fields(config_class)}
    if config_class is SearchConfig:
        values = {k: v for k, v in values.items() if k not in RETIRED}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"--config {path!r}: unknown settings {', '.join(unknown)}")
    choices = choices or {}
    return {f.name: _file_value(f, values[f.name], f"--config {path!r}: {f.name}",
                                choices.get(f.name))
            for f in dataclasses.fields(config_class) if f.name in values}


def config_from_args(config_class: type, args: argparse.Namespace) -> Any:
    """The config of a parsed command line: ``--config`` file, then the flags.

    Raises:
      ConfigError: an unreadable ``--config`` file, an unknown setting in it,
        a value that its flag would refuse, or (training) a recipe that does
        not fit the network.
    """
    names = {f.name for f in dataclasses.fields(config_class)}
    values = (_read_config_file(args.config, config_class, getattr(args, "_choices", None))
              if getattr(args, "config", None) else {})
    values.update({k: v for k, v in vars(args).items() if k in names})
    if config_class is TrainConfig:
        return recipe_config(values.pop("recipe", None), **{
            k: v for k, v in values.items() if not (v is None and k in RECIPE_FIELDS)})
    return config_class(**values)


def parse_command_line(config_class: type, parser: cli.ArgumentParser,
                       argv: Sequence[str] | None) -> tuple[Any, argparse.Namespace]:
    """The config of a command line (``--config`` file, then the flags) and the flags.

    A bad setting ends the program with one line and exit status 2.
    """
    args = parser.parse_args(argv)
    try:
        return config_from_args(config_class, args), args
    except ConfigError as error:
        parser.error(str(error))
