"""report.md's sentences and small tables on rows built here: the default comparison on paired confirmation runs,
the ASHA rung check against chance and its rank correlation, the chosen plan beside its runner-ups, the rung
epochs, the confirmation table, the smallest detectable difference."""
import json
import math

import pandas as pd
import pytest

from asl_ray.search import decision_report, report
from asl_ray.search.select import Selection, confirmed, screened


class Budget:
    grace_period, reduction_factor, epochs = 2, 2, 6


def _est(trial_id, mean, se, speed, plan="12x4"):
    return pd.Series({"trial_id": trial_id, "acc_mean": mean, "acc_se": se, "samples_per_s": speed, "plan": plan,
                      "val_acc": mean, "baseline": ""})


def _confirmations(pick_accs, default_accs, pick_speed=300.0, default_speed=100.0):
    rows = []
    for finalist, accs, speed in (("b", pick_accs, pick_speed), ("d", default_accs, default_speed)):
        for i, acc in enumerate(accs):
            rows.append({"finalist": finalist, "trial_id": f"{finalist}{i}", "fold": 0, "seed": 1042 + i,
                         "status": "ok", "val_acc": acc, "val_samples": 400, "samples_per_s": speed * (1 + 0.01 * i)})
    return pd.DataFrame(rows)


def test_default_comparison_says_whether_paired_runs_tell_them_apart():
    best, default = _est("b", 0.50, 0.02, 300.0, "24x1"), _est("d", 0.47, 0.02, 100.0)
    close = _confirmations([0.50, 0.47, 0.52], [0.49, 0.48, 0.50], 100.0, 100.0)
    text = decision_report.default_comparison(best, default, close, Selection())
    assert "cannot be told apart from the seed's default at this noise" in text and "3 (fold, seed) pairs" in text
    apart = _confirmations([0.50, 0.52, 0.51], [0.40, 0.43, 0.41])
    text = decision_report.default_comparison(best, default, apart, Selection())
    assert "can be told apart at this noise by accuracy and speed" in text and "x3.00" in text
    assert "one search run each, unconfirmed" in decision_report.default_comparison(best, default, None, Selection())
    assert decision_report.default_comparison(best, best, close, Selection()) == \
        "The chosen config is the seed's default config."
    assert "not among this search" in decision_report.default_comparison(best, None, close, Selection())


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


def test_rung_check_gives_the_rank_correlation_of_the_first_rung_with_the_last_epoch():
    def finished(curves):
        return pd.DataFrame([{"trial_id": f"t{i}", "status": "ok", "feasible": True, "val_samples": 400,
                              "val_acc_curve": json.dumps(c)} for i, c in enumerate(curves)])
    same_order = finished([[0.1, 0.2, 0.3, 0.3, 0.3, 0.4], [0.1, 0.3, 0.3, 0.3, 0.3, 0.5],
                           [0.1, 0.4, 0.4, 0.4, 0.4, 0.6], [0.1, 0.5, 0.5, 0.5, 0.5, 0.7]])
    assert report.rung_rank_correlation(same_order, 2) == (pytest.approx(1.0), 4)
    reversed_order = finished([[0.1, 0.2, 0.1, 0.1, 0.1, 0.7], [0.1, 0.3, 0.1, 0.1, 0.1, 0.6],
                               [0.1, 0.4, 0.1, 0.1, 0.1, 0.5]])
    assert report.rung_rank_correlation(reversed_order, 2) == (pytest.approx(-1.0), 3)
    text = report.rung_check_text(same_order, "asha", Budget, 10)
    assert "Rank correlation (Spearman) of val_acc at epoch 2 with the last epoch's, over the 4 trials" in text
    assert "+1.00" in text
    assert math.isnan(report.rung_rank_correlation(finished([[0.1, 0.2, 0.3]]), 2)[0])


def test_rung_epochs_stop_below_the_last_epoch():
    assert report.rung_epochs(2, 2, 6) == [2, 4]
    assert report.rung_epochs(1, 3, 12) == [1, 3, 9]
    assert report.rung_epochs(4, 2, 4) == []


def test_plan_table_puts_the_chosen_plan_first_and_compares_the_runner_ups():
    best = pd.Series({"plan": "12x4", "plan_samples_per_s": 200.0, "plan_peak_reserved_mb": 900.0,
                      "plan_runner_ups": json.dumps([
                          {"plan": "12x4", "status": "ok", "samples_per_s": 200.0, "peak_reserved_mb": 900.0},
                          {"plan": "8x6", "status": "ok", "samples_per_s": 150.0, "peak_reserved_mb": 700.0},
                          {"plan": "48x1", "status": "oom", "samples_per_s": None, "peak_reserved_mb": None}]),
                      "plans_tied": json.dumps(["12x4", "8x6"])})
    table = report.plan_table(best)
    assert list(table["plan"]) == ["12x4", "8x6", "48x1"] and list(table["status"]) == ["chosen", "tied", "oom"]
    assert table["vs_chosen"].iloc[1] == pytest.approx(0.75) and math.isnan(table["vs_chosen"].iloc[2])
    alone = report.plan_table(best.drop("plan_runner_ups"))
    assert list(alone["plan"]) == ["12x4"]


def test_confirmation_table_shows_each_finalist_its_pairs_and_the_verdicts():
    trials = pd.DataFrame([{"trial_id": t, "status": "ok", "feasible": True, "val_acc": 0.5, "val_samples": 400,
                            "samples_per_s": 1.0, "baseline": b} for t, b in (("b", ""), ("d", "default"))])
    runs = _confirmations([0.50, 0.52, 0.51], [0.40, 0.43, 0.41])
    runs.loc[5, "status"] = "error"
    table = decision_report.confirmation_table(confirmed(trials, runs, Selection()), runs)
    first, second = table.iloc[0], table.iloc[1]
    runs_column = "runs (f0/s1042 f0/s1043 f0/s1044)"
    assert runs_column in table.columns
    assert first[runs_column] == "0.500 0.520 0.510" and first["mean +- SE"].startswith("0.5100 +- ")
    assert first["ref - it [upper]"] == "reference" and first["picked"] == "<-"
    assert second[runs_column] == "0.400 0.430 -" and second["failed"] == 1 and second["equivalent"] == "no"


def test_detectable_difference_is_stated_for_both_stages():
    trials = pd.DataFrame([{"trial_id": t, "status": "ok", "feasible": True, "val_acc": a, "val_samples": 400,
                            "samples_per_s": 1.0, "baseline": ""} for t, a in (("b", 0.5), ("d", 0.45))])
    runs = _confirmations([0.50, 0.52, 0.51], [0.48, 0.49, 0.50])
    text = decision_report.detectable_text(confirmed(trials, runs, Selection()), runs, screened(trials), Selection())
    assert "screening of single search runs" in text and "3 paired runs per finalist" in text
    assert "decision_sim" in text
    one = _confirmations([0.50], [0.48])
    text = decision_report.detectable_text(confirmed(trials, one, Selection()), one, screened(trials), Selection())
    assert "fewer than two paired runs" in text
