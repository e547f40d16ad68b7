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
the same parameters (tested), so the exhaustive table
(``experiments/groundtruth.py``) trains each cell's own network, which costs
only its ops, and is still the supernet's.

The search step uses the same interface as for the DARTS space
(:mod:`xnas_jax.spaces`): one cell type, ``"cell"``, shared by all 3N cells,
so a search step delivers ``B x 3N`` feedbacks per forecaster.
"""

from __future__ import annotations

import itertools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xnas_jax.spaces import ops as ops_lib
from xnas_jax.spaces.kernels import Dtype
from xnas_jax.spaces import ARCH

__all__ = [
    "NB201_OPS",
    "NB201EvalNetwork",
    "NB201Network",
    "SpaceError",
    "all_genotypes",
    "cell_edges",
    "check_ops",
    "discretize",
    "genotype_string",
    "one_hot",
    "parse_genotype",
    "take_like",
]

NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")


_ZERO_TO_ZERO = {"none", "skip_connect", "avg_pool_3x3"}  # f(0) = 0


class SpaceError(ValueError):
    """A cell, op or table that does not belong to the search space."""


def cell_edges(nodes: int) -> tuple[tuple[int, int], ...]:
    """The edges ``(i, j)``, i < j, of a cell with ``nodes`` nodes, ordered by j then i."""
    if nodes < 2:
        raise SpaceError(f"an NB201 cell needs at least 2 nodes (input and output), got {nodes}")
    return tuple((i, j) for j in range(1, nodes) for i in range(j))


def check_ops(names: Sequence[str], space: Sequence[str] = NB201_OPS) -> tuple[str, ...]:
    """``names`` as a tuple, if every one is an operation of the space.

    Raises:
      SpaceError: the first name that is not.
    """
    unknown = [n for n in names if n not in space]
    if unknown:
        raise SpaceError(f"{unknown[0]!r} is not an operation of the nb201 space; its "
                         f"operations are {', '.join(space)}")
    return tuple(names)


def _weighted(weight: jax.Array, y: jax.Array, normalized: bool = False) -> jax.Array:
    """``w * y`` for one weight, or one per image ((B,) for per-feedback copies).

    ``normalized``: the same output and the same gradient to ``y``, but the
    gradient to ``w`` -- the expert's reward, ``-<dL/dp, f>`` (XNAS Algorithm
    1 line 8) -- is taken on ``f / rms(f)`` per image, so that an expert's
    output scale (a skip's input is not normalized; convolutions end in batch
    norm) does not weigh in its reward.
    """
    weight = weight.astype(y.dtype)
    weight = weight.reshape(weight.shape + (1,) * (y.ndim - weight.ndim))
    if not normalized:
        return weight * y
    rms = jnp.sqrt(jnp.mean(jnp.square(y), axis=tuple(range(1, y.ndim)), keepdims=True))
    direction = jax.lax.stop_gradient(y / (rms + 1e-6))
    fixed = jax.lax.stop_gradient(weight)
    return fixed * y + (weight - fixed) * direction


class _Edge(nn.Module):
    """One edge: ``sum_k w_k f_k(x)`` over the experts it computes (XNAS eq. 1)."""

    channels: int
    experts: tuple[str, ...]
    affine: bool
    dtype: Dtype
    normalized_rewards: bool = False

    def _expert(self, name: str, x: jax.Array, train: bool) -> jax.Array:
        if name == "skip_connect":
            return x
        if name == "avg_pool_3x3":
            return ops_lib.Pool("avg")(x, train)
        size = 1 if name == "nor_conv_1x1" else 3
        return ops_lib.ReLUConvBN(self.channels, size, 1, size // 2, self.affine, self.dtype,
                                  name=name)(x, train)

    @nn.compact
    def __call__(self, x: jax.Array, weights: jax.Array, train: bool) -> jax.Array:
        total = None
        for name in self.experts:
            if name == "none":
                continue  # 0 * f: no output, and no gradient to its weight either
            f = self._expert(name, x, train)
            # The expert's output scale, read by diagnostics (mutable "intermediates").
            self.sow("intermediates", f"rms_{name}",
                     jnp.sqrt(jnp.mean(jnp.square(f.astype(jnp.float32)))))
            y = _weighted(weights[..., NB201_OPS.index(name)], f, self.normalized_rewards)
            total = y if total is None else total + y
        return jnp.zeros_like(x) if total is None else total


class _Cell(nn.Module):
    channels: int
    edge_experts: tuple[tuple[str, ...], ...]
    nodes: int
    affine: bool
    dtype: Dtype
    normalized_rewards: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, weights: jax.Array, train: bool) -> jax.Array:
        # A state is None while it is known to be zero: a node whose edges are
        # all 'none' in a discretized cell.  Skip, pooling and 'none' map zero
        # to zero, so edges of only those from a zero state are left out
        # (XLA would otherwise fold pooling over constant zeros, slowly).
        states: list[jax.Array | None] = [x]
        edges = cell_edges(self.nodes)
        for j in range(1, self.nodes):
            node = None
            for e, (i, target) in enumerate(edges):
                experts = self.edge_experts[e]
                if target != j or set(experts) <= {"none"} or (
                        states[i] is None and set(experts) <= _ZERO_TO_ZERO):
                    continue
                source = jnp.zeros_like(x) if states[i] is None else states[i]
                y = _Edge(self.channels, experts, self.affine, self.dtype,
                          self.normalized_rewards, name=f"edge_{i}_{j}")(source, weights[..., e, :], train)
                node = y if node is None else node + y
            states.append(node)
        return jnp.zeros_like(x) if states[-1] is None else states[-1]


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
      normalized_rewards: the gradients to the mixture weights (the rewards)
        are taken on each expert's output divided by its per-image RMS; the
        outputs and the weights' gradients are unchanged.

    A caller may pass per-feedback copies of the ``arch`` table, shape
    (cells, B, E, 5), one per cell (in depth order) and per image, as for
    the DARTS space: the output is the same, and each copy's gradient is one
    feedback's ``dL/du`` (XNAS section 3.1).
    """

    num_classes: int
    channels: int = 16
    cells_per_stage: int = 5
    nodes: int = 4
    genotype: tuple[str, ...] | None = None
    affine: bool = True
    computed: tuple[str, ...] = NB201_OPS
    dtype: Dtype = jnp.float32
    normalized_rewards: bool = False

    @property
    def num_edges(self) -> int:
        return len(cell_edges(self.nodes))

    @property
    def num_cells(self) -> int:
        return 3 * self.cells_per_stage

    # The search step's view of a supernet (as xnas_jax.spaces.darts.supernet.SearchNetwork):
    def feedback_replicas(self) -> dict[str, int]:
        """The one cell type's cells r_c: every cell shares the ``"cell"`` table."""
        return {"cell": self.num_cells}

    def with_computed(self, computed: dict[str, tuple[str, ...]]) -> NB201Network:
        """The same supernet evaluating only ``computed["cell"]`` experts."""
        return self.clone(computed=tuple(computed["cell"]))

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = True) -> jax.Array:
        return self.logits(images, train)

    @nn.nowrap
    def logits(self, images: jax.Array, train: bool) -> jax.Array:
        """The network's body, shared with :class:`NB201EvalNetwork` (called from a
        compact ``__call__``, so the two hold their variables under the same names)."""
        edges = self.num_edges
        if self.genotype is None:
            experts = (check_ops(self.computed),) * edges
            weights = self.variable(ARCH, "cell", lambda: jnp.full(
                (edges, len(NB201_OPS)), 1.0 / len(NB201_OPS), jnp.float32)).value
            copies = (self.num_cells, images.shape[0], edges, len(NB201_OPS))
            if weights.shape not in (copies[2:], copies):
                raise SpaceError(f"the nb201 mixture weights must have shape {copies[2:]} or, "
                                 f"one per feedback, {copies}; got {weights.shape}")
        else:
            if len(self.genotype) != edges:
                raise SpaceError(f"a cell of {self.nodes} nodes has {edges} edges, the genotype "
                                 f"names {len(self.genotype)} ops")
            experts = tuple((name,) for name in check_ops(self.genotype))
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
                          self.normalized_rewards, name=f"cell_{cell}")(x, weights[cell] if weights.ndim == 4 else weights,
                                               train)
                cell += 1
        x = nn.relu(ops_lib.batch_norm(train, True, self.dtype, name="last_bn")(x))
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x).astype(
            jnp.float32)


class NB201EvalNetwork(NB201Network):
    """One cell's network with the interface of a training run's network.

    The training step (:func:`xnas_jax.train_step.train_step`) calls every space's
    evaluation network as ``(images, train, drop_prob)`` and reads
    ``(logits, aux_logits)``, as DARTS's (:mod:`xnas_jax.spaces.darts.evalnet`).
    NAS-Bench-201 trains its cells with neither an auxiliary tower nor
    drop-path, so ``aux_logits`` is always None and ``drop_prob`` must be None
    or 0 (the training recipes check it).  The variables are those of
    :class:`NB201Network` with the same genotype, under the same names.
    """

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False,
                 drop_prob: jax.typing.ArrayLike | None = None) -> tuple[jax.Array, None]:
        """``(logits, None)``; ``drop_prob`` is accepted for the common interface and unused."""
        del drop_prob
        if self.genotype is None:
            raise SpaceError("the nb201 evaluation network trains one cell: pass its genotype")
        return self.logits(images, train), None


def take_like(tree: Any, like: Any) -> Any:
    """The entries of ``tree`` (a supernet's variables) at the paths of ``like``
    (a discretized cell's): the cell's variables, under the same names."""
    if isinstance(like, dict):
        return {k: take_like(tree[k], v) for k, v in like.items()}
    return tree


def one_hot(genotype: Sequence[str]) -> np.ndarray:
    """The (E, 5) mixture weights that select one op per edge."""
    table = np.zeros((len(genotype), len(NB201_OPS)), np.float32)
    for e, name in enumerate(check_ops(genotype)):
        table[e, NB201_OPS.index(name)] = 1.0
    return table


def discretize(weights: np.ndarray, evidence: np.ndarray | None = None,
               skip_cap: int | None = None, exclude: Sequence[str] = ()) -> tuple[str, ...]:
    """The strongest op of each edge (the benchmark's discretization).

    ``exclude`` ops are never picked (DARTS's own rule leaves out ``none``).
    With ``skip_cap`` M, at most M edges keep ``skip_connect`` (a remedy of
    DARTS+ and P-DARTS against skip-heavy cells): the skips with the
    strongest ``evidence`` (by default the weights) stay, and each other
    edge takes its strongest remaining op by that evidence.
    """
    weights = np.asarray(weights, np.float64)
    if weights.ndim != 2 or weights.shape[1] != len(NB201_OPS):
        raise SpaceError(f"expected (edges, {len(NB201_OPS)}) mixture weights, got shape "
                         f"{weights.shape}")
    evidence = weights if evidence is None else np.asarray(evidence, np.float64)
    allowed = np.array([name not in exclude for name in NB201_OPS])
    chosen = np.argmax(np.where(allowed, weights, -np.inf), axis=1)
    skip = NB201_OPS.index("skip_connect")
    skips = np.flatnonzero(chosen == skip)
    if skip_cap is not None and len(skips) > skip_cap:
        weakest = skips[np.argsort(-evidence[skips, skip], kind="stable")][skip_cap:]
        others = allowed & (np.arange(len(NB201_OPS)) != skip)
        for e in weakest:
            chosen[e] = int(np.argmax(np.where(others, evidence[e], -np.inf)))
    return tuple(NB201_OPS[k] for k in chosen)


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
    return check_ops(ops)
