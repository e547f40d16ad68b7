"""Data shards (xnas_jax.data.shards): what each process reads, and the batches it gathers.

The several-process and several-device runs are in multidevice_checks.py;
here one device holds every shard, and NumPy is the reference.
"""

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from test_data import _image_folder_files, _write_zip
from xnas_jax import parallel, search
from xnas_jax.data import datasets, readers, shards, specs
from xnas_jax.data.specs import ArrayDataset


def _interleave(parts):
    """Shards j::K back into one split: example i is part i % K, position i // K."""
    count, total = len(parts), sum(len(p) for p in parts)
    return np.stack([parts[i % count][i // count] for i in range(total)])


@pytest.mark.parametrize("count", [1, 2, 3])
def test_shards_of_digits_partition_the_split(count):
    whole = datasets.load_dataset("digits", "train")
    parts = [datasets.load_dataset("digits", "train", shard=(j, count)) for j in range(count)]
    np.testing.assert_array_equal(_interleave([p.images for p in parts]), whole.images)
    np.testing.assert_array_equal(_interleave([p.labels for p in parts]), whole.labels)
    if count > 1:
        assert parts[1].name == f"digits/train[1::{count}]"


def test_an_image_folder_shard_decodes_only_its_files(tmp_path, monkeypatch):
    data_dir = _write_zip(tmp_path / "all.zip", _image_folder_files())
    whole = datasets.load_dataset("image_folder", "train", data_dir=data_dir)
    decoded = []
    real = readers._decode_image
    monkeypatch.setattr(readers, "_decode_image", lambda f: decoded.append(f) or real(f))
    parts = [datasets.load_dataset("image_folder", "train", data_dir=data_dir, shard=(j, 2))
             for j in range(2)]
    assert len(decoded) == len(whole.labels)  # each file once, over both shards
    np.testing.assert_array_equal(_interleave([p.images for p in parts]), whole.images)
    assert all(p.class_names == whole.class_names for p in parts)


def test_the_cache_keeps_one_file_per_shard(tmp_path):
    data_dir = _write_zip(tmp_path / "all.zip", _image_folder_files())
    cache = tmp_path / "cache"
    first = [datasets.load_dataset("image_folder", "train", data_dir=data_dir, cache_dir=cache,
                                   shard=(j, 2)) for j in range(2)]
    assert len(list(cache.glob("*.npz"))) == 2
    again = [datasets.load_dataset("image_folder", "train", data_dir=data_dir, cache_dir=cache,
                                   shard=(j, 2)) for j in range(2)]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.images, b.images)


def test_a_shard_that_does_not_exist_is_an_error():
    with pytest.raises(specs.DatasetError, match="shard 2 of 2 does not exist"):
        datasets.load_dataset("digits", "train", shard=(2, 2))


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.integers(1, 4), st.integers(1, 9))
def test_shard_histograms_add_up_to_the_whole(seed, count, size):
    images = np.random.default_rng(seed).integers(0, 256, (size * count, 3, 2, 2), np.uint8)
    total = sum(specs.channel_histogram(images[j::count]) for j in range(count))
    for got, want in zip(specs.histogram_stats(total), specs.channel_stats(images)):
        np.testing.assert_array_equal(got, want)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2 ** 31 - 1),
       st.sampled_from([(1, 1), (2, 1), (4, 1), (1, 2), (2, 2), (4, 2), (1, 4), (2, 4), (8, 4),
                        (2, 8)]),
       st.integers(1, 3), st.integers(1, 6))
def test_device_indices_take_each_shards_examples_from_its_own_devices(seed, sizes, per, size):
    # NumPy reference: device k holds the blocks of its position; the batch it
    # gathers must be the examples each shard's own indices name.
    count, data_axis = sizes
    layout = shards.ShardLayout(count, data_axis)
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 1000, (count, size))  # shard j's example i
    per_shard = rng.integers(0, size, (2, count, per))  # two steps
    indices = layout.device_indices(per_shard, size)
    assert indices.shape == (2, count * per)
    blocks_per_device = layout.blocks // data_axis
    if count * per % data_axis:
        return  # such a batch is refused by parallel.check_batch
    width = count * per // data_axis
    for k in range(data_axis):
        held = np.concatenate([values[layout.shard_of_block(b)]
                               for b in range(k * blocks_per_device,
                                              (k + 1) * blocks_per_device)])
        got = held[indices[:, k * width:(k + 1) * width]]
        want = np.concatenate([values[j][per_shard[:, j]] for j in range(count)], axis=1)
        np.testing.assert_array_equal(got, want[:, k * width:(k + 1) * width])


def test_gather_on_one_device_holding_two_shards():
    mesh = parallel.make_mesh(1, 1)
    layout = shards.layout(mesh, 2, {"--batch-size": 4})
    rng = np.random.default_rng(0)
    parts = {j: ArrayDataset(rng.integers(0, 256, (5 - j, 2, 2, 1), np.uint8),
                             np.arange(5 - j, dtype=np.int32) + 10 * j, 2, "t")
             for j in range(2)}
    split = shards.ShardedSplit(parts, (5, 4), np.zeros(1), np.ones(1), 2, (2, 2, 1), ((0, 1),))
    data = shards.to_devices(split, layout, mesh)
    assert data.images.shape == (2, 5, 2, 2, 1)
    per_shard = np.array([[[4, 0], [3, 1]]])  # one seed: shard 0's 4 and 0, shard 1's 3 and 1
    images, labels = jax.jit(lambda d, i: shards.gather(d, i, mesh))(
        data, layout.device_indices(per_shard, 5))
    np.testing.assert_array_equal(labels, [[4, 0, 13, 11]])
    np.testing.assert_array_equal(images[0, 2], parts[1].images[3])
    assert images.dtype == np.uint8 and labels.dtype == np.int32


def test_layouts_that_do_not_fit_are_refused():
    mesh = parallel.make_mesh(1, 1)
    with pytest.raises(parallel.MeshError, match="--batch-size 10 does not split into "
                                                 "--data-shards 4"):
        shards.layout(mesh, 4, {"--batch-size": 10})
    with pytest.raises(parallel.MeshError, match="one must divide the other"):
        shards.layout(_FakeMesh(2), 3, {})


class _FakeMesh:
    def __init__(self, data_axis):
        self.shape = {parallel.SEED: 1, parallel.DATA: data_axis}


def test_load_split_agrees_on_sizes_and_statistics():
    mesh = parallel.make_mesh(1, 1)
    layout = shards.layout(mesh, 3, {})
    split = shards.load_split("digits", "train", None, None, layout, mesh, lambda d: d,
                              equal=True)
    whole = datasets.load_dataset("digits", "train")
    size = len(whole.labels) // 3  # 1437 = 3 x 479: the shards are cut to the smallest
    assert split.sizes == (size,) * 3 and split.readers == ((0, 1, 2),)
    kept = np.concatenate([whole.images[j::3][:size] for j in range(3)])
    for got, want in zip((split.mean, split.std), specs.channel_stats(kept)):
        np.testing.assert_array_equal(got, want)
    assert shards.describe(split) == f"3 shards of {size} images"


def test_a_search_with_shards_that_do_not_split_the_batch_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        search.main(["--data-shards", "3", "--batch-size", "16", "--epochs", "1",
                     "--out-dir", "/nonexistent/never-created"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--batch-size 16 does not split into --data-shards 3" in err[0]



def test_evaluation_counts_every_example_of_every_shard_once():
    # A stand-in for the eval step: the mean label over the unmasked examples.
    from xnas_jax import train_step

    mesh = parallel.make_mesh(1, 1)
    layout = shards.layout(mesh, 2, {"--eval-batch-size": 4})
    labels = np.arange(9, dtype=np.int32) * 7 % 11
    parts = {j: ArrayDataset(np.zeros((len(labels[j::2]), 1, 1, 1), np.uint8), labels[j::2], 11,
                             "t") for j in range(2)}
    split = shards.ShardedSplit(parts, (5, 4), np.zeros(1), np.ones(1), 11, (1, 1, 1), ((0, 1),))

    def eval_fn(state, batch):
        mask = batch["mask"].astype(np.float32)
        return {"loss": (batch["label"] * mask).sum(), "correct": mask.sum(),
                "count": mask.sum()}

    metrics = train_step.evaluate(jax.jit(eval_fn), train_step.make_gather(mesh), None,
                                   shards.to_devices(split, layout, mesh), split.sizes, 4, mesh,
                                   layout)
    assert metrics["accuracy"] == 1.0
    assert metrics["loss"] == pytest.approx(labels.mean())
