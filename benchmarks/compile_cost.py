"""Where the compile time of the search goes: a cost per distinct kernel, times the kernels.

Prints JSON lines:

* ``per_kernel``: XLA compile time of programs of N independent elementwise
  kernels (nothing fuses them), and the slope, the compile cost of one kernel
  on this machine (wall and process CPU seconds; XLA compiles kernels on
  several threads); then the largest program again with N identical kernels;
* ``init``, ``loss``, ``weight_gradient`` and ``step`` per preset (and
  depth): trace and compile seconds of the supernet's ``init`` program, of
  its loss alone and its weight gradient alone (the floor under the step,
  :func:`gradient_programs`), and of the search step, with their compiled
  kernels (:func:`benchmarks.bench_search.compiled_kernels`), the distinct
  ones among them and executed instructions; for the step, also per part of
  it (:func:`kernels_by_part`: the cells' input stages, node scans and
  preprocessing, the stem and classifier, and what lies outside the network);
* ``model``: a least-squares fit of the compile seconds to the distinct
  kernels, the instructions in them and all compiled kernels
  (:func:`benchmarks.bench_search.distinct_kernels`: XLA generates code for
  identical kernels once, but every kernel costs its share of the rest).

Usage: ``python -m benchmarks.compile_cost [--preset tiny darts] [--batch 64]
[--layers 0 20]``.
Results: ``experiments/results/BENCHMARKS.md``, "Where the compile time goes" and
"Identical kernels compile once".
"""

from __future__ import annotations

import json
import re
import resource
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import experiments
from benchmarks import bench_search
from xnas_jax import prng, search_step
from xnas_jax.spaces.darts import genotypes
from xnas_jax.spaces.darts.supernet import SearchNetwork


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed_compile(lowered: Any, parts: bool = False) -> dict[str, Any]:
    """Compiles a lowered program: wall and CPU seconds, kernels, instructions
    (with ``parts``, also :func:`kernels_by_part`)."""
    wall, cpu = time.perf_counter(), _cpu_s()
    compiled = lowered.compile()
    text = compiled.as_text()
    distinct, distinct_instructions = bench_search.distinct_kernels(text)
    return {"compile_s": round(time.perf_counter() - wall, 3),
            "compile_cpu_s": round(_cpu_s() - cpu, 3),
            "compiled_kernels": bench_search.compiled_kernels(text),
            "distinct_kernels": distinct,
            "distinct_kernel_instructions": distinct_instructions,
            "executed_instructions": bench_search.executed_instructions(text),
            **({"parts": kernels_by_part(text)} if parts else {})}


_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CELL = re.compile(r"cell_\d+/(.*)")
PARTS = ("cell input stage", "cell node scan", "cell preprocessing", "stem and classifier",
         "outside the network", "unnamed")


def part_of(op_name: str | None) -> str:
    """Which part of the search step a kernel comes from, by its JAX op_name.

    A cell's input stage is its vmapped ``MixedOp`` outside any loop, its node
    scan the ``while`` inside the cell; outside the network are the
    optimizers, the loss, the augmentation, the random draws and the rewards.
    """
    if op_name is None:
        return "unnamed"
    cell = _CELL.search(op_name)
    if cell:
        inside = cell.group(1)
        if "while/" in inside:
            return "cell node scan"
        return "cell input stage" if "MixedOp" in inside else "cell preprocessing"
    if "stem" in op_name or "classifier" in op_name:
        return "stem and classifier"
    return "outside the network"


def kernels_by_part(hlo_text: str) -> dict[str, dict[str, int]]:
    """Distinct kernels, the instructions in them and compiled kernels, per :data:`PARTS`.

    A kernel's part is that of its own op_name, or else of the first one in
    its fused computation.  A distinct kernel counts in the part where it
    first appears.
    """
    parts = {part: {"distinct_kernels": 0, "distinct_kernel_instructions": 0,
                    "compiled_kernels": 0} for part in PARTS}
    seen = set()
    for line, key, size, fused in bench_search.kernel_signatures(hlo_text):
        named = [m.group(1) for m in map(_OP_NAME.search, [line, *fused]) if m]
        counts = parts[part_of(named[0] if named else None)]
        counts["compiled_kernels"] += 1
        if key not in seen:
            seen.add(key)
            counts["distinct_kernels"] += 1
            counts["distinct_kernel_instructions"] += size
    return parts


def per_kernel(counts: tuple[int, ...] = (25, 100, 300)) -> dict[str, Any]:
    """Compile time of N independent kernels, and its slope in N.

    Each kernel reads an input of its own shape, so no two are alike; the
    last row repeats the largest program with all inputs of one shape: N
    identical kernels, which XLA compiles as one.
    """
    f: Callable = lambda xs: [x * 2.0 + 1.0 for x in xs]  # noqa: E731
    rows = []
    for n in counts:
        xs = [jax.ShapeDtypeStruct((8, 4, 4, 16 + i), jnp.float32) for i in range(n)]
        rows.append({"kernels_requested": n, **timed_compile(jax.jit(f).lower(xs))})
    n = np.array([r["compiled_kernels"] for r in rows], float)
    slope = lambda key: float(np.polyfit(n, [r[key] for r in rows], 1)[0])  # noqa: E731
    same = [jax.ShapeDtypeStruct((8, 4, 4, 16), jnp.float32)] * counts[-1]
    identical = {"kernels_requested": counts[-1], "identical": True,
                 **timed_compile(jax.jit(f).lower(same))}
    return {"what": "per_kernel", "rows": rows, "identical": identical,
            "ms_per_kernel": round(1000 * slope("compile_s"), 2),
            "cpu_ms_per_kernel": round(1000 * slope("compile_cpu_s"), 2)}


def compile_model(programs: Sequence[dict[str, Any]],
                  probes: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """Least squares ``compile_s ~ a * distinct + b * their instructions + c * compiled``.

    ``a`` and ``b`` price the code XLA generates once per distinct kernel,
    ``c`` the work done for every kernel, repeated or not (HLO passes, the
    runtime's thunks).  Fitted to ``programs`` and ``probes`` (rows of
    :func:`per_kernel`, which pin ``c`` with their identical kernels); the
    prediction for each program says how much of its compile time the
    three counts explain.
    """
    rows = [*programs, *probes]
    features = np.array([[r["distinct_kernels"], r["distinct_kernel_instructions"],
                          r["compiled_kernels"]] for r in rows], float)
    seconds = np.array([r["compile_s"] for r in rows])
    coefficients, *_ = np.linalg.lstsq(features, seconds, rcond=None)
    a, b, c = (float(x) for x in coefficients)
    predicted = features[:len(programs)] @ coefficients
    return {"what": "model", "ms_per_distinct_kernel": round(1000 * a, 2),
            "ms_per_distinct_instruction": round(1000 * b, 3),
            "ms_per_compiled_kernel": round(1000 * c, 2),
            "programs": [{"what": r["what"], "preset": r["preset"], "layers": r["layers"],
                          "compile_s": r["compile_s"], "predicted_s": round(float(p), 1)}
                         for r, p in zip(programs, predicted)]}


def init_program(preset: str, batch: int, layers: int = 0) -> dict[str, Any]:
    """The supernet's init, jitted as the search builds its state, from a key of the
    runs' implementation (:mod:`xnas_jax.prng`; layers 0: the preset's)."""
    spec = bench_search.PRESETS[preset]
    layers = layers or spec["layers"]
    model = SearchNetwork(num_classes=spec["num_classes"], channels=spec["channels"],
                          layers=layers, ops=genotypes.XNAS_PRIMITIVES)
    images = jnp.zeros((batch, *spec["image_shape"]), jnp.float32)
    started = time.perf_counter()
    lowered = jax.jit(lambda key: model.init(key, images)).lower(prng.prng_key(0))
    return {"what": "init", "preset": preset, "layers": layers, "batch": batch,
            "trace_s": round(time.perf_counter() - started, 3), **timed_compile(lowered)}


def gradient_programs(preset: str, batch: int, layers: int = 0) -> list[dict[str, Any]]:
    """The supernet's loss alone, and its gradient with respect to the weights alone.

    The floor under the search step's trace and compile: the step holds the
    weight pass (this gradient, Algorithm 1 line 4) and the architecture pass.
    """
    spec = bench_search.PRESETS[preset]
    layers = layers or spec["layers"]
    model = SearchNetwork(num_classes=spec["num_classes"], channels=spec["channels"],
                          layers=layers, ops=genotypes.XNAS_PRIMITIVES)
    images = jnp.zeros((batch, *spec["image_shape"]), jnp.float32)
    labels = jnp.zeros((batch,), jnp.int32)
    variables = jax.eval_shape(model.init, prng.prng_key(0), images[:2])

    def loss(params, others):
        logits, _ = model.apply({**others, "params": params}, images, mutable=["batch_stats"])
        return search_step.cross_entropy(logits, labels)

    others = {k: v for k, v in variables.items() if k != "params"}
    rows = []
    for what, f in (("loss", loss), ("weight_gradient", jax.grad(loss))):
        started = time.perf_counter()
        lowered = jax.jit(f).lower(variables["params"], others)
        rows.append({"what": what, "preset": preset, "layers": layers, "batch": batch,
                     "trace_s": round(time.perf_counter() - started, 3),
                     **timed_compile(lowered)})
    return rows


def step_program(preset: str, batch: int, layers: int = 0) -> dict[str, Any]:
    """The search step, built exactly as the search builds it (layers 0: the preset's)."""
    prepared = bench_search.prepare(bench_search.Config(preset=preset, batch=batch,
                                                        layers=layers))
    return {"what": "step", "preset": preset,
            "layers": layers or bench_search.PRESETS[preset]["layers"], "batch": batch,
            "trace_s": round(prepared.trace_s, 3),
            **timed_compile(prepared.lowered, parts=True)}


def main(argv: Sequence[str] | None = None) -> int:
    """Prints (and with ``--out`` appends) the JSON lines; 0, or exit status 2 on bad input."""
    parser = experiments.argument_parser(__spec__.name, __doc__)
    parser.add_argument("--preset", nargs="+", default=["tiny"],
                        choices=sorted(bench_search.PRESETS))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--layers", type=int, nargs="+", default=[0],
                        help="cells of the network (0: the preset's)")
    parser.add_argument("--out", help="also append the JSON lines to this file")
    args = parser.parse_args(argv)
    if any(n < 0 or 0 < n < 3 for n in args.layers):
        parser.error(f"--layers {args.layers}: each must be 0 (the preset's) or >= 3")
    rows = [per_kernel()]
    print(json.dumps(rows[-1]), flush=True)
    for preset in args.preset:
        for layers in args.layers:
            built = [init_program(preset, args.batch, layers),
                     *gradient_programs(preset, args.batch, layers),
                     step_program(preset, args.batch, layers)]
            for row in built:
                for kind in ("compiled", "distinct"):
                    row[f"ms_per_{kind}_kernel"] = round(
                        1000 * row["compile_s"] / max(row[f"{kind}_kernels"], 1), 2)
                print(json.dumps(row), flush=True)
            rows += built
    if len(rows) > 3:
        rows.append(compile_model(rows[1:], [*rows[0]["rows"], rows[0]["identical"]]))
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        with open(args.out, "a") as out:
            out.writelines(json.dumps(row) + "\n" for row in rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
