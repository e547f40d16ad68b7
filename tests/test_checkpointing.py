"""The checkpoint layer (xnas_jax.checkpointing): round trips, retention, refusals,
fingerprints, structures, corrupt data and metadata, checksums, typed PRNG keys."""

from __future__ import annotations

import json
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import flip_bytes
from xnas_jax import checkpointing
from xnas_jax.checkpointing import CheckpointError, Checkpointer


class _OptState(NamedTuple):
    count: jax.Array
    trace: dict


def _tree(scale: float = 1.0):
    return {
        "params": {"w": jnp.full((3, 4), scale, jnp.float32), "b": jnp.zeros(4)},
        "opt_state": (_OptState(jnp.array(3, jnp.int32), {"w": jnp.ones((3, 4))}),),
    }


FINGERPRINT = {"lr": 0.1, "channels": [4, 8]}


def test_checkpoint_round_trip_and_retention(tmp_path):
    with Checkpointer(tmp_path, fingerprint=FINGERPRINT, max_to_keep=2) as checkpoints:
        assert checkpoints.restore_latest(_tree()) is None
        for step in (1, 2, 3):
            checkpoints.save(step, _tree(step), {"epoch": step, "test_accuracy": 0.5})
        assert checkpoints.steps == [2, 3]
    # A second process resumes: same fingerprint (tuples compare as lists).
    with Checkpointer(tmp_path, fingerprint={"lr": 0.1, "channels": (4, 8)}, resume=True) as again:
        restored = again.restore_latest(_tree(0.0))
        assert restored.step == 3 and restored.metadata == {"epoch": 3, "test_accuracy": 0.5}
        assert isinstance(restored.tree["opt_state"][0], _OptState)
        np.testing.assert_array_equal(restored.tree["params"]["w"], np.full((3, 4), 3.0))
        assert again.metadata(2)["epoch"] == 2


def test_checkpoint_refuses_to_overwrite(tmp_path):
    with Checkpointer(tmp_path, fingerprint=FINGERPRINT) as checkpoints:
        checkpoints.save(1, _tree())
    with pytest.raises(CheckpointError, match=r"already holds checkpoints.*--resume") as error:
        Checkpointer(tmp_path, fingerprint=FINGERPRINT)
    assert str(tmp_path) in str(error.value)
    with Checkpointer(tmp_path, fingerprint=FINGERPRINT, resume=True) as checkpoints:
        with pytest.raises(CheckpointError, match="already exists"):
            checkpoints.save(1, _tree(5.0))
        restored = checkpoints.restore_latest(_tree())
    np.testing.assert_array_equal(restored.tree["params"]["w"], np.ones((3, 4)))


def test_checkpoint_incompatible_fingerprint(tmp_path):
    with Checkpointer(tmp_path, fingerprint=FINGERPRINT) as checkpoints:
        checkpoints.save(1, _tree())
    expected = r"incompatible run \(lr: saved 0.1, now 0.2\)"
    with pytest.raises(CheckpointError, match=expected) as error:
        Checkpointer(tmp_path, fingerprint={**FINGERPRINT, "lr": 0.2}, resume=True)
    assert str(tmp_path / "1") in str(error.value)


def test_checkpoint_incompatible_shapes(tmp_path):
    with Checkpointer(tmp_path, fingerprint=FINGERPRINT) as checkpoints:
        checkpoints.save(1, _tree())
    other = _tree()
    other["params"]["w"] = jnp.ones((3, 5))
    other["params"]["extra"] = jnp.ones(2)
    with Checkpointer(tmp_path, fingerprint=FINGERPRINT, resume=True) as checkpoints:
        with pytest.raises(CheckpointError, match="another structure") as error:
            checkpoints.restore_latest(other)
    message = str(error.value)
    assert str(tmp_path / "1") in message
    assert "['params']['w']: saved [[3, 4], \"float32\"], now [[3, 5], \"float32\"]" in message
    assert "['params']['extra']: saved (absent)" in message


def test_checkpoint_corrupt_data(tmp_path):
    with Checkpointer(tmp_path, fingerprint=FINGERPRINT) as checkpoints:
        checkpoints.save(1, _tree())
        checkpoints.save(2, _tree(2.0))
    for path in (tmp_path / "2" / "state").rglob("*"):
        if path.is_file() and path.parent.name == "d":
            path.write_bytes(b"garbage")
    with Checkpointer(tmp_path, fingerprint=FINGERPRINT, resume=True) as checkpoints:
        with pytest.raises(CheckpointError, match="corrupt or unreadable") as error:
            checkpoints.restore_latest(_tree())
    assert str(tmp_path / "2") in str(error.value)
    assert (tmp_path / "1").is_dir() and (tmp_path / "2").is_dir()  # nothing deleted


def test_checkpoint_corrupt_metadata(tmp_path):
    with Checkpointer(tmp_path, fingerprint=FINGERPRINT) as checkpoints:
        checkpoints.save(1, _tree())
    (tmp_path / "1" / "metadata" / "metadata").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt or unreadable") as error:
        Checkpointer(tmp_path, fingerprint=FINGERPRINT, resume=True)
    assert str(tmp_path / "1") in str(error.value)


def test_tree_signature():
    signature = checkpointing.tree_signature(_tree())
    assert signature["['params']['w']"] == [[3, 4], "float32"]
    assert signature["['opt_state'][0].count"] == [[], "int32"]


def test_checkpoint_typed_prng_keys(tmp_path):
    tree = {"rng": jax.random.key(7, impl="threefry2x32"), "w": jnp.ones(2)}
    assert checkpointing.tree_signature(tree)["['rng']"] == [[], "key<fry>"]
    with Checkpointer(tmp_path, fingerprint={}) as checkpoints:
        checkpoints.save(1, tree)
        restored = checkpoints.restore_latest(
            {"rng": jax.random.key(0, impl="threefry2x32"), "w": jnp.zeros(2)})
    np.testing.assert_array_equal(
        jax.random.key_data(restored.tree["rng"]), jax.random.key_data(tree["rng"])
    )


def test_every_checkpoint_corrupt_means_starting_over_and_saying_so(tmp_path):
    tree = {"w": np.arange(4096, dtype=np.float32)}
    with Checkpointer(tmp_path / "c", fingerprint={"a": 1}) as checkpoints:
        checkpoints.save(3, tree)
        checkpoints.save(6, tree)
    for step in (3, 6):
        flip_bytes(tmp_path / "c" / str(step))
    said = []
    with Checkpointer(tmp_path / "c", fingerprint={"a": 1}, resume=True,
                      tolerate_corrupt=True) as checkpoints:
        assert checkpoints.restore_latest_good(tree, log=said.append) is None
    assert sorted(p.name for p in (tmp_path / "corrupt").iterdir()) == ["3", "6"]
    assert "resuming from step 3" in said[0] and "starting over" in said[1]


def test_checksums_catch_bytes_that_still_decode(tmp_path):
    tree = {"w": np.arange(12, dtype=np.float32).reshape(3, 4)}
    with Checkpointer(tmp_path / "c", fingerprint={}) as checkpoints:
        checkpoints.save(1, tree)
    record = tmp_path / "c" / "1" / "metadata" / "metadata"
    saved = json.loads(record.read_text())
    saved["checksums"]["['w']"] = "0" * 64  # as if the array's bytes had changed
    record.write_text(json.dumps(saved))
    with Checkpointer(tmp_path / "c", fingerprint={}, resume=True) as checkpoints:
        with pytest.raises(CheckpointError, match=r"array \['w'\] does not match"):
            checkpoints.restore_latest(tree)
