"""The wipeout's timeline in a real search: a CIFAR-10 proxy, zeta = 1, 0.5, 0.25, 0.02.

XNAS wipes out expert i once ``v_i < max_j v_j exp(-2 eta L (T - t) zeta)``
(Algorithm 1 line 12, relaxed by zeta in section 3.2.1).  With zeta = 1 an
expert leaves only when it can no longer catch up with the leader even if it
earned the largest reward and the leader the smallest on every remaining
feedback; a smaller zeta prunes sooner, at the price of the regret bound.
The expected reward gaps between experts in a real search are a small
fraction of L, so the first three values only act near the horizon; 0.02
shows a wipeout that acts during the search.

Each run is ``python -m xnas_jax.search`` on a class-balanced-by-chance
subset of CIFAR-10's ``train.zip`` in ``--data-dir`` (by default
``$XNAS_DATA_DIR``, else ``data/cifar10_jpeg``), downsampled to 16x16, in
a reduced search network, with rewards clipped per feedback.  All runs share
the seed: the same initial weights, data order and split.  The JSON gives,
per zeta: the step of the first wipeout, the active experts, mean normalized
entropy, validation accuracy and clipped share per epoch, and the genotype
with the per-edge strengths that chose it.

Run: ``python -m experiments.paper.wipeout_search [--data-dir DIR] [--work-dir DIR]``.
Runs already complete in ``--work-dir`` are reused, an interrupted one
resumes from its checkpoint.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

import experiments
from experiments.paper import pea
from xnas_jax import configs, search

NAME = "wipeout_search"
ZETAS = (1.0, 0.5, 0.25, 0.02)
PROXY = dict(
    dataset="image_folder", max_train_examples=2000, downsample=2, crop_padding=2, flip=True,
    channels=8, layers=5, epochs=12, batch_size=96, seed=0, progress=False,
)


def _run_dir(work_dir: Path, zeta: float) -> Path:
    return work_dir / f"zeta_{zeta:g}"


def search_once(data: Path, work_dir: Path, zeta: float, cache_dir: Path) -> list[dict[str, Any]]:
    """One proxy search (resumed or reused if its folder has one); its log records."""
    out = _run_dir(work_dir, zeta)
    config = configs.SearchConfig(
        **PROXY, data_dir=str(data), cache_dir=str(cache_dir), wipeout_factor=zeta,
        out_dir=str(out), resume=(out / "checkpoints").is_dir(),
    )
    log = out / "log.jsonl"
    done = (out / "genotype.json").exists() and log.exists() and len(
        log.read_text().splitlines()) == PROXY["epochs"]
    if not done:
        print(f"zeta = {zeta:g}: searching into {out}", flush=True)
        search.train_and_evaluate(config)
    return [json.loads(line) for line in log.read_text().splitlines()]


def summarize(zeta: float, records: list[dict[str, Any]], genotype: dict[str, Any]
              ) -> dict[str, Any]:
    last = records[-1]
    total = sum(len(u) * len(u[0]) for u in last["arch"].values())
    return {
        "wipeout_factor": zeta,
        "total_steps": last["step"],
        "first_wipeout_step": last["first_wipeout_step"],
        "epochs": [r["epoch"] for r in records],
        "active_experts": [r["active_experts"] for r in records],
        "active_fraction": [r["active_fraction"] for r in records],
        # Per step (normal, reduce), in runs that logged it.
        "active_per_step": (sum((r["active_per_step"] for r in records), [])
                            if all("active_per_step" in r for r in records) else None),
        "experts_per_cell_type": total // 2,
        "entropy": [r["entropy"] for r in records],
        "val_accuracy": [r["val_accuracy"] for r in records],
        "clipped_fraction": [r["clipped_fraction"] for r in records],
        "seconds": [r["seconds"] for r in records],
        "genotype": {k: genotype[k] for k in ("normal", "reduce")},
        "selection": genotype["selection"],
    }


def plot(result: dict[str, Any], path: str) -> None:
    """Active experts and entropy per epoch, one line per zeta; first wipeouts marked."""
    fig, (ax_active, ax_entropy) = pea.figure(2, width=6.2)
    colors = {1.0: "tab:blue", 0.5: "tab:orange", 0.25: "tab:red", 0.02: "tab:purple"}
    for run in result["runs"]:
        zeta, color = run["wipeout_factor"], colors.get(run["wipeout_factor"], "k")
        steps_per_epoch = run["total_steps"] / len(run["epochs"])
        active = [sum(a.values()) for a in run["active_experts"]]
        epochs = [0] + run["epochs"]
        label = rf"$\zeta$ = {zeta:g}"
        if run.get("active_per_step"):
            steps = np.arange(len(run["active_per_step"]) + 1) / steps_per_epoch
            ax_active.step(steps, [2 * run["experts_per_cell_type"]]
                           + [sum(a) for a in run["active_per_step"]], where="post",
                           color=color, label=label)
        else:
            ax_active.plot(epochs, [2 * run["experts_per_cell_type"]] + active, "o-",
                           color=color, label=label)
        ax_entropy.plot(epochs, [1.0] + run["entropy"], "o-", color=color, label=label)
        if run["first_wipeout_step"] is not None:
            first = run["first_wipeout_step"] / steps_per_epoch
            ax_active.axvline(first, color=color, ls=":", lw=1)
    setup = result["setup"]
    ax_active.set(xlabel="epoch", ylabel="active experts (both cell types)",
                  title="Active experts (dotted: first wipeout)", ylim=(0, None))
    ax_entropy.set(xlabel="epoch", ylabel="mean normalized entropy of u",
                   title="Entropy of the mixture weights", ylim=(-0.03, 1.03))
    for ax in (ax_active, ax_entropy):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    pea.save_figure(
        fig, path,
        f"XNAS wipeout in a CIFAR-10 proxy search ({setup['max_train_examples']} images at "
        f"{32 // setup['downsample']}px, C={setup['channels']}, {setup['layers']} cells, "
        f"{result['runs'][0]['total_steps']} steps)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Runs (or reuses) the searches, then writes ``NAME.json`` and ``NAME.png`` into ``--out``."""
    parser = experiments.argument_parser(__spec__.name, __doc__)
    experiments.add_data_dir(parser)
    parser.add_argument("--work-dir", default="runs/wipeout_search",
                        help="where the searches write, reused and resumed (default: "
                             "%(default)s)")
    experiments.add_out(parser, "where the JSON and PNG go")
    parser.add_argument("--zetas", type=float, nargs="+", default=list(ZETAS),
                        help="wipeout factors (default: %(default)s)")
    args = parser.parse_args(argv)
    (data,) = experiments.data_files(args.data_dir, "train.zip")
    work_dir = Path(args.work_dir)
    runs = []
    for zeta in args.zetas:
        records = search_once(data, work_dir, zeta, work_dir / "cache")
        genotype = json.loads((_run_dir(work_dir, zeta) / "genotype.json").read_text())
        runs.append(summarize(zeta, records, genotype))
    result = {"setup": {**PROXY, "data": data.name}, "runs": runs}
    pea.save(NAME, result, plot, args.out)
    for run in runs:
        print(f"zeta {run['wipeout_factor']:g}: first wipeout at step "
              f"{run['first_wipeout_step']} of {run['total_steps']}, active "
              f"{[sum(a.values()) for a in run['active_experts']]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
