"""bfloat16 against float32: does a search in bfloat16 learn as well?

Issue 4 asks for a bfloat16 mixed-precision search whose loss stays within the
noise of float32 over a short run.  This runs the README's quick search
(digits, C=8, 5 cells, 10 epochs of 11 steps, batch 64) in float32 and in
bfloat16 (activations and convolutions in bfloat16; parameters, BN statistics,
the loss and the XNAS state in float32) for several seeds, and compares the
per-epoch training and validation losses.  The noise is the spread between
seeds at the same dtype; the effect is the gap between the dtypes' means.

It measures learning, not speed: on a CPU bfloat16 is emulated and slower.
Run: ``python -m benchmarks.bfloat16_search [--out experiments/results] [--seed 0]``.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np
from jax.experimental.compilation_cache import compilation_cache

from experiments.paper import pea
from xnas_jax import cli, configs, search

NAME = "bfloat16_search"
DTYPES = ("float32", "bfloat16")


def run(seed: int = 0, num_seeds: int = 2, **overrides: Any) -> dict[str, Any]:
    """Runs the search per dtype and seed; returns the loss curves and their comparison.

    Args:
      seed: the first seed; seeds ``seed .. seed + num_seeds - 1`` run per dtype.
      num_seeds: searches per dtype.
      **overrides: :class:`xnas_jax.configs.SearchConfig` fields (tests shrink the run).

    Returns:
      A JSON-ready dict: setup, per-run curves, final losses and the summary.
    """
    if num_seeds < 2:
        raise ValueError(f"num_seeds must be >= 2 to measure the noise, got {num_seeds}")
    runs: dict[str, list[dict[str, Any]]] = {dtype: [] for dtype in DTYPES}
    previous_cache = jax.config.jax_compilation_cache_dir
    with tempfile.TemporaryDirectory() as tmp:
        # Seeds share shapes, so each dtype compiles once and loads from the cache after.
        cli.enable_compilation_cache(Path(tmp) / "cache")
        try:
            _run_all(runs, seed, num_seeds, tmp, overrides)
        finally:  # the cache folder goes away with tmp
            jax.config.update("jax_compilation_cache_dir", previous_cache)
            compilation_cache.reset_cache()
    final = {d: [r["val_loss"][-1] for r in runs[d]] for d in DTYPES}
    noise = max(float(np.ptp(final[d])) for d in DTYPES)
    gap = float(abs(np.mean(final["bfloat16"]) - np.mean(final["float32"])))
    return {
        "setup": {
            "seeds": list(range(seed, seed + num_seeds)),
            "config": {k: v for k, v in configs.fingerprint(
                configs.SearchConfig(**overrides).resolved()).items()
                       if k not in ("dtype", "seed")},
        },
        "runs": runs,
        "final_val_loss": final,
        "seed_spread": noise,  # the largest max-min of final val loss within a dtype
        "dtype_gap": gap,  # |mean bfloat16 - mean float32| of final val loss
        "within_noise": gap <= noise,
    }


def _run_all(runs: dict[str, list[dict[str, Any]]], seed: int, num_seeds: int, tmp: str,
             overrides: dict[str, Any]) -> None:
    for dtype in DTYPES:
        for s in range(seed, seed + num_seeds):
            config = configs.SearchConfig(
                dtype=dtype, seed=s, out_dir=str(Path(tmp) / f"{dtype}_{s}"), progress=False,
                **overrides,
            )
            search.train_and_evaluate(config)
            lines = (Path(config.out_dir) / "log.jsonl").read_text().splitlines()
            log = [json.loads(line) for line in lines]
            runs[dtype].append({
                "seed": s,
                "train_loss": [r["train_loss"] for r in log],
                "val_loss": [r["val_loss"] for r in log],
                "val_accuracy": [r["val_accuracy"] for r in log],
                "genotype": log[-1]["genotype"],
            })


def plot(result: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    colors = {"float32": "tab:blue", "bfloat16": "tab:orange"}
    for ax, key in zip(axes, ("train_loss", "val_loss")):
        for dtype, runs in result["runs"].items():
            for i, run_ in enumerate(runs):
                epochs = np.arange(1, len(run_[key]) + 1)
                ax.plot(epochs, run_[key], color=colors[dtype], alpha=0.8,
                        label=dtype if i == 0 else None)
        ax.set_xlabel("epoch")
        ax.set_title(key.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("cross-entropy")
    axes[0].legend()
    pea.save_figure(
        fig, path,
        f"digits search: bfloat16 vs float32 (gap {result['dtype_gap']:.3f}, "
        f"seed spread {result['seed_spread']:.3f})",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Runs at full size and writes ``NAME.json`` and ``NAME.png`` into ``--out``."""
    return pea.cli(__spec__.name, __doc__, run, plot, argv)


if __name__ == "__main__":
    sys.exit(main())
