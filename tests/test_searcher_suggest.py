"""The searcher's `suggest` without Ray's cluster: what is launched, what is told to Optuna and never run.

A small space (effective batch 20 or 24, dim 32/64/128; plans batch_size 8/12/24) and a fake VRAM verdict:
a plan fits when batch_size x dim <= 512, so dim 128 never fits, dim 64 only at micro-batch 8, and effective
batch 20 has no plan at all (no micro-batch divides it)."""
import pickle

import optuna
import pytest
import yaml
from ray.tune.search import Searcher

from asl_ray.plan.fits import CardFit
from asl_ray.search.driver import TrialSettings, trial_candidates
from asl_ray.search.searcher import BASELINE_ATTR, FitAwareSearch
from asl_ray.search.space import load_space

PRUNED, COMPLETE = optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.COMPLETE


def _space(tmp_path, mode="measure", baselines=({"effective_batch_size": 24, "dim": 32, "batch_size": 12},)):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({
        "sampler": "tpe", "seed": 1, "budget": {"trials": 20, "epochs": 2}, "fixed": {"depth": 1, "num_workers": 0},
        "params": {"effective_batch_size": {"type": "int", "low": 20, "high": 24, "step": 4},
                   "dim": {"type": "categorical", "choices": [32, 64, 128]}},
        "plans": {"batch_size": [8, 12, 24]},
        "plan_search": {"mode": mode},
        "baselines": list(baselines)}))
    return load_space(path)


class FakeFit:
    """batch_size x dim <= 512 fits; records what it was asked, in order."""

    def __init__(self):
        self.asked = []

    def __call__(self, cfg):
        self.asked.append((cfg.dim, cfg.batch_size))
        need = cfg.batch_size * cfg.dim
        return need <= 512, need * 2 ** 20


def _search(space, fits=None):
    return FitAwareSearch(space, fits or FakeFit(), storage=optuna.storages.InMemoryStorage(), study_name="s",
                          max_epochs=2)


def _finish(search, trial_id, acc=0.5, epochs=2):
    search.on_trial_complete(trial_id, {"val_acc": acc, "samples_per_s": 10.0, "epochs_done": epochs,
                                        "feasible": True, "status": "ok", "plan": "8x3", "plans_measured": 2,
                                        "val_samples": 400, "seed": 42})


def _run_all(search, n=30):
    launched = []
    for i in range(n):
        config = search.suggest(f"t{i}")
        if config is Searcher.FINISHED:
            break
        launched.append(config["train_loop_config"])
        _finish(search, f"t{i}")
    return launched


def test_measure_mode_launches_learning_configs_some_plan_of_which_fits(tmp_path):
    space = _space(tmp_path)
    search = _search(space)
    launched = _run_all(search)
    # The pinned baseline first, with its plan key; every other config holds learning keys only.
    assert launched[0] == {"effective_batch_size": 24, "dim": 32, "batch_size": 12}
    assert all(set(c) == {"effective_batch_size", "dim"} for c in launched[1:])
    learning = [(c["effective_batch_size"], c["dim"]) for c in launched]
    # Launchable: effective 24 at dim 32 (any plan) and 64 (8x3 fits); never dim 128, never effective 20.
    assert sorted(set(learning)) == [(24, 32), (24, 64)] and len(learning) == 2  # each once
    study = search.study
    by_status = {}
    for t in study.trials:
        by_status.setdefault(t.user_attrs.get("status"), []).append(t)
    # No micro-batch divides 20: told COMPLETE with a positive constraint, never launched.
    assert by_status["no_plan"] and all(t.params["effective_batch_size"] == 20 and t.state == COMPLETE
                                        and t.user_attrs["infeasible"] == 1.0 for t in by_status["no_plan"])
    rejected = by_status["rejected"]
    assert rejected and all(t.params == {"effective_batch_size": 24, "dim": 128} and t.state == COMPLETE
                            for t in rejected)
    assert all(t.user_attrs["predicted_fit_mb"] == 8 * 128 for t in rejected)  # the smallest plan's, least need
    ran = [t for t in study.trials if "ray_trial_id" in t.user_attrs]
    assert all(t.state == COMPLETE and t.user_attrs["plan"] == "8x3" and t.user_attrs["val_samples"] == 400
               and t.user_attrs["plans_measured"] == 2 for t in ran)
    assert {t.number for t in study.best_trials} <= {t.number for t in ran}


def test_the_vram_check_goes_up_from_the_smallest_micro_batch_then_answers_every_plan_for_the_worker(tmp_path):
    space = _space(tmp_path, baselines=[])
    fits = FakeFit()
    search = _search(space, fits)
    study = search.study
    study.enqueue_trial({"effective_batch_size": 24, "dim": 32})
    study.enqueue_trial({"effective_batch_size": 24, "dim": 64})
    study.enqueue_trial({"effective_batch_size": 24, "dim": 128})
    # The launch verdict is the smallest micro-batch that fits; then every plan the trial's worker will ask
    # about is answered here too (the estimator's disk cache hands those answers to the worker).
    assert search.suggest("a") is not None and fits.asked[0] == (32, 8)
    assert sorted(fits.asked[1:]) == [(32, 8), (32, 12), (32, 24)]
    assert study.trials[0].user_attrs["predicted_plan_batch_size"] == 8
    fits.asked.clear()
    assert search.suggest("b") is not None and fits.asked[0] == (64, 8) and {d for d, _ in fits.asked} == {64}
    fits.asked.clear()
    # dim 128 fits nowhere: every plan is asked; nothing else of the space can be launched
    assert search.suggest("c") is Searcher.FINISHED
    assert fits.asked[:3] == [(128, 8), (128, 12), (128, 24)] and {d for d, _ in fits.asked} == {128}


def test_a_pinned_baseline_runs_only_its_plan_and_a_repeat_of_its_learning_values_is_a_duplicate(tmp_path):
    space = _space(tmp_path)
    search = _search(space)
    config = search.suggest("base")["train_loop_config"]
    settings = TrialSettings(base_config=space.base_config().to_dict(), cache_path="c", train_storage="s",
                             use_gpu=False, cpus_per_worker=1.0, card=CardFit(2 ** 30, 250),
                             plan_search=space.plan_search, space=space, plan_cache_dir="p")
    assert [(c.batch_size, c.gradient_accumulation_steps) for c in trial_candidates(config, settings)] == [(12, 2)]
    sampled = {"effective_batch_size": 24, "dim": 32}
    assert [(c.batch_size, c.gradient_accumulation_steps) for c in trial_candidates(sampled, settings)] == [
        (24, 1), (12, 2), (8, 3)]
    base_trial = next(t for t in search.study.trials if t.user_attrs.get("ray_trial_id") == "base")
    assert base_trial.user_attrs[BASELINE_ATTR] == 0
    search.study.enqueue_trial(sampled)
    again = search.suggest("next")["train_loop_config"]
    assert again != sampled  # the same learning values: not launched again, whatever the plan
    duplicate = next(t for t in search.study.trials if t.user_attrs.get("status") == "duplicate")
    assert duplicate.params == sampled and duplicate.user_attrs["duplicate_of"] == "base"
    assert duplicate.user_attrs["duplicate_of_number"] == base_trial.number


def test_optuna_mode_samples_the_plan_and_skips_a_micro_batch_that_does_not_divide(tmp_path):
    space = _space(tmp_path).with_plan_search_mode("optuna")
    search = _search(space)
    launched = _run_all(search, n=40)
    assert launched[0] == {"effective_batch_size": 24, "dim": 32, "batch_size": 12}
    assert all(set(c) == {"effective_batch_size", "dim", "batch_size"} for c in launched)
    assert all(c["effective_batch_size"] % c["batch_size"] == 0 for c in launched)
    assert all(c["batch_size"] * c["dim"] <= 512 for c in launched)  # the VRAM check on the sampled plan
    assert len({tuple(sorted(c.items())) for c in launched}) == len(launched)
    trials = search.study.trials
    no_plan = [t for t in trials if t.user_attrs.get("status") == "no_plan"]
    assert no_plan and all(t.state == PRUNED and t.params["effective_batch_size"] % t.params["batch_size"]
                           for t in no_plan)  # not a point of the space: skipped, resampled
    launched_numbers = {t.number for t in trials if "ray_trial_id" in t.user_attrs}
    assert not launched_numbers & {t.number for t in no_plan}


def test_results_reach_optuna_as_complete_pruned_or_infeasible(tmp_path):
    search = _search(_space(tmp_path, baselines=[]))
    study = search.study
    for values in ({"effective_batch_size": 24, "dim": 32}, {"effective_batch_size": 24, "dim": 64}):
        study.enqueue_trial(values)
    search.suggest("stopped")
    search.suggest("no-plan")
    search.on_trial_complete("stopped", {"val_acc": 0.4, "samples_per_s": 9.0, "epochs_done": 1, "status": "ok",
                                         "feasible": True})
    search.on_trial_complete("no-plan", {"val_acc": 0.0, "samples_per_s": 0.0, "epochs_done": 0,
                                         "status": "no_plan", "feasible": False})
    told = {t.user_attrs["ray_trial_id"]: t for t in study.trials}
    assert told["stopped"].state == PRUNED  # ASHA stopped it after 1 of 2 epochs
    assert told["no-plan"].state == COMPLETE and told["no-plan"].user_attrs["infeasible"] == 1.0
    assert told["no-plan"].user_attrs["status"] == "no_plan"


def test_save_and_restore_carry_the_launched_configs_and_the_running_trials(tmp_path):
    space = _space(tmp_path)
    storage = optuna.storages.InMemoryStorage()
    search = FitAwareSearch(space, FakeFit(), storage=storage, study_name="s", max_epochs=2)
    first = search.suggest("t0")["train_loop_config"]
    second = search.suggest("t1")["train_loop_config"]
    _finish(search, "t0")
    search.save(str(tmp_path / "searcher.pkl"))

    restored = FitAwareSearch.__new__(FitAwareSearch)  # as Tune does: restore into an instance
    restored.restore(str(tmp_path / "searcher.pkl"))
    _finish(restored, "t1", acc=0.7)  # launched before the save, told after the restore
    states = {t.user_attrs.get("ray_trial_id"): t.state for t in restored.study.trials}
    assert states["t0"] == COMPLETE and states["t1"] == COMPLETE
    later = _run_all(restored)
    assert not {tuple(sorted(c.items())) for c in later} & {tuple(sorted(first.items())),
                                                            tuple(sorted(second.items()))}
    assert restored.suggest("more") is Searcher.FINISHED  # nothing untried is left in this space


@pytest.mark.parametrize("mode", ["measure", "optuna"])
def test_the_searcher_pickles_with_a_sqlite_study(tmp_path, mode):
    space = _space(tmp_path, mode=mode)
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    search = FitAwareSearch(space, FakeFit(), storage=storage, study_name="s", max_epochs=2)
    search.suggest("t0")
    clone = pickle.loads(pickle.dumps(search))
    _finish(clone, "t0")
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state for t in study.trials if t.user_attrs.get("ray_trial_id") == "t0"] == [COMPLETE]
