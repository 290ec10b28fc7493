"""The live ETA line under each progress table: "elapsed 12 min, forecast remaining ~34 min (...), trials 5 done /
2 running / 13 left". No Ray here: the reporter (progress.py) feeds it (trial id, status) pairs.

Remaining = (the trials left x a trial's seconds + what each running trial has still to run) / the trials run at
once, + what follows this stage (the main search's line adds the confirmation's forecast). A trial's seconds: the
mean of this stage's finished trials once one finished (ASHA's stopped ones included, so it is the expected
figure), else the dry run's forecast (runs/<name>/forecast.json), else unknown. Durations are timed by this
process from the first state it saw a trial in: accurate to the reporter's polling, about a second.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Iterable, Optional

DONE = ("TERMINATED", "ERROR")
RUNNING = ("RUNNING", "PAUSED")


@dataclass
class Eta:
    total: int
    """Trials (or runs) this stage launches at most."""
    forecast_trial_s: Optional[float] = None
    """The dry run's seconds per trial; None without a measured forecast."""
    at_once: int = 1
    """Trials run at once."""
    after_s: float = 0.0
    """Forecast seconds of what follows this stage (the confirmation, after the main search)."""
    started: float = field(default_factory=time.time)
    """When the search started (its elapsed time is the line's first figure)."""
    running_since: dict = field(default_factory=dict)
    finished_s: dict = field(default_factory=dict)
    done: set = field(default_factory=set)

    def observe(self, states: Iterable[tuple[str, str]], now: Optional[float] = None) -> None:
        """Record the trials' (id, status) as seen at `now`: starts and ends of runs."""
        now = time.time() if now is None else now
        for trial_id, status in states:
            if status in RUNNING:
                self.running_since.setdefault(trial_id, now)
            elif status in DONE and trial_id not in self.done:
                self.done.add(trial_id)
                if trial_id in self.running_since:
                    self.finished_s[trial_id] = now - self.running_since[trial_id]

    def trial_s(self) -> tuple[Optional[float], str]:
        """(seconds per trial, where the figure comes from)."""
        if self.finished_s:
            n = len(self.finished_s)
            return sum(self.finished_s.values()) / n, f"mean of {n} finished"
        if self.forecast_trial_s is not None:
            return self.forecast_trial_s, "dry-run forecast"
        return None, ""

    def remaining_s(self, states: list[tuple[str, str]], now: Optional[float] = None) -> Optional[float]:
        now = time.time() if now is None else now
        per, _ = self.trial_s()
        if per is None:
            return None
        running = [i for i, s in states if s in RUNNING]
        done = sum(1 for _, s in states if s in DONE)
        left = max(0, self.total - done - len(running))
        still = sum(max(0.0, per - (now - self.running_since.get(i, now))) for i in running)
        return (left * per + still) / max(1, self.at_once) + self.after_s

    def line(self, states: list[tuple[str, str]], now: Optional[float] = None) -> str:
        now = time.time() if now is None else now
        self.observe(states, now)
        running = sum(1 for _, s in states if s in RUNNING)
        done = sum(1 for _, s in states if s in DONE)
        left = max(0, self.total - done - running)
        remaining = self.remaining_s(states, now)
        _, source = self.trial_s()
        eta = (f"forecast remaining ~{minutes(remaining)} ({source}"
               + (f", confirmation included" if self.after_s else "") + ")" if remaining is not None
               else "forecast remaining: unknown until a trial finishes (no forecast: run --dry-run first)")
        return f"elapsed {minutes(now - self.started)}, {eta}, trials {done} done / {running} running / {left} left"


def minutes(seconds: float) -> str:
    """'45 s', '12 min', '2 h 05 min'."""
    if not math.isfinite(seconds):
        return "?"
    if seconds < 60:
        return f"{max(0.0, seconds):.0f} s"
    m = round(seconds / 60)
    return f"{m} min" if m < 120 else f"{m // 60} h {m % 60:02d} min"
