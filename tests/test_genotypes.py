"""Tests for xnas_jax.spaces.darts.genotypes: the cell graph, discretization, I/O."""

from __future__ import annotations

import json
import math
import re
import runpy

import hypothesis.extra.numpy as hnp
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xnas_jax.spaces.darts import genotypes
from xnas_jax.spaces.darts.genotypes import (
    DARTS_V1,
    DARTS_V2,
    PRIMITIVES,
    PUBLISHED,
    XNAS,
    XNAS_PRIMITIVES,
    Genotype,
    GenotypeError,
)

OP = {name: index for index, name in enumerate(PRIMITIVES)}


# --------------------------------------------------------------------------
# Operation names and the cell graph.


def test_primitives_are_darts_order_and_xnas_drops_none():
    assert PRIMITIVES == (
        "none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
        "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5",
    )  # fmt: skip
    assert XNAS_PRIMITIVES == PRIMITIVES[1:]
    assert len(XNAS_PRIMITIVES) == 7  # paper section 4.1: seven operations per forecaster.


def test_edge_list_matches_hand_written_darts_order():
    assert genotypes.edge_list(4) == [
        (0, 0), (1, 0),
        (0, 1), (1, 1), (2, 1),
        (0, 2), (1, 2), (2, 2), (3, 2),
        (0, 3), (1, 3), (2, 3), (3, 3), (4, 3),
    ]  # fmt: skip
    assert genotypes.edge_list() == genotypes.edge_list(4)
    assert genotypes.num_edges(4) == 14


@pytest.mark.parametrize("steps", [1, 2, 3, 5, 6])
def test_edge_list_general_steps(steps):
    edges = genotypes.edge_list(steps)
    assert len(edges) == genotypes.num_edges(steps) == sum(range(2, steps + 2))
    # Every source is an earlier state, and it is complete before the edge runs.
    for position, (source, node) in enumerate(edges):
        assert 0 <= source <= node + 1
        if source >= 2:
            assert all(destination != source - 2 for _, destination in edges[position:])


@pytest.mark.parametrize("steps", [0, -1, 2.0, True, "4"])
def test_bad_steps(steps):
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        genotypes.edge_list(steps)


# --------------------------------------------------------------------------
# Discretization.


def _reference_cell(weights, ops, steps):
    """DARTS's rule written as plain selection loops, with the documented ties."""
    pairs, edge = [], 0
    for node in range(steps):
        candidates = []  # (strength, source, op)
        for source in range(node + 2):
            best, best_op = -math.inf, None
            for column, op in enumerate(ops):
                if op != "none" and weights[edge][column] > best:  # first maximum wins
                    best, best_op = weights[edge][column], op
            candidates.append((best, source, best_op))
            edge += 1
        for _ in range(2):
            top = candidates[0]
            for candidate in candidates[1:]:
                if candidate[0] > top[0]:  # strict: the lower source keeps a tie
                    top = candidate
            candidates.remove(top)
            pairs.append((top[2], top[1]))
    return pairs


def _hand_weights():
    """A normal cell whose answer is known, with "none" winning edges and ties."""
    w = np.zeros((14, 8))
    # Node 0: edge (0 -> 0) is "none"-dominated, its real strength is only 0.05.
    w[0, OP["none"]], w[0, OP["sep_conv_3x3"]] = 0.9, 0.05
    w[1, OP["skip_connect"]] = 0.3
    # Node 1: edge (0 -> 1) has the largest single weight, on "none": dropped.
    w[2, OP["none"]], w[2, OP["avg_pool_3x3"]] = 0.99, 0.01
    w[3, OP["dil_conv_5x5"]] = 0.4
    w[4, OP["sep_conv_5x5"]] = 0.2
    # Node 2: three edges tie at 0.25; the lower sources 0 and 1 win.
    w[5, OP["max_pool_3x3"]] = 0.25
    w[6, OP["avg_pool_3x3"]] = 0.25
    w[7, OP["skip_connect"]] = 0.25
    w[8, OP["sep_conv_3x3"]] = 0.1
    # Node 3: edge (4 -> 3) ties two experts; the earlier one, sep_conv_3x3, wins.
    w[9, OP["none"]] = 1.0
    w[10, OP["dil_conv_3x3"]] = 0.1
    w[11, OP["max_pool_3x3"]] = 0.29
    w[12, OP["skip_connect"]] = 0.5
    w[13, OP["sep_conv_3x3"]] = w[13, OP["dil_conv_3x3"]] = 0.3
    return w


def test_discretize_hand_weights():
    reduce = np.full((14, 8), 1 / 8)  # all tied: sources 0 and 1, the first real op.
    genotype = genotypes.discretize(_hand_weights(), reduce, PRIMITIVES)
    assert genotype == Genotype(
        normal=[
            ("skip_connect", 1), ("sep_conv_3x3", 0),
            ("dil_conv_5x5", 1), ("sep_conv_5x5", 2),
            ("max_pool_3x3", 0), ("avg_pool_3x3", 1),
            ("skip_connect", 3), ("sep_conv_3x3", 4),
        ],
        normal_concat=[2, 3, 4, 5],
        reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1)] * 4,
        reduce_concat=[2, 3, 4, 5],
    )  # fmt: skip
    assert genotype.normal == _reference_cell(_hand_weights(), PRIMITIVES, 4)


def test_discretize_accepts_jax_arrays_and_xnas_ops():
    # The XNAS search has no "none" column; wiped-out experts hold exactly 0.
    weights = _hand_weights()[:, 1:]
    genotype = genotypes.discretize(jnp.asarray(weights), jnp.asarray(weights), XNAS_PRIMITIVES)
    assert genotype.normal == _reference_cell(weights, XNAS_PRIMITIVES, 4)
    assert genotype.normal[:2] == [("skip_connect", 1), ("sep_conv_3x3", 0)]
    assert genotype.reduce == genotype.normal


@st.composite
def _weights_case(draw):
    steps = draw(st.integers(1, 5))
    ops = draw(
        st.lists(st.sampled_from(PRIMITIVES), min_size=1, max_size=8, unique=True).filter(
            lambda ops: any(op != "none" for op in ops)
        )
    )
    shape = (genotypes.num_edges(steps), len(ops))
    # Small integers make ties common; floats exercise the general case.
    elements = st.one_of(st.just("int"), st.just("float"))
    if draw(elements) == "int":
        weights = draw(hnp.arrays(np.int32, shape, elements=st.integers(0, 3)))
    else:
        weights = draw(hnp.arrays(np.float32, shape, elements=st.floats(0, 1, width=32)))
    return steps, ops, weights


@settings(max_examples=60, deadline=None)
@given(_weights_case(), st.data())
def test_discretize_matches_reference(case, data):
    steps, ops, normal = case
    reduce = data.draw(hnp.arrays(normal.dtype, normal.shape, elements=st.integers(0, 2)))
    genotype = genotypes.discretize(normal, reduce, ops, steps=steps)
    assert genotype.normal == _reference_cell(normal.tolist(), ops, steps)
    assert genotype.reduce == _reference_cell(reduce.tolist(), ops, steps)
    assert genotype.normal_concat == genotype.reduce_concat == list(range(2, 2 + steps))
    assert genotypes.validate_genotype(genotype, ops, steps) == genotype


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_discretize_recovers_published_cells(name):
    """Weights that favour a published cell's edges (first pair strongest)
    discretize back to exactly that cell, pair order included."""
    published = PUBLISHED[name]
    edge_index = {edge: k for k, edge in enumerate(genotypes.edge_list(4))}
    cells = []
    for pairs in (published.normal, published.reduce):
        weights = np.full((14, len(XNAS_PRIMITIVES)), 0.05)
        for position, (op, source) in enumerate(pairs):
            row = edge_index[(source, position // 2)]
            weights[row, XNAS_PRIMITIVES.index(op)] = 0.9 - 0.1 * (position % 2)
        cells.append(weights)
    assert genotypes.discretize(*cells, XNAS_PRIMITIVES) == published


@pytest.mark.parametrize(
    "normal, reduce, ops, steps, message",
    [
        (np.zeros((13, 8)), np.zeros((14, 8)), PRIMITIVES, 4,
         r"normal_weights must have shape .* = \(14, 8\), got \(13, 8\)"),
        (np.zeros((14, 8)), np.zeros((14, 7)), PRIMITIVES, 4,
         r"reduce_weights must have shape .* = \(14, 8\), got \(14, 7\)"),
        (np.zeros((14, 8)), np.zeros((14, 8)), PRIMITIVES, 3,
         r"normal_weights must have shape \(num_edges\(steps=3\), len\(ops\)\) = \(9, 8\)"),
        (np.zeros((14, 2)), np.zeros((14, 2)), ("skip_connect", "conv_7x7"), 4,
         r"unknown operation name\(s\) \['conv_7x7'\]; valid names: \['none'"),
        (np.zeros((14, 2)), np.zeros((14, 2)), ("skip_connect", "skip_connect"), 4,
         r"duplicate names"),
        (np.zeros((14, 1)), np.zeros((14, 1)), ("none",), 4, r"other than 'none'"),
        (np.zeros((14, 8)), np.zeros((14, 8)), "sep_conv_3x3", 4, r"ops must be a sequence"),
        (np.full((14, 8), np.nan), np.zeros((14, 8)), PRIMITIVES, 4,
         r"normal_weights holds non-finite values"),
        (np.zeros((14, 8), bool), np.zeros((14, 8)), PRIMITIVES, 4,
         r"normal_weights must hold real numbers, got dtype bool"),
        (np.zeros((14, 8)), np.zeros((14, 8)), PRIMITIVES, 0, r"steps must be an integer >= 1"),
    ],
)  # fmt: skip
def test_discretize_rejects_bad_input(normal, reduce, ops, steps, message):
    with pytest.raises(ValueError, match=message):
        genotypes.discretize(normal, reduce, ops, steps=steps)


# --------------------------------------------------------------------------
# Validation: every GenotypeError path names the field and the value.


def _valid_dict():
    return genotypes.genotype_to_dict(DARTS_V2)


def _set(path, value):
    def edit(data):
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return data

    return edit


def _delete(key):
    def edit(data):
        del data[key]
        return data

    return edit


@pytest.mark.parametrize(
    "edit, message",
    [
        (_set(["normal", 3, 0], "conv_7x7"),
         r"normal\[3\]: unknown op 'conv_7x7'; valid ops: \['none', 'max_pool_3x3'"),
        (_set(["reduce", 5, 1], 4),
         r"reduce\[5\] = \('skip_connect', 4\): input 4 is out of range for node 2 \(state 4\), "
         r"which may only read states 0..3"),
        (_set(["normal", 0, 1], 2), r"input 2 is out of range for node 0 .* states 0..1"),
        (_set(["normal", 0, 1], -1), r"normal\[0\] .* input -1 is out of range"),
        (_set(["normal", 2, 1], True), r"normal\[2\]: input state must be an integer, got True"),
        (_set(["normal", 2, 1], "1"), r"normal\[2\]: input state must be an integer, got '1'"),
        (_set(["normal", 4], ["sep_conv_3x3"]),
         r"normal\[4\] must be an \(op_name, input_state\) pair, got \['sep_conv_3x3'\]"),
        (_set(["normal", 4], "sep_conv_3x3"),
         r"normal\[4\] must be an \(op_name, input_state\) pair"),
        (_set(["normal"], [["sep_conv_3x3", 0]] * 7),
         r"normal has 7 pairs; a cell needs exactly 2 per intermediate node"),
        (_set(["reduce"], []), r"reduce has 0 pairs"),
        (_set(["normal"], "sep_conv_3x3"),
         r"normal must be a list of \(op_name, input_state\) pairs"),
        (_set(["reduce"], [["max_pool_3x3", 0]] * 6),
         r"reduce has 6 pairs but normal has 8: both cells must have the same number of nodes"),
        (_set(["normal_concat"], []), r"normal_concat must be a non-empty list of distinct "
                                      r"intermediate states in 2..5, got \[\]"),
        (_set(["normal_concat"], [1, 2, 3]), r"normal_concat must be .*, got \[1, 2, 3\]"),
        (_set(["reduce_concat"], [2, 3, 6]), r"reduce_concat must be .*, got \[2, 3, 6\]"),
        (_set(["reduce_concat"], [2, 2, 3]), r"reduce_concat must be .*, got \[2, 2, 3\]"),
        (_set(["reduce_concat"], "2345"), r"reduce_concat must be .*, got '2345'"),
        (_delete("reduce"),
         r"missing key\(s\) \['reduce'\]; required: \['normal', 'normal_concat'"),
        (_delete("normal_concat"), r"missing key\(s\) \['normal_concat'\]"),
        (_set(["ops"], ["sep_conv_3x3", "conv_7x7"]), r"bad 'ops' field: .*'conv_7x7'"),
        (_set(["ops"], list(XNAS_PRIMITIVES)),  # DARTS_V2 is fine without "none" ...
         None),
        (lambda d: _set(["normal", 0, 0], "none")(_set(["ops"], list(XNAS_PRIMITIVES))(d)),
         r"normal\[0\]: unknown op 'none'; valid ops: \['max_pool_3x3'"),  # ... this is not.
        (_set(["steps"], 3), r"normal has 8 pairs; 3 steps need 6"),
        (_set(["steps"], "4"), r"'steps' must be an integer >= 1, got '4'"),
    ],
)  # fmt: skip
def test_genotype_errors(edit, message):
    data = edit(_valid_dict())
    if message is None:
        assert genotypes.genotype_from_dict(data) == DARTS_V2
        return
    with pytest.raises(GenotypeError, match=message):
        genotypes.genotype_from_dict(data)
    # The same problem reaches the user through a JSON string.
    with pytest.raises(GenotypeError, match=message):
        genotypes.get_genotype(json.dumps(data))


def test_genotype_error_is_a_value_error_and_not_a_tuple_is_rejected():
    assert issubclass(GenotypeError, ValueError)
    with pytest.raises(GenotypeError, match=r"a genotype must be a Genotype\('normal'"):
        genotypes.validate_genotype(["normal", [2, 3, 4, 5]])
    with pytest.raises(GenotypeError, match=r"a genotype must be a JSON object, got list"):
        genotypes.genotype_from_dict([1, 2])


def test_validate_accepts_darts_style_genotypes():
    # A DARTS genotype: plain namedtuple-like tuple, ranges as concat, tuples of pairs.
    darts_style = (tuple(XNAS.normal), range(2, 6), tuple(XNAS.reduce), range(2, 6))
    validated = genotypes.validate_genotype(darts_style)
    assert validated == XNAS
    assert isinstance(validated, Genotype)
    assert validated.normal_concat == [2, 3, 4, 5]


# --------------------------------------------------------------------------
# JSON and text.


@st.composite
def _genotypes(draw):
    steps = draw(st.integers(1, 5))

    def cell():
        return [
            (draw(st.sampled_from(PRIMITIVES)), draw(st.integers(0, index // 2 + 1)))
            for index in range(2 * steps)
        ]

    def concat():
        return draw(st.lists(st.integers(2, steps + 1), min_size=1, unique=True))

    return Genotype(normal=cell(), normal_concat=concat(), reduce=cell(), reduce_concat=concat())


@settings(max_examples=60, deadline=None)
@given(_genotypes())
def test_json_round_trip(genotype):
    data = genotypes.genotype_to_dict(genotype)
    assert data["steps"] == len(genotype.normal) // 2
    assert data["ops"] == list(PRIMITIVES)
    text = json.dumps(data)
    assert genotypes.genotype_from_dict(json.loads(text)) == genotype
    assert genotypes.get_genotype(text) == genotype
    # The text form names every pair once, node by node.
    lines = genotypes.format_genotype(genotype).splitlines()
    assert len(lines) == 2 + len(genotype.normal)


@settings(max_examples=60, deadline=None)
@given(_genotypes())
def test_python_form_round_trip(genotype):
    namespace: dict = {}
    exec(genotypes.genotype_python(genotype, "CELL"), namespace)
    assert genotypes.validate_genotype(namespace["CELL"]) == genotype


def test_python_form_is_the_darts_repositorys(tmp_path):
    path = tmp_path / "genotype.py"
    genotypes.save_genotype_python(DARTS_V2, path)
    text = path.read_text()
    assert "from collections import namedtuple\n" in text
    assert ("Genotype = namedtuple('Genotype', 'normal normal_concat reduce reduce_concat')"
            in text)
    assert ("    normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
            "('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), "
            "('dil_conv_3x3', 2)],\n    normal_concat=range(2, 6),\n") in text
    cell = runpy.run_path(str(path))["GENOTYPE"]
    assert cell.reduce_concat == range(2, 6) and cell.reduce[1] == ("max_pool_3x3", 1)
    with pytest.raises(ValueError, match="identifier"):
        genotypes.genotype_python(DARTS_V2, "not a name")


def test_save_and_load(tmp_path):
    path = tmp_path / "cell.json"
    genotypes.save_genotype(XNAS, path, ops=XNAS_PRIMITIVES)
    data = json.loads(path.read_text())
    assert data["ops"] == list(XNAS_PRIMITIVES) and data["steps"] == 4
    assert data["normal"][0] == ["sep_conv_3x3", 1]
    assert genotypes.load_genotype(path) == XNAS
    assert genotypes.get_genotype(str(path)) == XNAS
    assert genotypes.get_genotype(path) == XNAS
    # A hand-written file with only the four DARTS fields is enough.
    minimal = {key: data[key] for key in ("normal", "normal_concat", "reduce", "reduce_concat")}
    path.write_text(json.dumps(minimal))
    assert genotypes.load_genotype(path) == XNAS


def test_save_rejects_ops_the_genotype_does_not_use(tmp_path):
    genotype = genotypes.validate_genotype(DARTS_V2)
    genotype.normal[0] = ("none", 0)
    with pytest.raises(GenotypeError, match=r"normal\[0\]: unknown op 'none'"):
        genotypes.save_genotype(genotype, tmp_path / "cell.json", ops=XNAS_PRIMITIVES)
    assert not (tmp_path / "cell.json").exists()


def test_malformed_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"normal": [["sep_conv_3x3", 0],')
    message = re.escape(f"genotype file {str(path)!r} is not valid JSON")
    with pytest.raises(GenotypeError, match=message):
        genotypes.load_genotype(path)
    with pytest.raises(GenotypeError, match="the genotype string is not valid JSON"):
        genotypes.get_genotype('{"normal": ')
    path.write_bytes(b"\xff\xfe{}")
    with pytest.raises(GenotypeError, match="is not UTF-8 text"):
        genotypes.load_genotype(path)


def test_format_genotype():
    assert genotypes.format_genotype(DARTS_V2) == "\n".join([
        "normal cell (output = concat of states 2, 3, 4, 5):",
        "  node 2 <- sep_conv_3x3(0) + sep_conv_3x3(1)",
        "  node 3 <- sep_conv_3x3(0) + sep_conv_3x3(1)",
        "  node 4 <- sep_conv_3x3(1) + skip_connect(0)",
        "  node 5 <- skip_connect(0) + dil_conv_3x3(2)",
        "reduce cell (output = concat of states 2, 3, 4, 5):",
        "  node 2 <- max_pool_3x3(0) + max_pool_3x3(1)",
        "  node 3 <- skip_connect(2) + max_pool_3x3(1)",
        "  node 4 <- max_pool_3x3(0) + skip_connect(2)",
        "  node 5 <- skip_connect(2) + max_pool_3x3(1)",
    ])  # fmt: skip


# --------------------------------------------------------------------------
# Published cells.


def test_published_cells_are_valid_darts_cells():
    assert set(PUBLISHED) == {"DARTS_V1", "DARTS_V2", "XNAS"}
    for name, genotype in PUBLISHED.items():
        assert genotypes.validate_genotype(genotype, XNAS_PRIMITIVES, steps=4) == genotype, name
        assert genotype.normal_concat == genotype.reduce_concat == [2, 3, 4, 5]
        for cell in (genotype.normal, genotype.reduce):
            # Discretization keeps two distinct edges per node.
            assert all(cell[2 * i][1] != cell[2 * i + 1][1] for i in range(4)), name


def test_published_cells_facts():
    # Spot checks against the published lists (DARTS repo, XNAS authors' repo).
    assert DARTS_V2.normal[-1] == ("dil_conv_3x3", 2)
    assert DARTS_V1.reduce[-1] == ("avg_pool_3x3", 0)
    assert XNAS.normal[6] == ("dil_conv_5x5", 4)
    assert XNAS.reduce[4] == ("dil_conv_3x3", 3)
    assert sum(op == "sep_conv_3x3" for op, _ in XNAS.normal) == 6


def test_get_genotype_by_name():
    assert genotypes.get_genotype("xnas") == XNAS
    assert genotypes.get_genotype(" Darts_V2 ") == DARTS_V2
    fresh = genotypes.get_genotype("DARTS_V1")
    fresh.normal[0] = ("none", 0)
    assert PUBLISHED["DARTS_V1"].normal[0] == ("sep_conv_3x3", 1)  # untouched


def test_get_genotype_unknown():
    message = r"unknown genotype 'enas': .*\(DARTS_V1, DARTS_V2, XNAS\)"
    with pytest.raises(GenotypeError, match=message):
        genotypes.get_genotype("enas")
    with pytest.raises(GenotypeError, match="must be a str or a path, got int"):
        genotypes.get_genotype(3)
