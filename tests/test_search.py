"""End-to-end search through the CLI: outputs, resume, the DARTS baseline, bad input."""

from __future__ import annotations

import json
import os
import runpy
import shutil
import signal
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from conftest import FEW_OPS, TINY_SEARCH as TINY, assert_usage_error
from xnas_jax import search, search_step
from xnas_jax.spaces.darts import genotypes

DARTS = TINY + ["--optimizer", "darts", "--epochs", "1"]


def run_main(argv, capsys) -> tuple[int, str, str]:
    try:
        search.main(argv)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def final_state(out_dir: Path, step: int):
    return ocp.StandardCheckpointer().restore(out_dir / "checkpoints" / str(step) / "state")


def read_log(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]


def search_into(out_dir: Path, flags: list[str]) -> Path:
    """Runs the CLI search with ``flags`` into ``out_dir``; fails the test if it exits."""
    try:
        search.main(flags + ["--out-dir", str(out_dir)])
    except SystemExit as exit_:
        pytest.fail(f"search exited with {exit_.code}")
    return out_dir


def test_search_writes_every_output(tiny_search):
    for name in ("genotype.json", "genotype.txt", "genotype.py", "normal.png", "reduce.png",
                 "log.jsonl", "arch_normal.png", "arch_reduce.png", "active_experts.png",
                 "losses.png"):
        assert (tiny_search / name).stat().st_size > 0, name
    genotype = genotypes.load_genotype(tiny_search / "genotype.json")
    log = read_log(tiny_search)
    assert [r["epoch"] for r in log] == [1, 2] and [r["step"] for r in log] == [3, 6]
    # The saved genotype ranks edges by the rewards the search accumulated
    # (one-hot weights at the horizon would tie every edge), and says so.
    arch, rewards = log[-1]["arch"], log[-1]["rewards"]
    expected = genotypes.discretize(
        np.array(arch["normal"]), np.array(arch["reduce"]), FEW_OPS.split(","),
        rewards={k: np.array(v) for k, v in rewards.items()},
    )
    assert genotype == expected
    selection = json.loads((tiny_search / "genotype.json").read_text())["selection"]
    assert selection["rule"] == "cumulative_reward"
    for cell in ("normal", "reduce"):
        kept = [(e["node"], e["source"]) for e in selection[cell] if e["kept"]]
        assert sorted(kept) == sorted((node // 2 + 2, source) for node, (_, source)
                                      in enumerate(getattr(genotype, cell)))
        assert len({e["strength"] for e in selection[cell]}) > 1  # not tied
    assert log[-1]["first_wipeout_step"] is not None
    assert 0 <= log[-1]["clipped_fraction"]["normal"] <= 1
    for record in log:
        for kind in ("normal", "reduce"):
            u = np.array(record["arch"][kind])
            assert u.shape == (14, 4)
            np.testing.assert_allclose(u.sum(-1), 1.0, atol=1e-5)
            active = np.array(record["active"][kind], bool)
            assert record["active_experts"][kind] == int(active.sum())
            assert (u[~active] == 0).all()  # wiped out: exactly 0
    # The horizon is the run's 6 steps: at t = T every forecaster keeps its leader only.
    assert log[-1]["active_experts"] == {"normal": 14, "reduce": 14}
    assert log[0]["active_experts"]["normal"] > 14
    assert np.isfinite(log[-1]["train_loss"]) and log[-1]["images_per_second"] > 0


def test_resume_after_a_lost_epoch_gives_the_same_result(tiny_search, compilation_cache, tmp_path,
                                                         capsys):
    resumed = tmp_path / "resumed"
    shutil.copytree(tiny_search, resumed)
    shutil.rmtree(resumed / "checkpoints" / "6")  # as if the run died during epoch 2
    code, out, err = run_main(TINY + compilation_cache + ["--out-dir", str(resumed), "--resume"],
                              capsys)
    assert code == 0, err
    assert "resuming at step 3" in out
    # The wait for the compile is announced before it starts.
    assert out.index("compiling the search step (4 normal, 4 reduce experts)...") < out.index(
        "compiled the search step (4 normal, 4 reduce experts) in")
    assert [r["epoch"] for r in read_log(resumed)] == [1, 2]
    assert (resumed / "genotype.json").read_text() == (tiny_search / "genotype.json").read_text()
    expected, got = final_state(tiny_search, 6), final_state(resumed, 6)
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "how, saved_step",
    [
        ("ctrl-c before the step", 4),  # KeyboardInterrupt before the 5th step runs
        ("sigterm during the step", 5),  # the 5th step finishes, then the run stops
        ("ctrl-c after the step", 3),  # the 5th step took the state: epoch 1's checkpoint
    ],
)
@pytest.mark.slow
def test_interrupt_saves_and_resumes(tiny_search, compilation_cache, tmp_path, monkeypatch,
                                     capsys, how, saved_step):
    out_dir = tmp_path / "interrupted"
    make_step = search_step.make_search_step
    calls = {"n": 0}

    class Interrupting:  # a compiled step interrupted at its 5th call
        def __init__(self, jitted):
            self.jitted = jitted

        def lower(self, *args):
            lowered = self.jitted.lower(*args)

            class Compiled:
                def compile(_):
                    compiled = lowered.compile()

                    def call(*a):
                        calls["n"] += 1
                        if calls["n"] != 5:
                            return compiled(*a)
                        if how == "ctrl-c before the step":
                            raise KeyboardInterrupt
                        if how == "sigterm during the step":
                            os.kill(os.getpid(), signal.SIGTERM)
                            return compiled(*a)
                        compiled(*a)  # donates the state, then the result is lost
                        raise KeyboardInterrupt

                    return call

            return Compiled()

    monkeypatch.setattr(search_step, "make_search_step",
                        lambda *a, **k: Interrupting(make_step(*a, **k)))
    code, _, err = run_main(TINY + compilation_cache + ["--out-dir", str(out_dir)], capsys)
    assert code == 130 and "--resume" in err, err
    saved = sorted(int(p.name) for p in (out_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved[-1] == saved_step
    monkeypatch.setattr(search_step, "make_search_step", make_step)
    code, out, err = run_main(TINY + compilation_cache + ["--out-dir", str(out_dir), "--resume"],
                              capsys)
    assert code == 0, err
    assert f"resuming at step {saved_step}" in out
    assert (out_dir / "genotype.json").read_text() == (tiny_search / "genotype.json").read_text()
    timing = {"seconds", "compile_seconds_total", "images_per_second"}
    for got, expected in zip(read_log(out_dir), read_log(tiny_search), strict=True):
        # The metrics of the steps before the stop were saved with the checkpoint.
        assert {k: v for k, v in got.items() if k not in timing} == {
            k: v for k, v in expected.items() if k not in timing}
    for a, b in zip(jax.tree.leaves(final_state(tiny_search, 6)),
                    jax.tree.leaves(final_state(out_dir, 6))):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def darts_search(tmp_path_factory, compilation_cache):
    """The tiny search with the DARTS baseline (softmax weights, no wipeout)."""
    return search_into(tmp_path_factory.mktemp("darts"), DARTS + compilation_cache)


def test_darts_baseline_runs_on_the_same_supernet(darts_search):
    (record,) = read_log(darts_search)
    # Softmax weights are never exactly 0: nothing is wiped out, nothing skipped.
    assert record["active_experts"] == {"normal": 56, "reduce": 56}
    u = np.array(record["arch"]["normal"])
    assert not np.allclose(u, 0.25)  # the architecture weights moved
    assert "node 2 <-" in (darts_search / "genotype.txt").read_text()


def test_summary_of_the_darts_search_network(capsys):
    code, out, _ = run_main(["--dataset", "cifar10", "--summary"], capsys)
    assert code == 0
    summary = json.loads(out)
    assert summary["params"] == 1_930_618  # as the reference DARTS search network
    assert summary["mixture_weights"] == {"normal": [14, 7], "reduce": [14, 7]}
    assert summary["channels"] == 16 and summary["layers"] == 8


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        search.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for action in search.parser()._actions:
        for flag in action.option_strings:
            assert flag in text
        if action.option_strings and action.dest != "help":
            assert action.help, action.option_strings


def test_genotype_py_loads_in_the_darts_reference_form(tiny_search):
    """genotype.py, run as the DARTS code would import it, holds the written genotype:
    (op, input) pairs node by node, and concat range(2, 2 + nodes)."""
    module = runpy.run_path(str(tiny_search / "genotype.py"))
    found = module["GENOTYPE"]
    assert type(found).__name__ == "Genotype"
    assert found._fields == ("normal", "normal_concat", "reduce", "reduce_concat")
    expected = genotypes.load_genotype(tiny_search / "genotype.json")
    nodes = len(expected.normal) // 2
    for cell in ("normal", "reduce"):
        pairs = getattr(found, cell)
        assert pairs == [tuple(pair) for pair in getattr(expected, cell)]
        assert all(type(op) is str and type(source) is int for op, source in pairs)
        assert getattr(found, f"{cell}_concat") == range(2, 2 + nodes)


def _odd_image_folder(root: Path) -> Path:
    for label in ("a", "b"):
        (root / "train" / label).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((6, 6, 3), 40 * i, np.uint8)).save(
                root / "train" / label / f"{i}.png"
            )
    return root


@pytest.mark.parametrize(
    "flags, fragments",
    [
        (["--dataset", "nope"], ["--dataset", "nope"]),
        (["--epochs", "-1"], ["--epochs", "-1"]),
        (["--epochs", "0"], ["--epochs"]),
        (["--wipeout-factor", "1.5"], ["--wipeout-factor", "1.5"]),
        (["--wipeout-factor", "0"], ["--wipeout-factor", "0"]),
        (["--reward-bound", "-1"], ["--reward-bound", "-1"]),
        (["--epochs", "2", "--warmup-epochs", "2"], ["--warmup-epochs", "--epochs"]),
        (["--warmup-epochs", "-1"], ["--warmup-epochs", "-1"]),
        (["--skip-cap", "1"], ["--skip-cap", "nb201"]),
        (["--normalized-rewards"], ["--normalized-rewards", "nb201"]),
        (["--downsample", "3"], ["8x8", "by 3"]),
        (["--ops", "sep_conv_3x3,conv_9x9"], ["conv_9x9"]),
        (["--dataset", "cifar10", "--layers", "8", "--data-dir", "/nonexistent/dir"],
         ["/nonexistent/dir"]),
    ],
)
def test_bad_flags_fail_fast(flags, fragments, tmp_path, capsys):
    code, _, err = run_main(flags + ["--out-dir", str(tmp_path)], capsys)
    assert_usage_error(code, err, *fragments)


def test_image_too_small_for_the_reductions(tmp_path, capsys):
    data = _odd_image_folder(tmp_path / "data")
    flags = ["--dataset", "image_folder", "--data-dir", str(data), "--layers", "3",
             "--batch-size", "2", "--out-dir", str(tmp_path / "out")]
    code, _, err = run_main(flags, capsys)
    assert_usage_error(code, err, "6x6", "reduction")


def test_unwritable_out_dir(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, _, err = run_main(TINY + ["--out-dir", str(blocker / "out")], capsys)
    assert_usage_error(code, err, "--out-dir")


def test_existing_checkpoints_need_resume(tiny_search, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_search, copy)
    code, _, err = run_main(TINY + ["--out-dir", str(copy)], capsys)
    assert_usage_error(code, err, "--resume")


def test_resume_with_other_settings_or_a_corrupt_checkpoint(tiny_search, tmp_path, capsys,
                                                             monkeypatch, compilation_cache):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_search, copy)
    code, _, err = run_main(TINY + ["--out-dir", str(copy), "--resume", "--seed", "7"], capsys)
    assert_usage_error(code, err, "seed")
    # A checkpoint of an older supernet layout is refused by name, not restored.
    with monkeypatch.context() as patch:
        patch.setattr(search, "VARIABLES_LAYOUT", search.VARIABLES_LAYOUT + 1)
        code, _, err = run_main(TINY + ["--out-dir", str(copy), "--resume"], capsys)
    assert_usage_error(code, err, "supernet_layout")
    for file in (copy / "checkpoints" / "6" / "state").rglob("*"):
        if file.is_file():
            file.write_bytes(b"garbage")
    # An unreadable checkpoint is named, moved aside (never removed or
    # overwritten), and the run continues from the one before it.
    code, out, err = run_main(TINY + compilation_cache + ["--out-dir", str(copy), "--resume"],
                              capsys)
    assert code == 0, err
    assert str(copy / "checkpoints" / "6") in out and "resuming from step 3" in out
    assert (copy / "corrupt" / "6").is_dir()
    assert (copy / "genotype.json").read_text() == (tiny_search / "genotype.json").read_text()


def test_warmup_keeps_u_uniform_then_plays_the_rounds(compilation_cache, tmp_path):
    """--warmup-epochs 1 of 2: u, the rewards and the active set stay as they began for the
    first epoch; the rounds of the second epoch are XNAS with the horizon of that epoch."""
    out = search_into(tmp_path / "run", TINY + compilation_cache + ["--warmup-epochs", "1"])
    first, last = read_log(out)
    for kind in ("normal", "reduce"):
        np.testing.assert_array_equal(np.array(first["arch"][kind]), 0.25)
        np.testing.assert_array_equal(np.array(first["rewards"][kind]), 0.0)
        assert first["active_experts"][kind] == 56
        assert np.abs(np.array(last["rewards"][kind])).sum() > 0
    # The horizon T is the 3 steps after the warm-up: at t = T one expert per edge is left.
    assert last["active_experts"] == {"normal": 14, "reduce": 14}
    assert first["first_wipeout_step"] is None and last["first_wipeout_step"] > 3
