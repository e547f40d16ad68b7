"""Dataset facts: what each dataset name stands for, in one place.

:data:`DATASETS` maps a name to its :class:`DatasetSpec` (classes, image
shape, splits, tensorflow-datasets name, the official files, whether flips
keep the class); :func:`how_to_provide` is the hint every
:class:`DatasetError` ends with; :func:`default_crop_padding` and
:func:`default_cutout` scale DARTS's augmentation sizes to an image size.
:class:`ArrayDataset` is one split held in memory as uint8 arrays, and
:func:`channel_stats` its per-channel moments.
"""

from __future__ import annotations

import math
import types
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

__all__ = [
    "DATASETS",
    "ArrayDataset",
    "DatasetError",
    "channel_histogram",
    "histogram_stats",
    "DatasetSpec",
    "channel_stats",
    "default_crop_padding",
    "default_cutout",
    "how_to_provide",
]


class DatasetError(Exception):
    """A dataset cannot be loaded; the message says why and how to provide it."""


class ArrayDataset(NamedTuple):
    """One split of an image-classification dataset, held in memory."""

    images: np.ndarray  # shape=(N, H, W, C), dtype=np.uint8, C = 1 or 3.
    labels: np.ndarray  # shape=(N,), dtype=np.int32, in [0, num_classes).
    num_classes: int
    name: str  # e.g. "cifar10/train", "cifar10/train[search-weights]".
    class_names: tuple[str, ...] = ()  # image folders: the class folder of each label.

    @property
    def channel_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (mean, std) of the pixels in [0, 1] units, for :func:`normalize`."""
        return channel_stats(self.images)


def channel_histogram(images: np.ndarray) -> np.ndarray:
    """Per channel, how many pixels take each of the 256 uint8 levels.

    Histograms of disjoint parts of a dataset add up to the whole's, so
    processes that each hold a shard agree on :func:`histogram_stats` exactly.

    Args:
      images: uint8 array of shape (N, H, W, C), N >= 1.

    Returns:
      int64 array of shape (C, 256).
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(
            f"images must be a non-empty uint8 array (N, H, W, C), got dtype "
            f"{images.dtype} and shape {images.shape}"
        )
    counts = np.zeros((images.shape[-1], 256), np.int64)
    for channel in range(images.shape[-1]):
        for start in range(0, len(images), 4096):
            counts[channel] += np.bincount(images[start : start + 4096, ..., channel].ravel(),
                                           minlength=256)
    return counts


def histogram_stats(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, std)`` per channel, in [0, 1] units, of a :func:`channel_histogram`."""
    levels = np.arange(256) / 255.0
    means, stds = [], []
    for channel_counts in counts:
        frequencies = channel_counts / channel_counts.sum()
        mean = frequencies @ levels
        means.append(mean)
        stds.append(math.sqrt(frequencies @ (levels - mean) ** 2))
    return np.asarray(means, np.float32), np.asarray(stds, np.float32)


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of uint8 images, in [0, 1] units.

    The moments come from each channel's 256-bin histogram, counted over
    chunks of images: exact, and without a float copy of all the images
    (600 MB for CIFAR-10).  It is also the fastest of the NumPy ways tried.

    Args:
      images: uint8 array of shape (N, H, W, C).

    Returns:
      ``(mean, std)``, two float32 arrays of shape (C,).
    """
    return histogram_stats(channel_histogram(images))


class DatasetSpec(NamedTuple):
    """What a dataset name stands for and where its data may come from."""

    num_classes: int | None  # None: the number of class folders found.
    image_shape: tuple[int, int, int] | None  # (H, W, C); None: any one size.
    splits: tuple[str, ...]  # () : the split folders found in the data.
    tfds_name: str | None  # its name in tensorflow-datasets; None: not there.
    local_files: str  # the official files --data-dir may point at (error hints).
    flip: bool  # whether a random horizontal flip keeps an image's class.


# flip: natural images keep their class when mirrored; digits and strokes
# (and Fashion-MNIST, which the training code never flipped) are not flipped.
DATASETS: Mapping[str, DatasetSpec] = types.MappingProxyType({
    "digits": DatasetSpec(
        10, (8, 8, 1), ("train", "test"), None,
        "nothing: scikit-learn embeds it (load_digits), so it never needs a download",
        flip=False,
    ),
    "cifar10": DatasetSpec(
        10, (32, 32, 3), ("train", "test"), "cifar10",
        "the official CIFAR-10 python batches (cifar-10-batches-py/ or cifar-10-python.tar.gz)",
        flip=True,
    ),
    "cifar100": DatasetSpec(
        100, (32, 32, 3), ("train", "test"), "cifar100",
        "the official CIFAR-100 python files (cifar-100-python/ or cifar-100-python.tar.gz)",
        flip=True,
    ),
    "fashion_mnist": DatasetSpec(
        10, (28, 28, 1), ("train", "test"), "fashion_mnist",
        "the official Fashion-MNIST IDX files (train-images-idx3-ubyte.gz, "
        "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz)",
        flip=False,
    ),
    "mnist": DatasetSpec(
        10, (28, 28, 1), ("train", "test"), "mnist",
        "the official MNIST IDX files (train-images-idx3-ubyte.gz, "
        "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz)",
        flip=False,
    ),
    "svhn_cropped": DatasetSpec(
        10, (32, 32, 3), ("train", "test", "extra"), "svhn_cropped",
        "the official SVHN cropped-digit files (train_32x32.mat, test_32x32.mat, extra_32x32.mat)",
        flip=False,
    ),
    "image_folder": DatasetSpec(
        None, None, (), None,
        "a directory or .zip of <split>/<class>/<image> files, or a directory holding <split>.zip",
        flip=True,
    ),
})

_IMAGE_FOLDER_HINT = "an image folder/zip of <split>/<class>/<image> files"


def how_to_provide(name: str) -> str:
    """The hint every DatasetError for `name` ends with."""
    spec = DATASETS[name]
    if name == "image_folder":
        return f"Pass --data-dir pointing at {spec.local_files}."
    hint = f"Pass --data-dir pointing at {spec.local_files}, or {_IMAGE_FOLDER_HINT}"
    if spec.tfds_name:
        hint += f", or a tensorflow-datasets data dir in which {spec.tfds_name!r} is prepared"
    return hint + "."


# DARTS's 4-pixel crop padding and 16-pixel cutout are for 32x32 images.


def default_crop_padding(image_shape: Sequence[int]) -> int:
    """The crop padding for images of ``image_shape`` (H, W[, C]).

    DARTS's 4 pixels at 32x32, proportional to the shorter side for other
    sizes, and at least 1.
    """
    return max(1, round(4 * min(image_shape[0], image_shape[1]) / 32))


def default_cutout(image_shape: Sequence[int]) -> int:
    """The cutout square's side for images of ``image_shape`` (H, W[, C]).

    DARTS's 16 pixels at 32x32, proportional to the shorter side for other sizes.
    """
    return round(16 * min(image_shape[0], image_shape[1]) / 32)
