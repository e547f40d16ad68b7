"""Checks that need several devices, run in a process of their own by test_parallel.py.

That process has 8 CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=8``),
so the rest of the suite keeps one.  Run by hand with::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m pytest -n 0 \
        tests/multidevice_checks.py
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import TEST_XLA_FLAGS
from xnas_jax import configs, parallel, search, search_step, spaces
from xnas_jax.spaces.darts import genotypes
from xnas_jax.configs import SearchConfig
from xnas_jax.data import loading

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices (XLA_FLAGS)")

# Persistent compilation cache: the same program (e.g. a one-seed search on one
# device, for several seeds) compiles once.
jax.config.update("jax_compilation_cache_dir", os.environ.get(
    "XNAS_TEST_COMPILATION_CACHE", "/tmp/xnas_jax_multidevice_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)

FEW_OPS = ("max_pool_3x3", "skip_connect", "sep_conv_3x3")
TINY = dict(channels=4, layers=3, nodes=1, ops=FEW_OPS, epochs=2, batch_size=16,
            max_steps_per_epoch=3, max_train_examples=200, progress=False)
CLI = ["--channels", "4", "--layers", "3", "--nodes", "1", "--ops", ",".join(FEW_OPS),
       "--epochs", "2", "--batch-size", "16", "--max-steps-per-epoch", "3",
       "--max-train-examples", "200", "--no-progress"]  # fmt: skip


@functools.cache
def _setup(seeds: tuple[int, ...], devices: int, optimizer: str = "xnas"):
    """Config, mesh, data and the compiled steps of a tiny search (shared by the checks)."""
    config = SearchConfig(**TINY, seeds=seeds, devices=devices, optimizer=optimizer).resolved()
    mesh = parallel.make_mesh(len(config.seed_list), config.devices)
    data = loading.load_search_data(config, mesh, log=lambda *a: None)
    config = configs.with_data_defaults(config, data_shards=data.layout.count,
                                        image_shape=data.image_shape)
    model = spaces.get_space(config.space).build(config, data.num_classes)
    state, steps = search_step.create_train_state(config, model, data, mesh, log=lambda *a: None)
    return config, mesh, data, parallel.to_host(state), steps


def _steps(seeds, devices, start, count, optimizer="xnas"):
    """``count`` steps from the host state ``start`` (None: the initial state)."""
    config, mesh, data, initial, steps = _setup(seeds, devices, optimizer)
    state = jax.tree.map(lambda a: parallel.global_array(a, parallel.seed_sharding(mesh)),
                         initial if start is None else start)
    metrics = []
    first = int(np.asarray(initial.step if start is None else start.step)[0])
    step_fn, batch = steps.start_epoch(0, state)
    for i in range(first, first + count):
        state, m = step_fn(state, *batch(i))
        metrics.append(parallel.to_host(m))
    return parallel.to_host(state), metrics


def _close(a, b, what, rtol=2e-4, atol=2e-5):
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b),
                            strict=True):
        np.testing.assert_allclose(np.asarray(y, np.float64), np.asarray(x, np.float64),
                                   rtol=rtol, atol=atol,
                                   err_msg=f"{what}{jax.tree_util.keystr(path)}")


@pytest.mark.parametrize("devices", [2, 4, 8])
def test_data_parallel_step_equals_the_one_device_step(devices):
    # From a state two steps in (some experts already weaker), one step on the
    # same global batch: 1 device against the batch split over `devices`.
    start, _ = _steps((0,), 1, None, 2)
    expected, expected_metrics = _steps((0,), 1, start, 1)
    got, got_metrics = _steps((0,), devices, start, 1)
    _close(expected_metrics, got_metrics, "metrics")
    # The parameters' change is -lr * (gradient + momentum + decay): compare it.
    _close(jax.tree.map(np.subtract, expected.params, start.params),
           jax.tree.map(np.subtract, got.params, start.params), "weight update", rtol=1e-3,
           atol=1e-7)
    _close(expected.batch_stats, got.batch_stats, "batch stats")
    _close(expected.arch, got.arch, "mixture weights", atol=1e-6)
    _close(expected.rewards, got.rewards, "rewards", atol=2e-4)
    for kind in ("normal", "reduce"):
        np.testing.assert_array_equal(expected.arch[kind] > 0, got.arch[kind] > 0)
        # The step did change them: the comparison is not of two copies of the start.
        assert np.abs(expected.arch[kind] - start.arch[kind]).max() > 1e-3


@pytest.mark.parametrize("devices", [1, 8])
def test_seeds_in_one_program_equal_separate_searches(devices):
    # 4 seeds: vmapped on one device, and on seed 4 x data 2 (one seed per
    # device, seed 4 x data 1, is the CLI check below).  Each seed's 3 steps
    # equal its own one-seed search.
    seeds = (0, 1, 2, 3)
    got, got_metrics = _steps(seeds, devices, None, 3)
    for i, seed in enumerate(seeds):
        expected, expected_metrics = _steps((seed,), 1, None, 3)
        one = lambda tree: jax.tree.map(lambda a: a[i:i + 1], tree)  # noqa: E731,B023
        for want, have in zip(expected_metrics, one(got_metrics)):
            # The clipped fractions count feedbacks past L: one may cross it.
            _close({k: v for k, v in want.items() if not k.startswith("clipped")},
                   {k: v for k, v in have.items() if not k.startswith("clipped")},
                   f"seed {seed} metrics", rtol=1e-3, atol=1e-4)
            _close({k: v for k, v in want.items() if k.startswith("clipped")},
                   {k: v for k, v in have.items() if k.startswith("clipped")},
                   f"seed {seed} clipped fractions", rtol=0, atol=0.02)
        tolerance = 1e-4 if devices < 8 else 5e-3  # data-split sums: rounding grows
        _close(expected.arch, one(got.arch), f"seed {seed} mixture weights", rtol=tolerance,
               atol=tolerance)
        for kind in ("normal", "reduce"):
            np.testing.assert_array_equal(expected.arch[kind] > 0, one(got.arch)[kind] > 0)
    # Different seeds searched differently (the check above is not of copies).
    assert np.abs(got.arch["normal"][0] - got.arch["normal"][1]).max() > 1e-3


def _cli(argv, out_dir: Path) -> None:
    try:
        search.main(CLI + argv + ["--out-dir", str(out_dir)])
    except SystemExit as exit_:
        assert exit_.code in (0, None), f"search exited with {exit_.code}"


def test_cli_seeds_equal_separate_cli_searches(tmp_path):
    _cli(["--seeds", "0,1,2,3", "--devices", "4"], tmp_path / "together")
    summary = json.loads((tmp_path / "together" / "seeds.json").read_text())
    assert [r["seed"] for r in summary["seeds"]] == [0, 1, 2, 3]
    assert (tmp_path / "together" / "stability.png").stat().st_size > 0
    finals = {r["seed"]: r for r in json.loads(
        (tmp_path / "together" / "log.jsonl").read_text().splitlines()[-1])["seeds"]}
    for seed in (0, 1, 2, 3):
        alone = tmp_path / f"alone{seed}"
        _cli(["--seed", str(seed), "--devices", "1"], alone)
        assert (genotypes.load_genotype(tmp_path / "together" / f"seed_{seed}" / "genotype.json")
                == genotypes.load_genotype(alone / "genotype.json")), seed
        record = json.loads((alone / "log.jsonl").read_text().splitlines()[-1])
        for kind in ("normal", "reduce"):
            np.testing.assert_allclose(finals[seed]["arch"][kind], record["arch"][kind],
                                       atol=1e-4)
    best = max(summary["seeds"], key=lambda r: r["val_accuracy"])["seed"]
    assert summary["best_seed"] == best
    assert ((tmp_path / "together" / "genotype.json").read_text()
            == (tmp_path / "together" / f"seed_{best}" / "genotype.json").read_text())


def _final_state(out_dir: Path, step: int, like=None):
    """A saved state, onto this process's first device (``like``: a tree of its shapes)."""
    path = out_dir / "checkpoints" / str(step) / "state"
    if like is None:
        return ocp.StandardCheckpointer().restore(path)
    here = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=here), like)
    return ocp.StandardCheckpointer().restore(path, target)


def test_a_run_on_4_devices_resumes_on_2(tmp_path):
    # The DARTS baseline: continuous in the data, so rounding differences
    # between meshes stay rounding (an XNAS wipeout is a threshold).  Two data
    # shards: two devices each on 4, one each on 2.
    darts = ["--optimizer", "darts", "--data-shards", "2"]
    _cli(darts + ["--devices", "4"], tmp_path / "whole")
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "whole", resumed)
    shutil.rmtree(resumed / "checkpoints" / "6")  # the run died during epoch 2
    _cli(darts + ["--devices", "2", "--resume"], resumed)
    expected, got = _final_state(tmp_path / "whole", 6), _final_state(resumed, 6)
    _close(expected, got, "state", rtol=1e-4, atol=1e-5)
    assert (genotypes.load_genotype(resumed / "genotype.json")
            == genotypes.load_genotype(tmp_path / "whole" / "genotype.json"))
    config = json.loads((resumed / "config.json").read_text())
    assert config["resolved"]["mesh"]["axes"] == {"seed": 1, "data": 2}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_search_like_one(tmp_path):
    # Two processes with one CPU device each, joined by jax.distributed on
    # localhost, each reading its own data shard, against one process and
    # device that reads both shards.
    _cli(["--optimizer", "darts", "--devices", "1", "--data-shards", "2"], tmp_path / "one")
    address = f"127.0.0.1:{_free_port()}"
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"{TEST_XLA_FLAGS} --xla_force_host_platform_device_count=1"}
    argv = [sys.executable, "-m", "xnas_jax.search", *CLI, "--optimizer", "darts",
            "--out-dir", str(tmp_path / "two"), "--coordinator-address", address,
            "--num-processes", "2"]
    processes = [subprocess.Popen(argv + ["--process-id", str(i)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i in range(2)]
    outputs = []
    try:
        for p in processes:
            outputs.append(p.communicate(timeout=420))
    finally:
        for p in processes:
            p.kill()
    for p, (out, err) in zip(processes, outputs):
        assert p.returncode == 0, err[-3000:]
    # Only process 0 prints and writes (gloo's own connection line aside).
    assert "genotype" in outputs[0][0]
    assert "2 shards of 100 images; process 0 reads shard 0, process 1 reads shard 1" in (
        outputs[0][0]), outputs[0][0]
    assert not any(w in outputs[1][0] for w in ("loaded", "epoch", "genotype")), outputs[1][0]
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert config["processes"] == 2 and config["resolved"]["mesh"]["devices"] == 2
    one = _final_state(tmp_path / "one", 6)
    _close(one, _final_state(tmp_path / "two", 6, like=one), "state", rtol=1e-4, atol=1e-5)
    assert (genotypes.load_genotype(tmp_path / "two" / "genotype.json")
            == genotypes.load_genotype(tmp_path / "one" / "genotype.json"))


def test_a_batch_that_does_not_split_over_the_devices_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        search.main(CLI + ["--devices", "3", "--out-dir", "/nonexistent/never-created"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("error: --batch-size 16 does not split over the 3 devices"), err


TRAIN = ["--genotype", "DARTS_V2", "--dataset", "digits", "--channels", "4", "--layers", "3",
         "--epochs", "2", "--batch-size", "32", "--max-steps-per-epoch", "4",
         "--learning-rate", "0.05", "--eval-batch-size", "128", "--no-progress",
         # No random draws: "rbg" draws split over devices differ from one device's.
         "--drop-path-prob", "0", "--cutout", "0", "--crop-padding", "0", "--no-flip"]


def test_training_on_4_devices_equals_one(tmp_path):
    # Two data shards: both on the one device, or two devices each of 4.
    from xnas_jax import train

    results = {}
    for devices in (1, 4):
        out = tmp_path / f"d{devices}"
        train.main(TRAIN + ["--devices", str(devices), "--data-shards", "2",
                            "--max-steps-per-epoch", "1", "--out-dir", str(out)])
        results[devices] = json.loads((out / "results.json").read_text())
        assert results[devices]["mesh"]["axes"] == {"seed": 1, "data": devices}
    assert results[4]["test_loss"] == pytest.approx(results[1]["test_loss"], rel=1e-3)
    assert results[4]["test_accuracy"] == pytest.approx(results[1]["test_accuracy"], abs=0.01)
    # Two steps: more amplify the rounding of split sums (8 steps: up to 2e-3
    # in the auxiliary head's batch-norm momentum, 1 step: 2e-6); batch norm
    # over each device's quarter batch instead of the global one, or other
    # examples, would be off by far more.
    _close(_final_state(tmp_path / "d1", 2), _final_state(tmp_path / "d4", 2), "state",
           rtol=1e-3, atol=1e-4)
