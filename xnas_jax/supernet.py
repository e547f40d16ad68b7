"""The DARTS search network (supernet) with mixture weights in their own collection.

Every edge of a cell is a forecaster that mixes its experts with the weights u
of its row in the ``arch`` collection: ``p = sum_i u_i f_i`` (XNAS paper eq. 1).
Because u enters linearly, ``d loss / d u`` taken by autodiff through the
``arch`` collection is exactly the XNAS reward with its sign flipped
(Algorithm 1 line 8), so the search step hands those gradients to
:func:`xnas_jax.xnas` unchanged.

Structure (the DARTS search network, Liu et al. 2019): a 3x3 stem with 3C
channels and BN; ``layers`` cells, reduction cells at 1/3 and 2/3 of the
depth where the channels double; each cell preprocesses its two inputs
(1x1 ReLU-conv-BN, or a factorized reduce after a reduction cell), builds
``steps`` nodes from all previous states and outputs their concatenation;
global average pooling and a dense classifier.  Batch norms inside cells have
no affine parameters, as in DARTS's search network.

Compile time: an unrolled supernet traces 14 x N experts per cell and takes
minutes to compile.  Here a cell runs its edges with ``nn.scan``, which traces
each expert once per loop: a normal cell with one scan over its 14 edges in
DARTS order (the carry is a buffer of the 2 inputs and the nodes; an edge's
source is complete when the edge runs), a reduction cell with one scan over
the 8 strided edges that read its inputs, then one over the 6 node-to-node
edges.  Edge e's parameters are stacked along the leading axis of its scan,
so the parameter count is unchanged.

Skipping experts: ``normal_ops`` / ``reduce_ops`` name the experts that are
computed per cell type (default: all).  Experts wiped out on every edge of a
cell type contribute ``0 * f_i`` and can be left out without changing any
output or gradient; the parameters of all experts are created at ``init``
(so the parameter tree never changes) and the unused ones simply go unused.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xnas_jax import genotypes
from xnas_jax import ops as ops_lib

Dtype = Any

ARCH = "arch"  # the variable collection of the mixture weights


def _edge_groups(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the edges from the cell inputs, and of the node-to-node edges."""
    sources = np.array([s for s, _ in genotypes.edge_list(steps)])
    return np.flatnonzero(sources < 2), np.flatnonzero(sources >= 2)


class MixedOp(nn.Module):
    """One forecaster: the u-weighted sum of its experts' outputs (paper eq. 1)."""

    ops: tuple[str, ...]  # every expert of the search space, in mixture-row order
    computed: tuple[str, ...]  # the experts actually evaluated (a subset of ops)
    channels: int
    strides: int
    train: bool
    dtype: Dtype = jnp.float32
    depthwise: str = "shifts"  # depthwise-convolution form, see ops.DepthwiseConv

    @nn.compact
    def __call__(self, x: jax.Array, weights: jax.Array) -> jax.Array:
        out = None
        for name in self.ops:
            if name == "none" or name not in self.computed:
                continue  # zeros contribute nothing to the mixture or its gradient
            y = ops_lib.make_op(
                name, self.channels, self.strides, False, self.dtype, name, self.depthwise
            )(x, self.train)
            if "pool" in name:  # DARTS follows pooling by a BN without affine params
                y = ops_lib.batch_norm(self.train, False, self.dtype, name=f"{name}_bn")(y)
            y = weights[self.ops.index(name)].astype(y.dtype) * y
            out = y if out is None else out + y
        if out is None:  # only 'none' experts: the edge outputs zeros
            out = ops_lib.Zero(self.strides)(x, self.train)
        return out


class _InputEdge(nn.Module):
    """Scan body over the edges that read a cell input: adds into a node."""

    mixed: dict  # MixedOp keyword arguments

    @nn.compact
    def __call__(self, nodes, xs, inputs):
        source, node, weights = xs
        x = jax.lax.dynamic_index_in_dim(inputs, source, keepdims=False)
        y = MixedOp(**self.mixed, name="mixed")(x, weights)
        current = jax.lax.dynamic_index_in_dim(nodes, node, keepdims=False)
        return jax.lax.dynamic_update_index_in_dim(nodes, current + y, node, 0), None


class _BufferEdge(nn.Module):
    """Scan body over stride-1 edges whose source and destination share a buffer.

    In DARTS order an edge's source is complete when the edge runs, so one pass
    over the edges in that order is exact.
    """

    mixed: dict

    @nn.compact
    def __call__(self, states, xs):
        source, destination, weights = xs
        x = jax.lax.dynamic_index_in_dim(states, source, keepdims=False)
        y = MixedOp(**self.mixed, name="mixed")(x, weights)
        current = jax.lax.dynamic_index_in_dim(states, destination, keepdims=False)
        return jax.lax.dynamic_update_index_in_dim(states, current + y, destination, 0), None


def _scan(body, length: int, **broadcast):
    return nn.scan(
        body,
        variable_axes={"params": 0, "batch_stats": 0},
        split_rngs={"params": True},
        in_axes=(0,) + (nn.broadcast,) * len(broadcast),
        length=length,
    )


class SearchCell(nn.Module):
    """A DARTS search cell; ``weights`` is its (num_edges, N) mixture table."""

    channels: int
    reduction: bool
    reduction_prev: bool
    ops: tuple[str, ...]
    computed: tuple[str, ...]
    steps: int = 4
    train: bool = True
    dtype: Dtype = jnp.float32
    depthwise: str = "shifts"

    @nn.compact
    def __call__(self, s0: jax.Array, s1: jax.Array, weights: jax.Array) -> jax.Array:
        c = self.channels
        s0 = ops_lib.preprocess(c, self.reduction_prev, False, self.dtype, "preprocess0")(
            s0, self.train
        )
        s1 = ops_lib.preprocess(c, False, False, self.dtype, "preprocess1")(s1, self.train)
        endpoints = np.array(genotypes.edge_list(self.steps))
        batch, height, width = s1.shape[0], s1.shape[1], s1.shape[2]

        def mixed(strides):
            return dict(
                ops=self.ops,
                computed=self.computed,
                channels=c,
                strides=strides,
                train=self.train,
                dtype=self.dtype,
                depthwise=self.depthwise,
            )

        if not self.reduction:
            # One scan over all edges; the buffer holds the 2 inputs and the nodes.
            nodes = jnp.zeros((self.steps, batch, height, width, c), s1.dtype)
            states = jnp.concatenate([jnp.stack([s0, s1]), nodes])
            xs = (jnp.asarray(endpoints[:, 0]), jnp.asarray(endpoints[:, 1] + 2), weights)
            states, _ = _scan(_BufferEdge, len(endpoints))(mixed(1), name="edges")(states, xs)
            return jnp.concatenate(list(states[2:]), axis=-1)

        # A reduction cell: the strided edges read the inputs, at twice the
        # nodes' resolution, so they get a scan of their own before the rest.
        from_inputs, from_nodes = _edge_groups(self.steps)
        nodes = jnp.zeros((self.steps, batch, height // 2, width // 2, c), s1.dtype)
        xs = (
            jnp.asarray(endpoints[from_inputs, 0]),
            jnp.asarray(endpoints[from_inputs, 1]),
            weights[from_inputs],
        )
        nodes, _ = _scan(_InputEdge, len(from_inputs), inputs=True)(
            mixed(2), name="input_edges"
        )(nodes, xs, jnp.stack([s0, s1]))
        xs = (
            jnp.asarray(endpoints[from_nodes, 0] - 2),
            jnp.asarray(endpoints[from_nodes, 1]),
            weights[from_nodes],
        )
        nodes, _ = _scan(_BufferEdge, len(from_nodes))(mixed(1), name="node_edges")(nodes, xs)
        return jnp.concatenate(list(nodes), axis=-1)


class SearchNetwork(nn.Module):
    """The DARTS search network (C=16, 8 cells, 4 nodes by default).

    Attributes:
      num_classes: classifier outputs.
      channels: C, the channels of the first cells (the stem has 3C).
      layers: number of cells; reductions at ``layers // 3`` and ``2 * layers // 3``.
      ops: the experts of every forecaster (mixture-row order).
      steps: intermediate nodes per cell.
      normal_ops / reduce_ops: the experts evaluated in normal / reduction
        cells (None: all). Leaving out experts whose weight is 0 on every edge
        changes nothing but the cost.
      dtype: computation dtype (parameters and BN statistics stay float32).
      depthwise: "shifts" or "conv", the depthwise-convolution form (same
        function; see :class:`xnas_jax.ops.DepthwiseConv`).
    """

    num_classes: int
    channels: int = 16
    layers: int = 8
    ops: tuple[str, ...] = (
        "max_pool_3x3",
        "avg_pool_3x3",
        "skip_connect",
        "sep_conv_3x3",
        "sep_conv_5x5",
        "dil_conv_3x3",
        "dil_conv_5x5",
    )
    steps: int = 4
    stem_multiplier: int = 3
    normal_ops: tuple[str, ...] | None = None
    reduce_ops: tuple[str, ...] | None = None
    dtype: Dtype = jnp.float32
    depthwise: str = "shifts"

    @property
    def num_edges(self) -> int:
        return genotypes.num_edges(self.steps)

    def reduction_layers(self) -> tuple[int, ...]:
        return tuple(sorted({self.layers // 3, 2 * self.layers // 3}))

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = True) -> jax.Array:
        shape = (self.num_edges, len(self.ops))
        uniform = lambda: jnp.full(shape, 1.0 / len(self.ops), jnp.float32)  # noqa: E731
        mixture = {
            "normal": self.variable(ARCH, "normal", uniform).value,
            "reduce": self.variable(ARCH, "reduce", uniform).value,
        }
        computed = {
            "normal": tuple(self.ops if self.normal_ops is None else self.normal_ops),
            "reduce": tuple(self.ops if self.reduce_ops is None else self.reduce_ops),
        }
        c = self.channels
        x = nn.Conv(
            self.stem_multiplier * c, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
            dtype=self.dtype, name="stem_conv",
        )(images.astype(self.dtype))
        x = ops_lib.batch_norm(train, True, self.dtype, name="stem_bn")(x)
        s0 = s1 = x
        reduction_prev = False
        for i in range(self.layers):
            reduction = i in self.reduction_layers()
            if reduction:
                c *= 2
            kind = "reduce" if reduction else "normal"
            cell = SearchCell(
                channels=c,
                reduction=reduction,
                reduction_prev=reduction_prev,
                ops=self.ops,
                computed=computed[kind],
                steps=self.steps,
                train=train,
                dtype=self.dtype,
                depthwise=self.depthwise,
                name=f"cell_{i}",
            )
            s0, s1 = s1, cell(s0, s1, mixture[kind])
            reduction_prev = reduction
        x = jnp.mean(s1.astype(jnp.float32), axis=(1, 2))
        return nn.Dense(self.num_classes, name="classifier")(x)


def count_params(params: Any) -> int:
    """Number of scalars in a parameter pytree."""
    return int(sum(np.prod(np.shape(leaf)) for leaf in jax.tree.leaves(params)))


def validate_ops(ops: Sequence[str]) -> tuple[str, ...]:
    """Checks an expert list (names from :data:`xnas_jax.ops.OPS`, no repeats)."""
    ops = tuple(ops)
    unknown = [name for name in ops if name not in ops_lib.OPS]
    if unknown:
        raise ValueError(f"unknown expert(s) {unknown}; valid: {sorted(ops_lib.OPS)}")
    if len(set(ops)) != len(ops):
        raise ValueError(f"experts must not repeat, got {list(ops)}")
    if len(ops) < 2:
        raise ValueError(f"a forecaster needs at least 2 experts, got {list(ops)}")
    return ops
