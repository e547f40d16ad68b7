"""Grouped operations (depthwise taps, pointwise convs, BN, ReLU) against reference forms."""

from __future__ import annotations

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jax_core
from hypothesis import given, settings
from hypothesis import strategies as st

from xnas_jax.spaces import ops
from xnas_jax.spaces.kernels import (
    BN_EPSILON,
    batch_normalize,
    depthwise_conv,
    depthwise_taps,
    kernel_taps,
    pointwise_convs,
    pool_3x3,
    relu,
    sum_many,
)


def grouped_conv(x, kernel, padding, dilation, strides):
    return jax.lax.conv_general_dilated(
        x, kernel[:, :, None, :], (strides, strides), ((padding, padding),) * 2,
        rhs_dilation=(dilation, dilation), dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x.shape[-1],
    )


# (height, kernel, padding, dilation, stride): every DARTS expert's depthwise
# conv (sep 3x3/5x5, dil 3x3/5x5, strides 1 and 2) and odd sizes.
CASES = [(8, 3, 1, 1, 1), (8, 3, 1, 1, 2), (8, 5, 2, 1, 1), (8, 5, 2, 1, 2), (8, 3, 2, 2, 1),
         (8, 3, 2, 2, 2), (8, 5, 4, 2, 1), (8, 5, 4, 2, 2), (7, 3, 1, 1, 2), (5, 5, 4, 2, 1)]


@pytest.mark.parametrize("height, k, padding, dilation, strides", CASES)
def test_depthwise_conv_matches_grouped_convolution(height, k, padding, dilation, strides):
    keys = jax.random.split(jax.random.key(height * 100 + k * 10 + strides), 3)
    x = jax.random.normal(keys[0], (2, height, height + 3, 5))
    kernel = jax.random.normal(keys[1], (k, k, 5))
    args = (padding, dilation, strides)
    expected = grouped_conv(x, kernel, *args)
    np.testing.assert_allclose(depthwise_conv(x, kernel, *args), expected, rtol=1e-5, atol=1e-5)
    cotangent = jax.random.normal(keys[2], expected.shape)

    def loss(f):
        return lambda a, b: jnp.sum(f(a, b, *args) * cotangent)

    want = jax.grad(loss(grouped_conv), argnums=(0, 1))(x, kernel)
    got = jax.jit(jax.grad(loss(depthwise_conv), argnums=(0, 1)))(x, kernel)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shared, strides, flat", [(True, 1, False), (True, 2, True),
                                                   (False, 1, False)])
def test_depthwise_taps_runs_several_convolutions_at_once(shared, strides, flat):
    """The four DARTS depthwise kernels, centred in one padding, on one input or one each.

    Kernels are passed as (k, k, C) or flattened to (k * k, C): the same taps.
    """
    specs = [(3, 1, 1), (5, 1, 2), (3, 2, 2), (5, 2, 4)]  # kernel, dilation, padding
    padding = max(pad for _, _, pad in specs)
    keys = jax.random.split(jax.random.key(7), 3 + len(specs))
    x = jax.random.normal(keys[0], (1 if shared else len(specs), 2, 8, 8, 3))
    kernels = tuple(jax.random.normal(key, (k, k, 3)) for key, (k, _, _) in zip(keys[3:], specs))
    taps = tuple(kernel_taps(k, d, padding - pad) for k, d, pad in specs)

    def taps_form(x, kernels):
        if flat:
            kernels = tuple(kernel.reshape(-1, 3) for kernel in kernels)
        return depthwise_taps(x, kernels, taps, padding, strides)

    def reference(x, kernels):
        return jnp.stack([
            grouped_conv(x[0 if shared else g], kernel, pad, d, strides)
            for g, (kernel, (_, d, pad)) in enumerate(zip(kernels, specs))
        ])

    expected = reference(x, kernels)
    assert expected.shape == (len(specs), 2, 8 // strides, 8 // strides, 3)
    np.testing.assert_allclose(taps_form(x, kernels), expected, rtol=1e-5, atol=1e-5)
    cotangent = jax.random.normal(keys[1], expected.shape)
    loss = lambda f: lambda a, b: jnp.sum(f(a, b) * cotangent)  # noqa: E731
    got = jax.jit(jax.grad(loss(taps_form), argnums=(0, 1)))(x, kernels)
    want = jax.grad(loss(reference), argnums=(0, 1))(x, kernels)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("x_mapped, kernels_mapped", [(True, True), (False, True), (True, False)])
def test_depthwise_taps_under_nested_vmaps_matches_a_loop(x_mapped, kernels_mapped):
    """vmap adds leading axes to the taps primitives; an unmapped operand is broadcast.

    Two vmaps, as in the supernet's input stage (nodes x inputs): values and
    gradients (through the batched backward primitive) against a Python loop.
    """
    specs = [(3, 1, 1), (5, 2, 4)]  # kernel, dilation, padding: sep 3x3, dil 5x5
    padding, outer, inner = 4, 3, 2
    taps = tuple(kernel_taps(k, d, padding - pad) for k, d, pad in specs)
    keys = jax.random.split(jax.random.key(11), 4)
    x = jax.random.normal(keys[0], (outer, inner, 1, 2, 6, 6, 3))
    kernels = tuple(jax.random.normal(key, (outer, inner, k, k, 3))
                    for key, (k, _, _) in zip(keys[2:], specs))
    x = x if x_mapped else x[0, 0]
    kernels = kernels if kernels_mapped else tuple(k[0, 0] for k in kernels)
    cotangent = jax.random.normal(keys[1], (outer, inner, 2, 2, 3, 3, 3))

    def batched(x, kernels):
        f = lambda a, b: depthwise_taps(a, b, taps, padding, 2)  # noqa: E731
        axes = (0 if x_mapped else None, 0 if kernels_mapped else None)
        return jax.vmap(jax.vmap(f, in_axes=axes), in_axes=axes)(x, kernels)

    def looped(x, kernels):
        pick = lambda a, i, j, mapped: a[i, j] if mapped else a  # noqa: E731
        return jnp.stack([jnp.stack([
            depthwise_taps(pick(x, i, j, x_mapped),
                           tuple(pick(k, i, j, kernels_mapped) for k in kernels),
                           taps, padding, 2)
            for j in range(inner)]) for i in range(outer)])

    np.testing.assert_allclose(jax.jit(batched)(x, kernels), jax.jit(looped)(x, kernels),
                               rtol=1e-5, atol=1e-5)
    loss = lambda f: lambda a, b: jnp.sum(f(a, b) * cotangent)  # noqa: E731
    got = jax.jit(jax.grad(loss(batched), argnums=(0, 1)))(x, kernels)
    want = jax.jit(jax.grad(loss(looped), argnums=(0, 1)))(x, kernels)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_depthwise_taps_is_one_equation_each_way_under_vmap():
    """The four DARTS kernels' 68 taps trace as one forward and one backward equation.

    Expanded into slices, products and sums, they were several hundred
    equations, each batched by vmap and transposed: most of a step's trace.
    """
    specs = [(3, 1, 1), (5, 1, 2), (3, 2, 2), (5, 2, 4)]
    taps = tuple(kernel_taps(k, d, 4 - pad) for k, d, pad in specs)
    x = jnp.zeros((3, 1, 2, 8, 8, 4))
    kernels = tuple(jnp.zeros((3, k, k, 4)) for k, _, _ in specs)
    loss = lambda x, kernels: jnp.sum(jax.vmap(  # noqa: E731
        lambda a, b: depthwise_taps(a, b, taps, 4, 1))(x, kernels))
    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(x, kernels)

    def names(jaxpr):
        for eqn in jaxpr.eqns:
            yield eqn.primitive.name
            for sub in jax_core.jaxprs_in_params(eqn.params):
                yield from names(sub)

    counts = collections.Counter(names(jaxpr.jaxpr))
    assert counts["xnas_depthwise_taps"] == 1 and counts["xnas_depthwise_taps_grad"] == 1
    assert sum(counts.values()) < 40, counts


def test_depthwise_taps_rejects_a_kernel_that_does_not_match_its_taps():
    x = jnp.zeros((1, 1, 8, 8, 2))
    with pytest.raises(ValueError, match=r"kernel of shape \(3, 3, 2\) for 25 taps"):
        depthwise_taps(x, (jnp.ones((3, 3, 2)),), (kernel_taps(5, 1),), 2, 1)
    with pytest.raises(ValueError, match="for 9 taps and 2 channels"):
        depthwise_taps(x, (jnp.ones((3, 3, 3)),), (kernel_taps(3, 1),), 1, 1)


def test_depthwise_taps_rejects_groups_of_different_output_sizes():
    x = jnp.zeros((1, 1, 8, 8, 2))
    kernels = (jnp.ones((9, 2)), jnp.ones((9, 2)))
    taps = (kernel_taps(3, 1), kernel_taps(3, 2))  # both uncentred: 8 and 6 outputs
    with pytest.raises(ValueError, match="different output sizes"):
        depthwise_taps(x, kernels, taps, 1, 1)


def naive_batch_norm(y, axes):
    """Autodiff's reference: the definition (variance as the mean squared deviation, two
    passes, so float32 loses nothing to cancellation), every intermediate left to jax.grad."""
    mean = jnp.mean(y, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(y - mean), axis=axes, keepdims=True)
    return (y - mean) / jnp.sqrt(var + BN_EPSILON), jnp.squeeze(mean, axes), jnp.squeeze(var, axes)


@settings(max_examples=15, deadline=None)
@given(shape=st.sampled_from([(3, 4, 5), (2, 3, 1, 4), (7,)]), count=st.integers(1, 5),
       data=st.data())
def test_sum_many_is_one_sum_per_array(shape, count, data):
    """The variadic reduction against NumPy's float64 sums, array by array."""
    axes = tuple(sorted(data.draw(st.sets(st.integers(0, len(shape) - 1), min_size=1))))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    arrays = [rng.normal(size=shape).astype(np.float32) for _ in range(count)]
    sums = jax.jit(lambda xs: sum_many(xs, axes))([jnp.asarray(a) for a in arrays])
    assert len(sums) == count
    for got, a in zip(sums, arrays):
        np.testing.assert_allclose(got, a.astype(np.float64).sum(axis=axes), rtol=1e-5, atol=1e-5)


@functools.partial(jax.jit, static_argnums=0)
def _batch_norm_against_autodiff(axes, y, cotangents):
    """batch_normalize's values and VJPs next to autodiff of the formula's, in one program
    per shape (jitted: op-by-op, the examples below took over a minute)."""
    loss = lambda f: lambda y: sum(jnp.sum(o * c) for o, c in zip(f(y), cotangents))  # noqa: E731
    # Only the normalized output differentiated (the statistics feed running averages).
    only_normalized = lambda f: lambda y: jnp.sum(f(y)[0] * cotangents[0])  # noqa: E731
    ours, naive = (lambda y: batch_normalize(y, axes, BN_EPSILON)), (
        lambda y: naive_batch_norm(y, axes))
    return (ours(y), jax.grad(loss(ours))(y), jax.grad(loss(naive))(y),
            jax.grad(only_normalized(ours))(y), jax.grad(only_normalized(naive))(y))


@settings(max_examples=12, deadline=None)
@given(shape=st.sampled_from([(2, 4, 3, 3, 5), (3, 2, 1, 1, 2), (1, 8, 2, 4, 3)]),
       axes=st.sampled_from([(1, 2, 3), (0, 1, 2, 3)]), scale=st.floats(0.1, 10.0),
       seed=st.integers(0, 2**16))
def test_batch_normalize_matches_autodiff_of_the_formula(shape, axes, scale, seed):
    """Values and the closed-form VJP (through all three outputs) against jax.grad."""
    rng = np.random.default_rng(seed)
    y64 = scale * rng.normal(size=shape) + 3.0
    y = jnp.asarray(y64, jnp.float32)
    y64 = np.asarray(y, np.float64)  # values against float64: the mean of 3 is large
    stats_shape = tuple(n for a, n in enumerate(shape) if a not in axes)
    cotangents = tuple(jnp.asarray(rng.normal(size=s), jnp.float32)
                       for s in (shape, stats_shape, stats_shape))
    got, grad, grad_naive, grad_normalized, grad_normalized_naive = (
        _batch_norm_against_autodiff(axes, y, cotangents))
    mean64, var64 = y64.mean(axis=axes, keepdims=True), y64.var(axis=axes, keepdims=True)
    values64 = ((y64 - mean64) / np.sqrt(var64 + BN_EPSILON), np.squeeze(mean64, axes),
                np.squeeze(var64, axes))
    for a, b in zip(got, values64):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * scale**2)
    np.testing.assert_allclose(grad, grad_naive, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(grad_normalized, grad_normalized_naive, rtol=1e-3, atol=1e-3)


def test_relu_has_the_gradient_of_jax_nn_relu_including_at_zero():
    x = jnp.array([-2.0, -0.0, 0.0, 1e-30, 3.0])
    np.testing.assert_array_equal(relu(x), jax.nn.relu(x))
    cotangent = jnp.array([1.0, 2.0, 3.0, 4.0, 5.0])
    grad = lambda f: jax.grad(lambda x: jnp.sum(f(x) * cotangent))(x)  # noqa: E731
    np.testing.assert_array_equal(grad(relu), grad(jax.nn.relu))
    np.testing.assert_array_equal(grad(relu), [0.0, 0.0, 0.0, 4.0, 5.0])


def test_pointwise_convs_match_a_batched_matmul_and_its_autodiff():
    keys = jax.random.split(jax.random.key(3), 4)
    y = jax.random.normal(keys[0], (3, 2, 4, 4, 5))
    kernels = tuple(jax.random.normal(k, (5, 6)) for k in jax.random.split(keys[1], 3))
    reference = lambda y, ks: jnp.einsum("gbhwc,gcd->gbhwd", y, jnp.stack(ks))  # noqa: E731
    np.testing.assert_allclose(pointwise_convs(y, kernels), reference(y, kernels), rtol=1e-5,
                               atol=1e-5)
    cotangent = jax.random.normal(keys[2], (3, 2, 4, 4, 6))
    loss = lambda f: lambda y, ks: jnp.sum(f(y, ks) * cotangent)  # noqa: E731
    got = jax.grad(loss(pointwise_convs), argnums=(0, 1))(y, kernels)
    want = jax.grad(loss(reference), argnums=(0, 1))(y, kernels)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape, strides", [((2, 8, 8, 3), 1), ((2, 7, 5, 3), 2),
                                            ((1, 1, 1, 2), 2)])
@pytest.mark.parametrize("kind", ["avg", "max"])
def test_pool_3x3_against_numpy(shape, strides, kind):
    """3x3 pooling, padding 1; the average counts only real pixels (count_include_pad=False)."""
    x = np.random.default_rng(1).normal(size=shape)
    _, height, width, _ = shape
    want = np.stack([
        np.stack([
            (np.mean if kind == "avg" else np.max)(
                x[:, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2, :], axis=(1, 2))
            for j in range(0, width, strides)
        ], axis=1)
        for i in range(0, height, strides)
    ], axis=1)
    np.testing.assert_allclose(pool_3x3(jnp.asarray(x, jnp.float32), kind, strides), want,
                               rtol=1e-5, atol=1e-6)


def test_running_statistics_follow_the_reference_momentum():
    """Running mean and variance after 3 training batches, against NumPy float64.

    The reference (PyTorch DARTS) updates ``r <- 0.9 r + 0.1 batch`` (its
    momentum 0.1); with another momentum (e.g. 0.99) this test fails.  Both
    batch norms are checked: the evaluation network's (flax BatchNorm) and the
    supernet's grouped one (pool experts), each from mean 0 and variance 1.
    """
    from xnas_jax.spaces.darts.supernet import MixedOp

    rng = np.random.default_rng(0)
    batches = [rng.normal(loc=k, scale=1 + k, size=(4, 5, 5, 3)).astype(np.float32)
               for k in range(3)]

    def expected(arrays):
        mean, var = np.zeros(3), np.ones(3)
        for y in arrays:
            y = np.asarray(y, np.float64)
            mean = 0.9 * mean + 0.1 * y.mean((0, 1, 2))
            var = 0.9 * var + 0.1 * y.var((0, 1, 2))  # biased, as flax's BatchNorm
        return mean, var

    bn = ops.batch_norm(train=True, affine=True)
    variables = bn.init(jax.random.key(0), batches[0])
    stats = variables["batch_stats"]
    for x in batches:
        _, updates = bn.apply({**variables, "batch_stats": stats}, x, mutable=["batch_stats"])
        stats = updates["batch_stats"]
    mean, var = expected(batches)
    np.testing.assert_allclose(stats["mean"], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["var"], var, rtol=1e-5, atol=1e-6)

    op = MixedOp(ops=("avg_pool_3x3", "skip_connect"), computed=("avg_pool_3x3",), channels=3,
                 strides=1, train=True)
    weights = jnp.array([1.0, 0.0])
    variables = op.init(jax.random.key(1), batches[0], weights)
    stats = variables["batch_stats"]
    for x in batches:
        _, updates = op.apply({**variables, "batch_stats": stats}, x, weights,
                              mutable=["batch_stats"])
        stats = updates["batch_stats"]
    mean, var = expected([pool_3x3(jnp.asarray(x), "avg", 1) for x in batches])
    np.testing.assert_allclose(stats["pool_bn_mean"][0], mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats["pool_bn_var"][0], var, rtol=1e-5, atol=1e-5)
