"""One way to start or restore a Tune experiment, for the search and the confirmation stage alike."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from ray import tune


def tune_environment() -> None:
    """Tune's settings every stage runs under (set once, before the Tuner)."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic progress table honours our columns
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "10")  # the experiment's state is small: a killed driver loses little


def tuner_for(tune_dir: Path, trainable, resume: bool, new: Callable[[], tune.Tuner]) -> tune.Tuner:
    """The experiment in `tune_dir` restored (with `resume`, where Tune can: unfinished trials continue, errored
    ones restart), else `new()`."""
    tune_environment()
    if resume and tune.Tuner.can_restore(str(tune_dir)):
        return tune.Tuner.restore(str(tune_dir), trainable=trainable, resume_unfinished=True, resume_errored=False,
                                  restart_errored=True)
    return new()


def was_interrupted(grid) -> bool:
    """Tune returns normally after Ctrl-C; a trial it never finished (no result, or not terminated) tells."""
    unfinished = any(r.error is None and (r.config is None or not r.metrics) for r in grid)
    return unfinished or grid.num_terminated + grid.num_errors < len(grid)
