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
import numpy as np

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


@jax.custom_vjp
def relu(x: jax.Array) -> jax.Array:
    """max(x, 0), as ``jax.nn.relu`` (gradient 0 at 0), whose backward pass keeps only the output.

    ``jax.nn.relu`` leaves its input mask and a broadcast zero to the backward
    pass besides the output; inside a scan each of those is one more stacked
    residual written per iteration (one more GPU kernel).
    """
    return jnp.maximum(x, jnp.zeros((), x.dtype))


def _relu_fwd(x):
    out = relu(x)
    return out, out


def _relu_bwd(out, grad):
    return (jnp.where(out > 0, grad, jnp.zeros((), grad.dtype)),)


relu.defvjp(_relu_fwd, _relu_bwd)


def sum_many(arrays: list[jax.Array], axes: tuple[int, ...]) -> list[jax.Array]:
    """``[jnp.sum(a, axes) for a in arrays]`` as one variadic reduction.

    One loop over the inputs (on a GPU, one kernel) instead of one per array;
    XLA's CPU backend does not merge sibling reductions by itself.
    """
    zeros = [jnp.zeros((), a.dtype) for a in arrays]
    return list(jax.lax.reduce(arrays, zeros, _add_pairwise, axes))


def _add_pairwise(xs: list[jax.Array], ys: list[jax.Array]) -> list[jax.Array]:
    # One function object, so JAX traces the reduction's computation once per arity.
    return [jax.lax.add(a, b) for a, b in zip(xs, ys)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def batch_normalize(
    y: jax.Array, axes: tuple[int, ...], epsilon: float = BN_EPSILON
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Training-mode batch normalization without affine parameters.

    ``(y - mean) / sqrt(var + epsilon)`` with the batch statistics over
    ``axes``, computed in float32 (``var = E[y^2] - mean^2``, clipped at 0).
    The backward pass is the closed form
    ``dy = rstd * (g - mean(g) - y_hat * mean(g * y_hat))`` plus the
    statistics' own cotangents (zero when they only feed running averages),
    and keeps only the normalized output and ``rstd``: autodiff of the
    formula above keeps six arrays, each a stacked residual inside a scan.

    Args:
      y: the batch, any float dtype.
      axes: the axes reduced over (static).
      epsilon: added to the variance (static).

    Returns:
      (normalized y in y's dtype, mean, var), the statistics float32 with
      ``axes`` reduced.
    """
    return _batch_normalize_fwd(y, axes, epsilon)[0]


def _batch_normalize_fwd(y, axes, epsilon):
    if isinstance(y, jax.custom_derivatives.CustomVJPPrimal):
        y = y.value
    y32 = y.astype(jnp.float32)
    count = int(np.prod([y.shape[a] for a in axes]))
    total, squares = sum_many([y32, jnp.square(y32)], axes)
    mean = total / count
    var = jnp.maximum(squares / count - jnp.square(mean), 0.0)
    rstd = jax.lax.rsqrt(jnp.expand_dims(var, axes) + epsilon)
    normalized = ((y32 - jnp.expand_dims(mean, axes)) * rstd).astype(y.dtype)
    return (normalized, mean, var), (normalized, rstd)


def _batch_normalize_bwd(axes, epsilon, residuals, cotangents):
    del epsilon
    normalized, rstd = residuals
    grad, grad_mean, grad_var = cotangents
    count = normalized.size // rstd.size
    y_hat = normalized.astype(jnp.float32)
    if isinstance(grad, jax.custom_derivatives.SymbolicZero):
        grad_y = jnp.zeros(normalized.shape, jnp.float32)
    else:
        g = grad.astype(jnp.float32)
        sum_g, sum_gy = sum_many([g, g * y_hat], axes)
        grad_y = rstd * (g - jnp.expand_dims(sum_g / count, axes)
                         - y_hat * jnp.expand_dims(sum_gy / count, axes))
    # d mean / dy = 1 / n, d var / dy = 2 (y - mean) / n = 2 y_hat / (rstd n).
    if not isinstance(grad_mean, jax.custom_derivatives.SymbolicZero):
        grad_y = grad_y + jnp.expand_dims(grad_mean, axes) / count
    if not isinstance(grad_var, jax.custom_derivatives.SymbolicZero):
        grad_y = grad_y + jnp.expand_dims(grad_var, axes) * 2 * y_hat / (rstd * count)
    return (grad_y.astype(normalized.dtype),)


batch_normalize.defvjp(_batch_normalize_fwd, _batch_normalize_bwd, symbolic_zeros=True)


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


Taps = tuple[tuple[int, int], ...]  # (row, column) offsets into the padded input


def _window(source: jax.Array, dy: int, dx: int, strides: int, out_h: int, out_w: int):
    """source[:, dy + s*i, dx + s*j, :] over the output grid (i, j): one strided slice."""
    return jax.lax.slice(
        source,
        (0, dy, dx, 0),
        (source.shape[0], dy + strides * (out_h - 1) + 1, dx + strides * (out_w - 1) + 1,
         source.shape[3]),
        (1, strides, strides, 1),
    )


def _tap_sum(
    source: jax.Array, kernel: jax.Array, taps: Taps, strides: int, out_h: int, out_w: int
) -> jax.Array:
    """sum_t source[:, s*i + dy_t, s*j + dx_t, :] * kernel[t] over the taps, (B, H', W', C).

    One strided slice per tap, multiplied and added: XLA fuses the whole sum
    into one elementwise loop, with no im2col buffer and no grouped
    convolution (which XLA's CPU backend, and cuDNN for the kernel gradient,
    run slowly).  Written with ``lax`` primitives, a few per tap, because the
    trace of a supernet holds hundreds of taps.  (Slicing 4-D windows out of
    one group, rather than 5-D windows out of all groups, ran 4x faster in
    XLA's CPU code when a ReLU is fused in front.)
    """
    shape = (source.shape[0], out_h, out_w, source.shape[3])
    out = None
    for t, (dy, dx) in enumerate(taps):
        weight = jax.lax.broadcast_in_dim(kernel[t], shape, (3,))
        term = jax.lax.mul(_window(source, dy, dx, strides, out_h, out_w), weight)
        out = term if out is None else jax.lax.add(out, term)
    return out


def _taps_output_size(size: int, padding: int, taps: tuple[Taps, ...], axis: int,
                      strides: int) -> int:
    """Output positions along ``axis``, the same for every group of taps.

    A group whose taps start at ``lo`` and end at ``hi`` reads the input as if
    padded by ``padding - lo`` on each side: ``(size + 2 padding - lo - hi - 1)
    // strides + 1`` (for a kxk kernel with dilation d, lo = 0 and hi = d (k - 1)).
    """
    sizes = {
        (size + 2 * padding - min(t[axis] for t in group) - max(t[axis] for t in group) - 1)
        // strides + 1
        for group in taps
    }
    if len(sizes) != 1:
        raise ValueError(f"the groups of taps give different output sizes {sorted(sizes)}")
    return sizes.pop()


def _pad_hw(x: jax.Array, padding: int) -> jax.Array:
    """Zero-pads the H and W axes of (..., H, W, C)."""
    pads = ((0, 0),) * (x.ndim - 3) + ((padding, padding), (padding, padding), (0, 0))
    return jnp.pad(x, pads)


def _flat(kernel: jax.Array, dtype: Dtype) -> jax.Array:
    """A kernel (..., C) as (taps, C) in ``dtype``."""
    return kernel.reshape(-1, kernel.shape[-1]).astype(dtype)


def _source(x: jax.Array, group: int) -> jax.Array:
    """The input (B, H, W, C) that convolution ``group`` reads: the shared one, or its own."""
    return x[0 if x.shape[0] == 1 else group]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def depthwise_taps(
    x: jax.Array, kernels: tuple[jax.Array, ...], taps: tuple[Taps, ...], padding: int,
    strides: int,
) -> jax.Array:
    """G depthwise convolutions at once, each a weighted sum of shifted slices.

    ``out[g, b, i, j, c] = sum_t xpad[g, b, s*i + dy_gt, s*j + dx_gt, c] * kernels[g][t, c]``
    where ``xpad`` is x zero-padded by ``padding`` on each side.  A kxk
    convolution with dilation d has the k*k taps ``(d*i, d*j)``
    (:func:`kernel_taps`); kernels of different sizes and dilations on one
    input share its padding, each with its taps centred, and XLA fuses their
    stacked sums into one loop over the output.  The backward pass is written
    the same way (the input gradient is the tap sum over the dilated, padded
    output gradient with the mirrored taps, the kernel gradient one variadic
    reduction for all taps), and it keeps only x and the kernels for the
    backward pass, as a convolution does.  Groups lead (G, B, H, W, C), so that each group's
    slice is contiguous and a batched matmul over groups needs no transpose.

    Args:
      x: (Gx, B, H, W, C): one input (Gx = 1) shared by the G convolutions, or one each.
      kernels: G arrays (..., C) of T_g weights per channel, one per tap, in
        row-major order of the leading axes (e.g. a (k, k, C) kernel), any
        float dtype (cast to x's dtype; the gradients come back in theirs).
        Passing the parameters themselves, not a reshaped or cast copy, lets
        a scan forward them to its backward pass instead of stacking a copy.
      taps: G tuples of T_g (dy, dx) offsets into the padded input (static).
      padding: zero padding on each side of H and W (static).
      strides: output stride (static).

    Returns:
      (G, B, H', W', C), ``H' = (H + 2 padding - min dy - max dy - 1) // strides + 1``
      (each group reads x as if padded by ``padding - min dy`` on both sides;
      every group must give the same H' and W').
    """
    for kernel, group_taps in zip(kernels, taps, strict=True):
        if kernel.shape[-1] != x.shape[-1] or kernel.size != len(group_taps) * x.shape[-1]:
            raise ValueError(f"a kernel of shape {kernel.shape} for {len(group_taps)} taps "
                             f"and {x.shape[-1]} channels")
    out_h = _taps_output_size(x.shape[2], padding, taps, 0, strides)
    out_w = _taps_output_size(x.shape[3], padding, taps, 1, strides)
    padded = _pad_hw(x, padding)
    return jnp.stack([
        _tap_sum(_source(padded, g), _flat(kernel, x.dtype), group_taps, strides, out_h, out_w)
        for g, (kernel, group_taps) in enumerate(zip(kernels, taps))
    ])


def _depthwise_taps_fwd(x, kernels, taps, padding, strides):
    return depthwise_taps(x, kernels, taps, padding, strides), (x, kernels)


def _depthwise_taps_bwd(taps, padding, strides, residuals, grad):
    x, kernels = residuals
    out_h, out_w = grad.shape[2], grad.shape[3]
    padded = _pad_hw(x, padding)
    height, width = padded.shape[2], padded.shape[3]
    # Kernel gradient: the product-and-reduce of every tap of every group as
    # one variadic reduction: one loop (one GPU kernel) that reads each window
    # in place.  One reduction per tap was 60% of the instructions a step
    # executes; stacking the windows into one array makes XLA copy them.
    products = [
        jax.lax.mul(_window(_source(padded, g), dy, dx, strides, out_h, out_w), grad[g])
        .astype(jnp.float32)
        for g, group_taps in enumerate(taps) for dy, dx in group_taps
    ]
    sums = sum_many(products, (0, 1, 2))
    grad_kernels, start = [], 0
    for kernel, group_taps in zip(kernels, taps):
        grad_kernels.append(jnp.stack(sums[start:start + len(group_taps)])
                            .reshape(kernel.shape).astype(kernel.dtype))
        start += len(group_taps)
    # Input gradient: spread the output gradient back onto the padded input
    # grid (interior zeros for the stride), pad it by the taps' reach, and
    # sum it over the mirrored taps.
    reach_y = max(dy for group_taps in taps for dy, _ in group_taps)
    reach_x = max(dx for group_taps in taps for _, dx in group_taps)
    spread = jax.lax.pad(
        grad,
        jnp.zeros((), grad.dtype),
        ((0, 0, 0), (0, 0, 0),
         (reach_y, height - strides * (out_h - 1) - 1, strides - 1),
         (reach_x, width - strides * (out_w - 1) - 1, strides - 1),
         (0, 0, 0)),
    )
    grad_inputs = [
        _tap_sum(spread[g], _flat(kernel, grad.dtype),
                 tuple((reach_y - dy, reach_x - dx) for dy, dx in group_taps), 1, height, width)
        for g, (kernel, group_taps) in enumerate(zip(kernels, taps))
    ]
    if x.shape[0] == 1:  # one input shared by the groups: their gradients add up
        grad_padded = functools.reduce(jax.lax.add, grad_inputs)[None]
    else:
        grad_padded = jnp.stack(grad_inputs)
    grad_x = grad_padded[:, :, padding:padding + x.shape[2], padding:padding + x.shape[3]]
    return grad_x.astype(x.dtype), tuple(grad_kernels)


depthwise_taps.defvjp(_depthwise_taps_fwd, _depthwise_taps_bwd)


@jax.custom_vjp
def pointwise_convs(y: jax.Array, kernels: tuple[jax.Array, ...]) -> jax.Array:
    """G 1x1 convolutions at once: ``out[g] = y[g] @ kernels[g]`` over (G, B, H, W, C).

    One batched matmul.  The backward pass keeps ``y`` and the kernels as
    given (the parameters themselves, which a scan forwards to its backward
    pass), not a stacked copy of the kernels.

    Args:
      y: (G, B, H, W, C).
      kernels: G arrays (C, D), any float dtype (cast to y's).

    Returns:
      (G, B, H, W, D) in y's dtype.
    """
    stacked = jnp.stack([kernel.astype(y.dtype) for kernel in kernels])
    return jnp.einsum("gbhwc,gcd->gbhwd", y, stacked)


def _pointwise_convs_fwd(y, kernels):
    return pointwise_convs(y, kernels), (y, kernels)


def _pointwise_convs_bwd(residuals, grad):
    y, kernels = residuals
    stacked = jnp.stack([kernel.astype(grad.dtype) for kernel in kernels])
    grad_y = jnp.einsum("gbhwd,gcd->gbhwc", grad, stacked)
    grad_kernels = jnp.einsum("gbhwc,gbhwd->gcd", y, grad, preferred_element_type=jnp.float32)
    return grad_y, tuple(g.astype(k.dtype) for g, k in zip(grad_kernels, kernels))


pointwise_convs.defvjp(_pointwise_convs_fwd, _pointwise_convs_bwd)


def kernel_taps(kernel_size: int, dilation: int, offset: int = 0) -> Taps:
    """The taps of a kxk kernel with a dilation, row-major, shifted by ``offset``."""
    return tuple(
        (offset + dilation * i, offset + dilation * j)
        for i in range(kernel_size) for j in range(kernel_size)
    )


def depthwise_conv(
    x: jax.Array, kernel: jax.Array, padding: int, dilation: int, strides: int
) -> jax.Array:
    """Depthwise convolution, NHWC, kernel (k, k, C), symmetric zero padding.

    The same function as ``lax.conv_general_dilated`` with
    ``feature_group_count=C``, computed by :func:`depthwise_taps`.
    """
    out = depthwise_taps(x[None], (kernel,), (kernel_taps(kernel.shape[0], dilation),), padding,
                         strides)
    return out[0]


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
        return pool_3x3(x, self.kind, self.strides)


def pool_3x3(x: jax.Array, kind: str, strides: int) -> jax.Array:
    """3x3 "max" or "avg" pooling, padding 1, NHWC (the average ignores padding)."""
    if kind == "max":
        return nn.max_pool(x, (3, 3), strides=(strides, strides), padding=_pad(1))
    summed = jax.lax.reduce_window(
        x, np.zeros((), x.dtype), jax.lax.add, (1,) * (x.ndim - 3) + (3, 3, 1),
        (1,) * (x.ndim - 3) + (strides, strides, 1), ((0, 0),) * (x.ndim - 3) + _pad(1) + ((0, 0),),
    )
    # The number of real (not padding) pixels under each window, a constant.
    starts = [np.arange(0, size, strides) - 1 for size in x.shape[-3:-1]]
    counts = [np.minimum(start + 3, size) - np.maximum(start, 0)
              for start, size in zip(starts, x.shape[-3:-1])]
    return summed / np.outer(*counts)[:, :, None].astype(x.dtype)


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
