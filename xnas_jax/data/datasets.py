"""Loading a dataset by name: :func:`load_dataset` picks the source and the cache.

The datasets of the paper fit in memory (CIFAR-10 is 150 MB of uint8), so a
split is read whole into uint8 arrays (:class:`~xnas_jax.data.specs.ArrayDataset`)
and TensorFlow is never needed.  The readers of each source are in
:mod:`xnas_jax.data.readers`, the dataset facts in :mod:`xnas_jax.data.specs`.

Nothing here downloads: the code may run on a machine without internet, so a
dataset that is not on disk raises :class:`~xnas_jax.data.specs.DatasetError`
explaining how to provide it, and never falls back to another dataset.
"""

from __future__ import annotations

import os
from pathlib import Path

from xnas_jax.data import readers
from xnas_jax.data.specs import DATASETS, ArrayDataset, DatasetError, how_to_provide

__all__ = ["load_dataset"]


def load_dataset(
    name: str,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    shard: tuple[int, int] = (0, 1),
) -> ArrayDataset:
    """Loads one split of a dataset into memory as uint8 images and int32 labels.

    Sources, in order (see :data:`DATASETS`):

    * ``digits`` is embedded in scikit-learn; ``data_dir`` is ignored.
    * With ``data_dir``: the official local files of the dataset (CIFAR python
      batches, directory or .tar.gz; MNIST/Fashion-MNIST IDX files, gzipped or
      not; SVHN .mat files), else an image folder (``<split>/<class>/<image>``
      as a directory, a .zip, or ``<split>.zip`` files in ``data_dir``), else a
      tensorflow-datasets data dir in which the dataset is prepared.  For
      ``image_folder``, ``data_dir`` is the folder or zip itself.
    * Without ``data_dir``: tensorflow-datasets' default data dir
      (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``), never downloading.

    Args:
      name: a key of :data:`DATASETS`.
      split: ``"train"``, ``"test"`` (``"extra"`` for SVHN; any split folder
        for ``image_folder``).
      data_dir: where the data lies, see above.
      cache_dir: if given, the decoded arrays are stored there as a .npz keyed
        by (name, split, shard, data_dir and its size and time stamp), and
        read back on the next call instead of decoding again.
      shard: ``(j, K)``: only the examples j, j + K, j + 2K, ... of the
        split's stored order (shard j of K).  Image folders and
        tensorflow-datasets decode only those; array files are sliced after
        reading.  The K shards are disjoint and together the whole split.

    Returns:
      The split (or its shard) as an :class:`ArrayDataset` named
      ``"<name>/<split>"`` (``"<name>/<split>[j::K]"`` for a shard).

    Raises:
      DatasetError: unknown name or split, missing or corrupt files, or a
        dataset that is not prepared locally; the message says how to fix it.
    """
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset name={name!r}; valid names: {sorted(DATASETS)}")
    spec = DATASETS[name]
    if spec.splits and split not in spec.splits:
        raise DatasetError(f"{name} has no split={split!r}; valid splits: {list(spec.splits)}")
    index, count = shard
    if not 0 <= index < count:
        raise DatasetError(f"shard {index} of {count} does not exist: expected 0 <= j < K")
    if name == "digits":
        return _sliced(readers.read_digits(split), shard)
    if name == "image_folder" and data_dir is None:
        raise DatasetError(f"image_folder needs data_dir. {how_to_provide(name)}")
    if cache_dir is None:
        return _load_uncached(name, split, data_dir, shard)

    cache_file = readers.cache_path(Path(cache_dir), name, split, data_dir, shard)
    if cache_file.is_file():
        return readers.read_cache(cache_file)
    dataset = _load_uncached(name, split, data_dir, shard)
    readers.write_cache(dataset, cache_file)
    return dataset


def _sliced(dataset: ArrayDataset, shard: tuple[int, int]) -> ArrayDataset:
    """Shard ``(j, K)`` of a whole split: examples j, j + K, ...; the split itself if K = 1."""
    index, count = shard
    if count == 1:
        return dataset
    return dataset._replace(images=dataset.images[index::count],
                            labels=dataset.labels[index::count],
                            name=f"{dataset.name}[{index}::{count}]")


def _named(dataset: ArrayDataset, shard: tuple[int, int]) -> ArrayDataset:
    """The name of a shard that a reader selected itself."""
    index, count = shard
    return dataset if count == 1 else dataset._replace(name=f"{dataset.name}[{index}::{count}]")


def _load_uncached(name: str, split: str, data_dir: str | os.PathLike | None,
                   shard: tuple[int, int]) -> ArrayDataset:
    if data_dir is None:
        return _named(readers.read_tfds(name, split, data_dir=None, shard=shard), shard)
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise DatasetError(
            f"data_dir={str(path)!r} does not exist (loading {name}/{split}). "
            + how_to_provide(name)
        )

    official = readers.OFFICIAL_READERS.get(name)
    arrays = official(path, split) if official else None
    if arrays is not None:
        return _sliced(readers.array_dataset(name, split, *arrays, source=str(path)), shard)

    dataset = readers.read_image_folder(path, split, name, shard)
    if dataset is not None:
        return _named(dataset, shard)

    spec = DATASETS[name]
    if spec.tfds_name and (path / spec.tfds_name).is_dir():
        return _named(readers.read_tfds(name, split, data_dir=path, shard=shard), shard)
    found = sorted(child.name for child in path.iterdir())[:20] if path.is_dir() else [path.name]
    raise DatasetError(
        f"no {name} data for split {split!r} found in data_dir={str(path)!r} "
        f"(it holds {found}). " + how_to_provide(name)
    )
