"""NAS-Bench-201's space (xnas_jax.spaces.nb201.network): parameter counts, one code path, notation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xnas_jax.spaces.nb201 import network as nb201
from xnas_jax.spaces.ops import count_params
from xnas_jax.spaces import ARCH

RESNET_CELL = "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|"


def _params(genotype, channels=16, cells=5, nodes=4, classes=10, size=32):
    model = nb201.NB201Network(classes, channels, cells, nodes, genotype=genotype)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)),
                                               train=False))
    return count_params(shapes["params"])


def test_parameter_counts_match_the_benchmark():
    # NAS-Bench-201 on CIFAR-10 (C = 16, N = 5) reports, over all 15,625 cells,
    # 0.073306 M parameters at least (all none) and 1.531546 M at most (all
    # nor_conv_3x3): the ideal and nadir points of the NB201 problem in
    # lamda-bbo/offline-moo, off_moo_bench/problem/mo_nas/mo_nas_before.py
    # (commit 2b5c6a1b), taken from the benchmark's data; 0.559386 M is the
    # cost_info of a two-conv cell quoted in pprp/PicoNAS,
    # pplib/evaluator/nb201_evaluator.py.
    assert _params(("none",) * 6) == 73_306
    assert _params(("nor_conv_3x3",) * 6) == 1_531_546
    assert _params(nb201.parse_genotype(RESNET_CELL)) == 559_386
    # With 100 classes the classifier grows by 90 x 65 (published minimum 0.079156 M).
    assert _params(("none",) * 6, classes=100) == 79_156


def _tiny(genotype=None):
    return nb201.NB201Network(3, channels=4, cells_per_stage=1, nodes=3, genotype=genotype)


def test_a_discretized_cell_is_the_supernet_with_one_hot_weights():
    genotype = ("nor_conv_3x3", "avg_pool_3x3", "nor_conv_1x1")
    images = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
    labels = jnp.array([0, 1, 2, 1])
    supernet = _tiny()
    variables = supernet.init(jax.random.key(0), images, train=False)
    discrete = _tiny(genotype)
    own = discrete.init(jax.random.key(0), images, train=False)

    params = nb201.take_like(variables["params"], own["params"])
    stats = nb201.take_like(variables["batch_stats"], own["batch_stats"])
    # Flax draws each parameter from the key and its path: the cell's own init
    # is the supernet's at those paths (the table's common random numbers).
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(own["params"])):
        np.testing.assert_array_equal(a, b)

    def loss(model, p, extra):
        batch_stats = variables["batch_stats"] if extra else stats  # (unused: training mode)
        logits, _ = model.apply({"params": p, "batch_stats": batch_stats, **extra}, images,
                                train=True, mutable=["batch_stats"])
        return jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), labels])

    one_hot = {ARCH: {"cell": jnp.asarray(nb201.one_hot(genotype))}}
    full = _merge(variables["params"], params)
    want, want_grads = jax.jit(jax.value_and_grad(lambda p: loss(discrete, p, {})))(params)
    got, got_grads = jax.jit(jax.value_and_grad(lambda p: loss(supernet, p, one_hot)))(full)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    for (path, g), w in zip(jax.tree_util.tree_flatten_with_path(
            nb201.take_like(got_grads, params))[0], jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6,
                                   err_msg=jax.tree_util.keystr(path))


def _merge(tree, values):
    if isinstance(values, dict):
        return {k: (_merge(v, values[k]) if k in values else v) for k, v in tree.items()}
    return values


def test_notation_round_trips_and_bad_input_is_one_clear_error():
    genotype = nb201.parse_genotype(RESNET_CELL)
    assert len(genotype) == 6 and nb201.genotype_string(genotype, 4) == RESNET_CELL
    assert len(nb201.all_genotypes(3)) == 125
    assert nb201.discretize(nb201.one_hot(genotype)) == genotype
    with pytest.raises(nb201.SpaceError, match="'sep_conv_3x3' is not an operation of the "
                                               "nb201 space"):
        nb201.parse_genotype("|sep_conv_3x3~0|")
    with pytest.raises(nb201.SpaceError, match="has 3 edges, the genotype names 2"):
        _tiny(("none", "none")).init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    with pytest.raises(nb201.SpaceError, match=r"expected \(edges, 5\)"):
        nb201.discretize(np.zeros((3, 4)))


# ------------------------------------------------ the cell against an unrolled reference


def _reference_cell(params, x, w, nodes):
    """NB201's cell written out from the paper's definitions, in plain JAX:
    node j = sum_{i<j} sum_k w[e, k] f_k(node i), training-mode batch norm."""

    def conv_bn(p, h):
        h = jax.lax.conv_general_dilated(
            jax.nn.relu(h), p["Conv_0"]["kernel"], (1, 1),
            [(p["Conv_0"]["kernel"].shape[0] // 2,) * 2] * 2,
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        mean = h.mean((0, 1, 2))
        var = ((h - mean) ** 2).mean((0, 1, 2))
        bn = p["BatchNorm_0"]
        return (h - mean) / jnp.sqrt(var + 1e-5) * bn["scale"] + bn["bias"]

    def avg_pool(h):  # 3x3, padding 1, the padding not counted
        padded = jnp.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)))
        ones = jnp.pad(jnp.ones_like(h[:1, ..., :1]), ((0, 0), (1, 1), (1, 1), (0, 0)))
        size = h.shape[1]
        window = lambda a: sum(a[:, dy:dy + size, dx:dx + size]  # noqa: E731
                               for dy in range(3) for dx in range(3))
        return window(padded) / window(ones)

    states = [x]
    for j in range(1, nodes):
        node = 0.0
        for e, (i, target) in enumerate(nb201.cell_edges(nodes)):
            if target != j:
                continue
            p = params[f"edge_{i}_{j}"]
            experts = {"none": jnp.zeros_like(states[i]), "skip_connect": states[i],
                       "nor_conv_1x1": conv_bn(p["nor_conv_1x1"], states[i]),
                       "nor_conv_3x3": conv_bn(p["nor_conv_3x3"], states[i]),
                       "avg_pool_3x3": avg_pool(states[i])}
            for k, name in enumerate(nb201.NB201_OPS):
                node = node + w[e, k] * experts[name]
        states.append(node)
    return states[-1]


def test_the_cell_matches_an_unrolled_reference():
    nodes = 4
    cell = nb201._Cell(channels=3, edge_experts=(nb201.NB201_OPS,) * 6, nodes=nodes,
                       affine=True, dtype=jnp.float32)
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 3))
    w = jax.nn.softmax(jax.random.normal(jax.random.key(1), (6, 5)), -1)
    variables = cell.init(jax.random.key(2), x, w, True)
    # Random BN scales and biases, so that they matter.
    leaves, tree = jax.tree.flatten(variables["params"])
    keys = jax.random.split(jax.random.key(3), len(leaves))
    params = jax.tree.unflatten(tree, [a + 0.3 * jax.random.normal(k, a.shape)
                                       for a, k in zip(leaves, keys)])

    def module(p, w):
        out, _ = cell.apply({**variables, "params": p}, x, w, True, mutable=["batch_stats"])
        return out

    def both(f):
        out, vjp = jax.vjp(f, params, w)
        return out, vjp(jnp.cos(out))  # the gradients of sum(sin(out))

    out, grads = jax.jit(both, static_argnums=0)(module)
    ref, ref_grads = jax.jit(both, static_argnums=0)(
        lambda p, w: _reference_cell(p, x, w, nodes))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(grads)[0],
                            jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=jax.tree_util.keystr(path))


def test_per_feedback_copies_give_the_same_output_and_split_the_gradient():
    model = _tiny()
    images = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
    variables = model.init(jax.random.key(0), images, train=False)
    table = jax.nn.softmax(jax.random.normal(jax.random.key(2), (3, 5)), -1)
    copies = jnp.broadcast_to(table, (model.num_cells, 4, 3, 5))
    assert model.feedback_replicas() == {"cell": 3}

    def loss(arch):
        logits, _ = model.apply({**variables, ARCH: {"cell": arch}}, images, train=True,
                                mutable=["batch_stats"])
        return jnp.sum(jnp.sin(logits))

    value, grad = jax.value_and_grad(loss)(table)
    copy_value, copy_grads = jax.value_and_grad(loss)(copies)
    np.testing.assert_allclose(copy_value, value, rtol=1e-6)
    assert copy_grads.shape == (3, 4, 3, 5)
    np.testing.assert_allclose(copy_grads.sum((0, 1)), grad, rtol=1e-4, atol=1e-6)
    # Each image's copies see only that image's own path through the cell:
    # different images get different feedback.
    assert not np.allclose(copy_grads[:, 0], copy_grads[:, 1])
    with pytest.raises(nb201.SpaceError, match=r"must have shape \(3, 5\) or"):
        jax.eval_shape(lambda: loss(jnp.zeros((2, 4, 3, 5))))


def test_normalized_rewards_change_only_the_gradient_to_the_weights():
    """--normalized-rewards: same outputs and weight gradients; each expert's reward is
    taken on its output over its per-image RMS."""
    images = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
    plain, normalized = _tiny(), _tiny().clone(normalized_rewards=True)
    variables = plain.init(jax.random.key(0), images, train=False)
    table = jax.nn.softmax(jax.random.normal(jax.random.key(2), (3, 5)), -1)
    copies = jnp.broadcast_to(table, (plain.num_cells, 4, 3, 5))

    def loss(model, params, arch):
        logits, _ = model.apply({**variables, "params": params, ARCH: {"cell": arch}}, images,
                                train=True, mutable=["batch_stats"])
        return jnp.sum(jnp.sin(logits))

    grad = jax.jit(jax.value_and_grad(loss, argnums=(1, 2)), static_argnums=0)
    value, (params_grad, arch_grad) = grad(plain, variables["params"], copies)
    value_n, (params_grad_n, arch_grad_n) = grad(normalized, variables["params"], copies)
    np.testing.assert_allclose(value_n, value, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(params_grad_n), jax.tree.leaves(params_grad)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(arch_grad_n, arch_grad, rtol=1e-2)
    # The term itself: d/dw of w * f is <., f / rms(f)> per image; d/df is unchanged.
    f = jax.random.normal(jax.random.key(3), (4, 2, 2, 3)) * jnp.arange(1.0, 5.0)[:, None, None, None]
    g = jax.random.normal(jax.random.key(4), f.shape)
    w = jnp.full((4,), 0.3)
    dw, df = jax.grad(lambda w, f: jnp.sum(g * nb201._weighted(w, f, True)), (0, 1))(w, f)
    rms = np.sqrt(np.mean(np.square(np.asarray(f)), axis=(1, 2, 3)))
    np.testing.assert_allclose(dw, np.sum(np.asarray(g * f), axis=(1, 2, 3)) / rms, rtol=1e-4)
    np.testing.assert_allclose(df, 0.3 * g, rtol=1e-6)
    np.testing.assert_allclose(nb201._weighted(w, f, True), 0.3 * f, rtol=1e-6)
