"""Host-side order and splits: which examples a run sees, and when.

:func:`search_split` divides the training set into the half that trains the
network weights and the half that trains the architecture weights (XNAS
section 4 / DARTS section 3.1); :func:`subset` shrinks a dataset for quick
runs and :func:`downsample` averages pixel blocks for CPU proxies.  The order
of the examples is a pure function of (seed, epoch) (:func:`epoch_permutation`),
cut into full batches by :func:`batch_indices`, so a resumed run replays the
same batches.
"""

from __future__ import annotations

import numpy as np

from xnas_jax.data.specs import ArrayDataset

__all__ = [
    "batch_indices",
    "downsample",
    "epoch_permutation",
    "search_split",
    "search_split_indices",
    "subset",
]


def _take(dataset: ArrayDataset, indices: np.ndarray, name: str) -> ArrayDataset:
    return dataset._replace(
        images=dataset.images[indices], labels=dataset.labels[indices], name=name
    )


def _check_seed(seed: int) -> None:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got seed={seed!r}")


def search_split_indices(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The example indices of the two halves of a search split (see :func:`search_split`).

    Returns:
      ``(weights_half, arch_half)``: sorted, disjoint, together ``range(n)``,
      sizes ``ceil(n/2)`` and ``floor(n/2)``.
    """
    _check_seed(seed)
    order = np.random.default_rng(seed).permutation(n)
    half = (n + 1) // 2
    return np.sort(order[:half]), np.sort(order[half:])


def search_split(dataset: ArrayDataset, seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
    """Divides a training set into a weights half and an architecture half.

    XNAS (section 4) follows DARTS (section 3.1): the network weights train on
    one half of the training images and the architecture weights on the other
    half.  The halves are a random permutation of the examples cut in two
    (an image folder is sorted by class, so cutting it in order would not do);
    each half keeps the original order of its examples.

    Args:
      dataset: the training set, at least 2 examples.
      seed: selects the permutation; the same seed gives the same halves.

    Returns:
      ``(weights_half, arch_half)``: disjoint, together all examples, sizes
      ``ceil(N/2)`` and ``floor(N/2)``.
    """
    _check_seed(seed)
    n = len(dataset.labels)
    if n < 2:
        raise ValueError(f"search_split needs at least 2 examples, {dataset.name} has {n}")
    weights, arch = search_split_indices(n, seed)
    return (
        _take(dataset, weights, f"{dataset.name}[search-weights]"),
        _take(dataset, arch, f"{dataset.name}[search-arch]"),
    )


def subset(dataset: ArrayDataset, max_examples: int, seed: int = 0) -> ArrayDataset:
    """At most `max_examples` examples of `dataset`, drawn at random, for quick runs.

    Args:
      dataset: any dataset.
      max_examples: the size of the subset, >= 1; a dataset that is not larger
        comes back unchanged.
      seed: selects the examples; they keep their original order.

    Returns:
      The subset.
    """
    _check_seed(seed)
    if not isinstance(max_examples, (int, np.integer)) or max_examples < 1:
        raise ValueError(f"max_examples must be an int >= 1, got max_examples={max_examples!r}")
    n = len(dataset.labels)
    if max_examples >= n:
        return dataset
    chosen = np.sort(np.random.default_rng(seed).choice(n, size=max_examples, replace=False))
    return _take(dataset, chosen, f"{dataset.name}[:{max_examples}]")


def balanced_subset(dataset: ArrayDataset, per_class: int, seed: int = 0) -> ArrayDataset:
    """``per_class`` examples of every class, drawn at random, in their original order.

    The class-balanced proxies of the NB201 table and of the searches scored
    against it (``--train-per-class``).

    Raises:
      ValueError: a class with fewer than ``per_class`` examples.
    """
    _check_seed(seed)
    if not isinstance(per_class, (int, np.integer)) or per_class < 1:
        raise ValueError(f"per_class must be an int >= 1, got {per_class!r}")
    rng = np.random.default_rng(seed)
    chosen = []
    for label in range(dataset.num_classes):
        members = np.flatnonzero(dataset.labels == label)
        if len(members) < per_class:
            raise ValueError(f"{dataset.name} has {len(members)} examples of class {label}, "
                             f"fewer than the {per_class} per class asked for")
        chosen.append(rng.choice(members, per_class, replace=False))
    return _take(dataset, np.sort(np.concatenate(chosen)), f"{dataset.name}[{per_class}/class]")


def downsample(dataset: ArrayDataset, factor: int) -> ArrayDataset:
    """The images with each ``factor x factor`` block of pixels averaged (rounded).

    For CPU proxies of a search: a 32x32 dataset at factor 2 costs a quarter
    of the pixels.  Factor 1 returns the dataset unchanged.

    Raises:
      ValueError: if ``factor`` is not a positive integer dividing the image size.
    """
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise ValueError(f"the downsampling factor must be an integer >= 1, got {factor!r}")
    if factor == 1:
        return dataset
    n, height, width, channels = dataset.images.shape
    if height % factor or width % factor:
        raise ValueError(
            f"cannot downsample {height}x{width} images by {factor}: the factor must divide both "
            "sides"
        )
    blocks = dataset.images.reshape(n, height // factor, factor, width // factor, factor, channels)
    images = np.round(blocks.mean(axis=(2, 4), dtype=np.float32)).astype(np.uint8)
    return dataset._replace(images=images, name=f"{dataset.name}[/{factor}]")


def epoch_permutation(seed: int, epoch: int, n: int, shard: int = 0) -> np.ndarray:
    """The order of the n examples in one epoch, a pure function of (seed, epoch, shard).

    A run resumed at any epoch therefore sees the batches it would have seen.

    Args:
      seed: the run's data seed, >= 0.
      epoch: the epoch number, >= 0.
      n: the number of examples, >= 0.
      shard: the data shard (:mod:`xnas_jax.data.shards`), >= 0; each shard
        has its own stream, and shard 0's is that of an unsharded run.

    Returns:
      A permutation of ``range(n)``, int64 array of shape (n,).
    """
    for arg, value in (("seed", seed), ("epoch", epoch), ("n", n), ("shard", shard)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{arg} must be an int >= 0, got {arg}={value!r}")
    stream = [int(seed), int(epoch)] + ([int(shard)] if shard else [])
    return np.random.default_rng(stream).permutation(n)


def batch_indices(permutation: np.ndarray, batch_size: int) -> np.ndarray:
    """Cuts an epoch's order into full batches, dropping the remainder.

    Full batches keep the step's shapes static, so it compiles once.

    Args:
      permutation: the example order, shape (n,).
      batch_size: examples per batch, 1 <= batch_size <= n.

    Returns:
      Array of shape (n // batch_size, batch_size): row s indexes step s's batch.
    """
    permutation = np.asarray(permutation)
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got batch_size={batch_size!r}")
    steps = len(permutation) // batch_size
    if steps == 0:
        raise ValueError(
            f"batch_size={batch_size} exceeds the {len(permutation)} examples: no full batch"
        )
    return permutation[: steps * batch_size].reshape(steps, batch_size)
