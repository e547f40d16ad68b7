"""The evaluation networks built from a found cell (a :class:`Genotype`).

After the search, the discrete cell is stacked into a deeper, wider network
and trained from scratch (XNAS, Nayman et al., NeurIPS 2019, sections 4.2 and
4.3; the networks are those of DARTS, Liu et al., ICLR 2019):

* :class:`NetworkCIFAR` -- a 3x3 conv stem with ``3C`` channels, then
  ``layers`` cells (20 for CIFAR), reduction cells at 1/3 and 2/3 of the depth
  doubling the channels, an auxiliary tower after the second reduction cell,
  global average pooling and a linear classifier.
* :class:`NetworkImageNet` -- the mobile setting: two strided stems
  (224 -> 28), 14 cells, the first one reading a reduced input.

Every operation is built by :func:`xnas_jax.spaces.ops.make_op` with affine batch
norm, so the parameter count equals the reference DARTS implementation's for
the same genotype (e.g. 3,349,342 for DARTS_V2 at 36 channels and 20 layers,
auxiliary head excluded).  Inputs are NHWC; any number of input channels and
any image size that stays even through the reductions works (multiples of 4
for the CIFAR network, of 32 for the ImageNet one: the FactorizedReduce of
DARTS cannot halve an odd side); the stem reads whatever channels it gets and
the auxiliary tower clips its windows to small maps.

Scheduled drop-path (Larsson et al., FractalNet; Zoph et al., NASNet) drops
the output of every non-identity edge for whole samples, with the rate given
per call, so the schedule ``drop_path_prob * epoch / epochs`` can change
without retracing.  It draws from the ``'drop_path'`` rng stream.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from xnas_jax.spaces import ops
from xnas_jax.spaces.darts.genotypes import Genotype, reduction_layers, validate_genotype
from xnas_jax.spaces.kernels import Dtype

__all__ = [
    "DROP_PATH_RNG",
    "AUXILIARY_HEAD",
    "NetworkSize",
    "SIZES",
    "VARIANTS",
    "drop_path",
    "ConvBN",
    "Edge",
    "Cell",
    "AuxiliaryHead",
    "NetworkCIFAR",
    "NetworkImageNet",
    "build_network",
    "count_params",
    "init_shapes",
    "network_summary",
    "count_flops",
]

DROP_PATH_RNG = "drop_path"  # the rng stream drop-path draws from.
AUXILIARY_HEAD = "auxiliary_head"  # the auxiliary tower's name in the params.


@dataclasses.dataclass(frozen=True)
class NetworkSize:
    """A named evaluation network: variant ("cifar"/"imagenet"), C and cells."""

    variant: str
    channels: int
    layers: int


# The paper's named sizes (Table 1: 36/44/50 initial channels, 20 cells; the
# ImageNet network of section 4.3 has 14 cells and 46 channels) and DARTS's.
SIZES: dict[str, NetworkSize] = {
    "xnas-small": NetworkSize("cifar", 36, 20),
    "xnas-medium": NetworkSize("cifar", 44, 20),
    "xnas-large": NetworkSize("cifar", 50, 20),
    "xnas-imagenet": NetworkSize("imagenet", 46, 14),
    "darts-cifar": NetworkSize("cifar", 36, 20),
    "darts-imagenet": NetworkSize("imagenet", 48, 14),
}

# The default size of each variant.
VARIANTS: dict[str, NetworkSize] = {
    "cifar": NetworkSize("cifar", 36, 20),
    "imagenet": NetworkSize("imagenet", 48, 14),
}


def drop_path(x: jax.Array, drop_prob: jax.typing.ArrayLike, rng: jax.Array) -> jax.Array:
    """Zeroes whole samples of ``x`` with probability ``drop_prob``.

    The kept samples are scaled by ``1 / keep_prob`` so the expectation is
    unchanged (DARTS's ``drop_path``).  ``drop_prob`` may be traced.

    Args:
      x: a batch, shape ``(N, ...)``.
      drop_prob: the probability of dropping a sample, in ``[0, 1)``.
      rng: a PRNG key.

    Returns:
      ``x * mask / keep_prob`` with ``mask ~ Bernoulli(keep_prob)`` of shape
      ``(N, 1, ..., 1)``.
    """
    keep_prob = 1.0 - jnp.asarray(drop_prob, jnp.float32)
    mask = jax.random.bernoulli(rng, keep_prob, (x.shape[0],) + (1,) * (x.ndim - 1))
    return x * (mask.astype(jnp.float32) / keep_prob).astype(x.dtype)


def _check_even(x: jax.Array, what: str) -> None:
    # ops.FactorizedReduce, like DARTS's, cannot halve an odd side: its two
    # strided convolutions would give ceil(n/2) and floor(n/2) rows.
    if x.shape[1] % 2 or x.shape[2] % 2:
        raise ValueError(
            f"{what} is {x.shape[1]}x{x.shape[2]}, but a FactorizedReduce needs even sides: "
            f"use images whose sides stay even through the reductions (multiples of 4 "
            f"for the CIFAR network, of 32 for the ImageNet one)"
        )


class ConvBN(nn.Module):
    """kxk convolution (no bias) and affine BN: the stems' building block."""

    features: int
    kernel_size: int = 3
    strides: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        pad = self.kernel_size // 2
        x = nn.Conv(
            self.features,
            (self.kernel_size, self.kernel_size),
            strides=self.strides,
            padding=((pad, pad), (pad, pad)),
            use_bias=False,
            dtype=self.dtype,
        )(x)
        return ops.batch_norm(train, True, self.dtype)(x)


class Edge(nn.Module):
    """One kept edge of a cell: its operation, then drop-path if training."""

    op_name: str
    features: int
    strides: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, train: bool, drop_prob: jax.typing.ArrayLike | None = None
    ) -> jax.Array:
        op = ops.make_op(self.op_name, self.features, self.strides, True, self.dtype)
        if isinstance(op, ops.FactorizedReduce):
            _check_even(x, f"the input of the strided skip_connect {self.name}")
        y = op(x, train)
        # As in DARTS, identities are never dropped (a strided skip_connect is
        # a FactorizedReduce, which is).
        if train and drop_prob is not None and not isinstance(op, ops.Identity):
            y = drop_path(y, drop_prob, self.make_rng(DROP_PATH_RNG))
        return y


class Cell(nn.Module):
    """A discrete cell: preprocess both inputs, sum two edges per node, concat.

    Attributes:
      pairs: the genotype's ``(op_name, input_state)`` pairs, two per node.
      concat: the states concatenated into the output.
      features: C, the channels of every state (the output has
        ``len(concat) * C``).
      reduction: whether the edges reading the cell inputs have stride 2.
      reduction_prev: whether the previous cell reduced, so the k-2 input is
        twice as large and is preprocessed by a FactorizedReduce.
    """

    pairs: tuple[tuple[str, int], ...]
    concat: tuple[int, ...]
    features: int
    reduction: bool
    reduction_prev: bool
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        s0: jax.Array,
        s1: jax.Array,
        train: bool,
        drop_prob: jax.typing.ArrayLike | None = None,
    ) -> jax.Array:
        c = self.features
        if self.reduction_prev:
            _check_even(s0, f"the k-2 input of {self.name} (after a reduction)")
        states = [
            ops.preprocess(c, self.reduction_prev, True, self.dtype, name="preprocess0")(s0, train),
            ops.preprocess(c, False, True, self.dtype, name="preprocess1")(s1, train),
        ]
        for node in range(len(self.pairs) // 2):
            node_sum = 0
            for index in (2 * node, 2 * node + 1):
                op_name, source = self.pairs[index]
                strides = 2 if self.reduction and source < 2 else 1
                edge = Edge(op_name, c, strides, self.dtype, name=f"edge_{index}")
                node_sum = node_sum + edge(states[source], train, drop_prob)
            states.append(node_sum)
        return jnp.concatenate([states[i] for i in self.concat], axis=-1)


class AuxiliaryHead(nn.Module):
    """The auxiliary tower (Szegedy et al., 2015) as in DARTS.

    ReLU, 5x5 average pooling (stride 3 for CIFAR, 2 for ImageNet), 1x1 conv
    to 128 + BN + ReLU, 2x2 conv to 768 (+ BN for CIFAR; DARTS's ImageNet head
    has none) + ReLU, linear classifier.  On the maps DARTS sees (8x8 CIFAR,
    7x7 ImageNet) the 2x2 conv leaves a 1x1 map; smaller maps clip the pooling
    window and the conv kernel to fit, and any larger remainder is averaged,
    so the head works on any input size with DARTS's shapes where DARTS works.
    """

    num_classes: int
    pool_strides: int = 3
    final_batch_norm: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = nn.relu(x)
        window = (min(5, x.shape[1]), min(5, x.shape[2]))
        x = nn.avg_pool(x, window, strides=(self.pool_strides,) * 2, padding="VALID")
        x = nn.Conv(128, (1, 1), use_bias=False, dtype=self.dtype)(x)
        x = nn.relu(ops.batch_norm(train, True, self.dtype)(x))
        kernel = (min(2, x.shape[1]), min(2, x.shape[2]))
        x = nn.Conv(768, kernel, padding="VALID", use_bias=False, dtype=self.dtype)(x)
        if self.final_batch_norm:
            x = ops.batch_norm(train, True, self.dtype)(x)
        x = jnp.mean(nn.relu(x), axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=jnp.float32)(x.astype(jnp.float32))


def _frozen_genotype(genotype: Genotype) -> Genotype:
    # Module attributes must be hashable (jit caches on the module): tuples.
    genotype = validate_genotype(genotype)
    return Genotype(
        normal=tuple(map(tuple, genotype.normal)),
        normal_concat=tuple(genotype.normal_concat),
        reduce=tuple(map(tuple, genotype.reduce)),
        reduce_concat=tuple(genotype.reduce_concat),
    )


class _EvalNetwork(nn.Module):
    """Shared body of the two networks: stem, cells, heads.

    Attributes:
      genotype: the cell (tuples, see :func:`build_network`).
      num_classes: outputs of the classifiers.
      channels: C, the initial channels of a cell's states.
      layers: the number of cells.
      auxiliary: whether to build the auxiliary tower (training only).
      dtype: the computation dtype (params and BN statistics stay float32).
    """

    genotype: Genotype
    num_classes: int
    channels: int
    layers: int
    auxiliary: bool = True
    dtype: Dtype = jnp.float32

    # Set by the subclasses.
    first_reduction_prev: ClassVar[bool] = False
    aux_pool_strides: ClassVar[int] = 3
    aux_final_batch_norm: ClassVar[bool] = True

    @nn.nowrap
    def build_stem(self, images: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        raise NotImplementedError

    @nn.compact
    def __call__(
        self,
        images: jax.Array,
        train: bool = False,
        drop_prob: jax.typing.ArrayLike | None = None,
    ) -> tuple[jax.Array, jax.Array | None]:
        """Logits, and the auxiliary logits when training with the tower.

        Args:
          images: normalized images, shape ``(N, H, W, channels_in)``.
          train: batch statistics and drop-path (training) or running
            statistics (evaluation).
          drop_prob: the drop-path probability of this step (may be traced);
            None disables drop-path.  Ignored when not training.

        Returns:
          ``(logits, aux_logits)``, float32 ``(N, num_classes)`` each;
          ``aux_logits`` is None unless ``train`` and ``auxiliary``.
        """
        s0, s1 = self.build_stem(images.astype(self.dtype), train)
        reductions = reduction_layers(self.layers)
        aux_layer = reductions[-1]  # the tower follows the second reduction cell
        features = self.channels
        reduction_prev = self.first_reduction_prev
        aux_logits = None
        for layer in range(self.layers):
            reduction = layer in reductions
            if reduction:
                features *= 2
            genotype = self.genotype
            cell = Cell(
                pairs=genotype.reduce if reduction else genotype.normal,
                concat=genotype.reduce_concat if reduction else genotype.normal_concat,
                features=features,
                reduction=reduction,
                reduction_prev=reduction_prev,
                dtype=self.dtype,
                name=f"cell_{layer}",
            )
            s0, s1 = s1, cell(s0, s1, train, drop_prob)
            reduction_prev = reduction
            if layer == aux_layer and self.auxiliary and train:
                aux_logits = AuxiliaryHead(
                    self.num_classes,
                    self.aux_pool_strides,
                    self.aux_final_batch_norm,
                    self.dtype,
                    name=AUXILIARY_HEAD,
                )(s1, train)
        # Global average pooling: DARTS's AdaptiveAvgPool2d(1) for CIFAR and
        # its AvgPool2d(7) on the 7x7 map of a 224x224 ImageNet input.
        features_out = jnp.mean(s1.astype(jnp.float32), axis=(1, 2))
        logits = nn.Dense(self.num_classes, dtype=jnp.float32, name="classifier")(features_out)
        return logits, aux_logits


class NetworkCIFAR(_EvalNetwork):
    """The CIFAR evaluation network (DARTS ``NetworkCIFAR``): a 3x3 conv stem
    with 3C channels + BN feeds both inputs of the first cell."""

    @nn.nowrap
    def build_stem(self, images: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        x = ConvBN(3 * self.channels, 3, 1, self.dtype, name="stem")(images, train)
        return x, x


class NetworkImageNet(_EvalNetwork):
    """The ImageNet mobile network (DARTS ``NetworkImageNet``): stem0 =
    conv3x3/2 C/2, BN, ReLU, conv3x3/2 C, BN; stem1 = ReLU, conv3x3/2 C, BN;
    the first cell reads stem0 (twice stem1's size) through a FactorizedReduce."""

    first_reduction_prev: ClassVar[bool] = True
    aux_pool_strides: ClassVar[int] = 2
    aux_final_batch_norm: ClassVar[bool] = False

    @nn.nowrap
    def build_stem(self, images: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        x = ConvBN(self.channels // 2, 3, 2, self.dtype, name="stem0_conv0")(images, train)
        # ReLU, conv, BN: the rest of stem0, then stem1.
        s0 = ops.ReLUConvBN(self.channels, 3, 2, 1, True, self.dtype, name="stem0_conv1")(x, train)
        s1 = ops.ReLUConvBN(self.channels, 3, 2, 1, True, self.dtype, name="stem1")(s0, train)
        return s0, s1


def build_network(
    genotype: Genotype,
    num_classes: int,
    *,
    variant: str = "cifar",
    channels: int | None = None,
    layers: int | None = None,
    auxiliary: bool = True,
    dtype: Dtype = jnp.float32,
) -> _EvalNetwork:
    """The evaluation network of ``variant`` for ``genotype``.

    Args:
      genotype: the cell (validated here).
      num_classes: classifier outputs.
      variant: "cifar" (:class:`NetworkCIFAR`) or "imagenet"
        (:class:`NetworkImageNet`).
      channels: C; None takes the variant's default (36 CIFAR, 48 ImageNet).
      layers: cells; None takes the variant's default (20 CIFAR, 14 ImageNet).
      auxiliary: build the auxiliary tower.
      dtype: computation dtype, e.g. ``jnp.bfloat16`` for mixed precision.

    Raises:
      ValueError: on an unknown variant or non-positive sizes.
      GenotypeError: on a malformed genotype.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    default = VARIANTS[variant]
    channels = default.channels if channels is None else channels
    layers = default.layers if layers is None else layers
    if channels < 1 or layers < 1 or num_classes < 1:
        raise ValueError(
            f"channels, layers and num_classes must be >= 1, "
            f"got {channels}, {layers}, {num_classes}"
        )
    if variant == "imagenet" and channels % 2:
        raise ValueError(
            f"the ImageNet stem halves the channels: channels must be even, got {channels}"
        )
    network = NetworkCIFAR if variant == "cifar" else NetworkImageNet
    return network(
        genotype=_frozen_genotype(genotype),
        num_classes=num_classes,
        channels=channels,
        layers=layers,
        auxiliary=auxiliary,
        dtype=dtype,
    )


def init_shapes(model: nn.Module, input_shape: Sequence[int]) -> dict[str, Any]:
    """The variables of ``model`` as ``ShapeDtypeStruct`` (no computation).

    Initialized in training mode so that the auxiliary tower exists.
    """
    images = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    rngs = {"params": jax.random.key(0), DROP_PATH_RNG: jax.random.key(0)}
    return jax.eval_shape(lambda x: model.init(rngs, x, train=True, drop_prob=0.0), images)


def count_params(params: Any, include_auxiliary: bool = False) -> int:
    """The number of parameters (BN running statistics are not parameters).

    Args:
      params: the ``'params'`` collection (arrays or ``ShapeDtypeStruct``).
      include_auxiliary: count the auxiliary tower too.  DARTS reports the
        count without it.
    """
    if not include_auxiliary and AUXILIARY_HEAD in params:
        params = {name: value for name, value in params.items() if name != AUXILIARY_HEAD}
    return ops.count_params(params)


def network_summary(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """Parameter counts and multiply-adds of ``model``, from one abstract trace.

    Multiply-adds are counted analytically from shapes: every module that owns
    a convolution kernel ``(kh, kw, in / groups, out)`` contributes ``output
    height * output width * kh * kw * in / groups * out`` (this covers
    ``nn.Conv`` and the depthwise convolutions of :mod:`xnas_jax.spaces.ops`,
    whatever their implementation), and every dense kernel ``(in, out)``
    contributes ``in * out``; pooling, batch norm, activations and additions
    are not counted (the "mult-adds" of NASNet, DARTS and XNAS).  The
    auxiliary tower is left out of the multiply-adds (it is not part of the
    inference network).  The network is traced with ``jax.eval_shape``:
    nothing is computed or compiled.

    Args:
      model: the network.
      input_shape: ``(H, W, C)`` of one image.

    Returns:
      ``{"params", "params_with_aux", "flops_per_image"}``: parameters
      without / with the auxiliary tower, and multiply-adds per image.
    """
    counts: list[int] = []

    def interceptor(next_fun, args, kwargs, context):
        output = next_fun(*args, **kwargs)
        module = context.module
        if context.method_name != "__call__" or AUXILIARY_HEAD in module.scope.path:
            return output
        kernel = module.variables.get("params", {}).get("kernel")  # its own, not children's.
        if kernel is not None and kernel.ndim == 4:  # (kh, kw, in / groups, out)
            counts.append(math.prod(output.shape[1:3]) * math.prod(kernel.shape))
        elif kernel is not None and kernel.ndim == 2:  # (in, out)
            counts.append(math.prod(kernel.shape))
        return output

    with nn.intercept_methods(interceptor):
        params = init_shapes(model, input_shape)["params"]
    return {
        "params": count_params(params),
        "params_with_aux": count_params(params, include_auxiliary=True),
        "flops_per_image": int(sum(counts)),
    }


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-adds of one image through the inference network (see
    :func:`network_summary`)."""
    return network_summary(model, input_shape)["flops_per_image"]
