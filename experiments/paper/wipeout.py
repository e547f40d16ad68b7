"""Wipeout: how many experts XNAS keeps evaluating, for several wipeout factors zeta.

Paper sections 2.2 and 3.2.1: XNAS wipes out experts whose weight falls below
``theta_t = max_i v_{t,i} exp(-2 eta L (T - t) zeta)`` (Algorithm 1, line 12,
with the relaxation zeta).  With zeta = 1 the best expert in hindsight is never
wiped out (Lemma 1); a smaller zeta prunes sooner and saves more expert
evaluations (search time) at the price of the guarantee.

Setup (also written to the JSON): N = 8 experts, T = 2000 rounds, 256
independent forecasters (seeds), uniform u_0, linear losses with rewards
``R = clip(mean + z, -1, 1)`` (z standard Gaussian, L = 1) and expected
rewards evenly spaced in [-0.2, 0.1]; expert 7 is the best.  XNAS runs at the
theoretical rate eta* for zeta in {1, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01}, every
zeta on the same reward draws.  The evaluations at round t are those of the
experts that predict, I_{t-1}, so the saved share is
``sum_t (N - |I_{t-1}|) / (N T)``.  An expert once wiped out never returns, so
"wiped out at some point" is "inactive at t = T".

Run: ``python -m experiments.paper.wipeout [--out experiments/results] [--seed 0]``.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

import numpy as np

from experiments.paper import pea
from xnas_jax.optimizers import theoretical_learning_rate, xnas

NAME = "wipeout"


def run(
    num_rounds: int = 2000,
    num_seeds: int = 256,
    num_experts: int = 8,
    seed: int = 0,
    noise: float = 1.0,
    expected_rewards: tuple[float, float] = (-0.2, 0.1),
    wipeout_factors: Sequence[float] = (1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01),
) -> dict[str, Any]:
    """Plays XNAS with each wipeout factor; counts active experts and saved evaluations.

    Args:
      num_rounds: T.
      num_seeds: the number of independent forecasters (reward draws).
      num_experts: N; the last one has the highest expected reward.
      seed: PRNG seed of the noise.
      noise: standard deviation of the Gaussian reward noise.
      expected_rewards: the lowest and highest expected reward (evenly spaced).
      wipeout_factors: the zetas to run, decreasing.

    Returns:
      A JSON-ready dict: setup, per-zeta numbers and curves.
    """
    if list(wipeout_factors) != sorted(wipeout_factors, reverse=True):
        raise ValueError(f"wipeout_factors must be decreasing, got {wipeout_factors!r}")
    reward_bound = 1.0
    best_index = num_experts - 1
    means = np.linspace(expected_rewards[0], expected_rewards[1], num_experts, dtype=np.float32)
    losses = pea.noisy_linear_losses(
        np.random.default_rng(seed),
        means,
        noise,
        reward_bound,
        shape=(num_rounds, num_seeds, num_experts),
    )
    initial = pea.uniform_weights((num_seeds,), num_experts)
    record_every = pea.record_interval(num_rounds)
    eta = theoretical_learning_rate(num_experts, num_rounds, reward_bound)

    per_zeta, active_curves = [], {}
    for zeta in wipeout_factors:
        rollout = pea.play(xnas(eta, reward_bound, num_rounds, zeta), initial, losses, record_every)
        num_active = rollout.active.sum(axis=-1)  # (R, seeds)
        hindsight_best = pea.best_in_hindsight(rollout)[-1]
        hindsight_best_active = np.take_along_axis(
            rollout.active[-1], hindsight_best[:, None], axis=-1
        )[:, 0]
        per_zeta.append(
            {
                "wipeout_factor": zeta,
                "saved_evaluation_share": float(
                    rollout.evaluations_saved[-1].mean() / (num_experts * num_rounds)
                ),
                "final_selection_accuracy": float(
                    (rollout.weights[-1].argmax(axis=-1) == best_index).mean()
                ),
                "best_in_hindsight_wiped_out_fraction": float((~hindsight_best_active).mean()),
                "median_round_one_expert_left": pea.median_round(
                    pea.recovery_rounds(num_active == 1, rollout.rounds)
                ),
                "final_regret_mean": float(pea.regret(rollout)[-1].mean()),
            }
        )
        active_curves[f"{zeta:g}"] = pea.as_list(num_active.mean(axis=1))

    return {
        "experiment": NAME,
        "claim": "the saved share of expert evaluations grows as zeta shrinks; "
        "zeta = 1 never wipes out the best expert in hindsight",
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
            "learning_rate": eta,
            "initial_weights": "uniform",
        },
        "wipeout_factors": per_zeta,
        "curves": {
            "round": [int(t) for t in np.asarray(rollout.rounds)],
            "mean_active_experts": active_curves,
        },
    }


def plot(result: dict[str, Any], path: str) -> None:
    """Active experts over the rounds per zeta, and savings and accuracy against zeta."""
    import matplotlib

    setup = result["setup"]
    rounds = np.asarray(result["curves"]["round"])
    fig, (ax_active, ax_zeta) = pea.figure(2, width=6.2)
    curves = result["curves"]["mean_active_experts"]
    colormap = matplotlib.colormaps["plasma"]
    for k, (zeta, curve) in enumerate(curves.items()):
        color = colormap(0.85 * k / max(1, len(curves) - 1))
        ax_active.plot(rounds, curve, color=color, label=rf"$\zeta$ = {zeta}")
    ax_active.set(
        xlabel="round t",
        ylabel=r"active experts $|I_t|$ (mean over seeds)",
        title="Active experts over time",
        ylim=(0.5, setup["num_experts"] + 0.5),
    )

    per_zeta = result["wipeout_factors"]
    zetas = [p["wipeout_factor"] for p in per_zeta]
    ax_zeta.plot(
        zetas,
        [p["saved_evaluation_share"] for p in per_zeta],
        "o-",
        color="tab:purple",
        label="share of expert evaluations saved",
    )
    ax_zeta.plot(
        zetas,
        [p["final_selection_accuracy"] for p in per_zeta],
        "s-",
        color="tab:red",
        label="final selection = best expert",
    )
    ax_zeta.plot(
        zetas,
        [p["best_in_hindsight_wiped_out_fraction"] for p in per_zeta],
        "^--",
        color="tab:gray",
        label="best expert in hindsight wiped out",
    )
    ax_zeta.set_xscale("log")
    ax_zeta.invert_xaxis()
    ax_zeta.set(
        xlabel=r"wipeout factor $\zeta$ (log scale, decreasing)",
        ylabel="fraction",
        title=r"Savings and accuracy vs $\zeta$",
        ylim=(-0.03, 1.03),
    )
    for ax in (ax_active, ax_zeta):
        ax.grid(alpha=0.3)
    ax_active.legend(loc="lower left", fontsize=8)
    ax_zeta.legend(loc="center left", fontsize=8)
    pea.save_figure(
        fig,
        path,
        f"XNAS wipeout with relaxed thresholds (N={setup['num_experts']}, T={setup['num_rounds']}, "
        f"{setup['num_seeds']} seeds)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Runs at full size and writes ``NAME.json`` and ``NAME.png`` into ``--out``."""
    return pea.cli(__spec__.name, __doc__, run, plot, argv)


if __name__ == "__main__":
    sys.exit(main())
