"""The picture of a DARTS cell: :func:`plot_cell` draws one cell of a
:class:`~xnas_jax.spaces.darts.genotypes.Genotype` as a left-to-right graph."""

from __future__ import annotations

import itertools
import math
import os

import numpy as np

from xnas_jax.spaces.darts import genotypes

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


