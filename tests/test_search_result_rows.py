"""From Tune results to trial rows and on to the result files, without a cluster: the learning columns are
the space's own keys, the plan columns what the trial's worker ran, epochs are counted on the Train side
(val_acc_curve too), and every memory figure is labelled for what it is (measured CUDA, predicted with /
without the CUDA context, host RSS), beside the precision configured and the one that ran.

The inputs are real `ray.tune.Result` objects as Tune builds them from a trial (metrics + progress.csv
rows); a resumed trial's progress.csv holds the rows of both attempts, Tune's iteration restarting at 1.
(Moved here from test_search_results.py, which now tests the result files on frames it builds.)"""
import json
import math
from pathlib import Path
from types import SimpleNamespace

import optuna
import pandas as pd
import yaml
from ray.tune import Result

from asl_ray.search import report
from asl_ray.search.experiment import result_rows
from asl_ray.search.results import write_results, write_trials
from asl_ray.search.select import Selection
from asl_ray.search.space import load_space
from asl_ray.cards import resolve_card
from asl_ray.plan.fits import CardFit


def _space(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({
        "gpu": 0.7, "headroom_mb": 0, "budget": {"trials": 2, "epochs": 2, "max_steps_per_epoch": 2},
        "fixed": {"depth": 1, "dim": 32, "max_len": 32, "num_workers": 0},
        "params": {"kernel_size": {"type": "categorical", "choices": [3, 5]},
                   "effective_batch_size": {"type": "categorical", "choices": [16, 32]}},
        "plans": {"batch_size": [8, 16], "precision": ["fp16"]}}))
    return load_space(path)


def _result(tmp_path, trial_id, values, plan, accs, iterations, seconds):
    epochs = [{"epoch": i, "val_acc": a, "samples_per_s": 100.0 + 10 * i, "rss_peak_mb": 500.0 + i,
               "precision": "fp32", "epochs_done": i + 1, "training_iteration": it, "time_this_iter_s": s,
               "epoch_seconds": s - 1, "status": "ok", "feasible": True}
              for i, (a, it, s) in enumerate(zip(accs, iterations, seconds))]
    bs, accumulation = plan
    speeds = sorted(e["samples_per_s"] for e in epochs)
    last = {**epochs[-1], "trial_id": trial_id, "time_total_s": seconds[-1], "device": "cpu", "seed": 42,
            "samples_per_s_median": speeds[len(speeds) // 2], "samples_per_s_iqr": speeds[-1] - speeds[0],
            "val_samples": 80, "loop_seconds_total": sum(s - 1 for s in seconds),  # every epoch of the run
            "plan": f"{bs}x{accumulation}", "plan_samples_per_s": 120.0, "plan_peak_reserved_mb": float("nan"),
            "plan_runner_ups": json.dumps([{"plan": "16x1", "status": "ok", "samples_per_s": 90.0,
                                            "peak_reserved_mb": float("nan")}]),
            "plans_measured": 2, "plans_from_cache": 0, "plans_rejected": 0, "plan_search_seconds": 1.5,
            "plan_config/batch_size": bs, "plan_config/gradient_accumulation_steps": accumulation,
            "plan_config/precision": "fp16", "config": {"train_loop_config": values},
            # The worker reports the memory predicted for the plan it ran (trial_worker.trained_metrics).
            **CardFit.for_card(resolve_card("0.7", 0), 10).predicted_memory(
                _space(tmp_path).config_for({**values, "batch_size": bs, "precision": "fp16"}))}
    return Result(metrics=last, checkpoint=None, error=None, path=str(tmp_path / "tune" / trial_id),
                  metrics_dataframe=pd.DataFrame(epochs))


def test_rows_use_the_space_keys_train_side_epochs_and_labelled_memory(tmp_path, capsys):
    space = _space(tmp_path)
    root = tmp_path / "runs" / "r"
    root.mkdir(parents=True)
    sc = SimpleNamespace(space=space, card=resolve_card("0.7", 0), root=root, num_classes=10,
                         study_name=lambda: "r", storage_url=lambda: f"sqlite:///{(root / 'optuna.db').resolve()}",
                         selection=Selection("most-accurate"), data=Path("data/x"), confirm_seeds=0, confirm_folds=1,
                         finalists=2, concurrency=0, cpus_per_trial=1.0)
    optuna.create_study(study_name="r", storage=sc.storage_url(), directions=["maximize", "maximize"])
    grid = [  # "a" was resumed after its first epoch: Tune's iteration restarted at 1
        _result(tmp_path, "a", {"kernel_size": 5, "effective_batch_size": 16}, (8, 2), [0.4, 0.6], [1, 1], [3.0, 4.0]),
        _result(tmp_path, "b", {"kernel_size": 3, "effective_batch_size": 32}, (16, 2), [0.3, 0.5], [1, 2],
                [2.0, 2.0])]
    df = report.trials_frame(result_rows(grid, sc))
    rows = df.set_index("trial_id")
    assert list(rows["status"]) == ["ok", "ok"] and list(rows["epochs_run"]) == [2, 2]
    assert rows.loc["a", "trial_seconds"] == 7.0 and rows.loc["a", "loop_seconds"] == 5.0
    assert list(rows["kernel_size"]) == [5, 3] and list(rows["effective_batch_size"]) == [16, 32]
    assert list(rows["batch_size"]) == [8, 16] and list(rows["gradient_accumulation_steps"]) == [2, 2]
    assert json.loads(rows.loc["a", "val_acc_curve"]) == [0.4, 0.6]
    # the run's speed: the worker's median over its epochs (110 of 100 and 110), never its last epoch's draw alone
    assert rows.loc["a", "samples_per_s"] == 110.0 and rows.loc["a", "samples_per_s_iqr"] == 10.0
    assert set(rows["precision"]) == {"fp16"} and set(rows["precision_run"]) == {"fp32"}  # CPU ran fp32
    assert rows["cuda_max_reserved_mb"].isna().all()  # no CUDA figure on a CPU run
    assert list(rows["rss_peak_mb"]) == [501.0, 501.0]
    assert (rows["predicted_total_mb"] > rows["predicted_reserved_mb"]).all()  # the context is in the total only
    assert (rows["predicted_fit_mb"] > 0).all()  # the verdict's figure, beside the two peaks
    assert "peak_memory_mb" not in df and "predicted_peak_mb" not in df

    write_trials(df, sc)
    write_results(pd.read_parquet(root / "trials.parquet"), None, sc)
    saved = pd.read_parquet(root / "trials.parquet")
    assert {"kernel_size", "batch_size", "precision_run", *report.MEMORY_COLUMNS} <= set(saved)
    best = yaml.safe_load((root / "best_config.yaml").read_text())
    assert (best["kernel_size"], best["batch_size"], best["gradient_accumulation_steps"]) == (5, 8, 2)
    assert best["epochs"] == 2 and "effective_batch_size" not in best
    text = (root / "report.md").read_text()
    assert "precision fp16; ran fp32" in text and "no CUDA measurement" in text and "host RSS 501 MiB" in text
    assert "with CUDA context" in text and "fit figure" in text and report.MEMORY_LEGEND in text
    assert "kernel_size" in text and "16x1" in text and not math.isnan(saved["predicted_reserved_mb"].iloc[0])
