"""Each command's --help is written for that command, and the speed switches stand apart."""

from __future__ import annotations

import argparse

import jax
import pytest
from jax.experimental.compilation_cache import compilation_cache as jax_compilation_cache

from xnas_jax import cli, configs, search, train
from xnas_jax.spaces.darts import genotypes


def _help(main, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse's line breaks undone


def _groups(parser: argparse.ArgumentParser) -> dict[str, set[str]]:
    return {group.title: {a.dest for a in group._group_actions}
            for group in parser._action_groups}


@pytest.mark.parametrize("main", [search.main, train.main], ids=["search", "train"])
def test_no_default_shows_as_null(main, capsys):
    text = _help(main, capsys)
    assert "null" not in text and "None" not in text
    assert "(default: none: decode every run)" in text  # --cache-dir


def test_train_help_speaks_of_training_only(capsys):
    text = _help(train.main, capsys)
    assert "half" not in text and "supernet" not in text and "search:" not in text
    assert "--batch-size BATCH_SIZE images per training step" in text


def test_search_help_gives_the_searched_ops_and_batch(capsys):
    text = _help(search.main, capsys)
    count = len(genotypes.XNAS_PRIMITIVES)
    assert count == 7
    assert f"darts: the XNAS paper's {count}, all but none" in text
    assert "the XNAS paper's 8" not in text and "training:" not in text
    assert "--batch-size BATCH_SIZE images per step from each half" in text


def test_speed_switches_are_in_the_advanced_group_last():
    for parser, switches in ((search.parser(), {"skip_wiped_out", "dtype", "compilation_cache"}),
                             (train.parser(), {"dtype", "compilation_cache"})):
        groups = _groups(parser)
        assert groups[configs.ADVANCED] == switches
        titles = [g.title for g in parser._action_groups if g._group_actions]
        assert titles[-1] == configs.ADVANCED or titles[-2] == configs.ADVANCED  # train: summary


def test_benchmark_switches_are_no_flags_and_runs_that_had_them_still_load(tmp_path, capsys):
    """--single-trace and --depthwise are the benchmarks' (benchmarks/bench_search.py): a
    run's config.json from before still loads, and its fingerprint still matches."""
    for flag in ("--single-trace", "--depthwise"):
        with pytest.raises(SystemExit):
            search.parse_args([flag])
        assert flag in capsys.readouterr().err
    old = tmp_path / "config.json"
    old.write_text('{"config": {"depthwise": "shifts", "single_trace": true, "seed": 3}}')
    config = search.parse_args(["--config", str(old)])[0]
    assert config.seed == 3
    fingerprint = configs.fingerprint(config)
    assert fingerprint["depthwise"] == "shifts" and "single_trace" not in fingerprint
    assert "depthwise" not in configs.fingerprint(configs.TrainConfig())


def test_compilation_cache_is_on_by_default_and_can_be_turned_off(tmp_path):
    assert search.parse_args([])[0].compilation_cache is None
    assert search.parse_args(["--no-compilation-cache"])[0].compilation_cache is False
    config = train.parse_args(["--compilation-cache", str(tmp_path)])[0]
    assert config.compilation_cache == str(tmp_path)
    assert cli.use_compilation_cache(False) is None


def test_the_default_cache_is_in_the_users_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cli.default_compilation_cache() == tmp_path / "xdg" / "xnas_jax" / "jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cli.default_compilation_cache() == tmp_path / "home" / ".cache" / "xnas_jax" / "jax"


def test_no_flag_turns_the_cache_on_in_the_users_folder(monkeypatch, tmp_path):
    previous = jax.config.jax_compilation_cache_dir
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    try:
        folder = cli.use_compilation_cache(search.parse_args([])[0].compilation_cache)
        assert folder == tmp_path / "xnas_jax" / "jax" and folder.is_dir()
        assert jax.config.jax_compilation_cache_dir == str(folder)
    finally:
        jax.config.update("jax_compilation_cache_dir", previous)
        jax_compilation_cache.reset_cache()


def test_an_unwritable_default_cache_only_warns(monkeypatch, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # a file: no folder can go there
    assert cli.use_compilation_cache(None) is None
    assert capsys.readouterr().err.startswith("warning: no compilation cache: ")
    with pytest.raises(ValueError, match="--compilation-cache"):
        cli.use_compilation_cache(str(blocker))
