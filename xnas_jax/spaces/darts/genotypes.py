"""The discrete side of the DARTS cell search space.

A cell is a small DAG (Liu et al., DARTS, ICLR 2019; used unchanged by XNAS,
Nayman et al., NeurIPS 2019, section 2.1).  Its states are numbered

* 0 -- the output of cell k-2, and 1 -- the output of cell k-1 (the inputs);
* 2 .. steps+1 -- the intermediate nodes; node ``i`` (0-based) is state ``i+2``.

During the search node ``i`` sums one mixed edge from every earlier state
``0 .. i+1``.  The edges are numbered node by node and, inside a node, by
source state (:func:`edge_list`); the supernet stores its mixture weights as
arrays of shape ``(num_edges(steps), num_ops)`` in that order.

After the search every node keeps two edges with one operation each.  That
discrete cell is a :class:`Genotype`, in the format of the DARTS repository:
``normal`` lists ``(op_name, input_state)`` pairs, two per node, node by node,
and ``normal_concat`` the states concatenated into the cell's output
(``reduce`` and ``reduce_concat`` likewise for the reduction cell).

Which two edges a node keeps depends on how edges are ranked
(:func:`edge_strengths`).  DARTS ranks them by ``max_i u_i``; with XNAS that
carries no information at the end of a search, because the wipeout leaves
exactly one expert per edge at the horizon (u one-hot: every edge ties at
1).  An XNAS search therefore ranks a node's edges by the rewards their
chosen experts accumulated over the search: every edge into a node adds into
it and so receives the same loss gradient, which puts their rewards on one
scale, and the summed reward is the "best in hindsight" quantity of XNAS's
regret (eq. 2).

This module turns mixture weights into a genotype (:func:`discretize`),
validates genotypes (:func:`validate_genotype`), reads and writes them as
JSON or as a Python file in the DARTS repository's form
(:func:`save_genotype_python`), prints them and holds the published cells
(:data:`PUBLISHED`).  Drawing
a cell is :func:`xnas_jax.plotting.plot_cell`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "PRIMITIVES",
    "XNAS_PRIMITIVES",
    "Genotype",
    "GenotypeError",
    "edge_list",
    "num_edges",
    "reduction_layers",
    "cell_replicas",
    "discretize",
    "edge_strengths",
    "selection_record",
    "validate_genotype",
    "genotype_to_dict",
    "genotype_from_dict",
    "save_genotype",
    "load_genotype",
    "format_genotype",
    "genotype_python",
    "save_genotype_python",
    "get_genotype",
    "DARTS_V1",
    "DARTS_V2",
    "XNAS",
    "PUBLISHED",
]

# The DARTS operation set, in the DARTS order (index = position in the last
# axis of the mixture weights when a search uses all of them).
PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)

# The seven experts of every XNAS forecaster (paper section 4.1): DARTS's set
# without "none".
XNAS_PRIMITIVES: tuple[str, ...] = tuple(op for op in PRIMITIVES if op != "none")

_NONE = "none"
_CELLS = ("normal", "reduce")
_FIELDS = ("normal", "normal_concat", "reduce", "reduce_concat")
_FORMAT = "xnas_jax.genotype"


class GenotypeError(ValueError):
    """A genotype, or its JSON form, is malformed."""


class Genotype(NamedTuple):
    """A discrete normal cell and reduction cell, in the DARTS format.

    ``normal[2*i]`` and ``normal[2*i+1]`` are the two ``(op_name, input_state)``
    edges of intermediate node ``i`` (state ``i+2``); an input state of node
    ``i`` is one of ``0 .. i+1``.
    """

    normal: list[tuple[str, int]]  # 2 * steps pairs, node by node.
    normal_concat: list[int]  # states concatenated into the output, e.g. [2, 3, 4, 5].
    reduce: list[tuple[str, int]]  # 2 * steps pairs, node by node.
    reduce_concat: list[int]


# --------------------------------------------------------------------------
# The cell graph.


def _check_steps(steps: Any) -> int:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return int(steps)


def num_edges(steps: int = 4) -> int:
    """The number of mixed edges of a search cell: ``2 + 3 + ... + (steps+1)``.

    Args:
      steps: the number of intermediate nodes (>= 1); DARTS and XNAS use 4.

    Returns:
      ``steps * (steps + 3) // 2`` (14 for 4 steps).
    """
    steps = _check_steps(steps)
    return steps * (steps + 3) // 2


def edge_list(steps: int = 4) -> list[tuple[int, int]]:
    """The edges of a search cell, in the order the mixture weights use.

    Node ``i`` takes one edge from each of the states ``0 .. i+1``; edges are
    listed node by node and, inside a node, by source state.  Every edge comes
    after the edges into its source, so a single pass over this list computes
    the cell.

    Args:
      steps: the number of intermediate nodes (>= 1).

    Returns:
      ``num_edges(steps)`` pairs ``(source_state, node_index)``, with
      ``node_index`` 0-based (the node's state is ``node_index + 2``).
    """
    steps = _check_steps(steps)
    return [(source, node) for node in range(steps) for source in range(node + 2)]


def reduction_layers(layers: int) -> tuple[int, ...]:
    """The indices of the reduction cells in a network of ``layers`` cells.

    DARTS places them at 1/3 and 2/3 of the depth (``layers // 3`` and
    ``2 * layers // 3``, one cell when these coincide), in the search network
    and the evaluation networks alike; every other cell is a normal cell.
    """
    return tuple(sorted({layers // 3, 2 * layers // 3}))


def cell_replicas(layers: int) -> dict[str, int]:
    """How many cells of each type a network of ``layers`` cells has.

    In the search network the cells of one type share its mixture weights, so
    this is r_c of the XNAS paper (section 3.1), the number of feedbacks per
    image each forecaster gets.
    """
    reductions = len(reduction_layers(layers))
    return {"normal": layers - reductions, "reduce": reductions}


# --------------------------------------------------------------------------
# Discretization.


def _check_ops(ops: Any) -> tuple[str, ...]:
    if isinstance(ops, str) or not isinstance(ops, Sequence):
        raise ValueError(f"ops must be a sequence of operation names, got {ops!r}")
    ops = tuple(ops)
    unknown = [op for op in ops if op not in PRIMITIVES]
    if unknown:
        raise ValueError(
            f"ops contains unknown operation name(s) {unknown}; valid names: {list(PRIMITIVES)}"
        )
    if len(set(ops)) != len(ops):
        raise ValueError(f"ops contains duplicate names: {list(ops)}")
    if all(op == _NONE for op in ops):
        raise ValueError(f"ops needs at least one operation other than 'none', got {list(ops)}")
    return ops


# The two rules that rank a node's incoming edges (see :func:`edge_strengths`).
RULE_MAX_WEIGHT = "max_weight"
RULE_CUMULATIVE_REWARD = "cumulative_reward"


def _check_table(name: str, table: Any, ops: tuple[str, ...], steps: int) -> np.ndarray:
    table = np.asarray(table)
    expected = (num_edges(steps), len(ops))
    if table.shape != expected:
        raise ValueError(
            f"{name} must have shape (num_edges(steps={steps}), len(ops)) = {expected}, "
            f"got {table.shape}"
        )
    if not (np.issubdtype(table.dtype, np.integer) or np.issubdtype(table.dtype, np.floating)):
        raise ValueError(f"{name} must hold real numbers, got dtype {table.dtype}")
    table = table.astype(np.float64)
    if not np.all(np.isfinite(table)):
        raise ValueError(f"{name} holds non-finite values (nan or inf)")
    return table


def edge_strengths(
    weights: Any, ops: Sequence[str], steps: int = 4, rewards: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """Each edge's chosen expert and the strength its node ranks it by.

    The chosen expert is the edge's strongest by mixture weight, ``argmax_i
    u_i`` over the experts other than "none" (XNAS section 2.1).  The
    strength depends on the rule:

    * without ``rewards`` (rule ``max_weight``, DARTS and XNAS section 2.1):
      ``max_i u_i``.  Right for softmax weights, which stay dense; but XNAS's
      wipeout leaves one expert per edge at the horizon (u one-hot), so every
      edge then has strength 1 and the ranking carries no information.
    * with ``rewards`` (rule ``cumulative_reward``): the chosen expert's
      rewards summed over the search, ``sum_t R_t,i``.  The edges into a node
      all add into that node, so they receive the same loss gradient
      ``dL/dx_node`` and their rewards ``-<dL/dx_node, f_i>`` are on one
      scale: the node's incoming (edge, expert) pairs compete as experts of
      one forecaster, and the two best in hindsight (the quantity XNAS's
      regret compares against, eq. 2) are kept.  It is what XNAS's log-weights
      accumulate, ``log v_i = eta sum_t R_t,i``, before the per-edge
      normalization that makes the edges' u incomparable.

    Args:
      weights: (num_edges(steps), len(ops)) mixture weights u.
      ops: the operation of each column.
      steps: intermediate nodes per cell.
      rewards: None, or the (num_edges(steps), len(ops)) summed rewards.

    Returns:
      ``(best_op, strength)``: per edge, the index of the chosen expert in
      ``ops`` (the first on ties) and its strength, float64.
    """
    steps = _check_steps(steps)
    ops = _check_ops(ops)
    weights = _check_table("weights", weights, ops, steps)
    # "none" never wins: it neither makes an edge strong nor labels it.
    candidates = np.array([op != _NONE for op in ops])
    scores = np.where(candidates, weights, -np.inf)
    best_op = scores.argmax(axis=1)  # argmax returns the first maximum: lowest op index.
    if rewards is None:
        return best_op, scores.max(axis=1)
    rewards = _check_table("rewards", rewards, ops, steps)
    return best_op, rewards[np.arange(len(best_op)), best_op]


def _discretize_cell(
    name: str, weights: Any, ops: tuple[str, ...], steps: int, rewards: Any
) -> list[tuple[str, int]]:
    weights = _check_table(name, weights, ops, steps)
    if rewards is not None:
        rewards = _check_table(f"{name.split('_')[0]} rewards", rewards, ops, steps)
    best_op, strength = edge_strengths(weights, ops, steps, rewards)
    pairs = []
    first_edge = 0
    for node in range(steps):
        sources = range(node + 2)
        # Strongest first; a stable sort keeps the lower source on ties.
        ranked = sorted(sources, key=lambda s: -strength[first_edge + s])
        for source in ranked[:2]:
            pairs.append((ops[best_op[first_edge + source]], source))
        first_edge += node + 2
    return pairs


def discretize(
    normal_weights: Any,
    reduce_weights: Any,
    ops: Sequence[str],
    steps: int = 4,
    rewards: Mapping[str, Any] | None = None,
) -> Genotype:
    """The discrete cells chosen by a search (DARTS / XNAS section 2.1).

    For each intermediate node, the two incoming edges with the largest
    strength are kept (:func:`edge_strengths`: ``max_i u_i`` without
    ``rewards``, the chosen expert's summed rewards with them); each kept
    edge becomes its strongest expert other than "none".  As in DARTS, a
    node's two pairs are listed strongest edge first, and every intermediate
    state is concatenated into the output.

    Ties are broken deterministically, lowest index wins: between equally
    strong edges the one from the lower source state, between equally strong
    experts the one earlier in ``ops``.

    Args:
      normal_weights: mixture weights of the normal cell, numpy or jax, shape
        ``(num_edges(steps), len(ops))``, edges in :func:`edge_list` order.
      reduce_weights: the same for the reduction cell.
      ops: the operation name of each column, a subset of :data:`PRIMITIVES`
        with at least one name other than "none" (e.g. :data:`XNAS_PRIMITIVES`).
      steps: the number of intermediate nodes.
      rewards: None, or ``{"normal": ..., "reduce": ...}``, each expert's
        rewards summed over the search, of the weights' shape (the XNAS
        rule, ``cumulative_reward``).

    Returns:
      The :class:`Genotype`.

    Raises:
      ValueError: on unknown or duplicate op names, or weights of the wrong
        shape, of a non-real dtype or with non-finite values.
    """
    steps = _check_steps(steps)
    ops = _check_ops(ops)
    rewards = rewards or {}
    concat = list(range(2, 2 + steps))
    return Genotype(
        normal=_discretize_cell("normal_weights", normal_weights, ops, steps,
                                rewards.get("normal")),
        normal_concat=concat,
        reduce=_discretize_cell("reduce_weights", reduce_weights, ops, steps,
                                rewards.get("reduce")),
        reduce_concat=list(concat),
    )


def selection_record(
    weights: Mapping[str, Any],
    ops: Sequence[str],
    steps: int = 4,
    rewards: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What chose a genotype, JSON-ready: the rule and every edge's strength.

    ``{"rule": "max_weight" | "cumulative_reward", "normal": [...],
    "reduce": [...]}``, one entry per edge in :func:`edge_list` order:
    ``{"source", "node", "op", "strength", "kept"}``, ``node`` being the
    node's state number.
    """
    genotype = discretize(weights["normal"], weights["reduce"], ops, steps, rewards)
    ops = _check_ops(ops)
    record: dict[str, Any] = {
        "rule": RULE_MAX_WEIGHT if rewards is None else RULE_CUMULATIVE_REWARD
    }
    for cell in _CELLS:
        best_op, strength = edge_strengths(
            weights[cell], ops, steps, None if rewards is None else rewards[cell])
        kept = {(i // 2, source) for i, (_, source) in enumerate(getattr(genotype, cell))}
        record[cell] = [
            {"source": source, "node": node + 2, "op": ops[best_op[e]],
             "strength": float(strength[e]), "kept": (node, source) in kept}
            for e, (source, node) in enumerate(edge_list(steps))
        ]
    return record


# --------------------------------------------------------------------------
# Validation.


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_pairs(field: str, pairs: Any, ops: tuple[str, ...]) -> list[tuple[str, int]]:
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence):
        raise GenotypeError(
            f"{field} must be a list of (op_name, input_state) pairs, got {pairs!r}"
        )
    if len(pairs) == 0 or len(pairs) % 2:
        raise GenotypeError(
            f"{field} has {len(pairs)} pairs; a cell needs exactly 2 per intermediate node "
            f"(an even number >= 2)"
        )
    checked = []
    for index, pair in enumerate(pairs):
        where = f"{field}[{index}]"
        is_pair = isinstance(pair, Sequence) and not isinstance(pair, (str, bytes))
        if not is_pair or len(pair) != 2:
            raise GenotypeError(f"{where} must be an (op_name, input_state) pair, got {pair!r}")
        op, source = pair
        if op not in ops:
            raise GenotypeError(f"{where}: unknown op {op!r}; valid ops: {list(ops)}")
        if not _is_int(source):
            raise GenotypeError(f"{where}: input state must be an integer, got {source!r}")
        node = index // 2
        if not 0 <= source <= node + 1:
            raise GenotypeError(
                f"{where} = {tuple(pair)!r}: input {source} is out of range for node {node} "
                f"(state {node + 2}), which may only read states 0..{node + 1}"
            )
        checked.append((str(op), int(source)))
    return checked


def _check_concat(field: str, concat: Any, steps: int) -> list[int]:
    valid = f"a non-empty list of distinct intermediate states in 2..{steps + 1}"
    if isinstance(concat, (str, bytes)) or not isinstance(concat, Sequence):
        raise GenotypeError(f"{field} must be {valid}, got {concat!r}")
    concat = list(concat)
    if (
        not concat
        or not all(_is_int(state) and 2 <= state <= steps + 1 for state in concat)
        or len(set(concat)) != len(concat)
    ):
        raise GenotypeError(f"{field} must be {valid}, got {concat!r}")
    return [int(state) for state in concat]


def validate_genotype(
    genotype: Any, ops: Sequence[str] = PRIMITIVES, steps: int | None = None
) -> Genotype:
    """Checks a genotype and returns it in canonical form.

    Args:
      genotype: a :class:`Genotype` or any 4-tuple in its field order (e.g.
        a DARTS ``namedtuple`` genotype, whose concat may be a ``range``).
      ops: the operation names allowed on its edges, a subset of
        :data:`PRIMITIVES`.
      steps: the expected number of intermediate nodes; None infers it from
        the number of pairs (half of it).

    Returns:
      An equal :class:`Genotype` made of fresh lists of ``(str, int)``
      tuples and lists of ints, so that equal cells compare equal.

    Raises:
      GenotypeError: naming the offending field and value: an unknown op, an
        input state a node may not read, a wrong number of pairs, a concat
        that is not a non-empty list of distinct intermediate states.
      ValueError: if ``ops`` or ``steps`` themselves are invalid.
    """
    ops = _check_ops(ops)
    if not isinstance(genotype, tuple) or len(genotype) != len(_FIELDS):
        raise GenotypeError(
            f"a genotype must be a Genotype{_FIELDS} tuple, got {type(genotype).__name__}: "
            f"{genotype!r}"
        )
    normal, normal_concat, reduce, reduce_concat = genotype
    normal = _check_pairs("normal", normal, ops)
    reduce = _check_pairs("reduce", reduce, ops)
    if len(reduce) != len(normal):
        raise GenotypeError(
            f"reduce has {len(reduce)} pairs but normal has {len(normal)}: "
            f"both cells must have the same number of nodes"
        )
    if steps is not None:
        steps = _check_steps(steps)
        if len(normal) != 2 * steps:
            raise GenotypeError(
                f"normal has {len(normal)} pairs; {steps} steps need {2 * steps} (2 per node)"
            )
    steps = len(normal) // 2
    return Genotype(
        normal=normal,
        normal_concat=_check_concat("normal_concat", normal_concat, steps),
        reduce=reduce,
        reduce_concat=_check_concat("reduce_concat", reduce_concat, steps),
    )


# --------------------------------------------------------------------------
# JSON and text.


def genotype_to_dict(genotype: Genotype, ops: Sequence[str] = PRIMITIVES) -> dict[str, Any]:
    """A JSON-ready dict: the four genotype fields plus ``ops`` and ``steps``.

    Args:
      genotype: the genotype (validated against ``ops``).
      ops: the operation set of the search space it comes from, stored so a
        reader knows which names the file may use.

    Returns:
      ``{"format", "steps", "ops", "normal", "normal_concat", "reduce",
      "reduce_concat"}`` with pairs as ``[op_name, input_state]`` lists.
    """
    ops = _check_ops(ops)
    genotype = validate_genotype(genotype, ops)
    return {
        "format": _FORMAT,
        "steps": len(genotype.normal) // 2,
        "ops": list(ops),
        "normal": [[op, source] for op, source in genotype.normal],
        "normal_concat": list(genotype.normal_concat),
        "reduce": [[op, source] for op, source in genotype.reduce],
        "reduce_concat": list(genotype.reduce_concat),
    }


def genotype_from_dict(data: Any) -> Genotype:
    """The genotype held by a dict of :func:`genotype_to_dict`'s form.

    The four genotype fields are required.  ``ops`` and ``steps`` are optional
    (a hand-written file may leave them out: ``ops`` then defaults to
    :data:`PRIMITIVES` and ``steps`` to half the number of pairs); when present
    they are checked.

    Raises:
      GenotypeError: on a missing key, a bad ``ops`` or ``steps``, or any
        problem :func:`validate_genotype` finds.
    """
    if not isinstance(data, Mapping):
        raise GenotypeError(
            f"a genotype must be a JSON object, got {type(data).__name__}: {data!r}"
        )
    missing = [key for key in _FIELDS if key not in data]
    if missing:
        raise GenotypeError(f"genotype is missing key(s) {missing}; required: {list(_FIELDS)}")
    ops = data.get("ops", PRIMITIVES)
    try:
        ops = _check_ops(ops)
    except ValueError as error:
        raise GenotypeError(f"bad 'ops' field: {error}") from None
    steps = data.get("steps")
    if steps is not None and (not _is_int(steps) or steps < 1):
        raise GenotypeError(f"'steps' must be an integer >= 1, got {steps!r}")
    return validate_genotype(tuple(data[key] for key in _FIELDS), ops, steps)


def save_genotype(
    genotype: Genotype,
    path: str | os.PathLike,
    ops: Sequence[str] = PRIMITIVES,
    selection: Mapping[str, Any] | None = None,
) -> None:
    """Writes ``genotype_to_dict(genotype, ops)`` to ``path`` as indented JSON.

    ``selection`` (:func:`selection_record`), if given, is stored under
    ``"selection"``: the rule and the per-edge strengths that chose the cell.
    Readers ignore it.
    """
    data = genotype_to_dict(genotype, ops)
    if selection is not None:
        data["selection"] = dict(selection)
    with open(path, "w", encoding="utf-8") as file:
        json.dump(data, file, indent=2)
        file.write("\n")


def _parse_json(text: str, source: str) -> Genotype:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise GenotypeError(f"{source} is not valid JSON: {error}") from None
    return genotype_from_dict(data)


def load_genotype(path: str | os.PathLike) -> Genotype:
    """Reads a genotype written by :func:`save_genotype`.

    Raises:
      OSError: if the file cannot be read.
      GenotypeError: if it is not valid JSON or not a valid genotype.
    """
    with open(path, "rb") as file:
        raw = file.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        message = f"genotype file {os.fspath(path)!r} is not UTF-8 text: {error}"
        raise GenotypeError(message) from None
    return _parse_json(text, f"genotype file {os.fspath(path)!r}")


def format_genotype(genotype: Genotype) -> str:
    """A readable multi-line text form, node by node, inputs by state number.

    For example ``node 2 <- sep_conv_3x3(0) + sep_conv_3x3(1)`` says that
    state 2 (the first intermediate node) adds a 3x3 separable convolution of
    state 0 (cell k-2) and one of state 1 (cell k-1).
    """
    genotype = validate_genotype(genotype)
    lines = []
    for cell in _CELLS:
        pairs = getattr(genotype, cell)
        concat = getattr(genotype, f"{cell}_concat")
        lines.append(f"{cell} cell (output = concat of states {', '.join(map(str, concat))}):")
        for node in range(len(pairs) // 2):
            inputs = " + ".join(f"{op}({source})" for op, source in pairs[2 * node : 2 * node + 2])
            lines.append(f"  node {node + 2} <- {inputs}")
    return "\n".join(lines)


def _python_concat(concat: Sequence[int]) -> str:
    """``range(a, b)`` for consecutive states (the DARTS form), else a list."""
    concat = [int(state) for state in concat]
    if concat and concat == list(range(concat[0], concat[-1] + 1)):
        return f"range({concat[0]}, {concat[-1] + 1})"
    return repr(concat)


def genotype_python(genotype: Genotype, name: str = "GENOTYPE") -> str:
    """The text of a Python module that defines the genotype in the DARTS form.

    The reference PyTorch code of DARTS and of the XNAS authors reads cells
    as ``Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=range(2,
    6), reduce=[...], reduce_concat=range(2, 6))``, a ``namedtuple``.  The
    module defines that ``Genotype`` itself (no import of this package), and
    the cell as ``name``: it can be imported, or its line pasted into such a
    code base's ``genotypes.py``.

    Raises:
      GenotypeError: if ``genotype`` is malformed.
    """
    genotype = validate_genotype(genotype)
    if not name.isidentifier():
        raise ValueError(f"name must be a Python identifier, got {name!r}")

    def pairs(cell: str) -> str:
        return "[" + ", ".join(f"({op!r}, {int(source)})"
                               for op, source in getattr(genotype, cell)) + "]"

    fields = [f"    {cell}={pairs(cell)},\n    {cell}_concat="
              f"{_python_concat(getattr(genotype, f'{cell}_concat'))}," for cell in _CELLS]
    return (
        '"""A cell found by an xnas_jax search, in the DARTS repository\'s genotype form."""\n'
        "\n"
        "from collections import namedtuple\n"
        "\n"
        f"Genotype = namedtuple('Genotype', '{' '.join(_FIELDS)}')\n"
        "\n"
        f"{name} = Genotype(\n" + "\n".join(fields) + "\n)\n"
    )


def save_genotype_python(genotype: Genotype, path: str | os.PathLike,
                         name: str = "GENOTYPE") -> None:
    """Writes :func:`genotype_python` to ``path`` (e.g. ``genotype.py``)."""
    text = genotype_python(genotype, name)
    with open(path, "w", encoding="utf-8") as file:
        file.write(text)


# --------------------------------------------------------------------------
# Published cells.

# DARTS, first-order search (Liu et al. 2019), as listed in the DARTS repository
# (quark0/darts, cnn/genotypes.py).
DARTS_V1 = Genotype(
    normal=[
        ("sep_conv_3x3", 1), ("sep_conv_3x3", 0),
        ("skip_connect", 0), ("sep_conv_3x3", 1),
        ("skip_connect", 0), ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 0), ("skip_connect", 2),
    ],
    normal_concat=[2, 3, 4, 5],
    reduce=[
        ("max_pool_3x3", 0), ("max_pool_3x3", 1),
        ("skip_connect", 2), ("max_pool_3x3", 0),
        ("max_pool_3x3", 0), ("skip_connect", 2),
        ("skip_connect", 2), ("avg_pool_3x3", 0),
    ],
    reduce_concat=[2, 3, 4, 5],
)  # fmt: skip

# DARTS, second-order search: the cell of the DARTS paper's CIFAR-10 results.
DARTS_V2 = Genotype(
    normal=[
        ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 1), ("skip_connect", 0),
        ("skip_connect", 0), ("dil_conv_3x3", 2),
    ],
    normal_concat=[2, 3, 4, 5],
    reduce=[
        ("max_pool_3x3", 0), ("max_pool_3x3", 1),
        ("skip_connect", 2), ("max_pool_3x3", 1),
        ("max_pool_3x3", 0), ("skip_connect", 2),
        ("skip_connect", 2), ("max_pool_3x3", 1),
    ],
    reduce_concat=[2, 3, 4, 5],
)  # fmt: skip

# XNAS, searched on CIFAR-10 (the cell behind XNAS-Small/Medium/Large and the
# transfer results), as listed in the authors' repository (NivNayman/XNAS,
# genotypes.py, the default architecture of its test.py).
XNAS = Genotype(
    normal=[
        ("sep_conv_3x3", 1), ("skip_connect", 0),
        ("sep_conv_3x3", 0), ("sep_conv_3x3", 2),
        ("sep_conv_3x3", 3), ("sep_conv_3x3", 1),
        ("dil_conv_5x5", 4), ("sep_conv_3x3", 0),
    ],
    normal_concat=[2, 3, 4, 5],
    reduce=[
        ("max_pool_3x3", 0), ("avg_pool_3x3", 1),
        ("avg_pool_3x3", 0), ("skip_connect", 2),
        ("dil_conv_3x3", 3), ("max_pool_3x3", 0),
        ("dil_conv_5x5", 4), ("avg_pool_3x3", 0),
    ],
    reduce_concat=[2, 3, 4, 5],
)  # fmt: skip

PUBLISHED: dict[str, Genotype] = {"DARTS_V1": DARTS_V1, "DARTS_V2": DARTS_V2, "XNAS": XNAS}


def get_genotype(name_or_path: str | os.PathLike) -> Genotype:
    """A genotype from a published name, a JSON file or a JSON string.

    Args:
      name_or_path: a key of :data:`PUBLISHED` (any case, e.g. "xnas"), a
        path to a file written by :func:`save_genotype`, or that file's
        content as a string (anything starting with "{").  A published
        name wins over a file of the same name.

    Returns:
      A fresh, validated :class:`Genotype` (mutating it leaves
      :data:`PUBLISHED` alone).

    Raises:
      GenotypeError: for an unknown name (the message lists the published
        ones) or a malformed file or string.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise GenotypeError(
            f"name_or_path must be a str or a path, got {type(name_or_path).__name__}: "
            f"{name_or_path!r}"
        )
    text = os.fspath(name_or_path)
    if text.lstrip().startswith("{"):
        return _parse_json(text, "the genotype string")
    by_name = {name.lower(): genotype for name, genotype in PUBLISHED.items()}
    if text.strip().lower() in by_name:
        return validate_genotype(by_name[text.strip().lower()])
    if os.path.isfile(text):
        return load_genotype(text)
    raise GenotypeError(
        f"unknown genotype {text!r}: not a published name ({', '.join(PUBLISHED)}), "
        f"an existing JSON file, or a JSON object string"
    )
