"""The live ETA line under the progress table (asl_ray/search/eta.py), without Ray: trials done/running/left, the
remaining time from the dry run's forecast until a trial finishes, then from the finished trials."""
from asl_ray.search.eta import Eta, minutes


def test_before_any_trial_finishes_the_forecast_is_used():
    eta = Eta(total=5, forecast_trial_s=100.0, started=0.0)
    eta.observe([("a", "RUNNING")], now=0.0)
    states = [("a", "RUNNING"), ("b", "PENDING")]
    # a has 70 s left of its 100; 4 trials left (b pending counts as left): 400 + 70.
    assert eta.remaining_s(states, now=30.0) == 470.0
    line = eta.line(states, now=30.0)
    assert line == ("elapsed 30 s, forecast remaining ~8 min (dry-run forecast), trials 0 done / 1 running / "
                    "4 left")


def test_finished_trials_replace_the_forecast_and_what_follows_is_added():
    eta = Eta(total=5, forecast_trial_s=100.0, at_once=2, after_s=60.0, started=0.0)
    eta.observe([("a", "RUNNING"), ("b", "RUNNING")], now=0.0)
    eta.observe([("a", "TERMINATED"), ("b", "RUNNING"), ("c", "RUNNING")], now=50.0)
    assert eta.trial_s() == (50.0, "mean of 1 finished")
    states = [("a", "TERMINATED"), ("b", "RUNNING"), ("c", "RUNNING")]
    # b ran 50 of 50 (0 left), c 0 of 50; 2 left: (2 x 50 + 0 + 50) / 2 at once + 60 after.
    assert eta.remaining_s(states, now=50.0) == 135.0
    assert "trials 1 done / 2 running / 2 left" in eta.line(states, now=50.0)
    assert "confirmation included" in eta.line(states, now=50.0)


def test_an_errored_trial_is_done_and_a_trial_never_seen_running_has_no_duration():
    eta = Eta(total=2, started=0.0)
    eta.observe([("a", "ERROR")], now=5.0)
    assert eta.finished_s == {} and eta.trial_s() == (None, "")
    line = eta.line([("a", "ERROR")], now=5.0)
    assert "unknown until a trial finishes" in line and "trials 1 done / 0 running / 1 left" in line


def test_minutes():
    assert minutes(12) == "12 s" and minutes(150) == "2 min" and minutes(2 * 3600 + 5 * 60) == "2 h 05 min"
