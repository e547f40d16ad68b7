"""A prediction-with-expert-advice (PEA) harness for the optimizers' functional units.

The paper studies XNAS as a forecaster that mixes N experts with weights ``u``
(section 2.2) and measures it by its regret (section 3.1, eq. 2).  This module
plays any of the architecture optimizers of :mod:`xnas_jax.optimizers` against
a given sequence of *linear* losses ``l_t(u) = <c_t, u>``, where ``c_{t,i}`` is
the loss of expert i at round t.  Then ``dL/du = c_t`` is the gradient the
optimizers take, and XNAS's reward is ``R_t = -c_t`` clipped to ``[-L, L]``
(Algorithm 1, lines 8-9).

Many independent forecasters (seeds, edges of a cell, ...) are played at once:
a loss sequence has shape ``(T, *forecasters, N)`` and the optimizers already
treat the leading axes of ``u`` as independent forecasters.  The whole run is
one ``jax.lax.scan`` (over record intervals, each an inner scan over rounds)
under ``jax.jit``; its records come back to the host as NumPy arrays, and
everything measured from them (regret, bound, entropy) is NumPy, so reporting
compiles nothing.

Adding the same constant to every expert's loss at a round changes neither the
regret nor any optimizer's update (u is normalized, softmax is shift
invariant) as long as no reward gets clipped, so the losses need not be
non-negative for Theorem 1 to apply.

The scripts that use it (``python -m experiments.paper.NAME``) share :func:`cli`:
each has a ``run(...)`` that returns a JSON-ready dict of numbers (and short
curves), a ``plot(result, path)`` that draws the figure from that dict, and a
``main(argv) -> int`` that runs at full size and writes both (:func:`save`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import experiments
from xnas_jax import cli as cli_lib
from xnas_jax.optimizers import (
    darts,
    find_states,
    normalized_entropy,
    softmax_gd,
    theoretical_learning_rate,
    xnas,
)

__all__ = [
    "Rollout",
    "play",
    "regret",
    "best_in_hindsight",
    "regret_bound",
    "normalized_entropy",
    "mean_normalized_entropy",
    "uniform_weights",
    "noisy_linear_losses",
    "bernoulli_linear_losses",
    "OPTIMIZER_NAMES",
    "compared_optimizers",
    "compared_learning_rates",
    "record_interval",
    "recovery_rounds",
    "median_round",
    "spread",
    "as_list",
    "figure",
    "save_figure",
    "save",
    "cli",
]


class Rollout(NamedTuple):
    """What :func:`play` records after rounds ``k, 2k, ..., T`` (k = ``record_every``).

    R is the number of records, ``F`` the forecaster axes, N the experts.
    Cumulative fields sum over all rounds up to the record, not only recorded ones.
    The fields are NumPy arrays on the host.
    """

    rounds: np.ndarray  # shape=(R,), int32. The round t after which each record was taken.
    weights: np.ndarray  # shape=(R, *F, N), float32. The mixture weights u_t.
    active: np.ndarray  # shape=(R, *F, N), bool. I_t; for optimizers without wipeout, u_0 > 0.
    regret_to_experts: np.ndarray  # shape=(R, *F, N), float32. L_t - L_{t,i} (eq. 2).
    log_wipeout_factor: np.ndarray  # shape=(R, *F), float32. ln gamma_t = sum_s ln Gamma_s.
    evaluations_saved: np.ndarray  # shape=(R, *F), float32. sum_s (N - |I_{s-1}|).


def play(
    transform: optax.GradientTransformation,
    initial_weights: jax.Array,
    expert_losses: jax.Array,
    record_every: int = 1,
) -> Rollout:
    """Plays ``transform`` for T rounds against the linear losses ``expert_losses``.

    Round t (1-based) follows Algorithm 1: the forecaster predicts with
    ``u_{t-1}`` and suffers ``<c_t, u_{t-1}>``; then ``grads = c_t`` (the
    gradient of the linear loss with respect to u) go through
    ``transform.update`` and ``optax.apply_updates`` gives ``u_t``.  The experts
    evaluated at round t are the active set ``I_{t-1}`` that predicted, so the
    evaluations saved at round t are ``N - |I_{t-1}|``.

    For XNAS the wipeout factor of the round (paper section 3.1),
    ``Gamma_t = 1 + sum_{i in I_{t-1} minus I_t} v_{t,i} / sum_{i in I_t} v_{t,i}``,
    is read from the state's log-weights, which hold ``ln v_t`` (after the EG
    step, up to a per-forecaster shift that cancels in the ratio) for the
    experts wiped out at t as well as for the remaining ones.

    Args:
      transform: an optimizer over mixture weights, e.g. ``xnas(...)``,
        ``softmax_gd(optax.sgd(...))`` or ``darts(...)``.
      initial_weights: u_0, shape ``(*F, N)`` with rows summing to 1.
      expert_losses: c_1..c_T, shape ``(T, *F, N)`` or any shape ``(T, ...)``
        that broadcasts to it (e.g. ``(T, 1, seeds, N)`` to give several
        initializations the same draws).
      record_every: k, the interval between records; must divide T.

    Returns:
      A :class:`Rollout` with ``T // k`` records.
    """
    initial_weights = np.asarray(initial_weights, np.float32)
    num_rounds = np.shape(expert_losses)[0]
    loss_shape = np.shape(expert_losses)[1:]
    if len(loss_shape) != initial_weights.ndim or np.broadcast_shapes(
        loss_shape, initial_weights.shape
    ) != initial_weights.shape:
        raise ValueError(
            "expert_losses must have a shape (T, ...) broadcasting to (T, *initial_weights.shape), "
            f"got {np.shape(expert_losses)} for initial_weights of shape {initial_weights.shape}"
        )
    if not isinstance(record_every, int) or record_every < 1 or num_rounds % record_every:
        raise ValueError(
            f"record_every must be a positive divisor of T = {num_rounds}, got {record_every!r}"
        )
    expert_rounds = num_rounds * initial_weights.size
    play_fn = _play_cheap_compile if expert_rounds < _CHEAP_COMPILE_BELOW else _play
    records = play_fn(transform, record_every, initial_weights, expert_losses)
    return Rollout(*jax.device_get(records))


def _play_impl(
    transform: optax.GradientTransformation,
    record_every: int,
    initial_weights: jax.Array,
    expert_losses: jax.Array,
) -> Rollout:
    num_experts = initial_weights.shape[-1]
    always_active = initial_weights > 0
    expert_losses = jnp.broadcast_to(
        expert_losses.astype(jnp.float32), expert_losses.shape[:1] + initial_weights.shape
    )

    def active_of(opt_state):
        # Which experts are active is static structure: only XNAS has a state for it.
        states = find_states(opt_state)
        return states[0].active if states else always_active

    def round_fn(carry, loss):
        u, opt_state, regret_to_experts, log_gamma, saved = carry
        prev_active = active_of(opt_state)
        # Predict with u_{t-1} and suffer <c_t, u_{t-1}>; then update on dL/du = c_t.
        forecaster_loss = jnp.sum(loss * u, axis=-1, keepdims=True)
        updates, opt_state = transform.update(loss, opt_state, u)
        u = optax.apply_updates(u, updates)
        xnas_states = find_states(opt_state)
        if xnas_states:
            (state,) = xnas_states
            log_gamma += _log_wipeout_factor(state.log_weights, prev_active, state.active)
        saved = saved + (num_experts - jnp.sum(prev_active, axis=-1))
        regret_to_experts = regret_to_experts + (forecaster_loss - loss)
        return (u, opt_state, regret_to_experts, log_gamma, saved), None

    def record_fn(carry, losses):
        carry, _ = jax.lax.scan(round_fn, carry, losses)
        u, opt_state, regret_to_experts, log_gamma, saved = carry
        return carry, (u, active_of(opt_state), regret_to_experts, log_gamma, saved)

    forecaster_shape = initial_weights.shape[:-1]
    carry = (
        initial_weights,
        transform.init(initial_weights),
        jnp.zeros(initial_weights.shape, jnp.float32),
        jnp.zeros(forecaster_shape, jnp.float32),
        jnp.zeros(forecaster_shape, jnp.float32),
    )
    num_records = expert_losses.shape[0] // record_every
    chunks = expert_losses.reshape((num_records, record_every) + expert_losses.shape[1:])
    _, records = jax.lax.scan(record_fn, carry, chunks)
    rounds = record_every * jnp.arange(1, num_records + 1, dtype=jnp.int32)
    return Rollout(rounds, *records)


# The transform and the record interval are static: a transform object compiles once per shape.
_play = jax.jit(_play_impl, static_argnums=(0, 1))
# Small runs are compile-bound: an optimizer's scan compiles in about a second on a CPU and
# then runs in milliseconds.  Below this many expert-rounds (T * forecasters * N), XLA's
# cheap compile mode halves the compile time at the price of a slower run.
_CHEAP_COMPILE_BELOW = 2**22
_play_cheap_compile = jax.jit(
    _play_impl,
    static_argnums=(0, 1),
    compiler_options={
        "xla_backend_optimization_level": 0,
        "xla_llvm_disable_expensive_passes": True,
    },
)


def _log_wipeout_factor(log_weights: jax.Array, prev_active: jax.Array, active: jax.Array):
    # The leading active expert sits at log v = 0, so exp cannot overflow.
    v = jnp.where(prev_active, jnp.exp(jnp.minimum(log_weights, 0.0)), 0.0)
    wiped = jnp.sum(jnp.where(prev_active & ~active, v, 0.0), axis=-1)
    remaining = jnp.sum(jnp.where(active, v, 0.0), axis=-1)
    return jnp.log1p(wiped / remaining)


# --------------------------------------------------------------------- measures


def regret(rollout: Rollout) -> np.ndarray:
    """Regret_t = L_t - min_i L_{t,i} (paper eq. 2), shape ``(R, *F)``."""
    return rollout.regret_to_experts.max(axis=-1)


def best_in_hindsight(rollout: Rollout) -> np.ndarray:
    """The expert with the least cumulative loss so far, shape ``(R, *F)``."""
    return rollout.regret_to_experts.argmax(axis=-1)


def regret_bound(
    learning_rate: float,
    rounds: np.ndarray | float,
    reward_bound: float,
    num_experts: int,
    log_wipeout_factor: np.ndarray | float = 0.0,
) -> np.ndarray:
    """Theorem 1: ``eta T L^2 / 2 + ln(N) / eta - ln(gamma_T) / eta`` (paper eq. 3)."""
    eta = learning_rate
    return (
        eta * np.asarray(rounds, np.float64) * reward_bound**2 / 2.0
        + math.log(num_experts) / eta
        - np.asarray(log_wipeout_factor, np.float64) / eta
    )


def mean_normalized_entropy(weights: np.ndarray) -> float:
    """The mean of :func:`normalized_entropy` over every forecaster in ``weights``."""
    return float(normalized_entropy(weights).mean())


# ------------------------------------------------------------------- loss setups


def uniform_weights(forecaster_shape: Sequence[int], num_experts: int) -> np.ndarray:
    """u_0 = 1/N for every forecaster (the paper's v_0 = 1)."""
    return np.full(tuple(forecaster_shape) + (num_experts,), 1.0 / num_experts, np.float32)


def noisy_linear_losses(
    rng: np.random.Generator,
    mean_rewards: np.ndarray,
    noise: float,
    reward_bound: float,
    shape: tuple[int, ...],
) -> np.ndarray:
    """Expert losses ``c = -clip(mean + noise * z, -L, L)`` with z standard Gaussian.

    Clipping is monotone, so the order of the experts' expected rewards is the
    order of their means.  The draws come from NumPy: an XLA-compiled PRNG
    would cost seconds of compile time per shape, more than a run.

    Args:
      rng: the NumPy generator to draw z from.
      mean_rewards: expected (unclipped) rewards, broadcastable to ``shape``.
      noise: standard deviation of the Gaussian noise.
      reward_bound: L, the clip.
      shape: the shape of the losses, ``(T, *F, N)``.

    Returns:
      float32 losses of shape ``shape``, in ``[-L, L]``.
    """
    z = rng.standard_normal(shape, dtype=np.float32)
    rewards = np.asarray(mean_rewards, np.float32) + np.float32(noise) * z
    return -np.clip(rewards, -reward_bound, reward_bound).astype(np.float32)


def bernoulli_linear_losses(
    rng: np.random.Generator,
    mean_rewards: np.ndarray,
    reward_bound: float,
    shape: tuple[int, ...],
) -> np.ndarray:
    """Expert losses ``c = -R`` with rewards ``R = +-L`` and ``E[R] = mean``.

    The noisiest rewards a bound L allows: ``P(R = L) = (1 + mean / L) / 2``.

    Args:
      rng: the NumPy generator to draw from.
      mean_rewards: expected rewards in ``[-L, L]``, broadcastable to ``shape``.
      reward_bound: L.
      shape: the shape of the losses, ``(T, *F, N)``.

    Returns:
      float32 losses of shape ``shape``, each ``-L`` or ``L``.
    """
    win_probability = (1.0 + np.asarray(mean_rewards, np.float32) / reward_bound) / 2.0
    wins = rng.random(shape, dtype=np.float32) < win_probability
    return np.where(wins, -reward_bound, reward_bound).astype(np.float32)


# ------------------------------------------------------------------- optimizers


OPTIMIZER_NAMES = ("XNAS", "SGD on alpha", "Adam on alpha")


def compared_optimizers(
    num_experts: int,
    horizon: int,
    reward_bound: float,
    sgd_scale: float = 1.0,
    adam_scale: float = 1.0,
    names: Sequence[str] = OPTIMIZER_NAMES,
) -> dict[str, optax.GradientTransformation]:
    """XNAS and the two baselines, with the learning rates every experiment uses.

    * ``XNAS``: :func:`~xnas_jax.optimizers.xnas` at the theoretical rate
      ``eta* = sqrt(2 ln N / (T L^2))`` (paper eq. 4), wipeout factor 1.
    * ``SGD on alpha``: gradient descent on the softmax logits (paper eq. 5-6)
      at rate ``N eta*`` (times ``sgd_scale``).  At uniform u its logit step is
      ``(N eta* / N) (R_i - mean R)``, so its first step moves u exactly as
      XNAS's does; afterwards the two differ by the attenuation ``u_i`` of
      eq. (6) only.
    * ``Adam on alpha``: the paper's "generic optimizer", DARTS' Adam (betas
      0.5, 0.999) on the logits without weight decay, at rate ``eta*`` (times
      ``adam_scale``): Adam moves a logit by about its rate per round.

    Args:
      num_experts: N.
      horizon: T.
      reward_bound: L.
      sgd_scale: a multiple of SGD's default rate.
      adam_scale: a multiple of Adam's default rate.
      names: which of :data:`OPTIMIZER_NAMES` to build (tests build fewer).

    Returns:
      The transforms, keyed by the names the figures use, in the order of ``names``.
    """
    unknown = set(names) - set(OPTIMIZER_NAMES)
    if unknown:
        raise ValueError(f"names must be among {OPTIMIZER_NAMES}, got unknown {sorted(unknown)}")
    eta = theoretical_learning_rate(num_experts, horizon, reward_bound)
    factories = {
        "XNAS": lambda: xnas(eta, reward_bound, horizon),
        "SGD on alpha": lambda: softmax_gd(optax.sgd(num_experts * eta * sgd_scale)),
        "Adam on alpha": lambda: darts(eta * adam_scale, weight_decay=0.0),
    }
    return {name: factories[name]() for name in names}


def compared_learning_rates(
    num_experts: int,
    horizon: int,
    reward_bound: float,
    sgd_scale: float = 1.0,
    adam_scale: float = 1.0,
) -> dict[str, float]:
    """The learning rates of :func:`compared_optimizers`, for the JSON."""
    eta = theoretical_learning_rate(num_experts, horizon, reward_bound)
    return {
        "XNAS": eta,
        "SGD on alpha": num_experts * eta * sgd_scale,
        "Adam on alpha": eta * adam_scale,
    }


# ------------------------------------------------------------------ reporting


def record_interval(num_rounds: int, max_records: int = 200) -> int:
    """The smallest divisor k of T with at most ``max_records`` records (T / k)."""
    for k in range(1, num_rounds + 1):
        if num_rounds % k == 0 and num_rounds // k <= max_records:
            return k
    return num_rounds


def recovery_rounds(condition: jax.Array, rounds: jax.Array) -> np.ndarray:
    """Per forecaster, the first recorded round from which ``condition`` holds for good.

    Args:
      condition: bool, shape ``(R, *F)``.
      rounds: the recorded rounds, shape ``(R,)``.

    Returns:
      int array of shape ``F``; -1 where the condition does not hold at the end.
    """
    condition = np.asarray(condition)
    rounds = np.asarray(rounds)
    fails = ~condition
    # The index of the last record where it fails; it holds for good after that one.
    last_fail = np.where(fails.any(axis=0), len(rounds) - 1 - np.argmax(fails[::-1], axis=0), -1)
    first = rounds[np.minimum(last_fail + 1, len(rounds) - 1)]
    return np.where(condition[-1], first, -1)


def median_round(recovery: np.ndarray) -> int | None:
    """The median of :func:`recovery_rounds`, counting "never" (-1) as infinite.

    Returns None when at least half of the forecasters never recover.
    """
    recovery = np.asarray(recovery, np.float64).ravel()
    median = float(np.median(np.where(recovery < 0, np.inf, recovery)))
    return int(round(median)) if math.isfinite(median) else None


def spread(values: jax.Array) -> dict[str, list[float]]:
    """Mean and 10%/90% quantiles over forecasters of a ``(R, *F)`` curve, as lists."""
    values = np.asarray(values, np.float64).reshape(np.shape(values)[0], -1)
    return {
        "mean": as_list(values.mean(axis=1)),
        "q10": as_list(np.quantile(values, 0.1, axis=1)),
        "q90": as_list(np.quantile(values, 0.9, axis=1)),
    }


def as_list(values: Any, digits: int = 6) -> list[float]:
    """A float array as a JSON-ready list, rounded to ``digits`` significant digits."""
    return [float(f"{v:.{digits}g}") for v in np.asarray(values, np.float64).ravel()]


# ------------------------------------------------------------------- figures

# The same colour for an optimizer in every figure.
COLORS = {"XNAS": "tab:red", "SGD on alpha": "tab:blue", "Adam on alpha": "tab:green"}
LABELS = {
    "XNAS": "XNAS",
    "SGD on alpha": r"GD on softmax logits $\alpha$ (SGD)",
    "Adam on alpha": r"Adam on softmax logits $\alpha$",
}


def figure(ncols: int, width: float = 6.0, height: float = 4.2):
    """A row of ``ncols`` axes on a non-interactive (Agg) canvas."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return fig, list(axes[0])


def save_figure(fig, path: str, title: str) -> None:
    """Adds the title, lays the figure out and writes it as a PNG."""
    import matplotlib.pyplot as plt

    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def save(name: str, result: dict[str, Any], plot: Callable[[dict[str, Any], str], None],
         out: str | Path) -> tuple[Path, Path]:
    """Writes ``result`` as ``out/NAME.json`` and its figure as ``out/NAME.png``.

    Returns:
      The two paths.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / f"{name}.json", out / f"{name}.png"
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, str(png_path))
    return json_path, png_path


def cli(
    module: str,
    doc: str,
    run: Callable[..., dict[str, Any]],
    plot: Callable[[dict[str, Any], str], None],
    argv: Sequence[str] | None = None,
) -> int:
    """The shared ``main`` of ``python -m MODULE``: parses ``--out`` and ``--seed``, runs at
    full size and writes NAME.json and NAME.png (NAME: the module's last part).

    Args:
      module: the module's dotted name (``__spec__.name``).
      doc: its docstring; the first line describes it in ``--help``.
      run: its ``run(seed=...)``.
      plot: its ``plot(result, path)``.
      argv: the command line (default: ``sys.argv[1:]``).

    Returns:
      0; bad input ends in one line ``error: ...`` and exit status 2.
    """
    parser = experiments.argument_parser(module, doc)
    experiments.add_out(parser)
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        out = cli_lib.writable_dir(args.out, "--out")
    except ValueError as error:
        cli_lib.fail(str(error))
    json_path, png_path = save(module.rsplit(".", 1)[-1], run(seed=args.seed), plot, out)
    print(f"wrote {json_path} and {png_path}")
    return 0
