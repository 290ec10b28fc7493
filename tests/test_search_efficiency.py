"""bench/search_efficiency.py's scoring: the search's pick against the grid's, under one selection rule."""
import importlib.util
from pathlib import Path

import pandas as pd
import pytest
import yaml

from asl_ray.search.report import Selection

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("search_efficiency", REPO / "bench" / "search_efficiency.py")
se = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(se)

NAMES = ["batch_size", "dim"]


def _frame(rows):
    return pd.DataFrame([{"trial_id": f"t{i}", "feasible": r[2] != "rejected", "status": r[2], "batch_size": r[0][0],
                          "dim": r[0][1], "val_acc": r[1][0], "samples_per_s": r[1][1], "trial_seconds": r[3]}
                         for i, r in enumerate(rows)])


GRID = _frame([((8, 32), (0.50, 100.0), "ok", 40.0), ((16, 32), (0.495, 150.0), "ok", 40.0),
               ((8, 64), (0.60, 50.0), "ok", 40.0), ((16, 64), (0.595, 80.0), "ok", 40.0)])


def test_a_search_that_finds_the_grid_best_scores_one():
    search = _frame([((16, 64), (0.60, 80.0), "ok", 30.0), ((8, 32), (0.3, 90.0), "stopped", 10.0),
                     ((32, 128), (0, 0), "rejected", float("nan"))])
    c = se.compare(GRID, search, NAMES, Selection("fastest-within-margin", 0.01))
    assert c["grid_best"]["batch_size"] == 16 and c["grid_best"]["dim"] == 64
    assert c["same_config"] and c["closeness"] == 1.0 and c["closeness_grid_measured"] == 1.0
    assert c["search_trial_seconds"] == 40.0 and c["search_trials"] == 2  # the rejected config cost nothing
    assert se.trial_seconds(GRID) == 160.0


def test_fastest_within_margin_needs_both_accuracy_and_speed():
    search = _frame([((16, 32), (0.495, 150.0), "ok", 30.0)])  # fast but outside the accuracy margin
    c = se.compare(GRID, search, NAMES, Selection("fastest-within-margin", 0.01))
    assert c["closeness"] == pytest.approx(0.495 / 0.59)
    slow = se.compare(GRID, _frame([((8, 64), (0.60, 50.0), "ok", 30.0)]), NAMES, Selection("fastest-within-margin"))
    assert slow["closeness"] == pytest.approx(50.0 / 80.0)  # accurate enough but slower than the grid's pick
    most_accurate = se.compare(GRID, search, NAMES, Selection("most-accurate"))
    assert most_accurate["closeness"] == pytest.approx(0.495 / 0.60)


def test_a_search_with_no_finished_trial_scores_nan():
    search = _frame([((16, 32), (0.3, 150.0), "stopped", 10.0)])
    c = se.compare(GRID, search, NAMES, Selection())
    assert c["search_best"] is None and c["closeness"] != c["closeness"]


def test_arm_space_writes_a_runnable_grid_space(tmp_path):
    from asl_ray.search.space import load_space
    path = se.arm_space(REPO / "search_spaces" / "cpu-smoke.yaml", tmp_path, "grid", sampler="grid",
                        scheduler="fifo", trials=48)
    assert path.read_text().startswith("# python -m asl_ray.search --space")
    space = load_space(path)
    assert space.sampler == "grid" and space.scheduler == "fifo" and space.budget.trials == 48
    assert space.baselines == () and "baselines" not in yaml.safe_load(path.read_text())
