"""The depthwise convolutions (shifted slices, custom VJP) against XLA's grouped convolution."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xnas_jax.ops import depthwise_conv, depthwise_taps, kernel_taps


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


@pytest.mark.parametrize("shared, strides", [(True, 1), (True, 2), (False, 1)])
def test_depthwise_taps_runs_several_convolutions_at_once(shared, strides):
    """The four DARTS depthwise kernels, centred in one padding, on one input or one each."""
    specs = [(3, 1, 1), (5, 1, 2), (3, 2, 2), (5, 2, 4)]  # kernel, dilation, padding
    padding = max(pad for _, _, pad in specs)
    keys = jax.random.split(jax.random.key(7), 3 + len(specs))
    x = jax.random.normal(keys[0], (1 if shared else len(specs), 2, 8, 8, 3))
    kernels = tuple(jax.random.normal(key, (k, k, 3)) for key, (k, _, _) in zip(keys[3:], specs))
    taps = tuple(kernel_taps(k, d, padding - pad) for k, d, pad in specs)

    def taps_form(x, kernels):
        flat = tuple(kernel.reshape(-1, 3) for kernel in kernels)
        return depthwise_taps(x, flat, taps, padding, strides)

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


def test_depthwise_taps_rejects_groups_of_different_output_sizes():
    x = jnp.zeros((1, 1, 8, 8, 2))
    kernels = (jnp.ones((9, 2)), jnp.ones((9, 2)))
    taps = (kernel_taps(3, 1), kernel_taps(3, 2))  # both uncentred: 8 and 6 outputs
    with pytest.raises(ValueError, match="different output sizes"):
        depthwise_taps(x, kernels, taps, 1, 1)
