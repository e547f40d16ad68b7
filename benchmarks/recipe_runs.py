"""Short CPU runs of the two CIFAR recipes, and the cost of AutoAugment in the step.

``python -m xnas_jax.train --recipe xnas`` (XNAS section 4.2: power-cosine
cycles, Nesterov, label smoothing, AutoAugment, ...) and ``--recipe darts``
(DARTS's recipe, XNAS-Plain) train the XNAS cell at reduced width and depth
on a subset of CIFAR-10 (``train.zip`` and ``test.zip`` in ``--data-dir``: by
default ``$XNAS_DATA_DIR``, else ``data/cifar10_jpeg``) for a few epochs; everything
else (data, seed, network) is the same.  Then the training step of that
network is compiled with and without AutoAugment and measured: XLA's
executed instructions (as ``benchmarks.bench_search`` counts them) and the
median step time.

A few epochs of a 1,500-epoch recipe say nothing about final accuracy; the
runs check that each recipe trains end to end and give its images per
second.  Run: ``python -m benchmarks.recipe_runs [--data-dir DIR] [--work-dir DIR]``.
"""

from __future__ import annotations

import functools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import experiments
from benchmarks.bench_search import executed_instructions
from xnas_jax import train, train_step

NAME = "recipe_runs"
RUN_FLAGS = ["--genotype", "XNAS", "--channels", "8", "--layers", "8",
             "--max-train-examples", "3000", "--max-test-examples", "1000", "--epochs", "4",
             "--seed", "0", "--no-progress"]  # fmt: skip


def run_recipe(recipe: str, data: Path, work_dir: Path) -> dict[str, Any]:
    """One short training run; its results.json (reused when already there)."""
    out = work_dir / recipe
    results = out / train.RESULTS_FILE
    if not results.exists():
        flags = ["--recipe", recipe, "--dataset", "image_folder",
                 "--data-dir", str(data / "train.zip"), "--test-data-dir", str(data / "test.zip"),
                 "--out-dir", str(out), *RUN_FLAGS]
        if (out / train.CHECKPOINT_DIR).is_dir():
            flags.append("--resume")
        print(f"--recipe {recipe}: training into {out}", flush=True)
        if train.main(flags) != 0:
            raise SystemExit(f"the {recipe} run failed")
    return json.loads(results.read_text())


def step_cost(autoaugment: bool, steps: int = 5, repeats: int = 3) -> dict[str, Any]:
    """The xnas recipe's training step at the runs' size, with or without AutoAugment."""
    flags = ["--recipe", "xnas", "--dataset", "cifar10", "--channels", "8", "--layers", "8",
             "--epochs", "4"] + ([] if autoaugment else ["--no-autoaugment"])
    config, _ = train.parse_args(flags)
    setup = train_step.resolve_setup(config, (32, 32, 3), 10)
    model = train_step.build_model(config, setup)
    tx = train_step.create_optimizer(config, train_step.learning_rate_schedule(config, 31))
    state = train_step.create_train_state(train.prng_key(0), model, (32, 32, 3), tx)
    rng = np.random.default_rng(0)
    batches = [{"image": jnp.asarray(rng.integers(0, 256, (96, 32, 32, 3), dtype=np.uint8)),
                "label": jnp.asarray(rng.integers(0, 10, 96, dtype=np.int32))} for _ in range(2)]
    step = jax.jit(functools.partial(train_step.train_step, config=config, setup=setup,
                                     steps_per_epoch=31, mean=jnp.full(3, 0.47),
                                     std=jnp.full(3, 0.25)), donate_argnums=0)
    started = time.perf_counter()
    compiled = step.lower(state, batches[0]).compile()
    compile_s = time.perf_counter() - started
    state, _ = compiled(state, batches[0])  # warm-up
    jax.block_until_ready(state)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for i in range(steps):
            state, metrics = compiled(state, batches[i % 2])
        jax.block_until_ready(state)
        times.append((time.perf_counter() - started) / steps)
    return {"autoaugment": autoaugment, "batch": 96, "compile_s": round(compile_s, 2),
            "step_ms": round(1000 * statistics.median(times), 1),
            "step_ms_repeats": [round(1000 * t, 1) for t in times],
            "executed_instructions": executed_instructions(compiled.as_text())}


def main(argv: Sequence[str] | None = None) -> int:
    """Runs (or reuses) the two recipes and measures the step; writes ``NAME.json``."""
    parser = experiments.argument_parser(__spec__.name, __doc__)
    experiments.add_data_dir(parser)
    parser.add_argument("--work-dir", default="runs/recipe_runs",
                        help="where the runs write, reused and resumed (default: %(default)s)")
    experiments.add_out(parser, "where the JSON goes")
    args = parser.parse_args(argv)
    experiments.data_files(args.data_dir, "train.zip", "test.zip")
    data = Path(args.data_dir)
    runs = {}
    for recipe in ("darts", "xnas"):
        results = run_recipe(recipe, data, Path(args.work_dir))
        runs[recipe] = {k: results[k] for k in (
            "test_accuracy", "test_loss", "train_images_per_s", "eval_images_per_s",
            "compile_time_s", "run_time_s", "params", "epochs")}
        runs[recipe]["recipe"] = {k: results["config"][k] for k in sorted(train.RECIPE_FIELDS)}
    cost = [step_cost(True), step_cost(False)]
    result = {
        "setup": {"flags": RUN_FLAGS, "data": "cifar10_jpeg train.zip / test.zip",
                  "device": jax.devices()[0].device_kind, "jax": jax.__version__},
        "runs": runs,
        "autoaugment_step_cost": cost,
    }
    out = Path(args.out) / f"{NAME}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    for recipe, run in runs.items():
        print(f"--recipe {recipe}: test accuracy {100 * run['test_accuracy']:.1f}% after "
              f"{run['epochs']} epochs, {run['train_images_per_s']:.0f} img/s", flush=True)
    for row in cost:
        print(f"step with autoaugment={row['autoaugment']}: {row['step_ms']} ms, "
              f"{row['executed_instructions']} executed instructions", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
