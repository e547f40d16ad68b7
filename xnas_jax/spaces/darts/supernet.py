"""The DARTS search network (supernet) with mixture weights in their own collection.

Every edge of a cell is a forecaster that mixes its experts with the weights u
of its row in the ``arch`` collection: ``p = sum_i u_i f_i`` (XNAS paper eq. 1).
Because u enters linearly, ``d loss / d u_i = (d loss / d p) . f_i``, taken by
autodiff through the ``arch`` collection (the VJP of :func:`mixture`), is
exactly the XNAS reward with its sign flipped (Algorithm 1 line 8), so the
search step hands those gradients to :func:`xnas_jax.xnas` unchanged.

Structure (the DARTS search network, Liu et al. 2019): a 3x3 stem with 3C
channels and BN; ``layers`` cells, reduction cells at 1/3 and 2/3 of the
depth (:func:`xnas_jax.spaces.darts.genotypes.reduction_layers`) where the channels
double; each cell preprocesses its two inputs (1x1 ReLU-conv-BN, or a
factorized reduce after a reduction cell), builds ``steps`` nodes from all
previous states and outputs their concatenation; global average pooling and a
dense classifier.  Batch norms inside cells have no affine parameters, as in
DARTS's search network.

Program size and kernel count: each expert is traced once per cell stage,
not once per edge, and each stage runs many edges at once.  A cell first runs
the ``2 x steps`` edges that read its two inputs together (vmapped), then
scans the node-to-node edges in stages of :func:`node_stage_width` edges (in
DARTS order an edge's source is complete once the edges into it have run).
With 4 nodes that is 1 + 3 stage iterations per cell instead of 14 edge
iterations, in every cell type.  Edge variables are stacked along a leading
axis in edge order (the parameter count is unchanged).  Within an edge,
experts of one kind run together (:class:`MixedOp`): fewer, larger
operations (on a GPU, fewer kernel launches).

Backward pass: inside a scan, every value the backward pass keeps is a
residual stacked per iteration (one more buffer, one more write per edge).
The grouped operations (:mod:`xnas_jax.spaces.kernels` and :func:`mixture`)
therefore have their own VJPs that keep only what they need, and take the
parameters as they are, so that the scan forwards them instead of stacking
copies.  Sibling reductions (the kernel gradients of all taps, BN's two sums,
the experts' rewards) run as one variadic reduction each
(:func:`xnas_jax.spaces.kernels.sum_many`).

Initialization: ``init`` declares every variable but computes no expert (an
edge outputs zeros then), and an edge's convolution weights come from one
truncated-normal draw, which keeps the init program small.

Skipping experts: ``normal_ops`` / ``reduce_ops`` name the experts that are
computed per cell type (default: all).  Experts wiped out on every edge of a
cell type contribute ``0 * f_i`` and can be left out without changing any
output or gradient; the parameters of all experts are created at ``init``
(so the parameter tree never changes) and the unused ones simply go unused.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xnas_jax.spaces import ARCH
from xnas_jax.spaces.darts import genotypes
from xnas_jax.spaces import ops as ops_lib
from xnas_jax.spaces.kernels import (
    BN_EPSILON,
    BN_MOMENTUM,
    Dtype,
    batch_normalize,
    depthwise_taps,
    kernel_taps,
    pointwise_convs,
    pool_3x3,
    relu,
    sum_many,
)

# Version of the supernet's variable trees, part of a search's checkpoint
# fingerprint: 2 = experts grouped by kind (per-expert parameter dicts,
# batch-norm statistics with one row per expert); 3 = every cell's edges in two
# stacks, ``input_edges`` and ``node_edges`` (edge order).
VARIABLES_LAYOUT = 3


def _edge_groups(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the edges from the cell inputs, and of the node-to-node edges."""
    sources = np.array([s for s, _ in genotypes.edge_list(steps)])
    return np.flatnonzero(sources < 2), np.flatnonzero(sources >= 2)


def _take_rows(x: jax.Array, rows: Sequence[int]) -> jax.Array:
    """x[rows] for static row indices, as a slice or a concatenation of slices (no gather)."""
    rows = [int(r) for r in rows]
    if rows == list(range(rows[0], rows[0] + len(rows))):
        return jax.lax.slice_in_dim(x, rows[0], rows[0] + len(rows))
    return jax.lax.concatenate([jax.lax.slice_in_dim(x, r, r + 1) for r in rows], 0)


def _set_rows(x: jax.Array, rows: Sequence[int], values: jax.Array) -> jax.Array:
    """x with x[rows] = values for static row indices, without a scatter."""
    rows = [int(r) for r in rows]
    if rows == list(range(x.shape[0])):
        return values.astype(x.dtype)
    pieces = [
        jax.lax.slice_in_dim(values, rows.index(r), rows.index(r) + 1) if r in rows
        else jax.lax.slice_in_dim(x, r, r + 1)
        for r in range(x.shape[0])
    ]
    return jax.lax.concatenate([p.astype(x.dtype) for p in pieces], 0)


def _expert_weight(weights: jax.Array, row: int, like: jax.Array) -> jax.Array:
    """u_row, as a scalar (shared weights (N,)) or per image ((B, N) -> (B, 1, 1, 1))."""
    w = weights[..., row].astype(like.dtype)
    return w if weights.ndim == 1 else w.reshape(w.shape + (1,) * (like.ndim - 1))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def mixture(
    outputs: tuple[jax.Array, ...], weights: jax.Array, rows: tuple[tuple[int, ...], ...]
) -> jax.Array:
    """A forecaster's prediction ``p = sum_i u_i f_i`` (XNAS paper eq. 1).

    Expert ``i``'s output ``f_i`` is group ``g`` of ``outputs[k]`` where
    ``rows[k][g] == i``; groups with row -1 are not mixed, and experts
    without a group are not computed (their reward ``-dL/du_i`` is returned
    as 0).  The backward pass keeps only ``outputs`` and ``weights`` (which
    other operations keep anyway), rather than a copy of each weight and
    group it selects: inside the edge scan each copy is a stacked residual.

    ``weights`` is either the forecaster's row u, shape (N,), or one copy of
    it per image, shape (B, N).  The prediction is the same; the gradient of
    a per-image copy is that image's own feedback ``<dL/dp_b, f_i,b>``
    (Algorithm 1 line 8 for one image), which the search step clips one by
    one before summing (line 9).  It costs a reduction over (H, W, C) per
    image instead of over the whole batch.

    Args:
      outputs: arrays (G_k, B, H, W, C), or (B, H, W, C) for a single expert.
      weights: the mixture weights u, (N,) or (B, N), any float dtype.
      rows: static, per array the mixture row of each group, or -1.

    Returns:
      (B, H, W, C) in the outputs' dtype.
    """
    out = None
    for groups, group_rows in zip(outputs, rows):
        for g, r in enumerate(group_rows):
            if r < 0:
                continue
            y = groups if groups.ndim == 4 else groups[g]
            term = y * _expert_weight(weights, r, y)
            out = term if out is None else out + term
    return out


def _mixture_fwd(outputs, weights, rows):
    return mixture(outputs, weights, rows), (outputs, weights)


def _mixture_bwd(rows, residuals, grad):
    outputs, weights = residuals
    g32 = grad.astype(jnp.float32)
    grad_outputs, products, mixed_rows = [], [], []
    for groups, group_rows in zip(outputs, rows):
        if groups.ndim == 4:  # a single expert
            grad_outputs.append(grad * _expert_weight(weights, group_rows[0], grad))
            products.append(g32 * groups.astype(jnp.float32))
            mixed_rows.append(group_rows[0])
            continue
        for g, r in enumerate(group_rows):
            if r >= 0:
                products.append(g32 * groups[g].astype(jnp.float32))
                mixed_rows.append(r)
        grad_outputs.append(jnp.stack([
            grad * _expert_weight(weights, r, grad) if r >= 0 else jnp.zeros_like(grad)
            for r in group_rows
        ]))
    # d p / d u_i = <grad, f_i>: every expert's reward in one reduction, over
    # the whole batch for shared weights, per image for per-image weights.
    axes = tuple(range(grad.ndim)) if weights.ndim == 1 else tuple(range(1, grad.ndim))
    sums = dict(zip(mixed_rows, sum_many(products, axes)))
    zero = jnp.zeros(weights.shape[:-1], jnp.float32)
    grad_weights = jnp.stack([sums.get(i, zero) for i in range(weights.shape[-1])], axis=-1)
    return tuple(grad_outputs), grad_weights.astype(weights.dtype)


mixture.defvjp(_mixture_fwd, _mixture_bwd)


POOL_EXPERTS = {"max_pool_3x3": "max", "avg_pool_3x3": "avg"}


def _conv_weight_shapes(names: Sequence[str], channels: int
                        ) -> list[tuple[str, str, tuple[int, ...], int]]:
    """(expert, weight, shape, fan-in) of an edge's convolutional experts (DARTS layers)."""
    table = []
    for name in names:
        geometry = ops_lib.CONV_GEOMETRY[name]
        k = geometry.kernel
        for block in range(1, geometry.blocks + 1):
            table.append((name, f"depthwise_{block}", (k, k, channels), k * k))
            table.append((name, f"pointwise_{block}", (channels, channels), channels))
    return table


def _conv_experts_init(key: jax.Array, names: Sequence[str], channels: int
                       ) -> dict[str, dict[str, jax.Array]]:
    """Initial weights of an edge's convolutional experts.

    Each weight is lecun normal, as a convolution initializes it: a normal
    truncated at 2 standard deviations, with variance 1 / fan-in (k*k for a
    depthwise (k, k, 1, C) kernel, C for a pointwise (C, C) one).  All of
    them come from one draw: one truncated-normal program per edge rather than
    one per weight, since the random-number code dominates the init program.
    """
    table = _conv_weight_shapes(names, channels)
    sizes = [int(np.prod(shape)) for _, _, shape, _ in table]
    draw = jax.random.truncated_normal(key, -2.0, 2.0, (sum(sizes),), jnp.float32)
    truncated_std = 0.87962566103423978  # of a unit normal truncated at +-2
    weights: dict[str, dict[str, jax.Array]] = {name: {} for name in names}
    for (name, weight, shape, fan_in), piece in zip(table, jnp.split(draw, np.cumsum(sizes)[:-1])):
        weights[name][weight] = piece.reshape(shape) / (np.sqrt(fan_in) * truncated_std)
    return weights


class MixedOp(nn.Module):
    """One forecaster: the u-weighted sum of its experts' outputs (paper eq. 1).

    The experts are computed by kind, several at once, which keeps the traced
    program (and the number of GPU kernels) small; the function is the DARTS
    one, expert by expert (see :mod:`xnas_jax.spaces.ops`), computed with the
    grouped functions of :mod:`xnas_jax.spaces.kernels`:

    * the convolutional experts all start from ReLU(x): their first depthwise
      convolutions (3x3, 5x5, dilated 3x3 and 5x5) run as one
      :func:`~xnas_jax.spaces.kernels.depthwise_taps` (each kernel with its own taps,
      centred in one padding; the groups lead, (G, B, H, W, C)), their
      pointwise convolutions as one batched matmul, their batch norms as one;
      the second blocks of the sep convs the same way;
    * the two pools share one batch norm.

    Parameters are per expert (``sep_conv_3x3: {depthwise_1, pointwise_1,
    depthwise_2, pointwise_2}``, ...), batch-norm statistics per kind with one
    row per expert; all of them exist whatever is computed, so the variable
    trees do not change when experts are skipped.
    """

    ops: tuple[str, ...]  # every expert of the search space, in mixture-row order
    computed: tuple[str, ...]  # the experts actually evaluated (a subset of ops)
    channels: int
    strides: int
    train: bool
    dtype: Dtype = jnp.float32
    depthwise: str = "shifts"  # depthwise-convolution form, see ops.DepthwiseConv

    def _statistics(self, name: str, total: int) -> tuple[Any, Any]:
        """The (total, C) running mean and variance of one grouped batch norm."""
        shape = (total, self.channels)
        return (self.variable("batch_stats", f"{name}_mean", jnp.zeros, shape, jnp.float32),
                self.variable("batch_stats", f"{name}_var", jnp.ones, shape, jnp.float32))

    def _batch_norm(self, name: str, y: jax.Array, rows: list[int], total: int) -> jax.Array:
        """BN without affine parameters over (G, B, H, W, C), statistics per (g, c).

        ``rows`` are the computed groups' rows in the (total, C) running
        statistics; the same normalization as one ``nn.BatchNorm`` per group.
        """
        mean_var, var_var = self._statistics(name, total)
        if self.train:
            y, mean, var = batch_normalize(y, (1, 2, 3), BN_EPSILON)
            m = BN_MOMENTUM
            mean, var = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var)
            mean_var.value = _set_rows(
                mean_var.value, rows, m * _take_rows(mean_var.value, rows) + (1 - m) * mean)
            var_var.value = _set_rows(
                var_var.value, rows, m * _take_rows(var_var.value, rows) + (1 - m) * var)
            return y
        mean = _take_rows(mean_var.value, rows)[:, None, None, None, :]
        var = _take_rows(var_var.value, rows)[:, None, None, None, :]
        return ((y - mean) * jax.lax.rsqrt(var + BN_EPSILON)).astype(self.dtype)

    def _depthwise(self, x: jax.Array, kernels: list[jax.Array], experts: list[str],
                   strides: int) -> jax.Array:
        """The experts' depthwise convolutions of x ((1 or G, B, H, W, C)) -> (G, B, H', W', C)."""
        specs = [ops_lib.CONV_GEOMETRY[name] for name in experts]
        if self.depthwise == "conv":
            outs = [
                jax.lax.conv_general_dilated(
                    x[0 if x.shape[0] == 1 else g], kernel[:, :, None, :].astype(x.dtype),
                    (strides, strides), ((pad, pad), (pad, pad)), rhs_dilation=(dil, dil),
                    dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1],
                )
                for g, (kernel, (_, dil, pad, _)) in enumerate(zip(kernels, specs))
            ]
            return jnp.stack(outs)
        if self.depthwise != "shifts":
            raise ValueError(
                f"depthwise impl must be one of {ops_lib.DEPTHWISE_IMPLS}, got {self.depthwise!r}"
            )
        # One padding for all, each kernel's taps centred in it.
        padding = max(pad for _, _, pad, _ in specs)
        taps = tuple(kernel_taps(k, dil, padding - pad) for k, dil, pad, _ in specs)
        return depthwise_taps(x, tuple(kernels), taps, padding, strides)

    def _conv_block(self, x, weights, experts, block, strides, stats_name, stats_rows, total):
        """ReLU, depthwise, pointwise, BN for several experts at once (the groups of x)."""
        x = relu(x)
        # The parameters themselves (depthwise_taps casts them), so that the
        # backward pass of the edge scan reads them rather than a stacked copy.
        kernels = [weights[name][f"depthwise_{block}"] for name in experts]
        y = self._depthwise(x, kernels, experts, strides)
        pointwise = tuple(weights[name][f"pointwise_{block}"] for name in experts)
        y = pointwise_convs(y, pointwise)
        return self._batch_norm(stats_name, y, stats_rows, total)

    @nn.compact
    def __call__(self, x: jax.Array, weights: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        c, s = self.channels, self.strides
        row = self.ops.index
        pools = [name for name in self.ops if name in POOL_EXPERTS]
        live_pools = [name for name in pools if name in self.computed]
        skip = None
        if "skip_connect" in self.computed:
            skip = x if s == 1 else ops_lib.FactorizedReduce(
                c, False, self.dtype, name="skip_connect")(x, self.train)
        convs = [name for name in self.ops if name in ops_lib.CONV_GEOMETRY]
        if self.is_initializing():
            drawn = _conv_experts_init(self.make_rng("params"), convs, c)
            init = lambda _, name: drawn[name]  # noqa: E731
        else:  # flax only checks the stored weights' shapes against init's, abstractly
            init = lambda _, name: {  # noqa: E731
                weight: jnp.zeros(shape, jnp.float32)
                for _, weight, shape, _ in _conv_weight_shapes([name], c)
            }
        params = {name: self.param(name, init, name) for name in convs}
        live = [name for name in convs if name in self.computed]
        seps = [name for name in convs if ops_lib.CONV_GEOMETRY[name].blocks == 2]
        sep = [g for g, name in enumerate(live) if name in seps]

        if self.is_initializing():
            # Only the variables are wanted: declaring them without computing
            # the experts keeps the init program small.  The edge outputs
            # zeros of the right shape.
            for name, total, used in (("pool_bn", len(pools), live_pools),
                                      ("conv_bn_1", len(convs), live),
                                      ("conv_bn_2", len(seps), sep)):
                if used:
                    self._statistics(name, total)
            shape = jax.eval_shape(lambda v: pool_3x3(v, "max", s), x).shape
            return jnp.zeros(shape, self.dtype)

        terms = []  # (outputs (G, B, H', W', C) or (B, H', W', C), their mixture rows)
        if live_pools:
            y = jnp.stack([pool_3x3(x, POOL_EXPERTS[n], s) for n in live_pools])
            # DARTS follows pooling by a BN without affine parameters.
            terms.append((self._batch_norm("pool_bn", y, [pools.index(n) for n in live_pools],
                                           len(pools)), tuple(row(n) for n in live_pools)))
        if skip is not None:
            terms.append((skip, (row("skip_connect"),)))
        if live:
            first = self._conv_block(x[None], params, live, 1, s, "conv_bn_1",
                                     [convs.index(n) for n in live], len(convs))
            # The dil convs end after one block: their rows of `first` are
            # mixed as they are (-1: a sep conv's intermediate, not mixed).
            terms.append((first, tuple(-1 if n in seps else row(n) for n in live)))
            if sep:
                names = [live[g] for g in sep]
                second = self._conv_block(_take_rows(first, sep), params, names, 2, 1, "conv_bn_2",
                                          [seps.index(n) for n in names], len(seps))
                terms.append((second, tuple(row(n) for n in names)))

        if not terms:  # only 'none' experts: the edge outputs zeros
            return ops_lib.Zero(s)(x, self.train)
        outputs, rows = zip(*terms)
        return mixture(outputs, weights, rows)


def node_stage_width(steps: int) -> int:
    """How many node-to-node edges one iteration of a cell's edge scan runs.

    The node-to-node edges are chunked, in edge order, into stages of ``w``
    edges that run together.  A chunking is valid when every edge of a stage
    reads a node whose edges all ran in earlier stages; the largest valid
    ``w`` that divides the edges evenly is taken (``2`` for DARTS's 4 nodes:
    3 stages for 6 edges; ``1`` is always valid).
    """
    edges = [(s - 2, n) for s, n in genotypes.edge_list(steps) if s >= 2]
    for width in range(len(edges), 0, -1):
        if len(edges) % width:
            continue
        stage = {e: k // width for k, e in enumerate(edges)}
        if all(stage[(i, n)] < stage[(source, node)]
               for source, node in edges for i, n in edges if n == source):
            return width
    return 1


class _EdgeVariables(NamedTuple):
    """A stack of edges' variables: the parameters, and the flax variable of the statistics."""

    params: Any
    stats: Any  # a flax Variable of the batch_stats collection, or None

    def values(self) -> dict[str, Any]:
        """The variables as ``MixedOp.apply`` takes them (only the collections that exist)."""
        values = {"params": self.params}
        if self.stats is not None:
            values["batch_stats"] = self.stats.value
        return {k: v for k, v in values.items() if v is not None}

    def update(self, stats: Any) -> None:
        if self.stats is not None:
            self.stats.value = stats


def _edge_variables(module: nn.Module, name: str, op: MixedOp, x: jax.Array,
                    weights: jax.Array, count: int) -> _EdgeVariables:
    """Declares ``count`` edges' variables of ``op``, stacked on a leading axis.

    Each edge initializes from its own key (one split of the module's
    ``params`` key), as :class:`MixedOp` initializes.  Collections that the
    edge does not have (no parameters with only pools and skips) are not
    declared.
    """
    def init(key: jax.Array) -> dict[str, Any]:
        return jax.vmap(lambda k: op.init({"params": k}, x, weights))(
            jax.random.split(key, count))

    shapes = jax.eval_shape(init, jax.random.key(0))
    params = stats = None
    if shapes.get("params"):
        params = module.param(name, lambda key: init(key)["params"])
    if shapes.get("batch_stats"):
        stats = module.variable("batch_stats", name,
                                lambda: init(jax.random.key(0))["batch_stats"])
    return _EdgeVariables(params, stats)


def _apply_edge(op: MixedOp, variables: dict[str, Any], x: jax.Array, weights: jax.Array
                ) -> tuple[jax.Array, Any]:
    """One edge: its mixture of experts and its updated batch-norm statistics."""
    y, updates = op.apply(variables, x, weights, mutable=["batch_stats"])
    return y, updates.get("batch_stats")


def _split_leading(tree: Any, shape: tuple[int, ...]) -> Any:
    """Every leaf's leading axis reshaped to ``shape`` (edges in row-major order)."""
    return jax.tree.map(lambda a: a.reshape(shape + a.shape[1:]), tree)


def _merge_leading(tree: Any) -> Any:
    """Every leaf's two leading axes merged into one (the inverse of :func:`_split_leading`)."""
    return jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), tree)


class SearchCell(nn.Module):
    """A DARTS search cell; ``weights`` is its (num_edges, N) mixture table,
    or one table per image, (B, num_edges, N) (see :func:`mixture`).

    The edges run in a few wide stages rather than one by one (on a GPU every
    operation of a stage is one kernel for all of its edges):

    * the ``2 x steps`` edges from the two cell inputs first, all at once
      (an edge per node and input; a vmap over the inputs inside a vmap over
      the nodes, so work that depends only on an input, such as its ReLU and
      pools, is not repeated per node);
    * then the node-to-node edges, a scan over stages of
      :func:`node_stage_width` edges each, in edge order (every stage reads
      only complete nodes; the carry holds the nodes).

    Variables: ``input_edges`` and ``node_edges``, each edge's :class:`MixedOp`
    variables stacked along a leading axis in edge order.
    """

    channels: int
    reduction: bool
    reduction_prev: bool
    ops: tuple[str, ...]
    computed: tuple[str, ...]
    steps: int = 4
    train: bool = True
    dtype: Dtype = jnp.float32
    depthwise: str = "shifts"

    def _op(self, strides: int) -> MixedOp:
        return MixedOp(ops=self.ops, computed=self.computed, channels=self.channels,
                       strides=strides, train=self.train, dtype=self.dtype,
                       depthwise=self.depthwise, parent=None)

    @nn.compact
    def __call__(self, s0: jax.Array, s1: jax.Array, weights: jax.Array) -> jax.Array:
        c, steps = self.channels, self.steps
        s0 = ops_lib.preprocess(c, self.reduction_prev, False, self.dtype, "preprocess0")(
            s0, self.train
        )
        s1 = ops_lib.preprocess(c, False, False, self.dtype, "preprocess1")(s1, self.train)
        if weights.ndim == 3:  # per image: the edges lead
            weights = jnp.moveaxis(weights, 1, 0)
        from_inputs, from_nodes = _edge_groups(steps)
        input_op = self._op(2 if self.reduction else 1)
        node_op = self._op(1)
        inputs = jnp.stack([s0, s1])
        input_vars = _edge_variables(self, "input_edges", input_op, s1, weights[0],
                                     len(from_inputs))
        node_vars = None
        if len(from_nodes):  # none with one node: no empty variables
            side = s1.shape[1] // (2 if self.reduction else 1)
            node_vars = _edge_variables(
                self, "node_edges", node_op, jnp.zeros(s1.shape[:1] + (side, side, c), s1.dtype),
                weights[0], len(from_nodes))
        if self.is_initializing():  # the variables are declared; compute no expert
            shape = jax.eval_shape(lambda v: pool_3x3(v, "max", input_op.strides), s1).shape
            return jnp.zeros(shape[:-1] + (steps * c,), self.dtype)

        # The edges from the inputs, (node, input) in edge order.
        apply_input = functools.partial(_apply_edge, input_op)
        y, stats = jax.vmap(jax.vmap(apply_input), in_axes=(0, None, 0))(
            _split_leading(input_vars.values(), (steps, 2)),
            inputs, _take_rows(weights, from_inputs).reshape((steps, 2) + weights.shape[1:]),
        )
        if self.train:
            input_vars.update(_merge_leading(stats))
        nodes = y[:, 0] + y[:, 1]

        if node_vars is not None:
            width = node_stage_width(steps)
            stages = (len(from_nodes) // width, width)
            endpoints = np.array(genotypes.edge_list(steps))[from_nodes]
            apply_node = jax.vmap(functools.partial(_apply_edge, node_op))

            def stage(nodes, xs):
                variables, w, sources, destinations = xs
                y, stats = apply_node(variables, jnp.take(nodes, sources, axis=0), w)
                # One scatter-add (two edges of a stage may enter the same node).
                return nodes.at[destinations].add(y), stats

            xs = (
                _split_leading(node_vars.values(), stages),
                _take_rows(weights, from_nodes).reshape(stages + weights.shape[1:]),
                jnp.asarray(endpoints[:, 0] - 2).reshape(stages),
                jnp.asarray(endpoints[:, 1]).reshape(stages),
            )
            nodes, stats = jax.lax.scan(stage, nodes, xs)
            if self.train:
                node_vars.update(_merge_leading(stats))
        return jnp.concatenate(list(nodes), axis=-1)


class SearchNetwork(nn.Module):
    """The DARTS search network (C=16, 8 cells, 4 nodes by default).

    Attributes:
      num_classes: classifier outputs.
      channels: C, the channels of the first cells (the stem has 3C).
      layers: number of cells; reductions at
        :func:`xnas_jax.spaces.darts.genotypes.reduction_layers`.
      ops: the experts of every forecaster (mixture-row order).
      steps: intermediate nodes per cell.
      normal_ops / reduce_ops: the experts evaluated in normal / reduction
        cells (None: all). Leaving out experts whose weight is 0 on every edge
        changes nothing but the cost.
      dtype: computation dtype (parameters and BN statistics stay float32).
      depthwise: "shifts" or "conv", the depthwise-convolution form (same
        function; see :class:`xnas_jax.spaces.ops.DepthwiseConv`).

    The ``arch`` collection holds one (num_edges, N) table per cell type,
    shared by its cells.  A caller may pass instead one copy per feedback,
    shape (r_c, B, num_edges, N): per cell of the type (in depth order) and
    per image.  The output is the same; the gradient of each copy is then
    one feedback's ``dL/du`` (XNAS section 3.1 counts a feedback per image
    and per cell), which is what the search step clips one by one.
    """

    num_classes: int
    channels: int = 16
    layers: int = 8
    ops: tuple[str, ...] = genotypes.XNAS_PRIMITIVES
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
        return genotypes.reduction_layers(self.layers)

    # The search step's view of a supernet (shared with xnas_jax.spaces.nb201.network):
    def feedback_replicas(self) -> dict[str, int]:
        """Per cell type (a table of the ``arch`` collection), its cells r_c."""
        return genotypes.cell_replicas(self.layers)

    def with_computed(self, computed: dict[str, tuple[str, ...]]) -> SearchNetwork:
        """The same supernet evaluating only ``computed`` experts per cell type."""
        return self.clone(normal_ops=computed["normal"], reduce_ops=computed["reduce"])

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
        replicas = genotypes.cell_replicas(self.layers)
        for kind, table in mixture.items():
            if table.ndim == 4 and table.shape != (replicas[kind], images.shape[0], *shape):
                raise ValueError(
                    f"per-feedback {kind} mixture weights must have shape (cells, batch, edges, "
                    f"experts) = {(replicas[kind], images.shape[0], *shape)}, got {table.shape}"
                )
            if table.ndim not in (2, 4):
                raise ValueError(f"{kind} mixture weights must have 2 or 4 axes, got {table.shape}")
        seen = {"normal": 0, "reduce": 0}
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
            table = mixture[kind]
            if table.ndim == 4:  # per feedback: this cell's copies
                table = table[seen[kind]]
            seen[kind] += 1
            s0, s1 = s1, cell(s0, s1, table)
            reduction_prev = reduction
        x = jnp.mean(s1.astype(jnp.float32), axis=(1, 2))
        return nn.Dense(self.num_classes, name="classifier")(x)


def validate_ops(ops: Sequence[str]) -> tuple[str, ...]:
    """Checks an expert list (names from :data:`xnas_jax.spaces.ops.OPS`, no repeats)."""
    ops = tuple(ops)
    unknown = [name for name in ops if name not in ops_lib.OPS]
    if unknown:
        raise ValueError(f"unknown expert(s) {unknown}; valid: {sorted(ops_lib.OPS)}")
    if len(set(ops)) != len(ops):
        raise ValueError(f"experts must not repeat, got {list(ops)}")
    if len(ops) < 2:
        raise ValueError(f"a forecaster needs at least 2 experts, got {list(ops)}")
    return ops
