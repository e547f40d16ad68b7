"""The seed x data mesh: its shape, the seeds' stability summary, bad combinations, and
the checks that need 8 devices (tests/multidevice_checks.py, in a process of its own)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from conftest import TINY_SEARCH, assert_usage_error
from xnas_jax import parallel, search, search_report


@given(st.integers(1, 64), st.integers(1, 64))
def test_mesh_shape_gives_the_seed_axis_as_many_devices_as_divide_both(seeds, devices):
    seed_axis, data_axis = parallel.mesh_shape(seeds, devices)
    assert seed_axis * data_axis == devices
    assert seeds % seed_axis == 0 and devices % seed_axis == 0
    # No larger seed axis would hold whole seeds and tile the devices.
    assert all(seeds % k or devices % k for k in range(seed_axis + 1, devices + 1))
    assert seed_axis == math.gcd(seeds, devices)


def _genotype(normal, reduce):
    return {"normal": normal, "reduce": reduce}


def test_stability_counts_seeds_per_kept_edge_and_operation():
    same = [["max_pool_3x3", 0], ["skip_connect", 1]]
    a = _genotype([["sep_conv_3x3", 0], ["skip_connect", 1]], same)
    b = _genotype([["sep_conv_3x3", 0], ["dil_conv_3x3", 1]], same)
    c = _genotype([["sep_conv_3x3", 1], ["skip_connect", 0]], same)
    summary = search_report.stability([a, b, c], nodes=1)
    assert summary["seeds"] == 3
    edges = {(e["node"], e["input"]): e for e in summary["normal"]["edges"]}
    assert edges[(0, 0)]["seeds"] == 3 and edges[(0, 1)]["seeds"] == 3
    assert (edges[(0, 0)]["op"], edges[(0, 0)]["op_seeds"]) == ("sep_conv_3x3", 2)
    # Every seed keeps both edges.  Of the 6 kept (edge, op) pairs, a's and b's
    # sep_conv on edge (0, 0) is shared by 2 seeds of 3; the other 4 by 1 each.
    assert summary["normal"]["edge_agreement"] == 1.0
    assert summary["normal"]["op_agreement"] == pytest.approx((2 + 2 + 1 + 1 + 1 + 1) / 18)
    assert summary["reduce"]["op_agreement"] == 1.0


def run_main(argv, capsys):
    try:
        search.main(argv)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    return (code, *capsys.readouterr())


@pytest.mark.parametrize("flags, fragment", [
    (["--devices", "3"], "--devices 3: this run has 1 cpu device(s)"),
    (["--seeds", "0,0"], "distinct seeds"),
    (["--seeds", "0"], "--seeds"),
    (["--coordinator-address", "127.0.0.1:1234"], "needs --num-processes and --process-id"),
    (["--coordinator-address", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "2"],
     "--process-id 2 is not in [0, 2)"),
])
def test_bad_device_and_seed_settings_are_one_line(flags, fragment, capsys, tmp_path):
    code, _, err = run_main(TINY_SEARCH + flags + ["--out-dir", str(tmp_path / "run")], capsys)
    assert_usage_error(code, err, fragment)
    assert not (tmp_path / "run").exists()


def test_summary_prints_the_seeds_and_the_mesh(capsys):
    code, out, _ = run_main(["--summary", "--seeds", "3"], capsys)
    assert code == 0
    summary = json.loads(out)
    assert summary["seeds"] == [0, 1, 2]
    assert summary["mesh"]["axes"] == {"seed": 1, "data": 1}  # one device here
    assert summary["mesh"]["processes"] == 1


@pytest.mark.slow
def test_checks_on_eight_devices_in_their_own_process(tmp_path):
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu", "XNAS_TEST_COMPILATION_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
         "--basetemp", str(tmp_path / "base"), str(root / "tests" / "multidevice_checks.py")],
        cwd=root / "tests", env=env, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "skipped" not in result.stdout.splitlines()[-1], result.stdout[-2000:]
