"""The paper's experiments (experiments/paper/): the functional-unit claims (section 3.2),
checked on reduced runs, and the command line the experiments share.

Each experiment's ``run`` is called once per module at a reduced size; the
tests assert its qualitative claim.  The first tests check the harness itself
against hand-computed values.
"""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import optax
import pytest

from conftest import assert_script_command_line, assert_usage_error
from experiments.paper import (
    autoaugment_draws,
    entropy_vs_weight_decay,
    init_robustness,
    late_bloomers,
    pea,
    regret,
    wipeout,
    wipeout_search,
)
from xnas_jax.optimizers import softmax_gd, xnas

# ---------------------------------------------------------------------- harness


def test_play_xnas_matches_hand_computed_regret_wipeout_and_savings():
    # Two experts, eta = 1, L = 1, T = 4; expert 1 loses 1 every round, so its
    # log-weight gap is t while the margin is 2 (T - t): it is wiped out at t = 3.
    losses = np.tile([[0.0, 1.0]], (4, 1))
    rollout = pea.play(xnas(1.0, 1.0, 4), np.array([0.5, 0.5]), losses)

    np.testing.assert_array_equal(rollout.rounds, [1, 2, 3, 4])
    np.testing.assert_array_equal(rollout.active[:, 1], [True, True, False, False])
    # u_{t,1} = e^-t / (1 + e^-t) until the wipeout; the list holds t = 0..4.
    u_expert_1 = [1 / (1 + math.exp(t)) for t in (0, 1, 2)] + [0.0, 0.0]
    np.testing.assert_allclose(rollout.weights[:, 1], u_expert_1[1:], rtol=1e-5, atol=1e-7)
    # Round t's regret to expert 0 (the best) is the weight u_{t-1} put on expert 1.
    np.testing.assert_allclose(pea.regret(rollout), np.cumsum(u_expert_1[:-1]), rtol=1e-5)
    np.testing.assert_array_equal(pea.best_in_hindsight(rollout), [0, 0, 0, 0])
    # Gamma_3 = 1 + e^-3 / 1; no other round wipes anything out.
    expected_log_gamma = [0.0, 0.0, math.log1p(math.exp(-3)), math.log1p(math.exp(-3))]
    np.testing.assert_allclose(rollout.log_wipeout_factor, expected_log_gamma, rtol=1e-5)
    # Round 4 is played by I_3 = {0}: one evaluation saved.
    np.testing.assert_array_equal(rollout.evaluations_saved, [0, 0, 0, 1])


def test_play_records_every_k_rounds_with_cumulative_sums_over_all_rounds():
    losses = np.arange(24, dtype=np.float32).reshape(6, 1, 4) % 5
    frozen = softmax_gd(optax.sgd(0.0))  # u stays uniform
    rollout = pea.play(frozen, pea.uniform_weights((1,), 4), losses, record_every=3)

    np.testing.assert_array_equal(rollout.rounds, [3, 6])
    per_round = losses.mean(-1, keepdims=True) - losses
    np.testing.assert_allclose(rollout.regret_to_experts, np.cumsum(per_round, 0)[2::3], rtol=1e-6)
    np.testing.assert_array_equal(rollout.log_wipeout_factor, 0.0)
    np.testing.assert_array_equal(rollout.evaluations_saved, 0.0)
    with pytest.raises(ValueError, match="record_every"):
        pea.play(frozen, pea.uniform_weights((1,), 4), losses, record_every=4)


def test_entropy_recovery_rounds_and_bound_helpers():
    uniform_and_one_hot = np.array([[0.25] * 4, [1.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(pea.normalized_entropy(uniform_and_one_hot), [1, 0])
    condition = np.array([[False, True, True], [True, True, False], [True, True, True]])
    recovery = pea.recovery_rounds(condition, np.array([10, 20, 30]))
    np.testing.assert_array_equal(recovery, [20, 10, 30])
    assert pea.median_round(recovery) == 20
    assert pea.median_round(np.array([-1, -1, 5])) is None
    bound = float(pea.regret_bound(0.5, 8, 1.0, 4, log_wipeout_factor=0.25))
    assert bound == pytest.approx(0.5 * 8 / 2 + math.log(4) / 0.5 - 0.25 / 0.5)


# ------------------------------------------------------------------ experiments

# The claims are about XNAS and SGD on the logits; each compile costs about a second.
_XNAS_AND_SGD = ("XNAS", "SGD on alpha")


@pytest.fixture(scope="module")
def late_bloomer_result():
    return late_bloomers.run(num_rounds=1000, num_seeds=64, sgd_scales=(), optimizers=_XNAS_AND_SGD)


@pytest.fixture(scope="module")
def init_result():
    return init_robustness.run(
        num_rounds=1000,
        num_seeds=64,
        best_initial_weights=(1e-3,),
        headline_initial_weight=1e-3,
        optimizers=_XNAS_AND_SGD,
    )


@pytest.fixture(scope="module")
def regret_result():
    return regret.run(
        num_rounds=1000, num_seeds=256, sgd_scales=(), adam_scales=(), optimizers=_XNAS_AND_SGD
    )


@pytest.fixture(scope="module")
def entropy_result():
    return entropy_vs_weight_decay.run(
        num_rounds=2000,
        num_seeds=2,
        learning_rate=5e-3,
        weight_decays=(0.0, 1e-3, 1e-2, 1e-1),
    )


@pytest.fixture(scope="module")
def wipeout_result():
    return wipeout.run(num_rounds=1000, num_seeds=128, wipeout_factors=(1.0, 0.2, 0.05))


def _later(a: int | None, b: int | None) -> bool:
    """Whether recovery round a comes after b (None means never)."""
    return b is not None and (a is None or a > b)


def test_xnas_selects_the_late_bloomer_and_softmax_gd_recovers_it_later_or_never(
    late_bloomer_result,
):
    optimizers = late_bloomer_result["optimizers"]
    xnas_numbers, sgd_numbers = optimizers["XNAS"], optimizers["SGD on alpha"]
    assert xnas_numbers["final_selection_rate"] >= 0.95
    # XNAS's selection follows the best expert in hindsight.
    crossing = late_bloomer_result["late_bloomer_best_in_hindsight_from_round_median"]
    assert abs(xnas_numbers["median_recovery_round"] - crossing) <= 0.05 * 1000
    assert sgd_numbers["final_selection_rate"] < xnas_numbers["final_selection_rate"]
    assert _later(sgd_numbers["median_recovery_round"], xnas_numbers["median_recovery_round"])


def test_xnas_selects_the_best_expert_despite_a_tiny_initial_weight(init_result):
    (xnas_numbers,) = init_result["optimizers"]["XNAS"]["by_initial_weight"]
    (sgd_numbers,) = init_result["optimizers"]["SGD on alpha"]["by_initial_weight"]
    assert xnas_numbers["best_initial_weight"] == 1e-3
    assert xnas_numbers["final_selection_rate"] >= 0.95
    assert sgd_numbers["final_selection_rate"] <= 0.5
    assert _later(sgd_numbers["median_recovery_round"], xnas_numbers["median_recovery_round"])


def test_xnas_regret_is_under_theorem_1_and_it_selects_at_least_as_well_as_sgd(regret_result):
    check = regret_result["xnas_theorem_1"]
    assert check["max_regret_minus_bound_at_T"] <= 0.0
    assert check["max_regret_minus_bound_any_t"] <= 0.0
    assert check["log_gamma_T_mean"] > 0.0  # the wipeout term of the bound is in play
    assert check["bound_at_T_mean"] < check["bound_at_T_without_wipeout"]
    optimizers = regret_result["optimizers"]
    assert (
        optimizers["XNAS"]["final_correct_selection_rate"]
        >= optimizers["SGD on alpha"]["final_correct_selection_rate"]
    )
    # The curves the figure draws agree with the summary.
    curves = regret_result["curves"]
    assert curves["regret"]["XNAS"]["mean"][-1] == pytest.approx(
        optimizers["XNAS"]["final_regret_mean"], rel=1e-4
    )
    mean_regret, mean_bound = curves["regret"]["XNAS"]["mean"], curves["xnas_theorem_1_bound_mean"]
    assert max(np.subtract(mean_regret, mean_bound)) < 0


def test_entropy_grows_with_the_weight_decay_on_the_logits(entropy_result):
    entropies = [p["final_mean_normalized_entropy"] for p in entropy_result["darts"]]
    assert all(np.diff(entropies) >= 0), entropies
    assert entropies[-1] > entropies[0] + 0.1
    # XNAS ends one-hot: its last round wipes out every expert below the leader.
    assert entropy_result["xnas"]["final_mean_normalized_entropy"] == pytest.approx(0.0, abs=1e-6)
    assert entropy_result["xnas"]["late_mean_normalized_entropy"] < entropies[0]


def test_smaller_wipeout_factor_saves_more_and_zeta_one_keeps_the_best_expert(wipeout_result):
    per_zeta = wipeout_result["wipeout_factors"]
    assert [p["wipeout_factor"] for p in per_zeta] == [1.0, 0.2, 0.05]
    saved = [p["saved_evaluation_share"] for p in per_zeta]
    assert all(np.diff(saved) > 0), saved
    assert saved[0] > 0.0
    assert per_zeta[0]["best_in_hindsight_wiped_out_fraction"] == 0.0
    # Every forecaster ends with a single expert, whatever zeta.
    for curve in wipeout_result["curves"]["mean_active_experts"].values():
        assert curve[-1] == pytest.approx(1.0)


def test_main_writes_json_and_png(tmp_path, monkeypatch, capsys):
    small = dict(num_rounds=200, num_seeds=8, best_initial_weights=(1e-2, 1e-3),
                 optimizers=_XNAS_AND_SGD)
    result = init_robustness.run(seed=3, **small)
    # main runs at full size: here, the module's run at the reduced one.
    monkeypatch.setattr(init_robustness, "run", functools.partial(init_robustness.run, **small))
    assert init_robustness.main(["--out", str(tmp_path), "--seed", "3"]) == 0
    assert "wrote" in capsys.readouterr().out
    with open(tmp_path / "init_robustness.json") as f:
        written = json.load(f)
    assert written == json.loads(json.dumps(result))
    assert written["setup"]["seed"] == 3
    assert written["setup"]["num_rounds"] == 200
    png = (tmp_path / "init_robustness.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


@pytest.mark.parametrize("module", [regret, late_bloomers, init_robustness,
                                    entropy_vs_weight_decay, wipeout, wipeout_search,
                                    autoaugment_draws])
def test_every_experiment_has_the_same_command_line(module, capsys):
    assert_script_command_line(module, capsys)


@pytest.mark.parametrize("module", [wipeout_search, autoaugment_draws])
def test_the_data_dir_is_a_flag_defaulting_to_xnas_data_dir(module, tmp_path, monkeypatch,
                                                            capsys):
    with pytest.raises(SystemExit) as exit_:
        module.main(["--data-dir", str(tmp_path / "flag"), "--out", str(tmp_path)])
    assert_usage_error(exit_.value.code, capsys.readouterr().err, str(tmp_path / "flag"))
    monkeypatch.setenv("XNAS_DATA_DIR", str(tmp_path / "env"))
    with pytest.raises(SystemExit) as exit_:
        module.main(["--out", str(tmp_path)])
    assert_usage_error(exit_.value.code, capsys.readouterr().err, str(tmp_path / "env"),
                       "XNAS_DATA_DIR")
