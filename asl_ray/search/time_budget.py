"""`--time-budget`: a wall-clock budget for the whole search. No trial is launched that what is left cannot hold
(after the confirmation stage's share is kept), and a resumed search counts what the interrupted one spent.

A trial's forecast is the longest finished trial so far (a trial ASHA stopped early is shorter, so the longest one
is the full-length figure); before any trial has finished, the first ones launch. No Ray here.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import Optional

_PART = re.compile(r"(\d+(?:\.\d+)?)([hms])")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(text: str) -> float:
    """'8h', '45m', '90s', '1h30m', '2.5h' -> seconds. Raises ValueError for anything else (-1, nan, 3x, 0)."""
    compact = str(text).strip().lower().replace(" ", "")
    if not compact or not re.fullmatch(r"(\d+(?:\.\d+)?[hms])+", compact):
        raise ValueError(f"expected a duration such as 8h, 45m or 1h30m, got {text!r}")
    seconds = sum(float(n) * _UNIT_S[u] for n, u in _PART.findall(compact))
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"must be a positive duration, got {text!r}")
    return seconds


@dataclass
class TimeBudget:
    total_s: float
    """The whole search's wall-clock budget, confirmation included."""
    reserved_runs: float = 0.0
    """Full-length runs kept for the confirmation stage (its runs / the runs it makes at once)."""
    spent_before_s: float = 0.0
    """What earlier attempts of this search spent (a resume goes on from here)."""
    started: float = field(default_factory=time.time)
    trial_seconds: list[float] = field(default_factory=list)
    """Wall seconds of the trials finished so far."""

    def spent_s(self) -> float:
        return self.spent_before_s + max(0.0, time.time() - self.started)

    def forecast_trial_s(self) -> Optional[float]:
        return max(self.trial_seconds) if self.trial_seconds else None

    def left_for_trials_s(self) -> float:
        """What the main search may still spend: the budget less what was spent and the confirmation's share."""
        forecast = self.forecast_trial_s() or 0.0
        return self.total_s - self.spent_s() - self.reserved_runs * forecast

    def can_launch(self) -> bool:
        forecast = self.forecast_trial_s()
        if forecast is None:
            return self.spent_s() < self.total_s
        return self.left_for_trials_s() >= forecast

    def trial_finished(self, seconds: float) -> None:
        if isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0:
            self.trial_seconds.append(float(seconds))

    def checkpointed(self) -> None:
        """Before Tune saves the searcher: fold the running clock into `spent_before_s`."""
        self.spent_before_s, self.started = self.spent_s(), time.time()

    def resumed(self) -> None:
        """After a restore: the time between the save and now (the search was not running) is not spent."""
        self.started = time.time()
