"""Tests of xnas_jax.data.autoaugment: every operation against PIL, and the policy's draws.

Tolerances (the reference is Pillow, the library of the paper's and the reference
implementations' operations):

* Invert, Posterize, Solarize, Equalize: exact (integer definitions).
* Contrast, Color, Brightness, Sharpness: max abs diff <= 1.  They blend in float32 and
  truncate like PIL's ``Image.blend``; the operations are written in PIL's order and are
  exact on this CPU, but a backend that fuses a multiply-add (e.g. a GPU) may round a value
  that lands exactly on an integer to the level below.
* AutoContrast: max abs diff <= 1, and only where the exact stretched value
  ``(v - lo) * 255 / (hi - lo)`` is an integer: PIL computes it in double precision as
  ``v * scale + offset``, sometimes a hair below that integer, and truncates (e.g. the
  channel maximum goes to 254 when lo = 0, hi = 25); the module computes it exactly.
* ShearX/Y, TranslateX/Y, Rotate, nearest-neighbour resampling (PIL's NEAREST, grey fill
  128): exact at every pixel whose exact source coordinate (computed here in float64 from
  PIL's affine data) is more than 1e-3 pixel from a pixel boundary.  Within that band PIL
  (16.16 fixed point, or double) and the module (float32, dm-pix rounding half away from
  zero) may pick either neighbour, so there both must give one of the neighbours' values.
  Exact ties happen, e.g. shear 0.2 sends row 2 to x + 1.0 exactly.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image, ImageEnhance, ImageOps

from xnas_jax.data import autoaugment as aa

FILL = (aa.FILL_VALUE,) * 3
TIE_BAND = 1e-3  # pixels; see the module docstring


def _gradient(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A natural-looking image: smooth colour ramps plus mild noise, not spanning 0..255."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    u, v = x / max(width - 1, 1), y / max(height - 1, 1)
    noise = np.random.default_rng(seed).normal(0.0, 4.0, (height, width, 3))
    rgb = np.stack([40 + 150 * u, 30 + 120 * v, 90 + 60 * (u + v) / 2 + 20 * np.sin(6 * u)], -1)
    return np.clip(np.round(rgb + noise), 0, 255).astype(np.uint8)


def _random(shape: tuple[int, ...], seed: int, low: int = 0, high: int = 256) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, shape, dtype=np.uint8)


# Small images for most ops (a square and a non-square one, so rows and columns cannot be
# confused); Equalize needs at least 256 pixels before PIL does anything.
SMALL = [_random((12, 12, 3), 1), _gradient(12, 12), _random((10, 14, 3), 2)]
LARGE = [_random((20, 20, 3), 3, high=60), _gradient(32, 32), _random((32, 32, 3), 4, 30, 200)]

# One jitted function per operation, shared by all tests (one compile per image shape).
JITTED = {name: jax.jit(fn) for name, fn in [
    ("ShearX", aa.shear_x), ("ShearY", aa.shear_y), ("TranslateX", aa.translate_x),
    ("TranslateY", aa.translate_y), ("Rotate", aa.rotate), ("AutoContrast", aa.auto_contrast),
    ("Invert", aa.invert), ("Equalize", aa.equalize), ("Solarize", aa.solarize),
    ("Posterize", aa.posterize), ("Contrast", aa.contrast), ("Color", aa.color),
    ("Brightness", aa.brightness), ("Sharpness", aa.sharpness)]}


def _ours(name: str, image: np.ndarray, *args) -> np.ndarray:
    out = np.asarray(JITTED[name](jnp.asarray(image), *args))
    assert out.dtype == np.uint8 and out.shape == image.shape
    return out


# ------------------------------------------------------------------------------------------
# Geometric operations
# ------------------------------------------------------------------------------------------


def _pil_affine_data(name: str, argument: float, height: int, width: int) -> tuple:
    """PIL's AFFINE data for the op, with the argument as the module's function takes it."""
    if name == "ShearX":
        return (1.0, argument, 0.0, 0.0, 1.0, 0.0)
    if name == "ShearY":
        return (1.0, 0.0, 0.0, argument, 1.0, 0.0)
    if name == "TranslateX":
        return (1.0, 0.0, argument, 0.0, 1.0, 0.0)
    if name == "TranslateY":
        return (1.0, 0.0, 0.0, 0.0, 1.0, argument)
    # Image.rotate's own construction: rotate about (w / 2, h / 2) by -angle, output to input.
    angle = -math.radians(argument)
    a, b = math.cos(angle), math.sin(angle)
    d, e = -math.sin(angle), math.cos(angle)
    cx, cy = width / 2.0, height / 2.0
    return (a, b, a * -cx + b * -cy + cx, d, e, d * -cx + e * -cy + cy)


def _pil_geometric(name: str, image: np.ndarray, argument: float) -> np.ndarray:
    pil = Image.fromarray(image)
    if name == "Rotate":
        return np.asarray(pil.rotate(argument, resample=Image.NEAREST, fillcolor=FILL))
    data = _pil_affine_data(name, argument, *image.shape[:2])
    return np.asarray(pil.transform(pil.size, Image.AFFINE, data, Image.NEAREST, fillcolor=FILL))


def _neighbour_values(image: np.ndarray, data: tuple) -> tuple[np.ndarray, list[np.ndarray]]:
    """(near_tie mask (H, W), candidate outputs): nearest-neighbour picks within the band."""
    height, width = image.shape[:2]
    a, b, c, d, e, f = data
    y, x = np.mgrid[0:height, 0:width] + 0.5
    u, v = a * x + b * y + c, d * x + e * y + f  # exact source point, corner coordinates
    near_tie = (np.abs(u - np.round(u)) < TIE_BAND) | (np.abs(v - np.round(v)) < TIE_BAND)
    candidates = []
    for du in (-TIE_BAND, TIE_BAND):
        for dv in (-TIE_BAND, TIE_BAND):
            col, row = np.floor(u + du).astype(int), np.floor(v + dv).astype(int)
            inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
            picked = image[np.clip(row, 0, height - 1), np.clip(col, 0, width - 1)]
            candidates.append(np.where(inside[..., None], picked, np.uint8(aa.FILL_VALUE)))
    return near_tie, candidates


@pytest.mark.parametrize("name", ["ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"])
def test_geometric_ops_match_pil_nearest(name):
    ties = 0
    for image in SMALL + LARGE[1:2]:
        height, width = image.shape[:2]
        for magnitude in range(aa.NUM_MAGNITUDES):
            for sign in (1.0, -1.0):
                argument = sign * aa.op_argument(name, magnitude)
                if name == "TranslateX":
                    argument *= width
                elif name == "TranslateY":
                    argument *= height
                argument = float(np.float32(argument))  # both sides see the same number
                expected = _pil_geometric(name, image, argument)
                got = _ours(name, image, argument)
                near_tie, candidates = _neighbour_values(
                    image, _pil_affine_data(name, argument, height, width))
                where = (name, image.shape, magnitude, sign)
                # Exact away from pixel boundaries ...
                assert np.array_equal(got[~near_tie], expected[~near_tie]), where
                # ... and a neighbour's value on them, for both implementations.
                for result in (got, expected):
                    ok = np.zeros(image.shape, bool)
                    for candidate in candidates:
                        ok |= result == candidate
                    assert ok.all(), where
                ties += int(near_tie.sum())
    # Near-ties are the exception: under 5% of all the pixels compared.
    assert ties < 0.05 * (10 * 2 * sum(im.shape[0] * im.shape[1] for im in SMALL + LARGE[1:2]))


def test_geometric_fill_and_direction():
    """Content moves left for a positive TranslateX; vacated pixels are grey 128."""
    image = _gradient(8, 8)
    moved = _ours("TranslateX", image, 3.0)
    assert np.array_equal(moved[:, :5], image[:, 3:])
    assert (moved[:, 5:] == aa.FILL_VALUE).all()
    # A quarter turn is exact: counter-clockwise, like PIL.
    turned = _ours("Rotate", image, 90.0)
    assert np.array_equal(turned, np.rot90(image))


# ------------------------------------------------------------------------------------------
# Colour operations
# ------------------------------------------------------------------------------------------

ENHANCERS = {"Contrast": ImageEnhance.Contrast, "Color": ImageEnhance.Color,
             "Brightness": ImageEnhance.Brightness, "Sharpness": ImageEnhance.Sharpness}


def test_invert_matches_pil():
    for image in SMALL + LARGE:
        assert np.array_equal(_ours("Invert", image),
                              np.asarray(ImageOps.invert(Image.fromarray(image))))


@pytest.mark.parametrize("name", ["Solarize", "Posterize"])
def test_solarize_and_posterize_match_pil_exactly(name):
    for image in SMALL + LARGE[1:2]:
        for magnitude in range(aa.NUM_MAGNITUDES):
            argument = aa.op_argument(name, magnitude)
            pil = Image.fromarray(image)
            if name == "Solarize":
                expected = ImageOps.solarize(pil, argument)
                got = _ours(name, image, argument)
            else:
                expected = ImageOps.posterize(pil, int(argument))
                got = _ours(name, image, int(argument))
            assert np.array_equal(got, np.asarray(expected)), (name, magnitude)


def test_equalize_matches_pil_exactly():
    # LARGE[0] has 400 pixels per channel in 60 levels: PIL's step is 1 and its look-up
    # table exceeds 255 (PIL clips it); the small images are left alone (step 0).
    for image in SMALL[:2] + LARGE:
        expected = np.asarray(ImageOps.equalize(Image.fromarray(image)))
        assert np.array_equal(_ours("Equalize", image), expected), image.shape
    assert not np.array_equal(_ours("Equalize", LARGE[1]), LARGE[1])


def test_auto_contrast_matches_pil_up_to_its_double_rounding():
    constant_channel = _gradient(12, 12).copy()
    constant_channel[..., 1] = 77
    known_quirk = np.zeros((12, 12, 3), np.uint8)  # lo = 0, hi = 25: PIL maps 25 to 254
    known_quirk[..., :] = (np.arange(144).reshape(12, 12, 1) % 26).astype(np.uint8)
    for image in SMALL + LARGE + [constant_channel, known_quirk]:
        expected = np.asarray(ImageOps.autocontrast(Image.fromarray(image))).astype(int)
        got = _ours("AutoContrast", image).astype(int)
        diff = got - expected
        assert np.isin(diff, (0, 1)).all(), image.shape
        values = image.astype(int)
        low = values.min(axis=(0, 1), keepdims=True)
        span = values.max(axis=(0, 1), keepdims=True) - low
        exact_integer = (values - low) * 255 % np.maximum(span, 1) == 0
        assert exact_integer[diff != 0].all()
    assert np.array_equal(_ours("AutoContrast", constant_channel)[..., 1],
                          constant_channel[..., 1])
    assert _ours("AutoContrast", known_quirk).max() == 255


@pytest.mark.parametrize("name", sorted(ENHANCERS))
def test_enhance_ops_match_pil(name):
    exact = 0
    total = 0
    for image in SMALL + LARGE[1:2]:
        for magnitude in range(aa.NUM_MAGNITUDES):
            factor = aa.op_argument(name, magnitude)
            expected = np.asarray(ENHANCERS[name](Image.fromarray(image)).enhance(factor))
            got = _ours(name, image, factor)
            diff = np.abs(got.astype(int) - expected.astype(int))
            assert diff.max() <= 1, (name, magnitude, diff.max())
            exact += int((diff == 0).sum())
            total += diff.size
    assert exact >= 0.99 * total  # off-by-one only at float32 rounding coincidences


def test_magnitude_ranges():
    assert aa.op_argument("ShearX", 9) == pytest.approx(0.3)
    assert aa.op_argument("TranslateY", 9) == pytest.approx(150 / 331)
    assert aa.op_argument("Rotate", 9) == pytest.approx(30.0)
    assert aa.op_argument("Solarize", 0) == 256.0 and aa.op_argument("Solarize", 9) == 0.0
    assert [aa.op_argument("Posterize", m) for m in range(10)] == [8, 8, 7, 7, 6, 6, 5, 5, 4, 4]
    assert aa.op_argument("Color", 0) == pytest.approx(0.1)
    assert aa.op_argument("Sharpness", 9) == pytest.approx(1.9)
    assert aa.op_argument("Equalize", 5) == 0.0
    with pytest.raises(ValueError, match="magnitude"):
        aa.op_argument("Rotate", 10)


def test_policy_table_is_the_papers():
    assert len(aa.CIFAR10_POLICY) == 25
    assert all(len(sub) == 2 for sub in aa.CIFAR10_POLICY)
    for sub in aa.CIFAR10_POLICY:
        for name, probability, magnitude in sub:
            assert name in aa.OP_NAMES and 0.0 <= probability <= 1.0 and 0 <= magnitude <= 9
    assert aa.CIFAR10_POLICY[0] == (("Invert", 0.1, 7), ("Contrast", 0.2, 6))
    assert aa.CIFAR10_POLICY[-1] == (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, 1))


# ------------------------------------------------------------------------------------------
# Invariants (hypothesis)
# ------------------------------------------------------------------------------------------

_IMAGES = hnp.arrays(np.uint8, (5, 6, 3))


@settings(max_examples=40, deadline=None)
@given(_IMAGES)
def test_identities(image):
    assert np.array_equal(_ours("Invert", _ours("Invert", image)), image)
    assert np.array_equal(_ours("Posterize", image, 8), image)
    assert np.array_equal(_ours("Solarize", image, 256.0), image)
    for name in ENHANCERS:
        assert np.array_equal(_ours(name, image, 1.0), image), name
    assert np.array_equal(_ours("ShearX", image, 0.0), image)
    assert np.array_equal(_ours("Rotate", image, 0.0), image)


@settings(max_examples=40, deadline=None)
@given(_IMAGES, st.integers(0, 8))
def test_posterize_keeps_high_bits(image, bits):
    out = _ours("Posterize", image, bits)
    assert np.array_equal(out >> (8 - bits), image >> (8 - bits)) if bits else (out == 0).all()
    assert np.array_equal(_ours("Posterize", out, bits), out)


# ------------------------------------------------------------------------------------------
# The policy
# ------------------------------------------------------------------------------------------

NUM_DRAWS = 20_000


# Under vmap, each row gets the draws of its own unbatched call only with
# threefry keys ("rbg" bits depend on the batch).
THREEFRY = "threefry2x32"


@pytest.fixture(scope="module")
def draws():
    """20,000 tiny images through the policy in one jitted call (compiled once per module)."""
    images = jnp.asarray(_random((NUM_DRAWS, 4, 4, 3), 5))
    key = jax.random.key(0, impl=THREEFRY)
    augmented, applied, policy = aa.autoaugment_with_record(key, images)
    return images, key, np.asarray(augmented), np.asarray(applied), np.asarray(policy)


def test_sub_policy_and_op_frequencies(draws):
    _, _, _, applied, policy = draws
    assert applied.shape == (NUM_DRAWS, 2) and policy.shape == (NUM_DRAWS,)
    counts = np.bincount(policy, minlength=25)
    assert counts.size == 25
    p = 1 / 25
    assert np.all(np.abs(counts - NUM_DRAWS * p) <= 5 * math.sqrt(NUM_DRAWS * p * (1 - p)))
    for index, sub in enumerate(aa.CIFAR10_POLICY):
        chosen = applied[policy == index]
        for slot, (name, probability, _) in enumerate(sub):
            record = chosen[:, slot]
            assert set(np.unique(record)) <= {-1, aa.OP_NAMES.index(name)}
            n = record.size
            hits = int((record >= 0).sum())
            sigma = math.sqrt(n * probability * (1 - probability))
            assert abs(hits - n * probability) <= 5 * sigma, (index, slot, hits, n, probability)


def test_autoaugment_deterministic_per_key_and_keeps_dtype(draws):
    images, key, augmented, applied, _ = draws
    again = aa.autoaugment(key, images)  # a second, separate run with the same key
    assert again.dtype == jnp.uint8 and again.shape == images.shape
    assert np.array_equal(np.asarray(again), augmented)
    other = np.asarray(aa.autoaugment(jax.random.key(1), images))
    assert not np.array_equal(other, augmented)
    # Images whose two ops were both skipped come back unchanged.
    untouched = (applied == -1).all(axis=1)
    assert untouched.any()
    assert np.array_equal(augmented[untouched], np.asarray(images)[untouched])


def test_autoaugment_jits_and_vmaps(draws):
    """Under an outer jit and vmap each row is what a plain call with its key gives."""
    images, key, augmented, _, _ = draws
    stacked = jnp.stack([images, images[::-1]])
    keys = jnp.stack([key, jax.random.key(7, impl=THREEFRY)])
    batched = jax.jit(jax.vmap(aa.autoaugment))(keys, stacked)
    assert batched.shape == stacked.shape and batched.dtype == jnp.uint8
    assert np.array_equal(np.asarray(batched[0]), augmented)
    assert np.array_equal(np.asarray(batched[1]),
                          np.asarray(aa.autoaugment(jax.random.key(7, impl=THREEFRY),
                                                    images[::-1])))


@pytest.mark.parametrize("images", [
    np.zeros((2, 4, 4, 3), np.float32),
    np.zeros((4, 4, 3), np.uint8),
    np.zeros((2, 4, 4, 1), np.uint8),
])
def test_bad_input_is_a_one_line_value_error(images):
    with pytest.raises(ValueError) as error:
        aa.autoaugment(jax.random.key(0), images)
    message = str(error.value)
    assert message.startswith("autoaugment expects uint8 images of shape (B, H, W, C)")
    assert "\n" not in message
