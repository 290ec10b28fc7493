"""Fault injection for the test suite, through a channel no user config, space file or --help shows.

The environment variable ASL_RAY_FAULTS_FILE names a JSON file holding a list of rules; this module alone reads it.
A rule is {"when": {TrainConfig key: value, ...}, "oom_at_step": n, "nan_at_step": n, "kill_at_epoch": n,
"kill_in_plan_search": n}, every key optional; a config gets the faults of the first rule whose `when` it matches
(no `when`: every config). The file is read when a run or a plan search starts, so a test may rewrite it between
runs, and processes started later (Ray's workers, a CLI in a subprocess) read the same file: tests/conftest.py
sets the variable once for the whole session, before any Ray starts. Unset, missing or empty: no faults.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

ENV = "ASL_RAY_FAULTS_FILE"


@dataclass(frozen=True)
class Faults:
    oom_at_step: int = 0
    """Raise torch.cuda.OutOfMemoryError at this optimizer step (1-based, in training and in a plan's probe)."""
    nan_at_step: int = 0
    """Make the loss NaN from this optimizer step on (1-based)."""
    kill_at_epoch: int = 0
    """Under Ray Train: the worker SIGKILLs itself at the end of this epoch, before reporting it, on a fresh (not
    resumed) attempt."""
    kill_in_plan_search: int = 0
    """The process SIGKILLs itself in the plan search right after a plan it measured makes this many of the search's
    plans present in the plan cache (an attempt that finds that many already cached goes on)."""

    def __bool__(self) -> bool:
        return any(dataclasses.astuple(self))


NO_FAULTS = Faults()
FIELDS = tuple(f.name for f in dataclasses.fields(Faults))


def rules() -> list[dict[str, Any]]:
    path = os.environ.get(ENV)
    if not path or not Path(path).is_file():
        return []
    text = Path(path).read_text().strip()
    return json.loads(text) if text else []


def faults_for(cfg) -> Faults:
    """The faults the rules give this TrainConfig (NO_FAULTS without a matching rule)."""
    values = cfg.to_dict()
    for rule in rules():
        if all(values.get(k) == v for k, v in rule.get("when", {}).items()):
            return Faults(**{k: int(rule[k]) for k in FIELDS if k in rule})
    return NO_FAULTS


def write_rules(path: Path, *rules_: Mapping[str, Any]) -> None:
    """Replace the rules (tests)."""
    unknown = {k for r in rules_ for k in r} - {"when", *FIELDS}
    if unknown:
        raise ValueError(f"fault rules: unknown key(s) {', '.join(sorted(unknown))}")
    Path(path).write_text(json.dumps(list(rules_)))
