"""How a run ended, told one way everywhere: the loop's last result, the search's rows, the confirmation's rows
and what the searcher tells Optuna all use `Status` and `classify`.

No Ray here: a Tune result is read through the attributes every `ray.tune.Result` has (`metrics`, `error`,
`metrics_dataframe`, `path`).
"""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any, Mapping, Optional

NAN = float("nan")


class Status(str, Enum):
    """A run's or a config's status, as the rows and the study's user attrs spell it."""
    OK = "ok"
    """Trained for the whole budget."""
    STOPPED = "stopped"
    """Stopped early by the scheduler (ASHA), or cut short by an interruption."""
    OOM = "oom"
    """Ran out of GPU memory: infeasible on this card."""
    DIVERGED = "diverged"
    """Its loss or weights stopped being finite."""
    NO_PLAN = "no_plan"
    """No execution plan of the learning config can run (none measured fits, or none divides its batch)."""
    REJECTED = "rejected"
    """Predicted not to fit the card: never launched."""
    ERROR = "error"
    """The trial raised (a bug or a crash, not a property of the config)."""

    def __str__(self) -> str:
        return self.value

    @property
    def feasible(self) -> bool:
        return self in (Status.OK, Status.STOPPED)


REPORTED_INFEASIBLE = (Status.OOM, Status.DIVERGED, Status.NO_PLAN)
"""What a worker's last result can say it ended as, short of its budget and without raising."""
NEVER_LAUNCHED = (Status.REJECTED, Status.NO_PLAN)
"""The statuses the searcher records on Optuna trials it never launched."""


def reported_infeasible(metrics: Mapping[str, Any]) -> bool:
    """The worker's last result says the config cannot run (the searcher tells Optuna it is infeasible)."""
    return not metrics.get("feasible", True) or metrics.get("status") in [s.value for s in REPORTED_INFEASIBLE]


def classify(metrics: Mapping[str, Any], errored: bool, epochs_done: int, epochs: int) -> Status:
    """The status of a run from its last result: raised -> ERROR; a reported OOM / divergence / no plan as such;
    otherwise OK when it trained all `epochs`, STOPPED when it did not."""
    if errored:
        return Status.ERROR
    reported = metrics.get("status")
    if reported in [s.value for s in REPORTED_INFEASIBLE]:
        return Status(reported)
    return Status.OK if epochs_done >= epochs else Status.STOPPED


def trial_seconds(history, metrics: Mapping[str, Any]) -> float:
    """Tune's wall time of the trial's last attempt (a trial resumed without a Tune checkpoint starts Tune's clock
    and progress.csv again; the Train-side loop_seconds covers every epoch)."""
    if history is not None and "time_this_iter_s" in history:
        return float(history["time_this_iter_s"].sum())
    return metrics.get("time_total_s", NAN)


def run_speed_of(metrics: Mapping[str, Any]) -> dict[str, float]:
    """A run's samples/s as the rows hold it: the median over its epochs (the worker's `samples_per_s_median`),
    with their interquartile range; an infeasible run's last result (no epoch) has only its 0."""
    return {"samples_per_s": metrics.get("samples_per_s_median", metrics.get("samples_per_s", NAN)),
            "samples_per_s_iqr": metrics.get("samples_per_s_iqr", NAN)}


def outcome_row(result, epochs_done: int, epochs: int) -> dict[str, Any]:
    """The columns every row of a run has, search trial or confirmation run alike: id, status, accuracy, speed,
    seconds, error."""
    m = dict(result.metrics or {})
    status = classify(m, result.error is not None, epochs_done, epochs)
    return {"trial_id": m.get("trial_id", Path(result.path).name), "status": status.value,
            "feasible": status.feasible, "val_acc": m.get("val_acc", NAN), "val_samples": m.get("val_samples", NAN),
            **run_speed_of(m), "trial_seconds": trial_seconds(result.metrics_dataframe, m),
            "error": str(result.error).splitlines()[0][:200] if result.error else m.get("error", "")}


def unfinished(metrics: Optional[Mapping[str, Any]], errored: bool, epochs_done: int, epochs: int) -> bool:
    """A run an interruption stopped: Tune marks it terminated with its last epoch's result (FIFO stops none)."""
    m = metrics or {}
    return not errored and m.get("status", Status.OK.value) == Status.OK.value and epochs_done < epochs
