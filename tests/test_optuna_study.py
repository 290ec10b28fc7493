"""The search's Optuna study as optuna-dashboard shows it: named objectives, TrainConfig parameter names,
and only trials that ran among the best (a repeat of a launched config is never a second best).

The study is written by the product's own searcher (FitAwareSearch, a Tune Searcher over Optuna's ask/tell;
no Ray cluster is needed to drive it) into a real SQLite file, then read back through Optuna and through
optuna-dashboard's own WSGI app, as `optuna-dashboard sqlite:///...` serves it."""
import io
import json
import wsgiref.util

import optuna
import pytest
import yaml

from asl_ray.search.searcher import METRICS, FitAwareSearch
from asl_ray.search.space import load_space

PARAMS = {"effective_batch_size", "dim"}


@pytest.fixture(scope="module")
def study_file(tmp_path_factory):
    """A search over a 2 x 2 space of learning knobs (micro-batch 8: 8 x 1 or 8 x 2), run to the end: one config
    rejected for VRAM, one stopped early (epochs_done 1 of 2), the rest finished, and TPE's repeats told as
    duplicates."""
    tmp_path = tmp_path_factory.mktemp("study")
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({
        "sampler": "tpe", "seed": 1, "budget": {"trials": 10, "epochs": 2},
        "params": {"effective_batch_size": {"type": "categorical", "choices": [8, 16]},
                   "dim": {"type": "categorical", "choices": [32, 64]}},
        "plans": {"batch_size": [8]},
        "baselines": [{"effective_batch_size": 8, "dim": 32}]}))
    space = load_space(path)
    db = tmp_path / "optuna.db"
    storage = optuna.storages.RDBStorage(f"sqlite:///{db}")

    def fits(cfg):  # effective batch 16 at dim 64 is "predicted not to fit"
        big = cfg.effective_batch_size() == 16 and cfg.dim == 64
        return not big, (900 if big else 100) * 2 ** 20

    search = FitAwareSearch(space, fits, storage=storage, study_name="s", max_epochs=2)
    from ray.tune.search import Searcher
    for i in range(10):
        config = search.suggest(f"t{i}")
        if config is Searcher.FINISHED:
            break
        values = config["train_loop_config"]
        stopped = values == {"effective_batch_size": 16, "dim": 32}
        search.on_trial_complete(f"t{i}", {"val_acc": 0.5 + 0.1 * (values["dim"] == 64), "samples_per_s": 100.0 / i
                                           if i else 100.0, "epochs_done": 1 if stopped else 2, "training_iteration": 1,
                                           "feasible": True, "status": "ok"})
    study = search.study
    assert any(t.user_attrs.get("status") == "duplicate" for t in study.trials), "no repeat to test"
    assert any(t.user_attrs.get("status") == "rejected" for t in study.trials)
    return db


def _get(app, path):
    environ = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "QUERY_STRING": "", "wsgi.input": io.BytesIO()}
    wsgiref.util.setup_testing_defaults(environ)
    status = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    assert status[0].startswith("200"), (status, body[:300])
    return json.loads(body)


def test_the_study_reads_well_in_optuna(study_file):
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{study_file}")
    assert study.metric_names == METRICS
    assert all(set(t.params) == PARAMS for t in study.trials)  # no "train_loop_config/" prefix
    ran = {t.number for t in study.trials if "ray_trial_id" in t.user_attrs}
    best = study.best_trials
    assert best and {t.number for t in best} <= ran  # no repeat, no rejected config among the best
    stopped = [t for t in study.trials if t.params == {"effective_batch_size": 16, "dim": 32}
               and "ray_trial_id" in t.user_attrs]
    assert [t.state for t in stopped] == [optuna.trial.TrialState.PRUNED]  # epochs_done 1 of 2: stopped early


def test_the_study_reads_well_in_optuna_dashboard(study_file):
    optuna_dashboard = pytest.importorskip("optuna_dashboard")
    app = optuna_dashboard.wsgi(f"sqlite:///{study_file}")
    studies = _get(app, "/api/studies")["study_summaries"]
    assert [s["study_name"] for s in studies] == ["s"]
    detail = _get(app, f"/api/studies/{studies[0]['study_id']}")
    assert detail["objective_names"] == METRICS  # not "Objective 0", "Objective 1"
    assert {p["name"] for p in detail["union_search_space"]} == PARAMS
    assert all({p["name"] for p in t["params"]} == PARAMS for t in detail["trials"])
    by_number = {t["number"]: t for t in detail["trials"]}
    best = [by_number[t["number"]] for t in detail["best_trials"]]
    assert best and all(any(a["key"] == "ray_trial_id" for a in t["user_attrs"]) for t in best)
    assert not any(a["key"] == "duplicate_of" for t in best for a in t["user_attrs"])
