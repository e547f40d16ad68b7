"""What a search returns: rewards clipped per feedback, cells chosen by evidence.

Per-feedback rewards: one reward per image and per cell, clipped before
summing.  The reference computes the per-feedback gradients with plain
autodiff of ``sum_i u_i f_i`` (no custom VJP), then the rewards, their clip,
their sum and the clipped fraction in NumPy float64.

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
from xnas_jax import search_step
from xnas_jax.spaces.darts import genotypes, supernet
from xnas_jax.feedback import per_feedback
from xnas_jax.search_step import feedback_rewards
from xnas_jax.spaces import ARCH
from xnas_jax.spaces.darts.supernet import SearchNetwork

OPS = ("avg_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3")
LAYERS = 4  # cells 0 and 3 normal, 1 and 2 reduction: r_c = 2 for both types
BATCH = 4


def _plain_mixture(outputs, weights, rows):
    """sum_i u_i f_i by plain autodiff, for (N,) or (B, N) weights."""
    out = 0.0
    for groups, group_rows in zip(outputs, rows):
        for g, r in enumerate(group_rows):
            if r >= 0:
                y = groups if groups.ndim == 4 else groups[g]
                w = weights[..., r].astype(y.dtype)
                out = out + y * (w if weights.ndim == 1 else w[:, None, None, None])
    return out


@pytest.fixture(scope="module")
def setup():
    model = SearchNetwork(num_classes=3, channels=2, layers=LAYERS, ops=OPS, steps=2)
    images = jax.random.normal(jax.random.key(0), (BATCH, 8, 8, 3))
    labels = jnp.array([0, 1, 2, 1])
    variables = model.init(jax.random.key(1), images, train=True)
    # Unequal weights, one expert wiped out on one edge of the normal cell.
    arch = {k: jax.nn.softmax(jax.random.normal(jax.random.key(2 + i), v.shape))
            for i, (k, v) in enumerate(variables[ARCH].items())}
    arch["normal"] = arch["normal"].at[0, 2].set(0.0)
    arch["normal"] = arch["normal"] / arch["normal"].sum(-1, keepdims=True)

    def loss(copies):
        logits, _ = model.apply(
            {"params": variables["params"], "batch_stats": variables["batch_stats"],
             ARCH: copies}, images, train=True, mutable=["batch_stats"])
        return search_step.cross_entropy(logits, labels)

    copies = per_feedback(arch, BATCH, genotypes.cell_replicas(LAYERS))
    grads = jax.jit(jax.grad(loss))(copies)
    return model, loss, arch, copies, grads


@pytest.fixture(scope="module")
def reference(setup):
    """Per-feedback gradients by plain autodiff, float64."""
    _, loss, _, copies, _ = setup
    original = supernet.mixture
    supernet.mixture = _plain_mixture
    try:
        grads = jax.jit(jax.grad(loss))(copies)
    finally:
        supernet.mixture = original
    return {k: np.asarray(v, np.float64) for k, v in grads.items()}


def test_per_feedback_copies_have_the_shape_of_one_reward_per_image_and_cell(setup):
    _, _, arch, copies, grads = setup
    for kind in ("normal", "reduce"):
        assert copies[kind].shape == grads[kind].shape == (2, BATCH, 5, len(OPS))


@pytest.mark.slow
def test_per_feedback_gradients_against_plain_autodiff(setup, reference):
    _, _, _, _, grads = setup
    for kind, want in reference.items():
        np.testing.assert_allclose(np.asarray(grads[kind]), want, rtol=2e-4, atol=1e-6)
        # They differ across images and across the cells of one type.
        assert np.ptp(want, axis=1).max() > 1e-3 and np.ptp(want, axis=0).max() > 1e-3


@pytest.mark.parametrize("quantile", [None, 0.9, 0.5])
@pytest.mark.slow
def test_clipped_summed_rewards_against_numpy(setup, reference, quantile):
    """R = -B dL/du per feedback, clipped to [-L, L], summed; None: L above every reward."""
    _, _, arch, _, grads = setup
    rewards = {k: -BATCH * g for k, g in reference.items()}
    everything = np.concatenate([np.abs(r).ravel() for r in rewards.values()])
    bound = 2 * everything.max() if quantile is None else float(np.quantile(everything, quantile))
    active = {k: np.asarray(u) > 0 for k, u in arch.items()}  # u = 0 at init: inactive
    summed, clipped = feedback_rewards({k: BATCH * g for k, g in grads.items()}, active, bound)
    for kind, r in rewards.items():
        active = np.asarray(arch[kind]) > 0
        want = np.where(active, np.clip(r, -bound, bound).sum((0, 1)), 0.0)
        np.testing.assert_allclose(np.asarray(summed[kind]), want, rtol=1e-4, atol=1e-4 * bound)
        over = (np.abs(r) > bound) & active
        np.testing.assert_allclose(float(clipped[kind]), over.sum() / (active.sum() * 2 * BATCH),
                                   atol=0.02)
        if quantile is not None:
            # The clip binds, and summing first would not have bound: the
            # per-feedback sum differs from the clipped sum.
            assert 0 < float(clipped[kind]) < 1
            assert np.abs(want - np.where(active, r.sum((0, 1)), 0)).max() > 1e-3 * bound
    assert np.asarray(summed["normal"])[0, 2] == 0  # a wiped-out expert gets no reward


@pytest.mark.slow
def test_unclipped_sum_is_the_batch_gradient(setup):
    """Without a bound the summed rewards are -B dL/du of the shared weights."""
    model, loss, arch, _, grads = setup
    active = {k: np.asarray(u) > 0 for k, u in arch.items()}
    summed, clipped = feedback_rewards({k: BATCH * g for k, g in grads.items()}, active, None)
    shared = jax.jit(jax.grad(loss))(arch)  # (E, N) weights, as the weight pass uses them
    for kind in arch:
        active = np.asarray(arch[kind]) > 0
        np.testing.assert_allclose(np.asarray(summed[kind]),
                                   np.where(active, -BATCH * np.asarray(shared[kind]), 0),
                                   rtol=1e-4, atol=1e-5)
        assert float(clipped[kind]) == 0


@pytest.mark.parametrize("horizon", [1, 4])
def test_the_search_round_is_algorithm_1_on_per_feedback_gradients(setup, reference, horizon):
    """``arch_round`` equals ``xnas(None, L, T, feedback_axes=2)`` on each image's gradients,
    and both equal one round of Algorithm 1 in float64 on the plain-autodiff gradients,
    with eta*_c from F_c = r_c B feedbacks and the margin 2 eta L F_c (T - 1)."""
    _, _, arch, _, grads = setup
    replicas = genotypes.cell_replicas(LAYERS)
    per_image = {k: BATCH * g for k, g in grads.items()}
    bound = float(np.median(np.concatenate([np.abs(g).ravel() for g in reference.values()])))
    bound *= BATCH  # the clip binds on about half of the feedbacks
    tx, rates = search_step.xnas_arch_optimizer(len(OPS), replicas, horizon, BATCH, bound)
    state = tx.init(arch)
    totals = {k: jnp.zeros_like(u) for k, u in arch.items()}
    (new_arch, new_state, new_totals), metrics = jax.jit(
        lambda g, u, s, t: search_step.arch_round(tx, bound, g, u, s, t))(
            per_image, arch, state, totals)
    direct = xnas_jax.xnas(None, bound, horizon, feedback_axes=2)
    updates, direct_state = direct.update(per_image, direct.init(arch), arch)
    for kind in arch:
        np.testing.assert_array_equal(np.asarray(new_state.active[kind]),
                                      np.asarray(direct_state.active[kind]))
        np.testing.assert_allclose(np.asarray(new_arch[kind]),
                                   np.asarray(arch[kind] + updates[kind]), atol=1e-7)
        # Algorithm 1, float64.
        u0 = np.asarray(arch[kind], np.float64)
        active = u0 > 0
        feedbacks = replicas[kind] * BATCH
        eta = np.sqrt(2 * np.log(len(OPS)) / (horizon * feedbacks * bound**2))
        assert abs(rates[kind] - eta) < 1e-12 * eta
        reward = np.clip(-BATCH * reference[kind], -bound, bound).sum((0, 1))
        log_v = np.where(active, np.log(np.where(active, u0, 1)) + eta * reward, -np.inf)
        leader = log_v.max(-1, keepdims=True)
        survive = active & (log_v >= leader - 2 * eta * bound * feedbacks * (horizon - 1))
        np.testing.assert_array_equal(np.asarray(new_state.active[kind]), survive)
        z = np.where(survive, np.exp(log_v - leader), 0)
        np.testing.assert_allclose(np.asarray(new_arch[kind]), z / z.sum(-1, keepdims=True),
                                   atol=2e-5)
        np.testing.assert_allclose(np.asarray(new_totals[kind]), np.where(active, reward, 0),
                                   rtol=1e-4, atol=1e-4 * bound)
        if horizon == 1:  # t = T: only the leaders are left
            assert (survive.sum(-1) == 1).all()
        else:
            assert survive.sum() == active.sum()
    assert 0 < float(metrics["clipped_normal"]) < 1


def test_per_feedback_weights_of_the_wrong_shape_are_refused(setup):
    model, loss, arch, copies, _ = setup
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
