"""The search step (xnas_jax.search_step): the architecture methods, per-feedback rewards,
the round of Algorithm 1, and ``search_update`` against the multi-seed step.

Rewards: one reward per image and per cell, clipped before summing, against
NumPy float64 on per-feedback gradients from plain autodiff of
``sum_i u_i f_i`` (the ``feedback_reference`` fixture of conftest.py).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import xnas_jax
from conftest import FEEDBACK_BATCH as BATCH, FEEDBACK_LAYERS as LAYERS, FEEDBACK_OPS as OPS
from conftest import TINY_SEARCH
from xnas_jax import optimizers, parallel, prng, search, search_step, spaces
from xnas_jax.data import shards
from xnas_jax.data.datasets import ArrayDataset
from xnas_jax.prng import KEY_IMPL
from xnas_jax.search_step import feedback_rewards
from xnas_jax.spaces.darts import genotypes

# ------------------------------------------------------------------ methods


def test_xnas_method_counts_rounds_as_the_paper():
    # The paper's CIFAR-10 search: 25k validation images, 50 epochs, batch 96,
    # 8 cells (6 normal + 2 reduction), 8 experts, L = 1 -> 7.5e-4 and 1.3e-3.
    steps = 50 * (25_000 // 96)
    replicas = genotypes.cell_replicas(8)
    method = search_step.xnas_method(8, replicas, steps, 96)
    rates = method.learning_rates
    assert abs(rates["normal"] - 7.5e-4) < 1e-5 and abs(rates["reduce"] - 1.3e-3) < 1e-5
    # One step is one round of B * r_c feedbacks, each clipped to [-L, L]:
    # log v moves by eta_c times the sum of the clipped rewards.
    rng = np.random.default_rng(0)
    grads = {k: rng.normal(0, 1.5, (r, 96, 14, 8)).astype(np.float32)
             for k, r in replicas.items()}
    u = {k: np.full((14, 8), 1 / 8, np.float32) for k in replicas}
    state = method.tx.init(u)
    _, state = jax.jit(method.tx.update)(grads, state, u)
    for kind in replicas:
        summed = np.clip(-grads[kind].astype(np.float64), -1, 1).sum((0, 1))
        assert np.abs(summed - (-grads[kind].astype(np.float64)).sum((0, 1))).max() > 1
        expected = rates[kind] * summed
        np.testing.assert_allclose(np.asarray(state.log_weights[kind]),
                                   expected - expected.max(-1, keepdims=True), atol=1e-5)


def test_the_method_of_a_config_carries_the_bound_rates_and_evidence():
    replicas = {"normal": 6, "reduce": 2}
    config = search.parse_args(["--reward-bound", "2.5", "--arch-learning-rate-reduce",
                                "0.01"])[0].resolved()
    xnas = search_step.make_arch_method(config, replicas, 100)
    assert xnas.name == "xnas" and xnas.feedback_clip == 2.5
    assert xnas.learning_rates["reduce"] == 0.01
    assert xnas.learning_rates["normal"] == pytest.approx(
        xnas_jax.theoretical_learning_rate(len(config.ops), 100, 2.5, 6 * config.batch_size))
    darts = search_step.make_arch_method(
        search.parse_args(["--optimizer", "darts"])[0].resolved(), replicas, 100)
    assert darts.name == "darts" and darts.feedback_clip is None
    assert darts.learning_rates == {"normal": 3e-4, "reduce": 3e-4}
    rewards = {"normal": np.ones((14, 7))}
    assert xnas.selection_evidence(rewards) is rewards  # XNAS ranks edges by evidence
    assert darts.selection_evidence(rewards) is None  # DARTS by u


# ------------------------------------------------------------------ rewards and rounds


@pytest.mark.parametrize("quantile", [None, 0.9, 0.5])
@pytest.mark.slow
def test_clipped_summed_rewards_against_numpy(feedback_setup, feedback_reference, quantile):
    """R = -B dL/du per feedback, clipped to [-L, L], summed; None: L above every reward."""
    _, _, arch, _, grads = feedback_setup
    rewards = {k: -BATCH * g for k, g in feedback_reference.items()}
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
def test_unclipped_sum_is_the_batch_gradient(feedback_setup):
    """Without a bound the summed rewards are -B dL/du of the shared weights."""
    model, loss, arch, _, grads = feedback_setup
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
def test_the_search_round_is_algorithm_1_on_per_feedback_gradients(feedback_setup,
                                                                   feedback_reference, horizon):
    """``arch_round`` equals ``xnas(None, L, T, feedback_axes=2)`` on each image's gradients,
    and both equal one round of Algorithm 1 in float64 on the plain-autodiff gradients,
    with eta*_c from F_c = r_c B feedbacks and the margin 2 eta L F_c (T - 1)."""
    _, _, arch, _, grads = feedback_setup
    replicas = genotypes.cell_replicas(LAYERS)
    per_image = {k: BATCH * g for k, g in grads.items()}
    bound = float(np.median(np.concatenate([np.abs(g).ravel()
                                            for g in feedback_reference.values()])))
    bound *= BATCH  # the clip binds on about half of the feedbacks
    method = search_step.xnas_method(len(OPS), replicas, horizon, BATCH, bound)
    state = method.tx.init(arch)
    totals = {k: jnp.zeros_like(u) for k, u in arch.items()}
    (new_arch, new_state, new_totals), metrics = jax.jit(
        functools.partial(search_step.arch_round, method))(per_image, arch, state, totals)
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
        assert abs(method.learning_rates[kind] - eta) < 1e-12 * eta
        reward = np.clip(-BATCH * feedback_reference[kind], -bound, bound).sum((0, 1))
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


def late_bloomer_rounds(switch: int, horizon: int, feedbacks: int):
    """Per-feedback rewards (T, r_c = 1, B, E = 1, N = 2) of a search's rounds: expert 0
    earns L per feedback until ``switch``, expert 1 from then on."""
    rewards = np.zeros((horizon, 1, feedbacks, 1, 2), np.float32)
    rewards[:switch, ..., 0] = 1.0
    rewards[switch:, ..., 1] = 1.0
    return rewards


def test_an_underflowed_expert_stays_active_and_recovers_as_a_late_bloomer():
    """u_i is exactly 0 in float32 once expert i trails by some 90-104 nats, long before its
    wipeout: the search must keep rewarding and computing it (section 3.2.1).  Here expert
    1 trails by 107 nats at the switch; from then on only its rewards close the gap, which
    the margin 2 eta L F (T - t) allows since T > 2 * switch."""
    horizon, feedbacks, switch = 700, 64, 300
    eta = xnas_jax.theoretical_learning_rate(2, horizon, 1.0, feedbacks)
    method = search_step.xnas_method(2, {"cell": 1}, horizon, feedbacks)
    u = {"cell": jnp.full((1, 2), 0.5)}
    state, totals = method.tx.init(u), {"cell": jnp.zeros((1, 2))}
    round_fn = jax.jit(functools.partial(search_step.arch_round, method))
    rewards = late_bloomer_rounds(switch, horizon, feedbacks)
    underflowed = []
    for t in range(horizon):
        (u, state, totals), _ = round_fn({"cell": jnp.asarray(-rewards[t])}, u, state, totals)
        active = np.asarray(xnas_jax.active_experts(state)["cell"])[0]
        if float(u["cell"][0, 1]) == 0.0 and active[1]:
            underflowed.append(t + 1)
            assert search_step.computed_experts(("a", "b"), xnas_jax.active_experts(state)) == {
                "cell": ("a", "b")}
    # u_1 flushes to 0 past ~87 nats (float32 without denormals, as XLA computes it).
    assert underflowed and underflowed[0] < switch and len(underflowed) > 100
    assert 85 < feedbacks * eta * underflowed[0] < 105 < feedbacks * eta * switch
    # Expert 1 ties at 2 * switch, leads after, and is the only expert left at the horizon.
    np.testing.assert_array_equal(np.asarray(u["cell"]), [[0.0, 1.0]])
    np.testing.assert_array_equal(np.asarray(totals["cell"]),
                                  [[feedbacks * switch, feedbacks * (horizon - switch)]])


# ------------------------------------------------------------------ the step


@pytest.fixture(scope="module")
def one_step():
    """The tiny search's supernet (conftest.TINY_SEARCH), one step of seed 0 on random
    uint8 batches: by ``make_search_step`` (XNAS), and by ``search_update`` under jit
    with XNAS and with the DARTS baseline.  Returns the initial states, the results, and
    the preprocessed batches."""
    config = search.parse_args(TINY_SEARCH)[0].resolved()
    image_shape, classes, batch, pool = (8, 8, 1), 10, config.batch_size, 64
    model = spaces.get_space(config.space).build(config, classes)
    weight_tx = optimizers.weight_optimizer(
        search_step.weight_schedule(config, 6), momentum=config.momentum,
        weight_decay=config.weight_decay, grad_clip=config.grad_clip)
    methods = {name: search_step.make_arch_method(dataclasses.replace(config, optimizer=name),
                                                  model.feedback_replicas(), 6)
               for name in ("xnas", "darts")}
    mesh = parallel.make_mesh(1, 1)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (pool, *image_shape), dtype=np.uint8)
    labels = rng.integers(0, classes, pool, dtype=np.int32)
    data = shards.to_devices(shards.ShardedSplit(
        {0: ArrayDataset(images, labels, classes, "random")}, (pool,), np.zeros(1), np.ones(1),
        classes, image_shape, ((0,),)), shards.ShardLayout(1, 1), mesh)
    preprocess = search_step.Preprocess((120.0,), (60.0,), 2, True)
    order = [rng.permutation(pool)[:batch].astype(np.int32)[None] for _ in range(2)]
    key_data = prng.seed_keys([1])
    initial = {name: parallel.to_host(search_step.create_search_states(
        prng.seed_keys([0]), model, image_shape, weight_tx, m.tx, mesh))
        for name, m in methods.items()}

    step = search_step.make_search_step(model, weight_tx, methods["xnas"], preprocess, mesh)
    seed_sharded = parallel.seed_sharding(mesh)
    split = parallel.batch_sharding(mesh, seeded=True)
    states = jax.tree.map(lambda a: parallel.global_array(a, seed_sharded), initial["xnas"])
    stepped = parallel.to_host(step(
        states, data, *(parallel.global_array(o, split) for o in order),
        parallel.global_array(key_data, seed_sharded)))

    # The same batches by hand: the seed's key folded with its step count, split in two.
    key = jax.random.fold_in(jax.random.wrap_key_data(key_data[0], impl=KEY_IMPL), 0)
    batches = tuple(
        (search_step.preprocess_batch(half_key, jnp.asarray(images[o[0]]), preprocess),
         jnp.asarray(labels[o[0]]))
        for half_key, o in zip(jax.random.split(key), order))
    updated = {}
    for name, method in methods.items():
        update = jax.jit(functools.partial(search_step.search_update, model=model,
                                           method=method, weight_tx=weight_tx))
        state = jax.tree.map(lambda a: a[0], initial[name])
        updated[name] = parallel.to_host(update(state, *batches))
    return initial, stepped, updated, batches


@pytest.mark.slow
def test_search_update_is_the_step_of_one_seed(one_step):
    """``make_search_step`` for one seed is ``search_update`` on the seed's batches
    (gathered from the device shards, augmented with its key and normalized)."""
    initial, (stepped, stepped_metrics), updated, batches = one_step
    state, metrics = updated["xnas"]
    assert int(state.step) == 1
    assert float(jnp.abs(batches[0][0]).max()) > 0 and batches[0][0].dtype == jnp.float32
    seed0 = jax.tree.map(lambda a: a[0], stepped)
    assert jax.tree.structure(seed0) == jax.tree.structure(state)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(state)[0],
                            jax.tree.leaves(seed0)):
        np.testing.assert_array_equal(b, a, err_msg=jax.tree_util.keystr(path))
    assert set(metrics) == set(stepped_metrics)
    for name, value in metrics.items():
        np.testing.assert_array_equal(np.asarray(stepped_metrics[name])[0], value, name)
    # A step moves everything it owns.
    start = jax.tree.map(lambda a: a[0], initial["xnas"])
    for part in ("params", "batch_stats", "arch", "rewards"):
        assert any(np.any(x != y) for x, y in zip(jax.tree.leaves(getattr(start, part)),
                                                   jax.tree.leaves(getattr(state, part)))), part


@pytest.mark.slow
def test_the_darts_method_differs_from_xnas_in_the_architecture_round_only(one_step):
    """Both methods take the same weight step and see the same batch; XNAS's round plays
    exponentiated gradient on clipped rewards, DARTS's Adam on the softmax logits of the
    batch's dL/du (no clip, no wipeout)."""
    _, _, updated, _ = one_step
    (xnas_state, xnas_metrics), (darts_state, darts_metrics) = updated["xnas"], updated["darts"]
    for part in ("params", "batch_stats", "weight_opt_state"):
        for a, b in zip(jax.tree.leaves(getattr(xnas_state, part)),
                        jax.tree.leaves(getattr(darts_state, part))):
            np.testing.assert_array_equal(a, b, part)
    for name in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "reward_abs_max"):
        np.testing.assert_array_equal(xnas_metrics[name], darts_metrics[name], name)
    for kind in xnas_state.arch:
        assert np.abs(xnas_state.arch[kind] - darts_state.arch[kind]).max() > 1e-6, kind
        assert (darts_state.arch[kind] > 0).all()  # softmax weights: never wiped out
        assert float(darts_metrics[f"clipped_{kind}"]) == 0  # nothing clipped
        assert int(darts_metrics[f"active_{kind}"]) == darts_state.arch[kind].size
    assert type(xnas_state.arch_opt_state) is not type(darts_state.arch_opt_state)



@pytest.mark.slow
def test_host_results_hold_what_the_reports_read(one_step):
    """The results a search reports, on the host: u, rewards and active masks with the
    seed axis; the evidence XNAS ranks edges by (its rewards; DARTS: None, by u); and
    the mean normalized entropy of u, against a float64 NumPy reference."""
    initial, (stepped, _), _, _ = one_step
    config = search.parse_args(TINY_SEARCH)[0].resolved()
    replicas = spaces.get_space(config.space).build(config, 10).feedback_replicas()
    for optimizer, state in (("xnas", stepped), ("darts", initial["darts"])):
        method = search_step.make_arch_method(dataclasses.replace(config, optimizer=optimizer),
                                              replicas, 6)
        host = search_step.host_results(state, method)
        rows = np.concatenate([np.asarray(state.arch[k], np.float64) for k in sorted(state.arch)],
                              axis=1)
        n = rows.shape[-1]
        plogp = np.where(rows > 0, rows * np.log(np.where(rows > 0, rows, 1)), 0)
        np.testing.assert_allclose(host["entropy"], (-plogp.sum(-1) / np.log(n)).mean(-1),
                                   rtol=1e-12)
        for kind in state.arch:
            np.testing.assert_array_equal(host["arch"][kind], state.arch[kind])
            assert host["active"][kind].shape == state.arch[kind].shape
        if optimizer == "xnas":
            assert host["entropy"][0] < 1  # the step moved u off uniform
            for kind in state.arch:
                np.testing.assert_array_equal(host["evidence"][kind], state.rewards[kind])
        else:
            np.testing.assert_allclose(host["entropy"], 1.0, rtol=1e-6)  # uniform at init
            assert host["evidence"] is None
