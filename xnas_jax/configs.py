"""Configuration of the architecture search: every hyper-parameter in one place."""

from __future__ import annotations

import dataclasses
from typing import Any

from xnas_jax import genotypes

# The smallest search that still exercises the whole method: the README's
# quick run on the embedded digits (8x8 grayscale) finishes in minutes on a
# 2-core CPU.  Real datasets use the DARTS/XNAS search network.
# The search batch is the paper's 96 (XNAS section 4.1) everywhere.
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": dict(channels=8, layers=5, epochs=10, crop_padding=1, flip=False),
}
SEARCH_NETWORK_DEFAULTS = dict(channels=16, layers=8, batch_size=96, epochs=50, crop_padding=4)
# Horizontal flips keep the class of natural images, not of digits.
FLIP_DATASETS = ("cifar10", "cifar100", "image_folder")


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """An XNAS (or DARTS) search. ``None`` fields take the dataset's default."""

    # Data.
    dataset: str = "digits"
    data_dir: str | None = None
    cache_dir: str | None = None
    max_examples: int | None = None  # use at most this many training images
    downsample: int = 1  # average blocks of downsample x downsample pixels (CPU proxies)
    crop_padding: int | None = None  # random crop after zero padding; 0: none
    flip: bool | None = None  # random horizontal flips
    # Supernet.
    channels: int | None = None  # C (the stem has 3C)
    layers: int | None = None  # cells; reductions at 1/3 and 2/3
    nodes: int = 4  # intermediate nodes per cell
    ops: tuple[str, ...] = genotypes.XNAS_PRIMITIVES
    dtype: str = "float32"  # computation dtype: float32 or bfloat16
    depthwise: str = "shifts"  # depthwise-convolution form: shifts or conv (same function)
    # Schedule.
    epochs: int | None = None
    batch_size: int | None = None
    max_steps_per_epoch: int | None = None
    seed: int = 0
    # Network weights (DARTS's recipe).
    learning_rate: float = 0.025
    learning_rate_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    # Architecture weights.
    optimizer: str = "xnas"  # "xnas" or "darts"
    reward_bound: float = 1.0  # L
    wipeout_factor: float = 1.0  # zeta
    arch_learning_rate_normal: float | None = None  # None: eta* from the horizon
    arch_learning_rate_reduce: float | None = None
    darts_learning_rate: float = 3e-4
    darts_weight_decay: float = 1e-3
    skip_wiped_out: bool = True  # leave experts wiped out on every edge uncomputed
    single_trace: bool = False  # both passes as one loop: half the compile, more work per step
    # Output.
    out_dir: str = "runs/search"
    resume: bool = False
    log_every: int = 10  # steps between progress-bar updates (host syncs)
    keep_checkpoints: int = 2
    progress: bool = True

    def resolved(self) -> SearchConfig:
        """The config with every ``None`` default filled in for its dataset."""
        defaults = dict(SEARCH_NETWORK_DEFAULTS, flip=self.dataset in FLIP_DATASETS)
        defaults.update(DATASET_DEFAULTS.get(self.dataset, {}))
        filled = {
            key: value
            for key, value in defaults.items()
            if getattr(self, key) is None
        }
        return dataclasses.replace(self, **filled)

    def fingerprint(self) -> dict[str, Any]:
        """The settings that make two runs the same run (checked on resume)."""
        volatile = {"resume", "out_dir", "log_every", "progress", "keep_checkpoints", "cache_dir",
                    "single_trace"}  # same results either way
        return {
            key: (list(value) if isinstance(value, tuple) else value)
            for key, value in dataclasses.asdict(self.resolved()).items()
            if key not in volatile
        }
