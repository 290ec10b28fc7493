"""The Tune searcher of the two-level search: Optuna, through its public ask/tell API, proposes learning
configs; a config none of whose execution plans is predicted to fit the target card is never launched.

Plan search `measure` (the two-level design): Optuna samples the learning knobs (`SearchSpace.optuna_params`);
the trial's candidate plans are `space.plan_candidates(values, pinned)`, measured inside the trial's Train
worker (search/trial_worker.py). Plan search `optuna` (the literal one-level design): Optuna samples the plan
knobs too and each trial runs the one plan it was given.

Why the VRAM check is here (and not in the trial): a config rejected here never becomes a Tune trial, so it
costs the estimator's ~1 s instead of a trial's start-up, and it does not use up the trial budget. In mode
`measure` the candidates are checked smallest micro-batch first (the least memory) and the check stops at the
first that fits: the config is launched iff some plan fits; the worker filters the rest again.
Each rejected config is told to Optuna at once as COMPLETE with a positive constraint
(`trial.set_constraint`), which TPE and NSGA-II both use to steer away from the region; a FAILED trial
would be ignored by TPE, which would keep sampling there. A learning config whose effective batch no plan's
micro-batch divides is told the same way (user attr status `no_plan`); in mode `optuna` a micro-batch that
does not divide the sampled effective batch is a point outside the space, skipped like a duplicate (PRUNED,
status `no_plan`) and resampled.

Results reach Optuna as: finished trials -> COMPLETE (last epoch's accuracy and the training throughput of
the chosen plan); trials an OOM, a divergence or an empty plan search ended -> COMPLETE with a positive
constraint; trials the scheduler stopped early -> PRUNED (a partial accuracy must not reach the Pareto front);
crashed -> FAIL (at the end, `fail_unfinished_trials`); a repeat of a launched config (never run) -> PRUNED
with user attr `duplicate_of`.

The study reads as optuna-dashboard shows it: objectives named (`set_metric_names`), parameters under their
space names (Tune's `train_loop_config/` nesting is added here, at the boundary), and only trials that ran in
`best_trials`. The searcher's state (the study handle and which Tune trial is which Optuna trial) is pickled
by `save` and read back by `restore`: Tune calls them for `--resume`.
"""
from __future__ import annotations

import itertools
import math
import logging
import pickle
import random
import time
import warnings
from typing import Any, Callable, Mapping, Optional

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from ray.tune.search import Searcher

from asl_ray.cards import MiB
from asl_ray.config import ConfigError, TrainConfig
from asl_ray.outcome import Status, reported_infeasible
from asl_ray.search.space import SearchSpace
from asl_ray.search.time_budget import TimeBudget

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
BASELINE_ATTR = "baseline"  # user attr of an enqueued baseline's Optuna trial: its index in space.baselines
MAX_CONSECUTIVE_REJECTIONS = 500
MAX_CONSECUTIVE_DUPLICATES = 20
MAX_GRID_POINTS = 200_000  # untried points considered for a converged sampler
RESULT_ATTRS = ("oom", "status", EPOCHS_DONE, "precision", "cuda_max_reserved_mb", "rss_peak_mb", "oom_step",
                "plan", "plan_samples_per_s", "plans_measured", "plans_from_cache", "val_samples", "seed")
"""Metrics of a trial's last result kept as user attrs of its Optuna trial (what optuna-dashboard shows)."""

Fits = Callable[[TrainConfig], tuple[bool, int]]
"""The VRAM verdict for one full TrainConfig: (fits, predicted bytes); `asl_ray.plan.fits.CardFit`."""


def optuna_distributions(space: SearchSpace) -> dict[str, optuna.distributions.BaseDistribution]:
    out = {}
    for p in space.optuna_params():
        if p.type == "categorical":
            out[p.name] = CategoricalDistribution(list(p.choices))
        elif p.type == "int":
            out[p.name] = IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        else:
            out[p.name] = FloatDistribution(p.low, p.high, log=p.log, step=p.step)
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
        grid = {p.name: p.grid_values() for p in space.optuna_params()}
        return AskTellGridSampler(grid, seed=space.seed)
    if space.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=space.seed)
    return optuna.samplers.TPESampler(seed=space.seed, multivariate=True,
                                      n_startup_trials=min(10, max(2, space.budget.trials // 4)))


def objective_values(result: Mapping[str, Any]) -> list[float]:
    """A finished trial's objectives: its last epoch's accuracy and its run's samples/s, the median over its
    epochs (one epoch's figure is one draw)."""
    return [float(result["val_acc"]), float(result.get("samples_per_s_median", result["samples_per_s"]))]


def epochs_done(result: Mapping[str, Any]) -> int:
    return int(result.get(EPOCHS_DONE, 0))


def config_key(values: Mapping[str, Any]) -> tuple:
    return tuple(sorted(values.items()))


def smallest_fitting(candidates: list[TrainConfig], fits: Fits) -> tuple[Optional[TrainConfig], int]:
    """(the first candidate, by ascending micro-batch, predicted to fit, and its figure; or None and the
    smallest micro-batch's figure, the least need): the check stops as soon as the config can run at all."""
    least = None
    for cfg in sorted(candidates, key=lambda c: c.batch_size):
        ok, peak = fits(cfg)
        if ok:
            return cfg, peak
        least = peak if least is None else least
    return None, least or 0


class FitAwareSearch(Searcher):
    """A Tune Searcher over an Optuna study (ask/tell): VRAM rejection and plan resolution in `suggest`,
    constraints, PRUNED for early-stopped trials, and no config launched twice.

    `fits(cfg) -> (fits, predicted_bytes)` is called on candidate TrainConfigs; the figure is kept as the
    Optuna trial's user attr `predicted_fit_mb`, never in the trial's config (which holds the space's keys
    only: the Optuna values, plus a baseline's pinned plan keys; it is what names trial directories).

    Baselines are enqueued first with user attr `baseline` (their index): the trial of a baseline whose
    entry pins plan keys (`space.baseline_plans`) carries them in its config, so its worker measures only
    that plan.

    Duplicates: on a discrete space TPE proposes configs it already ran (2 of 12 trials in the smoke
    search). A repeat is never launched: it is told PRUNED (the outcome of a run that did not happen;
    COMPLETE with the first run's values made it a second best trial in `study.best_trials` and
    optuna-dashboard) with user attrs `duplicate_of` (the Ray trial) and `duplicate_of_number` (its
    Optuna trial), and a new config is sampled. A sampled config repeats any launched one with the same
    Optuna values; a pinned baseline only one with the same pinned plan too. TPE counts a PRUNED trial
    without intermediate values among its worst, which steers it off the repeat; a repeat of an
    infeasible config keeps the positive constraint. After `MAX_CONSECUTIVE_DUPLICATES` repeats in a row,
    an untried point of the space's grid is enqueued, so a converged sampler still spends the trial budget
    on something new.
    """

    def __init__(self, space: SearchSpace, fits: Fits, storage, study_name: str, max_epochs: int,
                 time_budget: Optional[TimeBudget] = None):
        super().__init__(metric=METRICS, mode=MODES)
        self.time_budget = time_budget
        """--time-budget (asl_ray/search/time_budget.py): no launch the rest of the budget cannot hold."""
        self._space = space
        self._fits = fits
        self._max_epochs = max_epochs
        self._distributions = optuna_distributions(space)
        self._study = optuna.create_study(storage=storage, sampler=make_sampler(space), study_name=study_name,
                                          directions=["maximize" if m == "max" else "minimize" for m in MODES],
                                          load_if_exists=True)
        with warnings.catch_warnings():  # experimental since Optuna 3.2, still so in 5.0
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._study.set_metric_names(METRICS)  # optuna-dashboard's objective names
        for i, values in enumerate(space.baselines):
            self._study.enqueue_trial(dict(values), user_attrs={BASELINE_ATTR: i})
        self._running: dict[str, optuna.Trial] = {}  # Tune trial -> its Optuna trial, until told
        self._told: set[str] = set()
        self._numbers: dict[str, int] = {}  # Tune trial -> its Optuna trial's number
        self._launched: dict[tuple, str] = {}  # (values key, pinned plan key) -> the Tune trial that runs it
        self._constraint: dict[str, float] = {}  # Tune trial -> the constraint its run was told
        self._never_launched: set[tuple] = set()  # values told rejected or no_plan in `suggest`
        self._untried_grid: Optional[list[tuple]] = None  # built when first needed

    @property
    def study(self) -> optuna.Study:
        return self._study

    # ---- suggest -------------------------------------------------------------------------------------
    def suggest(self, trial_id: str) -> Optional[dict]:
        if self.time_budget is not None and not self.time_budget.can_launch():
            b = self.time_budget
            log.warning("--time-budget: %.0f of %.0f s spent, a trial takes up to %.0f s and %.1f run(s) are kept for "
                        "the confirmation; no more trials are launched", b.spent_s(), b.total_s,
                        b.forecast_trial_s() or 0.0, b.reserved_runs)
            return Searcher.FINISHED
        duplicates = 0
        for _ in range(MAX_CONSECUTIVE_REJECTIONS):
            trial = self._study.ask(fixed_distributions=self._distributions)
            values = dict(trial.params)  # the Optuna params: the space's own names
            pinned = self._pinned_plan(trial)
            first = self._launched_as(values, pinned)
            if first is not None:
                self._skip_duplicate(trial, first)
                duplicates += 1
                if duplicates % MAX_CONSECUTIVE_DUPLICATES == 0 and not self._enqueue_untried():
                    log.info("every point of the space's grid was tried; stopping the search")
                    return Searcher.FINISHED
                continue
            config = self._launchable(trial, values, pinned)
            if config is None:
                continue
            self._launched[(config_key(values), config_key(pinned))] = trial_id
            self._running[trial_id] = trial
            self._numbers[trial_id] = trial.number
            trial.set_user_attr("ray_trial_id", trial_id)
            return {TRAIN_LOOP_CONFIG: config}
        log.warning("none of %d sampled configs could be launched (no plan predicted to fit); stopping the search",
                    MAX_CONSECUTIVE_REJECTIONS)
        return Searcher.FINISHED

    def _pinned_plan(self, trial: optuna.Trial) -> dict[str, Any]:
        """A baseline's pinned plan keys (mode measure only: in mode optuna the plan keys are Optuna values)."""
        index = trial.user_attrs.get(BASELINE_ATTR)
        if index is None or self._space.plan_search.mode != "measure":
            return {}
        return dict(self._space.baseline_plans[index])

    def _launched_as(self, values: dict, pinned: dict) -> Optional[str]:
        """The Tune trial that already runs these values: any plan for a sampled config, the same pin for a
        pinned baseline."""
        key = config_key(values)
        if pinned:
            return self._launched.get((key, config_key(pinned)))
        return next((tid for (k, _), tid in self._launched.items() if k == key), None)

    def _launchable(self, trial: optuna.Trial, values: dict, pinned: dict) -> Optional[dict]:
        """The trial's config if some plan of it is predicted to fit; otherwise tells Optuna why not."""
        started = time.perf_counter()
        if self._space.plan_search.mode == "measure":
            candidates = self._space.plan_candidates(values, pinned)
            if not candidates:
                self._tell_never_launched(trial, values, Status.NO_PLAN, None, time.perf_counter() - started)
                return None
            fitting, peak = smallest_fitting(candidates, self._fits)
            if fitting is not None:
                # The trial's worker asks the same of every plan: answered here, where the traces are warm,
                # its answers come from the estimator's disk cache (a fresh worker process would re-trace).
                for cfg in candidates:
                    self._fits(cfg)
        else:
            try:
                cfg = self._space.config_for(values)
            except ConfigError as e:  # this micro-batch does not divide this effective batch: not a point
                self._never_launched.add(config_key(values))
                trial.set_user_attr("status", Status.NO_PLAN.value)
                trial.set_user_attr("error", str(e)[:300])
                self._study.tell(trial, None, state=optuna.trial.TrialState.PRUNED)
                log.info("not a runnable point (%s): %s", e, values)
                return None
            ok, peak = self._fits(cfg)
            fitting = cfg if ok else None
        trial.set_user_attr("predicted_fit_mb", peak / MiB)
        if fitting is None:
            self._tell_never_launched(trial, values, Status.REJECTED, peak, time.perf_counter() - started)
            return None
        trial.set_user_attr("predicted_plan_batch_size", fitting.batch_size)
        return {**values, **pinned}

    def _tell_never_launched(self, trial: optuna.Trial, values: dict, status: Status, peak: Optional[int],
                             seconds: float) -> None:
        self._never_launched.add(config_key(values))
        trial.set_user_attr("status", status.value)
        trial.set_user_attr(INFEASIBLE, 1.0)
        trial.set_user_attr("reject_seconds", seconds)
        trial.set_constraint(INFEASIBLE, 1.0)
        self._study.tell(trial, [0.0, 0.0], state=optuna.trial.TrialState.COMPLETE)
        if status is Status.NO_PLAN:
            log.info("no plan's micro-batch divides the effective batch; not launched: %s", values)
        else:
            log.info("rejected without launching (predicted %.0f MiB): %s", peak / MiB, values)

    def _skip_duplicate(self, trial: optuna.Trial, first: str) -> None:
        trial.set_user_attr("status", "duplicate")
        trial.set_user_attr("duplicate_of", first)
        trial.set_user_attr("duplicate_of_number", self._numbers[first])
        if first in self._constraint:
            trial.set_constraint(INFEASIBLE, self._constraint[first])
        self._study.tell(trial, None, state=optuna.trial.TrialState.PRUNED)
        log.info("not launched again (already trial %s): %s", first, trial.params)

    def _enqueue_untried(self) -> bool:
        if self._untried_grid is None:
            grid = itertools.islice(self._space.grid(), MAX_GRID_POINTS)
            self._untried_grid = [config_key(v) for v in grid]
            random.Random(self._space.seed).shuffle(self._untried_grid)
        tried = {k for k, _ in self._launched} | self._never_launched
        while self._untried_grid:
            key = self._untried_grid.pop()
            if key not in tried:
                self._study.enqueue_trial(dict(key), skip_if_exists=True)
                return True
        return False

    # ---- results -------------------------------------------------------------------------------------
    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        if trial_id in self._told or trial_id not in self._running:
            return
        if self.time_budget is not None and result:
            self.time_budget.trial_finished(result.get("time_total_s", math.nan))
        trial = self._running[trial_id]
        for key in RESULT_ATTRS:
            if result and key in result:
                trial.set_user_attr(key, result[key])
        if error or not result:
            # Not told yet: an interrupted search marks its in-flight trials errored, and a resumed
            # run finishes them; telling FAIL now would leave a failed twin in the study. Trials that
            # really failed are told FAIL when the search ends (`fail_unfinished_trials`).
            trial.set_user_attr("status", Status.ERROR.value)
            return
        if reported_infeasible(result):
            self._tell(trial_id, [0.0, 0.0], optuna.trial.TrialState.COMPLETE, infeasible=1.0)
        elif epochs_done(result) < self._max_epochs:
            self._tell(trial_id, None, optuna.trial.TrialState.PRUNED)  # stopped early by the scheduler
        else:
            self._tell(trial_id, objective_values(result), optuna.trial.TrialState.COMPLETE, infeasible=0.0)

    def _tell(self, trial_id: str, values, state, infeasible: Optional[float] = None) -> None:
        trial = self._running.pop(trial_id)
        if infeasible is not None:
            trial.set_user_attr(INFEASIBLE, infeasible)
            trial.set_constraint(INFEASIBLE, infeasible)
            self._constraint[trial_id] = infeasible
        try:
            self._study.tell(trial, values, state=state)
        except Exception as e:  # e.g. a NaN value: the study keeps going, the trial table shows it
            log.warning("could not tell Optuna about trial %s: %s", trial_id, e)
        self._told.add(trial_id)

    # ---- Tune's saved state (--resume) ---------------------------------------------------------------
    def save(self, checkpoint_path: str) -> None:
        if self.time_budget is not None:
            self.time_budget.checkpointed()
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__.copy(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
        self.__dict__.setdefault("time_budget", None)  # saved by a version without --time-budget
        if self.time_budget is not None:
            self.time_budget.resumed()


def fail_unfinished_trials(study: optuna.Study) -> int:
    """At the end of a finished search: every Optuna trial still RUNNING (its Tune trial errored, or it
    was asked for and never launched) is told FAIL, so the study holds no running orphans."""
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for trial in running:
        study.tell(trial.number, None, state=optuna.trial.TrialState.FAIL)
    return len(running)
