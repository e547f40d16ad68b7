"""The supernet's grouped primitives, with their own VJPs, and the constants they use.

Inside the supernet's edge scans every value an operation keeps for its
backward pass becomes a residual stacked per iteration (one more buffer and
one more write per edge).  The functions here compute what the DARTS experts
compute -- ReLU, batch normalization without affine parameters, depthwise and
pointwise convolutions, 3x3 pooling -- for several experts at once where the
supernet groups them, and their custom VJPs keep only what the backward pass
needs (the parameters as given, so that a scan forwards them rather than
stacking copies).  Sibling reductions run as one variadic reduction
(:func:`sum_many`).  All arrays are NHWC, grouped ones (G, B, H, W, C).
The depthwise convolutions' forward and backward computations are JAX
primitives of their own, so that a supernet's trace holds one equation per
convolution rather than a few per tap.

The Flax modules of the individual experts, built on these, are in
:mod:`xnas_jax.spaces.ops`.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jax_core
from jax.interpreters import batching, mlir

Dtype = Any

# The computation dtypes by name (parameters and BN statistics stay float32).
DTYPES: dict[str, Dtype] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def dtype_from_name(name: str) -> Dtype:
    """The computation dtype called ``name``, a key of :data:`DTYPES`."""
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; known: {', '.join(DTYPES)}")
    return DTYPES[name]


# PyTorch's BatchNorm defaults (momentum 0.1 -> Flax 0.9, epsilon 1e-5), as in DARTS.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


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
    ``axes``, computed in float32 in one pass over ``y`` shifted by one of
    its samples (``var = E[d^2] - E[d]^2``, clipped at 0): the shift keeps
    the variance accurate when the mean is large against the spread.
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
    # One pass over the data, shifted by one sample of each channel: the
    # moments of y - shift have no large mean to cancel in E[d^2] - E[d]^2.
    shift = y32[tuple(slice(0, 1) if a in axes else slice(None) for a in range(y.ndim))]
    shifted = y32 - shift
    total, squares = sum_many([shifted, jnp.square(shifted)], axes)
    mean_shifted = total / count
    var = jnp.maximum(squares / count - jnp.square(mean_shifted), 0.0)
    mean = mean_shifted + jnp.squeeze(shift, axes)
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


def symmetric_padding(size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """``lax`` padding of H and W by ``size`` on each side (PyTorch's convention)."""
    return ((size, size), (size, size))


Taps = tuple[tuple[int, int], ...]  # (row, column) offsets into the padded input


def _window(source: jax.Array, dy: int, dx: int, strides: int, out_h: int, out_w: int):
    """source[..., dy + s*i, dx + s*j, :] over the output grid (i, j): one strided slice."""
    lead = source.ndim - 3
    return jax.lax.slice(
        source,
        (0,) * lead + (dy, dx, 0),
        source.shape[:lead] + (dy + strides * (out_h - 1) + 1, dx + strides * (out_w - 1) + 1,
                               source.shape[-1]),
        (1,) * lead + (strides, strides, 1),
    )


def _expand(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """x broadcast to ``shape`` of the same rank (size-1 axes repeated); x itself if equal."""
    return x if x.shape == shape else jax.lax.broadcast_in_dim(x, shape, tuple(range(x.ndim)))


def _tap_sum(
    source: jax.Array, kernel: jax.Array, taps: Taps, strides: int, out_h: int, out_w: int
) -> jax.Array:
    """sum_t source[..., s*i + dy_t, s*j + dx_t, :] * kernel[..., t, :] over the taps.

    ``source`` is (*L, B, H, W, C) and ``kernel`` (*L', T, C), with leading
    axes that broadcast (each of size 1 or of the common size); the result
    is (*L, B, H', W', C) for the broadcast L.  One strided slice per tap,
    multiplied and added: XLA fuses the whole sum into one elementwise loop,
    with no im2col buffer and no grouped convolution (which XLA's CPU backend,
    and cuDNN for the kernel gradient, run slowly).  The windows are slices
    of one group's input, not of all groups at once, which XLA's CPU code
    runs much faster when a ReLU is fused in front.
    """
    lead = source.ndim - 4
    batch = tuple(max(a, b) for a, b in zip(source.shape[:lead], kernel.shape[:lead]))
    shape = batch + (source.shape[lead], out_h, out_w, source.shape[-1])
    out = None
    for t, (dy, dx) in enumerate(taps):
        tap = jax.lax.index_in_dim(kernel, t, lead, keepdims=False)  # (*L', C)
        weight = jax.lax.broadcast_in_dim(tap, shape, tuple(range(lead)) + (lead + 3,))
        term = jax.lax.mul(_expand(_window(source, dy, dx, strides, out_h, out_w), shape), weight)
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


def _flat(kernel: jax.Array, lead: int, dtype: Dtype) -> jax.Array:
    """A kernel (*L, ..., C) as (*L, taps, C) in ``dtype``."""
    return kernel.reshape(kernel.shape[:lead] + (-1, kernel.shape[-1])).astype(dtype)


def _source(x: jax.Array, lead: int, group: int) -> jax.Array:
    """The input (*L, B, H, W, C) that convolution ``group`` reads: the shared one, or its own."""
    return jax.lax.index_in_dim(x, 0 if x.shape[lead] == 1 else group, lead, keepdims=False)


def _batch_shape(lead: int, *arrays: jax.Array) -> tuple[int, ...]:
    """The broadcast of the arrays' ``lead`` leading axes."""
    return tuple(max(a.shape[i] for a in arrays) for i in range(lead))


# depthwise_taps's forward and backward computations are each one primitive
# in the traced program.  A supernet step holds hundreds of depthwise
# convolutions of dozens of taps, a few primitives per tap; traced inside the
# edge vmaps and transposed under them, those primitives took most of a
# step's trace.  As primitives, each convolution is one equation, batched by
# a rule that adds a leading axis (``lead`` counts them), and expanded into
# the same slices, products and sums only when it is lowered to XLA.


def _taps_forward(x, *kernels, taps, padding, strides, lead):
    """The forward computation of :func:`depthwise_taps`, with ``lead`` batch axes in front."""
    out_h = _taps_output_size(x.shape[lead + 2], padding, taps, 0, strides)
    out_w = _taps_output_size(x.shape[lead + 3], padding, taps, 1, strides)
    padded = _pad_hw(x, padding)
    return jnp.stack([
        _tap_sum(_source(padded, lead, g), _flat(kernel, lead, x.dtype), group_taps, strides,
                 out_h, out_w)
        for g, (kernel, group_taps) in enumerate(zip(kernels, taps))
    ], axis=lead)


def _taps_backward(x, grad, *kernels, taps, padding, strides, lead):
    """The gradients of :func:`depthwise_taps` with respect to x and the kernels.

    Both come back with the broadcast leading axes of all the operands.
    """
    batch = _batch_shape(lead, x, grad, *kernels)
    out_h, out_w = grad.shape[lead + 2], grad.shape[lead + 3]
    padded = _pad_hw(x, padding)
    height, width = padded.shape[lead + 2], padded.shape[lead + 3]
    grad = _expand(grad, batch + grad.shape[lead:])
    per_group = batch + grad.shape[lead + 1:]
    # Kernel gradient: the product-and-reduce of every tap of every group as
    # one variadic reduction: one loop (one GPU kernel) that reads each window
    # in place, rather than one reduction per tap (a loop each) or a stack of
    # the windows (which XLA would copy).
    products = [
        jax.lax.mul(_expand(_window(_source(padded, lead, g), dy, dx, strides, out_h, out_w),
                            per_group), jax.lax.index_in_dim(grad, g, lead, keepdims=False))
        .astype(jnp.float32)
        for g, group_taps in enumerate(taps) for dy, dx in group_taps
    ]
    sums = sum_many(products, (lead, lead + 1, lead + 2))
    grad_kernels, start = [], 0
    for kernel, group_taps in zip(kernels, taps):
        grad_kernels.append(jnp.stack(sums[start:start + len(group_taps)], axis=lead)
                            .reshape(batch + kernel.shape[lead:]).astype(kernel.dtype))
        start += len(group_taps)
    # Input gradient: spread the output gradient back onto the padded input
    # grid (interior zeros for the stride), pad it by the taps' reach, and
    # sum it over the mirrored taps.
    reach_y = max(dy for group_taps in taps for dy, _ in group_taps)
    reach_x = max(dx for group_taps in taps for _, dx in group_taps)
    spread = jax.lax.pad(
        grad, jnp.zeros((), grad.dtype),
        ((0, 0, 0),) * (lead + 2)
        + ((reach_y, height - strides * (out_h - 1) - 1, strides - 1),
           (reach_x, width - strides * (out_w - 1) - 1, strides - 1), (0, 0, 0)),
    )
    grad_inputs = [
        _tap_sum(jax.lax.index_in_dim(spread, g, lead, keepdims=False),
                 _flat(kernel, lead, grad.dtype),
                 tuple((reach_y - dy, reach_x - dx) for dy, dx in group_taps), 1, height, width)
        for g, (kernel, group_taps) in enumerate(zip(kernels, taps))
    ]
    if x.shape[lead] == 1:  # one input shared by the groups: their gradients add up
        grad_padded = jnp.expand_dims(functools.reduce(jax.lax.add, grad_inputs), lead)
    else:
        grad_padded = jnp.stack(grad_inputs, axis=lead)
    grad_x = jax.lax.slice_in_dim(grad_padded, padding, padding + x.shape[lead + 2], axis=lead + 2)
    grad_x = jax.lax.slice_in_dim(grad_x, padding, padding + x.shape[lead + 3], axis=lead + 3)
    return (grad_x.astype(x.dtype), *grad_kernels)


def _taps_forward_aval(x, *kernels, taps, padding, strides, lead):
    out_h = _taps_output_size(x.shape[lead + 2], padding, taps, 0, strides)
    out_w = _taps_output_size(x.shape[lead + 3], padding, taps, 1, strides)
    shape = _batch_shape(lead, x, *kernels) + (len(taps), x.shape[lead + 1], out_h, out_w,
                                                x.shape[-1])
    return jax.core.ShapedArray(shape, x.dtype)


def _taps_backward_avals(x, grad, *kernels, taps, padding, strides, lead):
    del taps, padding, strides
    batch = _batch_shape(lead, x, grad, *kernels)
    return [jax.core.ShapedArray(batch + a.shape[lead:], a.dtype) for a in (x, *kernels)]


def _batched(primitive):
    """The vmap rule of a taps primitive: the mapped axis becomes one more leading axis."""
    def rule(args, dims, *, lead, **params):
        moved = [jnp.expand_dims(a, 0) if d is None else jnp.moveaxis(a, d, 0)
                 for a, d in zip(args, dims)]
        out = primitive.bind(*moved, lead=lead + 1, **params)
        return out, [0] * len(out) if primitive.multiple_results else 0
    return rule


def _taps_primitive(name, computation, abstract_eval, multiple_results):
    primitive = jax_core.Primitive(name)
    primitive.multiple_results = multiple_results
    primitive.def_impl(jax.jit(computation, static_argnames=("taps", "padding", "strides",
                                                             "lead")))
    primitive.def_abstract_eval(abstract_eval)
    mlir.register_lowering(primitive, mlir.lower_fun(computation, multiple_results))
    batching.primitive_batchers[primitive] = _batched(primitive)
    return primitive


_taps_forward_p = _taps_primitive("xnas_depthwise_taps", _taps_forward, _taps_forward_aval,
                                  False)
_taps_backward_p = _taps_primitive("xnas_depthwise_taps_grad", _taps_backward,
                                   _taps_backward_avals, True)


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
    The forward and the backward computation are one primitive each in the
    traced program (see ``_taps_primitive``); ``vmap`` adds leading axes.

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
    if x.ndim != 5 or len(kernels) != len(taps):
        raise ValueError(f"an input of shape {x.shape} (want (Gx, B, H, W, C)) for "
                         f"{len(kernels)} kernels and {len(taps)} groups of taps")
    for kernel, group_taps in zip(kernels, taps, strict=True):
        if kernel.shape[-1] != x.shape[-1] or kernel.size != len(group_taps) * x.shape[-1]:
            raise ValueError(f"a kernel of shape {kernel.shape} for {len(group_taps)} taps "
                             f"and {x.shape[-1]} channels")
    _taps_output_size(x.shape[2], padding, taps, 0, strides)  # the groups must agree
    _taps_output_size(x.shape[3], padding, taps, 1, strides)
    taps = tuple(tuple((int(dy), int(dx)) for dy, dx in group) for group in taps)
    return _taps_forward_p.bind(x, *kernels, taps=taps, padding=padding, strides=strides,
                                lead=0)


def _depthwise_taps_fwd(x, kernels, taps, padding, strides):
    return depthwise_taps(x, kernels, taps, padding, strides), (x, kernels)


def _depthwise_taps_bwd(taps, padding, strides, residuals, grad):
    x, kernels = residuals
    taps = tuple(tuple((int(dy), int(dx)) for dy, dx in group) for group in taps)
    grad_x, *grad_kernels = _taps_backward_p.bind(x, grad, *kernels, taps=taps,
                                                  padding=padding, strides=strides, lead=0)
    return grad_x, tuple(grad_kernels)


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


def pool_3x3(x: jax.Array, kind: str, strides: int) -> jax.Array:
    """3x3 "max" or "avg" pooling, padding 1, NHWC (the average ignores padding)."""
    if kind == "max":
        return nn.max_pool(x, (3, 3), strides=(strides, strides), padding=symmetric_padding(1))
    summed = jax.lax.reduce_window(
        x, np.zeros((), x.dtype), jax.lax.add, (1,) * (x.ndim - 3) + (3, 3, 1),
        (1,) * (x.ndim - 3) + (strides, strides, 1),
        ((0, 0),) * (x.ndim - 3) + symmetric_padding(1) + ((0, 0),),
    )
    # The number of real (not padding) pixels under each window, a constant.
    starts = [np.arange(0, size, strides) - 1 for size in x.shape[-3:-1]]
    counts = [np.minimum(start + 3, size) - np.maximum(start, 0)
              for start, size in zip(starts, x.shape[-3:-1])]
    return summed / np.outer(*counts)[:, :, None].astype(x.dtype)

