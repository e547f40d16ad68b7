"""Input pipeline: image-classification datasets as arrays, and on-device batches.

Two halves, data only (no model code):

* Host side, NumPy.  :func:`load_dataset` reads a whole dataset split into
  uint8 arrays (:class:`ArrayDataset`) from one of the sources in
  :data:`DATASETS`; :func:`search_split` divides the training set into the
  half that trains the network weights and the half that trains the
  architecture weights (XNAS section 4 / DARTS section 3.1), :func:`subset`
  shrinks a dataset for quick runs.  The datasets of the paper fit in memory
  (CIFAR-10 is 150 MB of uint8), so they are held whole and TensorFlow is
  never needed.
* Device side, JAX.  :func:`to_device` puts the uint8 arrays on the
  accelerator once; inside the jitted step a batch is gathered by index
  (:meth:`DeviceData.batch`), augmented (:func:`augment`, :func:`cutout`) and
  normalized (:func:`normalize`).  The order of the examples is a pure function
  of (seed, epoch) (:func:`epoch_permutation`), so a resumed run replays the
  same batches.

Nothing here downloads: the code may run on a machine without internet, so a
dataset that is not on disk raises :class:`DatasetError` explaining how to
provide it, and never falls back to another dataset.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import hashlib
import io
import logging
import math
import os
import pickle
import struct
import tarfile
import types
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    "DATASETS",
    "ArrayDataset",
    "DatasetError",
    "DatasetSpec",
    "DeviceData",
    "augment",
    "batch_indices",
    "channel_stats",
    "cutout",
    "epoch_permutation",
    "downsample",
    "load_dataset",
    "normalize",
    "search_split",
    "subset",
    "to_device",
]

_log = logging.getLogger(__name__)


class DatasetError(Exception):
    """A dataset cannot be loaded; the message says why and how to provide it."""


# --------------------------------------------------------------------------
# Datasets as arrays.
# --------------------------------------------------------------------------


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
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(
            f"images must be a non-empty uint8 array (N, H, W, C), got dtype "
            f"{images.dtype} and shape {images.shape}"
        )
    levels = np.arange(256) / 255.0
    means, stds = [], []
    for channel in range(images.shape[-1]):
        counts = np.zeros(256, np.int64)
        for start in range(0, len(images), 4096):
            counts += np.bincount(images[start : start + 4096, ..., channel].ravel(), minlength=256)
        frequencies = counts / counts.sum()
        mean = frequencies @ levels
        means.append(mean)
        stds.append(math.sqrt(frequencies @ (levels - mean) ** 2))
    return np.asarray(means, np.float32), np.asarray(stds, np.float32)


class DatasetSpec(NamedTuple):
    """What a dataset name stands for and where its data may come from."""

    num_classes: int | None  # None: the number of class folders found.
    image_shape: tuple[int, int, int] | None  # (H, W, C); None: any one size.
    splits: tuple[str, ...]  # () : the split folders found in the data.
    tfds_name: str | None  # its name in tensorflow-datasets; None: not there.
    local_files: str  # the official files --data-dir may point at (error hints).


DATASETS: Mapping[str, DatasetSpec] = types.MappingProxyType({
    "digits": DatasetSpec(
        10, (8, 8, 1), ("train", "test"), None,
        "nothing: scikit-learn embeds it (load_digits), so it never needs a download",
    ),
    "cifar10": DatasetSpec(
        10, (32, 32, 3), ("train", "test"), "cifar10",
        "the official CIFAR-10 python batches (cifar-10-batches-py/ or cifar-10-python.tar.gz)",
    ),
    "cifar100": DatasetSpec(
        100, (32, 32, 3), ("train", "test"), "cifar100",
        "the official CIFAR-100 python files (cifar-100-python/ or cifar-100-python.tar.gz)",
    ),
    "fashion_mnist": DatasetSpec(
        10, (28, 28, 1), ("train", "test"), "fashion_mnist",
        "the official Fashion-MNIST IDX files (train-images-idx3-ubyte.gz, "
        "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz)",
    ),
    "mnist": DatasetSpec(
        10, (28, 28, 1), ("train", "test"), "mnist",
        "the official MNIST IDX files (train-images-idx3-ubyte.gz, "
        "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz)",
    ),
    "svhn_cropped": DatasetSpec(
        10, (32, 32, 3), ("train", "test", "extra"), "svhn_cropped",
        "the official SVHN cropped-digit files (train_32x32.mat, test_32x32.mat, extra_32x32.mat)",
    ),
    "image_folder": DatasetSpec(
        None, None, (), None,
        "a directory or .zip of <split>/<class>/<image> files, or a directory holding <split>.zip",
    ),
})

_IMAGE_FOLDER_HINT = "an image folder/zip of <split>/<class>/<image> files"


def _how_to_provide(name: str) -> str:
    """The hint every DatasetError for `name` ends with."""
    spec = DATASETS[name]
    if name == "image_folder":
        return f"Pass --data-dir pointing at {spec.local_files}."
    hint = f"Pass --data-dir pointing at {spec.local_files}, or {_IMAGE_FOLDER_HINT}"
    if spec.tfds_name:
        hint += f", or a tensorflow-datasets data dir in which {spec.tfds_name!r} is prepared"
    return hint + "."


def load_dataset(
    name: str,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
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
        by (name, split, data_dir and its size and time stamp), and read back
        on the next call instead of decoding again.

    Returns:
      The split as an :class:`ArrayDataset` named ``"<name>/<split>"``.

    Raises:
      DatasetError: unknown name or split, missing or corrupt files, or a
        dataset that is not prepared locally; the message says how to fix it.
    """
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset name={name!r}; valid names: {sorted(DATASETS)}")
    spec = DATASETS[name]
    if spec.splits and split not in spec.splits:
        raise DatasetError(f"{name} has no split={split!r}; valid splits: {list(spec.splits)}")
    if name == "digits":
        return _load_digits(split)
    if name == "image_folder" and data_dir is None:
        raise DatasetError(f"image_folder needs data_dir. {_how_to_provide(name)}")
    if cache_dir is None:
        return _load_uncached(name, split, data_dir)

    cache_file = _cache_file(Path(cache_dir), name, split, data_dir)
    if cache_file.is_file():
        return _read_cache(cache_file)
    dataset = _load_uncached(name, split, data_dir)
    _write_cache(dataset, cache_file)
    return dataset


def _load_uncached(name: str, split: str, data_dir: str | os.PathLike | None) -> ArrayDataset:
    if data_dir is None:
        return _load_tfds(name, split, data_dir=None)
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise DatasetError(
            f"data_dir={str(path)!r} does not exist (loading {name}/{split}). "
            + _how_to_provide(name)
        )

    official = _OFFICIAL_READERS.get(name)
    arrays = official(path, split) if official else None
    if arrays is not None:
        return _array_dataset(name, split, *arrays, source=str(path))

    dataset = _load_image_folder(path, split, name)
    if dataset is not None:
        return dataset

    spec = DATASETS[name]
    if spec.tfds_name and (path / spec.tfds_name).is_dir():
        return _load_tfds(name, split, data_dir=path)
    found = sorted(child.name for child in path.iterdir())[:20] if path.is_dir() else [path.name]
    raise DatasetError(
        f"no {name} data for split {split!r} found in data_dir={str(path)!r} "
        f"(it holds {found}). " + _how_to_provide(name)
    )


def _array_dataset(
    name: str,
    split: str,
    images: np.ndarray,
    labels: np.ndarray,
    class_names: tuple[str, ...] = (),
    *,
    source: str,
) -> ArrayDataset:
    """Checks arrays read for a named dataset against its spec, and wraps them."""
    spec = DATASETS[name]
    num_classes = spec.num_classes or len(class_names)
    if spec.image_shape is not None and images.shape[1:] != spec.image_shape:
        raise DatasetError(
            f"{source}: images of shape {images.shape[1:]}, but {name} images are "
            f"{spec.image_shape} (H, W, C); is this the right dataset?"
        )
    if class_names and len(class_names) != num_classes:
        raise DatasetError(
            f"{source}: {len(class_names)} class folders {list(class_names)[:12]}, but {name} "
            f"has {num_classes} classes; is this the right dataset?"
        )
    if len(labels) and not 0 <= labels.min() <= labels.max() < num_classes:
        raise DatasetError(
            f"{source}: labels range over [{labels.min()}, {labels.max()}], outside "
            f"[0, {num_classes}) for {name}; the file is corrupt or of another dataset"
        )
    return ArrayDataset(
        images=np.ascontiguousarray(images, dtype=np.uint8),
        labels=labels.astype(np.int32),
        num_classes=num_classes,
        name=f"{name}/{split}",
        class_names=tuple(class_names),
    )


# ----- digits (embedded) ---------------------------------------------------

_DIGITS_TEST_FRACTION = 0.2
_DIGITS_SPLIT_SEED = 0


def _load_digits(split: str) -> ArrayDataset:
    """scikit-learn's 8x8 digits with a fixed stratified 80/20 train/test split."""
    from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel

    digits = load_digits()
    # Pixels are counts 0..16 of a 4x4 block; stretch them to the uint8 range.
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int32)

    # A split of our own (not sklearn's) so the same images land in each split
    # whatever the library versions: per class, a seeded permutation, and the
    # first 20% of it goes to test.
    rng = np.random.default_rng(_DIGITS_SPLIT_SEED)
    is_test = np.zeros(len(labels), bool)
    for label in range(10):
        members = rng.permutation(np.flatnonzero(labels == label))
        is_test[members[: round(_DIGITS_TEST_FRACTION * len(members))]] = True
    keep = is_test if split == "test" else ~is_test
    return ArrayDataset(images[keep], labels[keep], 10, f"digits/{split}")


# ----- CIFAR python pickles ------------------------------------------------


class _CifarFormat(NamedTuple):
    folder: str  # what the official archive extracts to.
    archive: str  # the official archive.
    files: Mapping[str, tuple[str, ...]]  # split -> pickled batch files.
    label_key: bytes


_CIFAR10 = _CifarFormat(
    "cifar-10-batches-py",
    "cifar-10-python.tar.gz",
    {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    b"labels",
)
_CIFAR100 = _CifarFormat(
    "cifar-100-python",
    "cifar-100-python.tar.gz",
    {"train": ("train",), "test": ("test",)},
    b"fine_labels",  # the 100-class labels; b"coarse_labels" are the 20 superclasses.
)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles containers and NumPy arrays, nothing else.

    Loading a pickle can run arbitrary code; the CIFAR batches only need the
    globals that rebuild an ndarray (and ``_codecs.encode``, with which Python 3
    writes bytes at protocol 2), so no other global is allowed.
    """

    _ALLOWED = frozenset({
        ("_codecs", "encode"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    })

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load the global {module}.{name}")
        # NumPy 2 renamed numpy.core to numpy._core; old pickles (the official
        # CIFAR files are from Python 2) still name the old module.
        if module.startswith("numpy.core") and hasattr(np, "_core"):
            module = "numpy._core" + module[len("numpy.core"):]
        return super().find_class(module, name)


def _read_cifar(path: Path, split: str, fmt: _CifarFormat) -> tuple[np.ndarray, np.ndarray] | None:
    """Reads a split from the official CIFAR python files; None if `path` has none."""
    all_files = [f for files in fmt.files.values() for f in files]
    for folder in (path / fmt.folder, path):
        if folder.is_dir() and any((folder / f).is_file() for f in all_files):
            missing = [f for f in fmt.files[split] if not (folder / f).is_file()]
            if missing:
                raise DatasetError(
                    f"{folder} holds CIFAR python batches but lacks {missing}; "
                    f"re-extract {fmt.archive}"
                )
            blobs = {f: (folder / f).read_bytes() for f in fmt.files[split]}
            return _parse_cifar_batches(blobs, fmt, source=str(folder))
    for archive in (path, path / fmt.archive):
        if archive.is_file() and archive.name.endswith((".tar.gz", ".tgz", ".tar")):
            blobs = _read_tar_members(archive, fmt.files[split])
            return _parse_cifar_batches(blobs, fmt, source=str(archive))
    return None


def _read_tar_members(archive: Path, names: Sequence[str]) -> dict[str, bytes]:
    """The files called `names` (in any folder) of a tar archive, in one pass."""
    blobs = {}
    try:
        with tarfile.open(archive) as tar:
            for member in tar:
                base = PurePosixPath(member.name).name
                if member.isfile() and base in names and base not in blobs:
                    blobs[base] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise DatasetError(
            f"{archive} is not a readable tar archive ({error}); download it again"
        ) from error
    missing = [name for name in names if name not in blobs]
    if missing:
        raise DatasetError(f"{archive} lacks the files {missing}; is it the official archive?")
    return blobs


def _parse_cifar_batches(
    blobs: Mapping[str, bytes], fmt: _CifarFormat, source: str
) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for file_name, blob in blobs.items():
        where = f"{source}/{file_name}"
        try:
            # encoding="bytes": the official files are Python 2 pickles with byte-string keys.
            batch = _ArrayUnpickler(io.BytesIO(blob), encoding="bytes").load()
        except Exception as error:  # A damaged pickle fails with almost any exception type.
            raise DatasetError(
                f"{where} is not a readable CIFAR python batch ({type(error).__name__}: "
                f"{error}); the file is corrupt, download {fmt.archive} again"
            ) from error
        if not isinstance(batch, dict):
            raise DatasetError(f"{where} holds a {type(batch).__name__}, not a CIFAR batch dict")
        batch = {k.encode() if isinstance(k, str) else k: v for k, v in batch.items()}
        if b"data" not in batch or fmt.label_key not in batch:
            raise DatasetError(
                f"{where} lacks the keys b'data' and {fmt.label_key!r} (has {sorted(batch)}); "
                "is it a CIFAR batch of this dataset?"
            )
        data = np.asarray(batch[b"data"])
        batch_labels = np.asarray(batch[fmt.label_key], dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DatasetError(
                f"{where}: b'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072)"
            )
        if batch_labels.shape != (len(data),):
            raise DatasetError(f"{where}: {len(batch_labels)} labels for {len(data)} images")
        # Each row is the red plane, then green, then blue, each row-major.
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(batch_labels)
    return np.concatenate(images), np.concatenate(labels)


# ----- MNIST / Fashion-MNIST IDX files -------------------------------------

_IDX_PREFIX = {"train": "train", "test": "t10k"}


def _read_mnist_idx(path: Path, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Reads a split from the official IDX files (gzipped or not); None if `path` has none."""
    if not path.is_dir():
        return None

    def find(stem: str) -> Path | None:
        return next((f for f in (path / f"{stem}.gz", path / stem) if f.is_file()), None)

    stems = {
        s: (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
        for s, prefix in _IDX_PREFIX.items()
    }
    if not any(find(stem) for pair in stems.values() for stem in pair):
        return None
    image_stem, label_stem = stems[split]
    image_file, label_file = find(image_stem), find(label_stem)
    if image_file is None or label_file is None:
        raise DatasetError(
            f"{path} holds IDX files but not {image_stem}[.gz] and {label_stem}[.gz] "
            f"for split {split!r}"
        )
    images = _read_idx(image_file, ndim=3)
    labels = _read_idx(label_file, ndim=1)
    if len(images) != len(labels):
        raise DatasetError(
            f"{image_file} has {len(images)} images but {label_file} {len(labels)} labels"
        )
    return images[..., None], labels.astype(np.int64)


def _read_idx(file: Path, ndim: int) -> np.ndarray:
    """An IDX array of unsigned bytes: magic 0x0000 08 <ndim>, big-endian sizes, data."""
    raw = file.read_bytes()
    if file.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise DatasetError(
                f"{file} is not a readable gzip file ({error}); download it again"
            ) from error
    header = 4 + 4 * ndim
    magic = bytes((0, 0, 0x08, ndim))
    if raw[:4] != magic:
        raise DatasetError(
            f"{file}: bad IDX magic number 0x{raw[:4].hex()} (expected 0x{magic.hex()}: unsigned "
            f"bytes in {ndim} dimensions); the file is corrupt or not an IDX file"
        )
    if len(raw) < header:
        raise DatasetError(f"{file}: truncated IDX header ({len(raw)} bytes)")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != math.prod(shape):
        raise DatasetError(
            f"{file}: the header gives shape {shape} ({math.prod(shape)} bytes) but the file "
            f"holds {len(raw) - header} bytes of data; it is truncated or corrupt"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


# ----- SVHN .mat files -----------------------------------------------------


def _read_svhn_mat(path: Path, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Reads a split from the official SVHN format-2 .mat files; None if `path` has none."""
    if not path.is_dir() or not any(path.glob("*_32x32.mat")):
        return None
    file = path / f"{split}_32x32.mat"
    if not file.is_file():
        raise DatasetError(f"{path} holds SVHN .mat files but not {file.name}")
    from scipy import io as scipy_io  # pylint: disable=import-outside-toplevel

    try:
        mat = scipy_io.loadmat(file)
    except Exception as error:  # loadmat raises many types on damaged files.
        raise DatasetError(
            f"{file} is not a readable .mat file ({error}); download it again"
        ) from error
    images, labels = mat.get("X"), mat.get("y")
    if images is None or labels is None or images.ndim != 4 or labels.size != images.shape[-1]:
        raise DatasetError(f"{file} lacks the arrays X (32, 32, 3, N) and y (N, 1) of SVHN")
    # The .mat stores images last-axis-major, and the digit 0 as label 10.
    return images.transpose(3, 0, 1, 2), labels.reshape(-1).astype(np.int64) % 10


_OFFICIAL_READERS: Mapping[str, Callable[[Path, str], tuple[np.ndarray, np.ndarray] | None]] = {
    "cifar10": lambda path, split: _read_cifar(path, split, _CIFAR10),
    "cifar100": lambda path, split: _read_cifar(path, split, _CIFAR100),
    "mnist": _read_mnist_idx,
    "fashion_mnist": _read_mnist_idx,
    "svhn_cropped": _read_svhn_mat,
}


# ----- image folders ---------------------------------------------------------

_IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp"}
)
_DECODE_CHUNK = 1024  # images per task: amortizes the thread-pool overhead.


class _EncodedImage(NamedTuple):
    class_name: str
    source: str  # the path shown in errors.
    data: bytes


def _is_image_file(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in _IMAGE_SUFFIXES and not name.startswith(".")


def _load_image_folder(path: Path, split: str, name: str) -> ArrayDataset | None:
    """Loads `<split>/<class>/<image>` files; None if `path` has no such layout.

    For ``name == "image_folder"`` a missing layout is an error instead.
    """
    if path.is_file() and zipfile.is_zipfile(path):
        files = _read_zip_split(path, split)
    elif (path / split).is_dir():
        files = _read_dir_split(path / split)
    elif (path / f"{split}.zip").is_file():
        files = _read_zip_split(path / f"{split}.zip", split)
    elif name == "image_folder":
        splits = sorted(
            {c.name for c in path.iterdir() if c.is_dir()}
            | {c.stem for c in path.iterdir() if c.suffix == ".zip"}
        ) if path.is_dir() else []
        raise DatasetError(
            f"{path} has no split folder {split!r}/ nor {split}.zip (splits found: {splits}). "
            + _how_to_provide(name)
        )
    else:
        return None

    class_names = tuple(sorted({f.class_name for f in files}))
    class_index = {c: i for i, c in enumerate(class_names)}
    labels = np.array([class_index[f.class_name] for f in files], np.int64)
    images = _decode_images(files)
    return _array_dataset(name, split, images, labels, class_names, source=str(path))


def _read_zip_split(archive_path: Path, split: str) -> list[_EncodedImage]:
    """The images of a zip whose paths end in `<split>/<class>/<image>`, sorted."""
    entries, splits = [], set()
    try:
        with zipfile.ZipFile(archive_path) as archive:
            for info in archive.infolist():
                parts = PurePosixPath(info.filename).parts
                if info.is_dir() or len(parts) < 3 or "__MACOSX" in parts:
                    continue
                if not _is_image_file(parts[-1]):
                    continue
                # Anything may come before <split>/ (a zip often wraps one root folder).
                splits.add(parts[-3])
                if parts[-3] == split:
                    entries.append((parts[-2], info.filename))
            entries.sort()
            files = [
                _EncodedImage(cls, f"{archive_path}:{name}", archive.read(name))
                for cls, name in entries
            ]
    except (zipfile.BadZipFile, OSError, zlib.error) as error:
        raise DatasetError(f"{archive_path} is not a readable zip ({error})") from error
    if not files:
        raise DatasetError(
            f"{archive_path} has no images under {split}/<class>/ (splits found: "
            f"{sorted(splits)}). " + _how_to_provide("image_folder")
        )
    return files


def _read_dir_split(split_dir: Path) -> list[_EncodedImage]:
    """The images of `split_dir/<class>/<image>`, sorted by class then file name."""
    files = [
        _EncodedImage(class_dir.name, str(file), file.read_bytes())
        for class_dir in sorted(split_dir.iterdir())
        if class_dir.is_dir() and not class_dir.name.startswith(".")
        for file in sorted(class_dir.iterdir())
        if file.is_file() and _is_image_file(file.name)
    ]
    if not files:
        raise DatasetError(
            f"{split_dir} has no images in class folders. " + _how_to_provide("image_folder")
        )
    return files


def _decode_images(files: Sequence[_EncodedImage]) -> np.ndarray:
    """Decodes the images (in a thread pool) into one (N, H, W, C) uint8 array.

    An image folder mixing grayscale and color images gives RGB throughout;
    images of different sizes are an error naming the first odd file.
    """

    def decode_chunk(start: int) -> list[np.ndarray]:
        return [_decode_image(f) for f in files[start : start + _DECODE_CHUNK]]

    # Pillow releases the GIL while it decompresses pixels, so threads help
    # (less than processes would, but without the pickling and start-up cost).
    workers = min(8, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        chunks = pool.map(decode_chunk, range(0, len(files), _DECODE_CHUNK))
        arrays = [array for chunk in chunks for array in chunk]

    height, width, _ = arrays[0].shape
    channels = max(array.shape[-1] for array in arrays)
    images = np.empty((len(arrays), height, width, channels), np.uint8)
    for i, array in enumerate(arrays):
        if array.shape[:2] != (height, width):
            raise DatasetError(
                f"{files[i].source} is {array.shape[1]}x{array.shape[0]} pixels but "
                f"{files[0].source} is {width}x{height}: all images of a dataset must have "
                "one size; resize them first"
            )
        images[i] = array  # A gray (H, W, 1) image broadcasts to equal R, G and B.
    return images


def _decode_image(file: _EncodedImage) -> np.ndarray:
    """One image as (H, W, 1) uint8 if it is grayscale, else (H, W, 3)."""
    from PIL import Image  # pylint: disable=import-outside-toplevel

    try:
        with Image.open(io.BytesIO(file.data)) as image:
            gray = image.mode in ("1", "L", "LA")
            array = np.asarray(image.convert("L" if gray else "RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise DatasetError(f"cannot decode the image {file.source} ({error})") from error
    return array.reshape(array.shape[0], array.shape[1], -1)


# ----- tensorflow-datasets ---------------------------------------------------


def _load_tfds(name: str, split: str, data_dir: Path | None) -> ArrayDataset:
    """Reads a split that tensorflow-datasets prepared, without downloading or TensorFlow."""
    spec = DATASETS[name]
    if spec.tfds_name is None:
        raise DatasetError(f"{name} is not a tensorflow-datasets dataset. {_how_to_provide(name)}")
    try:
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    except ImportError as error:
        raise DatasetError(
            f"tensorflow-datasets is not installed, so {name} can only come from local "
            f"files. {_how_to_provide(name)}"
        ) from error

    # Resolved per call (tfds reads $TFDS_DATA_DIR only when it is imported).
    root = str(data_dir) if data_dir is not None else tfds.core.constants.get_default_data_dir()
    try:
        builder = tfds.builder(spec.tfds_name, data_dir=root)
        prepared = builder.is_prepared()
    except Exception as error:  # tfds raises many types; none should escape raw.
        raise DatasetError(
            f"tensorflow-datasets cannot open {spec.tfds_name!r} in {root} "
            f"({type(error).__name__}: {error}). {_how_to_provide(name)}"
        ) from error
    if not prepared:
        raise DatasetError(
            f"{name} is not prepared locally: tensorflow-datasets has no {spec.tfds_name!r} in "
            f"{root}, and this code never downloads (this machine may have no internet). "
            + _how_to_provide(name)
        )
    if split not in builder.info.splits:
        raise DatasetError(
            f"{builder.data_dir} has no split={split!r}; "
            f"prepared splits: {list(builder.info.splits)}"
        )
    try:
        records = _tfds_records(builder, split)
        images = np.stack([record["image"] for record in records])
        labels = np.array([record["label"] for record in records], np.int64)
    except DatasetError:
        raise
    except Exception as error:
        raise DatasetError(
            f"cannot read {split!r} of {builder.data_dir} ({type(error).__name__}: {error}); "
            f"prepare it again. {_how_to_provide(name)}"
        ) from error
    return _array_dataset(name, split, images, labels, source=str(builder.data_dir))


def _tfds_records(builder, split: str) -> list[Mapping[str, np.ndarray]]:
    """The decoded examples of a prepared split, in the order tfds stores them."""
    file_format = builder.info.file_format
    if file_format is None or file_format.value == "tfrecord":
        # tfds only gives random access to array_record/parquet files, and its
        # tf.data reader needs TensorFlow; tfrecord shards are simple enough to
        # read here, and tfds parses each example with NumPy.
        features = builder.info.features
        return [
            features.deserialize_example_np(record)
            for shard in builder.info.splits[split].filepaths
            for record in _read_tfrecord(Path(shard))
        ]
    source = builder.as_data_source(split=split)
    return list(source.__getitems__(range(len(source))))


def _read_tfrecord(file: Path) -> list[bytes]:
    """The records of an uncompressed TFRecord file.

    Each record is: uint64 length, uint32 CRC of the length, the data, uint32
    CRC of the data (little-endian).  The CRCs (crc32c, not in the standard
    library) are not checked; a truncated file is still detected.
    """
    raw = file.read_bytes()
    records, offset = [], 0
    while offset < len(raw):
        if offset + 12 > len(raw):
            raise DatasetError(f"{file}: truncated TFRecord header at byte {offset}")
        (length,) = struct.unpack_from("<Q", raw, offset)
        start, end = offset + 12, offset + 12 + length
        if end + 4 > len(raw):
            raise DatasetError(f"{file}: truncated TFRecord of {length} bytes at byte {offset}")
        records.append(raw[start:end])
        offset = end + 4
    return records


# ----- cache -----------------------------------------------------------------


def _cache_file(cache_dir: Path, name: str, split: str, data_dir: str | os.PathLike | None) -> Path:
    """Where the arrays of (name, split, data_dir) are cached.

    The key includes the size and modification time of data_dir, so replacing
    a zip or archive invalidates the cache.  (Editing files inside a data_dir
    directory is not noticed: delete the cache file then.)
    """
    key = f"{name}|{split}|"
    if data_dir is not None:
        path = Path(data_dir).expanduser().resolve()
        stat = path.stat() if path.exists() else None
        key += f"{path}|{stat.st_size if stat else ''}|{stat.st_mtime_ns if stat else ''}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir.expanduser() / f"{name}-{split}-{digest}.npz"


def _write_cache(dataset: ArrayDataset, cache_file: Path) -> None:
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so an interrupted run never leaves half a cache file.
    partial = cache_file.with_suffix(".partial.npz")
    np.savez(
        partial,
        images=dataset.images,
        labels=dataset.labels,
        num_classes=dataset.num_classes,
        name=dataset.name,
        class_names=np.array(dataset.class_names, dtype=str),
    )
    os.replace(partial, cache_file)
    _log.info("cached %s (%d images) in %s", dataset.name, len(dataset.labels), cache_file)


def _read_cache(cache_file: Path) -> ArrayDataset:
    try:
        with np.load(cache_file, allow_pickle=False) as arrays:
            return ArrayDataset(
                images=arrays["images"],
                labels=arrays["labels"],
                num_classes=int(arrays["num_classes"]),
                name=str(arrays["name"]),
                class_names=tuple(str(c) for c in arrays["class_names"]),
            )
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise DatasetError(
            f"the cache file {cache_file} is corrupt ({error}); delete it"
        ) from error


# --------------------------------------------------------------------------
# Splits.
# --------------------------------------------------------------------------


def _take(dataset: ArrayDataset, indices: np.ndarray, name: str) -> ArrayDataset:
    return dataset._replace(
        images=dataset.images[indices], labels=dataset.labels[indices], name=name
    )


def _check_seed(seed: int) -> None:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got seed={seed!r}")


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
    order = np.random.default_rng(seed).permutation(n)
    half = (n + 1) // 2
    return (
        _take(dataset, np.sort(order[:half]), f"{dataset.name}[search-weights]"),
        _take(dataset, np.sort(order[half:]), f"{dataset.name}[search-arch]"),
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


# --------------------------------------------------------------------------
# Data order.
# --------------------------------------------------------------------------


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of the n examples in one epoch, a pure function of (seed, epoch).

    A run resumed at any epoch therefore sees the batches it would have seen.

    Args:
      seed: the run's data seed, >= 0.
      epoch: the epoch number, >= 0.
      n: the number of examples, >= 0.

    Returns:
      A permutation of ``range(n)``, int64 array of shape (n,).
    """
    for arg, value in (("seed", seed), ("epoch", epoch), ("n", n)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{arg} must be an int >= 0, got {arg}={value!r}")
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


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


# --------------------------------------------------------------------------
# On the accelerator.
# --------------------------------------------------------------------------


class DeviceData(NamedTuple):
    """A dataset held on the accelerator, gathered from by index inside jit.

    Pass it to the jitted step as an argument: a jitted function that closes
    over it would embed the whole dataset in the compiled program as a
    constant.
    """

    images: jax.Array  # shape=(N, H, W, C), dtype=jnp.uint8.
    labels: jax.Array  # shape=(N,), dtype=jnp.int32.

    def batch(self, indices: jax.Array) -> dict[str, jax.Array]:
        """The examples at `indices` (shape (B,)) as ``{"image", "label"}``, on the device."""
        # Indices come from batch_indices and are in range; "clip" is the
        # cheapest mode that still gives defined results if they were not.
        return {
            "image": jnp.take(self.images, indices, axis=0, mode="clip"),
            "label": jnp.take(self.labels, indices, axis=0, mode="clip"),
        }


def to_device(
    dataset: ArrayDataset, device: jax.Device | jax.sharding.Sharding | None = None
) -> DeviceData:
    """Copies a dataset's uint8 images and labels to the accelerator, once.

    Args:
      dataset: the dataset.
      device: where to put it (default: JAX's default device).

    Returns:
      The :class:`DeviceData`; uint8 keeps it 4x smaller than float32.
    """
    return DeviceData(
        jax.device_put(dataset.images, device), jax.device_put(dataset.labels, device)
    )


def normalize(
    images: jax.Array, mean: jax.typing.ArrayLike, std: jax.typing.ArrayLike
) -> jax.Array:
    """uint8 pixels to float32 ``(x / 255 - mean) / std``, per channel.

    Args:
      images: uint8 array (..., H, W, C).
      mean: per-channel mean in [0, 1] units, shape (C,) (see :func:`channel_stats`).
      std: per-channel standard deviation in [0, 1] units, shape (C,), > 0.

    Returns:
      float32 array of the shape of `images`.
    """
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    for arg, value in (("mean", mean), ("std", std)):
        if value.ndim > 1 or value.size not in (1, images.shape[-1]):
            raise ValueError(
                f"{arg} must have one value per channel ({images.shape[-1]}), "
                f"got shape {value.shape}"
            )
    return (images.astype(jnp.float32) / 255.0 - mean) / std


def augment(key: jax.Array, images: jax.Array, pad: int = 4, flip: bool = True) -> jax.Array:
    """Random crop after zero padding, and random horizontal flip, per image.

    The standard CIFAR augmentation of DARTS and XNAS: pad each side by `pad`
    zeros, crop back to (H, W) at a uniform random offset, mirror with
    probability 1/2.  Apply it to the uint8 images before :func:`normalize`,
    so that the padding is black as in the papers (padding after normalizing
    would be the mean color).  Shapes are static, so it runs inside jit;
    `pad` and `flip` are Python values.

    Args:
      key: PRNG key; the same key gives the same crops and flips.
      images: array (B, H, W, C), any dtype.
      pad: zero padding on each side, >= 0 (0: no crop).
      flip: whether to mirror half of the images.

    Returns:
      Array like `images`.
    """
    if not isinstance(pad, int) or pad < 0:
        raise ValueError(f"pad must be an int >= 0, got pad={pad!r}")
    batch, height, width, channels = images.shape
    crop_key, flip_key = jax.random.split(key)
    if pad:
        padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        offsets = jax.random.randint(crop_key, (batch, 2), 0, 2 * pad + 1)

        def crop(image: jax.Array, offset: jax.Array) -> jax.Array:
            return lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, channels))

        images = jax.vmap(crop)(padded, offsets)
    if flip:
        mirrored = jax.random.bernoulli(flip_key, 0.5, (batch,))
        images = jnp.where(mirrored[:, None, None, None], images[:, :, ::-1, :], images)
    return images


def cutout(key: jax.Array, images: jax.Array, size: int) -> jax.Array:
    """Zeroes a random `size` x `size` square of each image (DeVries & Taylor, 2017).

    As in the DARTS/XNAS evaluation training: the square's center is uniform
    over the image and the square is clipped at the borders.  Apply it after
    :func:`normalize` (zero is then the mean color, as in those codebases).

    Args:
      key: PRNG key.
      images: array (B, H, W, C), any dtype.
      size: side of the square, >= 0 (0: no cutout).

    Returns:
      Array like `images`.
    """
    if not isinstance(size, int) or size < 0:
        raise ValueError(f"size must be an int >= 0, got size={size!r}")
    if not size:
        return images
    batch, height, width, _ = images.shape
    y_key, x_key = jax.random.split(key)
    center_y = jax.random.randint(y_key, (batch, 1, 1), 0, height)
    center_x = jax.random.randint(x_key, (batch, 1, 1), 0, width)
    rows = jnp.arange(height)[None, :, None]
    cols = jnp.arange(width)[None, None, :]
    inside = (
        (rows >= center_y - size // 2) & (rows < center_y + size // 2)
        & (cols >= center_x - size // 2) & (cols < center_x + size // 2)
    )
    return jnp.where(inside[..., None], jnp.zeros((), images.dtype), images)
