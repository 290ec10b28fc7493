"""OptunaSearch that never launches a configuration predicted not to fit the target card.

Why in the searcher (and not in the trial): a config rejected here never becomes a Tune trial, so it
costs the estimator's ~1 s instead of a trial's start-up, and it does not use up the trial budget.
Each rejected config is told to Optuna at once as COMPLETE with a positive constraint
(`trial.set_constraint`, Optuna 5), which TPE and NSGA-II both use to steer away from the region;
a FAILED trial would be ignored by TPE, which would keep sampling there.

Results reach Optuna as: finished trials -> COMPLETE (last epoch's accuracy and throughput);
trials an OOM or a divergence ended -> COMPLETE with a positive constraint; trials the scheduler
stopped early -> PRUNED (a partial accuracy must not reach the Pareto front); crashed -> FAIL;
a repeat of a launched config (never run) -> PRUNED with user attr `duplicate_of`.

The study reads as optuna-dashboard shows it: objectives named (`set_metric_names`), parameters
under their TrainConfig names (Tune's `train_loop_config/` nesting is added and removed here, at the
boundary), and only trials that ran in `best_trials`.
"""
from __future__ import annotations

import itertools
import logging
import random
import time
import warnings
from typing import Any, Callable, Optional

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from asl_ray.search.space import SearchSpace

log = logging.getLogger(__name__)

METRICS = ["val_acc", "samples_per_s"]
MODES = ["max", "max"]
TRAIN_LOOP_CONFIG = "train_loop_config"  # Tune's config key of the TorchTrainer's loop config
INFEASIBLE = "infeasible"  # the constraint's key: > 0 means the config does not fit / failed
EPOCHS_DONE = "epochs_done"
"""Epochs the Train run has completed, counted on the Train side (train/worker.py's RayReporter): a
trial restored without a Tune checkpoint restarts Tune's `training_iteration` at 1 while its Train run
continues from its checkpoint, so ASHA's time attribute, the ok/stopped split and Optuna's
COMPLETE/PRUNED all use this count."""
MAX_CONSECUTIVE_REJECTIONS = 500
MAX_CONSECUTIVE_DUPLICATES = 20
MAX_GRID_POINTS = 200_000  # untried points considered for a converged sampler


def optuna_distributions(space: SearchSpace) -> dict[str, optuna.distributions.BaseDistribution]:
    out = {}
    for p in space.params:
        name = p.name
        if p.type == "categorical":
            out[name] = CategoricalDistribution(list(p.choices))
        elif p.type == "int":
            out[name] = IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        else:
            out[name] = FloatDistribution(p.low, p.high, log=p.log, step=p.step)
    return out


class AskTellGridSampler(optuna.samplers.GridSampler):
    """GridSampler for ask/tell use: it stops the study once every point was visited, which only works
    inside `study.optimize` (elsewhere `study.stop` raises from `tell`). The search's trial count is
    capped to the grid size instead (`SearchSpace.trials_to_run`)."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


def make_sampler(space: SearchSpace) -> optuna.samplers.BaseSampler:
    """TPE and NSGA-II read the constraints set with `trial.set_constraint` (Optuna 5's replacement
    for the deprecated `constraints_func`); the grid sampler visits every grid point once, in an order
    shuffled by the seed (the exhaustive baseline of bench/search_efficiency.py)."""
    if space.sampler == "grid":
        grid = {p.name: p.grid_values() for p in space.params}
        return AskTellGridSampler(grid, seed=space.seed)
    if space.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=space.seed)
    return optuna.samplers.TPESampler(seed=space.seed, multivariate=True,
                                      n_startup_trials=min(10, max(2, space.budget.trials // 4)))


def epochs_done(result: dict) -> int:
    return int(result.get(EPOCHS_DONE, 0))


def config_key(values: dict) -> tuple:
    return tuple(sorted(values.items()))


class FitAwareOptunaSearch(OptunaSearch):
    """OptunaSearch + VRAM rejection in `suggest`, constraints, PRUNED for early-stopped trials, and no
    config launched twice.

    `predict(values) -> (fits, predicted_bytes)` is called on every sampled config; the figure is kept
    as the Optuna trial's user attr `predicted_fit_mb`, never in the trial's config (which holds
    TrainConfig keys only: it is what `get_best_config()` returns and what names trial directories).

    Duplicates: on a discrete space TPE proposes configs it already ran (2 of 12 trials in the smoke
    search). A repeat is never launched: it is told PRUNED (the outcome of a run that did not happen;
    COMPLETE with the first run's values made it a second best trial in `study.best_trials` and
    optuna-dashboard) with user attrs `duplicate_of` (the Ray trial) and `duplicate_of_number` (its
    Optuna trial), and a new config is sampled. TPE counts a PRUNED trial without intermediate values
    among its worst, which steers it off the repeat; a repeat of an infeasible config keeps the
    positive constraint. After
    `MAX_CONSECUTIVE_DUPLICATES` repeats in a row, an untried point of the space's grid is enqueued, so
    a converged sampler still spends the trial budget on something new.
    """

    def __init__(self, space: SearchSpace, predict: Callable[[dict], tuple[bool, int]], storage, study_name: str,
                 max_epochs: int):
        super().__init__(space=optuna_distributions(space), metric=METRICS, mode=MODES,
                         points_to_evaluate=[dict(b) for b in space.baselines],
                         sampler=make_sampler(space), storage=storage, study_name=study_name)
        with warnings.catch_warnings():  # experimental since Optuna 3.2, still so in 5.0
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._ot_study.set_metric_names(METRICS)  # optuna-dashboard's objective names
        self._predict = predict
        self._max_epochs = max_epochs
        self._space_spec = space
        self._untried_grid: Optional[list[tuple]] = None  # built when first needed
        self._launched: dict[tuple, str] = {}  # config -> the Tune trial that runs it
        self._infeasible: dict[tuple, float] = {}  # config -> the constraint its run was told
        self.rejected: list[dict[str, Any]] = []

    def suggest(self, trial_id: str) -> Optional[dict]:
        duplicates = 0
        for _ in range(MAX_CONSECUTIVE_REJECTIONS):
            values = super().suggest(trial_id)  # the Optuna params: TrainConfig keys
            key = config_key(values)
            if key in self._launched:
                self._skip_duplicate(trial_id, key)
                duplicates += 1
                if duplicates % MAX_CONSECUTIVE_DUPLICATES == 0 and not self._enqueue_untried():
                    log.info("every point of the space's grid was tried; stopping the search")
                    return Searcher.FINISHED
                continue
            started = time.perf_counter()
            fits, peak = self._predict(values)
            ot_trial = self._ot_trials[trial_id]
            ot_trial.set_user_attr("predicted_fit_mb", peak / 2 ** 20)
            if fits:
                self._launched[key] = trial_id
                ot_trial.set_user_attr("ray_trial_id", trial_id)
                return {TRAIN_LOOP_CONFIG: values}
            self._reject(trial_id, values, peak, time.perf_counter() - started)
        log.warning("every one of %d sampled configs was predicted not to fit; stopping the search",
                    MAX_CONSECUTIVE_REJECTIONS)
        return Searcher.FINISHED

    def _reject(self, trial_id: str, values: dict, peak: int, seconds: float) -> None:
        ot_trial = self._ot_trials.pop(trial_id)
        ot_trial.set_user_attr("status", "rejected")
        ot_trial.set_user_attr(INFEASIBLE, 1.0)
        ot_trial.set_constraint(INFEASIBLE, 1.0)
        self._ot_study.tell(ot_trial, [0.0, 0.0], state=optuna.trial.TrialState.COMPLETE)
        self.rejected.append({**values, "predicted_fit_mb": peak / 2 ** 20, "status": "rejected",
                              "feasible": False, "optuna_trial": ot_trial.number, "reject_seconds": seconds})
        log.info("rejected without launching (predicted %.0f MiB): %s", peak / 2 ** 20, values)

    def _skip_duplicate(self, trial_id: str, key: tuple) -> None:
        ot_trial = self._ot_trials.pop(trial_id)
        first = self._launched[key]
        ot_trial.set_user_attr("status", "duplicate")
        ot_trial.set_user_attr("duplicate_of", first)
        if first in self._ot_trials:
            ot_trial.set_user_attr("duplicate_of_number", self._ot_trials[first].number)
        if key in self._infeasible:
            ot_trial.set_constraint(INFEASIBLE, self._infeasible[key])
        self._ot_study.tell(ot_trial, None, state=optuna.trial.TrialState.PRUNED)
        log.info("not launched again (already trial %s): %s", self._launched[key], dict(key))

    def _enqueue_untried(self) -> bool:
        if self._untried_grid is None:
            grid = itertools.islice(self._space_spec.grid(), MAX_GRID_POINTS)
            self._untried_grid = [config_key(v) for v in grid]
            random.Random(self._space_spec.seed).shuffle(self._untried_grid)
        while self._untried_grid:
            key = self._untried_grid.pop()
            if key not in self._launched:
                self._ot_study.enqueue_trial(dict(key), skip_if_exists=True)
                return True
        return False

    def _remember(self, trial_id: str, infeasible: Optional[float]) -> None:
        for key, launched_as in self._launched.items():
            if launched_as == trial_id and infeasible is not None:
                self._infeasible[key] = infeasible

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        for key in ("oom", "status", EPOCHS_DONE, "precision", "cuda_max_reserved_mb", "rss_peak_mb", "oom_step"):
            if result and key in result:
                ot_trial.set_user_attr(key, result[key])
        if error or not result:
            # Not told yet: an interrupted search marks its in-flight trials errored, and a resumed
            # run finishes them; telling FAIL now would leave a failed twin in the study. Trials that
            # really failed are told FAIL when the search ends (`fail_unfinished_trials`).
            ot_trial.set_user_attr("status", "error")
            return
        if not result.get("feasible", True) or result.get("status") in ("oom", "diverged"):
            ot_trial.set_user_attr(INFEASIBLE, 1.0)
            ot_trial.set_constraint(INFEASIBLE, 1.0)
            self._tell(trial_id, [0.0, 0.0], optuna.trial.TrialState.COMPLETE, infeasible=1.0)
        elif epochs_done(result) < self._max_epochs:
            self._tell(trial_id, None, optuna.trial.TrialState.PRUNED)  # stopped early by the scheduler
        else:
            ot_trial.set_user_attr(INFEASIBLE, 0.0)
            ot_trial.set_constraint(INFEASIBLE, 0.0)
            self._tell(trial_id, [float(result[m]) for m in METRICS], optuna.trial.TrialState.COMPLETE,
                       infeasible=0.0)

    def _tell(self, trial_id: str, values, state, infeasible: Optional[float] = None) -> None:
        self._remember(trial_id, infeasible)
        try:
            self._ot_study.tell(self._ot_trials[trial_id], values, state=state)
        except Exception as e:  # e.g. a NaN value: the study keeps going, the trial table shows it
            log.warning("could not tell Optuna about trial %s: %s", trial_id, e)
        self._completed_trials.add(trial_id)


def fail_unfinished_trials(study: optuna.Study) -> int:
    """At the end of a finished search: every Optuna trial still RUNNING (its Tune trial errored, or it
    was asked for and never launched) is told FAIL, so the study holds no running orphans."""
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for trial in running:
        study.tell(trial.number, None, state=optuna.trial.TrialState.FAIL)
    return len(running)
