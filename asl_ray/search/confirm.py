"""The confirmation stage: every finalist re-trained on the same (fold, seed) pairs before best_config.yaml is
written.

One search trial's accuracy is one draw, and the search's best is the largest of many draws: init, data order
and augmentation move a run by about as much as the differences the search ranks (run sd 0.040 on one split of
the synthetic set, bench/microbatch_accuracy.py). The finalists (asl_ray/search/select.py `finalists`) are
therefore trained again, each with its own full TrainConfig (learning values and the plan its trial ran:
batch_size, gradient_accumulation_steps and the other plan keys), on every pair of `confirmation_pairs`: the
folds `fold, fold + 1, ...` (`--confirm-folds`; `split_seed` deals the signers, so a fold is the same people for
every finalist) x the seeds `fresh_seeds(seed, K)` = seed + 1000 + k (far from the search's own seed so no run
repeats it), for the whole budget (every epoch, no early stopping, no plan search: the plan is known). Every
finalist runs the same pairs, so their runs pair up (select.py compares paired differences).

A second Tune experiment in `runs/<name>/confirm/` (`tune/`, and each run's TorchTrainer in `train/`): one trial
per (finalist, fold, seed), FIFO, no searcher. Its speeds are compared (the pick's samples/s against the
default's), so it runs under the search's own conditions: as many runs at once as the search ran trials (one
per GPU; one on a machine without GPUs, unless --concurrency says otherwise), each worker with
--cpus-per-trial CPUs. `--resume` restores it and finishes only the unfinished runs (a run interrupted mid-fit
continues from its Train checkpoint).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Optional, Sequence

import pandas as pd
from ray import tune

from asl_ray.config import TrainConfig
from asl_ray.outcome import outcome_row, unfinished
from asl_ray.search import experiment
from asl_ray.search.config import SearchConfig, TRAIN_DIR, TUNE_DIR
from asl_ray.search.progress import StateChangeReporter
from asl_ray.search.results import best_config
from asl_ray.search.searcher import TRAIN_LOOP_CONFIG, epochs_done
from asl_ray.search.tuners import tuner_for, was_interrupted

SEED_OFFSET = 1000
"""Fresh seeds start this far above a finalist's own seed."""
CONFIRM_COLUMNS = ["finalist", "trial_id", "fold", "seed", "status", "val_acc", "val_samples", "samples_per_s",
                   "samples_per_s_iqr", "trial_seconds", "error"]


def fresh_seeds(base_seed: int, k: int) -> list[int]:
    """K seeds no search trial used: base_seed + 1000 + i, i = 0..k-1."""
    return [base_seed + SEED_OFFSET + i for i in range(k)]


def confirmation_pairs(base: TrainConfig, folds: int, seeds: int) -> list[tuple[int, int]]:
    """The (fold, seed) pairs every finalist runs: the search's fold and the next `folds - 1` (modulo num_folds),
    each with the `seeds` fresh seeds of the search's seed."""
    return [((base.fold + i) % base.num_folds, seed) for i in range(folds) for seed in fresh_seeds(base.seed, seeds)]


def finalist_config(sc: SearchConfig, row: pd.Series) -> TrainConfig:
    """The finalist's full TrainConfig: its learning values and the plan its trial ran, over the space's base."""
    space = sc.space
    return best_config(row, space.base_config(), space.param_names(), space.plan_names())


def confirmation_points(sc: SearchConfig, df: pd.DataFrame, finalist_ids: Sequence[str]
                        ) -> list[tuple[str, int, int, dict[str, Any]]]:
    """(finalist, fold, seed, full TrainConfig dict) per confirmation run: finalists in order, each on every pair."""
    rows = df.set_index("trial_id")
    pairs = confirmation_pairs(sc.space.base_config(), sc.confirm_folds, sc.confirm_seeds)
    points = []
    for finalist in finalist_ids:
        row = rows.loc[finalist].copy()
        row["trial_id"] = finalist
        cfg = finalist_config(sc, row)
        for fold, seed in pairs:
            points.append((finalist, fold, seed, dataclasses.replace(cfg, fold=fold, seed=seed).to_dict()))
    return points


def _point_key(cfg: dict[str, Any]) -> str:
    return json.dumps(cfg, sort_keys=True)


def trial_dirname(trial) -> str:
    """Short trial folders (Tune's default spells the whole config out): <trainable>_<trial id>."""
    return f"{trial.trainable_name}_{trial.trial_id}"


def _placement(sc: SearchConfig) -> tuple[bool, int]:
    """(use_gpu, runs at once): the search's own (experiment.run): one per GPU, one without GPUs, or
    --concurrency; so a confirmation run's samples/s compares with another's and with a search trial's."""
    gpus = experiment.cluster_gpus()
    return gpus > 0, sc.concurrency or max(1, gpus)


def run_confirmation(sc: SearchConfig, df: pd.DataFrame, finalist_ids: Sequence[str],
                     resume: bool) -> Optional[pd.DataFrame]:
    """Train every (finalist, fresh seed) run, or with `resume` finish the runs an interrupted stage left;
    returns their rows (CONFIRM_COLUMNS), None when the stage was interrupted."""
    points = confirmation_points(sc, df, finalist_ids)
    use_gpu, at_once = _placement(sc)
    # card=None: a confirmation row has no memory columns, so its workers predict nothing (no estimator trace).
    settings = dataclasses.replace(experiment.trial_settings(sc, use_gpu, plan_search=False), card=None,
                                   train_storage=str((sc.confirm_dir() / TRAIN_DIR).resolve()))
    fn = experiment.trainable(settings)
    tune_dir = (sc.confirm_dir() / TUNE_DIR).resolve()
    reporter = StateChangeReporter({f"{TRAIN_LOOP_CONFIG}/fold": "fold", f"{TRAIN_LOOP_CONFIG}/seed": "seed"},
                                   experiment.PROGRESS_METRICS,
                                   eta=experiment.stage_eta(sc, "confirmation", len(points)))
    tuner = tuner_for(tune_dir, fn, resume, lambda: tune.Tuner(
        fn, param_space={TRAIN_LOOP_CONFIG: tune.grid_search([cfg for *_, cfg in points])},
        tune_config=tune.TuneConfig(max_concurrent_trials=at_once, trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(name=tune_dir.name, storage_path=str(tune_dir.parent), progress_reporter=reporter,
                                  verbose=1, failure_config=tune.FailureConfig(max_failures=0))))
    grid = tuner.fit()
    epochs = sc.space.budget.epochs
    if was_interrupted(grid) or any(unfinished(r.metrics, r.error is not None, epochs_done(r.metrics or {}), epochs)
                                    for r in grid):
        return None
    finalist_of = {_point_key(cfg): finalist for finalist, _, _, cfg in points}
    return pd.DataFrame([confirmation_row(r, finalist_of, epochs) for r in grid], columns=CONFIRM_COLUMNS)


def confirmation_row(result, finalist_of: dict[str, str], epochs: int) -> dict[str, Any]:
    cfg = dict(result.config[TRAIN_LOOP_CONFIG])
    row = outcome_row(result, epochs_done(result.metrics or {}), epochs)
    return {**{k: row[k] for k in CONFIRM_COLUMNS if k in row}, "finalist": finalist_of.get(_point_key(cfg), ""),
            "fold": int(cfg["fold"]), "seed": int(cfg["seed"])}
