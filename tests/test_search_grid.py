"""`sampler: grid`: the exhaustive baseline visits every grid point once, through the same searcher."""
from pathlib import Path

import optuna
import yaml

from asl_ray.search.searcher import make_sampler, optuna_distributions
from asl_ray.search.space import load_space

REPO = Path(__file__).resolve().parents[1]


def _grid_space(tmp_path, trials, mode="measure", sampler="grid"):
    raw = yaml.safe_load((REPO / "search_spaces" / "cpu-smoke.yaml").read_text())
    raw.update(sampler=sampler, scheduler="fifo")
    raw["budget"]["trials"] = trials
    raw["plan_search"]["mode"] = mode
    raw.pop("baselines")
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_space(path)


def _visit_every_point(space):
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=make_sampler(space))
    distributions = optuna_distributions(space)
    seen = []
    for _ in range(space.grid_size()):
        trial = study.ask(fixed_distributions=distributions)
        seen.append(tuple(sorted(trial.params.items())))
        study.tell(trial, [0.0, 0.0])
    return seen


def test_grid_sampler_visits_every_learning_point_once(tmp_path):
    space = _grid_space(tmp_path, trials=100)
    assert space.grid_size() == 2 * 2 * 2  # effective_batch_size x dim x max_len: the plans are measured
    assert space.trials_to_run(100) == 8 and space.trials_to_run(5) == 5
    seen = _visit_every_point(space)
    assert len(set(seen)) == 8
    assert set(seen) == {tuple(sorted(p.items())) for p in space.grid()}  # Optuna's params: the space's names
    assert all(dict(p).keys() == {"effective_batch_size", "dim", "max_len"} for p in seen)


def test_in_mode_optuna_the_grid_spans_the_plans_too(tmp_path):
    space = _grid_space(tmp_path, trials=100, mode="optuna")
    assert space.grid_size() == 8 * 4  # and micro-batch 8, 12, 24 or 48
    seen = _visit_every_point(space)
    assert set(seen) == {tuple(sorted(p.items())) for p in space.grid()} and len(seen) == 32


def test_other_samplers_are_not_capped_by_the_grid(tmp_path):
    space = load_space(REPO / "search_spaces" / "cpu-smoke.yaml")
    assert space.trials_to_run(500) == 500


def test_a_config_is_never_launched_twice(tmp_path):
    """The one test of the searcher's dedupe (a repeat is told PRUNED, points at the run it repeats, never runs and
    is never among the best); the study and suggest tests rely on it rather than restating it."""
    from ray.tune.search import Searcher
    from asl_ray.search.searcher import FitAwareSearch
    space = _grid_space(tmp_path, trials=20, sampler="tpe")
    search = FitAwareSearch(space, lambda cfg: (True, 2 ** 20), storage=optuna.storages.InMemoryStorage(),
                            study_name="dedupe", max_epochs=space.budget.epochs)
    launched = []
    for i in range(space.grid_size()):
        config = search.suggest(f"t{i}")
        assert config is not None and config is not Searcher.FINISHED, i
        assert list(config) == ["train_loop_config"]  # the space's keys only: no predicted figure in the config
        assert set(config["train_loop_config"]) == {"effective_batch_size", "dim", "max_len"}
        launched.append(config["train_loop_config"])
        search.on_trial_complete(f"t{i}", {"val_acc": 0.1 * i, "samples_per_s": 10.0, "epochs_done": 6,
                                           "training_iteration": 1, "feasible": True, "status": "ok"})
    assert len({tuple(sorted(c.items())) for c in launched}) == 8  # every grid point once, no repeat
    assert search.suggest("t-extra") is Searcher.FINISHED  # nothing new is left
    study = search.study
    duplicates = [t for t in study.trials if t.user_attrs.get("status") == "duplicate"]
    # A repeat never ran: PRUNED (no values), pointing at the run it repeats, never among the best trials.
    assert duplicates and all(t.state == optuna.trial.TrialState.PRUNED and t.values is None for t in duplicates)
    first = {t.user_attrs["ray_trial_id"]: t for t in study.trials if "ray_trial_id" in t.user_attrs}
    assert all(first[t.user_attrs["duplicate_of"]].number == t.user_attrs["duplicate_of_number"]
               and first[t.user_attrs["duplicate_of"]].params == t.params for t in duplicates)
    # Told COMPLETE by the Train-side epoch count (6 of 6), although Tune's iteration said 1.
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in first.values())
    assert {t.number for t in study.best_trials} <= {t.number for t in first.values()}
