"""The minimal program of the several-seeds crash (tests/xla_crash_repro.py), each in a
process of its own: a segmentation fault fails the test instead of killing a worker."""

from __future__ import annotations

import signal
import subprocess
import sys

import jax
import pytest

from conftest import ROOT, subprocess_env


def _repro(mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tests" / "xla_crash_repro.py"), mode],
                          cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                          timeout=300)


def test_one_seed_per_device_runs_the_plain_program():
    result = _repro("plain")
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr[-3000:])
    assert "max difference" in result.stdout


@pytest.mark.skipif(jax.__version__ != "0.10.2", reason="the crash was found with jax 0.10.2")
def test_the_vmapped_block_of_one_seed_crashes_xla():
    # The bug the workaround avoids.  Should this fail with status 0, XLA was fixed and
    # parallel.vmap_seeds may vmap a block of one again.
    result = _repro("vmap")
    assert result.returncode == -signal.SIGSEGV, (result.returncode, result.stdout,
                                                  result.stderr[-3000:])
