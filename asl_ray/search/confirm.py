"""The confirmation stage: each finalist re-trained with K fresh seeds before best_config.yaml is written.

One search trial's accuracy is one draw: init, data order and augmentation move it by about as much as the
differences the search ranks (bench/microbatch_accuracy.py: seed sd ~0.05 on the synthetic set). The
finalists (asl_ray/search/select.py `finalists`) are therefore trained again, each with its own full
TrainConfig (learning values and the plan its trial ran: batch_size, gradient_accumulation_steps and the other
plan keys) and seeds `fresh_seeds(seed, K)` = seed + 1000 + k (k = 0..K-1; far from the search's own seed so
no run repeats it), for the whole budget (every epoch, no early stopping, no plan search: the plan is known).

A second Tune experiment in `runs/<name>/confirm/` (`tune/`, and each run's TorchTrainer in `train/`): one trial
per (finalist, seed), FIFO, no searcher. It measures accuracy, not speed, so runs share the CPUs: as many at
once as the cluster has CPUs (one per GPU where there are GPUs). `--resume` restores it and finishes only the
unfinished runs (a run interrupted mid-fit continues from its Train checkpoint).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import pandas as pd
import ray
from ray import tune

from asl_ray.config import TrainConfig
from asl_ray.search import experiment
from asl_ray.search.config import SearchConfig, TRAIN_DIR, TUNE_DIR
from asl_ray.search.driver import DRIVER_CPUS
from asl_ray.search.results import best_config
from asl_ray.search.searcher import EPOCHS_DONE, TRAIN_LOOP_CONFIG, epochs_done
from asl_ray.search.session import was_interrupted

SEED_OFFSET = 1000
"""Fresh seeds start this far above a finalist's own seed."""
CONFIRM_COLUMNS = ["finalist", "trial_id", "seed", "status", "val_acc", "val_samples", "samples_per_s",
                   "trial_seconds", "error"]
PROGRESS_METRICS = {"plan": "plan", "val_acc": "acc", EPOCHS_DONE: "epochs", "status": "status"}


def fresh_seeds(base_seed: int, k: int) -> list[int]:
    """K seeds no search trial used: base_seed + 1000 + i, i = 0..k-1."""
    return [base_seed + SEED_OFFSET + i for i in range(k)]


def finalist_config(sc: SearchConfig, row: pd.Series) -> TrainConfig:
    """The finalist's full TrainConfig: its learning values and the plan its trial ran, over the space's base."""
    space = sc.space
    return best_config(row, space.base_config(), space.param_names(), space.plan_names())


def confirmation_points(sc: SearchConfig, df: pd.DataFrame, finalist_ids: Sequence[str]
                        ) -> list[tuple[str, int, dict[str, Any]]]:
    """(finalist, seed, full TrainConfig dict) per confirmation run, finalists in order, seeds ascending."""
    rows = df.set_index("trial_id")
    points = []
    for finalist in finalist_ids:
        row = rows.loc[finalist].copy()
        row["trial_id"] = finalist
        cfg = finalist_config(sc, row)
        seed = int(row["seed"]) if "seed" in row and _finite(row["seed"]) else cfg.seed
        for s in fresh_seeds(seed, sc.confirm_seeds):
            points.append((finalist, s, dataclasses.replace(cfg, seed=s).to_dict()))
    return points


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _point_key(cfg: dict[str, Any]) -> str:
    return json.dumps(cfg, sort_keys=True)


def trial_dirname(trial) -> str:
    """Short trial folders (Tune's default spells the whole config out): <trainable>_<trial id>."""
    return f"{trial.trainable_name}_{trial.trial_id}"


def _placement(sc: SearchConfig, runs: int) -> tuple[bool, int, float]:
    """(use_gpu, runs at once, CPUs per Train worker): one per GPU; without GPUs, one per CPU of the cluster
    (accuracy is measured here, not speed), each worker a share of them (at most --cpus-per-trial)."""
    gpus = experiment.cluster_gpus()
    if gpus:
        return True, max(1, min(runs, gpus)), sc.cpus_per_trial
    cpus = float(ray.cluster_resources().get("CPU", 1))
    at_once = sc.concurrency or max(1, min(runs, int(cpus)))
    return False, at_once, max(0.01, min(sc.cpus_per_trial, round(cpus / at_once - DRIVER_CPUS, 2)))


def run_confirmation(sc: SearchConfig, df: pd.DataFrame, finalist_ids: Sequence[str],
                     resume: bool) -> Optional[pd.DataFrame]:
    """Train every (finalist, fresh seed) run, or with `resume` finish the runs an interrupted stage left;
    returns their rows (CONFIRM_COLUMNS), None when the stage was interrupted."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic table honours our columns
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "10")  # a killed driver loses little
    points = confirmation_points(sc, df, finalist_ids)
    use_gpu, at_once, cpus = _placement(sc, len(points))
    settings = dataclasses.replace(
        experiment.trial_settings(sc, use_gpu, plan_search=False),
        train_storage=str((sc.confirm_dir() / TRAIN_DIR).resolve()), cpus_per_worker=cpus)
    fn = experiment.trainable(settings)
    tune_dir = (sc.confirm_dir() / TUNE_DIR).resolve()
    if resume and tune.Tuner.can_restore(str(tune_dir)):
        tuner = tune.Tuner.restore(str(tune_dir), trainable=fn, resume_unfinished=True, resume_errored=False,
                                   restart_errored=True)
    else:
        from ray.tune import CLIReporter
        # Said explicitly: left out, the table depends on the verbosity a previous Tune run left behind.
        reporter = CLIReporter(parameter_columns={f"{TRAIN_LOOP_CONFIG}/seed": "seed"},
                               metric_columns=PROGRESS_METRICS, max_report_frequency=30,
                               print_intermediate_tables=True)
        tuner = tune.Tuner(
            fn, param_space={TRAIN_LOOP_CONFIG: tune.grid_search([cfg for _, _, cfg in points])},
            tune_config=tune.TuneConfig(max_concurrent_trials=at_once, trial_dirname_creator=trial_dirname),
            run_config=tune.RunConfig(name=tune_dir.name, storage_path=str(tune_dir.parent), progress_reporter=reporter,
                                      verbose=1, failure_config=tune.FailureConfig(max_failures=0)))
    grid = tuner.fit()
    epochs = sc.space.budget.epochs
    if was_interrupted(grid) or any(_unfinished(r, epochs) for r in grid):
        return None
    finalist_of = {_point_key(cfg): (finalist, seed) for finalist, seed, cfg in points}
    return pd.DataFrame([confirmation_row(r, finalist_of, epochs) for r in grid], columns=CONFIRM_COLUMNS)


def _unfinished(result, epochs: int) -> bool:
    """A run Ctrl-C stopped: Tune marks it terminated with its last epoch's result (FIFO stops none early)."""
    m = result.metrics or {}
    return result.error is None and m.get("status", "ok") == "ok" and epochs_done(m) < epochs


def confirmation_row(result, finalist_of: dict[str, tuple[str, int]], epochs: int) -> dict[str, Any]:
    cfg = dict(result.config[TRAIN_LOOP_CONFIG])
    finalist, seed = finalist_of.get(_point_key(cfg), ("", cfg.get("seed")))
    m = dict(result.metrics or {})
    if result.error is not None:
        status = "error"
    elif m.get("status") in ("oom", "diverged", "no_plan"):
        status = m["status"]
    else:
        status = "ok" if epochs_done(m) >= epochs else "stopped"
    history = result.metrics_dataframe
    seconds = (float(history["time_this_iter_s"].sum()) if history is not None and "time_this_iter_s" in history
               else m.get("time_total_s", float("nan")))
    return {"finalist": finalist, "trial_id": m.get("trial_id", Path(result.path).name), "seed": int(seed),
            "status": status, "val_acc": m.get("val_acc", float("nan")),
            "val_samples": m.get("val_samples", float("nan")), "samples_per_s": m.get("samples_per_s", float("nan")),
            "trial_seconds": seconds,
            "error": str(result.error).splitlines()[0][:200] if result.error else m.get("error", "")}
