"""On the accelerator: the augmentation of uint8 batches.

Inside the jitted step a batch gathered from the device data
(:func:`xnas_jax.data.shards.gather`) is augmented (:func:`augment`,
:func:`cutout`) and normalized (:func:`normalize`).
AutoAugment's policy is in :mod:`xnas_jax.data.autoaugment`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax


__all__ = [
    "augment",
    "cutout",
    "normalize",
]


def normalize(
    images: jax.Array, mean: jax.typing.ArrayLike, std: jax.typing.ArrayLike
) -> jax.Array:
    """uint8 pixels to float32 ``(x / 255 - mean) / std``, per channel.

    Args:
      images: uint8 array (..., H, W, C).
      mean: per-channel mean in [0, 1] units, shape (C,) (see :func:`channel_stats`).
      std: per-channel standard deviation in [0, 1] units, shape (C,), > 0.

    Returns:
      float32 array of the shape of `images`.
    """
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    for arg, value in (("mean", mean), ("std", std)):
        if value.ndim > 1 or value.size not in (1, images.shape[-1]):
            raise ValueError(
                f"{arg} must have one value per channel ({images.shape[-1]}), "
                f"got shape {value.shape}"
            )
    return (images.astype(jnp.float32) / 255.0 - mean) / std


def augment(key: jax.Array, images: jax.Array, pad: int = 4, flip: bool = True,
            draws: Callable[[Callable], Callable] | None = None) -> jax.Array:
    """Random crop after zero padding, and random horizontal flip, per image.

    The standard CIFAR augmentation of DARTS and XNAS: pad each side by `pad`
    zeros, crop back to (H, W) at a uniform random offset, mirror with
    probability 1/2.  Apply it to the uint8 images before :func:`normalize`,
    so that the padding is black as in the papers (padding after normalizing
    would be the mean color).  Shapes are static, so it runs inside jit;
    `pad` and `flip` are Python values.

    Args:
      key: PRNG key; the same key gives the same crops and flips.
      images: array (B, H, W, C), any dtype.
      pad: zero padding on each side, >= 0 (0: no crop).
      flip: whether to mirror half of the images.
      draws: wraps the function ``key -> (offsets, flips)`` that makes the
        random draws; e.g. a ``shard_map`` that makes every device draw the
        whole batch's numbers, so that they do not depend on how the batch
        is split over devices.

    Returns:
      Array like `images`.
    """
    if not isinstance(pad, int) or pad < 0:
        raise ValueError(f"pad must be an int >= 0, got pad={pad!r}")
    batch, height, width, channels = images.shape

    def draw(key: jax.Array) -> tuple[jax.Array, jax.Array]:
        crop_key, flip_key = jax.random.split(key)
        offsets = jax.random.randint(crop_key, (batch, 2), 0, 2 * pad + 1)
        return offsets, jax.random.bernoulli(flip_key, 0.5, (batch,))

    offsets, mirrored = (draws(draw) if draws else draw)(key)
    if pad:
        padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

        def crop(image: jax.Array, offset: jax.Array) -> jax.Array:
            return lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, channels))

        images = jax.vmap(crop)(padded, offsets)
    if flip:
        images = jnp.where(mirrored[:, None, None, None], images[:, :, ::-1, :], images)
    return images


def cutout(key: jax.Array, images: jax.Array, size: int) -> jax.Array:
    """Zeroes a random `size` x `size` square of each image (DeVries & Taylor, 2017).

    As in the DARTS/XNAS evaluation training: the square's center is uniform
    over the image and the square is clipped at the borders.  Apply it after
    :func:`normalize` (zero is then the mean color, as in those codebases).

    Args:
      key: PRNG key.
      images: array (B, H, W, C), any dtype.
      size: side of the square, >= 0 (0: no cutout).

    Returns:
      Array like `images`.
    """
    if not isinstance(size, int) or size < 0:
        raise ValueError(f"size must be an int >= 0, got size={size!r}")
    if not size:
        return images
    batch, height, width, _ = images.shape
    y_key, x_key = jax.random.split(key)
    center_y = jax.random.randint(y_key, (batch, 1, 1), 0, height)
    center_x = jax.random.randint(x_key, (batch, 1, 1), 0, width)
    rows = jnp.arange(height)[None, :, None]
    cols = jnp.arange(width)[None, None, :]
    inside = (
        (rows >= center_y - size // 2) & (rows < center_y + size // 2)
        & (cols >= center_x - size // 2) & (cols < center_x + size // 2)
    )
    return jnp.where(inside[..., None], jnp.zeros((), images.dtype), images)
