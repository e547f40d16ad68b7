"""Faults injected into the tiny search, and what must survive them (docs/reliability.md).

The killed runs run in processes of their own (tests/fault_runner.py); the
uninterrupted run they are held to is the session's tiny search (conftest), with
the same flags and compilation cache.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, TINY_SEARCH, assert_usage_error, subprocess_env
from test_runs import assert_same_states, call, state_at
from xnas_jax import runs, search, train

TIMING = {"seconds", "compile_seconds_total", "images_per_second"}


def run_search(out_dir: Path, flags: list[str], kill_at: str = "none",
               max_file_size: int | None = None) -> subprocess.CompletedProcess:
    """The tiny search into ``out_dir`` in a child process that kills itself at ``kill_at``,
    whose files cannot grow past ``max_file_size`` bytes (as on a full disk)."""
    limit = [] if max_file_size is None else ["--max-file-size", str(max_file_size)]
    return subprocess.run(
        [sys.executable, str(ROOT / "tests" / "fault_runner.py"), *limit, kill_at,
         "xnas_jax.search", *TINY_SEARCH, *flags, "--out-dir", str(out_dir)],
        env=subprocess_env(), capture_output=True, text=True, timeout=600)


def committed(out_dir: Path) -> list[int]:
    """The steps whose checkpoints were committed (orbax's unfinished folders aside)."""
    folder = out_dir / runs.CHECKPOINT_DIR
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def assert_same_search(expected: Path, got: Path) -> None:
    """The same genotype, epoch records (timing aside) and final state as ``expected``."""
    assert (got / "genotype.json").read_text() == (expected / "genotype.json").read_text()
    without_timing = lambda log: [  # noqa: E731
        {k: v for k, v in r.items() if k not in TIMING} for r in log]
    assert without_timing(runs.read_log(got)) == without_timing(runs.read_log(expected))
    assert_same_states(state_at(expected, 6), state_at(got, 6))


# Where the two kills between checkpoints fall: after step 1, 2 or 3 of the
# killed run's epoch, drawn at random (seeded: a failure can be replayed).
RANDOM_STEPS = [random.Random(36 + i).randint(1, 3) for i in range(2)]


@pytest.mark.slow
def test_sigkill_anywhere_then_resume_gives_the_uninterrupted_search(tiny_search,
                                                                      compilation_cache,
                                                                      tmp_path):
    # The tiny search checkpoints at steps 3 and 6.  Each run below is killed
    # (SIGKILL: no handler runs) and the next resumes where the disk says.
    out = tmp_path / "run"
    flags = compilation_cache
    kills = [
        # While the first checkpoint is written: its files are in orbax's
        # temporary folder, not yet renamed.  Nothing is committed.
        ("commit:1", []),
        # In epoch 1, from the start again.
        (f"step:{RANDOM_STEPS[0]}", []),
        # As soon as checkpoint 3 is on disk, before anything else is written.
        ("saved:1", [3]),
        # In epoch 2 (this run resumes at step 3).
        (f"step:{RANDOM_STEPS[1]}", [3]),
        # While checkpoint 6 is written.
        ("commit:1", [3]),
    ]
    for i, (kill_at, steps) in enumerate(kills):
        result = run_search(out, flags + (["--resume"] if i else []), kill_at)
        assert result.returncode == -signal.SIGKILL, (kill_at, result.returncode,
                                                      result.stderr[-3000:])
        assert committed(out) == steps, kill_at
    result = run_search(out, flags + ["--resume"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming at step 3" in result.stdout
    assert committed(out) == [3, 6]
    assert not [p for p in (out / runs.CHECKPOINT_DIR).iterdir() if not p.name.isdigit()]
    assert_same_search(tiny_search, out)


@pytest.mark.slow
def test_a_full_disk_at_a_checkpoint_is_one_line_and_the_last_checkpoint_stands(
        tiny_search, compilation_cache, tmp_path):
    out = tmp_path / "run"
    # Killed right after checkpoint 3: the run resumes at step 3 below.
    result = run_search(out, compilation_cache, "saved:1")
    assert result.returncode == -signal.SIGKILL and committed(out) == [3], result.stderr[-3000:]
    # Files may not grow past 64 KB: the log, config and TensorBoard files of
    # the run fit, checkpoint 6 (about 500 KB) does not.
    result = run_search(out, compilation_cache + ["--resume"], max_file_size=64 * 1024)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith(f"error: cannot write checkpoint "
                               f"{str(out / runs.CHECKPOINT_DIR / '6')!r}"), lines[0]
    assert "File too large" in lines[0], lines[0]
    assert "checkpoint 3 is intact" in lines[0] and "--resume" in lines[0], lines[0]
    assert committed(out) == [3]
    assert_same_states(state_at(tiny_search, 3), state_at(out, 3))
    # Room again: the run resumes from checkpoint 3 and ends as if nothing happened.
    result = run_search(out, compilation_cache + ["--resume"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming at step 3" in result.stdout
    assert_same_search(tiny_search, out)


def _unwritable_dirs(tmp_path: Path) -> list[Path]:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    dirs = [blocker / "out"]
    # /proc takes no new files, not even root's (whom permissions do not stop).
    if Path("/proc/self").is_dir():
        dirs.append(Path("/proc/xnas_jax_out"))
    return dirs


@pytest.mark.parametrize("main, flags", [
    (search.main, TINY_SEARCH),
    (train.main, ["--genotype", "DARTS_V2", "--dataset", "digits", "--layers", "3",
                  "--channels", "4"]),
], ids=["search", "train"])
def test_an_unwritable_out_dir_is_one_line_before_any_work(main, flags, tmp_path, capsys):
    for out in _unwritable_dirs(tmp_path):
        code = call(main, flags + ["--out-dir", str(out)])
        captured = capsys.readouterr()
        assert_usage_error(code, captured.err, f"--out-dir {str(out)!r} is not writable")
        # Nothing loaded, nothing compiled.
        assert captured.out == "", captured.out
        assert not out.exists()
