"""report.md's sentences and small tables on rows built here: the default comparison at the measured
noise, the ASHA rung check against chance, the chosen plan beside its runner-ups, the rung epochs."""
import json
import math

import pandas as pd
import pytest

from asl_ray.search import report
from asl_ray.search.select import scored


class Budget:
    grace_period, reduction_factor, epochs = 2, 2, 6


def _est(trial_id, mean, se, speed, plan="12x4"):
    return pd.Series({"trial_id": trial_id, "acc_mean": mean, "acc_se": se, "samples_per_s": speed, "plan": plan})


def test_default_comparison_says_whether_the_noise_tells_them_apart():
    best, default = _est("b", 0.50, 0.02, 300.0, "24x1"), _est("d", 0.47, 0.02, 100.0)
    text = report.default_comparison(best, default)
    assert "cannot be told apart at this noise" in text and "x3.00" in text  # 0.03 <= 1.96 x 0.028
    far = report.default_comparison(best, _est("d", 0.40, 0.02, 100.0))
    assert "can be told apart at this noise" in far and "cannot" not in far  # 0.10 > 1.96 x 0.028
    assert report.default_comparison(best, best) == "The chosen config is the seed's default config."
    assert "did not finish" in report.default_comparison(best, None)


def _curve_rows(at_rung: list[float], n=400) -> pd.DataFrame:
    return pd.DataFrame([{"trial_id": f"t{i}", "status": "stopped", "feasible": True, "val_samples": n,
                          "val_acc_curve": json.dumps([0.1, acc])} for i, acc in enumerate(at_rung)]
                        + [{"trial_id": "rejected", "status": "rejected", "feasible": False}])


def test_rung_check_counts_trials_above_chance_by_two_binomial_se():
    # 10 classes, n=400: SE at chance 0.015, so the bar is 0.130 at the first rung (epoch 2)
    text = report.rung_check_text(_curve_rows([0.14, 0.20, 0.125, 0.10]), "asha", Budget, 10)
    assert "at epoch 2" in text and "2 of 4 trials" in text and "mostly noise" in text
    text = report.rung_check_text(_curve_rows([0.14, 0.20, 0.131]), "asha", Budget, 10)
    assert "3 of 3 trials" in text and "learned something" in text
    assert "0.0150 at n=400" in text
    assert "scheduler fifo" in report.rung_check_text(_curve_rows([0.2]), "fifo", Budget, 10)
    assert "unknown" in report.rung_check_text(_curve_rows([0.2]), "asha", Budget, None)


def test_rung_epochs_stop_below_the_last_epoch():
    assert report.rung_epochs(2, 2, 6) == [2, 4]
    assert report.rung_epochs(1, 3, 12) == [1, 3, 9]
    assert report.rung_epochs(4, 2, 4) == []


def test_plan_table_puts_the_chosen_plan_first_and_compares_the_runner_ups():
    best = pd.Series({"plan": "12x4", "plan_samples_per_s": 200.0, "plan_peak_reserved_mb": 900.0,
                      "plan_runner_ups": json.dumps([
                          {"plan": "12x4", "status": "ok", "samples_per_s": 200.0, "peak_reserved_mb": 900.0},
                          {"plan": "8x6", "status": "ok", "samples_per_s": 150.0, "peak_reserved_mb": 700.0},
                          {"plan": "48x1", "status": "oom", "samples_per_s": None, "peak_reserved_mb": None}])})
    table = report.plan_table(best)
    assert list(table["plan"]) == ["12x4", "8x6", "48x1"] and table["status"].iloc[0] == "chosen"
    assert table["vs_chosen"].iloc[1] == pytest.approx(0.75) and math.isnan(table["vs_chosen"].iloc[2])
    alone = report.plan_table(best.drop("plan_runner_ups"))
    assert list(alone["plan"]) == ["12x4"]


def test_confirmation_table_shows_each_finalist_its_seeds_and_mean():
    trials = pd.DataFrame([{"trial_id": "a", "status": "ok", "feasible": True, "val_acc": 0.5, "val_samples": 400,
                            "samples_per_s": 1.0}])
    runs = pd.DataFrame({"finalist": ["a", "a"], "trial_id": ["x", "y"], "seed": [1042, 1043],
                         "status": ["ok", "error"], "val_acc": [0.52, float("nan")], "val_samples": 400})
    table = report.confirmation_table(scored(trials, runs), runs)
    first = table.iloc[0]
    assert first["seeds"] == "1042, 1043" and first["accuracies"] == "0.5200, error"
    assert first["runs"] == 2 and first["failed"] == 1 and first["mean +- SE"].startswith("0.5100 +- ")
