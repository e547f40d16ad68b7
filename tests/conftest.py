"""Shared test helpers: a persistent compilation cache, CLI error checks."""

from __future__ import annotations

import os

import jax
import pytest
from jax.experimental.compilation_cache import compilation_cache as jax_compilation_cache

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def compilation_cache(tmp_path_factory):
    """The CLIs' --compilation-cache: runs of the same network reuse the first
    run's executables; JAX's global setting is restored afterwards."""
    previous = jax.config.jax_compilation_cache_dir
    yield ["--compilation-cache", str(tmp_path_factory.mktemp("jax_cache"))]
    jax.config.update("jax_compilation_cache_dir", previous)
    jax_compilation_cache.reset_cache()


def assert_usage_error(code: int, err: str, *fragments: str) -> None:
    """A CLI usage error: exit status 2 and one line ``error: ...`` naming the problem."""
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
