"""Rows of the configs the search never trained, and of baselines: a trial whose worker found no plan, the
configs the searcher told Optuna and never launched (rejected by the VRAM check, no_plan), and the baseline
name of the trial that ran a baseline's learning values with its pinned plan. No cluster: real Result objects
and a real study written by the searcher."""
import json
import math
from types import SimpleNamespace

import optuna
import pandas as pd
import yaml
from ray.tune import Result

from asl_ray.plan.fits import CardFit
from asl_ray.cards import resolve_card
from asl_ray.search.experiment import result_rows, row_columns
from asl_ray.search.searcher import FitAwareSearch
from asl_ray.search.space import load_space


def _sc(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({
        "gpu": 0.7, "headroom_mb": 0, "budget": {"trials": 4, "epochs": 2, "max_steps_per_epoch": 2},
        "fixed": {"depth": 1, "max_len": 32, "num_workers": 0},
        "params": {"effective_batch_size": {"type": "int", "low": 20, "high": 24, "step": 4},
                   "dim": {"type": "categorical", "choices": [32, 512]}},
        "plans": {"batch_size": [8, 12]},
        "baselines": [{"effective_batch_size": 24, "dim": 32, "batch_size": 12}]}))
    root = tmp_path / "runs" / "r"
    root.mkdir(parents=True)
    return SimpleNamespace(space=load_space(path), card=resolve_card("0.7", 0), root=root, num_classes=10,
                           study_name=lambda: "r", storage_url=lambda: f"sqlite:///{(root / 'optuna.db').resolve()}")


def _result(tmp_path, trial_id, values, metrics, epochs=()):
    last = {"trial_id": trial_id, "config": {"train_loop_config": values}, **metrics}
    return Result(metrics=last, checkpoint=None, error=None, path=str(tmp_path / trial_id),
                  metrics_dataframe=pd.DataFrame(list(epochs) or [metrics]))


def test_rows_of_no_plan_rejected_and_baseline_configs(tmp_path):
    sc = _sc(tmp_path)

    def fits(cfg):  # dim 512 is "too big" at every micro-batch
        return cfg.dim < 512, cfg.dim * cfg.batch_size * 2 ** 20

    search = FitAwareSearch(sc.space, fits, optuna.storages.RDBStorage(sc.storage_url()), "r", max_epochs=2)
    search.study.enqueue_trial({"effective_batch_size": 20, "dim": 32})  # no micro-batch of 8, 12 divides 20
    search.study.enqueue_trial({"effective_batch_size": 24, "dim": 512})  # no plan fits
    search.study.enqueue_trial({"effective_batch_size": 24, "dim": 32})  # the baseline's values: a duplicate
    baseline = search.suggest("base")["train_loop_config"]
    assert baseline == {"effective_batch_size": 24, "dim": 32, "batch_size": 12}
    nothing_else = search.suggest("next")
    assert nothing_else == "FINISHED"

    epochs = [{"epoch": i, "val_acc": a, "samples_per_s": 50.0, "epochs_done": i + 1, "status": "ok",
               "feasible": True, "precision": "fp32"} for i, a in enumerate([0.2, 0.3])]
    ok = {**epochs[-1], "seed": 7, "val_samples": 80, "plan": "12x2", "plans_measured": 1,
          "plan_config/batch_size": 12, "plan_config/gradient_accumulation_steps": 2,
          # what the worker reports for the plan it ran (trial_worker.trained_metrics)
          **CardFit.for_card(sc.card, 10).predicted_memory(sc.space.config_for({**baseline, "batch_size": 12}))}
    no_plan = {"status": "no_plan", "feasible": False, "val_acc": 0.0, "samples_per_s": 0.0, "epochs_done": 0,
               "seed": 42, "plan": "", "plans_measured": 0, "plans_rejected": 2}
    grid = [_result(tmp_path, "base", baseline, ok, epochs),
            _result(tmp_path, "empty", {"effective_batch_size": 24, "dim": 32}, no_plan)]
    rows = result_rows(grid, sc)
    assert all(list(r) == row_columns(sc.space) for r in rows)  # every row, every column, one order
    by_id = {r["trial_id"]: r for r in rows}

    base = by_id["base"]
    assert base["baseline"] == "baseline0" and base["status"] == "ok" and base["seed"] == 7
    assert (base["batch_size"], base["gradient_accumulation_steps"], base["effective_batch"]) == (12, 2, 24)
    assert json.loads(base["val_acc_curve"]) == [0.2, 0.3] and base["val_samples"] == 80
    assert base["predicted_fit_mb"] > 0

    empty = by_id["empty"]  # its worker found no plan that fits and runs: a row, infeasible, nothing trained
    assert empty["status"] == "no_plan" and not empty["feasible"] and empty["baseline"] == ""
    assert empty["plans_rejected"] == 2 and math.isnan(empty["batch_size"]) and math.isnan(empty["predicted_fit_mb"])
    assert json.loads(empty["val_acc_curve"]) == []

    told = [r for r in rows if r["trial_id"].startswith("optuna-")]
    statuses = {(r["effective_batch_size"], r["dim"]): r["status"] for r in told}
    assert statuses[(20, 32)] == "no_plan" and statuses[(24, 512)] == "rejected"
    rejected = next(r for r in told if r["status"] == "rejected")
    # The smallest micro-batch's plan: the least need, the figure the verdict refused.
    assert (rejected["batch_size"], rejected["gradient_accumulation_steps"]) == (8, 3)
    assert rejected["predicted_fit_mb"] > 0 and not rejected["feasible"]
    no_plan_row = next(r for r in told if r["status"] == "no_plan")
    assert math.isnan(no_plan_row["batch_size"]) and math.isnan(no_plan_row["predicted_fit_mb"])
    assert all("duplicate" not in r["status"] for r in rows)  # a repeat never ran: no row


def test_a_finished_trial_tells_optuna_its_runs_median_speed():
    """Optuna's second objective is the run's samples/s (median over its epochs), not its last epoch's draw."""
    from asl_ray.search.searcher import objective_values
    assert objective_values({"val_acc": 0.5, "samples_per_s": 90.0, "samples_per_s_median": 120.0}) == [0.5, 120.0]
    assert objective_values({"val_acc": 0.5, "samples_per_s": 90.0}) == [0.5, 90.0]  # a result from before
