"""An exhaustive, locally computed table of NAS-Bench-201 cells on a CIFAR-10 proxy.

Every cell of the NB201 space with ``nodes`` nodes (3 nodes: 3 edges, 5^3 =
125 cells) is trained from scratch on a class-balanced subset of CIFAR-10
(``train.zip`` and ``test.zip`` in ``--data-dir``: by default
``$XNAS_DATA_DIR``, else ``data/cifar10_jpeg`` in the current directory) and
scored on held-out test images, with several seeds.  A seed fixes the initial
weights (the same for every cell: common random numbers sharpen the
comparison), the data order and the augmentation.

Each cell trains as its own network (only its ops' weights), which computes
what the supernet computes with one-hot mixture weights: the NB201 tests
check that the two give the same loss and gradients.  It trains with the
training step of ``python -m xnas_jax.train`` (:func:`xnas_jax.train_step.train_step`,
NAS-Bench-201's recipe with the table's settings, :func:`train_config`) on
the network that training builds through the nb201 space.  Cells are compiled one
by one (about 4 s each here) because every shared program measured on this
CPU (a run-time switch between experts, a vmap over cells or seeds) steps
several times slower than the cell's own.

The table's own noise is Kendall's tau between the seeds' accuracies: a
search can only be scored against a table that ranks cells consistently.

Run: ``python -m experiments.groundtruth [--data-dir DIR] [--epochs N] ...``; it
prints a progress bar, and an interrupted run resumes from the cells it
finished (one line per cell in ``<out>.partial.jsonl``).  Writes
``experiments/results/groundtruth_nb201_cifar10.json``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

import experiments
from xnas_jax import cli, configs, train_step
from xnas_jax.configs import TrainConfig
from xnas_jax.spaces.nb201 import network as nb201
from xnas_jax.data import datasets, order, specs
from xnas_jax.spaces.ops import count_params

RESULTS = experiments.RESULTS


@dataclasses.dataclass(frozen=True)
class TableConfig:
    """The proxy: data, network and training recipe of every cell."""

    data_dir: str | None = dataclasses.field(default_factory=experiments.default_data_dir)
    dataset: str = "cifar10"
    train_per_class: int = 400
    test_per_class: int = 200
    downsample: int = 2
    channels: int = 8
    cells_per_stage: int = 1
    nodes: int = 3
    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    crop_padding: int = 2
    seeds: tuple[int, ...] = (0, 1)
    cells: tuple[str, ...] = ()  # genotype strings: only these (a small table); () every cell
    cache_dir: str | None = str(Path.home() / ".cache" / "xnas_jax")


class ProxyData(NamedTuple):
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    num_classes: int


def load_proxy(config: TableConfig) -> ProxyData:
    """The class-balanced train and held-out test subsets (fixed: seed 0), downsampled."""
    parts = []
    for split, per_class in (("train", config.train_per_class), ("test", config.test_per_class)):
        dataset = datasets.load_dataset(config.dataset, split, config.data_dir,
                                        cache_dir=config.cache_dir)
        parts.append(order.downsample(order.balanced_subset(dataset, per_class, seed=0),
                                    config.downsample))
    train, test = parts
    mean, std = specs.channel_stats(train.images)
    return ProxyData(train.images, train.labels, test.images, test.labels, mean, std,
                     train.num_classes)


def train_config(config: TableConfig, genotype: Sequence[str], seed: int) -> TrainConfig:
    """One cell's proxy training as a :mod:`xnas_jax.train` config.

    NAS-Bench-201's recipe (``nb201``: Nesterov SGD, cosine to 0, no gradient
    clip, no cutout, auxiliary tower or drop-path) with the table's sizes,
    epochs, batch, rate, momentum, weight decay and crop padding; flips on
    every dataset, as the table always did.
    """
    return configs.recipe_config(
        "nb201", genotype=nb201.genotype_string(genotype, config.nodes), dataset=config.dataset,
        channels=config.channels, layers=config.cells_per_stage, epochs=config.epochs,
        batch_size=config.batch_size, learning_rate=config.learning_rate,
        momentum=config.momentum, weight_decay=config.weight_decay,
        crop_padding=config.crop_padding, flip=True, seed=seed)


class CellPrograms(NamedTuple):
    """The programs that train and score one cell (:func:`cell_programs`)."""

    init: Callable[[Any], train_step.TrainState]  # a seed's supernet variables -> the cell's state
    steps: dict[int, Callable]  # seed -> train_step.train_step, jitted (the seed draws its augmentation)
    evaluate: Callable  # train_step.eval_step, jitted
    steps_per_epoch: int


def cell_programs(config: TableConfig, data: ProxyData, genotype: Sequence[str]) -> CellPrograms:
    """The programs of one cell's network: :func:`xnas_jax.train_step.train_step` and
    :func:`xnas_jax.train_step.eval_step`, the steps of ``python -m xnas_jax.train``.

    The network is the one training builds through the nb201 space
    (:func:`xnas_jax.train_step.build_model`): it holds only the cell's own ops,
    the same function and gradients as the supernet with one-hot mixture
    weights (tested).  One compiled program per cell and seed (the training
    step draws its augmentation from the config's seed): on this CPU a
    program that switches between experts at run time, or vmaps over cells or
    seeds, runs several times slower than the cell's own program (measured in
    BENCHMARKS.md).  Flax derives each parameter's initial value from the
    seed and the parameter's path, so every cell of a seed starts from the
    same stem, reduction blocks and classifier, and an op starts from the same
    weights wherever it appears (common random numbers).
    """
    image_shape = tuple(int(d) for d in data.train_images.shape[1:])
    steps_per_epoch = len(data.train_labels) // config.batch_size
    runs = {seed: train_config(config, genotype, seed) for seed in config.seeds}
    first = runs[config.seeds[0]]
    setup = train_step.resolve_setup(first, image_shape, data.num_classes)
    model = train_step.build_model(first, setup)
    tx = train_step.create_optimizer(first, train_step.learning_rate_schedule(first, steps_per_epoch))
    mean, std = jnp.asarray(data.mean), jnp.asarray(data.std)

    dummy = jnp.zeros((1, *image_shape), jnp.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), dummy, train=False))

    def init(supernet_variables: Any) -> train_step.TrainState:
        """The cell's initial state: its parameters taken from the seed's supernet."""
        taken = {k: nb201.take_like(supernet_variables[k], shapes[k])
                 for k in ("params", "batch_stats")}
        taken = jax.tree.map(jnp.copy, taken)  # the step donates them
        state = train_step.TrainState.create(apply_fn=model.apply, params=taken["params"], tx=tx,
                                        batch_stats=taken["batch_stats"])
        return state.replace(step=jnp.zeros((), jnp.int32))  # as train_step.create_train_state

    steps = {seed: jax.jit(functools.partial(
        train_step.train_step, config=run_config, setup=setup, steps_per_epoch=steps_per_epoch,
        mean=mean, std=std), donate_argnums=0) for seed, run_config in runs.items()}
    evaluate = jax.jit(functools.partial(train_step.eval_step, mean=mean, std=std))
    return CellPrograms(init, steps, evaluate, steps_per_epoch)


def _test_batches(data: ProxyData) -> list[dict[str, np.ndarray]]:
    """The test images in batches of 500, for :func:`xnas_jax.train_step.eval_step`."""
    return [{"image": data.test_images[start:start + 500],
             "label": data.test_labels[start:start + 500],
             "mask": np.ones(len(data.test_labels[start:start + 500]), bool)}
            for start in range(0, len(data.test_labels), 500)]


@functools.lru_cache(maxsize=4)
def _supernet_init(config: TableConfig, image_shape: tuple[int, ...], num_classes: int,
                   seed: int) -> Any:
    model = nb201.NB201Network(num_classes, config.channels, config.cells_per_stage,
                               config.nodes)
    return jax.jit(model.init, static_argnames="train")(
        jax.random.key(seed), jnp.zeros((1, *image_shape), jnp.float32), train=False)


def supernet_init(config: TableConfig, data: ProxyData, seed: int) -> Any:
    """The supernet's initial variables for ``seed``, from which every cell takes its own.

    Flax draws each parameter from the seed and the parameter's path, so a
    cell's network initialized on its own holds the same values (tested):
    taking them from one supernet init saves compiling an init per cell.
    """
    return _supernet_init(config, tuple(data.train_images.shape[1:]), data.num_classes, seed)


def compiled_programs(config: TableConfig, data: ProxyData, genotype: Sequence[str]):
    """:func:`cell_programs`, compiled (by one throw-away step and evaluation).

    :func:`run` calls it for the next cell in a thread while the current
    cell trains: XLA's compiler is single-threaded and releases the GIL.
    """
    programs = cell_programs(config, data, genotype)
    size = config.batch_size
    batch = {"image": data.train_images[:size], "label": data.train_labels[:size]}
    for step in programs.steps.values():
        state, _ = step(programs.init(supernet_init(config, data, config.seeds[0])), batch)
    jax.block_until_ready(programs.evaluate(state, _test_batches(data)[0]))
    return programs


def train_cell(config: TableConfig, data: ProxyData, genotype: Sequence[str],
               on_step: Callable[[], None] | None = None,
               programs: CellPrograms | None = None) -> list[float]:
    """The test accuracy of one cell trained from scratch, per seed of ``config``.

    A seed fixes the initial weights, the data order and the augmentation
    (:func:`xnas_jax.train_step.train_step` draws it from the seed and the step).
    """
    programs = programs or cell_programs(config, data, genotype)
    accuracies = []
    for seed in config.seeds:
        state = programs.init(supernet_init(config, data, seed))
        for epoch in range(config.epochs):
            rows = order.batch_indices(
                order.epoch_permutation(seed, epoch, len(data.train_labels)),
                config.batch_size)[:programs.steps_per_epoch]
            for batch in rows:
                state, _ = programs.steps[seed](state, {"image": data.train_images[batch],
                                                        "label": data.train_labels[batch]})
                if on_step:
                    on_step()
        correct = sum(int(programs.evaluate(state, batch)["correct"])
                      for batch in _test_batches(data))
        accuracies.append(correct / len(data.test_labels))
    return accuracies


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b between two score lists (ties counted as neither)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    da = np.sign(a[:, None] - a[None, :])
    db = np.sign(b[:, None] - b[None, :])
    upper = np.triu_indices(len(a), 1)
    da, db = da[upper], db[upper]
    concordant = np.sum(da * db)
    denominator = np.sqrt(np.sum(da != 0) * np.sum(db != 0))
    return float(concordant / denominator) if denominator else float("nan")


def param_counts(genotype: Sequence[str], nodes: int, channels: int, cells_per_stage: int,
                 num_classes: int, image_shape: tuple[int, ...]) -> int:
    """Parameters of one cell's network (only its own ops' weights)."""
    model = nb201.NB201Network(num_classes, channels, cells_per_stage, nodes,
                               genotype=tuple(genotype))
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                               jnp.zeros((1, *image_shape)), train=False))
    return count_params(shapes["params"])


def _fingerprint(config: TableConfig) -> dict[str, Any]:
    """The settings that change a table entry (not where the data lies)."""
    fingerprint = dataclasses.asdict(config)
    fingerprint.pop("cache_dir"), fingerprint.pop("data_dir")
    return json.loads(json.dumps(fingerprint))


def run(config: TableConfig, out: Path, progress: bool = True) -> dict[str, Any]:
    """Trains every cell (resuming the cells already done) and writes the table to ``out``."""
    started = time.perf_counter()
    data = load_proxy(config)
    print(f"proxy: {len(data.train_labels)} train / {len(data.test_labels)} test images "
          f"{'x'.join(map(str, data.train_images.shape[1:]))} "
          f"(loaded in {time.perf_counter() - started:.0f} s)", flush=True)
    cells = ([nb201.parse_genotype(text) for text in config.cells] if config.cells
             else nb201.all_genotypes(config.nodes))
    partial = out.with_suffix(".partial.jsonl")
    partial.parent.mkdir(parents=True, exist_ok=True)
    fingerprint = _fingerprint(config)
    done: dict[tuple[str, ...], dict[str, Any]] = {}
    if partial.exists():
        for line in partial.read_text().splitlines():
            record = json.loads(line)
            if record["config"] == fingerprint:
                done[tuple(record["ops"])] = record
    todo = [g for g in cells if g not in done]
    steps = (len(data.train_labels) // config.batch_size) * config.epochs * len(config.seeds)
    bar = tqdm(total=len(todo) * steps, unit="step", disable=not progress, file=sys.stdout,
               desc=f"{len(todo)} of {len(cells)} cells x {len(config.seeds)} seeds to train")
    for seed in config.seeds:
        supernet_init(config, data, seed)  # compiled once, before the threads start
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    ahead = pool.submit(compiled_programs, config, data, todo[0]) if todo else None
    for k, genotype in enumerate(todo):
        cell_start = time.perf_counter()
        programs = ahead.result()
        if k + 1 < len(todo):  # compile the next cell while this one trains
            ahead = pool.submit(compiled_programs, config, data, todo[k + 1])
        accuracy = train_cell(config, data, genotype, on_step=bar.update, programs=programs)
        done[genotype] = {"config": fingerprint, "ops": list(genotype), "accuracy": accuracy,
                          "seconds": round(time.perf_counter() - cell_start, 2)}
        with partial.open("a") as f:  # one line per cell: an interrupted run loses one cell
            f.write(json.dumps(done[genotype]) + "\n")
    bar.close()
    pool.shutdown()
    accuracy = np.array([done[g]["accuracy"] for g in cells]).T  # (seeds, cells)
    taus = {f"{a}-{b}": kendall_tau(accuracy[i], accuracy[j])
            for i, a in enumerate(config.seeds) for j, b in enumerate(config.seeds) if i < j}
    image_shape = tuple(int(d) for d in data.train_images.shape[1:])
    mean = accuracy.mean(axis=0)
    ranking = np.argsort(-mean, kind="stable")
    table = {
        "space": "nb201",
        "dataset": config.dataset,
        "nodes": config.nodes,
        "config": fingerprint,
        "proxy": {"train_images": len(data.train_labels), "test_images": len(data.test_labels),
                  "image_shape": list(image_shape)},
        "kendall_tau_between_seeds": taus,
        "best": nb201.genotype_string(cells[ranking[0]], config.nodes),
        "best_accuracy": float(mean[ranking[0]]),
        "median_accuracy": float(np.median(mean)),
        "train_seconds": round(sum(done[g]["seconds"] for g in cells), 1),
        "device": jax.devices()[0].device_kind,
        "cells": [{
            "genotype": nb201.genotype_string(g, config.nodes),
            "ops": list(g),
            "accuracy": [float(a) for a in accuracy[:, k]],
            "mean_accuracy": float(mean[k]),
            "rank": int(np.flatnonzero(ranking == k)[0]) + 1,
            "params": param_counts(g, config.nodes, config.channels, config.cells_per_stage,
                                   data.num_classes, image_shape),
        } for k, g in enumerate(cells)],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(table, indent=1) + "\n")
    return table


def parse_args(argv: Sequence[str] | None) -> tuple[TableConfig, Path, bool]:
    """The table's config, its output file and whether to show progress, from ``argv``."""
    parser = experiments.argument_parser(__spec__.name, __doc__)
    defaults = TableConfig()
    for field in dataclasses.fields(TableConfig):
        value = getattr(defaults, field.name)
        flag = "--" + field.name.replace("_", "-")
        if field.name == "data_dir":
            experiments.add_data_dir(parser)
        elif field.name == "seeds":
            parser.add_argument("--seeds", default=",".join(map(str, value)),
                                help="comma-separated (default: %(default)s)")
        elif field.name == "cells":
            parser.add_argument("--cells", nargs="*", default=(),
                                help="genotype strings (default: every cell)")
        elif field.name in ("dataset", "cache_dir"):
            parser.add_argument(flag, default=value, help="(default: %(default)s)")
        else:
            parser.add_argument(flag, type=type(value), default=value,
                                help="(default: %(default)s)")
    parser.add_argument("--out", default=str(RESULTS / "groundtruth_nb201_cifar10.json"),
                        help="the table (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = vars(parser.parse_args(argv))
    out = Path(args.pop("out"))
    progress = not args.pop("no_progress")
    args["seeds"] = tuple(int(s) for s in str(args["seeds"]).split(",") if s.strip())
    args["cells"] = tuple(args["cells"])
    return TableConfig(**args), out, progress


def main(argv: Sequence[str] | None = None) -> int:
    """Computes (or resumes) the table and prints its summary; 0, or exit status 2 on bad
    input."""
    config, out, progress = parse_args(argv)
    try:
        table = run(config, out, progress)
    except (specs.DatasetError, nb201.SpaceError, ValueError) as error:
        cli.fail(str(error))
    print(json.dumps({k: table[k] for k in ("best", "best_accuracy", "median_accuracy",
                                           "kendall_tau_between_seeds",
                                           "train_seconds")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

