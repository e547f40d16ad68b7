"""Benchmark of the search step: compile time, step time, memory, wipeout speed-up.

For each configuration (preset x batch x dtype x active fraction) it builds
the jitted search step (network-weight step + XNAS architecture step, exactly
the one ``python -m xnas_jax.search`` runs), times tracing and XLA compilation
of the first call, then runs ``--repeats`` repetitions of ``--steps`` steps on
rotating random batches (never zeros), synchronizing before reading the
clock, and reports the median time per step.  One JSON line per
configuration::

    python -m benchmarks.bench_search --preset darts --batch 64 96 \\
        --dtype float32 bfloat16 --active-fraction 1.0 0.5 0.25

runs the cross product of the flags; ``--config`` lists configurations
instead (``--config batch=64 --config batch=256,steps=10``).  Configurations
are built, compiled and timed one after another.  With
``--compilation-cache DIR --cache-hit`` the first configuration is built
again at the end and its compile is a load from the persistent cache.

Active fraction f: the mixture weights of all but ``round(f * N)`` experts are
set to exactly 0 on every edge (as after wipeout), and the step is compiled
for the surviving experts only -- what the search loop does once experts are
wiped out everywhere in a cell type.

Presets: ``darts`` (the DARTS/XNAS search network: C=16, 8 cells, 7 experts,
32x32x3, 10 classes), ``digits`` (the README's quick search: C=8, 5 cells,
8x8x1) and ``tiny`` (the test network: C=4, 3 cells, 8x8x1); ``layers=N`` in
a ``--config`` changes a preset's number of cells.
"""

from __future__ import annotations

import functools
import json
import platform
import re
import resource
import statistics
import sys
import time
from typing import Any, NamedTuple, Sequence

import jax
import numpy as np

import experiments
from xnas_jax import cli, configs, optimizers, parallel, prng, search_step
from xnas_jax.spaces.darts import genotypes
from xnas_jax.data import shards
from xnas_jax.data.specs import ArrayDataset
from xnas_jax.spaces.kernels import DTYPES, dtype_from_name
from xnas_jax.spaces.darts.supernet import SearchNetwork

PRESETS: dict[str, dict[str, Any]] = {
    "darts": {"channels": 16, "layers": 8, "image_shape": (32, 32, 3), "num_classes": 10,
              "crop": 4},
    "digits": {"channels": 8, "layers": 5, "image_shape": (8, 8, 1), "num_classes": 10, "crop": 1},
    "tiny": {"channels": 4, "layers": 3, "image_shape": (8, 8, 1), "num_classes": 10, "crop": 1},
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
    """Peak device memory of this process so far, where the backend reports it (GPU)."""
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def xla_memory_bytes(compiled: Any) -> dict[str, int] | None:
    """XLA's own account of one program's device memory (arguments, outputs, temporaries)."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if stats is None:
        return None
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
              "temp_size_in_bytes")
    result = {f: int(getattr(stats, f, 0)) for f in fields}
    result["total_bytes"] = (result["argument_size_in_bytes"] + result["output_size_in_bytes"]
                             - result["alias_size_in_bytes"] + result["temp_size_in_bytes"])
    return result


def xla_cost(compiled: Any) -> dict[str, float] | None:
    """XLA's flop and byte counts of one program (a scan's body counted once)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if isinstance(cost, list):
        cost = cost[0] if cost else None
    if not cost:
        return None
    return {k: float(cost[k]) for k in ("flops", "bytes accessed") if k in cost}


# Instructions that launch no work of their own on a GPU (bookkeeping, or
# control flow whose bodies are counted separately).
_NOT_LAUNCHED = frozenset({
    "parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while", "call",
    "conditional", "after-all", "partition-id", "replica-id", "opt-barrier",
})
# Instructions that run library code or copy memory: launched, but not compiled.
_LIBRARY_CALLS = frozenset({"copy", "convolution", "dot", "custom-call"})
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{$")  # unindented header
_OPCODE = re.compile(r"=\s.*?\s([a-z][a-z0-9\-]*)\(")


def _computations(hlo_text: str) -> tuple[str | None, dict[str, list[str]]]:
    """The optimized HLO's entry computation and every computation's lines."""
    bodies: dict[str, list[str]] = {}
    entry, current = None, None
    for line in hlo_text.splitlines():
        if current is None:
            match = _COMPUTATION.match(line)
            if match:
                current = match.group(1)
                bodies[current] = []
                if line.startswith("ENTRY"):
                    entry = current
        elif line.startswith("}"):
            current = None
        else:
            bodies[current].append(line)
    return entry, bodies


def _callees(line: str, key: str) -> list[str]:
    found = re.search(key + r"=\{?([^,}]+(?:,\s*%[\w.\-]+)*)\}?", line)
    return [name.strip().lstrip("%") for name in found.group(1).split(",")] if found else []


def executed_instructions(hlo_text: str) -> int:
    """Instructions one run of a compiled program executes, loops unrolled.

    Counted on the optimized HLO (``compiled.as_text()``): every instruction of
    the entry computation except bookkeeping (tuples, parameters, bitcasts...),
    plus, for each ``while`` with a known trip count, the trip count times its
    body and condition, recursively; a ``call`` counts its callee once and a
    ``conditional`` its largest branch.  On a GPU each counted instruction is
    about one kernel launch (a fusion is one), so this over the step time
    tells whether a step is bound by launches.  Fused computations are reached
    only through their fusion instruction and count as one.
    """
    entry, bodies = _computations(hlo_text)

    @functools.lru_cache(maxsize=None)
    def count(name: str) -> int:
        total = 0
        for line in bodies.get(name, ()):
            opcode = _OPCODE.search(line)
            if opcode is None:
                continue
            op = opcode.group(1)
            if op == "while":
                trips = re.search(r'known_trip_count":\{"n":"(\d+)"', line)
                per_trip = sum(count(c) for c in _callees(line, "condition")
                               + _callees(line, "body"))
                total += (int(trips.group(1)) if trips else 1) * per_trip
            elif op == "call":
                total += sum(count(c) for c in _callees(line, "to_apply"))
            elif op == "conditional":
                total += max((count(c) for c in _callees(line, "branch_computations")), default=0)
            elif op not in _NOT_LAUNCHED:
                total += 1
        return total

    return count(entry) if entry else 0


def _kernel_instructions(hlo_text: str) -> tuple[list[str], dict[str, list[str]]]:
    """The lines of the instructions XLA generates code for, each computation once.

    Every instruction :func:`executed_instructions` counts, less those that
    run library code or a memory copy (copies, convolutions, dots, custom
    calls), in every computation reachable from the entry (loop bodies and
    conditions, called computations, every branch) taken once, however often
    it runs.  Also returns every computation's lines.
    """
    entry, bodies = _computations(hlo_text)
    seen: set[str] = set()
    pending = [entry] if entry else []
    kernels = []
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        for line in bodies.get(name, ()):
            opcode = _OPCODE.search(line)
            if opcode is None:
                continue
            op = opcode.group(1)
            if op in ("while", "call", "conditional"):
                pending += [c for key in ("condition", "body", "to_apply", "branch_computations")
                            for c in _callees(line, key)]
            elif op not in _NOT_LAUNCHED and op not in _LIBRARY_CALLS:
                kernels.append(line)
    return kernels, bodies


def compiled_kernels(hlo_text: str) -> int:
    """Instructions the compiler generates code for: each counted once, loops not unrolled.

    On the CPU each is a kernel that XLA emits, unless an identical one was
    emitted already (:func:`distinct_kernels`).
    """
    return len(_kernel_instructions(hlo_text)[0])


_NAME = re.compile(r"%[\w.\-]+")
_METADATA = re.compile(r",\s*metadata=\{[^}]*\}")


def _canonical(text: str, names: dict[str, str]) -> str:
    """``text`` without metadata, instruction names numbered by first appearance."""
    return _NAME.sub(lambda m: names.setdefault(m.group(0), f"%{len(names)}"),
                     _METADATA.sub("", text.strip()))


def kernel_signatures(hlo_text: str) -> list[tuple[str, str, int, list[str]]]:
    """Every compiled kernel (:func:`compiled_kernels`) with what makes it distinct.

    Returns:
      per kernel: its line, its canonical code (instructions, shapes,
      constants and fused computation, names and metadata aside), its size
      (the lines of its fused computation, parameters included, or 1 for an
      unfused instruction) and the lines of its fused computations.
    """
    kernels, bodies = _kernel_instructions(hlo_text)

    @functools.lru_cache(maxsize=None)
    def body(name: str) -> tuple[str, int]:
        """A computation's canonical text (called ones included) and its instruction count."""
        names: dict[str, str] = {}
        lines = bodies.get(name, [])
        texts = [_canonical(line, names) for line in lines]
        for line in lines:
            for key in ("calls", "to_apply"):
                texts += [body(c)[0] for c in _callees(line, key)]
        return "\n".join(texts), len(lines)

    signatures = []
    for line in kernels:
        callees = _callees(line, "calls")
        called = [body(c) for c in callees]
        key = _canonical(line.split("=", 1)[1], {}) + "".join(text for text, _ in called)
        fused = [fused_line for c in callees for fused_line in bodies.get(c, [])]
        signatures.append((line, key, sum(size for _, size in called) or 1, fused))
    return signatures


def distinct_kernels(hlo_text: str) -> tuple[int, int]:
    """Compiled kernels that differ in code, and the instructions in them.

    Two kernels are the same when their instructions are, names and metadata
    aside: the same operations on the same shapes and layouts, the same
    constants, the same fused computation.  XLA's CPU backend emits and
    compiles an identical kernel once (a program of 200 identical fusions
    compiles 20 times faster than one of 200 fusions of different shapes), so
    its compile time follows this count and the kernels' size, not
    :func:`compiled_kernels`: cells or passes that repeat a computation on
    the same shapes add no compile time.

    Returns:
      (distinct kernels, instructions in them: a fusion counts the lines of
      its fused computation, parameters included, an unfused instruction 1).
    """
    sizes = {key: size for _, key, size, _ in kernel_signatures(hlo_text)}
    return len(sizes), sum(sizes.values())


class Config(NamedTuple):
    """One benchmarked configuration."""

    preset: str = "tiny"
    batch: int = 64
    dtype: str = "float32"
    active_fraction: float = 1.0
    depthwise: str = "shifts"
    steps: int = 30
    repeats: int = 3
    seeds: int = 1  # searches in one program (a leading seed axis, vmapped)
    devices: int = 1  # the seed x data mesh over this many devices
    layers: int = 0  # cells of the network; 0: the preset's


CONFIG_TYPES = {"preset": str, "batch": int, "dtype": str, "active_fraction": float,
                "depthwise": str, "steps": int, "repeats": int, "seeds": int, "devices": int,
                "layers": int}
CHOICES = {"preset": sorted(PRESETS), "dtype": list(DTYPES),
           "depthwise": ["shifts", "conv"]}


def parse_config(text: str, defaults: Config) -> Config:
    """``"batch=96,dtype=bfloat16"`` -> a :class:`Config`; other fields from ``defaults``.

    Raises:
      ValueError: naming the bad key or value.
    """
    values = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in CONFIG_TYPES:
            raise ValueError(f"--config {text!r}: expected key=value with keys {sorted(CONFIG_TYPES)}")
        try:
            values[key] = CONFIG_TYPES[key](value.strip())
        except ValueError:
            raise ValueError(f"--config {text!r}: {key} must be {CONFIG_TYPES[key].__name__}, "
                             f"got {value!r}") from None
        if key in CHOICES and values[key] not in CHOICES[key]:
            raise ValueError(f"--config {text!r}: {key} must be one of {CHOICES[key]}")
    config = defaults._replace(**values)
    if min(config.batch, config.steps, config.repeats, config.seeds, config.devices) < 1:
        raise ValueError(f"--config {text!r}: batch, steps, repeats, seeds and devices must "
                         "be >= 1")
    if not 0 < config.active_fraction <= 1:
        raise ValueError(f"--config {text!r}: active_fraction must be in (0, 1]")
    if config.layers < 0 or 0 < config.layers < 3:
        raise ValueError(f"--config {text!r}: layers must be 0 (the preset's) or >= 3")
    return config


class Prepared(NamedTuple):
    """A configuration traced and lowered, with its state and data on the device."""

    config: Config
    experts: tuple[str, ...]
    lowered: Any
    state: search_step.SearchState
    data: shards.DeviceShards
    orders: list[tuple[jax.Array, jax.Array]]  # (S, B) weight and arch indices, 8 steps' worth
    keys: jax.Array
    trace_s: float
    init_s: float  # building the initial search states (their own compile included)


def prepare(config: Config, seed: int = 0) -> Prepared:
    """Builds the search step of ``config`` exactly as the search does, and lowers it.

    Raises:
      MeshError: more devices than there are, or a batch that does not split.
    """
    spec = PRESETS[config.preset]
    ops = genotypes.XNAS_PRIMITIVES
    mesh = parallel.make_mesh(config.seeds, config.devices)
    parallel.check_batch(mesh, config.batch)
    model = SearchNetwork(
        num_classes=spec["num_classes"], channels=spec["channels"],
        layers=config.layers or spec["layers"], ops=ops, dtype=dtype_from_name(config.dtype),
        depthwise=config.depthwise,
    )
    total_steps = 10_000
    defaults = configs.SearchConfig()
    weight_tx = optimizers.weight_optimizer(
        search_step.weight_schedule(defaults, total_steps), momentum=defaults.momentum,
        weight_decay=defaults.weight_decay, grad_clip=defaults.grad_clip)
    method = search_step.xnas_method(len(ops), model.feedback_replicas(), total_steps,
                                     config.batch)
    seeds = list(range(seed, seed + config.seeds))
    alive = surviving_experts(config.active_fraction)
    mask = np.asarray([name in alive for name in ops], np.float32)
    started = time.perf_counter()
    state = jax.block_until_ready(search_step.create_search_states(
        prng.seed_keys(seeds), model, spec["image_shape"], weight_tx, method.tx, mesh))
    init_s = time.perf_counter() - started
    host = parallel.to_host(state)
    arch = jax.tree.map(lambda u: u * mask / np.sum(u * mask, -1, keepdims=True), host.arch)
    arch_opt = jax.vmap(method.tx.init)(arch)
    by_seed = parallel.seed_sharding(mesh)
    state = state._replace(arch=jax.tree.map(lambda a: parallel.global_array(a, by_seed), arch),
                           arch_opt_state=jax.tree.map(
                               lambda a: parallel.global_array(np.asarray(a), by_seed),
                               arch_opt))

    # Random uint8 images and labels, 16 batches' worth, rotated through.
    rng = np.random.default_rng(seed)
    pool = 16 * config.batch
    random_images = ArrayDataset(
        rng.integers(0, 256, (pool, *spec["image_shape"]), dtype=np.uint8),
        rng.integers(0, spec["num_classes"], pool, dtype=np.int32), spec["num_classes"], "random")
    one_shard = shards.ShardLayout(1, mesh.shape[parallel.DATA])
    data = shards.to_devices(shards.ShardedSplit(
        {0: random_images}, (pool,), np.zeros(1), np.ones(1), spec["num_classes"],
        tuple(spec["image_shape"]), ((0,),)), one_shard, mesh)
    split = parallel.batch_sharding(mesh, seeded=True)
    orders = []
    for _ in range(8):
        both = [np.stack([rng.permutation(pool)[:config.batch] for _ in seeds]) for _ in range(2)]
        orders.append(tuple(parallel.global_array(o.astype(np.int32), split) for o in both))
    preprocess = search_step.Preprocess(
        (0.5,) * spec["image_shape"][-1], (0.25,) * spec["image_shape"][-1], spec["crop"], True
    )
    lean = model.clone(normal_ops=alive, reduce_ops=alive)
    step = search_step.make_search_step(lean, weight_tx, method, preprocess, mesh=mesh)
    keys = parallel.global_array(prng.seed_keys([s + 1 for s in seeds]), by_seed)
    started = time.perf_counter()
    lowered = step.lower(state, data, *orders[0], keys)
    trace_s = time.perf_counter() - started
    return Prepared(config, alive, lowered, state, data, orders, keys, trace_s, init_s)


def compile_timed(prepared: Prepared) -> tuple[Any, float]:
    """XLA-compiles a lowered step; returns the executable and the seconds it took."""
    started = time.perf_counter()
    compiled = prepared.lowered.compile()
    return compiled, time.perf_counter() - started


def measure(prepared: Prepared, compiled: Any, compile_s: float) -> dict[str, Any]:
    """Times ``repeats`` x ``steps`` steps after one warm-up step; one JSON-able record."""
    config, state, data, orders, keys = (
        prepared.config, prepared.state, prepared.data, prepared.orders, prepared.keys
    )
    state, metrics = compiled(state, data, *orders[0], keys)  # warm-up
    jax.block_until_ready(state)
    times, losses = [], []
    for _ in range(config.repeats):
        started = time.perf_counter()
        for i in range(config.steps):
            state, metrics = compiled(state, data, *orders[i % 8], keys)
        jax.block_until_ready(state)
        times.append((time.perf_counter() - started) / config.steps)
        losses.append(float(np.mean(parallel.to_host(metrics["val_loss"]))))
    step_s = statistics.median(times)
    if not np.all(np.isfinite(losses)):
        raise RuntimeError(f"non-finite loss {losses} in {config}")
    ops = genotypes.XNAS_PRIMITIVES
    text = compiled.as_text()
    return {
        "preset": config.preset,
        "layers": config.layers or PRESETS[config.preset]["layers"],
        "batch": config.batch,
        "dtype": config.dtype,
        "depthwise": config.depthwise,
        "seeds": config.seeds,
        "devices": config.devices,
        "active_fraction": len(prepared.experts) / len(ops),
        "experts_computed": list(prepared.experts),
        "device": jax.devices()[0].device_kind,
        "backend": jax.default_backend(),
        "init_s": round(prepared.init_s, 3),
        "trace_s": round(prepared.trace_s, 3),
        "compile_s": round(compile_s, 3),
        "first_call_s": round(prepared.trace_s + compile_s, 3),
        "step_ms": round(1000 * step_s, 3),
        "step_ms_repeats": [round(1000 * t, 3) for t in times],
        # A train and a val batch per step and per seed.
        "images_per_s": round(2 * config.batch * config.seeds / step_s, 1),
        "peak_memory_bytes": peak_memory_bytes(),
        "xla_memory": xla_memory_bytes(compiled),
        "xla_cost": xla_cost(compiled),
        "executed_instructions": executed_instructions(text),
        "compiled_kernels": compiled_kernels(text),
        **dict(zip(("distinct_kernels", "distinct_kernel_instructions"), distinct_kernels(text))),
        "host_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "val_loss_per_repeat": [round(v, 4) for v in losses],
        "steps": config.steps,
        "repeats": config.repeats,
        "jax": jax.__version__,
        "python": platform.python_version(),
    }


def emit(record: dict[str, Any], out: str | None) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


def run(configs: list[Config], out: str | None, cache_hit: bool = False) -> None:
    """Measures ``configs`` one after another, emitting each record when measured.

    Configurations are compiled one at a time: on the H200 machine, compiling
    six at once in threads was slower than one after another (none finished
    in the time one takes alone), and a lone compile is the figure users see.
    With ``cache_hit`` the first configuration is built, traced and compiled
    once more at the end: with a persistent cache enabled that is a cache load.
    """
    for config in configs:
        prepared = prepare(config)
        emit(measure(prepared, *compile_timed(prepared)), out)
    if cache_hit:
        # A fresh jit of the same step: traced again, then loaded from the cache.
        again = prepare(configs[0])
        _, compile_s = compile_timed(again)
        first = again.config
        emit({"preset": first.preset, "batch": first.batch, "dtype": first.dtype,
              "depthwise": first.depthwise,
              "device": jax.devices()[0].device_kind, "cache_hit_trace_s": round(again.trace_s, 3),
              "cache_hit_compile_s": round(compile_s, 3), "jax": jax.__version__}, out)


def main(argv: Sequence[str] | None = None) -> int:
    """Measures the configurations of the command line; 0, or exit status 2 on bad input."""
    parser = experiments.argument_parser(__spec__.name, __doc__)
    parser.add_argument("--preset", nargs="+", default=["tiny"], choices=sorted(PRESETS))
    parser.add_argument("--batch", nargs="+", type=int, default=[64])
    parser.add_argument("--dtype", nargs="+", default=["float32"], choices=list(DTYPES))
    parser.add_argument("--active-fraction", nargs="+", type=float, default=[1.0])
    parser.add_argument("--depthwise", nargs="+", default=["shifts"], choices=["shifts", "conv"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1],
                        help="searches in one program (vmapped over a leading seed axis)")
    parser.add_argument("--devices", nargs="+", type=int, default=[1],
                        help="devices of the seed x data mesh (on a CPU: set XLA_FLAGS="
                             "--xla_force_host_platform_device_count=N)")
    parser.add_argument("--steps", type=int, default=30, help="steps per repetition")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions (median taken)")
    parser.add_argument(
        "--config", action="append", default=[], metavar="KEY=VALUE,...",
        help="an explicit configuration instead of the cross product of the flags above, "
             "e.g. 'batch=256,steps=10' (keys: " + ", ".join(CONFIG_TYPES) + "; others "
             "take the first value of their flag); repeat for several",
    )
    parser.add_argument("--out", default=None, help="also append the JSON lines to this file")
    parser.add_argument("--compilation-cache", default=None,
                        help="persistent compilation cache (compile_s then measures a cache hit)")
    parser.add_argument("--cache-hit", action="store_true",
                        help="finally lower and compile the first configuration again "
                             "(a cache load with --compilation-cache)")
    args = parser.parse_args(argv)
    defaults = Config(args.preset[0], args.batch[0], args.dtype[0], args.active_fraction[0],
                      args.depthwise[0], args.steps, args.repeats, seeds=args.seeds[0],
                      devices=args.devices[0])
    try:
        if args.config:
            configs = [parse_config(text, defaults) for text in args.config]
        else:
            configs = [
                defaults._replace(preset=p, batch=b, dtype=d, active_fraction=f, depthwise=w,
                                  seeds=n, devices=k)
                for p in args.preset for b in args.batch for d in args.dtype
                for f in args.active_fraction for w in args.depthwise for n in args.seeds
                for k in args.devices
            ]
            for config in configs:
                parse_config("", config)  # validates the numbers
    except ValueError as error:
        parser.error(str(error))
    if args.cache_hit and not args.compilation_cache:
        parser.error("--cache-hit needs --compilation-cache")
    if args.compilation_cache:
        try:
            cli.enable_compilation_cache(args.compilation_cache)
        except ValueError as error:
            parser.error(str(error))
    try:
        run(configs, args.out, args.cache_hit)
    except parallel.MeshError as error:
        parser.error(str(error))
    return 0


if __name__ == "__main__":
    sys.exit(main())
