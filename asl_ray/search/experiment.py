"""The Tune experiment of one search: build it (or restore it), run it, and turn its results into rows.

Layout of `runs/<name>/`: `tune/` (the Tune experiment), `train/` (each trial's TorchTrainer run, named
after the trial id), `plans/` (the plan cache), `optuna.db` (the study), and the result files written by
`results`. `sc` is the search's SearchConfig (asl_ray/search/config.py).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Optional

import optuna
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from asl_ray.outcome import NEVER_LAUNCHED, Status, outcome_row
from asl_ray.plan.fits import CardFit
from asl_ray.search import packing
from asl_ray.search.driver import DRIVER_CPUS, TrialSettings, train_driver_fn
from asl_ray.search.eta import Eta
from asl_ray.search.forecast_actual import eta_inputs
from asl_ray.search.progress import StateChangeReporter
from asl_ray.search.searcher import (BASELINE_ATTR, EPOCHS_DONE, TRAIN_LOOP_CONFIG, FitAwareSearch, epochs_done,
                                     fail_unfinished_trials)
from asl_ray.search.space import SearchSpace
from asl_ray.search.trial_worker import PLAN_CONFIG_PREFIX
from asl_ray.search.time_budget import TimeBudget
from asl_ray.search.tuners import tuner_for

log = logging.getLogger(__name__)
NAN = float("nan")
PROGRESS_METRICS = {"plan": "plan", "val_acc": "acc", "samples_per_s_median": "samples/s", EPOCHS_DONE: "epochs",
                    "status": "status"}
PLAN_METRIC_DEFAULTS = {"plan": "", "plan_samples_per_s": NAN, "plan_samples_per_s_ci": NAN, "plans_tied": "[]",
                        "plan_peak_reserved_mb": NAN, "plan_runner_ups": "[]", "plans_measured": 0,
                        "plans_from_cache": 0, "plans_rejected": 0, "plan_search_seconds": NAN}
"""The plan columns of a row (PlanChoice.metrics()), as a trial that searched no plan has them."""
PREDICTED_MEMORY = ("predicted_reserved_mb", "predicted_total_mb", "predicted_fit_mb")
"""The VRAM predictions a row holds (CardFit.predicted_memory), for the plan the trial ran."""


def cluster_gpus() -> int:
    return int(ray.cluster_resources().get("GPU", 0))


def trial_settings(sc, use_gpu: bool, plan_search: bool = True, pack: bool = False) -> TrialSettings:
    """What every trial of the search shares. The space's plan search runs in its mode `measure`; the
    confirmation stage passes plan_search=False (its configs are full TrainConfig dicts, trained as given).
    `pack` (on a GPU): each trial takes its predicted share of a GPU, capped to it (asl_ray/search/packing.py)."""
    space = sc.space
    searching = plan_search and space.plan_search.mode == "measure"
    return TrialSettings(
        base_config=space.base_config().to_dict(), cache_path=str(sc.cache_path),
        train_storage=str(Path(sc.train_dir()).resolve()), use_gpu=use_gpu, cpus_per_worker=sc.cpus_per_trial,
        card=CardFit.for_card(sc.card, sc.num_classes),
        emulate_usable_bytes=sc.card.usable_bytes if sc.emulate and use_gpu else None,
        max_failures=sc.max_failures, plan_search=space.plan_search if searching else None, space=space,
        plan_cache_dir=str(Path(sc.plan_cache_dir()).resolve()), pack=pack and use_gpu)


def trainable(settings: TrialSettings):
    return tune.with_resources(tune.with_parameters(train_driver_fn, settings=settings), {"cpu": DRIVER_CPUS})


def _searcher(sc) -> FitAwareSearch:
    storage = optuna.storages.RDBStorage(sc.storage_url())
    return FitAwareSearch(sc.space, CardFit.for_card(sc.card, sc.num_classes), storage=storage,
                          study_name=sc.study_name(), max_epochs=sc.space.budget.epochs, time_budget=time_budget(sc))


def time_budget(sc) -> Optional[TimeBudget]:
    """--time-budget with the confirmation's share kept: its runs (finalists x folds x seeds, each full length)
    over the runs it makes at once."""
    if sc.time_budget is None:
        return None
    confirm_runs = sc.finalists * sc.confirm_folds * sc.confirm_seeds
    # The confirmation never packs (its runs' speeds are compared): one run per GPU, or --concurrency.
    return TimeBudget(sc.time_budget_s(), reserved_runs=confirm_runs / max(1, sc.concurrency or cluster_gpus()))


def _scheduler(space: SearchSpace):
    b = space.budget
    if space.scheduler == "fifo":
        return FIFOScheduler()
    # stop_last_trials=False: a trial that reaches max_t finishes its fit() instead of being torn down
    # mid-teardown (which leaks its worker placement group until Train's cleaner notices).
    return ASHAScheduler(time_attr=EPOCHS_DONE, metric="val_acc", mode="max", max_t=b.epochs,
                         grace_period=b.grace_period, reduction_factor=b.reduction_factor, stop_last_trials=False)


def progress_reporter(space: SearchSpace, eta: Optional[Eta] = None) -> StateChangeReporter:
    """The progress table: the learning keys, the chosen plan, acc, samples/s, epochs, status; then `eta`'s line."""
    params = {f"{TRAIN_LOOP_CONFIG}/{name}": name for name in space.param_names()}
    return StateChangeReporter(params, PROGRESS_METRICS, eta=eta)


def stage_eta(sc, stage: str, total: int) -> Eta:
    """The ETA line of a Tune stage ('search' or 'confirmation'), from the dry run's forecast if there is one."""
    per, after, started = eta_inputs(sc.root, stage)
    return Eta(total=total, forecast_trial_s=per, at_once=sc.concurrency or max(1, cluster_gpus()), after_s=after,
               started=started)


def _run_config(sc) -> tune.RunConfig:
    tune_dir = Path(sc.tune_dir()).resolve()
    return tune.RunConfig(name=tune_dir.name, storage_path=str(tune_dir.parent),
                          progress_reporter=progress_reporter(sc.space, stage_eta(sc, "search", sc.trials)),
                          verbose=1,
                          failure_config=tune.FailureConfig(max_failures=0))


def can_resume(sc) -> bool:
    return tune.Tuner.can_restore(str(Path(sc.tune_dir()).resolve()))


def packing_on(sc, gpus: int, say=print) -> bool:
    """--pack (or the space's `concurrency: auto`) packs only GPU trials: on a cluster without GPUs it is a no-op,
    said in one line (CPU trials share no card memory; --concurrency sets how many run at once)."""
    if sc.pack and gpus == 0:
        say("pack: no GPU in the cluster, so trials are not packed (--concurrency sets how many run at once)")
    return bool(sc.pack) and gpus > 0


def max_concurrent_trials(sc, gpus: int, pack: bool) -> int:
    """Unpacked: --concurrency, else one trial per GPU (1 without GPUs). Packed: as many as the GPUs could hold
    (--concurrency caps it); Ray's GPU accounting then decides which of them run at once (asl_ray/search/packing.py)."""
    if pack:
        return packing.max_concurrent(sc.trials, gpus, sc.card.usable_bytes, sc.concurrency)
    return sc.concurrency or max(1, gpus)


def run(sc, resume: bool) -> Any:
    """Run (or finish, with resume) the search's Tune experiment; returns Tune's ResultGrid."""
    gpus = cluster_gpus()
    use_gpu = gpus > 0
    pack = packing_on(sc, gpus)
    fn = trainable(trial_settings(sc, use_gpu, pack=pack))
    tuner = tuner_for(Path(sc.tune_dir()).resolve(), fn, resume, lambda: tune.Tuner(
        fn,
        tune_config=tune.TuneConfig(search_alg=_searcher(sc), scheduler=_scheduler(sc.space), num_samples=sc.trials,
                                    max_concurrent_trials=max_concurrent_trials(sc, gpus, pack)),
        run_config=_run_config(sc)))
    started = time.perf_counter()
    grid = tuner.fit()
    log.info("tune finished in %.0f s", time.perf_counter() - started)
    return grid


def _study(sc) -> optuna.Study:
    return optuna.load_study(study_name=sc.study_name(), storage=sc.storage_url())


def stopped_in_flight(grid, sc) -> list[str]:
    """Trials Tune stopped because the search was interrupted. Tune marks them TERMINATED with their
    last epoch's result (its saved state keeps them RUNNING, so --resume continues them), but it never
    told the searcher: their Optuna trials are still RUNNING. Errored trials are not among them."""
    untold = {t.user_attrs.get("ray_trial_id")
              for t in _study(sc).get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}
    return [r.metrics["trial_id"] for r in grid
            if r.error is None and r.metrics and r.metrics.get("trial_id") in untold]


def close_study(sc) -> int:
    """After a search that ran to its end: trials that never finished are told FAIL (see searcher)."""
    return fail_unfinished_trials(_study(sc))


# ---- rows (the "Trial rows" schema of trials.parquet) ------------------------------------------------

def row_columns(space: SearchSpace) -> list[str]:
    return ["trial_id", "status", "feasible", "baseline", *space.param_names(), *space.plan_names(),
            "precision_run", "effective_batch", "epochs_run", "seed", "val_acc", "val_samples", "samples_per_s",
            "samples_per_s_iqr", *PLAN_METRIC_DEFAULTS, "val_acc_curve", "cuda_max_reserved_mb",
            "cuda_max_allocated_mb", "predicted_reserved_mb", "predicted_total_mb", "predicted_fit_mb", "rss_peak_mb",
            "device", "node_id", "hostname", "trial_seconds", "loop_seconds", "error"]


def result_rows(grid, sc) -> list[dict[str, Any]]:
    """One row per config: launched trials from Tune, rejected and no_plan configs from the Optuna study;
    every row has every column of `row_columns` (NaN or '' where it has no value)."""
    rows = [_trial_row(result, sc) for result in grid] + _never_launched_rows(sc)
    columns = row_columns(sc.space)
    return [{c: row.get(c, NAN) for c in columns} for row in rows]


def baseline_name(space: SearchSpace, values: dict[str, Any]) -> str:
    """The baseline a trial ran: its Optuna values are the baseline's, and so is its pinned plan (the plan
    keys its config carries, mode measure)."""
    pinned = ({k: values[k] for k in space.plans if k in values} if space.plan_search.mode == "measure" else None)
    for name, baseline, plan in zip(space.baseline_names, space.baselines, space.baseline_plans, strict=True):
        if all(values.get(k) == v for k, v in baseline.items()) and (pinned is None or pinned == dict(plan)):
            return name
    return ""


def _column_max(history, name: str) -> float:
    if history is None or name not in history or history[name].isna().all():
        return NAN
    return float(history[name].max())


def _precision_run(history, metrics: dict) -> str:
    """What the Runtime ran (fp32 on a CPU asked for fp16); an OOM's last result does not say."""
    if history is not None and "precision" in history and history["precision"].notna().any():
        return str(history["precision"].dropna().iloc[-1])
    return str(metrics.get("precision", ""))


def val_acc_curve(history) -> str:
    """JSON list of val_acc per completed epoch (by the Train-side count: a resumed trial's progress.csv
    holds both attempts' rows, Tune's iteration restarting; a row an OOM or no_plan ended with is no epoch)."""
    if history is None or EPOCHS_DONE not in history or "val_acc" not in history:
        return "[]"
    rows = history[history[EPOCHS_DONE].fillna(0) > 0]
    if "status" in rows:
        rows = rows[rows["status"] == Status.OK]
    by_epoch = rows.drop_duplicates(EPOCHS_DONE, keep="last").sort_values(EPOCHS_DONE)
    return json.dumps([float(v) for v in by_epoch["val_acc"]])


def _chosen_plan(space: SearchSpace, values: dict, metrics: dict) -> dict[str, Any]:
    """The plan the trial ran (reported by its worker), else what its config pins; NaN where unknown."""
    return {k: metrics.get(PLAN_CONFIG_PREFIX + k, values.get(k, NAN)) for k in space.plan_names()}


def _trial_row(result, sc) -> dict[str, Any]:
    space = sc.space
    values = dict(result.config[TRAIN_LOOP_CONFIG])
    m = dict(result.metrics or {})
    history = result.metrics_dataframe
    epochs_run = epochs_done(m)
    plan = _chosen_plan(space, values, m)
    row = outcome_row(result, epochs_run, space.budget.epochs)
    return {
        **row, "baseline": baseline_name(space, values),
        **{k: values.get(k, NAN) for k in space.param_names()}, **plan,
        "precision_run": _precision_run(history, m), "effective_batch": space.effective_batch_for(values),
        "epochs_run": epochs_run, "seed": m.get("seed", space.base_config().seed),
        **{k: m.get(k, default) for k, default in PLAN_METRIC_DEFAULTS.items()},
        "val_acc_curve": val_acc_curve(history),
        "cuda_max_reserved_mb": _column_max(history, "cuda_max_reserved_mb"),
        "cuda_max_allocated_mb": _column_max(history, "cuda_max_allocated_mb"),
        **{k: m.get(k, NAN) for k in PREDICTED_MEMORY},  # reported by the worker, for the plan it ran
        "rss_peak_mb": _column_max(history, "rss_peak_mb"),
        "device": m.get("device", ""), "node_id": m.get("node_id", ""), "hostname": m.get("hostname", ""),
        "loop_seconds": m.get("loop_seconds_total", NAN),
    }


def _never_launched_rows(sc) -> list[dict[str, Any]]:
    """Configs told in `suggest` and never run: rejected by the VRAM check (its figure is of the smallest
    micro-batch's plan, the least need) or without a plan whose micro-batch divides the effective batch."""
    space = sc.space
    card = CardFit.for_card(sc.card, sc.num_classes)
    rows = []
    for t in _study(sc).get_trials(deepcopy=False):
        status = t.user_attrs.get("status")
        if status not in [s.value for s in NEVER_LAUNCHED]:
            continue
        index = t.user_attrs.get(BASELINE_ATTR)
        values = dict(t.params)
        if index is not None and space.plan_search.mode == "measure":
            values.update(space.baseline_plans[index])
        cfg = None
        if status == Status.REJECTED.value:
            candidates = space.plan_candidates(values)
            cfg = min(candidates, key=lambda c: c.batch_size) if candidates else None
        plan = space.plan_of(cfg) if cfg is not None else {k: values.get(k, NAN) for k in space.plan_names()}
        rows.append({"trial_id": f"optuna-{t.number}", "status": status, "feasible": False,
                     "baseline": space.baseline_names[index] if index is not None else "",
                     **{k: values.get(k, NAN) for k in space.param_names()}, **plan, "precision_run": "",
                     "effective_batch": space.effective_batch_for(values), "epochs_run": 0,
                     **PLAN_METRIC_DEFAULTS, "val_acc_curve": "[]", **card.predicted_memory(cfg),
                     "error": t.user_attrs.get("error", "")})
    return rows
