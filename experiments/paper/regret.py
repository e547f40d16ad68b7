"""Regret and correct selection: XNAS against gradient descent and Adam on softmax logits.

Paper section 3.1 (illustrated in its supplementary section 8.3): XNAS's regret
obeys Theorem 1, ``Regret_T <= eta T L^2 / 2 + ln(N) / eta - ln(gamma_T) / eta``,
and its regret relates to how often it selects the right expert.  Here each
forecaster faces stochastic rewards; we measure the regret (eq. 2) over time,
the Theorem 1 bound of every XNAS forecaster (with its own gamma_t read from the
wipeouts), and the rate of correct selection (argmax u is the expert with the
highest expected reward).

Setup (also written to the JSON): N = 8 experts, T = 2000 rounds, 256
independent forecasters (seeds), uniform u_0, Bernoulli rewards ``R = +-1``
(L = 1, the noisiest bounded rewards) with expected rewards evenly spaced in
[-0.2, 0.1]; expert 7 is the best, 0.043 ahead of the runner-up.  XNAS runs at
the theoretical rate eta* (eq. 4); the baselines' rates follow
:func:`experiments.paper.pea.compared_optimizers` and are also swept over 1/4 and 4
times those rates.

The bound is evaluated at every t with horizon t: the argument of Theorem 1
holds at any t <= T because an expert wiped out at s trails the leader by more
than ``2 L (T - s)`` in cumulative reward, so it is not the best expert at t.

Run: ``python -m experiments.paper.regret [--out experiments/results] [--seed 0]``.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

import numpy as np
import optax

from experiments.paper import pea
from xnas_jax.optimizers import darts, softmax_gd, theoretical_learning_rate

NAME = "regret"


def run(
    num_rounds: int = 2000,
    num_seeds: int = 256,
    num_experts: int = 8,
    seed: int = 0,
    expected_rewards: tuple[float, float] = (-0.2, 0.1),
    sgd_scales: Sequence[float] = (0.25, 4.0),
    adam_scales: Sequence[float] = (0.25, 4.0),
    optimizers: Sequence[str] = pea.OPTIMIZER_NAMES,
) -> dict[str, Any]:
    """Plays the three optimizers on Bernoulli rewards; measures regret and selection.

    Args:
      num_rounds: T.
      num_seeds: the number of independent forecasters (reward draws).
      num_experts: N; the last one has the highest expected reward.
      seed: PRNG seed of the rewards.
      expected_rewards: the lowest and highest expected reward (evenly spaced).
      sgd_scales: extra multiples of SGD's learning rate to run (the sweep).
      adam_scales: extra multiples of Adam's learning rate to run (the sweep).
      optimizers: which of :data:`experiments.paper.pea.OPTIMIZER_NAMES` to compare; XNAS is
        always run (the bound check needs it).

    Returns:
      A JSON-ready dict: setup, per-optimizer numbers, the bound check, sweeps and curves.
    """
    reward_bound = 1.0
    best_index = num_experts - 1
    means = np.linspace(expected_rewards[0], expected_rewards[1], num_experts, dtype=np.float32)
    losses = pea.bernoulli_linear_losses(
        np.random.default_rng(seed), means, reward_bound, shape=(num_rounds, num_seeds, num_experts)
    )
    initial = pea.uniform_weights((num_seeds,), num_experts)
    record_every = pea.record_interval(num_rounds)
    eta = theoretical_learning_rate(num_experts, num_rounds, reward_bound)
    rates = pea.compared_learning_rates(num_experts, num_rounds, reward_bound)

    def summarize(rollout: pea.Rollout) -> dict[str, Any]:
        final_regret = pea.regret(rollout)[-1]
        correct = rollout.weights.argmax(axis=-1) == best_index
        return {
            "final_regret_mean": float(final_regret.mean()),
            "final_regret_q90": float(np.quantile(final_regret, 0.9)),
            "final_regret_max": float(final_regret.max()),
            "final_correct_selection_rate": float(correct[-1].mean()),
            "correct_selection_rate_at_half": float(correct[len(correct) // 2 - 1].mean()),
        }

    summaries, regret_curves, correct_curves = {}, {}, {}
    names = ["XNAS"] + [name for name in optimizers if name != "XNAS"]
    compared = pea.compared_optimizers(num_experts, num_rounds, reward_bound, names=names)
    for name, transform in compared.items():
        rollout = pea.play(transform, initial, losses, record_every)
        summaries[name] = {"learning_rate": rates[name], **summarize(rollout)}
        regret_curves[name] = pea.spread(pea.regret(rollout))
        correct_curves[name] = pea.as_list(
            (rollout.weights.argmax(axis=-1) == best_index).mean(axis=1)
        )
        if name == "XNAS":
            xnas_regret = pea.regret(rollout)
            bound = pea.regret_bound(
                eta, rollout.rounds[:, None], reward_bound, num_experts, rollout.log_wipeout_factor
            )
            excess = xnas_regret - bound
            bound_check = {
                "bound_at_T_mean": float(bound[-1].mean()),
                "bound_at_T_without_wipeout": float(
                    pea.regret_bound(eta, num_rounds, reward_bound, num_experts)
                ),
                "log_gamma_T_mean": float(rollout.log_wipeout_factor[-1].mean()),
                "max_regret_minus_bound_at_T": float(excess[-1].max()),
                "max_regret_minus_bound_any_t": float(excess.max()),
                "fraction_of_forecasters_over_bound_at_T": float((excess[-1] > 0).mean()),
            }
            bound_curve = pea.as_list(bound.mean(axis=1))

    sweeps = {"SGD on alpha": [], "Adam on alpha": []}
    for name, scales, make in (
        ("SGD on alpha", sgd_scales, lambda s: softmax_gd(optax.sgd(num_experts * eta * s))),
        ("Adam on alpha", adam_scales, lambda s: darts(eta * s, weight_decay=0.0)),
    ):
        for scale in sorted(set(scales) | ({1.0} if scales else set())):
            if scale == 1.0 and name in summaries:
                numbers = {k: v for k, v in summaries[name].items() if k != "learning_rate"}
            else:
                numbers = summarize(pea.play(make(scale), initial, losses, record_every))
            sweeps[name].append({"scale": scale, "learning_rate": rates[name] * scale, **numbers})

    return {
        "experiment": NAME,
        "claim": "XNAS's regret stays under the Theorem 1 bound; its correct-selection rate "
        "ends at least as high as softmax-GD's",
        "setup": {
            "num_rounds": num_rounds,
            "num_seeds": num_seeds,
            "num_experts": num_experts,
            "seed": seed,
            "reward_bound": reward_bound,
            "rewards": "+L with probability (1 + mean / L) / 2, else -L; loss = -reward",
            "expected_rewards": pea.as_list(means),
            "best_expert": best_index,
            "initial_weights": "uniform",
        },
        "optimizers": summaries,
        "xnas_theorem_1": bound_check,
        "learning_rate_sweeps": sweeps,
        "curves": {
            "round": [int(t) for t in np.asarray(rollout.rounds)],
            "regret": regret_curves,
            "xnas_theorem_1_bound_mean": bound_curve,
            "correct_selection_rate": correct_curves,
        },
    }


def plot(result: dict[str, Any], path: str) -> None:
    """Regret with the bound, correct selection over time, and the learning-rate trade-off."""
    curves = result["curves"]
    setup = result["setup"]
    rounds = np.asarray(curves["round"])
    fig, (ax_regret, ax_sel, ax_sweep) = pea.figure(3, width=5.2)
    ax_regret.plot(
        rounds,
        curves["xnas_theorem_1_bound_mean"],
        color="black",
        ls="--",
        label="Theorem 1 bound (XNAS)",
    )
    for name, reg in curves["regret"].items():
        color, label = pea.COLORS[name], pea.LABELS[name]
        ax_regret.plot(rounds, reg["mean"], color=color, label=label)
        ax_regret.fill_between(rounds, reg["q10"], reg["q90"], color=color, alpha=0.15, lw=0)
        ax_sel.plot(rounds, curves["correct_selection_rate"][name], color=color, label=label)
    ax_regret.set(xlabel="round t", ylabel="regret (mean, 10-90%)", title="Regret over time")
    ax_sel.set(
        xlabel="round t",
        ylabel="fraction of forecasters",
        title="Correct selection (argmax u = best expert)",
        ylim=(-0.03, 1.03),
    )

    xnas = result["optimizers"]["XNAS"]
    ax_sweep.plot(
        xnas["final_regret_mean"],
        xnas["final_correct_selection_rate"],
        "*",
        ms=16,
        color=pea.COLORS["XNAS"],
        label=r"XNAS ($\eta^*$)",
    )
    for name, sweep in result["learning_rate_sweeps"].items():
        xs = [p["final_regret_mean"] for p in sweep]
        ys = [p["final_correct_selection_rate"] for p in sweep]
        ax_sweep.plot(xs, ys, "o-", color=pea.COLORS[name], label=pea.LABELS[name])
        for p, x, y in zip(sweep, xs, ys):
            ax_sweep.annotate(
                f"x{p['scale']:g}", (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8
            )
    ax_sweep.set(
        xlabel=f"mean regret at T = {setup['num_rounds']}",
        ylabel="correct selection at T",
        title="Learning-rate sweep (x scale of the default rate)",
    )
    for ax in (ax_regret, ax_sel, ax_sweep):
        ax.grid(alpha=0.3)
    ax_regret.legend(loc="upper left", fontsize=8)
    ax_sel.legend(loc="lower right", fontsize=8)
    ax_sweep.legend(loc="lower right", fontsize=8)
    pea.save_figure(
        fig,
        path,
        f"Regret and correct selection: Bernoulli rewards +-{setup['reward_bound']:g}, "
        f"N={setup['num_experts']}, {setup['num_seeds']} seeds",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Runs at full size and writes ``NAME.json`` and ``NAME.png`` into ``--out``."""
    return pea.cli(__spec__.name, __doc__, run, plot, argv)


if __name__ == "__main__":
    sys.exit(main())
