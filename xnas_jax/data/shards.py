"""Data shards: which examples each process reads, and how a batch is gathered on the devices.

A split is cut into K *data shards*: shard j holds the examples j, j + K,
j + 2K, ... of the split's stored order (:func:`~xnas_jax.data.datasets.load_dataset`
with ``shard=(j, K)`` decodes only those).  A run's global batch of B is
B / K examples from each shard, each shard in its own order (a pure function
of seed, epoch and shard, :func:`~xnas_jax.data.order.epoch_permutation`).
So the batches depend on K and on nothing else about the hardware:

- the devices along the mesh's ``data`` axis are split into K groups, and
  group j holds shard j (with K larger than the axis, each device holds
  K / axis shards).  A process therefore reads only the shards of its own
  devices: with one shard per process (the default,
  :func:`default_count`), its own shard only;
- the same K on another number of devices or processes gives the same
  batches, so a run resumes exactly on any of them.  K is part of a run's
  fingerprint.

On the devices a split is one array of shape (blocks, size, ...), split over
``data`` (replicated over ``seed``): block b holds shard ``b * K // blocks``.
:func:`gather` takes a batch inside the jitted step, each device from its
own blocks only, by the per-device indices of :meth:`ShardLayout.device_indices`.
"""

from __future__ import annotations

import os
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from xnas_jax import parallel
from xnas_jax.data import datasets
from xnas_jax.data.specs import ArrayDataset, DatasetError, channel_histogram, histogram_stats

__all__ = [
    "DeviceShards",
    "ShardLayout",
    "ShardedSplit",
    "default_count",
    "describe",
    "gather",
    "layout",
    "load_split",
    "to_devices",
]


class ShardLayout(NamedTuple):
    """K data shards on a ``data`` axis of D devices (one of them divides the other)."""

    count: int  # K
    data_axis: int  # D

    @property
    def blocks(self) -> int:
        """Blocks of the device array: one per device group (K <= D) or per shard."""
        return max(self.count, self.data_axis)

    @property
    def shards_per_device(self) -> int:
        return max(self.count // self.data_axis, 1)

    def shard_of_block(self, block: int) -> int:
        return block * self.count // self.blocks

    def shards_of_position(self, position: int) -> tuple[int, ...]:
        """The shards held by the devices at ``position`` on the ``data`` axis."""
        per = self.blocks // self.data_axis
        return tuple(sorted({self.shard_of_block(b)
                             for b in range(position * per, (position + 1) * per)}))

    def device_indices(self, per_shard: np.ndarray, size: int) -> np.ndarray:
        """Batch indices, from each shard's own indices to each device's.

        Args:
          per_shard: (..., K, b) indices into each shard (0 <= i < size).
          size: the examples per shard on the devices.

        Returns:
          (..., K * b) int32: the global batch, shard 0's b examples first.  An
          entry indexes the flattened blocks of the device that holds it.
        """
        per_shard = np.asarray(per_shard)
        shard = np.arange(self.count).reshape(-1, 1)
        local = (shard % self.shards_per_device) * size + per_shard
        return local.reshape(*per_shard.shape[:-2], -1).astype(np.int32)


def default_count(mesh: Mesh) -> int:
    """One shard per process when the processes split the ``data`` axis, else one in all.

    (Processes that hold whole seeds rather than parts of the batch each
    need every example.)
    """
    processes = jax.process_count()
    return processes if mesh.shape[parallel.DATA] % processes == 0 else 1


def layout(mesh: Mesh, count: int, batch_sizes: dict[str, int]) -> ShardLayout:
    """The layout of ``count`` shards on ``mesh``; checks that it fits.

    Raises:
      MeshError: K and the ``data`` axis with neither dividing the other, or a
        batch that does not split into K equal parts.
    """
    data_axis = mesh.shape[parallel.DATA]
    if count < 1 or (count % data_axis and data_axis % count):
        raise parallel.MeshError(
            f"--data-shards {count} and the mesh's data axis of {data_axis} devices: one "
            "must divide the other")
    for flag, size in batch_sizes.items():
        if size % count:
            raise parallel.MeshError(f"{flag} {size} does not split into --data-shards {count} "
                                     "equal parts")
    return ShardLayout(count, data_axis)


class ShardedSplit(NamedTuple):
    """The shards of one split that this process holds, and what all processes agree on."""

    shards: dict[int, ArrayDataset]  # shard index -> its examples (this process's only)
    sizes: tuple[int, ...]  # examples in each of the K shards (as held: cut when ``equal``)
    mean: np.ndarray  # per-channel statistics of all K shards together
    std: np.ndarray
    num_classes: int
    image_shape: tuple[int, ...]
    readers: tuple[tuple[int, ...], ...]  # per process, the shards it read

    @property
    def size(self) -> int:
        """The largest shard (the device array's second axis)."""
        return max(self.sizes)


def load_split(name: str, split: str, data_dir: str | os.PathLike | None,
               cache_dir: str | os.PathLike | None, shard_layout: ShardLayout, mesh: Mesh,
               prepare: Callable[[ArrayDataset], ArrayDataset], equal: bool) -> ShardedSplit:
    """Reads the shards of this process's devices, and agrees with the other processes.

    Args:
      prepare: applied to each shard as read (subset, downsampling).
      equal: cut every shard to the smallest's size (training: the same
        number of batches from each); else keep them whole (evaluation).

    Raises:
      DatasetError: missing data, or shards that disagree (sizes of images,
        classes) between processes.
    """
    count = shard_layout.count
    me = jax.process_index()
    positions = sorted({int(p) for p, device in zip(
        np.indices(mesh.devices.shape)[1].ravel(), mesh.devices.ravel())
        if device.process_index == me})
    mine = sorted({j for p in positions for j in shard_layout.shards_of_position(p)})
    shards = {j: prepare(datasets.load_dataset(name, split, data_dir, cache_dir=cache_dir,
                                               shard=(j, count)))
              for j in mine}
    first = shards[mine[0]]
    image_shape = tuple(int(d) for d in first.images.shape[1:])
    # One row per process: its shards' sizes (-1: not read), image shape, classes.
    row = np.full(count + 5, -1, np.int64)
    for j, shard in shards.items():
        row[j] = len(shard.labels)
    row[count:count + 3] = image_shape
    row[count + 3] = first.num_classes
    row[count + 4] = min(len(s.labels) for s in shards.values())
    rows = parallel.gather_from_processes(row)
    if len({tuple(r[count:count + 4]) for r in rows}) > 1:
        raise DatasetError(f"the processes read {name}/{split} shards of other image shapes or "
                           f"classes: {rows[:, count:count + 4].tolist()}")
    sizes = rows[:, :count].max(axis=0)
    if sizes.min() < 1:
        raise DatasetError(f"a shard of {name}/{split} is empty: {count} shards of sizes "
                           f"{sizes.tolist()}; use fewer --data-shards")
    if equal:
        cut = int(sizes.min())
        shards = {j: s._replace(images=s.images[:cut], labels=s.labels[:cut])
                  for j, s in shards.items()}
        sizes = np.full(count, cut)
    # Histograms of the shards add up exactly; sent as two int32 words per count.
    counts = np.zeros((count, image_shape[-1], 256), np.int64)
    for j, shard in shards.items():
        counts[j] = channel_histogram(shard.images)
    high, low = divmod(counts, 1 << 30)
    words = parallel.gather_from_processes(np.stack([high, low]))
    readers = tuple(tuple(int(j) for j in np.flatnonzero(r[:count] >= 0)) for r in rows)
    total = np.zeros_like(counts[0])
    for j in range(count):
        reader = next(p for p, read in enumerate(readers) if j in read)
        total += (words[reader, 0, j].astype(np.int64) << 30) + words[reader, 1, j]
    mean, std = histogram_stats(total)
    return ShardedSplit(shards, tuple(int(s) for s in sizes), mean, std, first.num_classes,
                        image_shape, readers)


class DeviceShards(NamedTuple):
    """A split on the devices: (blocks, size, ...) arrays split over ``data``.

    Pass it to the jitted step as an argument: a jitted function that closes
    over it would embed the data in the compiled program as a constant.
    """

    images: jax.Array  # (blocks, size, H, W, C) uint8
    labels: jax.Array  # (blocks, size) int32


def to_devices(split: ShardedSplit, shard_layout: ShardLayout, mesh: Mesh) -> DeviceShards:
    """Puts each held shard on the devices that hold its blocks (shorter ones zero-padded)."""
    size = split.size
    sharding = NamedSharding(mesh, P(parallel.DATA))

    def padded(array: np.ndarray) -> np.ndarray:
        return np.concatenate([array, np.zeros((size - len(array),) + array.shape[1:],
                                               array.dtype)])

    def place(field: str, shape: tuple[int, ...]) -> jax.Array:
        def piece(index):
            blocks = range(shard_layout.blocks)[index[0]]
            return np.stack([padded(getattr(split.shards[shard_layout.shard_of_block(b)],
                                            field)) for b in blocks])[(slice(None),) + index[1:]]
        return jax.make_array_from_callback((shard_layout.blocks, size) + shape, sharding, piece)

    return DeviceShards(place("images", split.image_shape), place("labels", ()))


def gather(data: DeviceShards, indices: jax.Array, mesh: Mesh) -> tuple[jax.Array, jax.Array]:
    """``(images, labels)`` at ``indices``, inside jit: each device reads its own blocks.

    Args:
      data: the split on the devices.
      indices: (B,) or (S, B) per-device indices (:meth:`ShardLayout.device_indices`),
        split over ``data`` (and ``seed``).

    Returns:
      The batch, split like ``indices``.
    """
    spec = P(parallel.DATA) if indices.ndim == 1 else P(parallel.SEED, parallel.DATA)

    def local(images, labels, idx):
        images = images.reshape((-1,) + images.shape[2:])
        # Indices come from device_indices and are in range; "clip" is the
        # cheapest mode that still gives defined results if they were not.
        return (jnp.take(images, idx, axis=0, mode="clip"),
                jnp.take(labels.reshape(-1), idx, axis=0, mode="clip"))

    return jax.shard_map(local, mesh=mesh, in_specs=(P(parallel.DATA), P(parallel.DATA), spec),
                         out_specs=(spec, spec), check_vma=False)(data.images, data.labels,
                                                                  indices)


def describe(split: ShardedSplit) -> str:
    """E.g. ``"2 shards of 718 images; process 0 reads shard 0, process 1 reads shard 1"``."""
    count = len(split.sizes)
    sizes = (f"{split.sizes[0]}" if len(set(split.sizes)) == 1
             else f"{min(split.sizes)}-{max(split.sizes)}")
    text = f"{count} shards of {sizes} images" if count > 1 else f"{sizes} images"
    if len(split.readers) > 1:
        text += "; " + ", ".join(
            f"process {p} reads shard{'s' if len(r) > 1 else ''} {','.join(map(str, r))}"
            for p, r in enumerate(split.readers))
    return text

