"""Tests of the data layer, xnas_jax.data (AutoAugment: test_autoaugment.py).

Every loader is checked on small files written here in the dataset's
official format, with known pixels and labels, against exact equality.
"""

import gzip
import io
import itertools
import pickle
import struct
import tarfile
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from xnas_jax.data import augment, datasets, order, readers, specs
from xnas_jax.data.specs import ArrayDataset, DatasetError


def _random_images(seed, shape):
    # 1..255: no pixel is 0, so zero padding and cutout are recognizable.
    return np.random.default_rng(seed).integers(1, 256, shape, dtype=np.uint8)


# ----- CIFAR python batches ------------------------------------------------


def _cifar_row(image):
    """An image (32, 32, 3) as the official CIFAR row: all red, then green, then blue."""
    row = np.empty(3072, np.uint8)
    for c, y, x in itertools.product(range(3), range(32), range(32)):
        row[c * 1024 + y * 32 + x] = image[y, x, c]
    return row


def _write_cifar_batch(path, images, label_key, labels):
    batch = {
        b"batch_label": b"testing batch",
        b"data": np.stack([_cifar_row(image) for image in images]),
        label_key: list(labels),
        b"filenames": [b"img%d.png" % i for i in range(len(images))],
    }
    path.write_bytes(pickle.dumps(batch, protocol=2))


def _make_cifar10(root):
    """cifar-10-batches-py/ under root, 2 images per train batch, 3 in test."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    expected = {}
    train_images, train_labels = [], []
    for i in range(1, 6):
        images = _random_images(i, (2, 32, 32, 3))
        labels = [(2 * i) % 10, (2 * i + 1) % 10]
        _write_cifar_batch(folder / f"data_batch_{i}", images, b"labels", labels)
        train_images.append(images)
        train_labels += labels
    expected["train"] = (np.concatenate(train_images), np.array(train_labels))
    test_images = _random_images(99, (3, 32, 32, 3))
    _write_cifar_batch(folder / "test_batch", test_images, b"labels", [9, 0, 4])
    expected["test"] = (test_images, np.array([9, 0, 4]))
    return folder, expected


def _tar_gz(folder, archive):
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


@pytest.fixture(scope="module")
def cifar10_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar10")
    folder, expected = _make_cifar10(root / "extracted")
    archive_dir = root / "archive"
    archive_dir.mkdir()
    archive = _tar_gz(folder, archive_dir / "cifar-10-python.tar.gz")
    paths = {"parent": folder.parent, "batches": folder, "tar": archive, "tar_parent": archive_dir}
    return paths, expected


@pytest.mark.parametrize("layout", ["parent", "batches", "tar", "tar_parent"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar10_official_files_give_known_pixels(cifar10_files, layout, split):
    paths, expected = cifar10_files
    dataset = datasets.load_dataset("cifar10", split, data_dir=paths[layout])
    images, labels = expected[split]
    assert dataset.images.dtype == np.uint8 and dataset.labels.dtype == np.int32
    np.testing.assert_array_equal(dataset.images, images)
    np.testing.assert_array_equal(dataset.labels, labels)
    assert dataset.num_classes == 10
    assert dataset.name == f"cifar10/{split}"


def test_cifar100_official_files_use_fine_labels(tmp_path):
    folder = tmp_path / "data" / "cifar-100-python"
    folder.mkdir(parents=True)
    expected = {}
    for seed, split in enumerate(["train", "test"]):
        images = _random_images(seed, (3, 32, 32, 3))
        fine = [99, 0, 57 + seed]
        batch = {
            b"data": np.stack([_cifar_row(image) for image in images]),
            b"fine_labels": fine,
            b"coarse_labels": [19, 0, 3],
        }
        (folder / split).write_bytes(pickle.dumps(batch, protocol=2))
        expected[split] = (images, fine)
    archive_dir = tmp_path / "archive"
    archive_dir.mkdir()
    _tar_gz(folder, archive_dir / "cifar-100-python.tar.gz")

    for data_dir in (folder.parent, folder, archive_dir):
        for split, (images, fine) in expected.items():
            dataset = datasets.load_dataset("cifar100", split, data_dir=data_dir)
            np.testing.assert_array_equal(dataset.images, images)
            np.testing.assert_array_equal(dataset.labels, fine)
            assert dataset.num_classes == 100


# ----- MNIST / Fashion-MNIST IDX files -------------------------------------


def _idx_bytes(array):
    header = bytes((0, 0, 0x08, array.ndim)) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_idx(folder, prefix, images, labels, compress):
    for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
        stem, data = f"{prefix}-{kind}-ubyte", _idx_bytes(array)
        if compress:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
@pytest.mark.parametrize("compress", [True, False])
def test_idx_files_give_known_pixels(tmp_path, name, compress):
    train_images = _random_images(0, (4, 28, 28))
    test_images = _random_images(1, (2, 28, 28))
    _write_idx(tmp_path, "train", train_images, np.array([3, 1, 4, 1]), compress)
    _write_idx(tmp_path, "t10k", test_images, np.array([5, 9]), compress)

    train = datasets.load_dataset(name, "train", data_dir=tmp_path)
    test = datasets.load_dataset(name, "test", data_dir=tmp_path)
    np.testing.assert_array_equal(train.images, train_images[..., None])
    np.testing.assert_array_equal(train.labels, [3, 1, 4, 1])
    np.testing.assert_array_equal(test.images, test_images[..., None])
    np.testing.assert_array_equal(test.labels, [5, 9])
    assert train.name == f"{name}/train" and train.num_classes == 10


def test_svhn_mat_files_map_label_10_to_digit_0(tmp_path):
    from scipy import io as scipy_io

    images = _random_images(0, (3, 32, 32, 3))
    scipy_io.savemat(
        tmp_path / "test_32x32.mat",
        {"X": images.transpose(1, 2, 3, 0), "y": np.array([[10], [1], [9]], np.uint8)},
    )
    dataset = datasets.load_dataset("svhn_cropped", "test", data_dir=tmp_path)
    np.testing.assert_array_equal(dataset.images, images)
    np.testing.assert_array_equal(dataset.labels, [0, 1, 9])
    with pytest.raises(DatasetError, match="train_32x32.mat"):
        datasets.load_dataset("svhn_cropped", "train", data_dir=tmp_path)


# ----- image folders -----------------------------------------------------------


def _png(array):
    buffer = io.BytesIO()
    Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(buffer, format="PNG")
    return buffer.getvalue()


def _image_folder_files(shape=(4, 5, 3)):
    """{relative path: pixels} for train/{cat,dog} and test/{cat,dog}, H != W."""
    files = {}
    for seed, (split, class_name, file_name) in enumerate([
        ("train", "dog", "b.png"), ("train", "dog", "a.png"), ("train", "cat", "x.png"),
        ("test", "dog", "1.png"), ("test", "cat", "2.png"),
    ]):
        files[f"{split}/{class_name}/{file_name}"] = _random_images(seed, shape)
    return files


def _write_folder(root, files):
    for relative, pixels in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_png(pixels))
    return root


def _write_zip(path, files, prefix=""):
    with zipfile.ZipFile(path, "w") as archive:
        for relative, pixels in files.items():
            archive.writestr(prefix + relative, _png(pixels))
    return path


def _expected_split(files, split):
    """Sorted by class then file name; labels index the sorted class names."""
    items = sorted(
        (k.split("/")[1], k.split("/")[2], v) for k, v in files.items() if k.startswith(split)
    )
    classes = sorted({c for c, _, _ in items})
    return np.stack([v for _, _, v in items]), np.array([classes.index(c) for c, _, _ in items])


@pytest.mark.parametrize("layout", ["dir", "zip", "wrapped_zip", "split_zips"])
def test_image_folder_gives_known_pixels(tmp_path, layout):
    files = _image_folder_files()
    if layout == "dir":
        data_dir = _write_folder(tmp_path / "folder", files)
    elif layout == "zip":
        data_dir = _write_zip(tmp_path / "all.zip", files)
    elif layout == "wrapped_zip":
        data_dir = _write_zip(tmp_path / "all.zip", files, prefix="pets/")
    else:  # A directory holding train.zip and test.zip, as /work/shared/data/cifar10_jpeg.
        data_dir = tmp_path / "zips"
        data_dir.mkdir()
        for split in ("train", "test"):
            split_files = {k: v for k, v in files.items() if k.startswith(split)}
            _write_zip(data_dir / f"{split}.zip", split_files)

    for split in ("train", "test"):
        dataset = datasets.load_dataset("image_folder", split, data_dir=data_dir)
        images, labels = _expected_split(files, split)
        np.testing.assert_array_equal(dataset.images, images)
        np.testing.assert_array_equal(dataset.labels, labels)
        assert dataset.class_names == ("cat", "dog") and dataset.num_classes == 2


def test_image_folder_keeps_grayscale_and_promotes_mixed_to_rgb(tmp_path):
    gray = _random_images(0, (6, 6, 1))
    color = _random_images(1, (6, 6, 3))
    _write_folder(tmp_path / "gray", {"train/a/0.png": gray, "train/b/0.png": gray[::-1]})
    _write_folder(tmp_path / "mixed", {"train/a/0.png": gray, "train/b/0.png": color})

    only_gray = datasets.load_dataset("image_folder", "train", data_dir=tmp_path / "gray")
    assert only_gray.images.shape == (2, 6, 6, 1)
    np.testing.assert_array_equal(only_gray.images[1], gray[::-1])
    mixed = datasets.load_dataset("image_folder", "train", data_dir=tmp_path / "mixed")
    assert mixed.images.shape == (2, 6, 6, 3)
    np.testing.assert_array_equal(mixed.images[0], np.repeat(gray, 3, axis=-1))
    np.testing.assert_array_equal(mixed.images[1], color)


def test_named_dataset_from_image_folder_checks_class_count(tmp_path):
    files = {f"train/{c:02d}/0.png": _random_images(c, (32, 32, 3)) for c in range(10)}
    _write_folder(tmp_path / "ten", files)
    dataset = datasets.load_dataset("cifar10", "train", data_dir=tmp_path / "ten")
    np.testing.assert_array_equal(dataset.labels, np.arange(10))
    assert dataset.name == "cifar10/train"

    del files["train/09/0.png"]
    _write_folder(tmp_path / "nine", files)
    with pytest.raises(DatasetError, match="9 class folders.*10 classes"):
        datasets.load_dataset("cifar10", "train", data_dir=tmp_path / "nine")


def test_cache_dir_reuses_decoded_arrays(tmp_path, monkeypatch):
    data_dir = _write_zip(tmp_path / "all.zip", _image_folder_files())
    cache_dir = tmp_path / "cache"
    first = datasets.load_dataset("image_folder", "train", data_dir=data_dir, cache_dir=cache_dir)
    assert len(list(cache_dir.glob("*.npz"))) == 1

    def no_decoding(*args):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(readers, "_decode_images", no_decoding)
    second = datasets.load_dataset("image_folder", "train", data_dir=data_dir, cache_dir=cache_dir)
    np.testing.assert_array_equal(second.images, first.images)
    np.testing.assert_array_equal(second.labels, first.labels)
    assert (second.num_classes, second.name, second.class_names) == (
        first.num_classes, first.name, first.class_names)


# ----- tensorflow-datasets layouts ---------------------------------------------


def _write_tfds_mnist(data_dir, images, labels, file_format):
    """A prepared tfds 'mnist' without TensorFlow: tf.Example protos in one shard."""
    tfds = pytest.importorskip("tensorflow_datasets")
    from tensorflow_datasets.proto import tf_example_pb2

    builder = tfds.builder("mnist", data_dir=str(data_dir))
    builder.data_path.mkdir(parents=True)
    records = []
    for image, label in zip(images, labels):
        example = tf_example_pb2.Example()
        example.features.feature["image"].bytes_list.value.append(_png(image))
        example.features.feature["label"].int64_list.value.append(int(label))
        records.append(example.SerializeToString())
    shard = builder.data_path / f"mnist-train.{file_format}-00000-of-00001"
    if file_format == "tfrecord":
        # uint64 length, CRC, data, CRC; the reader does not check the CRCs.
        framed = [struct.pack("<Q", len(r)) + b"\0" * 4 + r + b"\0" * 4 for r in records]
        shard.write_bytes(b"".join(framed))
    else:
        array_record = pytest.importorskip("array_record.python.array_record_module")
        writer = array_record.ArrayRecordWriter(str(shard), "group_size:1")
        for record in records:
            writer.write(record)
        writer.close()
        builder.info.set_file_format(file_format, override=True)
    template = tfds.core.naming.ShardedFileTemplate(
        data_dir=builder.data_path, dataset_name="mnist", split="train",
        filetype_suffix=file_format)
    builder.info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name="train", shard_lengths=[len(records)], num_bytes=0,
                            filename_template=template)]))
    builder.info.write_to_directory(builder.data_path)


@pytest.mark.parametrize("file_format", ["tfrecord", "array_record"])
def test_prepared_tfds_layout_is_read_without_tensorflow(tmp_path, file_format):
    images = _random_images(0, (3, 28, 28, 1))
    _write_tfds_mnist(tmp_path, images, [7, 0, 2], file_format)
    dataset = datasets.load_dataset("mnist", "train", data_dir=tmp_path)
    np.testing.assert_array_equal(dataset.images, images)
    np.testing.assert_array_equal(dataset.labels, [7, 0, 2])
    with pytest.raises(DatasetError, match=r"no split='test'.*\['train'\]"):
        datasets.load_dataset("mnist", "test", data_dir=tmp_path)


# ----- digits ------------------------------------------------------------------


def test_digits_split_is_fixed_stratified_and_covers_the_dataset():
    from sklearn.datasets import load_digits

    train = datasets.load_dataset("digits", "train", data_dir="/ignored/path")
    test = datasets.load_dataset("digits", "test")
    assert train.images.shape == (1438, 8, 8, 1) and test.images.shape == (359, 8, 8, 1)
    assert train.images.dtype == np.uint8 and train.images.max() == 255
    assert train.num_classes == test.num_classes == 10

    digits = load_digits()
    everything = np.round(digits.images * 255 / 16).astype(np.uint8)[..., None]
    # The halves together are the whole dataset (as a multiset of (image, label)).
    def rows(*datasets):
        return sorted(i.tobytes() + bytes([l]) for d in datasets for i, l in zip(d[0], d[1]))

    assert rows(train, test) == rows((everything, digits.target))
    # Stratified: each class gives 20% (rounded) of its images to test.
    per_class = np.bincount(digits.target)
    np.testing.assert_array_equal(np.bincount(test.labels), np.round(0.2 * per_class))
    again = datasets.load_dataset("digits", "test")
    np.testing.assert_array_equal(again.images, test.images)


# ----- errors ------------------------------------------------------------------


def test_unknown_name_and_split_list_the_choices():
    with pytest.raises(DatasetError, match=r"imagenet.*valid names.*cifar10.*digits"):
        datasets.load_dataset("imagenet")
    with pytest.raises(DatasetError, match=r"split='validation'.*'train', 'test'"):
        datasets.load_dataset("cifar10", "validation")


def test_missing_or_empty_data_dir_says_what_to_provide(tmp_path):
    hint = r"does not exist.*--data-dir.*cifar-10-batches-py.*<split>/<class>/<image>"
    with pytest.raises(DatasetError, match=hint):
        datasets.load_dataset("cifar10", data_dir=tmp_path / "nowhere")
    (tmp_path / "README").write_text("nothing useful")
    with pytest.raises(DatasetError, match=r"no mnist data.*README.*train-images-idx3-ubyte.gz"):
        datasets.load_dataset("mnist", data_dir=tmp_path)
    with pytest.raises(DatasetError, match="image_folder needs data_dir"):
        datasets.load_dataset("image_folder")


def test_tfds_not_prepared_without_data_dir_explains_the_alternatives(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow_datasets")
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with pytest.raises(DatasetError) as info:
        datasets.load_dataset("cifar10", "train")
    message = str(info.value)
    for words in ("not prepared locally", str(tmp_path), "no internet", "--data-dir",
                  "cifar-10-python.tar.gz", "<split>/<class>/<image>"):
        assert words in message


def test_broken_tfds_layout_is_wrapped_with_its_cause(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    version_dir = tmp_path / "cifar10" / "3.0.2"
    version_dir.mkdir(parents=True)
    (version_dir / "dataset_info.json").write_text("not json")
    with pytest.raises(DatasetError, match="cannot open 'cifar10'.*--data-dir") as info:
        datasets.load_dataset("cifar10", data_dir=tmp_path)
    assert info.value.__cause__ is not None


def test_corrupt_cifar_files_raise_dataset_error(tmp_path, cifar10_files):
    paths, _ = cifar10_files
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for file in paths["batches"].iterdir():
        (folder / file.name).write_bytes(file.read_bytes())

    (folder / "test_batch").write_bytes(b"\x80\x02}q\x00garbage")
    corrupt = r"test_batch is not a readable CIFAR python batch.*corrupt"
    with pytest.raises(DatasetError, match=corrupt) as info:
        datasets.load_dataset("cifar10", "test", data_dir=tmp_path)
    assert info.value.__cause__ is not None

    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match=r"lacks \['data_batch_3'\]"):
        datasets.load_dataset("cifar10", "train", data_dir=tmp_path)

    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(paths["tar"].read_bytes()[:300])
    with pytest.raises(DatasetError, match="not a readable tar archive"):
        datasets.load_dataset("cifar10", "train", data_dir=archive)


class _Payload:
    """Pickles to a call that would create a file if unpickling ran it."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_cifar_pickle_may_not_call_arbitrary_globals(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    target = tmp_path / "pwned"
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": _Payload(target), b"labels": []}))
    with pytest.raises(DatasetError, match="refusing to load the global pathlib"):
        datasets.load_dataset("cifar10", "test", data_dir=tmp_path)
    assert not target.exists()


def test_bad_idx_files_raise_dataset_error(tmp_path):
    images = _random_images(0, (2, 28, 28))
    _write_idx(tmp_path, "train", images, np.array([1, 2]), compress=False)
    good = (tmp_path / "train-images-idx3-ubyte").read_bytes()

    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x01" + good[4:])
    magic = r"bad IDX magic number 0x00000801 \(expected 0x00000803"
    with pytest.raises(DatasetError, match=magic):
        datasets.load_dataset("mnist", data_dir=tmp_path)

    (tmp_path / "train-images-idx3-ubyte").write_bytes(good[:-10])
    with pytest.raises(DatasetError, match=r"shape \(2, 28, 28\).*truncated"):
        datasets.load_dataset("mnist", data_dir=tmp_path)

    (tmp_path / "train-images-idx3-ubyte").write_bytes(good)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.array([1, 2, 3])))
    with pytest.raises(DatasetError, match="2 images but .* 3 labels"):
        datasets.load_dataset("mnist", data_dir=tmp_path)

    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte\[.gz\]"):
        datasets.load_dataset("mnist", "test", data_dir=tmp_path)

    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.array([1, 12])))
    with pytest.raises(DatasetError, match=r"labels range over \[1, 12\]"):
        datasets.load_dataset("mnist", data_dir=tmp_path)


def test_image_folder_errors_name_the_file(tmp_path):
    files = _image_folder_files()
    files["train/dog/odd.png"] = _random_images(0, (4, 6, 3))
    _write_folder(tmp_path / "sizes", files)
    with pytest.raises(DatasetError, match=r"dog/odd.png is 6x4 pixels .* 5x4: .*one size"):
        datasets.load_dataset("image_folder", "train", data_dir=tmp_path / "sizes")

    broken = _write_folder(tmp_path / "broken", _image_folder_files())
    (broken / "test" / "cat" / "2.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"cannot decode the image .*cat/2.png"):
        datasets.load_dataset("image_folder", "test", data_dir=broken)

    with pytest.raises(DatasetError, match=r"no split folder 'valid'.*\['test', 'train'\]"):
        datasets.load_dataset("image_folder", "valid", data_dir=broken)
    archive = _write_zip(tmp_path / "train_only.zip", {"train/a/0.png": files["train/dog/a.png"]})
    missing_split = r"no images under test/<class>/ \(splits found: \['train'\]\)"
    with pytest.raises(DatasetError, match=missing_split):
        datasets.load_dataset("image_folder", "test", data_dir=archive)


# ----- splits ------------------------------------------------------------------


def _numbered(n):
    """A dataset whose image i holds the value i, so examples can be identified."""
    ids = np.arange(n)
    images = (ids % 256).astype(np.uint8).reshape(n, 1, 1, 1)
    return ArrayDataset(images, ids.astype(np.int32), n, "numbered")


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 300), seed=st.integers(0, 2**32 - 1))
def test_search_split_halves_are_disjoint_and_cover_all(n, seed):
    weights, arch = order.search_split(_numbered(n), seed=seed)
    assert len(weights.labels) == (n + 1) // 2 and len(arch.labels) == n // 2
    assert not set(weights.labels) & set(arch.labels)
    assert sorted(np.concatenate([weights.labels, arch.labels])) == list(range(n))
    for half in (weights, arch):  # images stay with their labels
        np.testing.assert_array_equal(half.images.ravel(), half.labels % 256)
    again_weights, _ = order.search_split(_numbered(n), seed=seed)
    np.testing.assert_array_equal(again_weights.labels, weights.labels)


def test_search_split_depends_on_seed_and_is_not_the_first_half():
    first, _ = order.search_split(_numbered(100), seed=0)
    other, _ = order.search_split(_numbered(100), seed=1)
    assert set(first.labels) != set(other.labels)
    assert set(first.labels) != set(range(50))
    assert first.name == "numbered[search-weights]"
    with pytest.raises(ValueError, match="seed"):
        order.search_split(_numbered(10), seed=-1)


def test_subset_draws_distinct_examples():
    dataset = _numbered(50)
    small = order.subset(dataset, 7, seed=3)
    assert len(small.labels) == 7 == len(set(small.labels))
    assert list(small.labels) == sorted(small.labels) and set(small.labels) != set(range(7))
    np.testing.assert_array_equal(small.images.ravel(), small.labels)
    assert order.subset(dataset, 50) is dataset
    with pytest.raises(ValueError, match="max_examples=0"):
        order.subset(dataset, 0)


# ----- data order --------------------------------------------------------------


def test_epoch_permutation_depends_only_on_seed_and_epoch():
    permutation = order.epoch_permutation(seed=5, epoch=3, n=1000)
    assert sorted(permutation) == list(range(1000))
    np.testing.assert_array_equal(permutation, order.epoch_permutation(5, 3, 1000))
    assert not np.array_equal(permutation, order.epoch_permutation(5, 4, 1000))
    assert not np.array_equal(permutation, order.epoch_permutation(6, 3, 1000))
    with pytest.raises(ValueError, match="epoch=-1"):
        order.epoch_permutation(0, -1, 10)


def test_batch_indices_drop_the_remainder():
    permutation = order.epoch_permutation(0, 0, 10)
    batches = order.batch_indices(permutation, 3)
    assert batches.shape == (3, 3)
    np.testing.assert_array_equal(batches.ravel(), permutation[:9])
    with pytest.raises(ValueError, match="batch_size=11"):
        order.batch_indices(permutation, 11)


# ----- on the device -------------------------------------------------------------


def test_normalize_and_channel_stats_match_numpy():
    images = _random_images(0, (10, 4, 4, 3))
    mean, std = ArrayDataset(images, np.zeros(10, np.int32), 1, "x").channel_stats
    pixels = images.astype(np.float64) / 255
    np.testing.assert_allclose(mean, pixels.mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(std, pixels.std(axis=(0, 1, 2)), rtol=1e-6)

    normalized = jax.jit(augment.normalize)(images, mean, std)
    assert normalized.dtype == jnp.float32
    np.testing.assert_allclose(normalized, (pixels - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(normalized).mean(axis=(0, 1, 2)), 0, atol=1e-5)
    with pytest.raises(ValueError, match="mean must have one value per channel"):
        augment.normalize(images, [0.5, 0.5], std)


def _find_window(image, original, pad):
    """The (dy, dx, mirrored) whose window of the zero-padded original equals image."""
    height, width, _ = original.shape
    padded = np.pad(original, ((pad, pad), (pad, pad), (0, 0)))
    matches = []
    for dy, dx in itertools.product(range(2 * pad + 1), repeat=2):
        window = padded[dy:dy + height, dx:dx + width]
        for mirrored in (False, True):
            if np.array_equal(image, window[:, ::-1] if mirrored else window):
                matches.append((dy, dx, mirrored))
    assert len(matches) == 1, f"expected exactly one matching window, found {matches}"
    return matches[0]


def test_augment_crops_windows_of_the_zero_padded_image_and_mirrors():
    images = _random_images(0, (64, 6, 7, 3))
    jitted = jax.jit(augment.augment, static_argnames=("pad", "flip"))
    key = jax.random.key(0)
    out = np.asarray(jitted(key, images, pad=4, flip=True))
    assert out.shape == images.shape and out.dtype == np.uint8
    found = [_find_window(o, i, pad=4) for o, i in zip(out, images)]
    offsets_y, offsets_x, mirrored = map(np.array, zip(*found))
    # Offsets range over all of 0..2*pad, per image; about half the images are mirrored.
    assert offsets_y.min() == 0 and offsets_y.max() == 8 and len(set(offsets_y)) > 5
    assert offsets_x.min() == 0 and offsets_x.max() == 8
    assert 16 < mirrored.sum() < 48
    np.testing.assert_array_equal(jitted(key, images, pad=4, flip=True), out)
    assert not np.array_equal(jitted(jax.random.key(1), images, pad=4, flip=True), out)


def test_augment_flip_only_and_identity():
    images = _random_images(1, (32, 5, 5, 1))
    key = jax.random.key(2)
    flipped = np.asarray(augment.augment(key, images, pad=0, flip=True))
    mirrored = np.array([np.array_equal(f, i[:, ::-1]) for f, i in zip(flipped, images)])
    unchanged = np.array([np.array_equal(f, i) for f, i in zip(flipped, images)])
    assert np.all(mirrored ^ unchanged) and 0 < mirrored.sum() < 32
    np.testing.assert_array_equal(augment.augment(key, images, pad=0, flip=False), images)
    cropped = np.asarray(augment.augment(key, images, pad=2, flip=False))
    assert all(not _find_window(c, i, pad=2)[2] for c, i in zip(cropped, images))
    with pytest.raises(ValueError, match="pad=-1"):
        augment.augment(key, images, pad=-1)


def test_cutout_zeroes_one_clipped_square_per_image():
    images = _random_images(3, (64, 10, 10, 3))
    jitted = jax.jit(augment.cutout, static_argnames="size")
    out = np.asarray(jitted(jax.random.key(0), images, size=4))
    full_squares = 0
    for o, i in zip(out, images):
        zero = np.all(o == 0, axis=-1)
        rows, cols = np.flatnonzero(zero.any(1)), np.flatnonzero(zero.any(0))
        assert 1 <= len(rows) <= 4 and 1 <= len(cols) <= 4
        box = np.zeros_like(zero)
        box[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = True
        np.testing.assert_array_equal(zero, box)  # a rectangle, contiguous
        np.testing.assert_array_equal(o[~zero], i[~zero])
        full_squares += zero.sum() == 16
    assert full_squares > 10
    np.testing.assert_array_equal(augment.cutout(jax.random.key(0), images, size=0), images)


def test_downsample_averages_pixel_blocks():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 4, 6, 3), dtype=np.uint8)
    data = ArrayDataset(images, np.arange(3, dtype=np.int32), 3, "toy/train")
    small = order.downsample(data, 2)
    want = np.zeros((3, 2, 3, 3))
    for i in range(2):
        for j in range(3):
            want[:, i, j] = images[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].astype(float).mean((1, 2))
    assert small.images.dtype == np.uint8
    np.testing.assert_array_equal(small.images, np.round(want))
    np.testing.assert_array_equal(small.labels, data.labels)
    assert order.downsample(data, 1) is data
    with pytest.raises(ValueError, match="must divide"):
        order.downsample(data, 4)
    with pytest.raises(ValueError, match="integer >= 1"):
        order.downsample(data, 0)


# ----- dataset facts -------------------------------------------------------------

# Whether each dataset's images keep their class when mirrored.  Every dataset
# is listed: one added to DATASETS without deciding its flip fails the test.
_EXPECTED_FLIP = {
    "digits": False,
    "mnist": False,
    "fashion_mnist": False,  # not flipped by the training code before the spec held it
    "svhn_cropped": False,  # house numbers are digits
    "cifar10": True,
    "cifar100": True,
    "image_folder": True,
}


def test_every_dataset_decides_whether_flips_keep_its_classes():
    assert set(specs.DATASETS) == set(_EXPECTED_FLIP)
    for name, spec in specs.DATASETS.items():
        assert isinstance(spec.flip, bool), name
        assert spec.flip == _EXPECTED_FLIP[name], name


def test_default_crop_padding_and_cutout_scale_darts_sizes():
    assert specs.default_crop_padding((32, 32, 3)) == 4
    assert specs.default_crop_padding((8, 8, 1)) == 1
    assert specs.default_crop_padding((224, 224, 3)) == 28
    assert specs.default_cutout((32, 32, 3)) == 16
