"""The DARTS operations (experts) as Flax modules, NHWC.

Shared by the search supernet (``affine=False`` batch norm inside the mixed
operations, as in DARTS's search network) and the evaluation network
(``affine=True``).  Layer shapes follow the reference DARTS implementation
(Liu et al., 2019) exactly, so parameter counts match it:

* ``sep_conv_kxk``: (ReLU, depthwise kxk, pointwise 1x1, BN) twice, the first
  depthwise conv carrying the stride;
* ``dil_conv_kxk``: ReLU, depthwise kxk with dilation 2, pointwise 1x1, BN;
* ``max_pool_3x3`` / ``avg_pool_3x3`` (padding not counted in the average);
* ``skip_connect``: identity, or :class:`FactorizedReduce` when strided;
* ``none``: zeros.

Convolutions have no bias (BN follows each), PyTorch's padding conventions
are reproduced with explicit symmetric padding, and BN uses PyTorch's
defaults (momentum 0.1 -> Flax 0.9, epsilon 1e-5).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def batch_norm(train: bool, affine: bool, dtype: Dtype = jnp.float32, name: str | None = None):
    """BatchNorm with the DARTS conventions (statistics kept in float32)."""
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        use_bias=affine,
        use_scale=affine,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
    )


def _pad(size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    return ((size, size), (size, size))


class ReLUConvBN(nn.Module):
    """ReLU, kxk convolution, BN (the 1x1 version preprocesses cell inputs)."""

    features: int
    kernel_size: int = 1
    strides: int = 1
    padding: int = 0
    affine: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = nn.relu(x)
        x = nn.Conv(
            self.features,
            (self.kernel_size, self.kernel_size),
            strides=self.strides,
            padding=_pad(self.padding),
            use_bias=False,
            dtype=self.dtype,
        )(x)
        return batch_norm(train, self.affine, self.dtype)(x)


def _shifted_sum(x: jax.Array, kernel: jax.Array, dilation: int, strides: int,
                 out_h: int, out_w: int) -> jax.Array:
    """sum_ij x[:, i*d + s*y, j*d + s*z, c] * kernel[i, j, c] over a padded x.

    One strided slice per kernel tap, multiplied and added: XLA fuses the
    whole sum into one elementwise loop, with no im2col buffer and no grouped
    convolution (which XLA's CPU backend, and cuDNN for the kernel gradient,
    run slowly).
    """
    k = kernel.shape[0]
    batch, channels = x.shape[0], x.shape[-1]
    out = None
    for i in range(k):
        for j in range(k):
            window = jax.lax.slice(
                x,
                (0, i * dilation, j * dilation, 0),
                (batch, i * dilation + strides * (out_h - 1) + 1,
                 j * dilation + strides * (out_w - 1) + 1, channels),
                (1, strides, strides, 1),
            )
            term = window * kernel[i, j]
            out = term if out is None else out + term
    return out


def _depthwise_output_size(size: int, k: int, padding: int, dilation: int, strides: int) -> int:
    return (size + 2 * padding - dilation * (k - 1) - 1) // strides + 1


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def depthwise_conv(
    x: jax.Array, kernel: jax.Array, padding: int, dilation: int, strides: int
) -> jax.Array:
    """Depthwise convolution, NHWC, kernel (k, k, C), symmetric zero padding.

    The same function as ``lax.conv_general_dilated`` with
    ``feature_group_count=C``, written as a sum of shifted slices; its
    backward pass is written the same way (the input gradient is the forward
    sum over the dilated, padded output gradient with the flipped kernel, the
    kernel gradient one reduction per tap), and it saves only x and the
    kernel for the backward pass, as the convolution does.
    """
    k = kernel.shape[0]
    out_h = _depthwise_output_size(x.shape[1], k, padding, dilation, strides)
    out_w = _depthwise_output_size(x.shape[2], k, padding, dilation, strides)
    padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    return _shifted_sum(padded, kernel, dilation, strides, out_h, out_w)


def _depthwise_fwd(x, kernel, padding, dilation, strides):
    return depthwise_conv(x, kernel, padding, dilation, strides), (x, kernel)


def _depthwise_bwd(padding, dilation, strides, residuals, grad):
    x, kernel = residuals
    k = kernel.shape[0]
    out_h, out_w = grad.shape[1], grad.shape[2]
    padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    # Kernel gradient: one product-and-reduce per tap.
    taps = []
    for i in range(k):
        for j in range(k):
            window = jax.lax.slice(
                padded,
                (0, i * dilation, j * dilation, 0),
                (x.shape[0], i * dilation + strides * (out_h - 1) + 1,
                 j * dilation + strides * (out_w - 1) + 1, x.shape[-1]),
                (1, strides, strides, 1),
            )
            taps.append(jnp.sum((window * grad).astype(jnp.float32), axis=(0, 1, 2)))
    grad_kernel = jnp.stack(taps).reshape(kernel.shape).astype(kernel.dtype)
    # Input gradient: spread the output gradient back to the padded input grid
    # (interior zeros for the stride), pad it by the kernel's reach, and run
    # the forward sum with the flipped kernel; then drop the padding.
    reach = dilation * (k - 1)
    height, width = padded.shape[1], padded.shape[2]
    dilated_h, dilated_w = strides * (out_h - 1) + 1, strides * (out_w - 1) + 1
    spread = jax.lax.pad(
        grad,
        jnp.zeros((), grad.dtype),
        ((0, 0, 0),
         (reach, height - dilated_h, strides - 1),
         (reach, width - dilated_w, strides - 1),
         (0, 0, 0)),
    )
    grad_padded = _shifted_sum(spread, kernel[::-1, ::-1], dilation, 1, height, width)
    grad_x = grad_padded[:, padding:padding + x.shape[1], padding:padding + x.shape[2], :]
    return grad_x.astype(x.dtype), grad_kernel


depthwise_conv.defvjp(_depthwise_fwd, _depthwise_bwd)


DEPTHWISE_IMPLS = ("shifts", "conv")


class DepthwiseConv(nn.Module):
    """Depthwise kxk convolution without bias; parameter ``kernel`` of shape (k, k, 1, C).

    ``impl``: "shifts" (:func:`depthwise_conv`, shifted slices with their own
    VJP) or "conv" (XLA's grouped convolution); the same function.
    """

    kernel_size: int
    strides: int
    padding: int
    dilation: int
    dtype: Dtype = jnp.float32
    impl: str = "shifts"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels, k = x.shape[-1], self.kernel_size
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (k, k, 1, channels), jnp.float32
        )
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        if self.impl == "conv":
            return jax.lax.conv_general_dilated(
                x, kernel, (self.strides,) * 2, _pad(self.padding),
                rhs_dilation=(self.dilation,) * 2,
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                feature_group_count=channels,
            )
        if self.impl != "shifts":
            raise ValueError(f"depthwise impl must be one of {DEPTHWISE_IMPLS}, got {self.impl!r}")
        return depthwise_conv(x, kernel[:, :, 0, :], self.padding, self.dilation, self.strides)


class DilConv(nn.Module):
    """ReLU, depthwise kxk convolution (dilated), pointwise 1x1, BN."""

    features: int
    kernel_size: int
    strides: int
    padding: int
    dilation: int
    affine: bool = True
    dtype: Dtype = jnp.float32
    depthwise: str = "shifts"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = nn.relu(x)
        x = DepthwiseConv(
            self.kernel_size, self.strides, self.padding, self.dilation, self.dtype,
            self.depthwise, name="depthwise",
        )(x)
        x = nn.Conv(self.features, (1, 1), use_bias=False, dtype=self.dtype, name="pointwise")(x)
        return batch_norm(train, self.affine, self.dtype)(x)


class SepConv(nn.Module):
    """Two :class:`DilConv` blocks without dilation; the first is strided."""

    features: int
    kernel_size: int
    strides: int
    padding: int
    affine: bool = True
    dtype: Dtype = jnp.float32
    depthwise: str = "shifts"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        channels = x.shape[-1]
        x = DilConv(
            channels, self.kernel_size, self.strides, self.padding, 1, self.affine, self.dtype,
            self.depthwise,
        )(x, train)
        return DilConv(
            self.features, self.kernel_size, 1, self.padding, 1, self.affine, self.dtype,
            self.depthwise,
        )(x, train)


class FactorizedReduce(nn.Module):
    """ReLU, two 1x1 stride-2 convolutions on offset grids, concatenated, BN."""

    features: int
    affine: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.features % 2:
            raise ValueError(f"FactorizedReduce needs an even number of features, got {self.features}")
        x = nn.relu(x)
        half = self.features // 2
        conv = lambda name: nn.Conv(  # noqa: E731
            half, (1, 1), strides=2, padding="VALID", use_bias=False, dtype=self.dtype, name=name
        )
        x = jnp.concatenate([conv("conv_1")(x), conv("conv_2")(x[:, 1:, 1:, :])], axis=-1)
        return batch_norm(train, self.affine, self.dtype)(x)


class Pool(nn.Module):
    """3x3 max or average pooling with padding 1 (the average ignores padding)."""

    kind: str  # "max" or "avg"
    strides: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        del train
        if self.kind == "max":
            return nn.max_pool(x, (3, 3), strides=(self.strides,) * 2, padding=_pad(1))
        return nn.avg_pool(
            x, (3, 3), strides=(self.strides,) * 2, padding=_pad(1), count_include_pad=False
        )


class Identity(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        del train
        return x


class Zero(nn.Module):
    """The 'none' operation: zeros of the (possibly strided) output shape."""

    strides: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        del train
        return jnp.zeros_like(x[:, :: self.strides, :: self.strides, :])


OpFactory = Callable[..., nn.Module]

# name -> (channels, stride, affine, dtype, depthwise impl, **module kwargs) -> module:
# the DARTS OPS table.
OPS: dict[str, OpFactory] = {
    "none": lambda c, s, affine, dtype, dw, **kw: Zero(s, **kw),
    "max_pool_3x3": lambda c, s, affine, dtype, dw, **kw: Pool("max", s, **kw),
    "avg_pool_3x3": lambda c, s, affine, dtype, dw, **kw: Pool("avg", s, **kw),
    "skip_connect": lambda c, s, affine, dtype, dw, **kw: (
        Identity(**kw) if s == 1 else FactorizedReduce(c, affine, dtype, **kw)
    ),
    "sep_conv_3x3": lambda c, s, affine, dtype, dw, **kw: SepConv(
        c, 3, s, 1, affine, dtype, dw, **kw),
    "sep_conv_5x5": lambda c, s, affine, dtype, dw, **kw: SepConv(
        c, 5, s, 2, affine, dtype, dw, **kw),
    "dil_conv_3x3": lambda c, s, affine, dtype, dw, **kw: DilConv(
        c, 3, s, 2, 2, affine, dtype, dw, **kw),
    "dil_conv_5x5": lambda c, s, affine, dtype, dw, **kw: DilConv(
        c, 5, s, 4, 2, affine, dtype, dw, **kw),
}


def make_op(
    name: str,
    channels: int,
    strides: int,
    affine: bool,
    dtype: Dtype = jnp.float32,
    module_name: str | None = None,
    depthwise: str = "shifts",
) -> nn.Module:
    """Builds the operation ``name`` (a key of :data:`OPS`), as submodule ``module_name``.

    ``depthwise`` picks the depthwise-convolution form (see :class:`DepthwiseConv`).
    """
    if name not in OPS:
        raise ValueError(f"unknown operation {name!r}; valid: {sorted(OPS)}")
    return OPS[name](channels, strides, affine, dtype, depthwise, name=module_name)


def preprocess(
    features: int, reduction_prev: bool, affine: bool, dtype: Dtype = jnp.float32, name=None
) -> nn.Module:
    """A cell's input preprocessing: FactorizedReduce after a reduction, else 1x1 ReLUConvBN."""
    if reduction_prev:
        return FactorizedReduce(features, affine, dtype, name=name)
    return ReLUConvBN(features, 1, 1, 0, affine, dtype, name=name)
