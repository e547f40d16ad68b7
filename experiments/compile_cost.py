"""Where the compile time of the search goes: a cost per kernel, times the kernels.

Prints JSON lines:

* ``per_kernel``: XLA compile time of programs of N independent elementwise
  kernels (nothing fuses them), and the slope, the compile cost of one kernel
  on this machine (wall and process CPU seconds; XLA compiles kernels on
  several threads);
* ``init`` and ``step`` per preset: trace and compile seconds of the
  supernet's ``init`` program and of the search step, with their compiled
  kernels (:func:`experiments.bench_search.compiled_kernels`) and executed
  instructions.  Compile seconds over compiled kernels, compared with the
  per-kernel cost, says whether the program's compile time is its kernel
  count.

Usage: ``python -m experiments.compile_cost [--preset tiny darts] [--batch 64]``.
Results: ``experiments/results/BENCHMARKS.md``, "Where the compile time goes".
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from experiments import bench_search
from xnas_jax import genotypes
from xnas_jax.supernet import SearchNetwork


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed_compile(lowered: Any) -> dict[str, Any]:
    """Compiles a lowered program: wall and CPU seconds, kernels, instructions."""
    wall, cpu = time.perf_counter(), _cpu_s()
    compiled = lowered.compile()
    text = compiled.as_text()
    return {"compile_s": round(time.perf_counter() - wall, 3),
            "compile_cpu_s": round(_cpu_s() - cpu, 3),
            "compiled_kernels": bench_search.compiled_kernels(text),
            "executed_instructions": bench_search.executed_instructions(text)}


def per_kernel(counts: tuple[int, ...] = (25, 100, 300)) -> dict[str, Any]:
    """Compile time of N independent kernels, and its slope in N."""
    rows = []
    for n in counts:
        # Each input has its own shape, so no two kernels are alike.
        xs = [jnp.ones((8, 4, 4, 16 + i)) for i in range(n)]
        f: Callable = lambda xs: [x * 2.0 + 1.0 for x in xs]  # noqa: E731
        rows.append({"kernels_requested": n, **timed_compile(jax.jit(f).lower(xs))})
    n = np.array([r["compiled_kernels"] for r in rows], float)
    slope = lambda key: float(np.polyfit(n, [r[key] for r in rows], 1)[0])  # noqa: E731
    return {"what": "per_kernel", "rows": rows,
            "ms_per_kernel": round(1000 * slope("compile_s"), 2),
            "cpu_ms_per_kernel": round(1000 * slope("compile_cpu_s"), 2)}


def init_program(preset: str, batch: int) -> dict[str, Any]:
    """The supernet's init, jitted as the search builds its state."""
    spec = bench_search.PRESETS[preset]
    model = SearchNetwork(num_classes=spec["num_classes"], channels=spec["channels"],
                          layers=spec["layers"], ops=genotypes.XNAS_PRIMITIVES)
    images = jnp.zeros((batch, *spec["image_shape"]), jnp.float32)
    started = time.perf_counter()
    lowered = jax.jit(lambda key: model.init(key, images)).lower(jax.random.key(0))
    return {"what": "init", "preset": preset, "batch": batch,
            "trace_s": round(time.perf_counter() - started, 3), **timed_compile(lowered)}


def step_program(preset: str, batch: int) -> dict[str, Any]:
    """The search step, built exactly as the search builds it."""
    prepared = bench_search.prepare(bench_search.Config(preset=preset, batch=batch))
    return {"what": "step", "preset": preset, "batch": batch,
            "trace_s": round(prepared.trace_s, 3), **timed_compile(prepared.lowered)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", nargs="+", default=["tiny"],
                        choices=sorted(bench_search.PRESETS))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", help="also append the JSON lines to this file")
    args = parser.parse_args(argv)
    rows = [per_kernel()]
    print(json.dumps(rows[-1]), flush=True)
    for preset in args.preset:
        for build in (init_program, step_program):
            rows.append(build(preset, args.batch))
            row = rows[-1]
            row["ms_per_compiled_kernel"] = round(1000 * row["compile_s"]
                                                  / max(row["compiled_kernels"], 1), 2)
            print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "a") as out:
            out.writelines(json.dumps(row) + "\n" for row in rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
