"""The progress table is printed when something happened, not on a clock: a trial changed state and two minutes
passed, five minutes passed, or the stage ended (the default search's console stays under 200 lines)."""
from types import SimpleNamespace

from asl_ray.search import progress


def _trials(*states):
    return [SimpleNamespace(trial_id=f"t{i}", status=s) for i, s in enumerate(states)]


def test_a_table_when_a_trial_changed_state_at_most_every_two_minutes(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(progress.time, "time", lambda: now[0])
    reporter = progress.StateChangeReporter({"train_loop_config/dim": "dim"}, {"val_acc": "acc"})
    assert not reporter.should_report(_trials("PENDING"))  # no table of pending trials as the stage starts
    now[0] += 60
    assert not reporter.should_report(_trials("RUNNING"))  # changed, but within two minutes
    now[0] += 70
    assert reporter.should_report(_trials("RUNNING"))  # changed since the last table, two minutes on
    now[0] += 200
    assert not reporter.should_report(_trials("RUNNING"))  # nothing happened
    now[0] += 100
    assert reporter.should_report(_trials("RUNNING"))  # five minutes: still running
    assert reporter.should_report(_trials("TERMINATED"), done=True)  # the end
