"""The search-quality study at a reduced size: every group runs, resumes, and writes the
JSON fields and plots that the docs read.  The table is a made-up one on digits (the
study's own table needs CIFAR-10 in --data-dir)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import assert_script_command_line
from experiments import groundtruth, quality_study, search_quality
from xnas_jax.spaces.nb201 import network as nb201

RUN_FIELDS = {"method", "epochs", "zeta", "warmup_epochs", "remedy", "seed", "ops",
              "skip_count", "percentile", "accuracy", "first_wipeout_fraction",
              "evaluations_saved", "seconds"}


def fake_table(path):
    """A table of the 125 cells of 3 nodes, on digits at 8x8, with made-up accuracies."""
    rng = np.random.default_rng(0)
    config = {"dataset": "digits", "train_per_class": 16, "test_per_class": 4, "downsample": 1,
              "channels": 2, "cells_per_stage": 1, "nodes": 3, "epochs": 1, "batch_size": 16,
              "learning_rate": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "crop_padding": 0,
              "seeds": [0], "cells": []}
    cells = [{"ops": list(ops), "mean_accuracy": float(rng.uniform(0.3, 0.6))}
             for ops in nb201.all_genotypes(3)]
    path.write_text(json.dumps({"space": "nb201", "dataset": "digits", "nodes": 3,
                                "config": config, "cells": cells,
                                "best_accuracy": max(c["mean_accuracy"] for c in cells),
                                "median_accuracy": 0.45}))
    return path


@pytest.mark.slow
def test_a_reduced_study_runs_every_group_and_resumes(tmp_path, capsys, monkeypatch):
    table = fake_table(tmp_path / "table.json")
    out = tmp_path / "study.json"
    monkeypatch.chdir(tmp_path)  # a relative --work-dir, as the default is
    argv = ["--seeds", "1", "--lengths", "4", "--batch-size", "16",
            "--random-cells", "2", "--work-dir", "runs", "--table", str(table),
            "--out", str(out)]
    assert quality_study.main(argv) == 0
    report = json.loads(out.read_text())
    variants = {run["variant"] for run in report["runs"]}
    assert {"xnas/4", "darts/4", "random-1/4", "random-k/4", "xnas/4/skip_cap=1",
            "xnas/4/normalized_rewards", "xnas/4/warmup=1"} <= variants
    zetas = [run for run in report["runs"] if "target_wipeout_fraction" in run]
    assert len(zetas) == 3 and all(0 < run["zeta"] < 1 for run in zetas)
    assert report["leader_gap"] > 0
    for run in report["runs"]:
        assert RUN_FIELDS <= set(run), RUN_FIELDS - set(run)
        assert run["skip_count"] == run["ops"].count("skip_connect")
        assert 0 < run["percentile"] <= 100
        assert 0 <= run["evaluations_saved"] < 1
    darts = next(run for run in report["runs"] if run["variant"] == "darts/4")
    assert "none" not in darts["without_none"]["ops"]
    assert (tmp_path / "study_length.png").exists()
    # The diagnosis of the skip bias: rewards per op and edge, and the output scales.
    diagnosis = report["diagnosis"]["xnas/4"]
    assert np.shape(diagnosis["rewards"]["mean"]) == (3, 5) == np.shape(diagnosis["rewards"]["spread"])
    for when in ("initial", "final"):
        rms = np.asarray(diagnosis["output_rms"][when])
        assert rms.shape == (3, 5) and np.isnan(rms[:, 0]).all()  # 'none' has no output
        assert (rms[:, 1:] > 0).all()
    assert (tmp_path / "study_rewards_xnas_4.png").exists()
    # Resumed, it runs nothing again and writes the same runs.
    capsys.readouterr()
    assert quality_study.main(argv) == 0
    assert " s\n" not in capsys.readouterr().out  # no run line
    assert json.loads(out.read_text())["runs"] == report["runs"]
    assert report["complete"]
    # --report-only with a larger plan runs nothing and says the report is partial.
    assert quality_study.main([*argv, "--seeds", "2", "--report-only"]) == 0
    partial = json.loads(out.read_text())
    assert " s\n" not in capsys.readouterr().out
    assert not partial["complete"] and partial["runs"] == report["runs"]


def test_the_searches_read_the_data_dir_of_the_flag_or_xnas_data_dir(tmp_path, monkeypatch):
    proxy = json.loads(fake_table(tmp_path / "table.json").read_text())["config"]
    quality = search_quality.QualityConfig(data_dir="cifar")
    config = search_quality.search_config(proxy, quality, "xnas", 0, tmp_path / "run")
    assert config.data_dir == "cifar"
    monkeypatch.setenv("XNAS_DATA_DIR", "elsewhere")
    assert search_quality.QualityConfig().data_dir == "elsewhere"
    assert quality_study.StudyConfig().data_dir == "elsewhere"
    monkeypatch.delenv("XNAS_DATA_DIR")
    assert quality_study.StudyConfig().data_dir == "data/cifar10_jpeg"


@pytest.mark.parametrize("module", [groundtruth, search_quality, quality_study])
def test_the_table_and_the_searches_have_the_experiments_command_line(module, capsys):
    assert_script_command_line(module, capsys)


def test_zeta_puts_the_earliest_wipeout_at_the_fraction():
    gap = 0.02
    for fraction in (0.25, 0.5, 0.75):
        zeta = quality_study.zeta_for(fraction, gap)
        assert abs(2 * zeta / (2 * zeta + gap) - fraction) < 1e-12


def test_skip_cap_keeps_the_strongest_skips():
    skip, conv = nb201.NB201_OPS.index("skip_connect"), nb201.NB201_OPS.index("nor_conv_3x3")
    weights = np.zeros((3, 5))
    weights[:, skip] = 1.0  # three skips
    evidence = np.zeros((3, 5))
    evidence[:, skip] = [3.0, 1.0, 2.0]
    evidence[:, conv] = 0.5
    assert nb201.discretize(weights) == ("skip_connect",) * 3
    assert nb201.discretize(weights, evidence, skip_cap=1) == (
        "skip_connect", "nor_conv_3x3", "nor_conv_3x3")
    assert nb201.discretize(weights, evidence, skip_cap=2) == (
        "skip_connect", "nor_conv_3x3", "skip_connect")
    assert "none" not in nb201.discretize(np.eye(3, 5), exclude=("none",))
