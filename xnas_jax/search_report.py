"""What a search reports: each epoch's record (``log.jsonl``) and printed line, its
TensorBoard view, and the files it leaves (genotypes, plots, and with several seeds
``seeds.json`` with their stability).

A sink on the host: it takes the searches' results as NumPy arrays
(:func:`xnas_jax.search_step.host_results`), never the step or its state.
Each epoch it hands the loop an :class:`xnas_jax.loop.EpochReport` (record,
line and TensorBoard summaries, which the loop writes); at the end it writes
the files, and the cells' pictures through the run (:class:`xnas_jax.runs.Run`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from xnas_jax import loop, plotting, runs, spaces
from xnas_jax.configs import SearchConfig

__all__ = ["opening_line", "end_epoch", "epoch_records", "epoch_line", "seed_results", "per_seed",
           "seed_scalars", "step_scalars", "board", "write_outputs", "stability"]


def opening_line(config: SearchConfig, data: Any, directory: Path,
                 arch_rates: dict[str, float], seed_groups: int, data_groups: int) -> str:
    """The line a search prints before its first step: data, network, length, method and
    rates, seeds and the mesh (``seed_groups x data_groups`` devices)."""
    seeds = config.seed_list
    return (
        f"search in {directory}: {config.dataset} "
        f"({data.weight_halves.shape[1] * data.layout.count} + "
        f"{data.arch_halves.shape[1] * data.layout.count} images "
        f"{'x'.join(map(str, data.image_shape))}), "
        f"{config.space} space, {config.layers} cells"
        + (" per stage" if config.space == "nb201" else "")
        + f" of C={config.channels}, {config.epochs} epochs x "
        f"{data.steps_per_epoch} steps of batch {config.batch_size}, {config.optimizer} "
        "(arch lr " + ", ".join(f"{k} {v:.3g}" for k, v in arch_rates.items()) + ")"
        + (f", seeds {','.join(map(str, seeds))}" if len(seeds) > 1 else "")
        + (f", mesh seed {seed_groups} x data {data_groups}"
           if seed_groups * data_groups > 1 else ""))


def end_epoch(config: SearchConfig, space: spaces.SearchSpace, epoch: Any,
              host: dict[str, Any], computed: dict[str, tuple[str, ...]],
              compile_seconds: float, steps_per_epoch: int, arch_rates: dict[str, float],
              schedule: Any, previous: Sequence[dict[str, Any]], draw: bool = True
              ) -> Any:
    """An epoch's :class:`xnas_jax.loop.EpochReport` (:func:`xnas_jax.loop.run_epochs`'s
    ``end_epoch``): its record, line and TensorBoard summaries (scalars, and with
    ``draw`` the view of :func:`board`).

    ``epoch`` is the loop's :class:`xnas_jax.loop.Epoch`, ``host`` the searches' results
    on the host (:func:`xnas_jax.search_step.host_results`), ``schedule`` the network
    weights' learning rate and ``previous`` the earlier epochs' records.
    """
    seeds = config.seed_list
    record = epoch_records(config, space, epoch.index + 1, epoch.step, host, epoch.metrics,
                           computed, epoch.seconds, compile_seconds, previous)
    # The images of this process's steps only (a resumed epoch ran fewer).
    record["images_per_second"] = (2 * config.batch_size * len(seeds)
                                   * (steps_per_epoch - epoch.first) / max(epoch.seconds, 1e-9))
    scalars = {**seed_scalars(seeds, "epoch", {
        k: np.asarray([r[k] for r in per_seed(record)]) for k in ("entropy", "val_accuracy")}),
        "epoch/images_per_second": record["images_per_second"],
        # The learning rates of both optimizers (at the epoch's first step).
        "epoch/learning_rate": float(schedule(epoch.index * steps_per_epoch)),
        **{f"epoch/arch_learning_rate/{cell}": rate for cell, rate in arch_rates.items()}}
    line = epoch_line(record)
    view = board(config, space, epoch.index, record) if draw else {}
    return loop.EpochReport(record, line, {"scalars": scalars, **view})


def step_scalars(seeds: Sequence[int],
                 cell_types: Sequence[str]) -> Callable[[dict[str, Any]], dict[str, float]]:
    """The per-step TensorBoard values of a step's metrics (every --log-every steps)."""
    names = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "reward_abs_max",
             *(f"clipped_{k}" for k in cell_types), *(f"active_{k}" for k in cell_types))
    return lambda metrics: seed_scalars(seeds, "step", {k: metrics[k] for k in names})


def board(config: SearchConfig, space: spaces.SearchSpace, epoch: int,
          record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """TensorBoard's view of an epoch beyond its scalars, per search: the mixture weights
    u of each cell type (a histogram and an image of the edges) and the genotype as text.

    Returns ``{"histograms": {tag: values}, "images": {tag: pixels}, "texts": {tag:
    text}}``, the keywords of :meth:`xnas_jax.runs.Run.summaries`.
    """
    view: dict[str, dict[str, Any]] = {"histograms": {}, "images": {}, "texts": {}}
    labels = space.edge_labels(config.nodes)
    for seed, seeded in zip(config.seed_list, per_seed(record)):
        prefix = f"seed{seed}/" if len(config.seed_list) > 1 else ""
        for cell, weights in seeded["arch"].items():
            view["histograms"][f"{prefix}arch/u/{cell}"] = weights
            view["images"][f"{prefix}arch/edges/{cell}"] = plotting.figure_pixels(
                plotting.plot_edge_weights(np.asarray(weights), config.ops, labels,
                                           f"{cell}: u at epoch {epoch + 1}"))
        text = space.text(seeded["genotype"])
        view["texts"][f"{prefix}genotype"] = "\n".join("    " + line
                                                       for line in text.splitlines())
    return view


def seed_results(host: dict[str, Any], i: int) -> dict[str, Any]:
    """Search ``i``'s part of the searches' results (``arch``, ``rewards``, ``active`` and
    ``evidence`` per cell type, ``entropy`` a number)."""
    return {k: (float(v[i]) if k == "entropy" else None if v is None
                else {kind: a[i] for kind, a in v.items()}) for k, v in host.items()}


def per_seed(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-search records of an epoch record (one search: the record itself)."""
    return record.get("seeds") or [record]


def seed_scalars(seeds, prefix: str, values: dict[str, np.ndarray]) -> dict[str, float]:
    """TensorBoard tags: ``prefix/name`` for one search, ``seed<s>/prefix/name`` for several."""
    if len(seeds) == 1:
        return {f"{prefix}/{k}": float(np.ravel(v)[0]) for k, v in values.items()}
    return {f"seed{seed}/{prefix}/{k}": float(np.ravel(v)[i])
            for k, v in values.items() for i, seed in enumerate(seeds)}


def epoch_records(config, space, epoch, step, host, per_step, computed, seconds, compile_seconds,
                  previous) -> dict[str, Any]:
    """The log record of an epoch: one search's record, or the seeds' records and their means."""
    seeds = config.seed_list
    records = []
    for i, seed in enumerate(seeds):
        metrics = [{k: np.ravel(v)[i] for k, v in m.items()} for m in per_step]
        earlier = [per_seed(r)[i] for r in previous]
        records.append(_epoch_record(config, space, epoch, step, seed_results(host, i), metrics,
                                     computed, seconds, compile_seconds, earlier))
    if len(seeds) == 1:
        return records[0]
    means = {k: float(np.mean([r[k] for r in records]))
             for k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "entropy")}
    for seed, r in zip(seeds, records):
        r["seed"] = seed
    return {"epoch": epoch, "step": step, **means, "seconds": seconds,
            "compile_seconds_total": compile_seconds,
            "computed": {k: list(v) for k, v in computed.items()}, "seeds": records}


def _epoch_record(config, space, epoch, step, results, per_step, computed, seconds,
                  compile_seconds, previous):
    """One search's record of an epoch from its results (NumPy mixture weights, rewards,
    active masks and selection evidence; :func:`seed_results`) and metrics."""
    arch, rewards, active, evidence = (results[k] for k in ("arch", "rewards", "active",
                                                             "evidence"))
    count = len(per_step)
    # float32 means, as the step computes its metrics (a resumed epoch's saved
    # metrics come back as Python floats).
    means = {k: float(np.mean(np.asarray([m[k] for m in per_step], np.float32)))
             for k in per_step[0]}
    # The first step whose update wiped out an expert (of the whole search).
    first_wipeout = next((r["first_wipeout_step"] for r in previous
                          if r.get("first_wipeout_step") is not None), None)
    if first_wipeout is None:
        total = sum(v.size for v in arch.values())
        first_wipeout = next((step - count + 1 + i for i, m in enumerate(per_step)
                              if sum(int(m[f"active_{k}"]) for k in arch) < total), None)
    return {
        "epoch": epoch,
        "step": step,
        **{k: means[k] for k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy")},
        "reward_abs_max": max(float(m["reward_abs_max"]) for m in per_step),
        "clipped_fraction": {k: means[f"clipped_{k}"] for k in arch},
        "active_experts": {k: int(m.sum()) for k, m in active.items()},
        "active_fraction": float(sum(m.sum() for m in active.values()))
        / sum(m.size for m in active.values()),
        "first_wipeout_step": first_wipeout,
        "active_per_step": [[int(m[f"active_{k}"]) for k in arch] for m in per_step],
        "computed": {k: list(v) for k, v in computed.items()},
        "entropy": results["entropy"],
        "seconds": seconds,
        "compile_seconds_total": compile_seconds,
        "genotype": space.discretize(config, arch, evidence),
        "selection_rule": space.selection_rule(config, arch, evidence),
        "arch": {k: np.round(v, 6).tolist() for k, v in arch.items()},
        "active": {k: np.asarray(m, np.int8).tolist() for k, m in active.items()},
        "rewards": {k: np.round(v, 4).tolist() for k, v in rewards.items()},
    }


def epoch_line(record) -> str:
    if "seeds" in record:
        return (
            f"epoch {record['epoch']}: {len(record['seeds'])} seeds, mean train loss "
            f"{record['train_loss']:.4f} | val acc "
            + " ".join(f"{100 * r['val_accuracy']:.1f}%" for r in record["seeds"])
            + " | active experts "
            + " ".join("/".join(str(v) for v in r["active_experts"].values())
                       for r in record["seeds"])
            + f" | {record['images_per_second']:.0f} img/s"
        )
    return (
        f"epoch {record['epoch']}: train loss {record['train_loss']:.4f} "
        f"acc {100 * record['train_accuracy']:.1f}% | val loss {record['val_loss']:.4f} "
        f"acc {100 * record['val_accuracy']:.1f}% | active experts "
        + " ".join(f"{k} {v}" for k, v in record["active_experts"].items())
        + " | clipped rewards "
        + " / ".join(f"{100 * v:.0f}%" for v in record["clipped_fraction"].values())
        + f" | {record['images_per_second']:.0f} img/s"
    )


def stability(genotype_dicts: Sequence[dict[str, Any]], nodes: int) -> dict[str, Any]:
    """How many seeds agree on each kept edge, and on its operation.

    Args:
      genotype_dicts: each seed's :func:`genotypes.genotype_to_dict`.
      nodes: intermediate nodes per cell.

    Returns:
      Per cell type, the kept edges (node, input) with the number of seeds
      that keep them and the most common operation with its count, sorted by
      agreement; and ``edge_agreement`` / ``op_agreement``: the mean over the
      seeds' kept edges of the fraction of seeds that keep the same edge / the
      same edge with the same operation.
    """
    seeds = len(genotype_dicts)
    summary: dict[str, Any] = {"seeds": seeds}
    if genotype_dicts[0].get("space") == "nb201":  # every edge is kept: agree on its op?
        per_edge = [np.unique([g["ops"][e] for g in genotype_dicts], return_counts=True)
                    for e in range(len(genotype_dicts[0]["ops"]))]
        summary["cell"] = {
            "edges": [{"edge": e, "op": str(ops[np.argmax(n)]), "op_seeds": int(n.max())}
                      for e, (ops, n) in enumerate(per_edge)],
            "edge_agreement": 1.0,
            "op_agreement": float(np.mean([
                dict(zip(*per_edge[e]))[g["ops"][e]] / seeds
                for g in genotype_dicts for e in range(len(per_edge))])),
        }
        return summary
    for cell in ("normal", "reduce"):
        edges: dict[tuple[int, int], dict[str, int]] = {}
        kept = []
        for g in genotype_dicts:
            chosen = [(op, int(inp)) for op, inp in g[cell]]
            for index, (op, inp) in enumerate(chosen):
                node = index // 2
                ops = edges.setdefault((node, inp), {})
                ops[op] = ops.get(op, 0) + 1
                kept.append((node, inp, op))
        table = []
        for (node, inp), ops in edges.items():
            op, count = max(ops.items(), key=lambda kv: (kv[1], kv[0]))
            table.append({"node": node, "input": inp, "seeds": sum(ops.values()),
                          "op": op, "op_seeds": count})
        table.sort(key=lambda r: (-r["seeds"], -r["op_seeds"], r["node"], r["input"]))
        summary[cell] = {
            "edges": table,
            "edge_agreement": float(np.mean([sum(edges[(n, i)].values()) / seeds
                                             for n, i, _ in kept])),
            "op_agreement": float(np.mean([edges[(n, i)][op] / seeds for n, i, op in kept])),
        }
    return summary


def write_outputs(config: SearchConfig, space: spaces.SearchSpace, run: runs.Run,
                  host: dict[str, Any]) -> None:
    """The genotype(s) and plots of the searches' final results (``host``:
    :func:`xnas_jax.search_step.host_results`); with several seeds, one folder per seed,
    the best seed's genotype at the top and ``seeds.json`` (per-seed results and their
    stability)."""
    if not run.writer:
        return
    out_dir, seeds = run.directory, config.seed_list
    folders = [out_dir if len(seeds) == 1 else out_dir / f"seed_{seed}" for seed in seeds]
    histories = [[per_seed(r)[i] for r in run.records] for i in range(len(seeds))]
    results, pictures = [], {}
    for i, (seed, folder) in enumerate(zip(seeds, folders)):
        seeded = seed_results(host, i)
        folder.mkdir(parents=True, exist_ok=True)
        genotype = space.write(config, folder, seeded["arch"], seeded["evidence"])
        for picture in space.pictures():  # the cells, drawn
            prefix = f"seed{seed}/" if len(seeds) > 1 else ""
            with Image.open(folder / picture) as image:
                pictures[f"{prefix}cell/{Path(picture).stem}"] = np.asarray(image.convert("RGB"))
        results.append({"seed": seed, "val_accuracy": histories[i][-1]["val_accuracy"],
                        "genotype": genotype, "text": space.text(genotype)})
    best = max(range(len(seeds)), key=lambda i: (results[i]["val_accuracy"], -i))
    lines, agreement = [], None
    if len(seeds) > 1:
        for name in space.files():
            shutil.copyfile(folders[best] / name, out_dir / name)
        agreement = stability([r["genotype"] for r in results], config.nodes)
        (out_dir / "seeds.json").write_text(json.dumps({
            "best_seed": seeds[best], "seeds": results, "stability": agreement}, indent=2) + "\n")
        lines += [f"seed {r['seed']}: val acc {100 * r['val_accuracy']:.1f}%" for r in results]
        lines += [_stability_text(agreement), f"best seed {seeds[best]} (final validation accuracy)"]
    lines.append(f"genotype ({out_dir / 'genotype.json'}):\n{results[best]['text']}")
    run.summaries(run.records[-1]["step"], images=pictures)
    run.print("\n".join(lines))
    for folder, history in zip(folders, histories):
        plotting.plot_search(history, config.ops, folder)
    if agreement is not None and config.space == "darts":
        plotting.plot_seed_agreement(agreement, out_dir / "stability.png")


def _stability_text(agreement: dict[str, Any]) -> str:
    lines = [f"stability over {agreement['seeds']} seeds:"]
    for cell in [c for c in ("normal", "reduce", "cell") if c in agreement]:
        part = agreement[cell]
        lines.append(f"  {cell}: {100 * part['edge_agreement']:.0f}% of kept edges and "
                     f"{100 * part['op_agreement']:.0f}% of their operations agree")
    return "\n".join(lines)
