"""What a search returns: one gradient per image and per cell, cells chosen by evidence.

Per-feedback gradients: the supernet's per-image tables against plain
autodiff of ``sum_i u_i f_i`` (no custom VJP; the rewards made of them are
tested in test_search_step.py).

Discretization: with planted rewards in which node-to-node edges are the
strongest, XNAS's one-hot weights at the horizon tie every edge, and only the
accumulated rewards find those edges.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import xnas_jax
from conftest import FEEDBACK_BATCH as BATCH, FEEDBACK_OPS as OPS
from xnas_jax.spaces.darts import genotypes


def test_per_feedback_copies_have_the_shape_of_one_reward_per_image_and_cell(feedback_setup):
    _, _, arch, copies, grads = feedback_setup
    for kind in ("normal", "reduce"):
        assert copies[kind].shape == grads[kind].shape == (2, BATCH, 5, len(OPS))


@pytest.mark.slow
def test_per_feedback_gradients_against_plain_autodiff(feedback_setup, feedback_reference):
    _, _, _, _, grads = feedback_setup
    for kind, want in feedback_reference.items():
        np.testing.assert_allclose(np.asarray(grads[kind]), want, rtol=2e-4, atol=1e-6)
        # They differ across images and across the cells of one type.
        assert np.ptp(want, axis=1).max() > 1e-3 and np.ptp(want, axis=0).max() > 1e-3


def test_per_feedback_weights_of_the_wrong_shape_are_refused(feedback_setup):
    model, loss, arch, copies, _ = feedback_setup
    with pytest.raises(ValueError, match="per-feedback normal mixture weights"):
        loss({**copies, "normal": copies["normal"][:1]})


def _planted_search(horizon: int = 400, seed: int = 0):
    """XNAS on planted rewards for one cell of 4 nodes (14 edges, 7 experts).

    Edge e's expert best[e] earns mean reward strength[e], the others 0, plus
    noise, clipped to [-1, 1].  A node's strongest edges are planted on its two
    nearest predecessors, so that nodes 3-5 should read other nodes.
    """
    rng = np.random.default_rng(seed)
    edges = genotypes.edge_list(4)
    best = rng.integers(0, 7, len(edges))
    strength = np.array([0.1 + 0.15 * source / (node + 1) for source, node in edges])
    tx = xnas_jax.xnas(xnas_jax.theoretical_learning_rate(7, horizon, 1.0), 1.0, horizon)
    u = jnp.full((len(edges), 7), 1 / 7)
    state = tx.init(u)
    update = jax.jit(tx.update)
    totals = np.zeros((len(edges), 7))
    for _ in range(horizon):
        mean = np.zeros((len(edges), 7))
        mean[np.arange(len(edges)), best] = strength
        rewards = np.clip(mean + 0.5 * rng.normal(size=mean.shape), -1, 1)
        totals += np.where(np.asarray(state.active), rewards, 0.0)  # as SearchState.rewards
        updates, state = update(jnp.asarray(-rewards, jnp.float32), state, u)
        u = u + updates
    return np.asarray(u), totals, best


@pytest.mark.slow
def test_planted_evidence_selects_node_to_node_edges():
    u, totals, best = _planted_search()
    ops = genotypes.XNAS_PRIMITIVES
    assert ((u > 0).sum(-1) == 1).all()  # the horizon left one expert per edge: all tie
    want = [2, 1, 3, 2, 4, 3]  # nodes 3, 4, 5 read their two nearest predecessors
    chosen = genotypes.discretize(u, u, ops, rewards={"normal": totals, "reduce": totals})
    assert [source for _, source in chosen.normal[2:]] == want
    edges = genotypes.edge_list(4)
    for (op, source), node in zip(chosen.normal, np.repeat(range(4), 2)):
        assert op == ops[best[edges.index((source, node))]]  # each edge's planted expert
    # The max-weight rule sees only ties and reads the cell inputs everywhere.
    tied = genotypes.discretize(u, u, ops)
    assert [source for _, source in tied.normal] == [0, 1] * 4
    record = genotypes.selection_record({"normal": u, "reduce": u}, ops,
                                        rewards={"normal": totals, "reduce": totals})
    assert record["rule"] == "cumulative_reward"
    kept = [(e["node"], e["source"]) for e in record["normal"] if e["kept"]]
    assert sorted(kept) == sorted([(2, 0), (2, 1), (3, 2), (3, 1), (4, 3), (4, 2), (5, 4), (5, 3)])
