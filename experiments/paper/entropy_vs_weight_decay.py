"""Entropy vs weight decay: L2 decay on softmax logits keeps architecture weights dense.

Paper section 3.2.2, Figure 2: DARTS optimizes the logits alpha with Adam and
weight decay; the decay pulls alpha towards 0, i.e. u towards uniform, so the
mean normalized entropy ``H(u) / ln N`` of the final weights grows with the
decay coefficient.  XNAS has no weight decay; it is shown as a reference.

Setup (also written to the JSON): N = 8 experts, 16 seeds x 14 forecasters
(the mixed edges of a DARTS cell), T = 10000 rounds, uniform u_0, linear losses
with rewards ``R = clip(mean + 0.5 z, -1, 1)`` (z standard Gaussian, L = 1);
every forecaster draws its experts' expected rewards uniformly from
[-0.1, 0.1].  Softmax-GD is DARTS' Adam (betas 0.5, 0.999) on the logits with
L2 decay added to the gradient (:func:`xnas_jax.optimizers.darts`) at
learning rate 1e-3 (DARTS uses 3e-4 for about 2e4 steps; 1e-3 lets 1e4 rounds
reach sharp weights without decay), over the decays
{0, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1}; 1e-3 is DARTS' setting.  Every
decay sees the same reward draws.  XNAS runs at the theoretical rate eta*; its
weights are one-hot at t = T because the last round wipes out every expert
below the leader, so its entropy is also reported at t = 0.9 T.

Run: ``python -m experiments.paper.entropy_vs_weight_decay [--out experiments/results] [--seed 0]``.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

import numpy as np

from experiments.paper import pea
from xnas_jax.optimizers import darts, theoretical_learning_rate, xnas

NAME = "entropy_vs_weight_decay"
DARTS_WEIGHT_DECAY = 1e-3


def run(
    num_rounds: int = 10000,
    num_seeds: int = 16,
    num_edges: int = 14,
    num_experts: int = 8,
    seed: int = 0,
    noise: float = 0.5,
    reward_spread: float = 0.1,
    learning_rate: float = 1e-3,
    weight_decays: Sequence[float] = (0.0, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
) -> dict[str, Any]:
    """Final mean normalized entropy of DARTS' Adam for each weight decay, and of XNAS.

    Args:
      num_rounds: T.
      num_seeds: independent cells.
      num_edges: forecasters per cell.
      num_experts: N.
      seed: PRNG seed of the expected rewards and the noise.
      noise: standard deviation of the Gaussian reward noise.
      reward_spread: expected rewards are drawn uniformly from ``[-spread, spread]``.
      learning_rate: Adam's rate on the logits.
      weight_decays: the L2 coefficients on the logits, increasing.

    Returns:
      A JSON-ready dict: setup, entropies per decay, XNAS's entropies and curves.
    """
    if list(weight_decays) != sorted(weight_decays):
        raise ValueError(f"weight_decays must be increasing, got {weight_decays!r}")
    reward_bound = 1.0
    forecasters = (num_seeds, num_edges)
    rng = np.random.default_rng(seed)
    means = rng.uniform(-reward_spread, reward_spread, forecasters + (num_experts,))
    means = means.astype(np.float32)
    losses = pea.noisy_linear_losses(
        rng,
        means,
        noise,
        reward_bound,
        shape=(num_rounds,) + means.shape,
    )
    best = means.argmax(axis=-1)
    initial = pea.uniform_weights(forecasters, num_experts)
    record_every = pea.record_interval(num_rounds)

    def entropy_curve(rollout: pea.Rollout) -> np.ndarray:
        return pea.normalized_entropy(rollout.weights).mean(axis=(1, 2))

    per_decay, curves = [], {}
    for decay in weight_decays:
        rollout = pea.play(darts(learning_rate, decay), initial, losses, record_every)
        per_decay.append(
            {
                "weight_decay": decay,
                "final_mean_normalized_entropy": pea.mean_normalized_entropy(rollout.weights[-1]),
                "final_correct_selection_rate": float(
                    (rollout.weights[-1].argmax(axis=-1) == best).mean()
                ),
            }
        )
        curves[f"{decay:g}"] = pea.as_list(entropy_curve(rollout))

    eta = theoretical_learning_rate(num_experts, num_rounds, reward_bound)
    rollout = pea.play(xnas(eta, reward_bound, num_rounds), initial, losses, record_every)
    at_ninety = int(0.9 * (len(rollout.rounds) - 1))
    xnas_numbers = {
        "learning_rate": eta,
        "final_mean_normalized_entropy": pea.mean_normalized_entropy(rollout.weights[-1]),
        "round_of_late_entropy": int(rollout.rounds[at_ninety]),
        "late_mean_normalized_entropy": pea.mean_normalized_entropy(rollout.weights[at_ninety]),
        "final_correct_selection_rate": float((rollout.weights[-1].argmax(axis=-1) == best).mean()),
    }

    return {
        "experiment": NAME,
        "claim": "the mean normalized entropy of the final weights grows with the weight decay",
        "setup": {
            "num_rounds": num_rounds,
            "num_seeds": num_seeds,
            "num_edges": num_edges,
            "num_experts": num_experts,
            "seed": seed,
            "reward_bound": reward_bound,
            "rewards": "clip(mean + noise * z, -L, L), z ~ N(0, 1); loss = -reward",
            "noise": noise,
            "expected_rewards": f"uniform in [-{reward_spread}, {reward_spread}] per forecaster",
            "softmax_gd": "darts: add_decayed_weights(decay) then adam(lr, b1=0.5, b2=0.999)",
            "learning_rate": learning_rate,
            "darts_weight_decay": DARTS_WEIGHT_DECAY,
            "initial_weights": "uniform",
        },
        "darts": per_decay,
        "xnas": xnas_numbers,
        "curves": {
            "round": [int(t) for t in np.asarray(rollout.rounds)],
            "mean_normalized_entropy_by_decay": curves,
            "xnas_mean_normalized_entropy": pea.as_list(entropy_curve(rollout)),
        },
    }


def plot(result: dict[str, Any], path: str) -> None:
    """Entropy against the decay (Figure 2's shape) and entropy over the rounds."""
    import matplotlib

    setup = result["setup"]
    decays = [p["weight_decay"] for p in result["darts"]]
    entropies = [p["final_mean_normalized_entropy"] for p in result["darts"]]
    xnas_numbers = result["xnas"]
    fig, (ax_decay, ax_time) = pea.figure(2, width=6.2)

    # The grid is logarithmic apart from 0, so decays sit at evenly spaced positions.
    positions = np.arange(len(decays))
    ax_decay.plot(
        positions,
        entropies,
        "o-",
        color=pea.COLORS["Adam on alpha"],
        label=r"DARTS: Adam on $\alpha$ + L2 decay",
    )
    if DARTS_WEIGHT_DECAY in decays:
        i = decays.index(DARTS_WEIGHT_DECAY)
        ax_decay.plot(
            positions[i],
            entropies[i],
            "o",
            ms=14,
            mfc="none",
            mec="black",
            mew=2,
            label="DARTS' setting (1e-3)",
            zorder=3,
        )
    ax_decay.axhline(
        xnas_numbers["late_mean_normalized_entropy"],
        color=pea.COLORS["XNAS"],
        ls="--",
        label=f"XNAS (no decay) at t = {xnas_numbers['round_of_late_entropy']}",
    )
    ax_decay.axhline(
        xnas_numbers["final_mean_normalized_entropy"],
        color=pea.COLORS["XNAS"],
        ls="-",
        label=f"XNAS (no decay) at t = T = {setup['num_rounds']}",
    )
    ax_decay.set_xticks(positions, [f"{d:g}" for d in decays])
    ax_decay.set(
        xlabel=r"weight decay on the logits $\alpha$",
        ylabel="mean normalized entropy H(u) / ln N at t = T",
        title="Final entropy vs weight decay",
        ylim=(-0.03, 1.03),
    )

    rounds = np.asarray(result["curves"]["round"])
    colormap = matplotlib.colormaps["viridis"]
    by_decay = result["curves"]["mean_normalized_entropy_by_decay"]
    for k, (label, curve) in enumerate(by_decay.items()):
        color = colormap(k / max(1, len(by_decay) - 1))
        ax_time.plot(rounds, curve, color=color, label=f"decay {label}")
    ax_time.plot(
        rounds,
        result["curves"]["xnas_mean_normalized_entropy"],
        color=pea.COLORS["XNAS"],
        lw=2,
        label="XNAS",
    )
    ax_time.set(
        xlabel="round t",
        ylabel="mean normalized entropy H(u) / ln N",
        title="Entropy over time (DARTS' Adam per decay, and XNAS)",
        ylim=(-0.03, 1.03),
    )
    for ax in (ax_decay, ax_time):
        ax.grid(alpha=0.3)
    ax_decay.legend(loc="center right", fontsize=8)
    ax_time.legend(loc="lower left", fontsize=8, ncol=2)
    pea.save_figure(
        fig,
        path,
        f"Mean normalized entropy vs weight decay on the logits "
        f"({setup['num_seeds']}x{setup['num_edges']} forecasters, N={setup['num_experts']}, "
        f"T={setup['num_rounds']}, Adam lr {setup['learning_rate']:g})",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Runs at full size and writes ``NAME.json`` and ``NAME.png`` into ``--out``."""
    return pea.cli(__spec__.name, __doc__, run, plot, argv)


if __name__ == "__main__":
    sys.exit(main())
