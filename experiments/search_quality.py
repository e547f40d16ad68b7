"""Search quality against the exhaustive NB201 table: does the search pick good cells?

Each method searches the NB201 space (3 nodes, 125 cells) on the table's own
training images (``--train-per-class``, the same class-balanced subset and
resolution as :mod:`experiments.groundtruth`), with several seeds; the cell
it returns is looked up in the table (``groundtruth_nb201_cifar10.json``):

* its true accuracy (the table's mean over the table's seeds),
* its rank percentile among all cells (100: the best cell),
* its regret: the best cell's accuracy minus its own,
* the search cost (seconds on this machine, and images through a network).

Methods:

* ``xnas``: XNAS (Algorithm 1, eta*, wipeout factor zeta = 1);
* ``xnas_zeta<z>``: XNAS with a smaller wipeout factor (more aggressive);
* ``darts``: the first-order DARTS baseline on the same supernet;
* ``random``: random search with the same budget of training images: it
  trains ``--random-cells`` cells drawn at random, each on the search's
  weight half for its share of the budget, scores them on the
  architecture half, and returns the best.

The searches are :func:`xnas_jax.search.train_and_evaluate`, one run folder
each; the random search trains the cells with the table's own program
(:func:`experiments.groundtruth.cell_programs`).  Every finished (method,
seed) is kept in ``<out>.partial.jsonl``, so an interrupted run resumes.

The searches read CIFAR-10 from ``--data-dir`` (``train.zip``; by default
``$XNAS_DATA_DIR``, else ``data/cifar10_jpeg`` in the current directory),
the data the table was computed on.

Run: ``python -m experiments.search_quality [--data-dir DIR] [--seeds 8]
[--epochs 10]``; writes ``experiments/results/search_quality_nb201_cifar10.json``
and ``search_quality_nb201_cifar10.png``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

import experiments
from experiments import groundtruth
from xnas_jax import cli, configs, plotting, search
from xnas_jax.spaces.nb201 import network as nb201
from xnas_jax.data import order

RESULTS = experiments.RESULTS
TABLE = RESULTS / "groundtruth_nb201_cifar10.json"


@dataclasses.dataclass(frozen=True)
class QualityConfig:
    """The searches' settings (the data and network follow the table's config; ``data_dir``
    says where the table's dataset lies, and is not part of the results' identity)."""

    seeds: int = 8
    epochs: int = 10
    batch_size: int = 64
    smaller_zeta: float = 0.25
    random_cells: int = 4
    methods: tuple[str, ...] = ("xnas", "xnas_zeta", "darts", "random")
    work_dir: str = "runs/search_quality"
    data_dir: str | None = dataclasses.field(default_factory=experiments.default_data_dir)


def load_table(path: Path) -> dict[str, Any]:
    """The NB201 table, checked to be one.

    Raises:
      ValueError: a missing file, or one that is not an NB201 table.
    """
    if not path.exists():
        raise ValueError(f"no table at {path}: write it with python -m experiments.groundtruth")
    table = json.loads(path.read_text())
    if table.get("space") != "nb201" or "cells" not in table:
        raise ValueError(f"{path} is not an nb201 table (space {table.get('space')!r})")
    nodes = table["nodes"]
    if len(table["cells"]) != len(nb201.all_genotypes(nodes)):
        raise ValueError(f"{path} holds {len(table['cells'])} cells, the nb201 space of "
                         f"{nodes} nodes has {len(nb201.all_genotypes(nodes))}")
    return table


def score(table: dict[str, Any], ops: Sequence[str]) -> dict[str, float]:
    """A returned cell's true accuracy, rank percentile and regret in the table."""
    accuracies = np.array([c["mean_accuracy"] for c in table["cells"]])
    index = {tuple(c["ops"]): k for k, c in enumerate(table["cells"])}
    if tuple(ops) not in index:
        raise nb201.SpaceError(f"{'|'.join(ops)} is not a cell of the table")
    accuracy = float(accuracies[index[tuple(ops)]])
    return {
        "accuracy": accuracy,
        # The share of cells it is at least as good as (100: the best cell).
        "percentile": float(100 * np.mean(accuracies <= accuracy)),
        "regret": float(accuracies.max() - accuracy),
    }


def search_config(proxy: dict[str, Any], quality: QualityConfig, method: str, seed: int,
                  out_dir: Path) -> configs.SearchConfig:
    """The search of one method and seed on the table's data and network (``proxy``: the
    table's config)."""
    optimizer = "darts" if method == "darts" else "xnas"
    return configs.SearchConfig(
        space="nb201", dataset=proxy["dataset"], data_dir=quality.data_dir,
        cache_dir=groundtruth.TableConfig().cache_dir,
        train_per_class=proxy["train_per_class"], downsample=proxy["downsample"],
        crop_padding=proxy["crop_padding"], channels=proxy["channels"],
        layers=proxy["cells_per_stage"], nodes=proxy["nodes"], epochs=quality.epochs,
        batch_size=quality.batch_size, seed=seed, optimizer=optimizer,
        wipeout_factor=quality.smaller_zeta if method == "xnas_zeta" else 1.0,
        out_dir=str(out_dir), progress=False,
        compilation_cache=str(Path(quality.work_dir) / "jax_cache"))


def run_search(proxy, quality, method, seed) -> dict[str, Any]:
    """One search: its returned cell and cost."""
    out_dir = Path(quality.work_dir) / method / f"seed_{seed}"
    config = search_config(proxy, quality, method, seed, out_dir)
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        record = search.train_and_evaluate(config)
    seconds = time.perf_counter() - started
    genotype = json.loads((out_dir / "genotype.json").read_text())
    return {"ops": genotype["ops"], "seconds": round(seconds, 1),
            "images": 2 * record["step"] * quality.batch_size,
            "final_val_accuracy": record["val_accuracy"]}


def run_random(proxy, quality, seed, search_images: int) -> dict[str, Any]:
    """Random search: ``random_cells`` cells, each trained on the weight half for its share
    of ``search_images``, scored on the architecture half; the best is returned."""
    proxy = groundtruth.TableConfig(**{k: (tuple(v) if isinstance(v, list) else v)
                                       for k, v in proxy.items()
                                       if k in {f.name for f in
                                                dataclasses.fields(groundtruth.TableConfig)}}
                                    | {"seeds": (seed,), "data_dir": quality.data_dir})
    started = time.perf_counter()
    data = groundtruth.load_proxy(proxy)
    weight_half, arch_half = order.search_split_indices(len(data.train_labels), seed)
    halves = data._replace(
        train_images=data.train_images[weight_half], train_labels=data.train_labels[weight_half],
        test_images=data.train_images[arch_half], test_labels=data.train_labels[arch_half])
    steps = max(search_images // (quality.random_cells * quality.batch_size), 1)
    per_epoch = len(weight_half) // quality.batch_size
    epochs = max(round(steps / per_epoch), 1)
    proxy = dataclasses.replace(proxy, epochs=epochs, batch_size=quality.batch_size)
    cells = nb201.all_genotypes(proxy.nodes)
    rng = np.random.default_rng(seed)
    drawn = [cells[k] for k in rng.choice(len(cells), quality.random_cells, replace=False)]
    scores = [groundtruth.train_cell(proxy, halves, g)[0] for g in drawn]
    best = drawn[int(np.argmax(scores))]
    return {"ops": list(best), "seconds": round(time.perf_counter() - started, 1),
            "images": quality.random_cells * epochs * per_epoch * quality.batch_size,
            "final_val_accuracy": float(max(scores)),
            "drawn": [list(g) for g in drawn], "drawn_val_accuracy": scores}


def summarize(table, results) -> dict[str, Any]:
    """Per method: the mean and spread of the picks' accuracy, percentile and regret."""
    summary = {}
    for method, runs in results.items():
        scores = [r["score"] for r in runs]
        summary[method] = {
            "seeds": len(runs),
            **{f"{key}_mean": float(np.mean([s[key] for s in scores]))
               for key in ("accuracy", "percentile", "regret")},
            "accuracy_std": float(np.std([s["accuracy"] for s in scores])),
            "best_cell_found": sum(s["regret"] == 0 for s in scores),
            "seconds_mean": float(np.mean([r["seconds"] for r in runs])),
            "images_mean": float(np.mean([r["images"] for r in runs])),
            "distinct_cells": len({tuple(r["ops"]) for r in runs}),
        }
    return summary


def run(quality: QualityConfig, table_path: Path, out: Path) -> dict[str, Any]:
    """Runs every (method, seed) not done yet, then scores them against the table.

    The searches need only the table's config (the default
    :class:`groundtruth.TableConfig` when the table is not written yet), so
    they can run while the table is being computed.
    """
    proxy = (load_table(table_path)["config"] if table_path.exists()
             else groundtruth._fingerprint(groundtruth.TableConfig()))
    partial = out.with_suffix(".partial.jsonl")
    partial.parent.mkdir(parents=True, exist_ok=True)
    fingerprint = json.loads(json.dumps({**dataclasses.asdict(quality), "table": proxy}))
    fingerprint.pop("work_dir"), fingerprint.pop("data_dir")
    done: dict[tuple[str, int], dict[str, Any]] = {}
    if partial.exists():
        for line in partial.read_text().splitlines():
            record = json.loads(line)
            if record["config"] == fingerprint:
                done[(record["method"], record["seed"])] = record
    search_images = None
    for method in quality.methods:
        for seed in range(quality.seeds):
            if (method, seed) in done:
                continue
            if method == "random":
                if search_images is None:  # the budget: what an XNAS search used
                    search_images = next((r["images"] for (m, _), r in done.items()
                                          if m == "xnas"), None)
                    if search_images is None:
                        raise ValueError("random search takes its budget from xnas: run "
                                         "xnas first")
                result = run_random(proxy, quality, seed, search_images)
            else:
                result = run_search(proxy, quality, method, seed)
            result.update(config=fingerprint, method=method, seed=seed)
            done[(method, seed)] = result
            with partial.open("a") as f:
                f.write(json.dumps(result) + "\n")
            print(f"{method} seed {seed}: {nb201.genotype_string(result['ops'], proxy['nodes'])}"
                  f" in {result['seconds']:.0f} s", flush=True)
    table = load_table(table_path)
    if table["config"] != proxy:
        raise ValueError(f"{table_path} was computed with other settings than the searches")
    results = {m: [dict(done[(m, s)], score=score(table, done[(m, s)]["ops"]))
                   for s in range(quality.seeds)] for m in quality.methods}
    labels = {"xnas": "XNAS (zeta 1)", "xnas_zeta": f"XNAS (zeta {quality.smaller_zeta:g})",
              "darts": "DARTS", "random": f"random ({quality.random_cells} cells)"}
    report = {
        "table": str(table_path.name),
        "table_best_accuracy": table["best_accuracy"],
        "table_median_accuracy": table["median_accuracy"],
        "config": fingerprint,
        "labels": labels,
        "summary": summarize(table, results),
        "runs": {m: [{k: r[k] for k in r if k != "config"} for r in runs]
                 for m, runs in results.items()},
    }
    out.write_text(json.dumps(report, indent=1) + "\n")
    plotting.plot_search_quality(
        [c["mean_accuracy"] for c in table["cells"]],
        {labels[m]: [r["score"]["accuracy"] for r in runs] for m, runs in results.items()},
        out.with_suffix(".png"))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """The searches and their report; 0, or exit status 2 on bad input."""
    parser = experiments.argument_parser(__spec__.name, __doc__)
    defaults = QualityConfig()
    experiments.add_data_dir(parser)
    for flag, value in (("--seeds", defaults.seeds), ("--epochs", defaults.epochs),
                        ("--batch-size", defaults.batch_size),
                        ("--random-cells", defaults.random_cells)):
        parser.add_argument(flag, type=int, default=value, help="(default: %(default)s)")
    parser.add_argument("--smaller-zeta", type=float, default=defaults.smaller_zeta,
                        help="(default: %(default)s)")
    parser.add_argument("--methods", default=",".join(defaults.methods),
                        help="comma-separated (default: %(default)s)")
    parser.add_argument("--work-dir", default=defaults.work_dir,
                        help="where the searches write (default: %(default)s)")
    parser.add_argument("--table", default=str(TABLE), help="the NB201 table (default: "
                        "%(default)s)")
    parser.add_argument("--out", default=str(RESULTS / "search_quality_nb201_cifar10.json"),
                        help="the report (default: %(default)s)")
    args = parser.parse_args(argv)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    unknown = [m for m in methods if m not in defaults.methods]
    if unknown:
        cli.fail(f"unknown method {unknown[0]!r}; the methods are {', '.join(defaults.methods)}")
    quality = QualityConfig(args.seeds, args.epochs, args.batch_size, args.smaller_zeta,
                            args.random_cells, methods, args.work_dir, args.data_dir)
    try:
        report = run(quality, Path(args.table), Path(args.out))
    except (ValueError, nb201.SpaceError) as error:
        cli.fail(str(error))
    print(json.dumps(report["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
