"""--time-budget: one line and exit 2 for a bad value; no launch the rest of the budget cannot hold, the
confirmation's share kept; a resumed search counts what the interrupted one spent (its searcher's saved state)."""
import pickle
import time

import optuna
import pytest
from ray.tune.search import Searcher

from asl_ray.search import session
from asl_ray.search.__main__ import main as search_main
from asl_ray.search.searcher import FitAwareSearch
from asl_ray.search.space import load_space
from asl_ray.search.time_budget import TimeBudget, parse_duration
from conftest import expect_bad_input, write_search_space


@pytest.mark.parametrize("text, seconds", [("8h", 28800), ("45m", 2700), ("90s", 90), ("1h30m", 5400),
                                           ("2.5h", 9000), (" 1H ", 3600)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("value", ["-1", "nan", "3x", "0m", "inf", "", "1h-5m"])
def test_a_bad_budget_is_one_line_naming_the_flag(value, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(session, "run_search", lambda sc: pytest.fail("launched"))
    space = write_search_space(tmp_path / "space.yaml")
    err = expect_bad_input(search_main, capsys, "--space", str(space), "--time-budget", value)
    assert "--time-budget" in err


def test_the_flag_reaches_the_search(tmp_path, synth_root, synth_cache, monkeypatch):
    seen = []
    monkeypatch.setattr(session, "run_search", lambda sc: seen.append(sc) or 0)
    space = write_search_space(tmp_path / "space.yaml")
    assert search_main(["--space", str(space), "--time-budget", "1h30m", "--data", str(synth_root), "--cache-dir",
                        str(synth_cache.path.parent), "--storage-path", str(tmp_path / "runs")]) == 0
    assert seen[-1].time_budget_s() == 5400


def test_no_launch_the_rest_cannot_hold_with_the_confirmations_share_kept():
    budget = TimeBudget(1000.0, reserved_runs=3, started=time.time() - 100)
    assert budget.can_launch()  # nothing finished yet: the first trials launch
    budget.trial_finished(200.0)  # 1000 - 100 spent - 3 x 200 kept = 300 left: one more 200 s trial fits
    assert budget.can_launch() and budget.left_for_trials_s() == pytest.approx(300, abs=1)
    budget.trial_finished(350.0)  # now 1000 - 100 - 3 x 350 < 0
    assert not budget.can_launch()
    assert TimeBudget(1000.0).can_launch() and not TimeBudget(10.0, started=time.time() - 20).can_launch()


def test_a_resume_counts_what_was_spent_and_not_the_time_it_was_stopped():
    budget = TimeBudget(3600.0, started=time.time() - 600)
    budget.checkpointed()  # as Tune saves the searcher
    saved = pickle.loads(pickle.dumps(budget))
    saved.started -= 5000  # the search stayed stopped for a long while before --resume
    saved.resumed()
    assert saved.spent_s() == pytest.approx(600, abs=2)


def always_fits(cfg):
    return True, 0


def test_the_searcher_stops_launching_when_the_budget_is_spent(tmp_path):
    space = load_space(write_search_space(tmp_path / "space.yaml"))
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'o.db'}")
    budget = TimeBudget(1000.0, started=time.time() - 500)  # 500 s spent: a 990 s trial cannot fit in the rest
    search = FitAwareSearch(space, always_fits, storage, "b", max_epochs=space.budget.epochs,
                            time_budget=budget)
    assert isinstance(search.suggest("t1"), dict)
    search.on_trial_complete("t1", {"time_total_s": 990.0, "val_acc": 0.5, "samples_per_s": 1.0, "samples_per_s_median": 1.0,
                                    "epochs_done": space.budget.epochs, "feasible": True, "status": "ok"})
    assert search.suggest("t2") is Searcher.FINISHED
    path = tmp_path / "searcher.pkl"
    search.save(str(path))
    search.restore(str(path))
    assert search.time_budget.trial_seconds == [990.0]
