"""Plots of a search: architecture-weight trajectories, active experts, losses,
the mixture weights of an epoch, and the search-quality figures.

:func:`plot_arch_trajectories`, :func:`plot_active_experts` and
:func:`plot_losses` read the per-epoch records of ``log.jsonl`` (see
:mod:`xnas_jax.search`); a DARTS cell is drawn by
:mod:`xnas_jax.spaces.darts.drawing`.  All draw on plain
matplotlib figures with the Agg backend and write PNG files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def _figure(rows: int, cols: int, size: tuple[float, float], layout: str | None = "constrained"):
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout=layout)
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
    # A fixed grid: the constrained layout's text measuring of many panels
    # would take longer than the whole rest of the drawing.
    height = 1.9 * rows + 0.8
    fig, axes = _figure(rows, cols, (2.2 * cols, height), layout=None)
    fig.subplots_adjust(left=0.05, right=0.99, top=1 - 0.45 / height, bottom=0.55 / height,
                        wspace=0.3, hspace=0.45)
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
    _finish_op_panels(fig, axes, "u", f"Mixture weights of the {cell} cell against the epoch",
                      path)


def plot_active_experts(history: Sequence[dict[str, Any]], path: str | os.PathLike) -> None:
    """Active (not wiped-out) experts per cell type, and the work computed."""
    epochs = [record["epoch"] for record in history]
    fig, axes = _figure(1, 2, (10, 3.6))
    cells = list(history[0]["arch"])  # the space's cell types
    for cell in cells:
        masks = np.array([record["active"][cell] for record in history], bool)
        active = masks.sum(axis=(1, 2)) / masks[0].size
        axes[0][0].plot(epochs, 100 * active, marker="o", label=cell)
        computed = [len(record["computed"][cell]) for record in history]
        axes[0][1].plot(epochs, computed, marker="o", label=cell)
    axes[0][0].set(xlabel="epoch", ylabel="active experts (%)", title="Experts not wiped out")
    num_experts = len(history[0]["arch"][cells[0]][0])
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


def plot_search(history: Sequence[dict[str, Any]], ops: Sequence[str],
                folder: str | os.PathLike) -> None:
    """A search's plots in ``folder``: ``arch_<cell>.png`` per cell type
    (:func:`plot_arch_trajectories`), ``active_experts.png`` and ``losses.png``."""
    folder = Path(folder)
    for cell in history[-1]["arch"]:
        plot_arch_trajectories(history, ops, cell, folder / f"arch_{cell}.png")
    plot_active_experts(history, folder / "active_experts.png")
    plot_losses(history, folder / "losses.png")


def plot_seed_agreement(agreement: dict[str, Any], path: str | os.PathLike) -> None:
    """Per cell type, how many seeds keep each edge (node x input), with the most common
    operation and its count written in the square (:func:`xnas_jax.search.stability`)."""
    seeds = agreement["seeds"]
    cells = [c for c in ("normal", "reduce") if c in agreement]
    nodes = 1 + max((e["node"] for c in cells for e in agreement[c]["edges"]), default=0)
    fig, axes = _figure(1, len(cells), (4.2 * len(cells), 0.9 * nodes + 1.6))
    for ax, cell in zip(axes[0], cells):
        grid = np.zeros((nodes, nodes + 2))
        for edge in agreement[cell]["edges"]:
            grid[edge["node"], edge["input"]] = edge["seeds"]
            ax.text(edge["input"], edge["node"], f"{edge['op']}\n{edge['op_seeds']}/{seeds}",
                    ha="center", va="center", fontsize=6)
        image = ax.imshow(grid, cmap="Blues", vmin=0, vmax=seeds, aspect="auto")
        ax.set_xticks(range(nodes + 2), ["c_{k-2}", "c_{k-1}"] + [str(j) for j in range(nodes)],
                      fontsize=7)
        ax.set_yticks(range(nodes), [f"node {j}" for j in range(nodes)], fontsize=7)
        ax.set(xlabel="input", title=f"{cell}: seeds keeping each edge "
               f"({100 * agreement[cell]['op_agreement']:.0f}% op agreement)")
        fig.colorbar(image, ax=ax, label="seeds")
    fig.savefig(path, dpi=110)


def plot_edge_weights(weights: np.ndarray, ops: Sequence[str], edges: Sequence[str],
                      title: str):
    """One cell type's mixture weights u as a grid: a row per edge, a column per expert.

    One image shows which experts each edge still weighs and which were
    wiped out (u = 0).  Each row is scaled to its largest weight.

    Args:
      weights: u of shape ``(len(edges), len(ops))``.
      ops: the expert of each column.
      edges: the label of each row, e.g. ``"0 -> 2"`` (a search space's
        ``edge_labels``).
      title: the figure title, e.g. ``"normal: u at epoch 3"``.

    Returns:
      The ``matplotlib.figure.Figure`` (small: it is drawn every epoch).
    """
    weights = np.asarray(weights, np.float64)
    if weights.shape != (len(edges), len(ops)):
        raise ValueError(f"weights of shape {weights.shape} do not fit {len(edges)} edges and "
                         f"{len(ops)} ops")
    peak = weights.max(axis=1, keepdims=True)
    fig, axes = _figure(1, 1, (1.2 + 0.45 * len(ops), 1.3 + 0.22 * len(edges)))
    ax = axes[0, 0]
    image = ax.imshow(weights / np.where(peak > 0, peak, 1), cmap="viridis", vmin=0, vmax=1,
                      aspect="auto")
    ax.set_xticks(range(len(ops)), list(ops), rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(edges)), list(edges), fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="u / max u of the edge")
    return fig


def figure_pixels(fig) -> np.ndarray:
    """A matplotlib figure rendered as an (H, W, 3) uint8 array (for TensorBoard)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def plot_search_quality(table_accuracies: Sequence[float],
                        picks: dict[str, Sequence[float]], path: str | os.PathLike) -> None:
    """The true accuracy of each method's picks, over the distribution of every cell's.

    Top: a histogram of the table's accuracies.  Below: one row per method,
    a dot per seed at its returned cell's accuracy, and the mean as a bar.
    """
    accuracies = 100 * np.asarray(table_accuracies, np.float64)
    fig, axes = _figure(2, 1, (8, 2.2 + 0.45 * len(picks)))
    top, bottom = axes[0][0], axes[1][0]
    bins = np.linspace(accuracies.min() - 0.5, accuracies.max() + 0.5, 40)
    top.hist(accuracies, bins=bins, color="0.6")
    top.axvline(accuracies.max(), color="k", lw=0.8, ls="--")
    top.set(ylabel="cells", title=f"All {len(accuracies)} cells of the table (dashed: the best)")
    rng = np.random.default_rng(0)
    for row, (method, values) in enumerate(picks.items()):
        values = 100 * np.asarray(values, np.float64)
        bottom.scatter(values, row + rng.uniform(-0.15, 0.15, len(values)), s=18, alpha=0.7,
                       label=method)
        bottom.plot([values.mean()] * 2, [row - 0.3, row + 0.3], color="k", lw=2)
    bottom.axvline(accuracies.max(), color="k", lw=0.8, ls="--")
    bottom.set(yticks=range(len(picks)), yticklabels=list(picks), xlabel="test accuracy (%)",
               ylim=(-0.6, len(picks) - 0.4), title="The cells each method returned (bar: mean)")
    bottom.set_xlim(top.get_xlim())
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110)


def plot_percentile_by_length(results: dict[str, dict[int, Sequence[float]]],
                              path: str | os.PathLike) -> None:
    """Each method's table percentile against the search length: mean and standard error.

    ``results[method][epochs]`` holds the percentiles of its seeds; lengths
    without runs are left out.
    """
    fig, axes = _figure(1, 1, (6.4, 4))
    ax = axes[0][0]
    for method, by_length in results.items():
        lengths = [e for e, values in sorted(by_length.items()) if len(values)]
        if not lengths:
            continue
        means = [np.mean(by_length[e]) for e in lengths]
        errors = [np.std(by_length[e], ddof=1) / np.sqrt(len(by_length[e]))
                  if len(by_length[e]) > 1 else 0.0 for e in lengths]
        ax.errorbar(lengths, means, yerr=errors, marker="o", capsize=3, label=method)
    ax.axhline(50.0, color="0.5", lw=0.8, ls="--")
    ax.set(xlabel="search length (proxy epochs)", ylabel="table percentile of the pick",
           ylim=(0, 100), title="Search quality against search length (mean +- s.e.)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=110)


def plot_cumulative_rewards(cumulative: Sequence[Any], ops: Sequence[str],
                            edges: Sequence[str], path: str | os.PathLike,
                            title: str = "") -> None:
    """Each op's cumulative reward on each edge against the epoch: which op leads when.

    ``cumulative[epoch]`` is the (edges, ops) table of rewards summed since
    the search began, at the end of that epoch.
    """
    table = np.asarray(cumulative, np.float64)  # (epochs, E, N)
    epochs = np.arange(1, len(table) + 1)
    fig, axes = _figure(1, len(edges), (3.6 * len(edges), 3.4))
    for e, ax in enumerate(axes[0]):
        for k, op in enumerate(ops):
            ax.plot(epochs, table[:, e, k], label=op)
        ax.set(title=f"edge {edges[e]}", xlabel="epoch")
        ax.grid(alpha=0.3)
    _finish_op_panels(fig, axes, "cumulative reward",
                      f"Cumulative reward per op and edge{': ' + title if title else ''}", path)


def _finish_op_panels(fig, axes, ylabel: str, title: str, path: str | os.PathLike) -> None:
    """Panels of one curve per op: the y label, one legend of the ops below, the title."""
    axes[0][0].set_ylabel(ylabel)
    handles, labels = axes[0][0].get_legend_handles_labels()
    # Under the constrained layout the legend takes its own row below the panels
    # (else it would cover their x labels); a fixed grid leaves a bottom margin for it.
    where = "outside lower center" if fig.get_layout_engine() is not None else "lower center"
    fig.legend(handles, labels, loc=where, ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
