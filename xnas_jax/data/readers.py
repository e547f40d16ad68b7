"""Readers: one split of a dataset from its files, as uint8 arrays; and the .npz cache.

Each reader turns one kind of source into an :class:`~xnas_jax.data.specs.ArrayDataset`
checked against the dataset's spec (:func:`array_dataset`):

* :func:`read_digits`: scikit-learn's embedded 8x8 digits, split 80/20 here.
* :data:`OFFICIAL_READERS`: the official files of a named dataset (CIFAR
  python batches, directory or .tar.gz; MNIST/Fashion-MNIST IDX files,
  gzipped or not; SVHN .mat files), or None where a path holds none.
* :func:`read_image_folder`: ``<split>/<class>/<image>`` files in a
  directory, a .zip, or ``<split>.zip`` files, decoded in a thread pool.
* :func:`read_tfds`: a split that tensorflow-datasets prepared, read without
  downloading and without TensorFlow (tfrecord shards are parsed here).
* :func:`cache_path`, :func:`write_cache`, :func:`read_cache`: decoded arrays
  stored as a .npz, keyed by (name, split, data_dir and its size and time).

Nothing here downloads, and nothing here picks a source: that is
:func:`xnas_jax.data.datasets.load_dataset`, which this module does not import.
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
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np

from xnas_jax.data.specs import DATASETS, ArrayDataset, DatasetError, how_to_provide

__all__ = [
    "OFFICIAL_READERS",
    "array_dataset",
    "cache_path",
    "read_cache",
    "read_digits",
    "read_image_folder",
    "read_tfds",
    "write_cache",
]

_log = logging.getLogger(__name__)


def array_dataset(
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


def read_digits(split: str) -> ArrayDataset:
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


OFFICIAL_READERS: Mapping[str, Callable[[Path, str], tuple[np.ndarray, np.ndarray] | None]] = {
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


def read_image_folder(path: Path, split: str, name: str,
                      shard: tuple[int, int] = (0, 1)) -> ArrayDataset | None:
    """Loads `<split>/<class>/<image>` files; None if `path` has no such layout.

    For ``name == "image_folder"`` a missing layout is an error instead.
    ``shard = (j, K)`` decodes only the files j, j + K, ... of the sorted list
    (the classes still come from all files).
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
            + how_to_provide(name)
        )
    else:
        return None

    class_names = tuple(sorted({f.class_name for f in files}))
    class_index = {c: i for i, c in enumerate(class_names)}
    files = files[shard[0]::shard[1]]
    labels = np.array([class_index[f.class_name] for f in files], np.int64)
    images = _decode_images(files)
    return array_dataset(name, split, images, labels, class_names, source=str(path))


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
            f"{sorted(splits)}). " + how_to_provide("image_folder")
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
            f"{split_dir} has no images in class folders. " + how_to_provide("image_folder")
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


def read_tfds(name: str, split: str, data_dir: Path | None,
              shard: tuple[int, int] = (0, 1)) -> ArrayDataset:
    """Reads a split that tensorflow-datasets prepared, without downloading or TensorFlow.

    ``shard = (j, K)`` decodes only the records j, j + K, ... in stored order.
    """
    spec = DATASETS[name]
    if spec.tfds_name is None:
        raise DatasetError(f"{name} is not a tensorflow-datasets dataset. {how_to_provide(name)}")
    try:
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    except ImportError as error:
        raise DatasetError(
            f"tensorflow-datasets is not installed, so {name} can only come from local "
            f"files. {how_to_provide(name)}"
        ) from error

    # Resolved per call (tfds reads $TFDS_DATA_DIR only when it is imported).
    root = str(data_dir) if data_dir is not None else tfds.core.constants.get_default_data_dir()
    try:
        builder = tfds.builder(spec.tfds_name, data_dir=root)
        prepared = builder.is_prepared()
    except Exception as error:  # tfds raises many types; none should escape raw.
        raise DatasetError(
            f"tensorflow-datasets cannot open {spec.tfds_name!r} in {root} "
            f"({type(error).__name__}: {error}). {how_to_provide(name)}"
        ) from error
    if not prepared:
        raise DatasetError(
            f"{name} is not prepared locally: tensorflow-datasets has no {spec.tfds_name!r} in "
            f"{root}, and this code never downloads (this machine may have no internet). "
            + how_to_provide(name)
        )
    if split not in builder.info.splits:
        raise DatasetError(
            f"{builder.data_dir} has no split={split!r}; "
            f"prepared splits: {list(builder.info.splits)}"
        )
    try:
        records = _tfds_records(builder, split, shard)
        images = np.stack([record["image"] for record in records])
        labels = np.array([record["label"] for record in records], np.int64)
    except DatasetError:
        raise
    except Exception as error:
        raise DatasetError(
            f"cannot read {split!r} of {builder.data_dir} ({type(error).__name__}: {error}); "
            f"prepare it again. {how_to_provide(name)}"
        ) from error
    return array_dataset(name, split, images, labels, source=str(builder.data_dir))


def _tfds_records(builder, split: str,
                  shard: tuple[int, int]) -> list[Mapping[str, np.ndarray]]:
    """The decoded examples ``shard[0]::shard[1]`` of a prepared split, in stored order."""
    file_format = builder.info.file_format
    if file_format is None or file_format.value == "tfrecord":
        # tfds only gives random access to array_record/parquet files, and its
        # tf.data reader needs TensorFlow; tfrecord shards are simple enough to
        # read here, and tfds parses each example with NumPy.
        features = builder.info.features
        records = [record for file in builder.info.splits[split].filepaths
                   for record in read_tfrecord(Path(file))]
        return [features.deserialize_example_np(r) for r in records[shard[0]::shard[1]]]
    source = builder.as_data_source(split=split)
    return list(source.__getitems__(range(shard[0], len(source), shard[1])))


def read_tfrecord(file: Path, allow_truncated: bool = False) -> list[bytes]:
    """The records of an uncompressed TFRecord file (tfds shards, TensorBoard events).

    Each record is: uint64 length, uint32 CRC of the length, the data, uint32
    CRC of the data (little-endian).  The CRCs (crc32c, not in the standard
    library) are not checked.  A truncated file is an error, or with
    ``allow_truncated`` (a file still being written) ends at its last whole
    record.
    """
    raw = file.read_bytes()
    records, offset = [], 0
    while offset < len(raw):
        length = struct.unpack_from("<Q", raw, offset)[0] if offset + 12 <= len(raw) else None
        if length is None or offset + 16 + length > len(raw):
            if allow_truncated:
                break
            what = "header" if length is None else f"TFRecord of {length} bytes"
            raise DatasetError(f"{file}: truncated {what} at byte {offset}")
        records.append(raw[offset + 12:offset + 12 + length])
        offset += 16 + length
    return records


# ----- cache -----------------------------------------------------------------


def cache_path(cache_dir: Path, name: str, split: str, data_dir: str | os.PathLike | None,
               shard: tuple[int, int] = (0, 1)) -> Path:
    """Where the arrays of (name, split, data_dir) are cached.

    The key includes the size and modification time of data_dir, so replacing
    a zip or archive invalidates the cache.  (Editing files inside a data_dir
    directory is not noticed: delete the cache file then.)
    """
    key = f"{name}|{split}|" + (f"shard {shard[0]} of {shard[1]}|" if shard[1] > 1 else "")
    if data_dir is not None:
        path = Path(data_dir).expanduser().resolve()
        stat = path.stat() if path.exists() else None
        key += f"{path}|{stat.st_size if stat else ''}|{stat.st_mtime_ns if stat else ''}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    part = f"-{shard[0]}of{shard[1]}" if shard[1] > 1 else ""
    return cache_dir.expanduser() / f"{name}-{split}{part}-{digest}.npz"


def write_cache(dataset: ArrayDataset, cache_file: Path) -> None:
    """Stores `dataset`'s arrays in `cache_file` (a .npz), for :func:`read_cache`."""
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


def read_cache(cache_file: Path) -> ArrayDataset:
    """The dataset that :func:`write_cache` stored in `cache_file`."""
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
