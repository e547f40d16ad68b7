"""Benchmark of the search step: compile time, step time, memory, wipeout speed-up.

For each configuration (preset x batch x dtype x active fraction) it builds
the jitted search step (network-weight step + XNAS architecture step, exactly
the one ``python -m xnas_jax.search`` runs), times tracing and XLA compilation
of the first call, then runs ``--repeats`` repetitions of ``--steps`` steps on
rotating random batches (never zeros), synchronizing before reading the
clock, and reports the median time per step.  One JSON line per
configuration::

    python -m experiments.bench_search --preset darts --batch 64 96 \\
        --dtype float32 bfloat16 --active-fraction 1.0 0.5 0.25

Active fraction f: the mixture weights of all but ``round(f * N)`` experts are
set to exactly 0 on every edge (as after wipeout), and the step is compiled
for the surviving experts only -- what the search loop does once experts are
wiped out everywhere in a cell type.

Presets: ``darts`` (the DARTS/XNAS search network: C=16, 8 cells, 7 experts,
32x32x3, 10 classes), ``digits`` (the README's quick search: C=8, 5 cells,
8x8x1) and ``tiny`` (the test network: C=4, 3 cells, 8x8x1).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from xnas_jax import genotypes, input_pipeline, search_step
from xnas_jax.prng import prng_key
from xnas_jax.supernet import SearchNetwork

PRESETS: dict[str, dict[str, Any]] = {
    "darts": dict(channels=16, layers=8, image_shape=(32, 32, 3), num_classes=10, crop=4),
    "digits": dict(channels=8, layers=5, image_shape=(8, 8, 1), num_classes=10, crop=1),
    "tiny": dict(channels=4, layers=3, image_shape=(8, 8, 1), num_classes=10, crop=1),
}
# The order in which the benchmark keeps experts alive as the active fraction
# shrinks: one of each kind first, so every fraction mixes cheap and costly ones.
SURVIVAL_ORDER = (
    "sep_conv_3x3", "max_pool_3x3", "dil_conv_3x3", "skip_connect",
    "sep_conv_5x5", "avg_pool_3x3", "dil_conv_5x5",
)


def surviving_experts(fraction: float) -> tuple[str, ...]:
    keep = max(1, round(fraction * len(SURVIVAL_ORDER)))
    alive = set(SURVIVAL_ORDER[:keep])
    return tuple(name for name in genotypes.XNAS_PRIMITIVES if name in alive)


def peak_memory_bytes() -> int | None:
    """Peak device memory where the backend reports it (GPU), else None."""
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def bench(preset: str, batch: int, dtype: str, fraction: float, steps: int, repeats: int,
          depthwise: str = "shifts", seed: int = 0) -> dict[str, Any]:
    spec = PRESETS[preset]
    ops = genotypes.XNAS_PRIMITIVES
    model = SearchNetwork(
        num_classes=spec["num_classes"], channels=spec["channels"], layers=spec["layers"],
        ops=ops, dtype={"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype],
        depthwise=depthwise,
    )
    total_steps = 10_000
    weight_tx = search_step.weight_optimizer(0.025, 0.001, 0.9, 3e-4, 5.0, total_steps)
    arch_tx, _ = search_step.xnas_arch_optimizer(len(ops), spec["layers"], total_steps, batch)
    state = search_step.create_search_state(
        prng_key(seed), model, spec["image_shape"], weight_tx, arch_tx
    )
    alive = surviving_experts(fraction)
    mask = jnp.asarray([name in alive for name in ops], jnp.float32)
    arch = jax.tree.map(lambda u: u * mask / jnp.sum(u * mask, -1, keepdims=True), state.arch)
    state = state._replace(arch=arch, arch_opt_state=arch_tx.init(arch))

    # Random uint8 images and labels, 8 batches' worth per half, rotated through.
    rng = np.random.default_rng(seed)
    pool = 8 * batch
    halves = [
        input_pipeline.DeviceData(
            jnp.asarray(rng.integers(0, 256, (pool, *spec["image_shape"]), dtype=np.uint8)),
            jnp.asarray(rng.integers(0, spec["num_classes"], pool, dtype=np.int32)),
        )
        for _ in range(2)
    ]
    order = jnp.asarray(rng.permutation(pool).reshape(8, batch))
    preprocess = search_step.Preprocess(
        (0.5,) * spec["image_shape"][-1], (0.25,) * spec["image_shape"][-1], spec["crop"], True
    )
    lean = model.clone(normal_ops=alive, reduce_ops=alive)
    step = search_step.make_search_step(lean, weight_tx, arch_tx, preprocess)
    key = prng_key(seed + 1)

    started = time.perf_counter()
    lowered = step.lower(state, *halves, order[0], order[1], key)
    trace_s = time.perf_counter() - started
    started = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - started

    state, metrics = compiled(state, *halves, order[0], order[1], key)  # warm-up
    jax.block_until_ready(state)
    times = []
    for r in range(repeats):
        started = time.perf_counter()
        for i in range(steps):
            state, metrics = compiled(
                state, *halves, order[i % 8], order[(i + 3) % 8], jax.random.fold_in(key, i)
            )
        jax.block_until_ready(state)
        times.append((time.perf_counter() - started) / steps)
    step_s = statistics.median(times)
    loss = float(metrics["val_loss"])
    if not np.isfinite(loss):
        raise RuntimeError(f"non-finite loss {loss} in {preset} b{batch} {dtype}")
    return {
        "preset": preset,
        "batch": batch,
        "dtype": dtype,
        "depthwise": depthwise,
        "active_fraction": len(alive) / len(ops),
        "experts_computed": list(alive),
        "device": jax.devices()[0].device_kind,
        "backend": jax.default_backend(),
        "trace_s": round(trace_s, 3),
        "compile_s": round(compile_s, 3),
        "first_call_s": round(trace_s + compile_s, 3),
        "step_ms": round(1000 * step_s, 3),
        "step_ms_repeats": [round(1000 * t, 3) for t in times],
        "images_per_s": round(2 * batch / step_s, 1),  # a train and a val batch per step
        "peak_memory_bytes": peak_memory_bytes(),
        "host_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "final_val_loss": round(loss, 4),
        "steps": steps,
        "repeats": repeats,
        "jax": jax.__version__,
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", nargs="+", default=["tiny"], choices=sorted(PRESETS))
    parser.add_argument("--batch", nargs="+", type=int, default=[64])
    parser.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    parser.add_argument("--active-fraction", nargs="+", type=float, default=[1.0])
    parser.add_argument("--depthwise", nargs="+", default=["shifts"], choices=["shifts", "conv"])
    parser.add_argument("--steps", type=int, default=30, help="steps per repetition")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions (median taken)")
    parser.add_argument("--out", default=None, help="also append the JSON lines to this file")
    parser.add_argument("--compilation-cache", default=None,
                        help="persistent compilation cache (compile_s then measures a cache hit)")
    args = parser.parse_args(argv)
    if args.compilation_cache:
        from xnas_jax import cli

        cli.enable_compilation_cache(args.compilation_cache)
    for preset in args.preset:
        for batch in args.batch:
            for dtype in args.dtype:
                for fraction in args.active_fraction:
                    for depthwise in args.depthwise:
                        record = bench(
                            preset, batch, dtype, fraction, args.steps, args.repeats, depthwise
                        )
                        line = json.dumps(record)
                        print(line, flush=True)
                        if args.out:
                            with open(args.out, "a") as f:
                                f.write(line + "\n")


if __name__ == "__main__":
    sys.exit(main())
