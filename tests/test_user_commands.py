"""The commands the README gives, run as a user runs them: each in a process of its own
(a crash fails the test instead of killing a worker), on forced CPU devices.

The networks keep the default cell, 4 nodes and all 7 experts, whose node-to-node
edges the several-seeds crash needed (docs/reliability.md); 3 cells of 4 channels
(normal and reduction cells both) and two steps keep the compile short.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TEST_XLA_FLAGS, subprocess_env
from xnas_jax.spaces.darts import genotypes

# The default cell in a small network, for a few steps.
SMALL_NET = ["--layers", "3", "--channels", "4"]
FEW_STEPS = ["--epochs", "1", "--max-steps-per-epoch", "2", "--max-train-examples", "64",
             "--batch-size", "8", "--no-progress"]


def run_command(module: str, argv: list[str], cwd: Path, devices: int = 1,
                xla_flags: str = TEST_XLA_FLAGS) -> subprocess.CompletedProcess:
    """``python -m module argv`` in ``cwd`` on ``devices`` forced CPU devices, with ``xla_flags``.

    """
    env = subprocess_env(JAX_PLATFORMS="cpu", XLA_FLAGS=(
        f"{xla_flags} --xla_force_host_platform_device_count={devices}".strip()))
    return subprocess.run([sys.executable, "-m", module, *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def assert_ran(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, (result.returncode, result.stdout[-2000:],
                                    result.stderr[-3000:])


def assert_genotypes_per_seed(out: Path, seeds: list[int]) -> None:
    """Every seed's genotype, and the run's (the best seed's), are written and load."""
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["seeds"] == seeds
    cells = [genotypes.load_genotype(out / f"seed_{s}" / "genotype.json") for s in seeds]
    summary = json.loads((out / "seeds.json").read_text())
    assert [r["seed"] for r in summary["seeds"]] == seeds
    best = seeds.index(summary["best_seed"])
    assert genotypes.load_genotype(out / "genotype.json") == cells[best]


@pytest.mark.slow
@pytest.mark.parametrize("flags, devices, seeds, axes", [
    # A node of 8 devices: each seed on a group of 2 that split its batch.
    (["--seeds", "4"], 8, [0, 1, 2, 3], {"seed": 4, "data": 2}),
    # Those seeds vmapped on one group of 2 devices.
    (["--seeds", "0,3,7", "--devices", "2"], 4, [0, 3, 7], {"seed": 1, "data": 2}),
])
def test_several_seeds_search_on_several_devices(flags, devices, seeds, axes, tmp_path):
    out = tmp_path / "run"
    assert_ran(run_command("xnas_jax.search", SMALL_NET + FEW_STEPS + flags
                           + ["--out-dir", str(out)], tmp_path, devices=devices))
    assert json.loads((out / "config.json").read_text())["resolved"]["mesh"]["axes"] == axes
    assert_genotypes_per_seed(out, seeds)


@pytest.mark.slow
def test_data_parallel_search_then_training_of_its_cell_on_two_devices(tmp_path):
    search_dir, train_dir = tmp_path / "search", tmp_path / "train"
    assert_ran(run_command("xnas_jax.search", SMALL_NET + FEW_STEPS + [
        "--devices", "2", "--out-dir", str(search_dir)], tmp_path, devices=2))
    config = json.loads((search_dir / "config.json").read_text())
    assert config["resolved"]["mesh"]["axes"] == {"seed": 1, "data": 2}
    cell = genotypes.load_genotype(search_dir / "genotype.json")
    assert_ran(run_command("xnas_jax.train", SMALL_NET + FEW_STEPS + [
        "--genotype", str(search_dir / "genotype.json"), "--dataset", "digits",
        "--eval-batch-size", "64", "--max-test-examples", "64", "--devices", "2",
        "--out-dir", str(train_dir)], tmp_path, devices=2))
    results = json.loads((train_dir / "results.json").read_text())
    assert results["mesh"]["axes"] == {"seed": 1, "data": 2}
    assert genotypes.genotype_from_dict(results["genotype_cell"]) == cell
    assert 0 <= results["test_accuracy"] <= 1
