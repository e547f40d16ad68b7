"""The benchmarks (benchmarks/): bench_search (records, configurations, usage errors),
compile_cost (kernels and the compile model) and the bfloat16-against-float32 search
comparison."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import assert_script_command_line, assert_usage_error
from benchmarks import bench_search, bfloat16_search, compile_cost, recipe_runs


@pytest.fixture(scope="module")
def records(tmp_path_factory, compilation_cache):
    out = tmp_path_factory.mktemp("bench")
    # Two of the 7 experts, a batch of 4: the smallest program the benchmark builds.
    assert bench_search.main([
        "--preset", "tiny", "--config", "batch=4,active_fraction=0.25,steps=2,repeats=2",
        *compilation_cache, "--cache-hit", "--out", str(out / "b.jsonl"),
    ]) == 0
    return [json.loads(line) for line in (out / "b.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_records_hold_every_figure(records):
    measured, cache_hit = records
    assert measured["preset"] == "tiny" and measured["batch"] == 4
    assert measured["experts_computed"] == ["max_pool_3x3", "sep_conv_3x3"]
    assert measured["active_fraction"] == pytest.approx(2 / 7)
    assert len(measured["step_ms_repeats"]) == 2 and measured["step_ms"] > 0
    assert measured["images_per_s"] == pytest.approx(2 * 4 / (measured["step_ms"] / 1000), 1e-2)
    assert measured["compile_s"] > 0 and measured["trace_s"] > 0 and measured["init_s"] > 0
    assert measured["xla_memory"]["total_bytes"] > 0
    assert 0 < measured["compiled_kernels"] < measured["executed_instructions"]  # loops
    assert all(v > 0 for v in measured["val_loss_per_repeat"])
    assert cache_hit["cache_hit_compile_s"] >= 0 and cache_hit["batch"] == 4


def test_config_strings():
    defaults = bench_search.Config(preset="darts", batch=64)
    config = bench_search.parse_config("batch=256, dtype=bfloat16,steps=10", defaults)
    assert config == defaults._replace(batch=256, dtype="bfloat16", steps=10)
    assert bench_search.parse_config("active-fraction=0.5", defaults).active_fraction == 0.5


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--config", "batch=sixty"], "batch must be int"),
        (["--config", "width=3"], "expected key=value"),
        (["--config", "dtype=float16"], "dtype must be one of"),
        (["--config", "active_fraction=0"], "active_fraction must be in (0, 1]"),
        (["--config", "layers=2"], "layers must be 0 (the preset's) or >= 3"),
        (["--batch", "0"], "batch, steps, repeats, seeds and devices must be >= 1"),
        (["--devices", "3"], "--devices 3: this run has 1 cpu device(s)"),
        (["--cache-hit"], "--cache-hit needs --compilation-cache"),
    ],
)
def test_bad_input_is_one_line(argv, fragment, capsys):
    with pytest.raises(SystemExit) as exit_:
        bench_search.main(argv)
    assert_usage_error(exit_.value.code, capsys.readouterr().err, fragment)


@pytest.mark.parametrize("module", [bench_search, bfloat16_search, compile_cost, recipe_runs])
def test_every_benchmark_has_the_same_command_line(module, capsys):
    assert_script_command_line(module, capsys)


def test_recipe_runs_reads_the_data_dir_flag_or_xnas_data_dir(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_:
        recipe_runs.main(["--data-dir", str(tmp_path / "flag"), "--out", str(tmp_path)])
    assert_usage_error(exit_.value.code, capsys.readouterr().err,
                       f"{tmp_path / 'flag'} lacks train.zip and test.zip")
    monkeypatch.setenv("XNAS_DATA_DIR", str(tmp_path / "env"))
    with pytest.raises(SystemExit) as exit_:
        recipe_runs.main(["--out", str(tmp_path)])
    assert_usage_error(exit_.value.code, capsys.readouterr().err, str(tmp_path / "env"))


@pytest.mark.slow
def test_bfloat16_search_compares_the_dtypes_over_seeds():
    result = bfloat16_search.run(
        num_seeds=2, channels=4, layers=3, nodes=2, ops=("max_pool_3x3", "skip_connect"),
        epochs=2, batch_size=16, max_steps_per_epoch=2, max_train_examples=200,
    )
    assert set(result["runs"]) == {"float32", "bfloat16"}
    final = {}
    for dtype, runs in result["runs"].items():
        assert [r["seed"] for r in runs] == [0, 1]
        for r in runs:
            assert len(r["val_loss"]) == 2 and np.all(np.isfinite(r["train_loss"]))
        final[dtype] = [r["val_loss"][-1] for r in runs]
    assert result["final_val_loss"] == final
    # Different seeds see different data: the spread is real, not zero.
    assert result["seed_spread"] == max(np.ptp(v) for v in final.values()) > 0
    assert result["dtype_gap"] == pytest.approx(abs(np.mean(final["bfloat16"])
                                                    - np.mean(final["float32"])))
    assert result["within_noise"] == (result["dtype_gap"] <= result["seed_spread"])
    assert result["setup"]["config"]["channels"] == 4


SYNTHETIC_HLO = """HloModule m, entry_computation_layout={(f32[4]{0})->f32[4]{0}}

%fused (p.1: f32[4]) -> f32[4] {
  %p.1 = f32[4]{0} parameter(0)
  %e = f32[4]{0} exponential(%p.1)
  ROOT %s = f32[4]{0} sine(%e)
}

%body (arg: (s32[], f32[4])) -> (s32[], f32[4]) {
  %arg = (s32[], f32[4]{0}) parameter(0)
  %i = s32[] get-tuple-element(%arg), index=0
  %x = f32[4]{0} get-tuple-element(%arg), index=1
  %y = f32[4]{0} fusion(%x), kind=kLoop, calls=%fused
  %one = s32[] constant(1)
  %j = s32[] add(%i, %one)
  ROOT %t = (s32[], f32[4]{0}) tuple(%j, %y)
}

%cond (arg.1: (s32[], f32[4])) -> pred[] {
  %arg.1 = (s32[], f32[4]{0}) parameter(0)
  %i.1 = s32[] get-tuple-element(%arg.1), index=0
  %n = s32[] constant(7)
  ROOT %lt = pred[] compare(%i.1, %n), direction=LT
}

ENTRY %main (x.1: f32[4]) -> f32[4] {
  %x.1 = f32[4]{0} parameter(0)
  %zero = s32[] constant(0)
  %init = (s32[], f32[4]{0}) tuple(%zero, %x.1)
  %w = (s32[], f32[4]{0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"7"}}
  %out = f32[4]{0} get-tuple-element(%w), index=1
  ROOT %neg = f32[4]{0} negate(%out)
}
"""


def test_executed_instructions_unrolls_loops():
    # 7 trips x (fusion + add in the body, compare in the condition) + negate.
    assert bench_search.executed_instructions(SYNTHETIC_HLO) == 7 * 3 + 1


def test_compiled_kernels_count_each_loop_body_once():
    # fusion + add in the body, compare in the condition, negate: 7 trips or not.
    assert bench_search.compiled_kernels(SYNTHETIC_HLO) == 3 + 1
    longer = SYNTHETIC_HLO.replace('"n":"7"', '"n":"70"').replace("constant(7)", "constant(70)")
    assert bench_search.compiled_kernels(longer) == 3 + 1
    assert bench_search.executed_instructions(longer) == 70 * 3 + 1


def test_distinct_kernels_count_identical_kernels_once():
    twin = """
%fused.2 (q: f32[4]) -> f32[4] {
  %q = f32[4]{0} parameter(0)
  %e.2 = f32[4]{0} exponential(%q), metadata={op_name="elsewhere"}
  ROOT %s.2 = f32[4]{0} sine(%e.2)
}

ENTRY %main"""
    text = SYNTHETIC_HLO.replace("\nENTRY %main", twin).replace(
        "ROOT %neg = f32[4]{0} negate(%out)",
        "%again = f32[4]{0} fusion(%out), kind=kLoop, calls=%fused.2\n"
        "  ROOT %neg = f32[4]{0} negate(%again)")
    assert bench_search.compiled_kernels(text) == 3 + 2
    # The loop's fusion and its renamed twin are one kernel (3 instructions).
    assert bench_search.distinct_kernels(text) == (3 + 1, 3 + 1 + 1 + 1)
    other = text.replace("%s.2 = f32[4]{0} sine", "%s.2 = f32[4]{0} cosine")
    assert bench_search.distinct_kernels(other) == (3 + 2, 3 + 3 + 1 + 1 + 1)


def test_kernels_by_part_split_the_step_by_op_name():
    cell = "jit(seeded)/transpose(jvp(SearchNetwork))/cell_3/"
    assert compile_cost.part_of(cell + "while/body/closed_call/vmap(MixedOp)/mul") == (
        "cell node scan")
    assert compile_cost.part_of(cell + "vmap(vmap(MixedOp))/MixedOp._conv_block/add") == (
        "cell input stage")
    assert compile_cost.part_of(cell + "preprocess0/BatchNorm_0/sub") == "cell preprocessing"
    assert compile_cost.part_of("jit(seeded)/jvp(SearchNetwork)/stem_conv/conv") == (
        "stem and classifier")
    assert compile_cost.part_of("jit(seeded)/add") == "outside the network"
    # The loop's fusion is named inside its fused computation, the negate on itself.
    text = SYNTHETIC_HLO.replace(
        "exponential(%p.1)", 'exponential(%p.1), metadata={op_name="' + cell + 'while/body/exp"}'
    ).replace("negate(%out)", 'negate(%out), metadata={op_name="jit(seeded)/neg"}')
    parts = compile_cost.kernels_by_part(text)
    assert parts["cell node scan"] == {"distinct_kernels": 1, "distinct_kernel_instructions": 3,
                                       "compiled_kernels": 1}
    assert parts["outside the network"]["compiled_kernels"] == 1
    assert parts["unnamed"]["compiled_kernels"] == 2  # the loop's add and compare
    assert sum(p["distinct_kernels"] for p in parts.values()) == (
        bench_search.distinct_kernels(text)[0])


def test_executed_instructions_grow_linearly_with_the_trip_count():
    import jax
    import jax.numpy as jnp

    def count(n):
        def f(x, w):
            return jax.lax.fori_loop(0, n, lambda i, x: jnp.tanh(x @ w), x)

        x = jnp.ones((8, 8))
        text = jax.jit(f).lower(x, x).compile().as_text()
        return bench_search.executed_instructions(text), bench_search.compiled_kernels(text)

    (one, k1), (two, k2), (three, k3) = count(5), count(10), count(15)
    assert two - one == three - two > 0
    assert k1 == k2 == k3 > 0  # the loop body is compiled once


def test_compile_cost_rejects_a_bad_depth_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        compile_cost.main(["--layers", "2"])
    assert_usage_error(exit_.value.code, capsys.readouterr().err, "each must be 0")


def test_compile_model_recovers_known_costs():
    # Compiled at exactly 30 ms per distinct kernel, 0.5 ms per instruction in
    # them and 8 ms per kernel; the probes' identical kernels separate the last.
    def row(distinct, instructions, compiled):
        return {"what": "step", "preset": "p", "layers": 3, "distinct_kernels": distinct,
                "distinct_kernel_instructions": instructions, "compiled_kernels": compiled,
                "compile_s": 0.03 * distinct + 0.0005 * instructions + 0.008 * compiled}

    programs = [row(100, 2000, 300), row(400, 3000, 900), row(900, 20000, 4000)]
    model = compile_cost.compile_model(programs, [row(1, 7, 300), row(300, 2100, 300)])
    assert model["ms_per_distinct_kernel"] == pytest.approx(30, abs=0.01)
    assert model["ms_per_distinct_instruction"] == pytest.approx(0.5, abs=1e-3)
    assert model["ms_per_compiled_kernel"] == pytest.approx(8, abs=0.01)
    assert [p["predicted_s"] for p in model["programs"]] == [
        round(p["compile_s"], 1) for p in programs]


def test_gradient_programs_compile_the_loss_and_its_weight_gradient():
    loss, gradient = compile_cost.gradient_programs("tiny", batch=2)
    assert (loss["what"], gradient["what"]) == ("loss", "weight_gradient")
    assert loss["layers"] == gradient["layers"] == 3
    # The backward pass adds the experts' gradient kernels to the forward's.
    assert gradient["distinct_kernels"] > loss["distinct_kernels"] > 0


def test_compile_cost_programs_have_the_kernels_requested():
    """The per-kernel probe's kernels do not fuse: N requested, N compiled."""
    result = compile_cost.per_kernel((3, 6, 9))
    assert [r["compiled_kernels"] for r in result["rows"]] == [3, 6, 9]
    assert [r["distinct_kernels"] for r in result["rows"]] == [3, 6, 9]
    # A compile time's slope: reported, never asserted (under load it can come out negative).
    assert np.isfinite(result["ms_per_kernel"])
    # The same 9 kernels on inputs of one shape: 9 compiled, 1 distinct.
    identical = result["identical"]
    assert (identical["compiled_kernels"], identical["distinct_kernels"]) == (9, 1)
