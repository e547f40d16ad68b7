"""Tests of the evaluation trainer and its command line (the checkpoint layer:
test_checkpointing.py).

One tiny run (digits 8x8, C=4, 3 cells, a few steps per epoch) is shared by
the module; the resume test continues a copy of it.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from xnas_jax import configs, optimizers, runs, spaces, train, train_step
from xnas_jax.spaces.darts import genotypes
from xnas_jax.spaces.nb201 import network as nb201
from xnas_jax.data import datasets
from conftest import TINY_TRAIN as TINY_FLAGS, assert_usage_error

def run_main(argv, capsys) -> tuple[int, str, str]:
    """Runs the CLI in-process: (exit code, stdout, stderr)."""
    try:
        code = train.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def saved_state(workdir: Path, step: int):
    return ocp.StandardCheckpointer().restore(workdir / runs.CHECKPOINT_DIR / str(step) / "state")


# --------------------------------------------------------------------------
# Training.


@pytest.fixture(scope="module")
def tiny_run(tiny_train):
    return tiny_train, json.loads((tiny_train / train.RESULTS_FILE).read_text())


def test_tiny_run_lowers_the_loss_and_writes_its_outputs(tiny_run):
    workdir, results = tiny_run
    log = [json.loads(line) for line in (workdir / runs.LOG_FILE).read_text().splitlines()]
    assert [record["epoch"] for record in log] == [1, 2, 3]
    assert [record["step"] for record in log] == [8, 16, 24]
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    assert log[-1]["test_loss"] < log[0]["test_loss"]
    assert log[-1]["test_loss"] < math.log(10)  # better than chance
    # Cosine annealing, per step: 0.05 at step 0, then lower at each epoch start.
    assert log[0]["lr"] == pytest.approx(0.05)
    assert log[0]["lr"] > log[1]["lr"] > log[2]["lr"] > 0
    for key in ("train_accuracy", "test_accuracy", "train_time_s", "train_images_per_s"):
        assert key in log[0]

    saved = results
    assert saved["test_error"] == pytest.approx(100 * (1 - log[-1]["test_accuracy"]), abs=1e-3)
    assert saved["params"] == 2642 and saved["params_with_aux"] > saved["params"]
    assert saved["flops_per_image"] > 0 and saved["train_images_per_s"] > 0
    steps = sorted(int(p.name) for p in (workdir / runs.CHECKPOINT_DIR).iterdir())
    assert steps == [8, 16, 24]  # numbered by step
    # Parameters and BN statistics are float32 and finite.
    state = saved_state(workdir, 24)
    assert int(state["step"]) == 24
    for leaf in jax.tree.leaves((state["params"], state["batch_stats"])):
        assert leaf.dtype == np.float32 and np.all(np.isfinite(leaf))


def test_resume_gives_the_uninterrupted_result(tiny_run, compilation_cache, tmp_path, capsys):
    workdir, results = tiny_run
    interrupted = tmp_path / "interrupted"
    shutil.copytree(workdir, interrupted)
    # As if the run had stopped after epoch 2: its last checkpoint is gone.
    shutil.rmtree(interrupted / runs.CHECKPOINT_DIR / "24")
    (interrupted / train.RESULTS_FILE).unlink()

    flags = TINY_FLAGS + compilation_cache + ["--out-dir", str(interrupted), "--resume"]
    code, out, err = run_main(flags, capsys)
    assert code == 0, err
    # The wait for the compile is announced before it starts.
    assert out.index("compiling the training and evaluation steps...") < out.index("compiled in")
    log = [json.loads(line) for line in (interrupted / runs.LOG_FILE).read_text().splitlines()]
    assert [record["epoch"] for record in log] == [1, 2, 3]  # epoch 3 replaced, not repeated

    expected, resumed = saved_state(workdir, 24), saved_state(interrupted, 24)
    assert jax.tree.structure(expected) == jax.tree.structure(resumed)
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(a, b)
    final = json.loads(out.strip().splitlines()[-1])
    assert final["test_accuracy"] == results["test_accuracy"]


def test_power_cosine_schedule():
    schedule = optimizers.power_cosine_schedule(0.1, 1000, cycles=5, cycle_decay=0.5, exponent=10)
    values = np.array([schedule(step) for step in (0, 100, 199, 200, 400, 999, 1000, 2000)])
    np.testing.assert_allclose(values[[0, 3, 4]], [0.1, 0.05, 0.025], rtol=1e-5)
    # Halfway through a cycle the power curve is below the cosine's half.
    assert values[1] == pytest.approx(0.1 * (10**0.5 - 1) / 9, rel=1e-5) and values[1] < 0.05
    assert values[2] < 1e-4 and values[5] < 1e-5 and values[6] == values[7] == 0
    cosine = optimizers.power_cosine_schedule(0.1, 100, exponent=1)
    reference = __import__("optax").cosine_decay_schedule(0.1, 100)
    for step in (0, 13, 50, 99):
        assert cosine(step) == pytest.approx(float(reference(step)), abs=1e-6)


def test_power_cosine_flags():
    config, _ = train.parse_args(
        ["--learning-rate-schedule", "power_cosine", "--cycles", "5", "--cycle-decay", "0.5",
         "--epochs", "10"]
    )
    schedule = train_step.learning_rate_schedule(config, steps_per_epoch=4)  # 40 steps, 8 per cycle
    np.testing.assert_allclose(
        [schedule(0), schedule(8), schedule(16), schedule(40)],
        [0.025, 0.0125, 0.00625, 0.0],
        rtol=1e-5,
    )


def test_bfloat16_step_keeps_float32_state():
    config, _ = train.parse_args(TINY_FLAGS + ["--dtype", "bfloat16"])
    setup = train_step.resolve_setup(config, (8, 8, 1), 10)
    model = train_step.build_model(config, setup)
    assert model.dtype == jnp.bfloat16
    tx = train_step.create_optimizer(config, train_step.learning_rate_schedule(config, 8))
    # Traced only: the types, not the numbers, are under test.
    state = jax.eval_shape(
        lambda: train_step.create_train_state(train.prng_key(0), model, (8, 8, 1), tx)
    )
    batch = {
        "image": jax.ShapeDtypeStruct((32, 8, 8, 1), jnp.uint8),
        "label": jax.ShapeDtypeStruct((32,), jnp.int32),
    }
    step = functools.partial(
        train_step.train_step, config=config, setup=setup, steps_per_epoch=8,
        mean=jnp.zeros(1), std=jnp.ones(1),
    )  # fmt: skip
    new_state, metrics = jax.eval_shape(step, state, batch)
    arrays = (new_state.params, new_state.batch_stats, new_state.opt_state)
    assert {leaf.dtype for leaf in jax.tree.leaves(arrays)} <= {
        jnp.dtype(jnp.float32), jnp.dtype(jnp.int32)
    }
    assert all(m.dtype == jnp.float32 for m in metrics.values())


def test_summary_prints_one_json_line_without_data(capsys, monkeypatch):
    def no_data(*args, **kwargs):
        raise AssertionError("--summary must not load data")

    monkeypatch.setattr(datasets, "load_dataset", no_data)
    flags = ["--genotype", "DARTS_V2", "--dataset", "cifar10", "--summary"]
    code, out, err = run_main(flags, capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert summary["genotype"] == "DARTS_V2" and summary["dataset"] == "cifar10"
    assert summary["params"] == 3_349_342
    assert summary["params_with_aux"] == 3_825_768
    assert summary["flops_per_image"] == 528_359_040
    assert summary["input_shape"] == [32, 32, 3] and summary["num_classes"] == 10


# --------------------------------------------------------------------------
# Bad input: one line, exit code 2, nothing written.

_BAD_OP = json.dumps(
    genotypes.genotype_to_dict(genotypes.DARTS_V2)
    | {"normal": [["conv_9x9", 0]] + [list(p) for p in genotypes.DARTS_V2.normal[1:]]}
)
_BAD_EDGE = json.dumps(
    genotypes.genotype_to_dict(genotypes.DARTS_V2)
    | {"reduce": [["max_pool_3x3", 5]] + [list(p) for p in genotypes.DARTS_V2.reduce[1:]]}
)


@pytest.mark.parametrize(
    "flags, fragments",
    [
        (["--genotype", "NO_SUCH_CELL"], ["unknown genotype", "NO_SUCH_CELL"]),
        (["--genotype", _BAD_OP], ["unknown op", "conv_9x9"]),
        (["--genotype", _BAD_EDGE], ["out of range", "reduce[0]"]),
        (["--genotype", "{not json"], ["not valid JSON"]),
        (["--epochs", "-3"], ["--epochs", "-3"]),
        (["--epochs", "0"], ["--epochs"]),
        (["--batch-size", "many"], ["--batch-size", "many"]),
        (["--dataset", "imagenet21k"], ["--dataset", "invalid choice"]),
        (["--drop-path-prob", "1.5"], ["--drop-path-prob"]),
        (["--dataset", "imagenet"], ["imagenet", "--summary", "image_folder"]),
    ],
    ids=["unknown-genotype", "bad-op", "bad-edge", "bad-json", "negative-epochs", "zero-epochs",
         "bad-int", "unknown-dataset", "bad-probability", "summary-only-dataset"],  # fmt: skip
)
def test_bad_flags(flags, fragments, tmp_path, capsys):
    out_dir = tmp_path / "out"
    code, _, err = run_main(["--dataset", "digits", "--out-dir", str(out_dir)] + flags, capsys)
    assert_usage_error(code, err, *fragments)
    assert not out_dir.exists()


def test_dataset_not_available(tmp_path, capsys):
    empty = tmp_path / "no_cifar_here"
    empty.mkdir()
    code, _, err = run_main(
        ["--dataset", "cifar10", "--data-dir", str(empty), "--out-dir", str(tmp_path / "out")],
        capsys,
    )
    assert_usage_error(code, err, "cifar10", str(empty))


def test_unwritable_out_dir(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("")
    code, _, err = run_main(TINY_FLAGS + ["--out-dir", str(a_file / "out")], capsys)
    assert_usage_error(code, err, "--out-dir", "not writable")


def test_summary_needs_a_shape_for_image_folders(capsys):
    code, _, err = run_main(["--dataset", "image_folder", "--summary"], capsys)
    assert_usage_error(code, err, "--image-size")
    code, out, err = run_main(
        ["--dataset", "image_folder", "--summary", "--image-size", "16", "--image-channels", "1",
         "--num-classes", "5", "--channels", "4", "--layers", "3"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["input_shape"] == [16, 16, 1]


def test_existing_checkpoints_need_resume(tiny_run, tmp_path, capsys):
    workdir, _ = tiny_run
    before = sorted(str(p) for p in workdir.rglob("*"))
    code, _, err = run_main(TINY_FLAGS + ["--out-dir", str(workdir)], capsys)
    assert_usage_error(code, err, str(workdir / runs.CHECKPOINT_DIR), "--resume")
    assert sorted(str(p) for p in workdir.rglob("*")) == before


def test_resume_with_other_settings_is_refused(tiny_run, capsys):
    workdir, _ = tiny_run
    before = sorted(str(p) for p in workdir.rglob("*"))
    flags = TINY_FLAGS + ["--out-dir", str(workdir), "--resume", "--weight-decay", "0.001"]
    code, _, err = run_main(flags, capsys)
    checkpoints = str(workdir / runs.CHECKPOINT_DIR)
    assert_usage_error(code, err, "incompatible", checkpoints, "weight_decay")
    assert sorted(str(p) for p in workdir.rglob("*")) == before


def test_command_line_exit_code():
    result = subprocess.run(
        [sys.executable, "-m", "xnas_jax.train", "--genotype", "NOPE", "--summary"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        line for line in result.stderr.strip().splitlines() if line.startswith("error: ")
    ]
    assert "unknown genotype 'NOPE'" in result.stderr


# --------------------------------------------------------------------------
# Named recipes.


def _resolved(capsys, *flags):
    """The recipe settings a command line resolves to (as --summary prints them)."""
    config, _ = train.parse_args(["--dataset", "cifar10", *flags])
    cutout = 16 if config.cutout is None else config.cutout
    return {**configs.recipe_settings(config), "cutout": cutout}


def test_recipes_resolve_to_the_papers_settings(capsys):
    code, out, err = run_main(["--summary", "--dataset", "cifar10", "--recipe", "xnas"], capsys)
    assert code == 0, err
    xnas = json.loads(out)["recipe"]
    assert xnas == _resolved(capsys, "--recipe", "xnas")
    assert {k: xnas[k] for k in ("epochs", "batch_size", "learning_rate_schedule", "cycles",
                                 "cycle_decay",
                                 "nesterov", "autoaugment", "label_smoothing", "cutout")} == {
        "epochs": 1500, "batch_size": 96, "learning_rate_schedule": "power_cosine", "cycles": 5,
        "cycle_decay": 0.5, "nesterov": True, "autoaugment": True, "label_smoothing": 0.1,
        "cutout": 16}
    # Where the paper is silent: DARTS's values.
    assert (xnas["learning_rate"], xnas["weight_decay"], xnas["drop_path_prob"],
            xnas["auxiliary_weight"], xnas["grad_clip"]) == (0.025, 3e-4, 0.2, 0.4, 5.0)
    darts = _resolved(capsys, "--recipe", "darts")
    assert (darts["epochs"], darts["learning_rate_schedule"], darts["nesterov"],
            darts["autoaugment"],
            darts["label_smoothing"]) == (600, "cosine", False, False, 0.0)
    assert _resolved(capsys) == darts  # the default recipe
    imagenet = _resolved(capsys, "--recipe", "xnas-imagenet", "--size", "xnas-imagenet",
                         "--image-size", "64", "--num-classes", "100")
    assert (imagenet["network"], imagenet["epochs"], imagenet["cycles"], imagenet["nesterov"],
            imagenet["learning_rate_schedule"]) == ("imagenet", 250, 1, True, "power_cosine")


def test_every_flag_overrides_the_recipe_and_sizes_keep_it(capsys):
    flags = ["--recipe", "xnas", "--epochs", "7", "--no-nesterov", "--no-autoaugment",
             "--cycles", "2", "--label-smoothing", "0", "--cutout", "8", "--learning-rate", "0.1"]
    got = _resolved(capsys, *flags)
    assert (got["epochs"], got["nesterov"], got["autoaugment"], got["cycles"],
            got["label_smoothing"], got["cutout"], got["learning_rate"]) == (
        7, False, False, 2, 0.0, 8, 0.1)
    small = _resolved(capsys, "--recipe", "xnas", "--size", "xnas-small")
    large = _resolved(capsys, "--recipe", "xnas", "--size", "xnas-large")
    assert small == large == _resolved(capsys, "--recipe", "xnas")


@pytest.mark.parametrize(
    "flags, fragments",
    [
        (["--recipe", "fast"], ["--recipe", "invalid choice", "fast"]),
        (["--recipe", "xnas", "--network", "imagenet"], ["xnas", "cifar", "xnas-imagenet"]),
        (["--recipe", "xnas-imagenet", "--size", "xnas-small"], ["imagenet", "not cifar"]),
    ],
)
def test_bad_recipes(flags, fragments, tmp_path, capsys):
    code, _, err = run_main(flags + ["--summary"], capsys)
    assert_usage_error(code, err, *fragments)


@pytest.mark.parametrize("recipe", ["xnas", "darts"])
@pytest.mark.slow
def test_one_training_step_of_each_recipe(recipe):
    """A real step (AutoAugment included for xnas) on a tiny network lowers nothing to NaN."""
    config, _ = train.parse_args(["--recipe", recipe, "--dataset", "cifar10", "--channels", "2",
                                  "--layers", "3", "--batch-size", "4", "--epochs", "2"])
    assert config.autoaugment == (recipe == "xnas")
    setup = train_step.resolve_setup(config, (8, 8, 3), 10)
    model = train_step.build_model(config, setup)
    tx = train_step.create_optimizer(config, train_step.learning_rate_schedule(config, 4))
    state = train_step.create_train_state(train.prng_key(0), model, (8, 8, 3), tx)
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)),
             "label": jnp.asarray([0, 1, 2, 3])}
    step = jax.jit(functools.partial(train_step.train_step, config=config, setup=setup,
                                     steps_per_epoch=4, mean=jnp.full(3, 0.5),
                                     std=jnp.full(3, 0.25)))
    new_state, metrics = step(state, batch)
    assert int(new_state.step) == 1 and np.isfinite(float(metrics["loss"]))
    moved = [np.abs(np.asarray(a) - np.asarray(b)).max()
             for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(new_state.params))]
    assert max(moved) > 0


def test_autoaugment_needs_rgb_images():
    config, _ = train.parse_args(["--recipe", "xnas", "--dataset", "digits"])
    with pytest.raises(configs.ConfigError, match="RGB"):
        train_step.resolve_setup(config, (8, 8, 1), 10)


# --------------------------------------------------------------------------
# A cell of the nb201 space: the same trainer, its network built by the space.

NB201_CELL = "|nor_conv_3x3~0|+|skip_connect~0|avg_pool_3x3~1|"


def _nb201_genotype_file(folder: Path) -> Path:
    """An nb201 search's genotype.json (the form NB201Space.write gives it)."""
    path = folder / "genotype.json"
    path.write_text(json.dumps({"space": "nb201", "nodes": 3, "genotype": NB201_CELL,
                                "ops": list(nb201.parse_genotype(NB201_CELL))}))
    return path


def test_an_nb201_genotype_trains_its_own_network(tmp_path, capsys, compilation_cache):
    path = _nb201_genotype_file(tmp_path)
    out = tmp_path / "run"
    flags = ["--genotype", str(path), "--dataset", "digits", "--channels", "4", "--layers", "1",
             "--epochs", "1", "--batch-size", "32", "--max-steps-per-epoch", "4",
             "--max-train-examples", "256", "--max-test-examples", "64", "--no-progress",
             "--out-dir", str(out), *compilation_cache]
    code, stdout, err = run_main(flags, capsys)
    assert code == 0, err
    results = json.loads((out / train.RESULTS_FILE).read_text())
    assert results["space"] == "nb201" and results["genotype"] == NB201_CELL
    assert results["genotype_cell"]["ops"] == ["nor_conv_3x3", "skip_connect", "avg_pool_3x3"]
    assert results["network"] == "nb201" and results["config"]["recipe"] == "nb201"
    assert 0.0 <= results["test_accuracy"] <= 1.0
    # The network: the benchmark's with the found ops, no auxiliary tower.
    assert results["params"] == results["params_with_aux"]
    config, _ = train.parse_args(flags)
    model = train_step.build_model(config, train_step.resolve_setup(config, (8, 8, 1), 10))
    assert isinstance(model, nb201.NB201EvalNetwork)
    assert model.genotype == ("nor_conv_3x3", "skip_connect", "avg_pool_3x3")
    params = saved_state(out, 4)["params"]
    # Only the convolution holds weights: the skip and the pooling have none.
    assert {name: sorted(edge) for name, edge in params["cell_0"].items()} == {
        "edge_0_1": ["nor_conv_3x3"]}
    assert results["params"] == sum(np.size(a) for a in jax.tree.leaves(params))


def test_nb201_recipe_is_the_benchmarks_and_its_cells_default(capsys):
    code, out, err = run_main(["--genotype", NB201_CELL, "--summary"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["space"], summary["network"], summary["channels"], summary["layers"]) == (
        "nb201", "nb201", 16, 5)
    recipe = summary["recipe"]
    assert {k: recipe[k] for k in ("recipe", "epochs", "batch_size", "learning_rate",
                                   "learning_rate_min", "learning_rate_schedule", "momentum",
                                   "nesterov", "weight_decay", "grad_clip", "auxiliary_weight",
                                   "drop_path_prob", "label_smoothing", "autoaugment",
                                   "cutout")} == {
        "recipe": "nb201", "epochs": 200, "batch_size": 256, "learning_rate": 0.1,
        "learning_rate_min": 0.0, "learning_rate_schedule": "cosine", "momentum": 0.9,
        "nesterov": True, "weight_decay": 5e-4, "grad_clip": None, "auxiliary_weight": 0.0,
        "drop_path_prob": 0.0, "label_smoothing": 0.0, "autoaugment": False, "cutout": 0}
    assert summary["params"] == summary["params_with_aux"] and summary["flops_per_image"] > 0
    # A DARTS cell keeps DARTS's recipe by default.
    code, out, err = run_main(["--genotype", "XNAS", "--summary"], capsys)
    assert json.loads(out)["recipe"]["recipe"] == "darts"


@pytest.mark.parametrize(
    "flags, fragments",
    [
        (["--genotype", NB201_CELL, "--recipe", "darts"],
         ["nb201 network, not the cifar network of --recipe darts", "--recipe nb201"]),
        (["--genotype", NB201_CELL, "--auxiliary-weight", "0.4"],
         ["no auxiliary tower", "--auxiliary-weight 0"]),
        (["--genotype", NB201_CELL, "--drop-path-prob", "0.2"],
         ["no drop-path", "--drop-path-prob 0"]),
        (["--genotype", NB201_CELL, "--size", "xnas-small"],
         ["--size xnas-small", "leave --size out"]),
        (["--genotype", "XNAS", "--recipe", "nb201"],
         ["darts space trains the cifar or imagenet network", "--recipe darts"]),
        (["--genotype", "|nor_conv_3x3~0|+|conv_9x9~0|none~1|"], ["'conv_9x9'", "nb201"]),
        (["--genotype", "|nor_conv_3x3~1|"], ["not an nb201 cell"]),
        (["--genotype", '{"space": "nas101", "ops": []}'], ["unknown search space 'nas101'"]),
        (["--genotype", '{"space": "nb201", "ops": "x"}'], ["nb201 genotype needs"]),
    ],
    ids=["darts-recipe", "auxiliary", "drop-path", "darts-size", "darts-cell-nb201-recipe",
         "bad-op", "bad-cell-string", "unknown-space", "bad-nb201-json"],
)
def test_bad_nb201_training_is_one_line(flags, fragments, tmp_path, capsys):
    out_dir = tmp_path / "out"
    code, _, err = run_main(["--dataset", "digits", "--out-dir", str(out_dir)] + flags, capsys)
    assert_usage_error(code, err, *fragments)
    assert not out_dir.exists()


def test_a_space_without_training_is_one_line():
    class SearchOnly:
        name = "search-only"

    spaces.SPACES["search-only"] = SearchOnly()
    try:
        with pytest.raises(ValueError, match="the search-only space cannot train a cell: it "
                                             "lacks .*read_genotype"):
            spaces.read_genotype('{"space": "search-only"}')
    finally:
        spaces.SPACES.pop("search-only")
