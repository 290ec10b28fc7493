"""Scoring for bench/search_efficiency.py: an arm's cost, its pick, the quality of the pick re-trained with fresh
seeds, and the goal's verdicts. Pure functions over the arms' result files (no Ray, nothing run)."""
from __future__ import annotations

import dataclasses
import math
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from asl_ray.config import load_config_yaml

if TYPE_CHECKING:
    from search_efficiency import ArmRun

GOAL_COST = 0.25
"""The two-level search may spend at most this fraction of the grid's trial-seconds."""
NOT_LAUNCHED = ("rejected", "no_plan")
"""Trial statuses that never became a Tune trial: they cost the estimator's second, not a trial."""


# ---- quality of a pick --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Quality:
    mean: float
    sd: float
    se: float
    runs: int

    def text(self) -> str:
        return f"{self.mean:.3f} +- {self.sd:.3f} (SE {self.se:.3f}, n {self.runs})" if self.runs else "-"


def quality(runs: Sequence[dict]) -> Quality:
    """Mean +- sd of the re-trainings; SE = max(sd, one run's binomial SE) / sqrt(runs): with 3 runs the sd
    alone can be near zero by luck."""
    accs = [r["val_acc"] for r in runs]
    if not accs:
        return Quality(math.nan, math.nan, math.nan, 0)
    mean = statistics.fmean(accs)
    sd = statistics.stdev(accs) if len(accs) > 1 else math.nan
    sizes = [r["val_samples"] for r in runs if r.get("val_samples")]
    binomial = math.sqrt(mean * (1 - mean) / statistics.fmean(sizes)) if sizes else math.nan
    spread = max((s for s in (sd, binomial) if not math.isnan(s)), default=math.nan)
    return Quality(mean, sd, spread / math.sqrt(len(accs)), len(accs))


def pooled(qualities: Sequence[Quality]) -> Quality:
    """An arm over its search seeds: the mean of its picks' means; SE = max(sd of the means / sqrt(K),
    sqrt(sum of their SE^2) / K), the spread between searches floored by each pick's own noise."""
    qs = [q for q in qualities if q.runs]
    if not qs:
        return Quality(math.nan, math.nan, math.nan, 0)
    means = [q.mean for q in qs]
    sd = statistics.stdev(means) if len(means) > 1 else math.nan
    own = math.sqrt(sum(q.se ** 2 for q in qs)) / len(qs)
    between = sd / math.sqrt(len(qs)) if len(qs) > 1 else math.nan
    return Quality(statistics.fmean(means), sd, max((s for s in (between, own) if not math.isnan(s)),
                                                    default=math.nan), sum(q.runs for q in qs))


def credibly_below(x: Quality, best: Quality, z: float) -> bool:
    """The noise-aware rule's test, on re-trained accuracies: best.mean - x.mean > z sqrt(best.se^2 + x.se^2)."""
    if not (x.runs and best.runs):
        return True  # nothing re-trained: no pick to speak for
    return best.mean - x.mean > z * math.sqrt(best.se ** 2 + x.se ** 2)


def trial_seconds(run: ArmRun) -> float:
    """What the arm's trials cost: every launched trial's time_total_s, plus its confirmation runs."""
    launched = run.trials[~run.trials["status"].isin(NOT_LAUNCHED)]
    total = float(launched["trial_seconds"].fillna(0).sum())
    if run.confirmations is not None and len(run.confirmations):
        total += float(run.confirmations["trial_seconds"].fillna(0).sum())
    return total


def matches_pick(config: Path, pick: Optional[dict], names: Sequence[str]) -> bool:
    """Does the arm's best_config.yaml (what is re-trained) hold the noise-aware pick's learning and plan values?"""
    if pick is None or not config.exists():
        return pick is None and not config.exists()
    cfg = load_config_yaml(config)
    value = {n: cfg.effective_batch_size() if n == "effective_batch_size" else getattr(cfg, n, None) for n in names}
    return all(value[n] == pick[n] for n in names if n in pick)


def pick_of(run: ArmRun, names: Sequence[str]) -> Optional[dict]:
    from asl_ray.search.select import Selection, select_best  # the results stage's own rule
    best = select_best(run.trials, Selection(), run.confirmations)
    if best is None:
        return None
    return {**{n: _plain(best[n]) for n in names if n in best}, "trial_id": str(best["trial_id"]),
            "acc_mean": float(best["acc_mean"]), "acc_se": float(best["acc_se"]),
            "samples_per_s": float(best["samples_per_s"])}


def verdicts(grid: Quality, grid_cost: float, two: Quality, two_cost: float, one: Quality, one_cost: float,
             z: float) -> dict:
    as_good_as_grid = not credibly_below(two, grid, z)
    cheap_vs_grid = two_cost <= GOAL_COST * grid_cost
    vs_one = two_cost < one_cost and not credibly_below(two, one, z)
    fraction = two_cost / grid_cost if grid_cost else math.nan
    return {"two_level_not_credibly_below_grid": as_good_as_grid, "two_level_cost_fraction": fraction,
            "two_level_within_cost": cheap_vs_grid, "two_level_cheaper_than_one_level_for_as_good": vs_one,
            "goal_met": bool(as_good_as_grid and cheap_vs_grid and vs_one)}


def _plain(v):
    return v.item() if hasattr(v, "item") else v


def _short(pick: Optional[dict], names: Sequence[str]) -> str:
    if not pick:
        return "-"
    return " ".join(f"{n}={pick[n]}" for n in names if n in pick)
