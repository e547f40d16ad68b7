"""Robustness to initialization: XNAS selects a best expert that starts with a tiny weight.

Paper section 3.2.1 (demonstrated in its supplementary section 8.2): under
gradient descent on softmax logits an expert's reward is attenuated by its
weight u_i (eq. 6), so a good expert that starts with little weight stays
suppressed; XNAS's reward does not depend on u_i, so the expert's log-weight
catches up at the rate of its reward advantage.

Setup (also written to the JSON): N = 8 experts, T = 2000 rounds, 256
independent forecasters (seeds) per initial weight, linear losses with rewards
``R = clip(mean + 0.5 z, -1, 1)`` (z standard Gaussian, L = 1).  Experts 0-6
have expected rewards evenly spaced in [-0.4, 0.0]; expert 7, the best, has
expected reward 0.2.  The best expert starts with weight w in
{1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4} (1e-3 is the headline case) and the others share
1 - w equally; every w sees the same reward draws.  Learning rates follow
:func:`experiments.paper.pea.compared_optimizers`.

Run: ``python -m experiments.paper.init_robustness [--out experiments/results] [--seed 0]``.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

import numpy as np

from experiments.paper import pea

NAME = "init_robustness"

# Distinct markers, so that curves lying on top of each other stay visible.
_MARKERS = {
    "XNAS": dict(marker="o", ms=9, ls="-", lw=2.5),
    "SGD on alpha": dict(marker="s", ms=6, ls="-", lw=1.5),
    "Adam on alpha": dict(marker="^", ms=5, ls="--", lw=1.2),
}


def initial_weights(
    best_weights: Sequence[float], num_seeds: int, num_experts: int
) -> np.ndarray:
    """u_0 of shape ``(len(best_weights), num_seeds, N)``; the best expert is the last."""
    best = np.asarray(best_weights, np.float64)[:, None]
    u = np.concatenate([np.repeat((1.0 - best) / (num_experts - 1), num_experts - 1, 1), best], 1)
    return np.broadcast_to(u[:, None, :], (len(best_weights), num_seeds, num_experts)).astype(
        np.float32
    )


def run(
    num_rounds: int = 2000,
    num_seeds: int = 256,
    num_experts: int = 8,
    seed: int = 0,
    noise: float = 0.5,
    others: tuple[float, float] = (-0.4, 0.0),
    best_reward: float = 0.2,
    best_initial_weights: Sequence[float] = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4),
    headline_initial_weight: float = 1e-3,
    optimizers: Sequence[str] = pea.OPTIMIZER_NAMES,
) -> dict[str, Any]:
    """Plays XNAS, SGD and Adam on the logits with the best expert badly initialized.

    Args:
      num_rounds: T.
      num_seeds: independent forecasters (noise draws) per initial weight.
      num_experts: N; the last one is the best.
      seed: PRNG seed of the noise.
      noise: standard deviation of the Gaussian reward noise.
      others: the lowest and highest expected reward of experts 0..N-2.
      best_reward: the best expert's expected reward.
      best_initial_weights: the initial weights of the best expert to try.
      headline_initial_weight: the one whose curves are plotted (must be in the list).
      optimizers: which of :data:`experiments.paper.pea.OPTIMIZER_NAMES` to compare.

    Returns:
      A JSON-ready dict: setup, per-optimizer and per-initial-weight numbers, curves.
    """
    if headline_initial_weight not in best_initial_weights:
        raise ValueError(
            f"headline_initial_weight must be one of best_initial_weights {best_initial_weights}, "
            f"got {headline_initial_weight!r}"
        )
    reward_bound = 1.0
    best_index = num_experts - 1
    headline = list(best_initial_weights).index(headline_initial_weight)
    means = np.append(np.linspace(others[0], others[1], num_experts - 1), best_reward)
    means = means.astype(np.float32)
    # Common random numbers: every initial weight faces the same draws (play broadcasts them).
    losses = pea.noisy_linear_losses(
        np.random.default_rng(seed),
        means,
        noise,
        reward_bound,
        shape=(num_rounds, 1, num_seeds, num_experts),
    )
    initial = initial_weights(best_initial_weights, num_seeds, num_experts)
    record_every = pea.record_interval(num_rounds)
    rates = pea.compared_learning_rates(num_experts, num_rounds, reward_bound)

    summaries, u_curves, selection_curves = {}, {}, {}
    compared = pea.compared_optimizers(num_experts, num_rounds, reward_bound, names=optimizers)
    for name, transform in compared.items():
        rollout = pea.play(transform, initial, losses, record_every)
        selected = rollout.weights.argmax(axis=-1) == best_index  # (R, inits, seeds)
        per_init = []
        for i, weight in enumerate(best_initial_weights):
            per_init.append(
                {
                    "best_initial_weight": weight,
                    "final_selection_rate": float(selected[-1, i].mean()),
                    "median_recovery_round": pea.median_round(
                        pea.recovery_rounds(selected[:, i], rollout.rounds)
                    ),
                    "final_regret_mean": float(pea.regret(rollout)[-1, i].mean()),
                }
            )
        summaries[name] = {"learning_rate": rates[name], "by_initial_weight": per_init}
        u_curves[name] = pea.spread(rollout.weights[:, headline, :, best_index])
        selection_curves[name] = pea.as_list(selected[:, headline].mean(axis=1))

    return {
        "experiment": NAME,
        "claim": "XNAS selects the best expert although it starts with a tiny weight; "
        "softmax-GD selects it much later or not at all",
        "setup": {
            "num_rounds": num_rounds,
            "num_seeds": num_seeds,
            "num_experts": num_experts,
            "seed": seed,
            "reward_bound": reward_bound,
            "rewards": "clip(mean + noise * z, -L, L), z ~ N(0, 1); loss = -reward",
            "noise": noise,
            "expected_rewards": pea.as_list(means),
            "best_expert": best_index,
            "best_initial_weights": list(best_initial_weights),
            "headline_initial_weight": headline_initial_weight,
            "initial_weights": "best expert w, the others (1 - w) / (N - 1) each",
        },
        "optimizers": summaries,
        "curves": {
            "round": [int(t) for t in np.asarray(rollout.rounds)],
            "u_best": u_curves,
            "best_selection_rate": selection_curves,
        },
    }


def plot(result: dict[str, Any], path: str) -> None:
    """u of the best expert, how often it is selected, and the final rate per initial weight."""
    curves = result["curves"]
    setup = result["setup"]
    rounds = np.asarray(curves["round"])
    w = setup["headline_initial_weight"]
    fig, (ax_u, ax_sel, ax_init) = pea.figure(3, width=5.2)
    for name, u in curves["u_best"].items():
        color, label = pea.COLORS[name], pea.LABELS[name]
        ax_u.plot(rounds, u["mean"], color=color, label=label)
        ax_u.fill_between(rounds, u["q10"], u["q90"], color=color, alpha=0.15, lw=0)
        ax_sel.plot(rounds, curves["best_selection_rate"][name], color=color, label=label)
        per_init = result["optimizers"][name]["by_initial_weight"]
        ax_init.plot(
            [p["best_initial_weight"] for p in per_init],
            [p["final_selection_rate"] for p in per_init],
            color=color,
            label=label,
            **_MARKERS[name],
        )
    ax_u.set_yscale("log")
    ax_u.set(
        xlabel="round t",
        ylabel="u of the best expert",
        title=f"Weight of the best expert (u_0 = {w:g})",
    )
    ax_sel.set(
        xlabel="round t",
        ylabel="fraction of forecasters",
        title=f"Best expert selected (argmax u), u_0 = {w:g}",
        ylim=(-0.03, 1.03),
    )
    ax_init.set_xscale("log")
    ax_init.set(
        xlabel="initial weight of the best expert",
        ylabel="fraction of forecasters",
        title=f"Best expert selected at t = T = {setup['num_rounds']}",
        ylim=(-0.03, 1.03),
    )
    ax_init.invert_xaxis()
    for ax in (ax_u, ax_sel, ax_init):
        ax.grid(alpha=0.3)
    ax_u.legend(loc="center right", fontsize=8)
    ax_sel.legend(loc="center right", fontsize=8)
    ax_init.legend(loc="center right", fontsize=8)
    pea.save_figure(
        fig,
        path,
        f"Robustness to initialization: the best of N={setup['num_experts']} experts starts "
        f"with a tiny weight ({setup['num_seeds']} seeds)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Runs at full size and writes ``NAME.json`` and ``NAME.png`` into ``--out``."""
    return pea.cli(__spec__.name, __doc__, run, plot, argv)


if __name__ == "__main__":
    sys.exit(main())
