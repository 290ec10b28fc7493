"""The Tune experiment of one search: build it (or restore it), run it, and turn its results into rows.

Layout of `runs/<name>/`: `tune/` (the Tune experiment), `train/` (each trial's TorchTrainer run,
named after the trial id), `optuna.db` (the study), and the result files written by `report`.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import optuna
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from asl_ray.config import TrainConfig
from asl_ray.search.driver import DRIVER_CPUS, TrialSettings, train_driver_fn
from asl_ray.search.searcher import (EPOCHS_DONE, TRAIN_LOOP_CONFIG, FitAwareOptunaSearch, epochs_done,
                                     fail_unfinished_trials)
from asl_ray.search.space import SearchSpace
from asl_ray.vram.cards import Card

log = logging.getLogger(__name__)
TUNE_DIR, TRAIN_DIR, STUDY_FILE = "tune", "train", "optuna.db"
MiB = 2 ** 20
PROGRESS_METRICS = {"val_acc": "acc", "samples_per_s": "samples/s", "cuda_max_reserved_mb": "CUDA reserved MB",
                    "rss_peak_mb": "host RSS MB", "precision": "ran", "status": "status", EPOCHS_DONE: "epochs"}


@dataclass(frozen=True)
class VramPredictor:
    """Picklable (it is saved with the searcher): does `base + values` fit `usable_bytes`?"""
    base: dict
    usable_bytes: int
    num_classes: int
    compute_capability: Optional[tuple[int, int]] = None
    """The card's architecture (cuBLAS workspaces are sized by it); None sizes them for an unknown card."""

    def __call__(self, values: dict) -> tuple[bool, int]:
        from asl_ray.vram.fit import fits_within
        cfg = TrainConfig.from_dict({**self.base, **values}, source="sampled config")
        # The verdict: least need under the allocator's free-and-retry + context + margin, and a replay
        # capped at this card's limit (vram/fit.py).
        return fits_within(cfg, self.usable_bytes, self.num_classes, self.compute_capability)


@dataclass(frozen=True)
class Experiment:
    space: SearchSpace
    card: Card
    root: Path  # runs/<name>
    cache_path: Path
    num_classes: int
    trials: int
    emulate: bool
    concurrency: int = 0  # 0: one trial per GPU in the cluster (1 without GPUs)
    cpus_per_trial: float = 1.0
    max_failures: int = 2  # worker crashes a trial survives (restarted from its last checkpoint)

    @property
    def study_name(self) -> str:
        return self.root.name

    def storage_url(self) -> str:
        return f"sqlite:///{(self.root / STUDY_FILE).resolve()}"

    def can_resume(self) -> bool:
        return tune.Tuner.can_restore(str((self.root / TUNE_DIR).resolve()))


def cluster_gpus() -> int:
    return int(ray.cluster_resources().get("GPU", 0))


def _trainable(exp: Experiment, use_gpu: bool):
    settings = TrialSettings(
        base_config=exp.space.base_config().to_dict(), cache_path=str(exp.cache_path),
        train_storage=str((exp.root / TRAIN_DIR).resolve()), use_gpu=use_gpu,
        cpus_per_worker=exp.cpus_per_trial, emulate_usable_bytes=exp.card.usable_bytes if exp.emulate and use_gpu else None,
        max_failures=exp.max_failures)
    return tune.with_resources(tune.with_parameters(train_driver_fn, settings=settings), {"cpu": DRIVER_CPUS})


def _searcher(exp: Experiment) -> FitAwareOptunaSearch:
    storage = optuna.storages.RDBStorage(exp.storage_url())
    predictor = VramPredictor(exp.space.base_config().to_dict(), exp.card.usable_bytes, exp.num_classes,
                              exp.card.compute_capability)
    return FitAwareOptunaSearch(exp.space, predictor, storage=storage, study_name=exp.study_name,
                                max_epochs=exp.space.budget.epochs)


def _scheduler(exp: Experiment):
    b = exp.space.budget
    if exp.space.scheduler == "fifo":
        return FIFOScheduler()
    # stop_last_trials=False: a trial that reaches max_t finishes its fit() instead of being torn down
    # mid-teardown (which leaks its worker placement group until Train's cleaner notices).
    return ASHAScheduler(time_attr=EPOCHS_DONE, metric="val_acc", mode="max", max_t=b.epochs,
                         grace_period=b.grace_period, reduction_factor=b.reduction_factor, stop_last_trials=False)


def _run_config(exp: Experiment) -> tune.RunConfig:
    from ray.tune import CLIReporter
    params = {f"{TRAIN_LOOP_CONFIG}/{name}": name for name in exp.space.param_names()}
    reporter = CLIReporter(parameter_columns=params, metric_columns=PROGRESS_METRICS, max_report_frequency=30)
    return tune.RunConfig(name=TUNE_DIR, storage_path=str(exp.root.resolve()), progress_reporter=reporter,
                          verbose=1, failure_config=tune.FailureConfig(max_failures=0))


def run(exp: Experiment, resume: bool) -> Any:
    """Run (or finish, with resume) the experiment; returns Tune's ResultGrid."""
    # The classic progress table honours our columns (the searched keys, acc, samples/s, memory, the
    # precision run, status, epochs); Tune's newer output ignores the reporter.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Save the experiment's state at least every 10 s (it is small): a killed driver loses little.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "10")
    use_gpu = cluster_gpus() > 0
    trainable = _trainable(exp, use_gpu)
    if resume:
        tuner = tune.Tuner.restore(str((exp.root / TUNE_DIR).resolve()), trainable=trainable,
                                   resume_unfinished=True, resume_errored=False, restart_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=_searcher(exp), scheduler=_scheduler(exp), num_samples=exp.trials,
                                        max_concurrent_trials=exp.concurrency or max(1, cluster_gpus())),
            run_config=_run_config(exp))
    started = time.perf_counter()
    grid = tuner.fit()
    log.info("tune finished in %.0f s", time.perf_counter() - started)
    return grid


def stopped_in_flight(grid, exp: Experiment) -> list[str]:
    """Trials Tune stopped because the search was interrupted. Tune marks them TERMINATED with their
    last epoch's result (its saved state keeps them RUNNING, so --resume continues them), but it never
    told the searcher: their Optuna trials are still RUNNING. Errored trials are not among them."""
    study = optuna.load_study(study_name=exp.study_name, storage=exp.storage_url())
    untold = {t.user_attrs.get("ray_trial_id")
              for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}
    return [r.metrics["trial_id"] for r in grid
            if r.error is None and r.metrics and r.metrics.get("trial_id") in untold]


def close_study(exp: Experiment) -> int:
    """After a search that ran to its end: trials that never finished are told FAIL (see searcher)."""
    study = optuna.load_study(study_name=exp.study_name, storage=exp.storage_url())
    return fail_unfinished_trials(study)


def result_rows(grid, exp: Experiment) -> list[dict[str, Any]]:
    """One row per trial: launched trials from Tune, rejected configs from the Optuna study."""
    rows = []
    for result in grid:
        rows.append(_trial_row(result, exp))
    rows += _rejected_rows(exp)
    return rows


def row_config_keys(space: SearchSpace) -> list[str]:
    """The searched keys (the space's own names), and the configured precision beside the one run."""
    names = space.param_names()
    return names + [k for k in ("precision",) if k not in names]


def predicted_memory(cfg: TrainConfig, num_classes: int, card: Card) -> dict[str, float]:
    """The predictions, each labelled: the allocator's unconstrained peak (what `max_memory_reserved`
    measures, no CUDA context), that peak with the context (what nvidia-smi would show), and the fit
    figure the verdict compares with the card (least need under free-and-retry + context + margin)."""
    from asl_ray.vram.estimate import estimate_peak_vram
    estimate = estimate_peak_vram(cfg, num_classes, card.compute_capability)  # cached by the searcher's call
    return {"predicted_reserved_mb": estimate.reserved_peak_bytes() / MiB,
            "predicted_total_mb": estimate.total_bytes / MiB, "predicted_fit_mb": estimate.fit_bytes() / MiB}


def _column_max(history, name: str) -> float:
    if history is None or name not in history or history[name].isna().all():
        return float("nan")
    return float(history[name].max())


def _precision_run(history, metrics: dict) -> str:
    """What the Runtime ran (fp32 on a CPU asked for fp16); an OOM's last result does not say."""
    if history is not None and "precision" in history and history["precision"].notna().any():
        return str(history["precision"].dropna().iloc[-1])
    return str(metrics.get("precision", ""))


def _trial_row(result, exp: Experiment) -> dict[str, Any]:
    values = dict(result.config[TRAIN_LOOP_CONFIG])
    cfg = TrainConfig.from_dict({**exp.space.base_config().to_dict(), **values})
    m = dict(result.metrics or {})
    history = result.metrics_dataframe
    epochs_run = epochs_done(m)
    if result.error is not None:
        status = "error"
    elif m.get("status") in ("oom", "diverged"):
        status = m["status"]
    elif epochs_run < exp.space.budget.epochs:
        status = "stopped"
    else:
        status = "ok"
    # Tune's wall time of the trial's last attempt: a trial resumed without a Tune checkpoint starts
    # Tune's clock and progress.csv again (the Train-side loop_seconds covers every epoch).
    seconds = (float(history["time_this_iter_s"].sum()) if history is not None and "time_this_iter_s" in history
               else m.get("time_total_s", float("nan")))
    return {
        "trial_id": m.get("trial_id", Path(result.path).name), "status": status,
        "feasible": status in ("ok", "stopped"),
        **{k: getattr(cfg, k) for k in row_config_keys(exp.space)}, "precision_run": _precision_run(history, m),
        "effective_batch": cfg.effective_batch_size(), "epochs_run": epochs_run,
        "val_acc": m.get("val_acc", float("nan")), "samples_per_s": m.get("samples_per_s", float("nan")),
        "steps_per_s": m.get("steps_per_s", float("nan")),
        "cuda_max_reserved_mb": _column_max(history, "cuda_max_reserved_mb"),
        "cuda_max_allocated_mb": _column_max(history, "cuda_max_allocated_mb"),
        **predicted_memory(cfg, exp.num_classes, exp.card),
        "rss_peak_mb": _column_max(history, "rss_peak_mb"),
        "device": m.get("device", ""), "node_id": m.get("node_id", ""), "hostname": m.get("hostname", ""),
        "trial_seconds": seconds,
        "loop_seconds": m.get("loop_seconds_total", float("nan")),
        "error": str(result.error).splitlines()[0][:200] if result.error else m.get("error", ""),
    }


def _rejected_rows(exp: Experiment) -> list[dict[str, Any]]:
    study = optuna.load_study(study_name=exp.study_name, storage=exp.storage_url())
    base = exp.space.base_config().to_dict()
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("status") != "rejected":
            continue
        cfg = TrainConfig.from_dict({**base, **t.params})
        rows.append({"trial_id": f"optuna-{t.number}", "status": "rejected", "feasible": False,
                     **{k: getattr(cfg, k) for k in row_config_keys(exp.space)}, "precision_run": "",
                     "effective_batch": cfg.effective_batch_size(), "epochs_run": 0,
                     **predicted_memory(cfg, exp.num_classes, exp.card)})
    return rows
