"""The package: one source of metadata, its commands and console scripts."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from conftest import assert_usage_error
from xnas_jax import __main__ as entry

ROOT = Path(__file__).resolve().parent.parent
tomllib = pytest.importorskip("tomllib")


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_pyproject_is_the_one_source_of_metadata():
    project = _project()
    assert project["license"] == {"text": "Apache-2.0"}
    assert "Apache License" in (ROOT / "LICENSE").read_text()
    assert any(dep.startswith("jax>=") for dep in project["dependencies"])
    # No second list of dependencies to drift from it.
    assert not (ROOT / "requirements.txt").exists()
    assert not (ROOT / "setup.cfg").exists()
    extras = project["optional-dependencies"]
    assert extras["gpu"] == [next(d for d in extras["gpu"] if d.startswith("jax[cuda13]"))]
    assert extras["gpu-cuda12"][0].startswith("jax[cuda12]")


def test_the_version_is_written_once():
    project = _project()
    assert "version" not in project and project["dynamic"] == ["version"]
    attr = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "dynamic"]["version"]["attr"]
    module, name = attr.rsplit(".", 1)
    assert isinstance(getattr(importlib.import_module(module), name), str)


def test_console_scripts_are_the_commands_mains():
    scripts = _project()["scripts"]
    assert set(scripts) == {f"xnas-{name}" for name in entry.COMMANDS}
    for name, (module, _) in entry.COMMANDS.items():
        target_module, function = scripts[f"xnas-{name}"].split(":")
        assert target_module == module
        assert callable(getattr(importlib.import_module(module), function))


def test_python_m_xnas_jax_lists_the_commands_one_line_each(capsys):
    assert entry.main([]) == 0
    out = capsys.readouterr().out
    for name in ("search", "train"):
        lines = [line for line in out.splitlines() if line.split()[:1] == [name]]
        assert len(lines) == 1, out


def test_python_m_xnas_jax_runs_a_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        entry.main(["train", "--help"])
    assert exit_.value.code == 0
    assert "--recipe" in capsys.readouterr().out


def test_an_unknown_command_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        entry.main(["serach"])
    assert_usage_error(exit_.value.code, capsys.readouterr().err, "serach", "search, train")
