"""Plots of a search: architecture-weight trajectories, active experts, losses.

All functions read the per-epoch records of ``log.jsonl`` (see
:mod:`xnas_jax.search`) and write PNG files with matplotlib's Agg backend.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np


def _figure(rows: int, cols: int, size: tuple[float, float]):
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def plot_arch_trajectories(
    history: Sequence[dict[str, Any]], ops: Sequence[str], cell: str, path: str | os.PathLike
) -> None:
    """u of every expert on every edge of one cell type, against the epoch."""
    epochs = [record["epoch"] for record in history]
    weights = np.array([record["arch"][cell] for record in history])  # (T, E, N)
    num_edges = weights.shape[1]
    cols = 7 if num_edges >= 7 else num_edges
    rows = -(-num_edges // cols)
    fig, axes = _figure(rows, cols, (2.2 * cols, 1.9 * rows + 0.8))
    for edge in range(rows * cols):
        ax = axes[edge // cols][edge % cols]
        if edge >= num_edges:
            ax.set_axis_off()
            continue
        for i, name in enumerate(ops):
            ax.plot(epochs, weights[:, edge, i], label=name, lw=1.2)
        ax.set_title(f"edge {edge}", fontsize=8)
        ax.set_ylim(-0.02, 1.02)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("u")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(ops), fontsize=8)
    fig.suptitle(f"Mixture weights of the {cell} cell against the epoch")
    fig.savefig(path, dpi=110)


def plot_active_experts(history: Sequence[dict[str, Any]], path: str | os.PathLike) -> None:
    """Active (not wiped-out) experts per cell type, and the work computed."""
    epochs = [record["epoch"] for record in history]
    fig, axes = _figure(1, 2, (10, 3.6))
    for cell in ("normal", "reduce"):
        weights = np.array([record["arch"][cell] for record in history])
        active = (weights > 0).sum(axis=(1, 2)) / weights[0].size
        axes[0][0].plot(epochs, 100 * active, marker="o", label=cell)
        computed = [len(record["computed"][cell]) for record in history]
        axes[0][1].plot(epochs, computed, marker="o", label=cell)
    axes[0][0].set(xlabel="epoch", ylabel="active experts (%)", title="Experts not wiped out")
    num_experts = len(history[0]["arch"]["normal"][0])
    axes[0][1].set(xlabel="epoch", ylabel="experts evaluated per edge",
                   title="Experts computed (active on some edge)",
                   ylim=(0, num_experts + 0.5), yticks=range(num_experts + 1))
    axes[0][0].set_ylim(0, 105)
    for ax in axes[0]:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110)


def plot_losses(history: Sequence[dict[str, Any]], path: str | os.PathLike) -> None:
    """Training and validation loss and accuracy against the epoch."""
    epochs = [record["epoch"] for record in history]
    fig, axes = _figure(1, 2, (10, 3.6))
    for split in ("train", "val"):
        axes[0][0].plot(epochs, [r[f"{split}_loss"] for r in history], marker="o", label=split)
        axes[0][1].plot(
            epochs, [100 * r[f"{split}_accuracy"] for r in history], marker="o", label=split
        )
    axes[0][0].set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
    axes[0][1].set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    for ax in axes[0]:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110)
