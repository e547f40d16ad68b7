"""Architecture-weight optimizers as optax transformations.

* :func:`xnas` -- the XNAS exponentiated-gradient forecaster with wipeout
  (Nayman et al., "XNAS: Neural Architecture Search with Expert Advice",
  NeurIPS 2019, Algorithm 1).
* :func:`softmax_gd` / :func:`darts` -- the baseline the paper compares with:
  gradient descent on softmax logits (paper eq. 5-6), over the *same*
  parameterization, so a search can switch optimizers without touching the
  network.

Both transforms act on a pytree of mixture weights ``u``.  Each leaf holds one
or more forecasters: the last axis indexes the N experts of a forecaster and
leading axes index independent forecasters (a DARTS cell is shape ``(14, N)``).
Rows sum to one over the active experts.  The gradients they take are
``dL/du`` -- exactly what autodiff gives when the network mixes experts as
``p = sum_i u_i f_i`` -- and the updates they return move ``u`` to the new
weights, so ``optax.apply_updates(u, updates)`` is the next ``u``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "XNASState",
    "SoftmaxGDState",
    "xnas",
    "softmax_gd",
    "darts",
    "theoretical_learning_rate",
    "find_states",
    "expert_probabilities",
    "active_experts",
    "normalized_entropy",
    "weight_optimizer",
    "power_cosine_schedule",
]


class XNASState(NamedTuple):
    """State of :func:`xnas`.

    The per-expert fields are pytrees with the structure of the params.
    """

    count: chex.Array  # shape=(), dtype=jnp.int32. Rounds played, t.
    log_weights: optax.Params  # like params, float32. log v, shifted per forecaster (see xnas).
    active: optax.Params  # like params, bool. The set I_t of experts not wiped out.


class SoftmaxGDState(NamedTuple):
    """State of :func:`softmax_gd`."""

    logits: optax.Params  # like params, float32. alpha, with u = softmax(alpha).
    inner_state: optax.OptState  # state of the optimizer that updates alpha.


def theoretical_learning_rate(num_experts: int, horizon: int, reward_bound: float) -> float:
    """The learning rate that minimizes XNAS's worst-case regret bound.

    Paper eq. (4): ``eta* = sqrt(2 ln N / (T L^2))``, where T counts the
    gradient feedbacks a forecaster receives.  A forecaster whose weights are
    shared by ``r_c`` cells of type c receives ``T_c = d * E * r_c`` feedbacks
    over E epochs of d validation images (paper section 3.1, "Multiple Learning
    Rates").  For CIFAR-10 with a 50/50 split (d = 25000), E = 50 epochs, clip
    L = 1, 8 experts, 6 normal and 2 reduction cells::

      >>> round(theoretical_learning_rate(8, 25_000 * 50 * 6, 1.0), 5)
      0.00074
      >>> round(theoretical_learning_rate(8, 25_000 * 50 * 2, 1.0), 4)
      0.0013

    which are the paper's 7.5e-4 and 1.3e-3 (section 3.2.2).

    Args:
      num_experts: N, the number of experts per forecaster (>= 2).
      horizon: T, the number of rounds (gradient feedbacks), >= 1.
      reward_bound: L, the bound the rewards are clipped to, > 0.

    Returns:
      eta* as a Python float.
    """
    _check_int("num_experts", num_experts, minimum=2)
    _check_int("horizon", horizon, minimum=1)
    _check_positive("reward_bound", reward_bound)
    return math.sqrt(2.0 * math.log(num_experts) / (horizon * reward_bound**2))


def xnas(
    learning_rate: optax.ScalarOrSchedule,
    reward_bound: float,
    horizon: int,
    wipeout_factor: float = 1.0,
) -> optax.GradientTransformation:
    """XNAS: exponentiated-gradient experts with wipeout (paper Algorithm 1).

    Every forecaster keeps weights ``v_i`` over its experts and predicts with
    ``u = v / sum(v)``.  Given ``grads = dL/du``, one update is one round t:

    * reward ``R_i = -dL/du_i``, which equals the paper's projection of the
      loss gradient on the expert's prediction, ``-grad_p L . f_i`` (line 8),
      clipped to ``[-L, L]`` (line 9);
    * EG step ``v_i <- v_i exp(eta R_i)`` on the active experts (line 10);
    * wipeout threshold ``theta_t = max_i v_i exp(-2 eta L (T - t) zeta)``
      (line 12, with the relaxation ``zeta`` of section 3.2.1), and the
      experts with ``v_i < theta_t`` leave the active set for good (line 13).
      The leading expert always satisfies ``v_i >= theta_t``, so no forecaster
      is ever left without an expert; with ``zeta = 1`` the best expert in
      hindsight is never wiped out (Lemma 1).

    The weights are kept in log space and shifted per forecaster so that the
    leading active expert sits at ``log v = 0``: dividing v by a positive
    per-forecaster constant changes neither u nor the wipeout test (both are
    ratios), and it keeps float32 accurate over any number of rounds.

    After the horizon (t > T) the factor ``T - t`` is taken as 0: the threshold
    equals the leading weight, so each forecaster keeps only its leading
    expert(s) (ties survive) and EG continues among them.  Already at t = T the
    algorithm itself wipes out every expert below the leader.

    The initial weights are the params passed to ``init`` (``v_0 = u_0``; the
    paper's uniform ``v_0 = 1`` is the uniform ``u_0``); experts whose initial
    weight is 0 start out inactive.  Wiped-out experts get weight exactly 0.

    Different learning rates for normal and reduction cells (paper section
    3.1) go through ``optax.multi_transform``::

      tx = optax.multi_transform(
          {"normal": xnas(eta_normal, 1.0, horizon_normal),
           "reduce": xnas(eta_reduce, 1.0, horizon_reduce)},
          {"normal": "normal", "reduce": "reduce"})

    Args:
      learning_rate: eta > 0, a float or an optax schedule of the round count
        (0-based, like every optax schedule). The threshold uses the current
        rate.
      reward_bound: L > 0, the clip on the rewards.
      horizon: T >= 1, the number of rounds the search will run.
      wipeout_factor: zeta in (0, 1]; 1 is the theory's safe threshold,
        smaller values wipe out sooner at the price of the regret guarantee.

    Returns:
      An ``optax.GradientTransformation`` whose ``update`` needs ``params``
      (the current u) and whose state is an :class:`XNASState`.
    """
    if not callable(learning_rate):
        _check_positive("learning_rate", learning_rate)
    _check_positive("reward_bound", reward_bound)
    _check_int("horizon", horizon, minimum=1)
    if (
        not isinstance(wipeout_factor, numbers.Real)
        or isinstance(wipeout_factor, bool)
        or not 0.0 < wipeout_factor <= 1.0
    ):
        raise ValueError(f"wipeout_factor must be in (0, 1], got {wipeout_factor!r}")

    def init_fn(params: optax.Params) -> XNASState:
        _check_mixture_tree("params", params)
        log_weights = jax.tree.map(
            lambda u: jnp.where(u > 0, jnp.log(jnp.where(u > 0, u, 1.0)), 0.0).astype(jnp.float32),
            params,
        )
        active = jax.tree.map(lambda u: u > 0, params)
        log_weights = jax.tree.map(_shift_to_leader, log_weights, active)
        return XNASState(count=jnp.zeros([], jnp.int32), log_weights=log_weights, active=active)

    def update_fn(
        updates: optax.Updates, state: XNASState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, XNASState]:
        if params is None:
            raise ValueError("xnas needs params (the current mixture weights u) in update")
        _check_same_tree("grads", updates, "params", params)
        eta = learning_rate(state.count) if callable(learning_rate) else learning_rate
        t = state.count + 1
        # Line 12 (with zeta, section 3.2.1): log theta = max log v - 2 eta L (T - t) zeta.
        margin = 2.0 * eta * reward_bound * jnp.maximum(horizon - t, 0) * wipeout_factor

        def round_fn(grad, log_v, active):
            reward = jnp.clip(-grad.astype(jnp.float32), -reward_bound, reward_bound)  # 8-9
            log_v = jnp.where(active, log_v + eta * reward, log_v)  # line 10
            leader = _masked_max(log_v, active)
            # Line 13 wipes out v < theta.  An expert whose gap equals the margin
            # exactly (possible with lattice rewards) may tie for best at T, so a
            # float32 rounding of the accumulated log-weights must not remove it:
            # gaps within ~1e-6 relative count as equal (the safe side of Lemma 1).
            slack = _WIPEOUT_SLACK * (1.0 + margin)
            active = active & (log_v >= leader - margin - slack)  # line 13
            return log_v - leader, active

        per_leaf = jax.tree.map(round_fn, updates, state.log_weights, state.active)
        log_weights = jax.tree.map(lambda _, r: r[0], updates, per_leaf)
        active = jax.tree.map(lambda _, r: r[1], updates, per_leaf)
        new_u = jax.tree.map(_normalize, log_weights, active)
        new_updates = jax.tree.map(lambda u, p: (u - p).astype(p.dtype), new_u, params)
        new_state = XNASState(
            count=optax.safe_increment(state.count), log_weights=log_weights, active=active
        )
        return new_updates, new_state

    return optax.GradientTransformation(init_fn, update_fn)


def softmax_gd(optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
    """Gradient descent on softmax logits, the baseline of paper eq. (5)-(6).

    DARTS parameterizes each forecaster by logits ``alpha`` with
    ``u = softmax(alpha)`` and runs a generic optimizer on alpha.  This
    transform keeps alpha in its state, so it acts on the same mixture weights
    u as :func:`xnas`: the chain rule turns ``dL/du`` into
    ``dL/dalpha_i = u_i (dL/du_i - sum_j u_j dL/du_j)`` (which, negated, is the
    attenuated reward of eq. 6), ``optimizer`` updates alpha, and the returned
    updates move u to ``softmax(alpha)``.  Experts with ``u = 0`` at init keep
    weight 0 (logit -inf).

    Args:
      optimizer: the transformation applied to the logits, e.g.
        ``optax.sgd(0.1)`` or ``optax.adam(3e-4)``; chain
        ``optax.add_decayed_weights`` before it for L2 weight decay on alpha.

    Returns:
      An ``optax.GradientTransformation`` whose ``update`` needs ``params``.
    """

    def init_fn(params: optax.Params) -> SoftmaxGDState:
        _check_mixture_tree("params", params)
        logits = jax.tree.map(_logits_of, params)
        return SoftmaxGDState(logits=logits, inner_state=optimizer.init(logits))

    def update_fn(
        updates: optax.Updates, state: SoftmaxGDState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, SoftmaxGDState]:
        if params is None:
            raise ValueError("softmax_gd needs params (the current mixture weights u) in update")
        _check_same_tree("grads", updates, "params", params)
        # Grads w.r.t. finite logits only: a -inf logit (an expert with u = 0)
        # must stay at -inf, so it is hidden from the inner optimizer as 0.
        finite = jax.tree.map(jnp.isfinite, state.logits)
        logits_in = jax.tree.map(lambda a, f: jnp.where(f, a, 0.0), state.logits, finite)
        u = jax.tree.map(lambda a: jax.nn.softmax(a, axis=-1), state.logits)
        logit_grads = jax.tree.map(
            lambda g, w, f: jnp.where(
                f, w * (g - jnp.sum(w * g, axis=-1, keepdims=True)), 0.0
            ).astype(jnp.float32),
            updates,
            u,
            finite,
        )
        steps, inner_state = optimizer.update(logit_grads, state.inner_state, logits_in)
        logits = jax.tree.map(
            lambda a, s, f: jnp.where(f, a + s, -jnp.inf), state.logits, steps, finite
        )
        new_u = jax.tree.map(lambda a: jax.nn.softmax(a, axis=-1), logits)
        new_updates = jax.tree.map(lambda w, p: (w - p).astype(p.dtype), new_u, params)
        return new_updates, SoftmaxGDState(logits=logits, inner_state=inner_state)

    return optax.GradientTransformation(init_fn, update_fn)


def darts(
    learning_rate: optax.ScalarOrSchedule = 3e-4,
    weight_decay: float = 1e-3,
    b1: float = 0.5,
    b2: float = 0.999,
) -> optax.GradientTransformation:
    """The DARTS architecture optimizer: Adam on softmax logits with L2 decay.

    DARTS (Liu et al., 2019) updates alpha with Adam (lr 3e-4, betas
    (0.5, 0.999)) and weight decay 1e-3 added to the gradient; the XNAS paper
    argues (section 3.2.2, Figure 2) that this decay pushes u towards uniform.

    Args:
      learning_rate: Adam's step size on the logits.
      weight_decay: coefficient of the L2 term added to the logit gradients.
      b1: Adam's first-moment decay.
      b2: Adam's second-moment decay.

    Returns:
      :func:`softmax_gd` around ``add_decayed_weights`` then ``adam``.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    return softmax_gd(
        optax.chain(
            optax.add_decayed_weights(weight_decay),
            optax.adam(learning_rate, b1=b1, b2=b2),
        )
    )


# ----------------------------------------------------------------- reading state


def find_states(opt_state: Any) -> list[XNASState]:
    """All :class:`XNASState` inside an optimizer state, in tree order.

    Works on the state of a bare :func:`xnas` as well as of ``optax.chain`` or
    ``optax.multi_transform`` around it (one state per labelled group).
    """
    is_state = lambda x: isinstance(x, XNASState)  # noqa: E731
    return [leaf for leaf in jax.tree.leaves(opt_state, is_leaf=is_state) if is_state(leaf)]


def expert_probabilities(state: XNASState) -> optax.Params:
    """The current mixture weights u (rows sum to 1, 0 on wiped-out experts)."""
    return jax.tree.map(_normalize, state.log_weights, state.active)


def active_experts(state: XNASState) -> optax.Params:
    """The boolean active masks (I_t), per forecaster; same tree as the params."""
    return state.active


def normalized_entropy(weights: Any) -> np.ndarray:
    """H(u) / ln N of each forecaster (last axis), with 0 ln 0 = 0, in float64.

    1 is uniform, 0 one-hot; its mean over forecasters is the paper's "mean
    normalized entropy" (Figure 2).
    """
    weights = np.asarray(weights, np.float64)
    plogp = weights * np.log(np.where(weights > 0, weights, 1.0))
    return -plogp.sum(axis=-1) / math.log(weights.shape[-1])


# ----------------------------------------------------------------------- helpers

_WIPEOUT_SLACK = 1e-6  # relative float32 tolerance of the wipeout test


def _masked_max(log_v: jax.Array, active: jax.Array) -> jax.Array:
    return jnp.max(jnp.where(active, log_v, -jnp.inf), axis=-1, keepdims=True)


def _shift_to_leader(log_v: jax.Array, active: jax.Array) -> jax.Array:
    leader = _masked_max(log_v, active)
    return log_v - jnp.where(jnp.isfinite(leader), leader, 0.0)


def _normalize(log_v: jax.Array, active: jax.Array) -> jax.Array:
    z = jnp.where(active, jnp.exp(log_v - _masked_max(log_v, active)), 0.0)
    return z / jnp.sum(z, axis=-1, keepdims=True)


def _logits_of(u: jax.Array) -> jax.Array:
    return jnp.where(u > 0, jnp.log(jnp.where(u > 0, u, 1.0)), -jnp.inf).astype(jnp.float32)


def _check_positive(name: str, value: Any) -> None:
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_mixture_tree(name: str, tree: Any) -> None:
    leaves = jax.tree.leaves(tree)
    if not leaves:
        raise ValueError(f"{name} holds no arrays: expected a pytree of mixture weights")
    for leaf in leaves:
        shape = jnp.shape(leaf)
        if len(shape) < 1 or shape[-1] < 1:
            raise ValueError(
                f"{name} leaves must have a last axis of experts, got a leaf of shape {shape}"
            )


def _check_same_tree(name_a: str, a: Any, name_b: str, b: Any) -> None:
    tree_a, tree_b = jax.tree.structure(a), jax.tree.structure(b)
    if tree_a != tree_b:
        raise ValueError(f"{name_a} must have the tree structure of {name_b}: {tree_a} != {tree_b}")
    for leaf_a, leaf_b in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        if jnp.shape(leaf_a) != jnp.shape(leaf_b):
            raise ValueError(
                f"{name_a} must have the shapes of {name_b}: "
                f"{jnp.shape(leaf_a)} != {jnp.shape(leaf_b)}"
            )


# --------------------------------------------------------------------------
# The network weights' optimizer and schedules, shared by search and training.


def weight_optimizer(
    learning_rate: optax.ScalarOrSchedule,
    *,
    momentum: float,
    weight_decay: float,
    grad_clip: float,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    """PyTorch's SGD as DARTS uses it for the network weights (search and training).

    The loss gradient is clipped by its global norm, then the weight decay
    (on every parameter) is added, then momentum (Algorithm 1 line 4 is one
    step of it in the search).
    """
    return optax.chain(
        optax.clip_by_global_norm(grad_clip),
        optax.add_decayed_weights(weight_decay),
        optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov),
    )


def power_cosine_schedule(
    peak_value: float,
    total_steps: int,
    cycles: int = 1,
    cycle_decay: float = 0.5,
    exponent: float = 10.0,
    end_value: float = 0.0,
) -> optax.Schedule:
    """Cycles of power-cosine annealing (Hundt et al., sharpDARTS, 2019).

    Used by XNAS section 4.2 ("5 cycles of power cosine annealing learning
    rate, with amplitude decay factor of 0.5 per cycle").  Within a cycle of
    ``T`` steps, with ``c(t) = (1 + cos(pi t / T)) / 2`` the cosine proportion,
    the rate is ``end + (peak_k - end) * (exponent**c - 1) / (exponent - 1)``:
    it leaves the peak faster than cosine annealing and lingers less at the
    end; ``exponent = 1`` is plain cosine annealing.  The k-th cycle's peak is
    ``peak_value * cycle_decay**k``.

    Args:
      peak_value: the first cycle's initial rate.
      total_steps: steps of the whole run (split into equal cycles).
      cycles: the number of cycles, >= 1.
      cycle_decay: peak multiplier from one cycle to the next.
      exponent: the power curve's base, >= 1.
      end_value: the rate at the end of every cycle.

    Returns:
      An optax schedule (step -> rate); steps past the end keep ``end_value``.
    """
    if cycles < 1 or total_steps < cycles:
        raise ValueError(
            f"need 1 <= cycles <= total_steps, got cycles={cycles}, total_steps={total_steps}"
        )
    if exponent < 1:
        raise ValueError(f"exponent must be >= 1, got {exponent}")
    cycle_steps = total_steps / cycles

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        step = jnp.minimum(jnp.asarray(step, jnp.float32), total_steps)
        cycle = jnp.minimum(jnp.floor(step / cycle_steps), cycles - 1)
        progress = (step - cycle * cycle_steps) / cycle_steps
        cosine = (1 + jnp.cos(jnp.pi * progress)) / 2
        if exponent == 1:
            proportion = cosine
        else:
            proportion = (jnp.power(exponent, cosine) - 1) / (exponent - 1)
        peak = peak_value * jnp.power(cycle_decay, cycle)
        return end_value + (peak - end_value) * proportion

    return schedule
