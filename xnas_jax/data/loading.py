"""This process's part of a run's data, on its devices.

A search reads the training set and splits it, per seed, into two halves
(:class:`SearchData`); training reads the train and test splits
(:func:`load_train_data`).  The training set is cut into ``data_shards``
shards (:mod:`xnas_jax.data.shards`), and each process reads only the shards
that its devices hold; a batch takes ``batch_size / K`` examples of each.
Without ``data_shards`` there is one shard per process
(:func:`xnas_jax.data.shards.default_count`); the layout says how many.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from xnas_jax.data import order, shards, specs

__all__ = ["SearchData", "load_search_data", "load_train_data", "shard_batches",
           "search_batches"]


class SearchData(NamedTuple):
    """This process's training shards on the devices, and each search's split."""

    data: shards.DeviceShards  # the shards of the training set, split over ``data``
    layout: shards.ShardLayout
    shard_size: int  # the examples of each shard
    # (S, ceil(n/2)) / (S, floor(n/2)): each search's halves, as indices into
    # every shard of n examples: one trains the network weights (Algorithm 1
    # line 4), the other rewards the experts (lines 5-13).
    weight_halves: np.ndarray
    arch_halves: np.ndarray
    mean: tuple[float, ...]  # per channel, of the training images in [0, 255]
    std: tuple[float, ...]
    image_shape: tuple[int, ...]
    num_classes: int
    steps_per_epoch: int


def load_search_data(config: Any, mesh, log: Callable[[str], None] = print) -> SearchData:
    """Loads, subsets and splits this process's shards of the training set (one split per
    seed: each search's halves are the same within every shard).

    Raises:
      DatasetError, MeshError, ValueError: missing data, or a batch and shards that do
        not fit the data or the mesh.
    """
    count = config.data_shards or shards.default_count(mesh)
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
    return SearchData(shards.to_devices(split, layout, mesh), layout, n, weight_halves,
                      arch_halves, tuple(float(m) for m in split.mean),
                      tuple(float(s) for s in split.std), split.image_shape,
                      split.num_classes, steps_per_epoch)


def load_train_data(config: Any, mesh):
    """This process's shards of the train and test splits.

    Training shards are cut to one size; test shards stay whole, so that every
    test image is evaluated once.

    Returns:
      ``(layout, train, test)``.

    Raises:
      DatasetError, MeshError: missing data, or a batch that does not fit.
    """
    count = config.data_shards or shards.default_count(mesh)
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


def shard_batches(layout: shards.ShardLayout, pool: np.ndarray, seed: int, epoch: int,
                  batch_size: int, steps: int, shard_size: int) -> np.ndarray:
    """(steps, B) per-device indices of an epoch's batches drawn from ``pool``.

    ``pool`` holds the indices, into every shard of ``shard_size`` examples,
    that the run draws from (a search's half, or every example).  Each shard
    has its own order (:func:`order.epoch_permutation`), and a batch takes
    ``B / K`` examples of each of the K shards.
    """
    per_shard = batch_size // layout.count
    pool = np.asarray(pool)
    return layout.device_indices(np.stack([
        pool[order.batch_indices(order.epoch_permutation(seed, epoch, len(pool), shard),
                                 per_shard)[:steps]]
        for shard in range(layout.count)], axis=1), shard_size)


def search_batches(data: SearchData, seeds: tuple[int, ...], epoch: int,
                   batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(steps, S, B) per-device indices of each search's two batches of an epoch (each
    search has its own split and orders: seed s's weight half by s, its other half by
    s + 1)."""
    def half(halves, offset):
        return np.stack([shard_batches(data.layout, halves[s], seed + offset, epoch,
                                       batch_size, data.steps_per_epoch, data.shard_size)
                         for s, seed in enumerate(seeds)], axis=1)

    return half(data.weight_halves, 0), half(data.arch_halves, 1)
