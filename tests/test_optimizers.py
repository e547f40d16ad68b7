"""Tests of the XNAS transform against an independent float64 Algorithm 1."""

from __future__ import annotations

import math

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized
from hypothesis import given, settings

import xnas_jax

jax.config.update("jax_enable_x64", False)


# ------------------------------------------------------------ NumPy reference


def reference_xnas(rewards, eta, bound, horizon, zeta=1.0, u0=None, feedback_axes=0):
    """Algorithm 1 for independent forecasters, literally, in float64.

    With ``feedback_axes = k`` a round holds F feedbacks: each is clipped
    (line 9) and they are played one after another within the round (lines
    8-10); the wipeout (lines 12-13) comes at the end of the round, where
    ``T - t`` counts the feedbacks still to come, ``F (T - t)``.

    Args:
      rewards: (T, *feedbacks, forecasters, N) unclipped rewards R_t (line 8).
    Returns:
      u (T, forecasters, N) after each round, active (T, forecasters, N), log
      v (T, forecasters, N) unshifted, and Gamma_t (T, forecasters), the
      paper's per-round wipeout factor.
    """
    rewards = np.asarray(rewards, np.float64)
    steps, experts = rewards.shape[0], rewards.shape[-1]
    forecasters = rewards.shape[-2]
    feedbacks = rewards.reshape(steps, -1, forecasters, experts)
    log_v = np.zeros((forecasters, experts)) if u0 is None else np.log(np.asarray(u0, np.float64))
    active = np.ones((forecasters, experts), bool)
    us, actives, log_vs, gammas = [], [], [], []
    for t in range(1, steps + 1):
        for feedback in feedbacks[t - 1]:
            log_v = np.where(active, log_v + eta * np.clip(feedback, -bound, bound), log_v)
        leader = np.max(np.where(active, log_v, -np.inf), axis=-1, keepdims=True)
        remaining = feedbacks.shape[1] * max(horizon - t, 0)
        log_theta = leader - 2 * eta * bound * remaining * zeta
        new_active = active & ~(log_v < log_theta)
        v = np.where(active, np.exp(log_v - leader), 0.0)
        wiped = np.sum(np.where(active & ~new_active, v, 0), -1)
        kept = np.sum(np.where(new_active, v, 0), -1)
        gammas.append(1 + wiped / kept)
        active = new_active
        z = np.where(active, np.exp(log_v - leader), 0.0)
        us.append(z / z.sum(-1, keepdims=True))
        actives.append(active.copy())
        log_vs.append(log_v.copy())
    return np.array(us), np.array(actives), np.array(log_vs), np.array(gammas)


def run_transform(tx, rewards, u0):
    """Feeds grads = -rewards to ``tx`` round after round (one jitted scan)."""

    def body(carry, reward):
        u, state = carry
        updates, state = tx.update(-reward, state, u)
        u = optax.apply_updates(u, updates)
        return (u, state), (u, state.active, state.log_weights)

    state = tx.init(u0)
    (_, final), (us, actives, log_vs) = jax.jit(lambda r: jax.lax.scan(body, (u0, state), r))(
        jnp.asarray(rewards, jnp.float32)
    )
    return np.asarray(us), np.asarray(actives), np.asarray(log_vs), final


def replay(update, tx, rewards, ref_u, ref_active, atol):
    """Plays ``rewards`` round by round from a uniform u, checking u and the active set
    against the reference after each; yields ``(t, state)``."""
    u = jnp.full(ref_u.shape[1:], 1.0 / ref_u.shape[-1])
    state = tx.init(u)
    for t in range(len(rewards)):
        updates, state = update(jnp.asarray(-rewards[t], jnp.float32), state, u)
        u = optax.apply_updates(u, updates)
        np.testing.assert_array_equal(np.asarray(state.active), ref_active[t])
        np.testing.assert_allclose(np.asarray(u), ref_u[t], atol=atol)
        yield t, state


def quantized_rewards(seed, steps, forecasters, experts, bound=1.0):
    """Rewards on a grid of bound/8 with spread means: several wipeouts, exact in float32."""
    rng = np.random.default_rng(seed)
    means = rng.uniform(-0.6, 0.6, size=(forecasters, experts))
    raw = means + rng.normal(0, 0.7, size=(steps, forecasters, experts))
    return np.round(raw * 8) / 8 * bound  # some exceed the bound: the clip is exercised


# ----------------------------------------------------------------- exactness


class ExactnessTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters((1.0,), (0.5,))
    def test_matches_float64_algorithm(self, zeta):
        steps, forecasters, experts = 48, 6, 5
        eta, bound = 0.125, 1.0
        rewards = quantized_rewards(0, steps, forecasters, experts, bound)
        ref_u, ref_active, ref_log_v, _ = reference_xnas(rewards, eta, bound, steps, zeta)
        tx = xnas_jax.xnas(eta, bound, steps, zeta)
        for t, state in replay(self.variant(tx.update), tx, rewards, ref_u, ref_active, 1e-6):
            # log v is kept up to a per-forecaster shift (leader at 0).
            shifted = ref_log_v[t] - np.max(np.where(ref_active[t], ref_log_v[t], -np.inf), -1, keepdims=True)
            np.testing.assert_allclose(
                np.where(ref_active[t], np.asarray(state.log_weights), 0),
                np.where(ref_active[t], shifted, 0),
                atol=1e-5,
            )
        wipeouts = np.sum(~ref_active[-1])
        self.assertGreaterEqual(wipeouts, 10, "the test sequence must exercise the wipeout")
        self.assertEqual(int(state.count), steps)

    def test_real_valued_rewards_and_non_uniform_init(self):
        rng = np.random.default_rng(1)
        steps, forecasters, experts = 200, 4, 7
        rewards = rng.normal(0.0, 1.0, size=(steps, forecasters, experts)) + rng.uniform(
            -0.5, 0.5, size=(forecasters, experts)
        )
        u0 = rng.dirichlet(np.ones(experts), size=forecasters)
        ref_u, ref_active, _, _ = reference_xnas(rewards, 0.05, 1.5, steps, 0.7, u0=u0)
        us, actives, _, _ = run_transform(
            xnas_jax.xnas(0.05, 1.5, steps, 0.7), rewards, jnp.asarray(u0, jnp.float32)
        )
        np.testing.assert_allclose(us, ref_u, atol=1e-6)
        np.testing.assert_array_equal(actives, ref_active)
        self.assertGreater(np.sum(~ref_active[-1]), 0)

    def test_rows_sum_to_one_and_wiped_experts_are_exactly_zero(self):
        rewards = quantized_rewards(3, 40, 5, 6)
        us, actives, _, _ = run_transform(
            xnas_jax.xnas(0.25, 1.0, 40), rewards, jnp.full((5, 6), 1 / 6)
        )
        np.testing.assert_allclose(us.sum(-1), 1.0, atol=1e-6)
        self.assertTrue(np.all(us[~actives] == 0.0))
        self.assertTrue(np.all(actives.sum(-1) >= 1))

    def test_after_horizon_only_leaders_survive(self):
        horizon = 10
        rewards = quantized_rewards(4, 25, 3, 4)
        us, actives, log_vs, _ = run_transform(
            xnas_jax.xnas(0.125, 1.0, horizon), rewards, jnp.full((3, 4), 0.25)
        )
        for t in range(horizon - 1, 25):  # round t + 1 >= T
            leaders = np.isclose(np.where(actives[t], log_vs[t], -np.inf), 0.0)
            np.testing.assert_array_equal(actives[t], leaders)

    def test_learning_rate_schedule(self):
        schedule = optax.linear_schedule(0.5, 0.1, 20)
        rewards = quantized_rewards(5, 20, 2, 3)
        us, _, _, final = run_transform(
            xnas_jax.xnas(schedule, 1.0, 20, 1.0), rewards, jnp.full((2, 3), 1 / 3)
        )
        # Each round t uses eta = schedule(t - 1): replay it in float64 by hand.
        log_v = np.zeros((2, 3))
        active = np.ones((2, 3), bool)
        for t in range(1, 21):
            eta = float(schedule(t - 1))
            log_v = np.where(active, log_v + eta * np.clip(rewards[t - 1], -1, 1), log_v)
            leader = np.max(np.where(active, log_v, -np.inf), -1, keepdims=True)
            active &= log_v >= leader - 2 * eta * (20 - t)
        z = np.where(active, np.exp(log_v - log_v.max(-1, keepdims=True)), 0)
        np.testing.assert_allclose(us[-1], z / z.sum(-1, keepdims=True), atol=1e-6)


class PerFeedbackTest(chex.TestCase):
    """Rounds of F feedbacks, each clipped by the transform (Algorithm 1 line 9)."""

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(
        (1, 1.0, None), (2, 1.0, None), (2, 0.3, None), (1, 0.5, 0.0625), (2, 1.0, 0.03125))
    def test_matches_float64_algorithm(self, feedback_axes, zeta, rate):
        steps, forecasters, experts = 40, 5, 6
        feedback_shape = (4,) if feedback_axes == 1 else (2, 3)
        feedbacks = math.prod(feedback_shape)
        rng = np.random.default_rng(feedback_axes)
        means = rng.uniform(-0.8, 0.8, size=(forecasters, experts))
        raw = means + rng.normal(0, 1.2, size=(steps, *feedback_shape, forecasters, experts))
        rewards = np.round(raw * 8) / 8  # a grid of 1/8: exact sums in float32
        eta = (xnas_jax.theoretical_learning_rate(experts, steps, 1.0, feedbacks)
               if rate is None else rate)
        ref_u, ref_active, _, _ = reference_xnas(rewards, eta, 1.0, steps, zeta,
                                                 feedback_axes=feedback_axes)
        tx = xnas_jax.xnas(rate, 1.0, steps, zeta, feedback_axes=feedback_axes)
        for _ in replay(self.variant(tx.update), tx, rewards, ref_u, ref_active, 1e-5):
            pass
        # The clip binds, so clipping the round's sum once would be another algorithm.
        self.assertGreater(np.mean(np.abs(rewards) > 1), 0.1)
        once = reference_xnas(np.clip(rewards.sum(tuple(range(1, 1 + feedback_axes))),
                                      -1, 1)[:, None], eta, 1.0, steps, zeta, feedback_axes=1)
        self.assertFalse(np.allclose(once[0][steps // 2], ref_u[steps // 2], atol=1e-3))
        # Several wipeouts, before the horizon.
        self.assertGreaterEqual(np.sum(~ref_active[steps - 2]), 5)

    def test_one_transform_gives_each_leaf_its_own_rate(self):
        """eta*_c from each leaf's F = r_c B, as the paper's per-cell-type rates."""
        horizon, batch = 30, 4
        u = {"normal": jnp.full((3, 5), 0.2), "reduce": jnp.full((3, 5), 0.2)}
        replicas = {"normal": 3, "reduce": 1}
        rng = np.random.default_rng(0)
        grads = {k: jnp.asarray(rng.normal(0, 2, (r, batch, 3, 5)), jnp.float32)
                 for k, r in replicas.items()}
        for rates in (None, {"normal": None, "reduce": 0.05}):
            tx = xnas_jax.xnas(rates, 1.0, horizon, feedback_axes=2)
            _, state = tx.update(grads, tx.init(u), u)
            for kind, r in replicas.items():
                eta = (0.05 if rates and rates[kind] else
                       xnas_jax.theoretical_learning_rate(5, horizon * r * batch, 1.0))
                reward = np.clip(-np.asarray(grads[kind], np.float64), -1, 1).sum((0, 1))
                want = eta * reward - (eta * reward).max(-1, keepdims=True)
                np.testing.assert_allclose(np.asarray(state.log_weights[kind]), want, atol=1e-5)

    def test_round_rewards_clip_each_feedback_then_sum(self):
        grads = {"a": jnp.asarray([[[3.0, -0.5]], [[-2.0, -0.25]]])}  # (F=2, 1, N=2)
        summed = xnas_jax.round_rewards(grads, 1.0, feedback_axes=1)
        np.testing.assert_allclose(np.asarray(summed["a"]), [[-1.0 + 1.0, 0.5 + 0.25]])
        unclipped = xnas_jax.round_rewards(grads, None, feedback_axes=1)
        np.testing.assert_allclose(np.asarray(unclipped["a"]), [[-1.0, 0.75]])


# ------------------------------------------------------------------- theory


@settings(max_examples=60, deadline=None)
@given(
    experts=st.integers(2, 6),
    steps=st.integers(1, 30),
    log2_eta=st.integers(-5, 1),
    data=st.data(),
)
def test_lemma1_best_expert_in_hindsight_is_never_wiped_out(experts, steps, log2_eta, data):
    # Rewards on a grid of L/4 and eta a power of two keep the float32 run exact,
    # so the boundary case v_i == theta_t is decided as in exact arithmetic.
    grid = data.draw(
        st.lists(st.integers(-6, 6), min_size=steps * experts, max_size=steps * experts)
    )
    rewards = np.array(grid, np.float64).reshape(steps, 1, experts) / 4.0  # some beyond L = 1
    clipped = np.clip(rewards, -1, 1)
    total = clipped.sum(0)[0]
    best = np.flatnonzero(total == total.max())
    tx = xnas_jax.xnas(2.0**log2_eta, 1.0, steps)
    _, actives, _, _ = run_transform(tx, rewards, jnp.full((1, experts), 1 / experts))
    assert actives[:, 0, best].all(), (actives[:, 0], total)


def run_linear_losses(eta, horizon, losses_fn, experts, forecasters, seed):
    """Plays XNAS against linear losses l_t(u) = <c_t, u>, c_t in [0, 1]."""
    tx = xnas_jax.xnas(eta, 1.0, horizon)
    u = jnp.full((forecasters, experts), 1 / experts)
    state = tx.init(u)
    update = jax.jit(tx.update)
    rng = np.random.default_rng(seed)
    forecaster_loss = np.zeros(forecasters)
    expert_loss = np.zeros((forecasters, experts))
    log_gamma = np.zeros(forecasters)
    for _ in range(horizon):
        c = losses_fn(rng, np.asarray(u))
        forecaster_loss += np.sum(np.asarray(u, np.float64) * c, -1)
        expert_loss += c
        before = np.asarray(state.active)
        _, state = update(jnp.asarray(c, jnp.float32), state, u)
        u = xnas_jax.expert_probabilities(state)
        after = np.asarray(state.active)
        v = np.exp(np.asarray(state.log_weights, np.float64))
        wiped = np.sum(np.where(before & ~after, v, 0), -1)
        log_gamma += np.log1p(wiped / np.sum(np.where(after, v, 0), -1))
    regret = forecaster_loss - expert_loss.min(-1)
    bound = eta * horizon / 2 + math.log(experts) / eta - log_gamma / eta
    return regret, bound, log_gamma


@pytest.mark.parametrize("adversary", ["random", "follow_the_leader", "late_switch"])
def test_theorem1_regret_bound(adversary):
    experts, horizon, forecasters = 5, 300, 8
    eta = xnas_jax.theoretical_learning_rate(experts, horizon, 1.0)

    def losses(rng, u):
        if adversary == "random":
            means = np.linspace(0.2, 0.8, experts)
            return np.clip(means + rng.normal(0, 0.3, size=u.shape), 0, 1)
        if adversary == "follow_the_leader":  # the heaviest expert pays, the others do not
            c = np.zeros_like(u, np.float64)
            c[np.arange(u.shape[0]), np.argmax(u + rng.uniform(0, 1e-6, u.shape), -1)] = 1.0
            return c
        # The best expert in hindsight is the worst during the first half.
        c = np.tile(np.linspace(0.3, 0.7, experts), (u.shape[0], 1))
        c[:, -1] = 1.0 if rounds_played[0] < horizon // 2 else 0.0
        rounds_played[0] += 1
        return c

    rounds_played = [0]
    regret, bound, log_gamma = run_linear_losses(eta, horizon, losses, experts, forecasters, 0)
    assert np.all(log_gamma >= 0) and np.all(log_gamma < math.log(experts))  # Lemma 2
    assert np.all(regret <= bound), (regret, bound)
    # The bound is not vacuous here: eq. (4) without wipeout is L sqrt(2 T ln N).
    np.testing.assert_allclose(
        eta * horizon / 2 + math.log(experts) / eta, math.sqrt(2 * horizon * math.log(experts))
    )


# ----------------------------------------------------------- composition


def test_multi_transform_uses_one_rate_per_cell_type():
    rewards = {k: quantized_rewards(i, 12, 14, 7) for i, k in enumerate(["normal", "reduce"])}
    rates = {"normal": 0.125, "reduce": 0.5}
    tx = optax.multi_transform(
        {k: xnas_jax.xnas(rates[k], 1.0, 12) for k in rates}, {k: k for k in rates}
    )
    u = {k: jnp.full((14, 7), 1 / 7) for k in rates}
    state = tx.init(u)
    for t in range(6):  # half the horizon: the forecasters have not collapsed yet
        updates, state = jax.jit(tx.update)(
            {k: jnp.asarray(-rewards[k][t], jnp.float32) for k in rates}, state, u
        )
        u = optax.apply_updates(u, updates)
    found = xnas_jax.find_states(state)
    assert len(found) == 2
    for k in rates:
        ref_u, ref_active, _, _ = reference_xnas(rewards[k], rates[k], 1.0, 12)
        np.testing.assert_allclose(np.asarray(u[k]), ref_u[5], atol=1e-6)
        np.testing.assert_array_equal(np.asarray(found[list(rates).index(k)].active[k]), ref_active[5])
    # The other rate gives another trajectory on the same rewards.
    other = reference_xnas(rewards["normal"], rates["reduce"], 1.0, 12)[0][5]
    assert not np.allclose(other, np.asarray(u["normal"]), atol=1e-3)


def test_chain_and_readers():
    tx = optax.chain(optax.identity(), xnas_jax.xnas(0.1, 1.0, 5))
    u = jnp.full((2, 3), 1 / 3)
    state = tx.init(u)
    (found,) = xnas_jax.find_states(state)
    np.testing.assert_allclose(np.asarray(xnas_jax.expert_probabilities(found)), 1 / 3)
    assert np.asarray(xnas_jax.active_experts(found)).all()


# ------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(learning_rate=0.0, reward_bound=1.0, horizon=10), "learning_rate"),
        (dict(learning_rate=-1e-3, reward_bound=1.0, horizon=10), "learning_rate"),
        (dict(learning_rate=1e-3, reward_bound=0.0, horizon=10), "reward_bound"),
        (dict(learning_rate=1e-3, reward_bound=-2.0, horizon=10), "reward_bound"),
        (dict(learning_rate=1e-3, reward_bound=1.0, horizon=0), "horizon"),
        (dict(learning_rate=1e-3, reward_bound=1.0, horizon=2.5), "horizon"),
        (dict(learning_rate=1e-3, reward_bound=1.0, horizon=10, wipeout_factor=0.0), "wipeout_factor"),
        (dict(learning_rate=1e-3, reward_bound=1.0, horizon=10, wipeout_factor=1.5), "wipeout_factor"),
        (dict(learning_rate=float("nan"), reward_bound=1.0, horizon=10), "learning_rate"),
        (dict(learning_rate={"normal": -1.0}, reward_bound=1.0, horizon=10), "learning_rate"),
        (dict(learning_rate=None, reward_bound=1.0, horizon=10, feedback_axes=-1),
         "feedback_axes"),
        (dict(learning_rate=None, reward_bound=1.0, horizon=10, feedback_axes=1.0),
         "feedback_axes"),
    ],
)
def test_bad_hyper_parameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        xnas_jax.xnas(**kwargs)


@pytest.mark.parametrize(
    "args, name",
    [((1, 10, 1.0), "num_experts"), ((8, 0, 1.0), "horizon"), ((8, 10, 0.0), "reward_bound")],
)
def test_bad_theoretical_rate_arguments(args, name):
    with pytest.raises(ValueError, match=name):
        xnas_jax.theoretical_learning_rate(*args)


@pytest.mark.parametrize("jit", [False, True])
def test_grads_must_match_params(jit):
    tx = xnas_jax.xnas(0.1, 1.0, 5)
    u = {"normal": jnp.full((14, 7), 1 / 7)}
    state = tx.init(u)
    update = jax.jit(tx.update) if jit else tx.update
    with pytest.raises(ValueError, match="grads.*shapes"):
        update({"normal": jnp.zeros((14, 8))}, state, u)
    with pytest.raises(ValueError, match="grads.*tree structure"):
        update({"reduce": jnp.zeros((14, 7))}, state, u)
    with pytest.raises(ValueError, match="needs params"):
        tx.update({"normal": jnp.zeros((14, 7))}, state)


def test_feedback_axes_must_fit_the_gradients():
    u = {"normal": jnp.full((14, 7), 1 / 7)}
    tx = xnas_jax.xnas(None, 1.0, 5, feedback_axes=3)
    with pytest.raises(ValueError, match=r"feedback_axes=3.*\(4, 14, 7\).*\(14, 7\)") as error:
        tx.update({"normal": jnp.zeros((4, 14, 7))}, tx.init(u), u)
    assert "\n" not in str(error.value)
    tx = xnas_jax.xnas({"reduce": 0.1}, 1.0, 5)
    with pytest.raises(ValueError, match="learning_rate must be one rate or a pytree prefix"):
        tx.update({"normal": jnp.zeros((14, 7))}, tx.init(u), u)


def test_paper_learning_rates():
    # Section 3.2.2: CIFAR-10, 50/50 split, 50 epochs, L = 1, 8 experts.
    normal = xnas_jax.theoretical_learning_rate(8, 25_000 * 50 * 6, 1.0)
    reduce = xnas_jax.theoretical_learning_rate(8, 25_000 * 50 * 2, 1.0)
    assert round(normal, 5) == 7.4e-4 and abs(normal - 7.5e-4) < 1e-5
    assert round(reduce, 4) == 1.3e-3


# --------------------------------------------------------------- baseline


def test_softmax_gd_is_gradient_descent_on_logits():
    rng = np.random.default_rng(0)
    alpha = rng.normal(size=(3, 5))
    cost = rng.normal(size=(3, 5))
    u0 = jax.nn.softmax(jnp.asarray(alpha, jnp.float32))
    tx = xnas_jax.softmax_gd(optax.sgd(0.3))
    state = tx.init(u0)
    updates, state = tx.update(jnp.asarray(cost, jnp.float32), state, u0)
    u1 = np.asarray(optax.apply_updates(u0, updates), np.float64)
    # Independent float64 reference: central differences of <c, softmax(alpha)>.
    def softmax(a):
        z = np.exp(a - a.max(-1, keepdims=True))
        return z / z.sum(-1, keepdims=True)

    a64 = np.log(np.asarray(u0, np.float64))
    g = np.zeros_like(a64)
    for idx in np.ndindex(*a64.shape):
        step = np.zeros_like(a64)
        step[idx] = 1e-6
        g[idx] = (np.sum(cost * softmax(a64 + step)) - np.sum(cost * softmax(a64 - step))) / 2e-6
    expected = softmax(a64 - 0.3 * g)
    np.testing.assert_allclose(u1, expected, atol=1e-6)
    # Eq. (6): the effective reward is attenuated by the expert's own weight.
    u = np.asarray(u0, np.float64)
    effective = -u * (cost - np.sum(u * cost, -1, keepdims=True))
    np.testing.assert_allclose(-np.asarray(g), effective, atol=1e-6)


def test_darts_weight_decay_pushes_towards_uniform():
    u0 = jnp.asarray([[0.7, 0.2, 0.1]])
    tx = xnas_jax.darts(learning_rate=0.05, weight_decay=1.0)
    state = tx.init(u0)
    u = u0
    for _ in range(200):
        updates, state = tx.update(jnp.zeros_like(u), state, u)
        u = optax.apply_updates(u, updates)
    entropy = lambda p: float(-(p * np.log(p)).sum())  # noqa: E731
    assert entropy(np.asarray(u[0])) > entropy(np.asarray(u0[0])) + 0.1
    with pytest.raises(ValueError, match="weight_decay"):
        xnas_jax.darts(weight_decay=-1.0)


def test_an_expert_tied_for_best_survives_float32_rounding():
    # Lattice rewards (+-1): an expert whose gap equals the wipeout margin
    # exactly ties for best at T; float32 accumulation must not wipe it out.
    steps, experts = 2000, 8
    p = (jnp.broadcast_to(jnp.linspace(-0.2, 0.1, experts), (steps, 128, experts)) + 1) / 2
    key = jax.random.key(1, impl="threefry2x32")  # the seed of this tie
    rewards = jnp.where(jax.random.bernoulli(key, p), 1.0, -1.0)[:, 108]
    eta = xnas_jax.theoretical_learning_rate(experts, steps, 1.0)
    _, actives, _, _ = run_transform(
        xnas_jax.xnas(eta, 1.0, steps), np.asarray(rewards)[:, None], jnp.full((1, experts), 0.125)
    )
    total = np.asarray(rewards).sum(0)
    best = np.flatnonzero(total == total.max())
    assert len(best) == 2  # the case of interest: a tie in hindsight
    assert actives[-1, 0, best].all()


def test_normalized_entropy():
    u = np.array([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]])
    np.testing.assert_allclose(xnas_jax.normalized_entropy(u), [1.0, 0.0, 0.5], atol=1e-12)
