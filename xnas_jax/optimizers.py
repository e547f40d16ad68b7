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
    "round_rewards",
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


def theoretical_learning_rate(
    num_experts: int, horizon: int, reward_bound: float, feedbacks_per_round: int = 1
) -> float:
    """The learning rate that minimizes XNAS's worst-case regret bound.

    Paper eq. (4): ``eta* = sqrt(2 ln N / (T L^2))``, where T counts the
    gradient feedbacks a forecaster receives.  A forecaster whose weights are
    shared by ``r_c`` cells of type c receives ``T_c = d * E * r_c`` feedbacks
    over E epochs of d validation images (paper section 3.1, "Multiple Learning
    Rates").  When every round of :func:`xnas` delivers F feedbacks at once,
    ``T`` is ``horizon * feedbacks_per_round``.  For CIFAR-10 with a 50/50
    split (d = 25000), E = 50 epochs, clip L = 1, 8 experts, 6 normal and 2
    reduction cells::

      >>> round(theoretical_learning_rate(8, 25_000 * 50 * 6, 1.0), 5)
      0.00074
      >>> round(theoretical_learning_rate(8, 25_000 * 50 * 2, 1.0), 4)
      0.0013

    which are the paper's 7.5e-4 and 1.3e-3 (section 3.2.2).

    Args:
      num_experts: N, the number of experts per forecaster (>= 2).
      horizon: the number of rounds, >= 1.
      reward_bound: L, the bound each feedback's reward is clipped to, > 0.
      feedbacks_per_round: F, the feedbacks each round delivers, >= 1.

    Returns:
      eta* as a Python float.
    """
    _check_int("num_experts", num_experts, minimum=2)
    _check_int("horizon", horizon, minimum=1)
    _check_positive("reward_bound", reward_bound)
    _check_int("feedbacks_per_round", feedbacks_per_round, minimum=1)
    return math.sqrt(2.0 * math.log(num_experts)
                     / (horizon * feedbacks_per_round * reward_bound**2))


def round_rewards(
    grads: optax.Updates, reward_bound: float | None, feedback_axes: int = 0
) -> optax.Updates:
    """One round's reward per expert: the F feedbacks' clipped rewards, summed.

    Each slice of a leaf over its first ``feedback_axes`` axes is one
    feedback's loss gradient ``dl/du``; its reward is ``R_i = -dl/du_i``
    (Algorithm 1 line 8: with ``p = sum_i u_i f_i``, ``dl/du_i = grad_p l . f_i``),
    clipped to ``[-L, L]`` (line 9).  Exponentiated-gradient steps compose by
    adding their rewards, so the F feedbacks of a round are one EG step with
    their sum (line 10), bounded by ``F L``.

    Args:
      grads: a pytree of per-feedback gradients, each leaf of shape
        ``(*feedbacks, *forecasters, N)``.
      reward_bound: L; None sums the rewards unclipped (diagnostics of an
        optimizer without a clip).
      feedback_axes: how many leading axes index feedbacks.

    Returns:
      The summed rewards, each leaf of shape ``(*forecasters, N)``, float32.
    """
    def one(grad):
        reward = -jnp.asarray(grad).astype(jnp.float32)
        if reward_bound is not None:
            reward = jnp.clip(reward, -reward_bound, reward_bound)
        return reward.sum(tuple(range(feedback_axes)))

    return jax.tree.map(one, grads)


def xnas(
    learning_rate: optax.ScalarOrSchedule | None | Any,
    reward_bound: float,
    horizon: int,
    wipeout_factor: float = 1.0,
    *,
    feedback_axes: int = 0,
) -> optax.GradientTransformation:
    """XNAS: exponentiated-gradient experts with wipeout (paper Algorithm 1).

    Every forecaster keeps weights ``v_i`` over its experts and predicts with
    ``u = v / sum(v)`` (line 5).  One ``update`` is one round t.  Each leaf of
    its ``grads`` holds the loss gradients ``dl/du`` of F feedbacks: the first
    ``feedback_axes`` axes index them, the rest has the shape of the params
    leaf (F = 1 when ``feedback_axes = 0``).  Then:

    * every feedback's reward ``R_i = -dl/du_i`` is clipped to ``[-L, L]``
      (lines 8-9) and the F clipped rewards are summed (:func:`round_rewards`);
    * EG step ``v_i <- v_i exp(eta R_i)`` on the active experts (line 10),
      which is the F feedbacks' EG steps composed;
    * wipeout threshold ``theta_t = max_i v_i exp(-2 eta L F (T - t) zeta)``
      (line 12, counted in feedbacks: a round's reward moves a log-weight gap by
      at most ``2 eta L F``; ``zeta`` is the relaxation of section 3.2.1), and
      the experts with ``v_i < theta_t`` leave the active set for good
      (line 13).  The leading expert always satisfies ``v_i >= theta_t``, so no
      forecaster is ever left without an expert; with ``zeta = 1`` the best
      expert in hindsight is never wiped out (Lemma 1).

    ``learning_rate=None`` takes each leaf's own ``eta* = sqrt(2 ln N /
    (T F L^2))`` (eq. 4, :func:`theoretical_learning_rate`), with N its last
    axis and F its feedbacks per round.  One transform over
    ``{"normal": (6, B, 14, N), "reduce": (2, B, 14, N)}`` gradients with
    ``feedback_axes=2`` therefore gives the paper's per-cell-type rates
    (section 3.1, "Multiple Learning Rates"; ``T_c = d E r_c``).  A pytree
    prefix of the params with a rate (or None, or a schedule) at each leaf
    sets the rates per group.

    The active set I_t is the state's ``active`` mask, never ``u > 0``: an
    active expert that trails by more than ~104 nats has ``u = 0`` in float32
    yet still receives rewards, and can recover (section 3.2.1, late bloomers).

    The weights are kept in log space and shifted per forecaster so that the
    leading active expert sits at ``log v = 0``: dividing v by a positive
    per-forecaster constant changes neither u nor the wipeout test (both are
    ratios), and it keeps float32 accurate over any number of rounds.

    After the horizon (t > T) the factor ``T - t`` is taken as 0: the threshold
    equals the leading weight, so each forecaster keeps only its leading
    expert(s) (ties survive).  Already at t = T the algorithm itself wipes out
    every expert below the leader.

    The initial weights are the params passed to ``init`` (``v_0 = u_0``; the
    paper's uniform ``v_0 = 1`` is the uniform ``u_0``); experts whose initial
    weight is 0 start out inactive.  Wiped-out experts get weight exactly 0.

    The returned updates move u to the new weights: ``optax.apply_updates(u,
    updates)`` is the next u.  Transforms of the *gradients* may be chained
    before ``xnas`` (for example one that zeroes a group's rewards); none that
    rescales or shifts the updates may come after it, since the result would
    leave the simplex.

    Args:
      learning_rate: eta > 0, a float or an optax schedule of the round count
        (0-based, like every optax schedule; the threshold uses the current
        rate), None for eta*, or a pytree prefix of the params holding those.
      reward_bound: L > 0, the clip on each feedback's reward.
      horizon: T >= 1, the number of rounds (calls to ``update``) of the search.
      wipeout_factor: zeta in (0, 1]; 1 is the theory's safe threshold,
        smaller values wipe out sooner at the price of the regret guarantee.
      feedback_axes: the leading axes of each gradient leaf that index
        feedbacks (>= 0).

    Returns:
      An ``optax.GradientTransformation`` whose ``update`` needs ``params``
      (the current u) and whose state is an :class:`XNASState`.
    """
    _check_rates(learning_rate)
    _check_positive("reward_bound", reward_bound)
    _check_int("horizon", horizon, minimum=1)
    _check_int("feedback_axes", feedback_axes, minimum=0)
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
        _check_feedback_tree(updates, params, feedback_axes)
        t = state.count + 1
        rewards = round_rewards(updates, reward_bound, feedback_axes)

        def round_fn(rate, grad, reward, log_v, active):
            feedbacks = math.prod(jnp.shape(grad)[:feedback_axes])
            if rate is _THEORETICAL:
                rate = theoretical_learning_rate(jnp.shape(log_v)[-1], horizon, reward_bound,
                                                 feedbacks)
            eta = rate(state.count) if callable(rate) else rate
            # Line 12 (zeta: section 3.2.1), for F feedbacks a round:
            # log theta = max log v - 2 eta L F (T - t) zeta.
            margin = (2.0 * eta * (reward_bound * feedbacks) * jnp.maximum(horizon - t, 0)
                      * wipeout_factor)
            log_v = jnp.where(active, log_v + eta * reward, log_v)  # line 10
            leader = _masked_max(log_v, active)
            # Line 13 wipes out v < theta.  An expert whose gap equals the margin
            # exactly (possible with lattice rewards) may tie for best at T, so a
            # float32 rounding of the accumulated log-weights must not remove it:
            # gaps within ~1e-6 relative count as equal (the safe side of Lemma 1).
            slack = _WIPEOUT_SLACK * (1.0 + margin)
            active = active & (log_v >= leader - margin - slack)  # line 13
            return log_v - leader, active

        per_leaf = jax.tree.map(round_fn, _leaf_rates(learning_rate, params), updates, rewards,
                                state.log_weights, state.active)
        log_weights = jax.tree.map(lambda _, r: r[0], params, per_leaf)
        active = jax.tree.map(lambda _, r: r[1], params, per_leaf)
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


def active_experts(opt_state: Any) -> optax.Params:
    """The active masks I_t of an architecture optimizer's state; same tree as the params.

    ``opt_state`` is the state of :func:`xnas` (its ``active`` masks: experts
    not wiped out, Algorithm 1 line 13) or of :func:`softmax_gd` (every expert
    with a finite logit), bare or inside ``optax.chain``.  The masks, never
    ``u > 0``, say which experts a search computes and rewards: an active
    expert's u can underflow to 0 in float32 long before its wipeout.

    Raises:
      ValueError: the state holds no such state, or several (``multi_transform``).
    """
    is_state = lambda x: isinstance(x, (XNASState, SoftmaxGDState))  # noqa: E731
    found = [leaf for leaf in jax.tree.leaves(opt_state, is_leaf=is_state) if is_state(leaf)]
    if len(found) != 1:
        raise ValueError(f"expected one XNASState or SoftmaxGDState in the optimizer state, "
                         f"found {len(found)}")
    (state,) = found
    if isinstance(state, XNASState):
        return state.active
    return jax.tree.map(jnp.isfinite, state.logits)


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


class _Theoretical:
    """Marks a leaf whose rate is eta*, computed from its shape in ``update``."""

    def __repr__(self) -> str:
        return "eta*"


_THEORETICAL = _Theoretical()


def _is_rate(x: Any) -> bool:
    return x is None or callable(x) or isinstance(x, numbers.Number)


def _check_rates(learning_rate: Any) -> None:
    """Each rate of the (prefix) tree is None, a schedule, or a positive finite number."""
    for rate in jax.tree.leaves(learning_rate, is_leaf=_is_rate):
        if rate is not None and not callable(rate):
            _check_positive("learning_rate", rate)


def _leaf_rates(learning_rate: Any, params: optax.Params) -> Any:
    """The rate of every params leaf (None becomes ``_THEORETICAL``), as a tree like params."""
    prefix = jax.tree.structure(learning_rate, is_leaf=_is_rate)
    try:
        groups = prefix.flatten_up_to(params)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"learning_rate must be one rate or a pytree prefix of the params: {prefix} "
            f"does not prefix {jax.tree.structure(params)}") from error
    rates = jax.tree.leaves(learning_rate, is_leaf=_is_rate)
    return prefix.unflatten([
        jax.tree.map(lambda _, r=rate: _THEORETICAL if r is None else r, group)
        for rate, group in zip(rates, groups)])


def _check_feedback_tree(grads: Any, params: Any, feedback_axes: int) -> None:
    """grads leaves are params leaves with ``feedback_axes`` leading axes of feedbacks."""
    tree_g, tree_p = jax.tree.structure(grads), jax.tree.structure(params)
    if tree_g != tree_p:
        raise ValueError(f"grads must have the tree structure of params: {tree_g} != {tree_p}")
    for grad, param in zip(jax.tree.leaves(grads), jax.tree.leaves(params)):
        g, p = jnp.shape(grad), jnp.shape(param)
        if len(g) != len(p) + feedback_axes or g[feedback_axes:] != p:
            raise ValueError(
                f"grads must have the shapes of params after {feedback_axes} leading feedback "
                f"axes (feedback_axes={feedback_axes}): got {g} for params of shape {p}")


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
    grad_clip: float | None,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    """PyTorch's SGD as DARTS uses it for the network weights (search and training).

    The loss gradient is clipped by its global norm (unless ``grad_clip`` is
    None: NAS-Bench-201's training clips nothing), then the weight decay (on
    every parameter) is added, then momentum (Algorithm 1 line 4 is one step
    of it in the search).
    """
    clip = () if grad_clip is None else (optax.clip_by_global_norm(grad_clip),)
    return optax.chain(
        *clip,
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
