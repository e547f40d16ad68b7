"""An exhaustive, locally computed table of NAS-Bench-201 cells on a CIFAR-10 proxy.

Every cell of the NB201 space with ``nodes`` nodes (3 nodes: 3 edges, 5^3 =
125 cells) is trained from scratch on a class-balanced subset of
``../shared/data/cifar10_jpeg`` and scored on held-out test images, with
several seeds.  A seed fixes the initial weights (the same for every cell:
common random numbers sharpen the comparison), the data order and the
augmentation.

Many cells train at once in one jitted program: a discretized cell is the
supernet (:class:`xnas_jax.nb201.NB201Network`) with one-hot mixture
weights, so the step is vmapped over a chunk of one-hot tables and their
parameter sets, all on the same batches.

The table's own noise is Kendall's tau between the seeds' accuracies: a
search can only be scored against a table that ranks cells consistently.

Run: ``python -m experiments.groundtruth [--data DIR] [--epochs N] ...``; it
prints a progress bar, and an interrupted run resumes from the chunks it
finished (kept in ``<out>.partial.jsonl``).  Writes
``experiments/results/groundtruth_nb201_cifar10.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from xnas_jax import nb201
from xnas_jax.data import augment, datasets, order, specs
from xnas_jax.supernet import ARCH, count_params

RESULTS = Path(__file__).resolve().parent / "results"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10_jpeg"


@dataclasses.dataclass(frozen=True)
class TableConfig:
    """The proxy: data, network and training recipe of every cell."""

    data_dir: str = str(DATA)
    dataset: str = "cifar10"
    train_per_class: int = 500
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
    chunk: int = 25  # cells per jitted program
    cache_dir: str | None = str(Path.home() / ".cache" / "xnas_jax")


class ProxyData(NamedTuple):
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    num_classes: int


def balanced(dataset: specs.ArrayDataset, per_class: int, seed: int) -> specs.ArrayDataset:
    """``per_class`` examples of each class, drawn at random, in their original order."""
    rng = np.random.default_rng(seed)
    chosen = []
    for label in range(dataset.num_classes):
        members = np.flatnonzero(dataset.labels == label)
        if len(members) < per_class:
            raise ValueError(f"{dataset.name} has {len(members)} examples of class {label}, "
                             f"fewer than {per_class}")
        chosen.append(rng.choice(members, per_class, replace=False))
    keep = np.sort(np.concatenate(chosen))
    return dataset._replace(images=dataset.images[keep], labels=dataset.labels[keep])


def load_proxy(config: TableConfig) -> ProxyData:
    """The class-balanced train and held-out test subsets (fixed: seed 0), downsampled."""
    parts = []
    for split, per_class in (("train", config.train_per_class), ("test", config.test_per_class)):
        dataset = datasets.load_dataset(config.dataset, split, config.data_dir,
                                        cache_dir=config.cache_dir)
        parts.append(order.downsample(balanced(dataset, per_class, seed=0), config.downsample))
    train, test = parts
    mean, std = specs.channel_stats(train.images)
    return ProxyData(train.images, train.labels, test.images, test.labels, mean, std,
                     train.num_classes)


def build_model(config: TableConfig, num_classes: int) -> nb201.NB201Network:
    """The supernet of the proxy; a one-hot ``arch`` table makes it one cell's network."""
    return nb201.NB201Network(num_classes, config.channels, config.cells_per_stage,
                              config.nodes)


def make_programs(config: TableConfig, data: ProxyData):
    """``(init, train_step, evaluate)``, each vmapped over a chunk of one-hot tables."""
    model = build_model(config, data.num_classes)
    steps_per_epoch = len(data.train_labels) // config.batch_size
    schedule = optax.cosine_decay_schedule(config.learning_rate,
                                           config.epochs * steps_per_epoch)
    tx = optax.chain(optax.add_decayed_weights(config.weight_decay),
                     optax.sgd(schedule, config.momentum, nesterov=True))
    image_shape = data.train_images.shape[1:]

    def init_one(key, table):
        variables = model.init(key, jnp.zeros((1, *image_shape), jnp.float32), train=False)
        del table  # the same initial weights for every cell of a seed
        return variables["params"], variables["batch_stats"], tx.init(variables["params"])

    def loss_fn(params, batch_stats, table, images, labels):
        logits, updates = model.apply(
            {"params": params, "batch_stats": batch_stats, ARCH: {"cell": table}}, images,
            train=True, mutable=["batch_stats"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, updates["batch_stats"]

    def step_one(state, table, images, labels):
        params, batch_stats, opt_state = state
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, batch_stats, table, images, labels)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), batch_stats, opt_state), loss

    mean, std = jnp.asarray(data.mean), jnp.asarray(data.std)

    @jax.jit
    def train_step(states, tables, key, images, labels):
        images = augment.augment(key, images, config.crop_padding, True)
        images = augment.normalize(images, mean, std)
        return jax.vmap(step_one, in_axes=(0, 0, None, None))(states, tables, images, labels)

    @jax.jit
    def evaluate(states, tables, images, labels):
        images = augment.normalize(images, mean, std)

        def correct(state, table):
            params, batch_stats, _ = state
            logits = model.apply({"params": params, "batch_stats": batch_stats,
                                  ARCH: {"cell": table}}, images, train=False)
            return jnp.sum(jnp.argmax(logits, -1) == labels)

        return jax.vmap(correct)(states, tables)

    init = jax.jit(jax.vmap(init_one, in_axes=(None, 0)))
    return init, train_step, evaluate, steps_per_epoch


def train_cells(config: TableConfig, data: ProxyData, genotypes: Sequence[tuple[str, ...]],
                seed: int, programs=None, on_step=None) -> np.ndarray:
    """Test accuracies of ``genotypes`` (one chunk, trained together) for one seed."""
    init, train_step, evaluate, steps_per_epoch = programs or make_programs(config, data)
    tables = jnp.asarray(np.stack([nb201.one_hot(g) for g in genotypes]))
    states = init(jax.random.key(seed), tables)
    key = jax.random.key(seed + 1000)
    for epoch in range(config.epochs):
        batches = order.batch_indices(order.epoch_permutation(seed, epoch,
                                                              len(data.train_labels)),
                                      config.batch_size)
        for i, rows in enumerate(batches):
            states, _ = train_step(states, tables, jax.random.fold_in(key, epoch * 10_000 + i),
                                   data.train_images[rows], data.train_labels[rows])
            if on_step:
                on_step()
    correct = np.zeros(len(genotypes))
    for start in range(0, len(data.test_labels), 500):
        correct += np.asarray(evaluate(states, tables, data.test_images[start:start + 500],
                                       data.test_labels[start:start + 500]))
    return correct / len(data.test_labels)


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


def run(config: TableConfig, out: Path) -> dict[str, Any]:
    """Trains the whole table (resuming finished chunks) and writes it to ``out``."""
    started = time.perf_counter()
    data = load_proxy(config)
    print(f"proxy: {len(data.train_labels)} train / {len(data.test_labels)} test images "
          f"{'x'.join(map(str, data.train_images.shape[1:]))} "
          f"(loaded in {time.perf_counter() - started:.0f} s)", flush=True)
    cells = nb201.all_genotypes(config.nodes)
    chunks = [cells[i:i + config.chunk] for i in range(0, len(cells), config.chunk)]
    partial = out.with_suffix(".partial.jsonl")
    done: dict[tuple[int, int], list[float]] = {}
    fingerprint = dataclasses.asdict(config)
    fingerprint.pop("cache_dir"), fingerprint.pop("data_dir")
    if partial.exists():
        for line in partial.read_text().splitlines():
            record = json.loads(line)
            if record["config"] == json.loads(json.dumps(fingerprint)):
                done[(record["seed"], record["chunk"])] = record["accuracy"]
    programs = make_programs(config, data)
    steps = programs[3] * config.epochs
    todo = [(s, c) for s in config.seeds for c in range(len(chunks)) if (s, c) not in done]
    bar = tqdm(total=len(todo) * steps, unit="step", desc=f"{len(cells)} cells x "
               f"{len(config.seeds)} seeds, {len(todo)} chunks to train", file=sys.stdout)
    train_seconds = 0.0
    for seed, c in todo:
        chunk_start = time.perf_counter()
        accuracy = train_cells(config, data, chunks[c], seed, programs,
                               on_step=lambda: bar.update())
        train_seconds += time.perf_counter() - chunk_start
        done[(seed, c)] = [float(a) for a in accuracy]
        with partial.open("a") as f:
            f.write(json.dumps({"config": fingerprint, "seed": seed, "chunk": c,
                                "accuracy": done[(seed, c)]}) + "\n")
    bar.close()
    accuracy = np.array([[acc for c in range(len(chunks)) for acc in done[(s, c)]]
                         for s in config.seeds])  # (seeds, cells)
    taus = {f"{a}-{b}": kendall_tau(accuracy[i], accuracy[j])
            for i, a in enumerate(config.seeds) for j, b in enumerate(config.seeds) if i < j}
    image_shape = tuple(int(d) for d in data.train_images.shape[1:])
    mean = accuracy.mean(axis=0)
    ranking = np.argsort(-mean)
    table = {
        "space": "nb201",
        "dataset": config.dataset,
        "config": fingerprint,
        "proxy": {"train_images": len(data.train_labels), "test_images": len(data.test_labels),
                  "image_shape": list(image_shape)},
        "kendall_tau_between_seeds": taus,
        "best": nb201.genotype_string(cells[ranking[0]], config.nodes),
        "best_accuracy": float(mean[ranking[0]]),
        "median_accuracy": float(np.median(mean)),
        "train_seconds_this_run": round(train_seconds, 1),
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


def parse_args(argv: Sequence[str] | None) -> tuple[TableConfig, Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = TableConfig()
    for field in dataclasses.fields(TableConfig):
        value = getattr(defaults, field.name)
        if field.name == "seeds":
            parser.add_argument("--seeds", default=",".join(map(str, value)))
        elif field.name in ("data_dir", "dataset", "cache_dir"):
            parser.add_argument("--" + field.name.replace("_", "-"), default=value)
        else:
            parser.add_argument("--" + field.name.replace("_", "-"), type=type(value),
                                default=value)
    parser.add_argument("--out", default=str(RESULTS / "groundtruth_nb201_cifar10.json"))
    args = vars(parser.parse_args(argv))
    out = Path(args.pop("out"))
    args["seeds"] = tuple(int(s) for s in str(args["seeds"]).split(",") if s.strip())
    return TableConfig(**args), out


def main(argv: Sequence[str] | None = None) -> int:
    config, out = parse_args(argv)
    try:
        table = run(config, out)
    except (specs.DatasetError, nb201.SpaceError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({k: table[k] for k in ("best", "best_accuracy", "median_accuracy",
                                           "kendall_tau_between_seeds",
                                           "train_seconds_this_run")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

