"""The supernet: XNAS rewards by autodiff, the scanned cells against an unrolled
reference, shapes, collections, parameter count, and skipping wiped-out experts."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xnas_jax.spaces.darts import genotypes
from xnas_jax.spaces.ops import CONV_GEOMETRY, count_params
from xnas_jax.spaces.darts.supernet import (
    ARCH,
    MixedOp,
    SearchCell,
    SearchNetwork,
    mixture,
    node_stage_width,
)

OPS = genotypes.XNAS_PRIMITIVES
# Cell and network tests use fewer experts (one of each kind) to compile fast.
FEW_OPS = ("max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3")


def _mixed_op(strides=1, computed=OPS):
    return MixedOp(ops=OPS, computed=computed, channels=4, strides=strides, train=True)


@pytest.fixture(scope="module")
def mixed_setup():
    x = jax.random.normal(jax.random.key(0), (3, 6, 6, 4))
    op = _mixed_op()
    u = jax.nn.softmax(jax.random.normal(jax.random.key(1), (len(OPS),)))
    variables = op.init(jax.random.key(2), x, u)
    return op, variables, x, u


def test_autodiff_gives_the_xnas_reward(mixed_setup):
    """dL/du_i equals -R_i = grad_p L . f_i (Algorithm 1 line 8), computed apart."""
    op, variables, x, u = mixed_setup
    target = jax.random.normal(jax.random.key(3), (3, 6, 6, 4))

    def head(p):  # any non-linear loss of the forecaster's prediction p
        return jnp.sum(jnp.tanh(p) * target) + 0.1 * jnp.sum(p**2)

    def predict(weights):
        out, _ = op.apply(variables, x, weights, mutable=["batch_stats"])
        return out

    grads_u = jax.grad(lambda w: head(predict(w)))(u)
    # Independently: each expert's prediction f_i (u enters linearly, so the
    # one-hot mixture gives f_i), p = sum u_i f_i, and grad_p of the loss.
    experts = np.stack([np.asarray(predict(jnp.eye(len(OPS))[i]), np.float64) for i in range(len(OPS))])
    p = np.tensordot(np.asarray(u, np.float64), experts, axes=1)
    np.testing.assert_allclose(p, np.asarray(predict(u)), rtol=1e-5, atol=1e-5)
    grad_p = np.asarray(jax.grad(head)(jnp.asarray(p, jnp.float32)), np.float64)
    rewards = -np.tensordot(experts, grad_p, axes=grad_p.ndim)
    np.testing.assert_allclose(np.asarray(grads_u), -rewards, rtol=1e-4, atol=1e-4)
    assert np.ptp(rewards) > 1e-2  # the experts really differ


def test_skipping_zero_weight_experts_changes_nothing(mixed_setup):
    op, variables, x, _ = mixed_setup
    u = jnp.array([0.0, 0.3, 0.0, 0.5, 0.0, 0.2, 0.0])
    alive = tuple(name for name, w in zip(OPS, u) if w > 0)
    full = jax.value_and_grad(
        lambda w: jnp.sum(op.apply(variables, x, w, mutable=["batch_stats"])[0] ** 2)
    )(u)
    skipped = _mixed_op(computed=alive)
    reduced = jax.value_and_grad(
        lambda w: jnp.sum(skipped.apply(variables, x, w, mutable=["batch_stats"])[0] ** 2)
    )(u)
    np.testing.assert_allclose(reduced[0], full[0], rtol=1e-6)
    mask = np.asarray(u) > 0  # gradients of the computed experts are unchanged
    np.testing.assert_allclose(np.asarray(reduced[1])[mask], np.asarray(full[1])[mask], rtol=1e-5)


# ------------------------------------------- grouped experts vs one module per expert


def _expert_modules_reference(ops, computed, strides, params, x, u):
    """sum_i u_i f_i(x) with every expert its own :mod:`xnas_jax.spaces.ops` module.

    The straightforward formulation (the evaluation network's modules, one
    flax BatchNorm per BN, train mode), fed the MixedOp's parameters.
    Returns the mixture and each expert's updated BN statistics.
    """
    from xnas_jax.spaces import ops as ops_lib

    def block(p, i):
        return {"depthwise": {"kernel": p[f"depthwise_{i}"][:, :, None, :]},
                "pointwise": {"kernel": p[f"pointwise_{i}"][None, None]}}

    out, stats = 0.0, {}
    for i, name in enumerate(ops):
        if name not in computed:
            continue
        op = ops_lib.make_op(name, x.shape[-1], strides, False)
        if name.startswith("sep_conv"):
            variables = {"params": {"DilConv_0": block(params[name], 1),
                                    "DilConv_1": block(params[name], 2)}}
        elif name.startswith("dil_conv"):
            variables = {"params": block(params[name], 1)}
        elif name == "skip_connect" and strides == 2:
            variables = {"params": params[name]}
        else:
            variables = {}
        fresh = jax.eval_shape(lambda: op.init(jax.random.key(0), x, True))  # noqa: B023
        variables["batch_stats"] = jax.tree_util.tree_map_with_path(  # BN starts at 0 / 1
            lambda path, leaf: jnp.full(leaf.shape, float(path[-1].key == "var")),
            fresh.get("batch_stats", {}),
        )
        y, updated = op.apply(variables, x, True, mutable=["batch_stats"])
        stats[name] = updated["batch_stats"]
        if "pool" in name:
            bn = ops_lib.batch_norm(True, False)
            y, updated = bn.apply({"batch_stats": {"mean": jnp.zeros(x.shape[-1]),
                                                   "var": jnp.ones(x.shape[-1])}},
                                  y, mutable=["batch_stats"])
            stats[name] = updated["batch_stats"]
        out = out + u[i] * y
    return out, stats


@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("computed", [OPS, ("avg_pool_3x3", "skip_connect", "sep_conv_5x5",
                                            "dil_conv_3x3")])
@pytest.mark.slow
def test_grouped_experts_match_one_module_per_expert(strides, computed):
    x = jax.random.normal(jax.random.key(4), (3, 8, 8, 4))
    u = jax.nn.softmax(jax.random.normal(jax.random.key(5), (len(OPS),)))
    u = u * jnp.asarray([name in computed for name in OPS])
    op = MixedOp(ops=OPS, computed=computed, channels=4, strides=strides, train=True)
    full = MixedOp(ops=OPS, computed=OPS, channels=4, strides=strides, train=True)
    variables = jax.jit(full.init)(jax.random.key(6), x, u)
    cotangent = jax.random.normal(jax.random.key(7), (3, 4, 4, 4) if strides == 2 else x.shape)

    def grouped(params, x, u):
        out, updated = op.apply({**variables, "params": params}, x, u, mutable=["batch_stats"])
        return jnp.sum(jnp.sin(out) * cotangent), (out, updated["batch_stats"])

    def reference(params, x, u):
        out, stats = _expert_modules_reference(OPS, computed, strides, params, x, u)
        return jnp.sum(jnp.sin(out) * cotangent), (out, stats)

    grad = lambda f: jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))  # noqa: E731
    (_, (out, stats)), grads = grad(grouped)(variables["params"], x, u)
    (_, (want, want_stats)), want_grads = grad(reference)(variables["params"], x, u)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    for got, expected in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert np.abs(np.asarray(grads[2])).max() > 1e-3  # rewards are not trivially zero

    # Running statistics: one row per expert, updated where computed, as each BN.
    rows = {"pool_bn": ["max_pool_3x3", "avg_pool_3x3"],
            "conv_bn_1": ["sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"],
            "conv_bn_2": ["sep_conv_3x3", "sep_conv_5x5"]}
    for group, names in rows.items():
        for row, name in enumerate(names):
            for moment in ("mean", "var"):
                got = np.asarray(stats[f"{group}_{moment}"][row])
                if name not in computed:  # untouched
                    np.testing.assert_array_equal(got, 1.0 if moment == "var" else 0.0)
                    continue
                bn = want_stats[name]  # the expert's own BN for this block
                if name.startswith("sep_conv"):
                    bn = bn[f"DilConv_{1 if group == 'conv_bn_2' else 0}"]
                leaf = bn["BatchNorm_0"][moment] if "BatchNorm_0" in bn else bn[moment]
                np.testing.assert_allclose(got, leaf, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------- scan vs unrolled reference


def _reference_cell(cell: SearchCell, variables, s0, s1, weights):
    """The cell computed edge by edge in Python with the scan's stacked parameters."""
    params, stats = variables["params"], variables["batch_stats"]
    pre0 = cell.reduction_prev
    from xnas_jax.spaces import ops as ops_lib

    p0 = ops_lib.preprocess(cell.channels, pre0, False)
    p1 = ops_lib.preprocess(cell.channels, False, False)
    h0, _ = p0.apply(
        {"params": params["preprocess0"], "batch_stats": stats["preprocess0"]}, s0, True,
        mutable=["batch_stats"],
    )
    h1, _ = p1.apply(
        {"params": params["preprocess1"], "batch_stats": stats["preprocess1"]}, s1, True,
        mutable=["batch_stats"],
    )
    states = [h0, h1]
    edges = genotypes.edge_list(cell.steps)
    groups = {"input_edges": [e for e, (s, _) in enumerate(edges) if s < 2],
              "node_edges": [e for e, (s, _) in enumerate(edges) if s >= 2]}
    slot = {e: (name, k) for name, members in groups.items() for k, e in enumerate(members)}
    nodes = [None] * cell.steps
    for e, (source, node) in enumerate(edges):
        name, k = slot[e]
        strides = 2 if cell.reduction and source < 2 else 1
        take = lambda tree: jax.tree.map(lambda a: a[k], tree)  # noqa: E731,B023
        y, _ = _mixed_op_apply(cell.ops, cell.computed, cell.channels, strides)(
            {"params": take(params[name]), "batch_stats": take(stats[name])},
            states[source], weights[e],
        )
        nodes[node] = y if nodes[node] is None else nodes[node] + y
        if e == len(edges) - 1 or edges[e + 1][1] != node:  # the node is complete
            states.append(nodes[node])
    return jnp.concatenate(nodes, axis=-1)


@functools.lru_cache(maxsize=None)
def _mixed_op_apply(ops, computed, channels, strides):
    """One edge of the reference, jitted once per configuration (the 14 edges
    share a few), so the unrolled reference costs little to compile."""
    op = MixedOp(ops=ops, computed=computed, channels=channels, strides=strides, train=True)
    return jax.jit(functools.partial(op.apply, mutable=["batch_stats"]))


@pytest.mark.parametrize("reduction, reduction_prev", [(False, False), (True, False), (False, True)])
@pytest.mark.slow
def test_scanned_cell_matches_unrolled_reference(reduction, reduction_prev):
    cell = SearchCell(channels=4, reduction=reduction, reduction_prev=reduction_prev,
                      ops=FEW_OPS, computed=FEW_OPS)
    size0 = 8 if reduction_prev else 4
    s0 = jax.random.normal(jax.random.key(0), (2, size0, size0, 6))
    s1 = jax.random.normal(jax.random.key(1), (2, 4, 4, 5))
    weights = jax.nn.softmax(jax.random.normal(jax.random.key(2), (14, len(FEW_OPS))), -1)
    variables = jax.jit(cell.init)(jax.random.key(3), s0, s1, weights)

    def scanned(params, w):
        out, _ = cell.apply({**variables, "params": params}, s0, s1, w, mutable=["batch_stats"])
        return out

    def reference(params, w):
        return _reference_cell(cell, {**variables, "params": params}, s0, s1, w)

    def output_and_grads(f):
        # d/dout of sum(sin(out)) is cos(out): one forward and one backward pass.
        out, vjp = jax.vjp(f, variables["params"], weights)
        return out, vjp(jnp.cos(out))

    # The scanned cell jitted as the search runs it; the reference op by op
    # (eager), so the test does not pay for compiling 14 unrolled edges.
    out, g_scan = jax.jit(output_and_grads, static_argnums=0)(scanned)
    ref, g_ref = output_and_grads(reference)
    side = 2 if reduction else 4
    assert out.shape == (2, side, side, 16)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(g_scan), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("steps", [1, 3, 4, 5])
def test_cell_stages_compute_the_dag_in_edge_order(steps):
    """The staged cell (inputs' edges at once, then node-to-node stages of
    several edges) against the cell's DAG in NumPy float64: with only skip and
    none, node j = sum over its edges of u_skip * state_source.  A stage that
    read a node before all its edges ran would give another sum."""
    ops = ("none", "skip_connect")
    cell = SearchCell(channels=4, reduction=False, reduction_prev=False, ops=ops, computed=ops,
                      steps=steps)
    s0 = jax.random.normal(jax.random.key(0), (2, 4, 4, 6))
    s1 = jax.random.normal(jax.random.key(1), (2, 4, 4, 5))
    edges = genotypes.edge_list(steps)
    weights = jax.random.uniform(jax.random.key(2), (len(edges), 2), minval=0.5, maxval=2.0)
    variables = cell.init(jax.random.key(3), s0, s1, weights)
    out, _ = jax.jit(lambda v: cell.apply(v, s0, s1, weights, mutable=["batch_stats"]))(variables)

    from xnas_jax.spaces import ops as ops_lib
    params, stats = variables["params"], variables["batch_stats"]
    states = [
        np.asarray(ops_lib.preprocess(4, False, False).apply(
            {"params": params[f"preprocess{i}"], "batch_stats": stats[f"preprocess{i}"]}, s, True,
            mutable=["batch_stats"])[0], np.float64)
        for i, s in enumerate((s0, s1))
    ]
    u = np.asarray(weights, np.float64)
    for node in range(steps):
        states.append(sum(u[e, 1] * states[source]
                          for e, (source, n) in enumerate(edges) if n == node))
    np.testing.assert_allclose(out, np.concatenate(states[2:], -1), rtol=1e-5, atol=1e-5)
    if steps == 4:
        assert node_stage_width(steps) == 2  # 3 stages of 2 edges


# ------------------------------------------------------------------ the network


def test_mixture_weights_live_in_their_own_collection():
    net = SearchNetwork(num_classes=10, channels=4, layers=3)
    shapes = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((2, 8, 8, 1))))
    assert set(shapes) == {"params", "batch_stats", ARCH}
    assert {k: v.shape for k, v in shapes[ARCH].items()} == {"normal": (14, 7), "reduce": (14, 7)}
    leaves = jax.tree_util.tree_flatten_with_path(shapes["params"])[0]
    assert not any("arch" in jax.tree_util.keystr(path) for path, _ in leaves)


def _reference_param_count(c: int, layers: int, classes: int, ops, image_channels=3) -> int:
    """Counts the DARTS search network layer by layer (PyTorch conventions)."""
    def per_op_params(k):  # weights of one expert at k channels; cell BNs have no affine
        return {
            "none": 0, "max_pool_3x3": 0, "avg_pool_3x3": 0, "skip_connect": 0,
            "sep_conv_3x3": 2 * (9 * k + k * k), "sep_conv_5x5": 2 * (25 * k + k * k),
            "dil_conv_3x3": 9 * k + k * k, "dil_conv_5x5": 25 * k + k * k,
        }

    total = 9 * image_channels * 3 * c + 2 * 3 * c  # stem conv + affine BN
    c_pp, c_p, k = 3 * c, 3 * c, c
    for i in range(layers):
        reduction = i in (layers // 3, 2 * layers // 3)
        if reduction:
            k *= 2
        expert = per_op_params(k)
        total += c_pp * k + c_p * k  # the two preprocessing 1x1 convs (or FR: 2 x c_pp*k/2)
        for source, _ in genotypes.edge_list(4):
            total += sum(expert[name] for name in ops)
            if reduction and source < 2 and "skip_connect" in ops:
                total += k * k  # strided skip = factorized reduce
        c_pp, c_p = c_p, 4 * k
    return total + c_p * classes + classes


def test_default_search_network_parameter_count():
    net = SearchNetwork(num_classes=10)
    shapes = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((2, 32, 32, 3))))
    count = count_params(shapes["params"])
    assert count == _reference_param_count(16, 8, 10, OPS)
    # The reference PyTorch DARTS search network (C=16, 8 cells, 10 classes)
    # reports 1.930618 M parameters, architecture weights excluded.
    assert count == 1_930_618


def test_init_declares_what_the_forward_pass_reads_with_lecun_normal_weights():
    """init skips the experts' arithmetic, so check what it builds: the forward
    pass finds every variable it reads and creates no batch statistics of its
    own; each convolution weight is lecun normal (truncated at 2 sigma, variance
    1 / fan-in), a separate draw for every edge, expert and weight."""
    net = SearchNetwork(num_classes=10, channels=8, layers=3, ops=FEW_OPS)
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
    variables = jax.jit(net.init)(jax.random.key(1), x)
    _, updates = jax.jit(lambda v: net.apply(v, x, mutable=["batch_stats"]))(variables)
    shapes = lambda tree: jax.tree.map(jnp.shape, tree)  # noqa: E731
    assert shapes(updates["batch_stats"]) == shapes(variables["batch_stats"])

    truncated_std = 0.87962566103423978  # of a unit normal truncated at +-2
    drawn = []
    for cell in ("cell_0", "cell_1"):  # a normal and a reduction cell
        mixed = variables["params"][cell]["input_edges"]
        for name in ("sep_conv_3x3", "dil_conv_3x3"):
            k, _, _, blocks = CONV_GEOMETRY[name]
            for block in range(1, blocks + 1):
                for weight in (f"depthwise_{block}", f"pointwise_{block}"):
                    # (edges, k, k, C) or (edges, C, C)
                    w = np.asarray(mixed[name][weight], np.float64)
                    z = w * np.sqrt(k * k if weight.startswith("depthwise") else w.shape[-2])
                    assert abs(z.std() - 1.0) < 0.1, (cell, name, weight)  # variance 1 / fan-in
                    assert 1.8 < np.abs(z).max() * truncated_std <= 2.0 + 1e-5
                    drawn.append(z.ravel())
    drawn = np.concatenate(drawn)
    # No draw is reused (a reused one would repeat thousands of values; float32
    # draws collide by chance about n^2 / 2^24 times).
    assert drawn.size - len(np.unique(drawn)) < 50


def test_network_output_shape_and_skipping_experts():
    net = SearchNetwork(num_classes=7, channels=4, layers=3, ops=FEW_OPS)
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    variables = jax.jit(net.init)(jax.random.key(1), x)
    arch = jax.tree.map(lambda a: a.at[:, 0].set(0.0).at[:, 2].set(0.0), variables[ARCH])
    arch = jax.tree.map(lambda a: a / a.sum(-1, keepdims=True), arch)

    target = jax.random.normal(jax.random.key(2), (2, 7))

    def loss(model, params, arch):
        logits, _ = model.apply({**variables, "params": params, ARCH: arch}, x,
                                mutable=["batch_stats"])
        return jnp.sum(jnp.tanh(logits) * target), logits

    value_and_grad = jax.jit(
        jax.value_and_grad(loss, argnums=(1, 2), has_aux=True), static_argnums=0
    )
    (value, logits), grads = value_and_grad(net, variables["params"], arch)
    assert logits.shape == (2, 7)
    alive = tuple(n for i, n in enumerate(FEW_OPS) if i not in (0, 2))
    lean = net.clone(normal_ops=alive, reduce_ops=alive)
    (value2, _), grads2 = value_and_grad(lean, variables["params"], arch)
    np.testing.assert_allclose(value2, value, rtol=1e-5)
    for kind in ("normal", "reduce"):
        keep = np.asarray(arch[kind]) > 0
        np.testing.assert_allclose(
            np.asarray(grads2[1][kind])[keep], np.asarray(grads[1][kind])[keep], rtol=1e-4, atol=1e-5
        )
    # The skipped experts' parameters get no gradient; the others the same one.
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads2[0])):
        if np.any(np.asarray(b)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_mixture_against_numpy_with_unmixed_groups_and_uncomputed_experts():
    """p = sum_i u_i f_i over the mixed groups; d p / d u_i = f_i, 0 for experts not computed."""
    rng = np.random.default_rng(0)
    outputs = (rng.normal(size=(3, 2, 2, 2, 3)), rng.normal(size=(2, 2, 2, 3)))
    # Group 1 of the first array is not mixed; experts 1 and 3 are absent; the
    # last array is not mixed at all (a sep conv's first block when only sep
    # convs are computed).
    outputs += (rng.normal(size=(2, 2, 2, 2, 3)),)
    rows = ((4, -1, 0), (2,), (-1, -1))
    u = rng.dirichlet(np.ones(5))
    want = u[4] * outputs[0][0] + u[0] * outputs[0][2] + u[2] * outputs[1]
    got = mixture(tuple(map(jnp.asarray, outputs)), jnp.asarray(u), rows)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    cotangent = rng.normal(size=want.shape)
    grads = jax.grad(lambda o, u: jnp.sum(mixture(o, u, rows) * cotangent), argnums=(0, 1))(
        tuple(map(jnp.asarray, outputs)), jnp.asarray(u))
    np.testing.assert_allclose(
        grads[1], [np.sum(cotangent * outputs[0][2]), 0, np.sum(cotangent * outputs[1]), 0,
                   np.sum(cotangent * outputs[0][0])], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grads[0][0][1], 0)
    np.testing.assert_allclose(grads[0][0][2], u[0] * cotangent, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads[0][1], u[2] * cotangent, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(grads[0][2], 0)


def test_mixture_with_per_image_weights_gives_each_image_its_reward():
    """(B, N) weights: p_b = sum_i u_bi f_i,b and d/du_bi = <cotangent_b, f_i,b>, in float64."""
    rng = np.random.default_rng(1)
    outputs = (rng.normal(size=(2, 3, 2, 2, 4)), rng.normal(size=(3, 2, 2, 4)))
    rows = ((3, 0), (1,))
    u = rng.dirichlet(np.ones(4), size=3)  # one row per image; expert 2 not computed
    f = {3: outputs[0][0], 0: outputs[0][1], 1: outputs[1]}
    want = sum(u[:, i, None, None, None] * f[i] for i in f)
    as_jax = tuple(map(jnp.asarray, outputs))
    np.testing.assert_allclose(mixture(as_jax, jnp.asarray(u), rows), want, rtol=1e-5, atol=1e-6)
    cotangent = rng.normal(size=want.shape)
    grads = jax.grad(lambda o, w: jnp.sum(mixture(o, w, rows) * cotangent), argnums=(0, 1))(
        as_jax, jnp.asarray(u))
    expected = np.zeros((3, 4))
    for i, fi in f.items():
        expected[:, i] = np.sum(cotangent * fi, axis=(1, 2, 3))
    np.testing.assert_allclose(grads[1], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grads[0][1], u[:, 1, None, None, None] * cotangent, rtol=1e-5,
                               atol=1e-6)
    # Summed over the images, the per-image rewards are the shared weights' gradient.
    shared = jax.grad(lambda w: jnp.sum(mixture(as_jax, w, rows) * cotangent))(
        jnp.asarray(u[0]))
    np.testing.assert_allclose(grads[1].sum(0), shared, rtol=1e-4, atol=1e-4)
