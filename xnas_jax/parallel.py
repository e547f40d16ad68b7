"""Devices, processes and the ``seed x data`` mesh that the search and the training run on.

Both loops run on one :class:`jax.sharding.Mesh` with two named axes:

- ``seed``: independent searches (their own initialization, split, data
  order, mixture weights and genotype), stacked on a leading axis of the
  search state and vmapped; the axis spreads them over devices when there are
  enough, and one device runs them all otherwise;
- ``data``: the global batch is split over it.  Network weights, mixture
  weights and optimizer states are replicated along it, and GSPMD turns every
  batch reduction (the loss, batch norm's moments, the summed XNAS rewards)
  into a reduction over the global batch: the same numbers as one device
  computing that batch, up to float32 summation order.

The mesh spans every device of every process (``jax.distributed``), so a
multi-host run is the same program.  Arrays enter it through
:func:`global_array`, built from host values that every process knows, and
leave it through :func:`to_host`.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
    "DATA", "SEED", "MeshError", "initialize_distributed", "mesh_shape", "make_mesh",
    "describe", "check_batch", "replicated", "seed_sharding", "batch_sharding",
    "global_array", "to_host", "gather_from_processes", "is_writer", "broadcast_text",
    "barrier", "vmap_seeds", "replicated_draws", "seeded_step",
]

SEED, DATA = "seed", "data"


class MeshError(ValueError):
    """Devices, seeds and batch sizes that do not fit together."""


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
    """Joins a multi-process run (``jax.distributed``); returns whether it did.

    ``coordinator_address`` ``"auto"`` lets JAX detect the cluster (SLURM,
    Cloud TPU, Open MPI, ...).  Without it, the environment variables
    ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``
    are read; with neither, the run is one process.  Must run before anything
    touches a device.
    """
    env = os.environ
    address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
    if not address:
        return False
    if num_processes is None and env.get("JAX_NUM_PROCESSES"):
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = int(env["JAX_PROCESS_ID"])
    if address == "auto":
        jax.distributed.initialize()
    else:
        if num_processes is None or process_id is None:
            raise MeshError(f"--coordinator-address {address} needs --num-processes and "
                            "--process-id (or JAX_NUM_PROCESSES and JAX_PROCESS_ID)")
        if not 0 <= process_id < num_processes:
            raise MeshError(f"--process-id {process_id} is not in [0, {num_processes})")
        jax.distributed.initialize(address, num_processes, process_id)
    return True


def mesh_shape(num_seeds: int, num_devices: int) -> tuple[int, int]:
    """``(seed, data)`` axis sizes: as many devices per seed group as divide both.

    The ``seed`` axis takes ``gcd(seeds, devices)`` devices, so each holds
    ``seeds / seed_axis`` whole searches (vmapped); the rest split the batch.
    """
    if num_seeds < 1 or num_devices < 1:
        raise MeshError(f"need at least one seed and one device, got {num_seeds} seeds and "
                        f"{num_devices} devices")
    seed_axis = math.gcd(num_seeds, num_devices)
    return seed_axis, num_devices // seed_axis


def make_mesh(num_seeds: int = 1, devices: int | None = None) -> Mesh:
    """The ``(seed, data)`` mesh over all devices of all processes, or the first ``devices``.

    With several processes, they split the ``data`` axis where it has a
    multiple of their number of devices (so each reads only its data shards,
    :mod:`xnas_jax.data.shards`), else the ``seed`` axis.

    Raises:
      MeshError: ``devices`` larger than the devices there are, or a limit
        that does not leave every process the same number of devices.
    """
    available = jax.devices()
    if devices is not None:
        if not 1 <= devices <= len(available):
            raise MeshError(f"--devices {devices}: this run has {len(available)} "
                            f"{available[0].platform} device(s)")
        if jax.process_count() > 1 and devices != len(available):
            raise MeshError("--devices limits a one-process run only; a multi-process run "
                            "uses all devices of all processes")
        available = available[:devices]
    seed_axis, data_axis = mesh_shape(num_seeds, len(available))
    processes = jax.process_count()
    ordered = sorted(available, key=lambda d: (d.process_index, d.id))
    grid = np.asarray(ordered, dtype=object)
    if processes > 1 and data_axis % processes == 0:
        # Processes split the data axis (each then reads only its data shards,
        # :mod:`xnas_jax.data.shards`) and each holds every seed.
        grid = grid.reshape(processes, seed_axis, data_axis // processes).transpose(1, 0, 2)
    return Mesh(grid.reshape(seed_axis, data_axis), (SEED, DATA))


def describe(mesh: Mesh) -> dict[str, Any]:
    """The mesh as JSON: axis sizes, devices and processes."""
    return {
        "axes": {name: int(size) for name, size in mesh.shape.items()},
        "devices": int(mesh.devices.size),
        "platform": mesh.devices.flat[0].platform,
        "processes": jax.process_count(),
    }


def check_batch(mesh: Mesh, batch_size: int, what: str = "--batch-size") -> None:
    """A batch must split evenly over the mesh's ``data`` axis."""
    data_axis = mesh.shape[DATA]
    if batch_size % data_axis:
        raise MeshError(
            f"{what} {batch_size} does not split over the {data_axis} devices of the mesh's "
            f"data axis (seed {mesh.shape[SEED]} x data {data_axis}): use a multiple of "
            f"{data_axis}, or --devices")


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, P())


def seed_sharding(mesh: Mesh) -> NamedSharding:
    """The leading (seed) axis split over ``seed``, replicated over ``data``."""
    return NamedSharding(mesh, P(SEED))


def batch_sharding(mesh: Mesh, seeded: bool = False) -> NamedSharding:
    """A batch axis split over ``data`` (after a leading seed axis if ``seeded``)."""
    return NamedSharding(mesh, P(SEED, DATA) if seeded else P(DATA))


def global_array(value: Any, sharding: NamedSharding) -> jax.Array:
    """A global array from a host value that every process holds in full.

    Each process copies only the pieces its own devices hold.
    """
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def to_host(tree: Any) -> Any:
    """A pytree of (possibly multi-process) arrays as NumPy, on every process.

    Arrays spread over other processes' devices are gathered (a collective:
    every process must call this at the same point).
    """
    def fetch(leaf):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
        return np.asarray(jax.device_get(leaf))

    return jax.tree.map(fetch, tree)


def gather_from_processes(value: np.ndarray) -> np.ndarray:
    """Every process's int32 ``value``, stacked: shape ``(processes, *value.shape)``."""
    value = np.asarray(value, np.int32)
    if jax.process_count() == 1:
        return value[None]
    return np.asarray(multihost_utils.process_allgather(value, tiled=False))


def is_writer() -> bool:
    """Only process 0 writes logs, plots, genotypes and run files."""
    return jax.process_index() == 0


def broadcast_text(text: str, length: int = 1024) -> str:
    """Process 0's ``text`` on every process (e.g. the name of a new run folder)."""
    if jax.process_count() == 1:
        return text
    raw = text.encode()
    if len(raw) > length:
        raise MeshError(f"cannot share a text of {len(raw)} bytes between processes")
    buffer = np.zeros(length + 1, np.int32)
    buffer[0] = len(raw)
    buffer[1:1 + len(raw)] = np.frombuffer(raw, np.uint8)
    shared = np.asarray(multihost_utils.broadcast_one_to_all(buffer))
    return bytes(shared[1:1 + int(shared[0])].astype(np.uint8)).decode()


def barrier(name: str) -> None:
    """Waits until every process reaches this point (nothing with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


# ------------------------------------------------------------------ several searches


def vmap_seeds(fn: Callable[..., Any], block: int) -> Callable[..., Any]:
    """``fn`` over the leading seed axis of a block of ``block`` seeds (one device group's).

    A block of several seeds is vmapped; a block of one seed runs ``fn``
    unbatched (the seed axis taken off the arguments and put back on the
    results), the program a one-seed search runs.  Why not vmap a block of
    one: it gives every tensor a unit leading axis, and XLA's CPU backend
    (jaxlib 0.10.2, its YNNPACK reduce fusion) dies with a segmentation fault
    on a product of two rank-7 operands with a unit axis summed over one
    middle axis -- which the cell's input edges make in the backward pass
    (seed 1 x nodes x inputs x B x H x W x C, summed over the nodes that read
    each input).  See docs/reliability.md and tests/test_xla_crash.py.
    """
    if block != 1:
        return jax.vmap(fn)

    def one(*args):
        return jax.tree.map(lambda a: a[None], fn(*jax.tree.map(lambda a: a[0], args)))

    return one


def replicated_draws(mesh: Mesh) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Wraps a random draw so that every device of ``mesh`` draws all of its numbers.

    Each device then draws what one device would: "rbg" draws that GSPMD
    splits over devices come out different, and a search must not depend on
    the mesh.  For the ``draws`` argument of :func:`xnas_jax.data.augment.augment`.
    """
    return lambda draw: jax.shard_map(draw, mesh=mesh, in_specs=P(), out_specs=P(),
                                      check_vma=False)


def seeded_step(
    update: Callable[..., tuple[Any, Any]],
    per_seed_inputs: Callable[..., Sequence[Any]],
    mesh: Mesh,
    arg_shardings: Sequence[NamedSharding] = (),
) -> Callable[..., tuple[Any, Any]]:
    """The jitted ``step(states, *args)`` of S searches from one search's ``update``.

    ``update(state, *inputs) -> (state, metrics)`` is one search's step on
    its own inputs; ``per_seed_inputs(states, *args)`` gives each search's
    inputs, a list of S tuples (traced inside the step, one seed at a time:
    random draws belong here).  ``states`` (and the metrics) carry a leading
    seed axis, split over the mesh's ``seed`` axis; every leaf of an input
    is a batch, split over ``data`` (GSPMD turns its reductions into
    reductions over the global batch).  ``arg_shardings`` are the
    shardings of ``args``.  The states are donated.

    Seed s's results are those of ``update`` on seed s alone, whatever the
    seeds beside it and the mesh.  One search (S = 1) runs the plain
    ``update``, without vmap.
    """

    def step(states, *args):
        inputs = per_seed_inputs(states, *args)
        if len(inputs) == 1:  # one search: the plain step, with an axis of 1
            return vmap_seeds(lambda state: update(state, *inputs[0]), 1)(states)
        # The random draws of each seed outside vmap (per_seed_inputs, one
        # seed at a time): batched "rbg" keys draw other numbers than the
        # same keys one at a time, and a search must not depend on the seeds
        # it runs beside.
        stacked = jax.tree.map(lambda *a: jnp.stack(a), *inputs)
        stacked = jax.lax.with_sharding_constraint(stacked, batch_sharding(mesh, seeded=True))
        # Each device group vmaps its own seeds (shard_map over ``seed``; the
        # batch stays split over ``data`` by GSPMD): left to GSPMD, the seed
        # axis that vmap folds into the convolutions' feature groups was
        # partitioned wrongly (XLA CPU, jax 0.10.2: other losses).  A group
        # of one seed runs the plain step (:func:`vmap_seeds`: XLA crashes).
        by_seed = P(SEED)
        block = len(inputs) // mesh.shape[SEED]
        return jax.shard_map(vmap_seeds(update, block), mesh=mesh,
                             in_specs=(by_seed,) * (1 + len(inputs[0])),
                             out_specs=by_seed, axis_names={SEED},
                             check_vma=False)(states, *stacked)

    seeds = seed_sharding(mesh)
    return jax.jit(step, in_shardings=(seeds, *arg_shardings), out_shardings=(seeds, seeds),
                   donate_argnums=(0,))
