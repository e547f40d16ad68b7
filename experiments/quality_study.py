"""The search-quality study: when does XNAS pick good NB201 cells?

Every run searches the NB201 space on the table's own data
(:mod:`experiments.search_quality`) and is scored by the table: the returned
cell's accuracy and rank percentile.  The study's groups, each with
``--seeds`` seeds:

* ``length``: XNAS (zeta = 1), DARTS, random-1 and random-k at each of
  ``--lengths`` proxy epochs (random search trains 1 or k cells on as many
  images as the XNAS search of that length used);
* ``remedies``: at the longest length, rewards on scale-normalized expert
  outputs (``--normalized-rewards``), and a cap of ``--skip-cap`` skips at
  discretization, read from the XNAS runs' own evidence (no new search);
* ``warmup``: XNAS with ``--warmup-epochs`` = ``warmup_fraction`` of the
  search;
* ``zeta``: XNAS with the wipeout factors that put the first wipeout at
  ``wipeout_fractions`` of the search.  No expert can be wiped out before
  ``t/T = 2 zeta / (2 zeta + g)``, where g is the leader's mean reward gap
  per feedback in units of L, so ``zeta = g f / (2 (1 - f))`` for a fraction
  f; g is measured on the longest XNAS runs.

Each finished run is a line of ``<out stem>.runs.jsonl`` (kept in the
repository), so the study resumes where it stopped, in a new checkout too;
run it niced.  It writes ``<out>`` (a list
``runs``, and a summary per variant) and ``<out stem>_length.png``
(percentile against search length, mean and standard error per method),
and ``<out stem>_rewards_<variant>.png`` (each op's cumulative reward per
edge over the search, seed 0).

Run: ``nice python -m experiments.quality_study [--data-dir DIR]``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import io
import json
import math
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

import experiments
from experiments import search_quality as quality_lib
from experiments import groundtruth
from xnas_jax import cli, configs, plotting, runs, search, spaces
from xnas_jax.spaces.nb201 import network as nb201

LOG = Path("log.jsonl")


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """The study's plan (the data and network follow the table's config; ``data_dir`` says
    where the table's dataset lies, and is not part of the runs' identity)."""

    seeds: int = 8
    lengths: tuple[int, ...] = (10, 50, 25)  # in the order they run
    batch_size: int = 64
    random_cells: int = 4
    warmup_fraction: float = 0.25
    wipeout_fractions: tuple[float, ...] = (0.25, 0.5, 0.75)
    skip_cap: int = 1
    groups: tuple[str, ...] = ("length", "remedies", "warmup", "zeta")
    work_dir: str = "runs/quality_study"
    data_dir: str | None = dataclasses.field(default_factory=experiments.default_data_dir)

    @property
    def longest(self) -> int:
        return max(self.lengths)


def variant(spec: dict[str, Any]) -> str:
    """A run's variant name, e.g. ``xnas/50`` or ``xnas/50/zeta=0.01``."""
    name = f"{spec['method']}/{spec['epochs']}"
    if spec.get("zeta", 1.0) != 1.0:
        name += f"/zeta={spec['zeta']:.3g}"
    if spec.get("warmup_epochs"):
        name += f"/warmup={spec['warmup_epochs']}"
    if spec.get("remedy"):
        name += f"/{spec['remedy']}"
    return name


def leader_gap(result: dict[str, Any], feedbacks_per_step: int) -> float:
    """g: the leading expert's reward lead over the second, per feedback, mean over edges."""
    totals = np.sort(np.asarray(result["rewards"]["cell"], np.float64), axis=-1)
    return float(np.mean(totals[:, -1] - totals[:, -2])
                 / (result["steps"] * feedbacks_per_step))


def zeta_for(fraction: float, gap: float) -> float:
    """The zeta whose earliest possible wipeout falls at ``fraction`` of the search."""
    return min(1.0, gap * fraction / (2 * (1 - fraction)))


def plan(study: StudyConfig, gap: float | None) -> Iterator[dict[str, Any]]:
    """The runs in the order they run; the zeta group waits for a measured ``gap``."""
    seeds = range(study.seeds)
    base = {"zeta": 1.0, "warmup_epochs": 0, "remedy": None}
    if "length" in study.groups:
        for epochs in study.lengths:
            for method in ("xnas", "darts", "random-1", "random-k"):
                for seed in seeds:
                    yield {**base, "method": method, "epochs": epochs, "seed": seed}
    long = study.longest
    if "remedies" in study.groups:
        for seed in seeds:
            yield {**base, "method": "xnas", "epochs": long, "seed": seed,
                   "remedy": f"skip_cap={study.skip_cap}"}
        for seed in seeds:
            yield {**base, "method": "xnas", "epochs": long, "seed": seed,
                   "remedy": "normalized_rewards"}
    if "warmup" in study.groups:
        for seed in seeds:
            yield {**base, "method": "xnas", "epochs": long, "seed": seed,
                   "warmup_epochs": round(study.warmup_fraction * long)}
    if "zeta" in study.groups and gap is not None:
        for fraction in study.wipeout_fractions:
            for seed in seeds:
                yield {**base, "method": "xnas", "epochs": long, "seed": seed,
                       "zeta": zeta_for(fraction, gap), "target_wipeout_fraction": fraction}


def _run_config(proxy, study: StudyConfig, spec: dict[str, Any]) -> configs.SearchConfig:
    """The search config of ``spec``, with its own run folder."""
    out_dir = Path(study.work_dir) / variant(spec).replace("/", "_") / f"seed_{spec['seed']}"
    settings = quality_lib.QualityConfig(epochs=spec["epochs"], batch_size=study.batch_size,
                                         work_dir=study.work_dir, data_dir=study.data_dir)
    config = quality_lib.search_config(proxy, settings, "darts" if spec["method"] == "darts"
                                       else "xnas", spec["seed"], out_dir)
    return dataclasses.replace(
        config, wipeout_factor=spec["zeta"], warmup_epochs=spec["warmup_epochs"],
        normalized_rewards=spec["remedy"] == "normalized_rewards",
        keep_checkpoints=1)


def _search(proxy, study: StudyConfig, spec: dict[str, Any]) -> dict[str, Any]:
    """One supernet search of ``spec``: its pick, costs, wipeouts and final evidence."""
    config = _run_config(proxy, study, spec)
    out_dir = Path(config.out_dir)
    state = runs.run_state(out_dir) if out_dir.exists() else None
    seconds = None
    if state != "finished":  # a search stopped midway resumes
        config = dataclasses.replace(config, resume=state is not None)
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            search.train_and_evaluate(config)
        seconds = time.perf_counter() - started
    records = runs.read_log(out_dir)
    record = records[-1]
    if seconds is None or state is not None:  # the epochs' own times, compile included
        seconds = sum(r["seconds"] for r in records) + record["compile_seconds_total"]
    steps = record["step"]
    active = np.array([sum(a) for r in records for a in r["active_per_step"]], np.float64)
    total = np.asarray(record["arch"]["cell"]).size
    first = record["first_wipeout_step"]
    return {
        "ops": json.loads((out_dir / "genotype.json").read_text())["ops"],
        "seconds": round(seconds, 1),
        "compile_seconds": round(record["compile_seconds_total"], 1),
        "steps": steps,
        "images": 2 * steps * study.batch_size,
        "first_wipeout_fraction": None if first is None else first / steps,
        # Expert evaluations (edge x op) the wipeout removed, over the search's steps.
        "evaluations_saved": float(1 - active.mean() / total),
        "arch": record["arch"], "rewards": record["rewards"],
        "cumulative_rewards": [r["rewards"]["cell"] for r in records],
    }


def _random(proxy, study: StudyConfig, spec: dict[str, Any], images: int) -> dict[str, Any]:
    cells = 1 if spec["method"] == "random-1" else study.random_cells
    settings = quality_lib.QualityConfig(batch_size=study.batch_size, random_cells=cells,
                                         data_dir=study.data_dir)
    result = quality_lib.run_random(proxy, settings, spec["seed"], images)
    return {"ops": result["ops"], "seconds": result["seconds"], "images": result["images"],
            "first_wipeout_fraction": None, "evaluations_saved": 0.0}


def _post_hoc(base: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """A discretization remedy, read from a finished search's final weights and evidence."""
    cap = int(spec["remedy"].split("=")[1])
    ops = nb201.discretize(np.asarray(base["arch"]["cell"]), np.asarray(base["rewards"]["cell"]),
                           skip_cap=cap)
    return {**{k: base[k] for k in ("seconds", "compile_seconds", "steps", "images",
                                    "first_wipeout_fraction", "evaluations_saved")},
            "ops": list(ops)}


def _scored(table, spec: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """The JSON run: the spec, the pick's score and skip count, and the costs."""
    score = quality_lib.score(table, result["ops"])
    run = {"method": spec["method"], "epochs": spec["epochs"], "zeta": spec["zeta"],
           "warmup_epochs": spec["warmup_epochs"], "remedy": spec["remedy"],
           "seed": spec["seed"], "variant": variant(spec), "ops": result["ops"],
           "skip_count": result["ops"].count("skip_connect"),
           "percentile": score["percentile"], "accuracy": score["accuracy"],
           **{k: result.get(k) for k in ("first_wipeout_fraction", "evaluations_saved",
                                         "seconds", "compile_seconds", "steps", "images")}}
    if "target_wipeout_fraction" in spec:
        run["target_wipeout_fraction"] = spec["target_wipeout_fraction"]
    if spec["method"] == "darts":  # DARTS's own discretization leaves 'none' out
        ops = nb201.discretize(np.asarray(result["arch"]["cell"]), exclude=("none",))
        run["without_none"] = {"ops": list(ops), **quality_lib.score(table, ops)}
    return run


def reward_statistics(result: dict[str, Any], feedbacks_per_step: int) -> dict[str, Any]:
    """Per edge and op: the mean reward per feedback over the search, and its spread (the
    standard deviation of the epochs' means), from the epochs' cumulative rewards."""
    cumulative = np.asarray(result["cumulative_rewards"], np.float64)  # (epochs, E, N)
    per_epoch = np.diff(cumulative, axis=0, prepend=0.0)
    feedbacks = result["steps"] / len(cumulative) * feedbacks_per_step
    return {"mean": (cumulative[-1] / (result["steps"] * feedbacks_per_step)).tolist(),
            "spread": (per_epoch / feedbacks).std(axis=0).tolist()}


def output_scales(proxy, study: StudyConfig, spec: dict[str, Any],
                  images: int = 64) -> dict[str, Any]:
    """Each expert's output RMS per edge (mean over cells), at init and at the search's end.

    Skip's output is its input, not normalized, while the convolutions end in
    batch norm: if skip's rewards lead by scale alone, its RMS is the larger.
    Measured in training mode on ``images`` of the table's training images.
    """
    import jax  # noqa: PLC0415  (only the diagnosis needs it)
    import orbax.checkpoint as ocp  # noqa: PLC0415

    config = _run_config(proxy, study, spec).resolved()
    table = groundtruth.TableConfig(**{k: (tuple(v) if isinstance(v, list) else v)
                                       for k, v in proxy.items()
                                       if k in {f.name for f in
                                                dataclasses.fields(groundtruth.TableConfig)}})
    data = groundtruth.load_proxy(dataclasses.replace(table, data_dir=study.data_dir))
    x = (data.train_images[:images].astype(np.float32) / 255.0 - data.mean) / data.std
    model = spaces.get_space("nb201").build(config, data.num_classes)
    initial = model.init(jax.random.key(spec["seed"]), x, train=True)
    folder = Path(config.out_dir).absolute() / "checkpoints"  # orbax takes absolute paths
    last = max(int(p.name) for p in folder.iterdir() if p.name.isdigit())
    state = ocp.StandardCheckpointer().restore(folder / str(last) / "state")
    final = {k: jax.tree.map(lambda a: np.asarray(a)[0], state[k])
             for k in ("params", "batch_stats", "arch")}

    def scales(variables):
        _, out = model.apply(variables, x, train=True,
                             mutable=["batch_stats", "intermediates"])
        table = np.zeros((len(nb201.cell_edges(config.nodes)), len(nb201.NB201_OPS)))
        count = np.zeros_like(table)
        for cell in out["intermediates"].values():
            for e, (i, j) in enumerate(nb201.cell_edges(config.nodes)):
                for name, value in cell.get(f"edge_{i}_{j}", {}).items():
                    k = nb201.NB201_OPS.index(name.removeprefix("rms_"))
                    table[e, k] += float(value[0])
                    count[e, k] += 1
        return np.where(count > 0, table / np.maximum(count, 1), np.nan).tolist()

    return {"initial": scales({**initial}), "final": scales(final)}


def summarize(runs_: list[dict[str, Any]]) -> dict[str, Any]:
    """Per variant: seeds, mean and standard error of the percentile, and the costs."""
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for run in runs_:
        by_variant.setdefault(run["variant"], []).append(run)
    summary = {}
    for name, group in by_variant.items():
        percentiles = np.array([r["percentile"] for r in group])
        firsts = [r["first_wipeout_fraction"] for r in group
                  if r["first_wipeout_fraction"] is not None]
        summary[name] = {
            "seeds": len(group),
            "percentile_mean": float(percentiles.mean()),
            "percentile_sem": float(percentiles.std(ddof=1) / math.sqrt(len(group)))
            if len(group) > 1 else None,
            "accuracy_mean": float(np.mean([r["accuracy"] for r in group])),
            "skip_count_mean": float(np.mean([r["skip_count"] for r in group])),
            "first_wipeout_fraction_mean": float(np.mean(firsts)) if firsts else None,
            "evaluations_saved_mean": float(np.mean([r["evaluations_saved"] or 0
                                                     for r in group])),
            "seconds_mean": float(np.mean([r["seconds"] for r in group])),
        }
        if "without_none" in group[0]:
            summary[name]["without_none_percentile_mean"] = float(
                np.mean([r["without_none"]["percentile"] for r in group]))
    return summary


def run_study(study: StudyConfig, table_path: Path, out: Path,
              report_only: bool = False) -> dict[str, Any]:
    """Runs every planned run not done yet (resumable), then writes the JSON and plots;
    ``report_only`` writes them from the runs done so far (marked ``complete: false``
    while planned runs are missing)."""
    table = quality_lib.load_table(table_path)
    proxy = table["config"]
    partial = out.with_suffix(".runs.jsonl")  # tracked: the study resumes in a new checkout
    partial.parent.mkdir(parents=True, exist_ok=True)
    fingerprint = json.loads(json.dumps({**dataclasses.asdict(study), "table": proxy}))
    for key in ("work_dir", "data_dir", "groups", "seeds", "lengths"):
        fingerprint.pop(key)
    done: dict[str, dict[str, Any]] = {}
    if partial.exists():
        for line in partial.read_text().splitlines():
            record = json.loads(line)
            if record["config"] == fingerprint:
                done[_key(record["spec"])] = record
    feedbacks = study.batch_size * 3 * proxy["cells_per_stage"]  # B r_c: every cell shares u

    def gap() -> float | None:
        long = [r["result"] for r in done.values()
                if variant(r["spec"]) == f"xnas/{study.longest}"]
        return float(np.mean([leader_gap(r, feedbacks) for r in long])) if long else None

    specs = list(plan(study, None))
    if "zeta" in study.groups:
        specs.append(None)  # the zeta runs, once the gap is known
    position = 0
    while position < len(specs):
        spec = specs[position]
        position += 1
        if spec is None:
            specs.extend(plan(dataclasses.replace(study, groups=("zeta",)), gap()))
            continue
        if _key(spec) in done:
            continue
        post_hoc = (spec["remedy"] or "").startswith("skip_cap")
        if report_only and not post_hoc:
            continue
        if post_hoc:
            base = done.get(_key({**spec, "remedy": None}))
            if base is None:
                continue  # its XNAS search is not done
            result = _post_hoc(base["result"], spec)
        elif spec["method"].startswith("random"):
            search_run = done.get(_key({**spec, "method": "xnas"}))
            if search_run is None:
                continue
            result = _random(proxy, study, spec, search_run["result"]["images"])
        else:
            result = _search(proxy, study, spec)
        done[_key(spec)] = {"config": fingerprint, "spec": spec, "result": result}
        with partial.open("a") as f:
            f.write(json.dumps(done[_key(spec)]) + "\n")
        run = _scored(table, spec, result)
        print(f"{run['variant']} seed {spec['seed']}: "
              f"{nb201.genotype_string(run['ops'], proxy['nodes'])} percentile "
              f"{run['percentile']:.0f}, {result['seconds']:.0f} s", flush=True)
    missing = sum(spec is not None and _key(spec) not in done for spec in specs)
    scored = [_scored(table, r["spec"], r["result"]) for r in done.values()
              if r["spec"]["epochs"] in study.lengths]
    # The skip bias, diagnosed on seed 0 of the longest XNAS searches: rewards per op and
    # edge, and the experts' output scales at init and at the end.
    diagnosis = {}
    for record in done.values():
        spec = record["spec"]
        if (spec["seed"] == 0 and spec["method"] == "xnas" and spec["epochs"] == study.longest
                and "cumulative_rewards" in record["result"]):
            entry = {"rewards": reward_statistics(record["result"], feedbacks)}
            if Path(_run_config(proxy, study, spec).out_dir, "checkpoints").is_dir():
                entry["output_rms"] = output_scales(proxy, study, spec)
            diagnosis[variant(spec)] = entry
    report = {"table": table_path.name, "config": fingerprint, "complete": missing == 0,
              "leader_gap": gap(),
              "ops": list(nb201.NB201_OPS),
              "edges": [f"{i}->{j}" for i, j in nb201.cell_edges(proxy["nodes"])],
              "summary": summarize(scored), "diagnosis": diagnosis, "runs": scored}
    out.write_text(json.dumps(report, indent=1) + "\n")
    plotting.plot_percentile_by_length(
        {method: {e: [r["percentile"] for r in scored if r["variant"] == f"{method}/{e}"]
                  for e in sorted(study.lengths)}
         for method in ("xnas", "darts", "random-1", "random-k")},
        out.with_name(out.stem + "_length.png"))
    for record in done.values():
        spec = record["spec"]
        if spec["seed"] == 0 and "cumulative_rewards" in record["result"]:
            name = variant(spec).replace("/", "_")
            plotting.plot_cumulative_rewards(
                record["result"]["cumulative_rewards"], nb201.NB201_OPS,
                [f"{i}->{j}" for i, j in nb201.cell_edges(proxy["nodes"])],
                out.with_name(f"{out.stem}_rewards_{name}.png"), title=variant(spec))
    return report


def _key(spec: dict[str, Any]) -> str:
    return f"{variant(spec)}#{spec['seed']}"


def main(argv: Sequence[str] | None = None) -> int:
    """The study, resumable; 0, or exit status 2 on bad input."""
    parser = experiments.argument_parser(__spec__.name, __doc__)
    defaults = StudyConfig()
    experiments.add_data_dir(parser)
    for flag, value in (("--seeds", defaults.seeds), ("--batch-size", defaults.batch_size),
                        ("--random-cells", defaults.random_cells)):
        parser.add_argument(flag, type=cli.positive_int, default=value,
                            help="(default: %(default)s)")
    parser.add_argument("--lengths", default=",".join(map(str, defaults.lengths)),
                        help="search lengths in proxy epochs, in the order they run "
                             "(default: %(default)s)")
    parser.add_argument("--groups", default=",".join(defaults.groups),
                        help="of length, remedies, warmup, zeta (default: %(default)s)")
    parser.add_argument("--work-dir", default=defaults.work_dir,
                        help="where the searches write (default: %(default)s)")
    parser.add_argument("--report-only", action="store_true",
                        help="write the report and plots from the runs done so far, running "
                             "none")
    parser.add_argument("--table", default=str(quality_lib.TABLE),
                        help="the NB201 table (default: %(default)s)")
    parser.add_argument("--out", default=str(experiments.RESULTS / "search_quality_study.json"),
                        help="the report; its runs go to <stem>.runs.jsonl beside it "
                             "(default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        lengths = tuple(int(x) for x in args.lengths.split(","))
    except ValueError:
        cli.fail(f"--lengths takes positive integers separated by commas, got {args.lengths!r}")
    groups = tuple(g.strip() for g in args.groups.split(",") if g.strip())
    unknown = [g for g in groups if g not in defaults.groups]
    if unknown or not groups:
        cli.fail(f"--groups takes {', '.join(defaults.groups)}, got {args.groups!r}")
    if min(lengths) < 1:
        cli.fail(f"--lengths takes positive integers, got {args.lengths!r}")
    study = dataclasses.replace(defaults, seeds=args.seeds, lengths=lengths, groups=groups,
                                batch_size=args.batch_size, random_cells=args.random_cells,
                                work_dir=args.work_dir, data_dir=args.data_dir)
    try:
        report = run_study(study, Path(args.table), Path(args.out), args.report_only)
    except (ValueError, nb201.SpaceError) as error:
        cli.fail(str(error))
    print(json.dumps(report["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
