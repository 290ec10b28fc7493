"""The one progress table of each Tune stage (the main search, the confirmation runs): Tune's classic CLIReporter,
printed when something happened rather than on a clock, so a default search's console stays short.

A table is printed when a trial changed state (started, finished, stopped, failed) and at least
`min_seconds` passed since the last one (or since the stage started: no table of pending trials), at least
every `max_seconds` while trials run, and at the end (CLIReporter's own rule is a table every
`max_report_frequency` seconds, changed or not). The default search's console is under 200 lines. With an `eta`
(asl_ray/search/eta.py) each table is followed by one line: elapsed, forecast remaining, trials done/running/left.
"""
from __future__ import annotations

import time
from typing import Mapping, Optional

from ray.tune import CLIReporter

from asl_ray.search.eta import Eta

MIN_SECONDS = 120.0
MAX_SECONDS = 300.0


class StateChangeReporter(CLIReporter):
    def __init__(self, parameter_columns: Mapping[str, str], metric_columns: Mapping[str, str],
                 min_seconds: float = MIN_SECONDS, max_seconds: float = MAX_SECONDS, eta: Optional[Eta] = None):
        # Said explicitly: left out, the table depends on the verbosity a previous Tune run left behind.
        super().__init__(parameter_columns=dict(parameter_columns), metric_columns=dict(metric_columns),
                         max_report_frequency=min_seconds, print_intermediate_tables=True)
        self._min_seconds, self._max_seconds = min_seconds, max_seconds
        self._last_states: tuple = ()
        self._last_time = time.time()
        self._eta = eta

    def should_report(self, trials, done: bool = False) -> bool:
        states = tuple(sorted((t.trial_id, t.status) for t in trials))
        if self._eta is not None:  # called on every loop of Tune's: the ETA's clock sees each start and end
            self._eta.observe(states)
        since = time.time() - self._last_time
        if done or (states != self._last_states and since >= self._min_seconds) or since >= self._max_seconds:
            self._last_states, self._last_time = states, time.time()
            return True
        return False

    def report(self, trials, done: bool, *sys_info: str) -> None:
        super().report(trials, done, *sys_info)
        if self._eta is not None:
            self._print(self._eta.line([(t.trial_id, t.status) for t in trials]))
