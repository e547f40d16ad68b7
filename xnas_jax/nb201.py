"""NAS-Bench-201's search space: its cell, its network, and its discretization.

NAS-Bench-201 (Dong & Yang, ICLR 2020) is a search space small enough to
train every cell.  A cell is a DAG on ``nodes`` nodes: node 0 is the cell's
input, node j > 0 is ``sum over i < j of op_ij(node i)``, and the last node
is the output.  Every edge is a forecaster over the same five experts
(:data:`NB201_OPS`), mixed with the weights of its row in the ``arch``
collection, as in the DARTS space (XNAS eq. 1): ``p = sum_k u_k f_k``.

The network (the benchmark's macro skeleton): a 3x3 stem with C channels and
BN; three stages of N cells with C, 2C and 4C channels, joined by residual
blocks that halve the resolution (ReLU-conv3x3-BN twice, stride 2 first; the
shortcut is 2x2 average pooling and a 1x1 convolution); then BN, ReLU,
global average pooling and a linear classifier.  All cells share one cell
(one row of mixture weights per edge).

One code path serves the supernet, a discretized cell and the exhaustive
table: :class:`NB201Network` with ``genotype=None`` computes every expert of
every edge; with a genotype (one op per edge) it computes only those, and
holds only their parameters, under the same names.  A discretized cell is
the supernet with one-hot mixture weights: the same outputs and gradients for
the same parameters (tested), which lets the table train many cells at once
by vmapping over one-hot tables.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xnas_jax import ops as ops_lib
from xnas_jax.kernels import Dtype
from xnas_jax.supernet import ARCH

__all__ = [
    "NB201_OPS",
    "NB201Network",
    "SpaceError",
    "all_genotypes",
    "cell_edges",
    "discretize",
    "genotype_string",
    "one_hot",
    "parse_genotype",
]

NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")


class SpaceError(ValueError):
    """A cell, op or table that does not belong to the search space."""


def cell_edges(nodes: int) -> tuple[tuple[int, int], ...]:
    """The edges ``(i, j)``, i < j, of a cell with ``nodes`` nodes, ordered by j then i."""
    if nodes < 2:
        raise SpaceError(f"an NB201 cell needs at least 2 nodes (input and output), got {nodes}")
    return tuple((i, j) for j in range(1, nodes) for i in range(j))


def _check_ops(names: Sequence[str], space: Sequence[str] = NB201_OPS) -> tuple[str, ...]:
    unknown = [n for n in names if n not in space]
    if unknown:
        raise SpaceError(f"{unknown[0]!r} is not an operation of the nb201 space; its "
                         f"operations are {', '.join(space)}")
    return tuple(names)


class _Edge(nn.Module):
    """One edge: ``sum_k w_k f_k(x)`` over the experts it computes."""

    channels: int
    experts: tuple[str, ...]
    affine: bool
    dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array, weights: jax.Array, train: bool) -> jax.Array:
        total = None
        for name in self.experts:
            column = NB201_OPS.index(name)
            if name == "none":
                continue  # 0 * f: no output, and no gradient to its weight either
            if name == "skip_connect":
                y = x
            elif name == "avg_pool_3x3":
                y = ops_lib.Pool("avg")(x, train)
            else:
                size = 1 if name == "nor_conv_1x1" else 3
                y = ops_lib.ReLUConvBN(self.channels, size, 1, size // 2, self.affine,
                                       self.dtype, name=name)(x, train)
            y = weights[column].astype(y.dtype) * y
            total = y if total is None else total + y
        return jnp.zeros_like(x) if total is None else total


class _Cell(nn.Module):
    channels: int
    edge_experts: tuple[tuple[str, ...], ...]
    nodes: int
    affine: bool
    dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array, weights: jax.Array, train: bool) -> jax.Array:
        states = [x]
        edges = cell_edges(self.nodes)
        for j in range(1, self.nodes):
            node = None
            for e, (i, target) in enumerate(edges):
                if target != j:
                    continue
                y = _Edge(self.channels, self.edge_experts[e], self.affine, self.dtype,
                          name=f"edge_{i}_{j}")(states[i], weights[e], train)
                node = y if node is None else node + y
            states.append(node)
        return states[-1]


class _ResidualBlock(nn.Module):
    """Halves the resolution and sets the channels (the benchmark's reduction block)."""

    channels: int
    dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = ops_lib.ReLUConvBN(self.channels, 3, 2, 1, True, self.dtype, name="conv_a")(x, train)
        y = ops_lib.ReLUConvBN(self.channels, 3, 1, 1, True, self.dtype, name="conv_b")(y, train)
        shortcut = nn.avg_pool(x, (2, 2), (2, 2))
        shortcut = nn.Conv(self.channels, (1, 1), use_bias=False, dtype=self.dtype,
                           name="shortcut")(shortcut)
        return y + shortcut


class NB201Network(nn.Module):
    """NAS-Bench-201's network, as a supernet (``genotype=None``) or for one cell.

    Attributes:
      num_classes: classifier outputs.
      channels: C, the first stage's channels (16 in the benchmark).
      cells_per_stage: N (5 in the benchmark).
      nodes: nodes per cell including input and output (4 in the benchmark).
      genotype: one op per edge (:func:`cell_edges` order), or None for the
        supernet, whose mixture weights (E, 5) are the ``arch`` variable
        ``"cell"`` (uniform at init).
      affine: batch norms inside cells have a scale and bias (the benchmark's
        networks) or not (a DARTS-style supernet).
      computed: the experts the supernet computes (default all); an expert
        left out behaves as if its weight were 0.
    """

    num_classes: int
    channels: int = 16
    cells_per_stage: int = 5
    nodes: int = 4
    genotype: tuple[str, ...] | None = None
    affine: bool = True
    computed: tuple[str, ...] = NB201_OPS
    dtype: Dtype = jnp.float32

    @property
    def num_edges(self) -> int:
        return len(cell_edges(self.nodes))

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = True) -> jax.Array:
        edges = self.num_edges
        if self.genotype is None:
            experts = (_check_ops(self.computed),) * edges
            weights = self.variable(ARCH, "cell", lambda: jnp.full(
                (edges, len(NB201_OPS)), 1.0 / len(NB201_OPS), jnp.float32)).value
        else:
            if len(self.genotype) != edges:
                raise SpaceError(f"a cell of {self.nodes} nodes has {edges} edges, the genotype "
                                 f"names {len(self.genotype)} ops")
            experts = tuple((name,) for name in _check_ops(self.genotype))
            weights = jnp.asarray(one_hot(self.genotype))
        x = images.astype(self.dtype)
        x = nn.Conv(self.channels, (3, 3), padding=1, use_bias=False, dtype=self.dtype,
                    name="stem")(x)
        x = ops_lib.batch_norm(train, True, self.dtype, name="stem_bn")(x)
        cell = 0
        for stage in range(3):
            channels = self.channels * 2 ** stage
            if stage:
                x = _ResidualBlock(channels, self.dtype, name=f"reduce_{stage}")(x, train)
            for _ in range(self.cells_per_stage):
                x = _Cell(channels, experts, self.nodes, self.affine, self.dtype,
                          name=f"cell_{cell}")(x, weights, train)
                cell += 1
        x = nn.relu(ops_lib.batch_norm(train, True, self.dtype, name="last_bn")(x))
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x).astype(
            jnp.float32)


def one_hot(genotype: Sequence[str]) -> np.ndarray:
    """The (E, 5) mixture weights that select one op per edge."""
    table = np.zeros((len(genotype), len(NB201_OPS)), np.float32)
    for e, name in enumerate(_check_ops(genotype)):
        table[e, NB201_OPS.index(name)] = 1.0
    return table


def discretize(weights: np.ndarray) -> tuple[str, ...]:
    """The strongest op of each edge (the benchmark's discretization)."""
    weights = np.asarray(weights)
    if weights.ndim != 2 or weights.shape[1] != len(NB201_OPS):
        raise SpaceError(f"expected (edges, {len(NB201_OPS)}) mixture weights, got shape "
                         f"{weights.shape}")
    return tuple(NB201_OPS[k] for k in np.argmax(weights, axis=1))


def all_genotypes(nodes: int) -> list[tuple[str, ...]]:
    """Every cell of the space, in a fixed order (5^E of them)."""
    return list(itertools.product(NB201_OPS, repeat=len(cell_edges(nodes))))


def genotype_string(genotype: Sequence[str], nodes: int) -> str:
    """The benchmark's notation: ``|op~0|+|op~0|op~1|`` (node by node, ``op~source``)."""
    edges = cell_edges(nodes)
    if len(genotype) != len(edges):
        raise SpaceError(f"a cell of {nodes} nodes has {len(edges)} edges, got {len(genotype)}")
    parts = []
    for j in range(1, nodes):
        parts.append("|" + "|".join(f"{genotype[e]}~{i}" for e, (i, t) in enumerate(edges)
                                    if t == j) + "|")
    return "+".join(parts)


def parse_genotype(text: str) -> tuple[str, ...]:
    """The inverse of :func:`genotype_string`.

    Raises:
      SpaceError: not the notation, an unknown op, or sources out of order.
    """
    ops, node = [], 0
    for node, part in enumerate(text.strip().split("+"), start=1):
        items = [p for p in part.strip().strip("|").split("|")]
        for i, item in enumerate(items):
            name, _, source = item.partition("~")
            if source != str(i):
                raise SpaceError(f"{text!r} is not an nb201 cell: expected '<op>~{i}' in node "
                                 f"{node}, got {item!r}")
            ops.append(name)
        if len(items) != node:
            raise SpaceError(f"{text!r} is not an nb201 cell: node {node} has {len(items)} "
                             f"inputs, expected {node}")
    return _check_ops(ops)
