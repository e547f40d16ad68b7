"""The several-seeds search's segmentation fault, reduced to one XLA operation (issue 36).

Run as ``python tests/xla_crash_repro.py {vmap,plain}``, in a process of its own
(tests/test_xla_crash.py does): on 2 forced CPU devices, each of 2 seeds on a
device of its own (``shard_map`` over the ``seed`` axis), every seed sums the
product of two (2, 2, 16, 8, 8, 4) arrays over their first axis.

* ``vmap``: the seeds of a device are vmapped, as the search step vmapped
  them before the fix.  On a device the program then sees a block of one
  seed: ``reduce(multiply(a, b), dimensions={1})`` of shape
  f32[1,2,2,16,8,8,4].  XLA's CPU backend (jaxlib 0.10.2) compiles that
  into a YNNPACK reduce fusion that dies at run time with SIGSEGV, in
  ``slinky::fuse_contiguous_dims`` under ``ynn::make_transpose_impl``.  The
  same operation on one device crashes too: any rank-7 product with a unit
  axis, summed over one middle axis (f32[2,1,2,16,8,8,4] over axis 2 as
  well); rank 6, or no unit axis, runs.  In the supernet it is the backward
  pass of a cell's input edges (seed x nodes x inputs x B x H x W x C,
  summed over the nodes that read each input), so only cells of two nodes
  or more crash, and only with one seed per device group.
* ``plain``: the fix, :func:`xnas_jax.parallel.vmap_seeds`: a block of
  one seed runs the function unbatched.  Prints the largest difference from
  the same sums on one device and exits 0.

``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-reduce`` also avoids
the crash (no YNNPACK reduce fusions), for programs outside this package.
"""

from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, PartitionSpec as P  # noqa: E402

from xnas_jax.parallel import vmap_seeds  # noqa: E402


def seed_sums(a: jax.Array, b: jax.Array) -> jax.Array:
    """One seed's work: the product of its two arrays, summed over their first axis."""
    return (a * b).sum(0)


def main(mode: str) -> int:
    mesh = Mesh(np.array(jax.devices()[:2]).reshape(2, 1), ("seed", "data"))
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((2, 2, 2, 16, 8, 8, 4), np.float32) for _ in range(2))
    per_device = jax.vmap(seed_sums) if mode == "vmap" else vmap_seeds(seed_sums, 1)
    sharded = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=P("seed"),
                                    out_specs=P("seed"), axis_names={"seed"},
                                    check_vma=False))
    got = np.asarray(sharded(jnp.asarray(a), jnp.asarray(b)))
    expected = (a * b).sum(1)
    print(f"max difference {np.abs(got - expected).max():.3g}", flush=True)
    return 0 if np.allclose(got, expected, rtol=1e-5, atol=1e-5) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
