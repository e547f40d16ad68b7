"""The README's first command end to end, compiled with XLA's default flags.

Every other test compiles with TEST_XLA_FLAGS (tests/conftest.py: LLVM's
optimizations off, the classic fusion code), which halves the suite's time;
this one runs the code the way a user's command runs it, in a process of its
own whose XLA_FLAGS are empty.
"""

from __future__ import annotations

import json

import pytest

from test_user_commands import assert_ran, run_command
from xnas_jax.spaces.darts import genotypes


@pytest.mark.slow
def test_the_readme_search_with_xlas_default_flags(tmp_path):
    # `python -m xnas_jax.search`, the README's first command, for two steps,
    # compiled as a user's run is: without the tests' TEST_XLA_FLAGS.
    result = run_command("xnas_jax.search", ["--epochs", "1", "--max-steps-per-epoch", "2",
                                             "--no-progress"], tmp_path, xla_flags="")
    assert_ran(result)
    latest = tmp_path / "runs" / "search" / "latest"
    config = json.loads((latest / "config.json").read_text())["config"]
    assert (config["layers"], config["channels"], config["nodes"]) == (5, 8, 4)
    assert len(config["ops"]) == 7
    genotypes.load_genotype(latest / "genotype.json")
    assert "normal cell" in result.stdout
