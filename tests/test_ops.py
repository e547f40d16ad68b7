"""The depthwise convolution (shifted slices, custom VJP) against XLA's grouped convolution."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xnas_jax.ops import depthwise_conv


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
