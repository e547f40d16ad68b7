"""The root PRNG keys of a run (search or training)."""

from __future__ import annotations

import jax
import numpy as np


KEY_IMPL = "rbg"


def prng_key(seed: int) -> jax.Array:
    """The run's root PRNG key.

    The "rbg" implementation draws bits with XLA's RngBitGenerator: on CPU the
    default threefry made compiling the initializers and the step's random
    draws several times slower (35 s vs 4 s for a tiny network's init).  Its
    streams are deterministic for a given backend and JAX version, which is
    what resuming needs.
    """
    return jax.random.key(seed, impl=KEY_IMPL)


def seed_keys(seeds) -> np.ndarray:
    """The (S, 4) raw data of each search's root key, :func:`prng_key` of its seed.

    Keys enter the jitted programs as raw data on the mesh, and are wrapped
    inside them (``jax.random.wrap_key_data(..., impl=KEY_IMPL)``).
    """
    return np.stack([np.asarray(jax.random.key_data(prng_key(int(s)))) for s in seeds])
