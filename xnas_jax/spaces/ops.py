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
defaults (momentum 0.1 -> Flax 0.9, epsilon 1e-5).  The geometry of the
convolutional experts is one table, :data:`CONV_GEOMETRY`, which the supernet
reads too.  The functions these modules compute with are in
:mod:`xnas_jax.spaces.kernels`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from xnas_jax.spaces.kernels import (
    BN_EPSILON,
    BN_MOMENTUM,
    Dtype,
    depthwise_conv,
    pool_3x3,
    symmetric_padding,
)


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
            padding=symmetric_padding(self.padding),
            use_bias=False,
            dtype=self.dtype,
        )(x)
        return batch_norm(train, self.affine, self.dtype)(x)


DEPTHWISE_IMPLS = ("shifts", "conv")


class DepthwiseConv(nn.Module):
    """Depthwise kxk convolution without bias; parameter ``kernel`` of shape (k, k, 1, C).

    ``impl``: "shifts" (:func:`xnas_jax.spaces.kernels.depthwise_conv`, shifted
    slices with their own VJP) or "conv" (XLA's grouped convolution); the
    same function.
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
                x, kernel, (self.strides,) * 2, symmetric_padding(self.padding),
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
            raise ValueError(
                f"FactorizedReduce needs an even number of features, got {self.features}")
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
        return pool_3x3(x, self.kind, self.strides)


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


class ConvGeometry(NamedTuple):
    """The shape of a convolutional expert: its kxk depthwise kernel's size,
    dilation and padding, and its number of (ReLU, depthwise, pointwise, BN)
    blocks (2 for a sep conv, 1 for a dil conv)."""

    kernel: int
    dilation: int
    padding: int
    blocks: int


# The convolutional experts of DARTS, read by OPS and by the supernet.
CONV_GEOMETRY: dict[str, ConvGeometry] = {
    "sep_conv_3x3": ConvGeometry(kernel=3, dilation=1, padding=1, blocks=2),
    "sep_conv_5x5": ConvGeometry(kernel=5, dilation=1, padding=2, blocks=2),
    "dil_conv_3x3": ConvGeometry(kernel=3, dilation=2, padding=2, blocks=1),
    "dil_conv_5x5": ConvGeometry(kernel=5, dilation=2, padding=4, blocks=1),
}


def _conv_op(name: str) -> Callable[..., nn.Module]:
    """The OPS entry of the convolutional expert ``name``: a SepConv or a DilConv."""
    g = CONV_GEOMETRY[name]
    if g.blocks == 2:
        if g.dilation != 1:
            raise ValueError(f"{name}: a sep conv has no dilation, got {g}")
        return lambda c, s, affine, dtype, dw, **kw: SepConv(
            c, g.kernel, s, g.padding, affine, dtype, dw, **kw)
    return lambda c, s, affine, dtype, dw, **kw: DilConv(
        c, g.kernel, s, g.padding, g.dilation, affine, dtype, dw, **kw)


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
    **{name: _conv_op(name) for name in CONV_GEOMETRY},
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


def count_params(params: Any) -> int:
    """The number of scalars in a parameter pytree (arrays or ``ShapeDtypeStruct``)."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))
