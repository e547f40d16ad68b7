"""The run harness (xnas_jax.runs): run folders, resume, stop requests, TensorBoard,
checkpoint integrity, and the one configuration path of both command lines."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from conftest import TINY_SEARCH as SEARCH, TINY_TRAIN as TRAIN, assert_usage_error, flip_bytes
from xnas_jax import configs, loop, runs, search, train, train_step
from xnas_jax.spaces.darts import genotypes
from xnas_jax.data import specs

def call(main, argv) -> int:
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return 0 if code is None else code


def state_at(run_dir: Path, step: int):
    return ocp.StandardCheckpointer().restore(run_dir / runs.CHECKPOINT_DIR / str(step) / "state")


def assert_same_states(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


# ------------------------------------------------------------------ run folders


def test_default_folders_never_collide_and_latest_follows(tmp_path):
    root = tmp_path / "runs"
    first = runs.locate_run(None, root, resume=False)
    made = [runs.Run(first, kind="t", config={}, fingerprint={}, runs_root=root, resume=False,
                     keep_checkpoints=1, fresh=True) for _ in range(2)]
    for run in made:
        run.close()
    assert made[0].directory != made[1].directory  # the same second: a suffix
    assert made[1].directory.name == made[0].directory.name + "-2"
    assert (root / runs.LATEST).resolve() == made[1].directory
    assert json.loads((made[0].directory / runs.CONFIG_FILE).read_text())["kind"] == "t"


def test_locate_refuses_reuse_and_resumes_the_newest_unfinished(tmp_path):
    root = tmp_path / "runs"
    with pytest.raises(runs.RunError, match="no unfinished run"):
        runs.locate_run(None, root, resume=True)
    old, new, done = (root / name for name in ("20260101-000000", "20260102-000000",
                                                "20260103-000000"))
    for directory, state in ((old, "interrupted"), (new, "interrupted"), (done, "finished")):
        directory.mkdir(parents=True)
        (directory / runs.STATUS_FILE).write_text(json.dumps({"state": state}))
    assert runs.locate_run(None, root, resume=True) == new
    with pytest.raises(runs.RunError, match="finished run.*--resume"):
        runs.locate_run(done, root, resume=False)
    with pytest.raises(runs.RunError, match="--resume"):
        runs.locate_run(old, root, resume=False)
    assert runs.locate_run(done, root, resume=True) == done  # reopened on request
    assert runs.locate_run(tmp_path / "fresh", root, resume=False) == tmp_path / "fresh"
    assert not (tmp_path / "fresh").exists()  # nothing created before the data loads


@pytest.mark.slow
def test_readme_search_command_runs_twice(tmp_path, monkeypatch, compilation_cache):
    """`python -m xnas_jax.search` twice in the same place: two runs, no error."""
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert call(search.main, SEARCH + compilation_cache) == 0
    folders = sorted(p for p in (tmp_path / "runs" / "search").iterdir() if not p.is_symlink())
    assert len(folders) == 2
    assert (tmp_path / "runs" / "search" / runs.LATEST).resolve() == folders[-1]
    for folder in folders:
        assert runs.run_state(folder) == "finished"
        assert (folder / "genotype.json").is_file()
    # Both ran the same search.
    assert_same_states(state_at(folders[0], 6), state_at(folders[1], 6))


def test_a_failed_data_load_leaves_no_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = call(search.main, SEARCH + ["--dataset", "cifar10", "--layers", "3",
                                       "--data-dir", str(tmp_path / "nowhere")])
    assert_usage_error(code, capsys.readouterr().err, "nowhere")
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------ outputs


@pytest.fixture(scope="module")
def search_run(tiny_search):
    return tiny_search


@pytest.fixture(scope="module")
def train_run(tiny_train):
    return tiny_train


def test_both_runs_write_config_and_tensorboard_scalars(search_run, train_run):
    for run_dir, kind in ((search_run, "search"), (train_run, "train")):
        written = json.loads((run_dir / runs.CONFIG_FILE).read_text())
        assert written["kind"] == kind and written["config"]["channels"] == 4
        assert written["versions"]["jax"] == jax.__version__
        # The saved config is a --config file: the same settings come back.
        module = search if kind == "search" else train
        again, _ = module.parse_args(["--config", str(run_dir / runs.CONFIG_FILE)])
        # (The fingerprint also keeps the retired settings that older runs recorded.)
        assert {k: v for k, v in configs.fingerprint(again).items()
                if k not in configs.RETIRED} == {
            k: v for k, v in written["config"].items() if k not in configs.VOLATILE}
    log = runs.read_log(search_run)
    scalars = runs.read_scalars(search_run)
    assert scalars["epoch/val_accuracy"] == [
        (r["step"], pytest.approx(r["val_accuracy"], rel=1e-6)) for r in log]
    assert [s for s, _ in scalars["step/train_loss"]] == [3, 6]  # each epoch's last step
    log = runs.read_log(train_run)
    scalars = runs.read_scalars(train_run)
    assert scalars["epoch/test_accuracy"] == [
        (r["step"], pytest.approx(r["test_accuracy"], rel=1e-6)) for r in log]
    assert [s for s, _ in scalars["step/loss"]] == [8, 16, 24]


def test_search_tensorboard_holds_edge_weights_genotype_cells_and_both_learning_rates(
        search_run):
    log = runs.read_log(search_run)
    board = runs.read_tensorboard(search_run)
    steps = [r["step"] for r in log]
    config = json.loads((search_run / runs.CONFIG_FILE).read_text())["config"]
    for cell in ("normal", "reduce"):
        # u of every edge, each epoch: a histogram of the logged weights ...
        histograms = dict(board[f"arch/u/{cell}"])
        assert sorted(histograms) == steps
        for record in log:
            u = np.array(record["arch"][cell])
            histogram = histograms[record["step"]]
            assert histogram["count"] == u.size == 14 * 4
            assert histogram["sum"] == pytest.approx(u.sum(), abs=1e-5)
            assert histogram["max"] == pytest.approx(u.max(), abs=1e-5)
        # ... and an image of the edges by experts.
        images = dict(board[f"arch/edges/{cell}"])
        assert sorted(images) == steps
        assert all(image.ndim == 3 and image.shape[-1] == 3 for image in images.values())
        assert not np.array_equal(images[steps[0]], images[steps[-1]])  # u moved
        # The drawn cell, once, at the last step.
        (at, drawing), = board[f"cell/{cell}"]
        assert at == steps[-1] and drawing.shape[-1] == 3
        np.testing.assert_array_equal(
            drawing, np.asarray(Image.open(search_run / f"{cell}.png").convert("RGB")))
    # The genotype as text each epoch: the last one is the written genotype.
    texts = dict(board["genotype/text_summary"])
    assert sorted(texts) == steps
    final = genotypes.format_genotype(genotypes.load_genotype(search_run / "genotype.json"))
    assert [line.strip() for line in texts[steps[-1]].splitlines()] == [
        line.strip() for line in final.splitlines()]
    # Both optimizers' learning rates: the weights' cosine decay, the architecture's eta.
    scalars = runs.read_scalars(search_run)
    weights = [value for _, value in scalars["epoch/learning_rate"]]
    assert weights[0] == pytest.approx(config["learning_rate"])
    assert weights[-1] < weights[0]
    for cell in ("normal", "reduce"):
        rates = scalars[f"epoch/arch_learning_rate/{cell}"]
        assert [s for s, _ in rates] == steps and rates[0][1] > 0


def test_training_stopped_by_sigterm_resumes_bit_identically(train_run, compilation_cache,
                                                            tmp_path, monkeypatch, capsys):
    out = tmp_path / "stopped"
    calls = {"n": 0}
    original = loop.run_epochs

    def stopping_loop(*args, start_epoch, **kwargs):
        def start(epoch, state):
            step_fn, batch = start_epoch(epoch, state)

            def step(*step_args):
                calls["n"] += 1
                if calls["n"] == 5:  # mid-epoch: SIGTERM while the 5th step runs
                    os.kill(os.getpid(), signal.SIGTERM)
                return step_fn(*step_args)

            return step, batch

        return original(*args, start_epoch=start, **kwargs)

    monkeypatch.setattr(loop, "run_epochs", stopping_loop)
    assert call(train.main, TRAIN + compilation_cache + ["--out-dir", str(out)]) == 130
    assert "--resume" in capsys.readouterr().err
    assert [p.name for p in (out / runs.CHECKPOINT_DIR).iterdir() if p.name.isdigit()] == ["5"]
    assert runs.run_state(out) == "interrupted"
    monkeypatch.setattr(loop, "run_epochs", original)
    assert call(train.main, TRAIN + compilation_cache + ["--resume", "--out-dir", str(out)]) == 0
    assert_same_states(state_at(train_run, 24), state_at(out, 24))
    for got, expected in zip(runs.read_log(out), runs.read_log(train_run), strict=True):
        for key in ("step", "train_loss", "train_accuracy", "test_loss", "test_accuracy"):
            assert got[key] == expected[key], key  # the interrupted epoch's sums included
    assert runs.read_scalars(out)["epoch/test_accuracy"] == runs.read_scalars(
        train_run)["epoch/test_accuracy"]


@pytest.mark.parametrize("kind", ["search", "train"])
def test_a_corrupt_checkpoint_is_detected_and_skipped(kind, search_run, train_run,
                                                      compilation_cache, tmp_path, capsys):
    source, main, flags, steps = {
        "search": (search_run, search.main, SEARCH, (3, 6)),
        "train": (train_run, train.main, TRAIN, (16, 24)),
    }[kind]
    copy = tmp_path / "copy"
    shutil.copytree(source, copy)
    flip_bytes(copy / runs.CHECKPOINT_DIR / str(steps[1]))
    capsys.readouterr()
    assert call(main, flags + compilation_cache + ["--resume", "--out-dir", str(copy)]) == 0
    out = capsys.readouterr().out
    assert f"checkpoint {str(copy / runs.CHECKPOINT_DIR / str(steps[1]))!r} is corrupt" in out
    assert f"resuming from step {steps[0]}" in out
    assert (copy / "corrupt" / str(steps[1])).is_dir()  # moved aside, not deleted
    assert_same_states(state_at(source, steps[1]), state_at(copy, steps[1]))


# ------------------------------------------------------------------ one configuration path


def test_flips_agree_between_search_and_training_for_every_dataset():
    expected = {"cifar10": True, "cifar100": True, "image_folder": True, "digits": False,
                "mnist": False, "fashion_mnist": False, "svhn_cropped": False}
    assert set(expected) == set(specs.DATASETS)
    for name, flip in expected.items():
        searched = configs.with_data_defaults(configs.SearchConfig(dataset=name).resolved(),
                                              image_shape=(32, 32, 3)).flip
        trained = train_step.resolve_setup(configs.TrainConfig(dataset=name), (32, 32, 3), 10).flip
        assert searched == trained == flip, name


def test_both_command_lines_share_names_help_and_defaults(capsys):
    search_flags = {a.dest: a for a in search.parser()._actions}
    train_flags = {a.dest: a for a in train.parser()._actions}
    shared = {f.name for f in dataclasses.fields(configs.SearchConfig)} & {
        f.name for f in dataclasses.fields(configs.TrainConfig)}
    assert {"max_train_examples", "learning_rate_min", "cache_dir", "keep_checkpoints",
            "out_dir", "resume", "compilation_cache"} <= shared
    for name in shared:
        a, b = search_flags[name], train_flags[name]
        assert a.option_strings == b.option_strings, name
        if isinstance(configs.FLAGS[name].help, str):  # else written per command
            assert a.help.split(" (default:")[0] == b.help.split(" (default:")[0], name
    for flags in (search_flags, train_flags):
        for action in flags.values():
            if action.help and action.dest != "help":
                assert action.help.count("(default") <= 1, action.option_strings


def test_config_file_with_flag_overrides(tmp_path, capsys):
    path = tmp_path / "search.yaml"
    path.write_text("epochs: 3\nchannels: 6\nops: [skip_connect, max_pool_3x3]\n")
    config, _ = search.parse_args(["--config", str(path), "--channels", "5"])
    assert (config.epochs, config.channels, config.ops) == (
        3, 5, ("skip_connect", "max_pool_3x3"))
    path.write_text('{"epochs": 3, "chanels": 6}')
    code = call(search.main, ["--config", str(path)])
    assert_usage_error(code, capsys.readouterr().err, "chanels")


@pytest.mark.parametrize("main", [search.main, train.main], ids=["search", "train"])
@pytest.mark.parametrize("text, fragments", [
    ('{"epochs": "ten"}', ["epochs: expected a positive integer, got 'ten'"]),  # wrong type
    ('{"epochs": 2.5}', ["epochs: expected a positive integer, got '2.5'"]),
    ('{"batch_size": -3}', ["batch_size: expected a positive integer, got -3"]),  # out of range
    ('{"learning_rate": 0}', ["learning_rate: expected a positive finite number"]),
    ('{"momentum": 1.5}', ["momentum: expected a probability in [0, 1)"]),
    ('{"progress": "yes"}', ["progress: expected true or false, got 'yes'"]),
    ('{"seed": null}', ["seed: expected a value, got null"]),
    ('{"dataset": "imagenette"}', ["dataset: invalid choice 'imagenette'"]),
    ('{"out_dir": 3}', ["out_dir: expected a string, got 3"]),
])
def test_config_file_values_are_checked_as_their_flags(main, text, fragments, tmp_path, capsys):
    # The values of a --config file pass their flags' checks: one line naming
    # the file and the key, exit status 2, before anything is written.
    path = tmp_path / "settings.json"
    path.write_text(text)
    code = call(main, ["--config", str(path), "--out-dir", str(tmp_path / "run")])
    assert_usage_error(code, capsys.readouterr().err, repr(str(path)), *fragments)
    assert not (tmp_path / "run").exists()


def test_config_file_values_convert_as_flags_do(tmp_path):
    path = tmp_path / "settings.yaml"
    path.write_text("seeds: [0, 3, 7]\nops: skip_connect,max_pool_3x3\nflip: false\n"
                    "max_train_examples: null\nlearning_rate: '0.05'\n")
    config, _ = search.parse_args(["--config", str(path)])
    assert (config.seeds, config.ops, config.flip) == (
        (0, 3, 7), ("skip_connect", "max_pool_3x3"), False)
    assert config.max_train_examples is None and config.learning_rate == 0.05
    path.write_text("seeds: [5]\n")  # a run's config.json: a list of one seed, not 5 seeds
    assert search.parse_args(["--config", str(path)])[0].seed_list == (5,)
