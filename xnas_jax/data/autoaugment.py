"""AutoAugment's CIFAR-10 policy, on the device, in JAX.

Cubuk, Zoph, Mane, Vasudevan and Le, "AutoAugment: Learning Augmentation
Policies from Data" (2018, arXiv:1805.09501), searched for a data-augmentation
policy with reinforcement learning.  The CIFAR-10 result (the paper's appendix
table) is 25 sub-policies of two image operations each; every operation has a
probability and a magnitude, an integer 0..9 that indexes 10 evenly spaced
values of the operation's range.  For each training image one sub-policy is
chosen uniformly at random, and each of its two operations is applied, in
order, with its probability.  The reference implementations work image by image
in PIL on the host; here the whole batch is augmented inside a jitted JAX
program, so it can run on the accelerator next to the training step.

Operations, on uint8 RGB images of shape (H, W, 3), computed in float32 or in
exact integer arithmetic and returned as uint8, each written to reproduce
PIL's definition (``PIL.ImageOps``, ``PIL.ImageEnhance``,
``Image.transform(AFFINE)``, ``Image.rotate``), which is what the paper and the
reference implementations use:

* From dm-pix (``dm_pix``): the resampling of the geometric ops ShearX/Y,
  TranslateX/Y and Rotate (``dm_pix.affine_transform`` with nearest-neighbour
  sampling, ``order=0``, and a constant fill; the affine data are PIL's,
  including ``Image.rotate``'s matrix, so all five share one resampling in the
  policy), and Solarize (``dm_pix.solarize``, on the image scaled to [0, 1]).
* Written here, because dm-pix lacks them or defines them differently from PIL:
  AutoContrast, Equalize, Invert, Posterize (dm-pix has none of them);
  Contrast (dm-pix's ``adjust_contrast`` blends with each channel's own mean,
  PIL blends with one grey level, the rounded mean luma), Color (dm-pix's
  ``adjust_saturation`` works in HSV, PIL blends with the luma image computed
  in 16-bit fixed point), Brightness (dm-pix's ``adjust_brightness`` adds a
  delta, PIL scales) and Sharpness (PIL blends with its 3x3 SMOOTH filter,
  whose border pixels are the original's).  The blends truncate like PIL's
  ``Image.blend`` does.

Conventions (those of the paper and of the reference implementations, except
where noted):

* Magnitude m in 0..9 maps linearly onto 10 evenly spaced values
  (``numpy.linspace(low, high, 10)[m]``): ShearX/Y shear factor 0..0.3;
  TranslateX/Y 0..150/331 of the image width (X) or height (Y), in pixels,
  not rounded (the paper's 150 pixels of a 331-pixel ImageNet image; about
  14.5 pixels on a 32-pixel CIFAR image); Rotate 0..30 degrees; Solarize
  threshold 256..0 (pixels at or above it are inverted); Color, Contrast,
  Brightness and Sharpness enhancement factor 0.1..1.9, the paper's range,
  with no random sign (m = 0 is the strongest reduction and 1.0, the
  identity, is reached at no integer magnitude; the authors' code also maps
  m to 0.1 + 1.8 m / 10, while torchvision and DeepVoltaire use 1 +/- 0.9 m / 9
  with a random sign instead); Posterize keeps 8..4 bits
  (``round(linspace(8, 4, 10))``: m = 0 keeps all 8 bits, m = 9 keeps 4, so a
  larger magnitude is a stronger operation, as in torchvision and
  DeepVoltaire).  AutoContrast, Equalize and Invert take no magnitude; the
  table still lists the paper's numbers for them, which are ignored.
* The sign of a shear, a translation or a rotation is drawn at random,
  each with probability 1/2.
* Shears are about the top-left corner (PIL's affine data ``(1, s, 0, 0, 1,
  0)``), rotations about the image centre; pixels that come from outside the
  image are filled with grey 128 in every channel (``FILL_VALUE``).
* PIL's resampling for these is NEAREST: output pixel (x, y) takes input
  pixel ``floor`` of the source coordinate of its centre.  The only possible
  differences are source coordinates that fall exactly (to within rounding)
  on a pixel boundary, where PIL (16.16 fixed point or double) and this code
  (float32, ties rounded away from zero) may pick different neighbours.

Public API: :func:`autoaugment` and :func:`autoaugment_with_record` (whole
batches), the per-operation functions (:func:`shear_x`,
..., :func:`sharpness`), the policy table :data:`CIFAR10_POLICY`, the op names
:data:`OP_NAMES` and :func:`op_argument` (magnitude to unsigned argument).
"""

from __future__ import annotations

import math
from typing import Callable

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np

# The 14 operations, in the order of the indices that ``autoaugment_with_record`` reports.
OP_NAMES: tuple[str, ...] = (
    "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate",
    "AutoContrast", "Invert", "Equalize", "Solarize", "Posterize",
    "Contrast", "Color", "Brightness", "Sharpness",
)

# The CIFAR-10 policy of Cubuk et al. (2018), appendix table: 25 sub-policies, each two
# (operation, probability, magnitude) triples applied in order.
CIFAR10_POLICY: tuple[tuple[tuple[str, float, int], tuple[str, float, int]], ...] = (
    (("Invert", 0.1, 7), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, 8), ("Equalize", 0.9, 2)),
    (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, 5), ("Equalize", 0.5, 1)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    (("Equalize", 0.3, 7), ("AutoContrast", 0.4, 8)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, 3)),
    (("Equalize", 0.2, 0), ("AutoContrast", 0.6, 0)),
    (("Equalize", 0.2, 8), ("Equalize", 0.6, 4)),
    (("Color", 0.9, 9), ("Equalize", 0.6, 6)),
    (("AutoContrast", 0.8, 4), ("Solarize", 0.2, 8)),
    (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, 3)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, 2), ("Solarize", 0.8, 3)),
    (("Equalize", 0.8, 8), ("Invert", 0.1, 3)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, 1)),
)

NUM_MAGNITUDES = 10
FILL_VALUE = 128
MAX_SHEAR = 0.3
MAX_TRANSLATE = 150.0 / 331.0  # fraction of the image side
MAX_ROTATE_DEGREES = 30.0
ENHANCE_RANGE = (0.1, 1.9)
POSTERIZE_BITS = (8, 8, 7, 7, 6, 6, 5, 5, 4, 4)  # round(linspace(8, 4, 10))

_GEOMETRIC = frozenset({"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"})


def op_argument(name: str, magnitude: int) -> float:
    """The unsigned argument of operation ``name`` at ``magnitude`` (0..9).

    Shear factor, translation as a fraction of the image side, rotation in
    degrees, solarize threshold, posterize bits or enhancement factor; 0.0 for
    the operations without a magnitude.  Magnitudes index 10 evenly spaced
    values of each range (Cubuk et al., 2018, section 3).
    """
    if name not in OP_NAMES:
        raise ValueError(f"unknown AutoAugment operation {name!r}; expected one of {OP_NAMES}")
    if not 0 <= magnitude < NUM_MAGNITUDES or int(magnitude) != magnitude:
        raise ValueError(f"magnitude must be an integer in 0..9, got {magnitude!r}")
    fraction = magnitude / (NUM_MAGNITUDES - 1)
    if name in ("ShearX", "ShearY"):
        return MAX_SHEAR * fraction
    if name in ("TranslateX", "TranslateY"):
        return MAX_TRANSLATE * fraction
    if name == "Rotate":
        return MAX_ROTATE_DEGREES * fraction
    if name == "Solarize":
        return 256.0 * (1.0 - fraction)
    if name == "Posterize":
        return float(POSTERIZE_BITS[int(magnitude)])
    if name in ("Contrast", "Color", "Brightness", "Sharpness"):
        low, high = ENHANCE_RANGE
        return low + (high - low) * fraction
    return 0.0


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def _to_uint8(image: jax.Array) -> jax.Array:
    """Rounds a float image to the nearest integer and clips it to uint8."""
    return jnp.clip(jnp.round(image), 0, 255).astype(jnp.uint8)


def _blend(degenerate: jax.Array, image: jax.Array, factor: jax.Array) -> jax.Array:
    """PIL's ``Image.blend(degenerate, image, factor)`` on uint8 images.

    ``degenerate + factor * (image - degenerate)`` in float32, clipped to
    [0, 255] and truncated (PIL casts to UINT8, it does not round).
    """
    factor = jnp.asarray(factor, jnp.float32)
    low = degenerate.astype(jnp.float32)
    mixed = low + factor * (image.astype(jnp.float32) - low)
    return jnp.floor(jnp.clip(mixed, 0.0, 255.0)).astype(jnp.uint8)


def _luma(image: jax.Array) -> jax.Array:
    """PIL's ``convert("L")``: ITU-R 601-2 luma in 16-bit fixed point, (H, W) int32.

    ``(19595 R + 38470 G + 7471 B + 2**15) >> 16``; the weights sum to 2**16, so
    a grey pixel keeps its level.  dm-pix's ``rgb_to_grayscale`` uses rounded
    float weights (0.2989, 0.587, 0.114) and can differ from it by one level.
    """
    rgb = image.astype(jnp.int32)
    weighted = rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000
    return jnp.right_shift(weighted, 16)


def _affine_nearest(image: jax.Array, coefficients: tuple) -> jax.Array:
    """``Image.transform(size, AFFINE, coefficients, NEAREST, fillcolor=128)`` via dm-pix.

    PIL's data ``(a, b, c, d, e, f)`` sends the output point (x, y) to the input
    point (a x + b y + c, d x + e y + f), in coordinates where pixel i covers
    [i, i + 1).  dm-pix's ``affine_transform`` pulls from pixel-centre
    coordinates, so the offsets gain the half-pixel shifts.
    """
    a, b, c, d, e, f = (jnp.asarray(v, jnp.float32) for v in coefficients)
    zero, one = jnp.float32(0.0), jnp.float32(1.0)
    # Rows act on (row = y, column = x, channel); the last column is the offset.
    matrix = jnp.stack([
        jnp.stack([e, d, zero, f + 0.5 * (d + e) - 0.5]),
        jnp.stack([b, a, zero, c + 0.5 * (a + b) - 0.5]),
        jnp.stack([zero, zero, one, zero]),
    ])
    # Full float32 matmuls: TF32 coordinates on a GPU would move nearest-neighbour picks.
    with jax.default_matmul_precision("float32"):
        out = dm_pix.affine_transform(
            image.astype(jnp.float32), matrix, order=0, mode="constant", cval=float(FILL_VALUE))
    return _to_uint8(out)


# ----------------------------------------------------------------------------------------------
# The 14 operations (single images, (H, W, 3) uint8 -> (H, W, 3) uint8)
# ----------------------------------------------------------------------------------------------


def shear_x(image: jax.Array, shear: jax.Array | float) -> jax.Array:
    """ShearX: output (x, y) takes input (x + shear * y, y), about the top-left corner.

    PIL's ``transform(AFFINE, (1, shear, 0, 0, 1, 0))``, nearest neighbour,
    grey fill; magnitudes up to 0.3 (Cubuk et al., 2018).
    """
    return _affine_nearest(image, (1.0, shear, 0.0, 0.0, 1.0, 0.0))


def shear_y(image: jax.Array, shear: jax.Array | float) -> jax.Array:
    """ShearY: output (x, y) takes input (x, y + shear * x); PIL's ``(1, 0, 0, shear, 1, 0)``."""
    return _affine_nearest(image, (1.0, 0.0, 0.0, shear, 1.0, 0.0))


def translate_x(image: jax.Array, pixels: jax.Array | float) -> jax.Array:
    """TranslateX: output (x, y) takes input (x + pixels, y), so content moves left.

    PIL's ``transform(AFFINE, (1, 0, pixels, 0, 1, 0))``; ``pixels`` may be
    fractional (nearest neighbour then rounds it), the policy uses up to
    150/331 of the width (Cubuk et al., 2018).
    """
    return _affine_nearest(image, (1.0, 0.0, pixels, 0.0, 1.0, 0.0))


def translate_y(image: jax.Array, pixels: jax.Array | float) -> jax.Array:
    """TranslateY: output (x, y) takes input (x, y + pixels), so content moves up."""
    return _affine_nearest(image, (1.0, 0.0, 0.0, 0.0, 1.0, pixels))


def _rotation_coefficients(degrees: jax.Array | float, height: int, width: int) -> tuple:
    """PIL's affine data for ``Image.rotate(degrees)``: counter-clockwise about (W/2, H/2)."""
    radians = jnp.asarray(degrees, jnp.float32) * jnp.float32(math.pi / 180.0)
    cos, sin = jnp.cos(radians), jnp.sin(radians)
    centre_x, centre_y = width / 2.0, height / 2.0
    # Output point p samples the input at [[cos, -sin], [sin, cos]] (p - centre) + centre.
    offset_x = centre_x - cos * centre_x + sin * centre_y
    offset_y = centre_y - sin * centre_x - cos * centre_y
    return (cos, -sin, offset_x, sin, cos, offset_y)


def rotate(image: jax.Array, degrees: jax.Array | float) -> jax.Array:
    """Rotate counter-clockwise by ``degrees`` about the image centre, as PIL's ``Image.rotate``.

    PIL's rotation matrix through ``dm_pix.affine_transform``, nearest
    neighbour, grey fill (the same sampling as ``dm_pix.rotate(order=0)``,
    whose centre, (size - 1) / 2 in pixel-centre coordinates, is PIL's).  Up to
    30 degrees in the policy (Cubuk et al., 2018).
    """
    return _affine_nearest(image, _rotation_coefficients(degrees, *image.shape[:2]))


def auto_contrast(image: jax.Array) -> jax.Array:
    """AutoContrast: stretch each channel so its darkest pixel is 0 and its lightest 255.

    PIL's ``ImageOps.autocontrast`` (cutoff 0): ``floor((v - lo) * 255 / (hi -
    lo))`` per channel, the identity on a constant channel.  Computed exactly
    in integers; PIL's double-precision ``v * scale + offset`` sometimes lands a
    hair below an integer and truncates one level lower (e.g. the channel
    maximum to 254 when lo = 0, hi = 25), so the two can differ by 1 there.
    """
    values = image.astype(jnp.int32)
    low = jnp.min(values, axis=(0, 1), keepdims=True)
    high = jnp.max(values, axis=(0, 1), keepdims=True)
    span = jnp.maximum(high - low, 1)
    stretched = jnp.clip((values - low) * 255 // span, 0, 255)
    return jnp.where(high > low, stretched, values).astype(jnp.uint8)


def invert(image: jax.Array) -> jax.Array:
    """Invert: 255 - v (PIL's ``ImageOps.invert``)."""
    return (255 - image.astype(jnp.int32)).astype(jnp.uint8)


def _equalize_channel(channel: jax.Array) -> jax.Array:
    """PIL's ``ImageOps.equalize`` on one (H, W) channel, in exact integer arithmetic."""
    flat = channel.reshape(-1).astype(jnp.int32)
    histogram = jnp.bincount(flat, length=256)
    count = flat.shape[0]
    # PIL's step: the pixel count less the count of the last (highest) occupied level, // 255.
    step = (count - histogram[jnp.max(flat)]) // 255
    occupied = jnp.sum(histogram > 0)
    before = jnp.cumsum(histogram) - histogram  # pixels strictly below each level
    lut = jnp.clip((step // 2 + before) // jnp.maximum(step, 1), 0, 255)
    equalized = lut[flat]
    keep = (occupied <= 1) | (step == 0)
    return jnp.where(keep, flat, equalized).reshape(channel.shape)


def equalize(image: jax.Array) -> jax.Array:
    """Equalize: per-channel histogram equalisation, PIL's ``ImageOps.equalize``.

    The identity on a channel with one level or with fewer than 255 pixels
    outside its top level (PIL's ``step`` is then 0), e.g. on any image of
    fewer than 256 pixels.
    """
    return jax.vmap(_equalize_channel, in_axes=-1, out_axes=-1)(image).astype(jnp.uint8)


def solarize(image: jax.Array, threshold: jax.Array | float) -> jax.Array:
    """Solarize: invert the pixels at or above ``threshold`` (PIL's ``ImageOps.solarize``).

    ``dm_pix.solarize`` on the image scaled to [0, 1]; a threshold of 256 is
    the identity, 0 inverts everything.
    """
    scale = jnp.float32(255.0)
    unit = image.astype(jnp.float32) / scale
    out = dm_pix.solarize(unit, jnp.asarray(threshold, jnp.float32) / scale)
    return _to_uint8(out * scale)


def posterize(image: jax.Array, bits: jax.Array | int) -> jax.Array:
    """Posterize: keep the ``bits`` most significant bits of each value (PIL's ``posterize``)."""
    shift = 8 - jnp.clip(jnp.asarray(bits).astype(jnp.int32), 0, 8)
    values = image.astype(jnp.int32)
    return jnp.left_shift(jnp.right_shift(values, shift), shift).astype(jnp.uint8)


def contrast(image: jax.Array, factor: jax.Array | float) -> jax.Array:
    """Contrast: PIL's ``ImageEnhance.Contrast(image).enhance(factor)``.

    Blends with a grey image at the mean luma, rounded half up; factor 0 is
    flat grey, 1 the identity.
    """
    luma = _luma(image)
    count = luma.size
    mean = (2 * jnp.sum(luma) + count) // (2 * count)  # int(mean + 0.5), exactly
    degenerate = jnp.broadcast_to(mean, image.shape)
    return _blend(degenerate, image, factor)


def color(image: jax.Array, factor: jax.Array | float) -> jax.Array:
    """Color (saturation): PIL's ``ImageEnhance.Color``; blends with the luma image.

    Factor 0 is the grey image, 1 the identity, above 1 more saturated.
    """
    degenerate = jnp.broadcast_to(_luma(image)[..., None], image.shape)
    return _blend(degenerate, image, factor)


def brightness(image: jax.Array, factor: jax.Array | float) -> jax.Array:
    """Brightness: PIL's ``ImageEnhance.Brightness``; blends with black, ``floor(factor v)``."""
    return _blend(jnp.zeros_like(image), image, factor)


def _smooth(image: jax.Array) -> jax.Array:
    """PIL's ``filter(ImageFilter.SMOOTH)``: 3x3 kernel [[1,1,1],[1,5,1],[1,1,1]] / 13.

    Float32 sums in PIL's order (row below, row, row above; each left to
    right, then +0.5 and truncate); the border rows and columns are copied.
    """
    height, width = image.shape[0], image.shape[1]
    if height < 3 or width < 3:
        return image
    pixels = image.astype(jnp.float32)
    side, centre = jnp.float32(1.0 / 13.0), jnp.float32(5.0 / 13.0)

    def row_sum(rows: jax.Array, middle: jax.Array) -> jax.Array:
        left, mid, right = rows[:, :-2], rows[:, 1:-1], rows[:, 2:]
        return left * side + mid * middle + right * side

    below = row_sum(pixels[2:], side)
    same = row_sum(pixels[1:-1], centre)
    above = row_sum(pixels[:-2], side)
    total = ((jnp.float32(0.5) + below) + same) + above
    inner = jnp.clip(total, 0.0, 255.0).astype(jnp.int32).astype(jnp.uint8)
    return image.at[1:-1, 1:-1].set(inner)


def sharpness(image: jax.Array, factor: jax.Array | float) -> jax.Array:
    """Sharpness: PIL's ``ImageEnhance.Sharpness``; blends with the SMOOTH-filtered image.

    Factor 0 is the smoothed image, 1 the identity, above 1 sharper; the
    one-pixel border is unchanged.
    """
    return _blend(_smooth(image), image, factor)


# ----------------------------------------------------------------------------------------------
# The policy
# ----------------------------------------------------------------------------------------------

def _geometric(image: jax.Array, op: jax.Array, argument: jax.Array) -> jax.Array:
    """Ops 0..4 (shears, translations, rotation) as one affine resampling.

    Selecting the affine data first and resampling once keeps the traced
    program small: under ``vmap`` every branch of a switch is computed.
    """
    height, width = image.shape[:2]
    one, zero = jnp.float32(1.0), jnp.float32(0.0)
    choices = jnp.array([
        (one, argument, zero, zero, one, zero),                # ShearX
        (one, zero, zero, argument, one, zero),                # ShearY
        (one, zero, argument * width, zero, one, zero),        # TranslateX
        (one, zero, zero, zero, one, argument * height),       # TranslateY
        _rotation_coefficients(argument, height, width),       # Rotate
    ])
    return _affine_nearest(image, tuple(choices[jnp.clip(op, 0, 4)]))


# Branches of the switch, each (image, op index, signed float32 argument) -> image: the
# geometric ops, then OP_NAMES[5:] in order, then the identity (operation not applied).
_BRANCHES: tuple[Callable[[jax.Array, jax.Array, jax.Array], jax.Array], ...] = (
    _geometric,
    lambda image, op, arg: auto_contrast(image),
    lambda image, op, arg: invert(image),
    lambda image, op, arg: equalize(image),
    lambda image, op, arg: solarize(image, arg),
    lambda image, op, arg: posterize(image, jnp.round(arg).astype(jnp.int32)),
    lambda image, op, arg: contrast(image, arg),
    lambda image, op, arg: color(image, arg),
    lambda image, op, arg: brightness(image, arg),
    lambda image, op, arg: sharpness(image, arg),
    lambda image, op, arg: image,
)
_NUM_GEOMETRIC = 5
_IDENTITY_BRANCH = len(_BRANCHES) - 1


def _policy_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The policy as arrays, rebuilt from the constants on every trace (no global state).

    Returns ops, probabilities and magnitudes (25, 2), the unsigned arguments
    (14 ops, 10 magnitudes), and whether each op's sign is random (14,).
    """
    ops = np.array([[OP_NAMES.index(name) for name, _, _ in sub] for sub in CIFAR10_POLICY],
                   np.int32)
    probabilities = np.array([[p for _, p, _ in sub] for sub in CIFAR10_POLICY], np.float32)
    magnitudes = np.array([[m for _, _, m in sub] for sub in CIFAR10_POLICY], np.int32)
    arguments = np.array([[op_argument(name, m) for m in range(NUM_MAGNITUDES)]
                          for name in OP_NAMES], np.float32)
    signed = np.array([name in _GEOMETRIC for name in OP_NAMES])
    return ops, probabilities, magnitudes, arguments, signed


def _augment_one(key: jax.Array, image: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One image: a uniform sub-policy, then each of its two ops with its probability.

    The two operations run as a two-step ``lax.scan``, so the switch over the
    operations is traced and compiled once, not once per slot.
    """
    ops, probabilities, magnitudes, arguments, signed = (jnp.asarray(t) for t in _policy_tables())
    policy_key, ops_key = jax.random.split(key)
    policy = jax.random.randint(policy_key, (), 0, len(CIFAR10_POLICY))
    apply_key, sign_key = jax.random.split(ops_key)
    slot_ops = ops[policy]
    apply = jax.random.uniform(apply_key, (2,)) < probabilities[policy]
    flip = jax.random.bernoulli(sign_key, 0.5, (2,)) & signed[slot_ops]
    slot_arguments = jnp.where(flip, -1.0, 1.0) * arguments[slot_ops, magnitudes[policy]]

    def step(current: jax.Array, slot: tuple) -> tuple[jax.Array, None]:
        op, argument, applies = slot
        branch = jnp.where(applies, jnp.maximum(op - (_NUM_GEOMETRIC - 1), 0), _IDENTITY_BRANCH)
        return jax.lax.switch(branch, _BRANCHES, current, op, argument), None

    image, _ = jax.lax.scan(step, image, (slot_ops, slot_arguments.astype(jnp.float32), apply))
    applied = jnp.where(apply, slot_ops, -1).astype(jnp.int32)
    return image, applied, policy.astype(jnp.int32)


def _check_images(images: jax.Array) -> None:
    dtype, shape = getattr(images, "dtype", None), getattr(images, "shape", None)
    if dtype != jnp.uint8 or shape is None or len(shape) != 4 or shape[-1] != 3:
        raise ValueError(
            "autoaugment expects uint8 images of shape (B, H, W, C) with C = 3, "
            f"got dtype {dtype} and shape {shape}")


@jax.jit
def _augment_batch(key: jax.Array, images: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(_augment_one)(keys, images)


def autoaugment_with_record(key: jax.Array,
                            images: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """:func:`autoaugment`, also returning what it did to each image.

    Returns:
      ``(augmented, applied, policy)``: the uint8 batch (B, H, W, C); ``applied``
      (B, 2) int32, the index into ``OP_NAMES`` of each of the sub-policy's two
      operations, or -1 where it was not applied; ``policy`` (B,) int32, the
      index into ``CIFAR10_POLICY`` of the chosen sub-policy.
    """
    _check_images(images)
    return _augment_batch(key, images)


def autoaugment(key: jax.Array, images: jax.Array) -> jax.Array:
    """Augments a uint8 batch (B, H, W, C = 3) with AutoAugment's CIFAR-10 policy.

    Each image draws its own sub-policy uniformly from the 25 of Cubuk et al.
    (2018) and applies its two operations in order, each with its probability
    (and, for shears, translations and rotations, a random sign), from keys
    split from ``key``: the same key gives the same batch.  The work is one
    jitted program (shared with :func:`autoaugment_with_record`); the function
    can itself be jitted or vmapped.  Raises ``ValueError`` on another dtype or
    shape.
    """
    return autoaugment_with_record(key, images)[0]
