"""Late bloomers: XNAS recovers an expert that is worst early and best late.

Paper section 3.2.1 (demonstrated in its supplementary section 8.1): gradient
descent on softmax logits attenuates an expert's reward by its weight u_i
(eq. 6), so an expert that is weak early, like a parameterized operation that
still has to train, has a hard time taking over later.  XNAS's reward does not
depend on u_i, so its selection follows the best expert in hindsight.

Setup (also written to the JSON): N = 8 experts, T = 2000 rounds, 256
independent forecasters (seeds), uniform u_0, linear losses with rewards
``R = clip(mean + 0.5 z, -1, 1)`` (z standard Gaussian, L = 1).  Experts 0-6
have constant expected rewards evenly spaced in [-0.4, 0.0]; expert 7, the late
bloomer, ramps linearly from -0.5 (the worst) to +0.5 (the best) over the first
40% of the rounds and stays there, so it becomes the best expert in hindsight
at about round 0.4 T.  Learning rates follow
:func:`experiments.paper.pea.compared_optimizers`; plain SGD on the logits is also run
at 1/4 and 4 times its rate.

Run: ``python -m experiments.paper.late_bloomers [--out experiments/results] [--seed 0]``.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

import numpy as np
import optax

from experiments.paper import pea
from xnas_jax.optimizers import softmax_gd, theoretical_learning_rate

NAME = "late_bloomers"


def expected_rewards(
    num_rounds: int,
    num_experts: int,
    others: tuple[float, float],
    bloomer: tuple[float, float],
    ramp_fraction: float,
) -> np.ndarray:
    """Expected rewards, shape ``(T, N)``; the late bloomer is the last expert."""
    progress = np.arange(1, num_rounds + 1) / (ramp_fraction * num_rounds)
    ramp = bloomer[0] + (bloomer[1] - bloomer[0]) * np.minimum(progress, 1.0)
    constant = np.linspace(others[0], others[1], num_experts - 1)
    constant = np.broadcast_to(constant, (num_rounds, num_experts - 1))
    return np.concatenate([constant, ramp[:, None]], axis=-1).astype(np.float32)


def run(
    num_rounds: int = 2000,
    num_seeds: int = 256,
    num_experts: int = 8,
    seed: int = 0,
    noise: float = 0.5,
    others: tuple[float, float] = (-0.4, 0.0),
    bloomer: tuple[float, float] = (-0.5, 0.5),
    ramp_fraction: float = 0.4,
    sgd_scales: Sequence[float] = (0.25, 4.0),
    optimizers: Sequence[str] = pea.OPTIMIZER_NAMES,
) -> dict[str, Any]:
    """Plays XNAS, SGD and Adam on the logits against the late-bloomer losses.

    Args:
      num_rounds: T.
      num_seeds: the number of independent forecasters (noise draws).
      num_experts: N; the last one is the late bloomer.
      seed: PRNG seed of the noise.
      noise: standard deviation of the Gaussian reward noise.
      others: the lowest and highest constant expected reward of experts 0..N-2.
      bloomer: the late bloomer's expected reward at round 0 and after the ramp.
      ramp_fraction: the share of the rounds over which it ramps up.
      sgd_scales: extra multiples of SGD's learning rate to run (the sweep).
      optimizers: which of :data:`experiments.paper.pea.OPTIMIZER_NAMES` to compare.

    Returns:
      A JSON-ready dict: setup, per-optimizer summary numbers, the SGD sweep and curves.
    """
    reward_bound = 1.0
    bloomer_index = num_experts - 1
    means = expected_rewards(num_rounds, num_experts, others, bloomer, ramp_fraction)
    losses = pea.noisy_linear_losses(
        np.random.default_rng(seed),
        means[:, None, :],
        noise,
        reward_bound,
        shape=(num_rounds, num_seeds, num_experts),
    )
    initial = pea.uniform_weights((num_seeds,), num_experts)
    record_every = pea.record_interval(num_rounds)
    rates = pea.compared_learning_rates(num_experts, num_rounds, reward_bound)

    def summarize(rollout: pea.Rollout) -> dict[str, Any]:
        selected = rollout.weights.argmax(axis=-1) == bloomer_index
        return {
            "final_selection_rate": float(selected[-1].mean()),
            "median_recovery_round": pea.median_round(
                pea.recovery_rounds(selected, rollout.rounds)
            ),
            "final_regret_mean": float(pea.regret(rollout)[-1].mean()),
            "lowest_mean_u_late_bloomer": float(rollout.weights[..., -1].mean(axis=1).min()),
        }

    summaries, u_curves, selection_curves = {}, {}, {}
    compared = pea.compared_optimizers(num_experts, num_rounds, reward_bound, names=optimizers)
    for name, transform in compared.items():
        rollout = pea.play(transform, initial, losses, record_every)
        summaries[name] = {"learning_rate": rates[name], **summarize(rollout)}
        u_curves[name] = pea.spread(rollout.weights[..., bloomer_index])
        selection_curves[name] = pea.as_list(
            (rollout.weights.argmax(axis=-1) == bloomer_index).mean(axis=1)
        )
    hindsight = pea.best_in_hindsight(rollout) == bloomer_index

    sweep = []
    base_rate = num_experts * theoretical_learning_rate(num_experts, num_rounds, reward_bound)
    for scale in sorted(set(sgd_scales) | ({1.0} if sgd_scales else set())):
        if scale == 1.0 and "SGD on alpha" in summaries:
            numbers = {k: v for k, v in summaries["SGD on alpha"].items() if k != "learning_rate"}
        else:
            transform = softmax_gd(optax.sgd(base_rate * scale))
            numbers = summarize(pea.play(transform, initial, losses, record_every))
        sweep.append({"scale": scale, "learning_rate": base_rate * scale, **numbers})

    return {
        "experiment": NAME,
        "claim": "XNAS's final selection is the late bloomer; softmax-GD recovers it late or never",
        "setup": {
            "num_rounds": num_rounds,
            "num_seeds": num_seeds,
            "num_experts": num_experts,
            "seed": seed,
            "reward_bound": reward_bound,
            "rewards": "clip(mean + noise * z, -L, L), z ~ N(0, 1); loss = -reward",
            "noise": noise,
            "other_experts_expected_rewards": pea.as_list(means[0, :-1]),
            "late_bloomer_expected_reward": {
                "start": bloomer[0],
                "end": bloomer[1],
                "ramp_rounds": int(ramp_fraction * num_rounds),
            },
            "initial_weights": "uniform",
        },
        "late_bloomer_best_in_hindsight_from_round_median": pea.median_round(
            pea.recovery_rounds(hindsight, rollout.rounds)
        ),
        "optimizers": summaries,
        "sgd_learning_rate_sweep": sweep,
        "curves": {
            "round": [int(t) for t in np.asarray(rollout.rounds)],
            "expected_reward_late_bloomer": pea.as_list(
                means[record_every - 1 :: record_every, -1]
            ),
            "expected_reward_best_other": float(others[1]),
            "u_late_bloomer": u_curves,
            "late_bloomer_selection_rate": selection_curves,
        },
    }


def plot(result: dict[str, Any], path: str) -> None:
    """Expected rewards, u of the late bloomer and how often it is selected, over rounds."""
    curves = result["curves"]
    rounds = np.asarray(curves["round"])
    crossing = result["late_bloomer_best_in_hindsight_from_round_median"]
    fig, (ax_setup, ax_u, ax_sel) = pea.figure(3, width=5.2)

    ax_setup.plot(
        rounds, curves["expected_reward_late_bloomer"], color="black", label="late bloomer"
    )
    for reward in result["setup"]["other_experts_expected_rewards"]:
        ax_setup.axhline(reward, color="gray", lw=0.8, alpha=0.7)
    ax_setup.plot([], [], color="gray", lw=0.8, label="other experts (constant)")
    ax_setup.set(xlabel="round t", ylabel="expected reward", title="Setup: expected rewards")

    for name, u in curves["u_late_bloomer"].items():
        color = pea.COLORS[name]
        ax_u.plot(rounds, u["mean"], color=color, label=pea.LABELS[name])
        ax_u.fill_between(rounds, u["q10"], u["q90"], color=color, alpha=0.15, lw=0)
        ax_sel.plot(
            rounds, curves["late_bloomer_selection_rate"][name], color=color, label=pea.LABELS[name]
        )
    ax_u.set(
        xlabel="round t",
        ylabel="u of the late bloomer",
        title="Weight of the late bloomer (mean, 10-90%)",
    )
    ax_u.set_yscale("log")
    ax_sel.set(
        xlabel="round t",
        ylabel="fraction of forecasters",
        title="Late bloomer selected (argmax u)",
        ylim=(-0.03, 1.03),
    )
    for ax in (ax_setup, ax_u, ax_sel):
        if crossing is not None:
            ax.axvline(crossing, color="black", ls=":", lw=1)
        ax.grid(alpha=0.3)
    if crossing is not None:
        ax_sel.plot([], [], color="black", ls=":", lw=1, label="becomes best in hindsight")
    ax_setup.legend(loc="lower right", fontsize=8)
    ax_u.legend(loc="lower right", fontsize=8)
    ax_sel.legend(loc="center right", fontsize=8)
    setup = result["setup"]
    pea.save_figure(
        fig,
        path,
        "Late bloomer: its expected reward ramps from worst to best over the first "
        f"{setup['late_bloomer_expected_reward']['ramp_rounds']} rounds "
        f"(N={setup['num_experts']}, {setup['num_seeds']} seeds)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Runs at full size and writes ``NAME.json`` and ``NAME.png`` into ``--out``."""
    return pea.cli(__spec__.name, __doc__, run, plot, argv)


if __name__ == "__main__":
    sys.exit(main())
