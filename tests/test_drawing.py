"""Tests for xnas_jax.spaces.darts.drawing: the picture of a cell."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from xnas_jax.spaces.darts import drawing
from xnas_jax.spaces.darts.genotypes import DARTS_V2, PRIMITIVES, XNAS


def test_plot_cell_writes_a_png(tmp_path):
    path = tmp_path / "normal.png"
    fig = drawing.plot_cell(XNAS, "normal", path=path, title="XNAS normal cell")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000  # nodes, arrows and labels, not a blank canvas
    width, height = (int.from_bytes(data[i : i + 4], "big") for i in (16, 20))
    assert 800 <= width <= 4000 and 300 <= height <= 2000
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert "XNAS normal cell" in texts
    # One label per operation edge.
    assert sorted(t for t in texts if t in PRIMITIVES) == sorted(set(op for op, _ in XNAS.normal))
    assert sum(t.get_text() in PRIMITIVES for t in fig.axes[0].texts) == 8


def test_plot_cell_reduce_and_repeated_inputs(tmp_path):
    # A hand-written cell may read one state twice: two distinct arcs, no crash.
    genotype = copy.deepcopy(DARTS_V2)
    genotype.reduce[0:2] = [("max_pool_3x3", 0), ("avg_pool_3x3", 0)]
    fig = drawing.plot_cell(genotype, "reduce", path=tmp_path / "reduce.png")
    assert fig.axes[0].texts[-1].get_text() == "reduce cell"
    arcs = [p for p in fig.axes[0].patches if hasattr(p, "get_connectionstyle")]
    assert len(arcs) == 8 + 4  # operation edges and concatenation edges
    pos = {"a": np.array([0.0, 0.0]), "b": np.array([2.6, 0.0])}
    first, second = drawing._choose_curves([("a", "b"), ("a", "b")], pos)
    assert first != second
    with pytest.raises(ValueError, match="cell must be 'normal' or 'reduce', got 'both'"):
        drawing.plot_cell(DARTS_V2, "both")
