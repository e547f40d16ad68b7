"""Plots of a search: architecture-weight trajectories, active experts, losses,
the mixture weights of an epoch, and the picture of a discrete cell.

:func:`plot_arch_trajectories`, :func:`plot_active_experts` and
:func:`plot_losses` read the per-epoch records of ``log.jsonl`` (see
:mod:`xnas_jax.search`); :func:`plot_cell` draws one cell of a
:class:`~xnas_jax.genotypes.Genotype` as a graph.  All draw on plain
matplotlib figures with the Agg backend and write PNG files.
"""

from __future__ import annotations

import itertools
import math
import os
from typing import Any, Sequence

import numpy as np

from xnas_jax import genotypes


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


# --------------------------------------------------------------------------
# The picture of a cell.


# Edge colours by operation family, so the kind of a cell shows at a glance.
_OP_COLORS = {
    "none": "#bbbbbb",
    "max_pool_3x3": "#d98c00",
    "avg_pool_3x3": "#b8860b",
    "skip_connect": "#666666",
    "sep_conv_3x3": "#1f5fb4",
    "sep_conv_5x5": "#1f5fb4",
    "dil_conv_3x3": "#7b3fa0",
    "dil_conv_5x5": "#7b3fa0",
}
_CONCAT_COLOR = "#999999"
_INPUT_COLOR = "#b4dcb4"
_NODE_COLOR = "#b4d2f0"
_OUTPUT_COLOR = "#f0e0a0"
# Geometry in data units, drawn at 1 unit per inch.
_X_GAP = 2.6  # between columns: room for a label between two nodes.
_Y_GAP = 1.4  # between the nodes of a column.
_NODE_RADIUS = 0.3
_NODE_SIZE = (2 * _NODE_RADIUS * 72) ** 2  # the same circle as a marker area, points^2.
_BULGES = (0.0, 0.3, -0.3, 0.55, -0.55, 0.8, -0.8, 1.1, -1.1)  # how far an edge may arc.
_LABEL_SPOTS = (0.5, 0.4, 0.6, 0.3, 0.7, 0.22, 0.78)  # where along its edge a label may sit.
_LABEL_FONT = 8  # points.
_MAX_LAYOUTS = 20000  # beyond this many candidate layouts, take the plain one.


def _bezier_points(start: np.ndarray, end: np.ndarray, rad: float, count: int = 24) -> np.ndarray:
    # matplotlib's "arc3" connection: a quadratic Bezier whose control point is
    # the chord's midpoint moved by rad * (dy, -dx); the curve's middle lies
    # half way to it.
    delta = end - start
    control = (start + end) / 2 + rad * np.array([delta[1], -delta[0]])
    t = np.linspace(0.0, 1.0, count)[:, None]
    return (1 - t) ** 2 * start + 2 * t * (1 - t) * control + t**2 * end


def _clearance_cost(points: np.ndarray, obstacles: np.ndarray) -> float:
    # How deep a drawn edge cuts into the space around nodes it does not touch.
    if not len(obstacles):
        return 0.0
    distance = np.linalg.norm(points[:, None, :] - obstacles[None, :, :], axis=2).min(axis=0)
    return float(np.maximum(0.0, 1.6 * _NODE_RADIUS - distance).sum())


def _segments_cross(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray) -> bool:
    def side(p, q, r):
        return np.sign((q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0]))

    return side(a, b, c) * side(a, b, d) < 0 and side(c, d, a) * side(c, d, b) < 0


def _others(pos: dict[str, np.ndarray], u: str, v: str) -> np.ndarray:
    return np.array([p for n, p in pos.items() if n not in (u, v)]).reshape(-1, 2)


def _cell_layout(edges: list[tuple[str, str]], layers: dict[str, int]) -> dict[str, np.ndarray]:
    """Node positions: one column per layer, left to right.

    Inside each column the order of the nodes, and for columns shorter than the
    tallest a shift by half a row, are chosen to minimize edge crossings and
    straight edges running through nodes (exhaustively: a cell has few nodes;
    the inputs keep c_{k-2} above c_{k-1}).
    """
    columns: dict[int, list[str]] = {}
    for name, layer in sorted(layers.items(), key=lambda item: item[1]):
        columns.setdefault(layer, []).append(name)
    tallest = max(len(column) for column in columns.values())

    def arrangements(layer: int) -> list[tuple[tuple[str, ...], float]]:
        column = columns[layer]
        orders = [tuple(column)] if layer == 0 else list(itertools.permutations(column))
        shifts = (0.0,) if layer == 0 or len(column) == tallest else (0.0, 0.5, -0.5)
        return [(order, shift) for order in orders for shift in shifts]

    choices = [arrangements(layer) for layer in sorted(columns)]
    if math.prod(len(c) for c in choices) > _MAX_LAYOUTS:
        choices = [[(tuple(columns[layer]), 0.0)] for layer in sorted(columns)]

    best, best_cost = None, math.inf
    for choice in itertools.product(*choices):
        pos = {}
        for layer, (order, shift) in zip(sorted(columns), choice):
            for rank, name in enumerate(order):
                y = ((len(order) - 1) / 2 - rank + shift) * _Y_GAP
                pos[name] = np.array([layer * _X_GAP, y])
        cost = 0.0
        for i, (u, v) in enumerate(edges):
            cost += 3.0 * _clearance_cost(_bezier_points(pos[u], pos[v], 0.0), _others(pos, u, v))
            for x, y in edges[i + 1 :]:
                if len({u, v, x, y}) == 4 and _segments_cross(pos[u], pos[v], pos[x], pos[y]):
                    cost += 1.0
        # Tie-breaks: short edges, centred columns.
        cost += 0.01 * sum(abs(pos[u][1] - pos[v][1]) for u, v in edges)
        cost += 0.02 * sum(abs(shift) for _, shift in choice)
        if cost < best_cost - 1e-9:
            best, best_cost = pos, cost
    return best


def _choose_curves(edges: list[tuple[str, str]], pos: dict[str, np.ndarray]) -> list[float]:
    """An arc3 ``rad`` per edge: the least arc that misses the nodes the edge
    does not touch and does not run along an edge placed before it (so two
    edges between the same nodes get distinct arcs).  Short edges are placed
    first: long ones have more room to give way."""
    rads = [0.0] * len(edges)
    placed: list[np.ndarray] = []
    lengths = [float(np.linalg.norm(pos[v] - pos[u])) for u, v in edges]
    for index in sorted(range(len(edges)), key=lambda i: lengths[i]):
        u, v = edges[index]
        length = lengths[index]
        obstacles = _others(pos, u, v)
        previous = np.concatenate(placed) if placed else np.zeros((0, 2))

        def interior(points: np.ndarray) -> np.ndarray:
            # Edges sharing an end meet there anyway: only the stretch away
            # from both ends can run along another edge.
            away = np.minimum(
                np.linalg.norm(points - pos[u], axis=1), np.linalg.norm(points - pos[v], axis=1)
            )
            return points[away > 2 * _NODE_RADIUS]

        def cost(bulge: float) -> float:
            points = _bezier_points(pos[u], pos[v], 2 * bulge / length)
            mine = interior(points)
            hugging = 0.0
            if len(mine) and len(previous):
                gaps = np.linalg.norm(mine[:, None, :] - previous[None, :, :], axis=2).min(axis=1)
                hugging = float(np.mean(gaps < 0.15))
            return round(_clearance_cost(points, obstacles), 3) + 0.5 * hugging + 0.05 * abs(bulge)

        rads[index] = 2 * min(_BULGES, key=cost) / length
        placed.append(interior(_bezier_points(pos[u], pos[v], rads[index])))
    return rads


def _label_box(center: np.ndarray, text: str) -> np.ndarray:
    # (x0, y0, x1, y1) in data units (inches); a DejaVu Sans character is about
    # 0.6 em wide, plus the bbox padding.
    half_width = (0.6 * len(text) + 0.4) * _LABEL_FONT / 72 / 2
    half_height = 1.4 * _LABEL_FONT / 72 / 2
    return np.array([center[0] - half_width, center[1] - half_height,
                     center[0] + half_width, center[1] + half_height])  # fmt: skip


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def _place_labels(
    drawn: list[tuple[str, str, str | None, float]], pos: dict[str, np.ndarray]
) -> list[np.ndarray | None]:
    """Label positions along the drawn edges (None for unlabelled ones), slid
    away from the middle where they would cover other labels, nodes or lines
    (greedy, edge by edge)."""
    curves = [_bezier_points(pos[u], pos[v], rad, count=101) for u, v, _, rad in drawn]
    pad = _NODE_RADIUS + 0.05
    taken = [np.array([x - pad, y - pad, x + pad, y + pad]) for x, y in pos.values()]
    placed: list[np.ndarray | None] = []
    for index, (_, _, op, _) in enumerate(drawn):
        if op is None:
            placed.append(None)
            continue
        others = np.concatenate([c for i, c in enumerate(curves) if i != index])

        def cost(t: float) -> float:
            box = _label_box(curves[index][round(t * 100)], op)
            covered = np.sum(
                (others[:, 0] > box[0]) & (others[:, 0] < box[2])
                & (others[:, 1] > box[1]) & (others[:, 1] < box[3])
            )  # fmt: skip
            overlap = sum(_overlap(box, other) for other in taken)
            return 10 * overlap + 0.01 * covered + 0.01 * abs(t - 0.5)

        t = min(_LABEL_SPOTS, key=cost)
        placed.append(curves[index][round(t * 100)])
        taken.append(_label_box(placed[-1], op))
    return placed


def plot_cell(
    genotype: genotypes.Genotype,
    cell: str = "normal",
    path: str | os.PathLike | None = None,
    title: str | None = None,
):
    """Draws one cell of a genotype as a left-to-right graph.

    The inputs ``c_{k-2}`` and ``c_{k-1}`` stand on the left, the intermediate
    nodes (numbered 0..steps-1, node i being state i+2) in columns by their
    depth (as graphviz's "dot" ranks them), the output ``c_{k}`` on the right,
    fed by dashed concatenation edges.  Each operation edge carries its name,
    coloured by family (separable convolutions blue, dilated purple, pooling
    ochre, skip grey).  Drawn with networkx on a plain matplotlib ``Figure``
    with the Agg canvas: no display needed, pyplot's state left alone.

    Args:
      genotype: the genotype.
      cell: "normal" or "reduce".
      path: if given, the figure is saved there (PNG unless the suffix says
        otherwise).
      title: the figure title; None gives e.g. "normal cell".

    Returns:
      The ``matplotlib.figure.Figure``.
    """
    import networkx as nx
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if cell not in ("normal", "reduce"):
        raise ValueError(f"cell must be 'normal' or 'reduce', got {cell!r}")
    genotype = genotypes.validate_genotype(genotype)
    pairs = getattr(genotype, cell)
    concat = getattr(genotype, f"{cell}_concat")
    steps = len(pairs) // 2

    def name(state: int) -> str:
        return ("$c_{k-2}$", "$c_{k-1}$")[state] if state < 2 else str(state - 2)

    output = "$c_{k}$"
    # (source, destination, op or None for a concatenation edge).
    edges = [(name(source), name(2 + index // 2), op) for index, (op, source) in enumerate(pairs)]
    edges += [(name(state), output, None) for state in concat]
    graph = nx.DiGraph()
    graph.add_nodes_from([name(state) for state in range(2 + steps)] + [output])
    graph.add_edges_from((u, v) for u, v, _ in edges)

    # A node's column is one more than its deepest input's.
    layers = {name(0): 0, name(1): 0}
    for node in range(steps):
        layers[name(node + 2)] = 1 + max(layers[name(s)] for _, s in pairs[2 * node : 2 * node + 2])
    layers[output] = 1 + max(layers[name(state)] for state in concat)
    pos = _cell_layout(list(graph.edges), layers)
    rads = _choose_curves([(u, v) for u, v, _ in edges], pos)
    drawn = [(u, v, op, rad) for (u, v, op), rad in zip(edges, rads)]
    labels = _place_labels(drawn, pos)

    # Frame everything drawn: nodes, arcs and labels.
    extent = [np.array([[x - _NODE_RADIUS, y - _NODE_RADIUS], [x + _NODE_RADIUS, y + _NODE_RADIUS]])
              for x, y in pos.values()]  # fmt: skip
    extent += [_bezier_points(pos[u], pos[v], rad) for u, v, _, rad in drawn]
    extent += [
        _label_box(spot, op).reshape(2, 2) for (_, _, op, _), spot in zip(drawn, labels) if op
    ]
    low, high = np.concatenate(extent).min(axis=0) - 0.25, np.concatenate(extent).max(axis=0) + 0.25
    title_room = 0.45
    width, height = high - low + np.array([0.0, title_room])
    fig = Figure(figsize=(width, height), dpi=150)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(low[0], high[0])
    ax.set_ylim(low[1], high[1] + title_room)
    ax.set_aspect("equal")
    ax.axis("off")

    node_colors = [
        _INPUT_COLOR if layers[n] == 0 else _OUTPUT_COLOR if n == output else _NODE_COLOR
        for n in graph.nodes
    ]
    nx.draw_networkx_nodes(
        graph, pos, ax=ax, node_size=_NODE_SIZE, node_color=node_colors,
        edgecolors="#333333", linewidths=1.0,
    )  # fmt: skip
    nx.draw_networkx_labels(graph, pos, ax=ax, font_size=11)
    for (u, v, op, rad), spot in zip(drawn, labels):
        color = _OP_COLORS[op] if op is not None else _CONCAT_COLOR
        nx.draw_networkx_edges(
            graph, pos, edgelist=[(u, v)], ax=ax, node_size=_NODE_SIZE, arrows=True,
            arrowstyle="-|>", arrowsize=14, width=1.4 if op else 1.0, edge_color=color,
            style="solid" if op else "dashed", connectionstyle=f"arc3,rad={rad}",
        )  # fmt: skip
        if op is not None:
            ax.text(
                *spot, op, fontsize=_LABEL_FONT, color=color, ha="center", va="center", zorder=5,
                bbox=dict(boxstyle="round,pad=0.2", facecolor="white", edgecolor="none", alpha=0.9),
            )  # fmt: skip
    ax.text(
        (low[0] + high[0]) / 2, high[1] + title_room / 2,
        title if title is not None else f"{cell} cell", ha="center", va="center", fontsize=12,
    )  # fmt: skip
    if path is not None:
        fig.savefig(path)
    return fig


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
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
