"""Scoring for bench/search_efficiency.py: an arm's cost, its pick, the pick re-trained on the bench's (fold, seed)
pairs, paired comparisons with the grid's pick on both axes, the goal's verdicts, the noise the re-trainings
measured and the error rates they show. Pure functions over the arms' result files (no Ray, nothing run)."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import pandas as pd

from asl_ray.config import load_config_yaml
from asl_ray.stats import Paired, paired

if TYPE_CHECKING:
    from search_efficiency import ArmRun

GOAL_COST = 0.30
"""The two-level search may spend at most this fraction of the grid's trial-seconds, every stage included."""
SPEED_MARGIN = 0.05
"""'At least as fast': the lower confidence bound of the speed ratio is at least 1 - this."""
NOT_LAUNCHED = ("rejected", "no_plan")
"""Trial statuses that never became a Tune trial: they cost the estimator's second, not a trial."""


# ---- the pick re-trained -----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Retrained:
    """One pick trained once per (fold, seed) pair of the bench, in the bench's pair order."""
    accs: tuple[float, ...]
    """val_acc per pair (0.0 for a run that ended infeasible: it is scored, never dropped)."""
    speeds: tuple[float, ...]
    """The run's samples/s (median over its epochs) per pair; NaN for an infeasible run."""

    @property
    def mean(self) -> float:
        return float(np.mean(self.accs)) if self.accs else math.nan

    @property
    def speed(self) -> float:
        """Geometric mean of the runs' samples/s."""
        logs = np.log([s for s in self.speeds if s > 0])
        return float(np.exp(logs.mean())) if len(logs) else math.nan

    def text(self) -> str:
        if not self.accs:
            return "-"
        sd = np.std(self.accs, ddof=1) if len(self.accs) > 1 else math.nan
        return f"{self.mean:.3f} +- {sd:.3f} (n {len(self.accs)})"


def retrained(runs: Sequence[dict]) -> Retrained:
    return Retrained(tuple(float(r["val_acc"]) for r in runs), tuple(float(r["samples_per_s"]) for r in runs))


@dataclasses.dataclass(frozen=True)
class Comparison:
    """x against a reference, paired: accuracy x - ref and log samples/s x - ref, over the same units (the bench's
    pairs for one search seed; the search seeds for an arm)."""
    accuracy: Paired
    log_speed: Paired

    def accuracy_low(self, alpha: float) -> float:
        return self.accuracy.lower(alpha)

    def ratio(self) -> float:
        return math.exp(self.log_speed.mean) if self.log_speed.n else math.nan

    def ratio_low(self, alpha: float) -> float:
        low = self.log_speed.lower(alpha)
        return math.exp(low) if math.isfinite(low) else (0.0 if self.log_speed.n else math.nan)

    def equivalent_or_better(self, delta: float, alpha: float) -> bool:
        """The one-sided lower bound of x - ref is above -delta: x is credibly at most delta worse."""
        return bool(self.accuracy_low(alpha) >= -delta)

    def at_least_as_fast(self, alpha: float) -> bool:
        """The one-sided lower bound of x / ref is at least 1 - SPEED_MARGIN."""
        return bool(self.ratio_low(alpha) >= 1 - SPEED_MARGIN)

    def record(self, delta: float, alpha: float) -> dict:
        return {"units": self.accuracy.n, "accuracy_diff": self.accuracy.mean, "accuracy_diff_sd": self.accuracy.sd,
                "accuracy_diff_low": _json_float(self.accuracy_low(alpha)),
                "equivalent_or_better": self.equivalent_or_better(delta, alpha), "speed_ratio": self.ratio(),
                "speed_ratio_low": _json_float(self.ratio_low(alpha)), "at_least_as_fast": self.at_least_as_fast(alpha)}


def compare(x: Retrained, reference: Retrained) -> Comparison:
    """x against the reference over their shared pairs."""
    return Comparison(paired(x.accs, reference.accs), paired(_logs(x.speeds), _logs(reference.speeds)))


def over_seeds(comparisons: Sequence[Comparison]) -> Comparison:
    """An arm against the reference over its search seeds: each seed's mean paired difference is one unit, so the
    spread includes which config each search landed on (t on seeds - 1 dof)."""
    acc = [c.accuracy.mean for c in comparisons if c.accuracy.n]
    speed = [c.log_speed.mean for c in comparisons if c.log_speed.n]
    return Comparison(paired(acc, np.zeros(len(acc))), paired(speed, np.zeros(len(speed))))


def _logs(speeds: Sequence[float]) -> np.ndarray:
    s = np.asarray(speeds, dtype=float)
    return np.log(np.where(s > 0, s, np.nan))


def _json_float(v: float) -> Optional[float]:
    return v if math.isfinite(v) else None


# ---- cost ---------------------------------------------------------------------------------------------------------

def trial_seconds(run: ArmRun) -> float:
    """What the arm's trials cost: every launched trial's time_total_s (plan probes inside), plus its
    confirmation runs."""
    return search_seconds(run) + confirm_seconds(run)


def search_seconds(run: ArmRun) -> float:
    launched = run.trials[~run.trials["status"].isin(NOT_LAUNCHED)]
    return float(launched["trial_seconds"].fillna(0).sum())


def confirm_seconds(run: ArmRun) -> float:
    if run.confirmations is None or not len(run.confirmations):
        return 0.0
    return float(run.confirmations["trial_seconds"].fillna(0).sum())


def probe_seconds(run: ArmRun) -> float:
    """The plan probes' share of the trials' seconds (measured in the trials' workers)."""
    if "plan_search_seconds" not in run.trials:
        return 0.0
    return float(run.trials["plan_search_seconds"].fillna(0).sum())


def verdicts(overall: Comparison, two_cost: float, grid_cost: float, delta: float, alpha: float) -> dict:
    """The goal: the two-level pick equivalent to or better than the grid's (paired, within delta), at least as fast,
    for at most GOAL_COST of the grid's trial-seconds."""
    fraction = two_cost / grid_cost if grid_cost else math.nan
    equivalent = overall.equivalent_or_better(delta, alpha)
    fast = overall.at_least_as_fast(alpha)
    within = bool(fraction <= GOAL_COST)
    return {"equivalent_or_better": equivalent, "at_least_as_fast": fast, "cost_fraction": fraction,
            "within_cost": within, "goal_met": bool(equivalent and fast and within)}


# ---- what the re-trainings show -----------------------------------------------------------------------------------

def measured_noise(picks: Sequence[Retrained]) -> dict[str, float]:
    """The noise of the re-trainings, from an additive (pick + pair) model of the distinct picks: a run's own
    accuracy sd (what pairing leaves), the pairs' shared sd, and the sd of a run's log speed. NaN below two
    picks or two pairs."""
    rows = [p for p in picks if p.accs and all(s > 0 for s in p.speeds)]
    if len(rows) < 2 or len(rows[0].accs) < 2 or len({len(p.accs) for p in rows}) != 1:
        return {"own_sd": math.nan, "shared_sd": math.nan, "speed_cv": math.nan}
    acc = np.array([p.accs for p in rows])
    logs = np.log(np.array([p.speeds for p in rows]))

    def residual_sd(m: np.ndarray) -> float:
        e = m - m.mean(axis=1, keepdims=True) - m.mean(axis=0, keepdims=True) + m.mean()
        return float(math.sqrt((e ** 2).sum() / ((m.shape[0] - 1) * (m.shape[1] - 1))))

    own = residual_sd(acc)
    columns = (acc - acc.mean(axis=1, keepdims=True)).mean(axis=0)
    shared = math.sqrt(max(0.0, float(np.var(columns, ddof=1)) - own ** 2 / acc.shape[0]))
    return {"own_sd": own, "shared_sd": shared, "speed_cv": residual_sd(logs)}


def observed_rates(picks: dict[str, Retrained], arms: Sequence[str], delta: float) -> dict[str, float]:
    """The simulation's outcomes, read off the re-trainings (their means standing in for the truths, so with their
    own noise): per arm in `arms`, worse = its pick is below the best pick of any arm by more than delta; missed =
    another pick within delta / 2 of the best is at least 10% faster."""
    from asl_ray.search.decision_sim import SPEED_MARGIN as SIM_SPEED_MARGIN
    known = {a: p for a, p in picks.items() if p.accs}
    if not known or not arms:
        return {"worse": math.nan, "missed": math.nan, "arms": 0}
    best = max(p.mean for p in known.values())
    worse = missed = 0
    for arm in arms:
        pick = known.get(arm)
        if pick is None:
            continue
        worse += pick.mean < best - delta
        missed += any(p.mean >= best - delta / 2 and p.speed >= (1 + SIM_SPEED_MARGIN) * pick.speed
                      for p in known.values())
    n = sum(a in known for a in arms)
    return {"worse": worse / n, "missed": missed / n, "arms": n}


# ---- the pick -----------------------------------------------------------------------------------------------------

def matches_pick(config: Path, pick: Optional[dict], names: Sequence[str]) -> bool:
    """Does the arm's best_config.yaml (what is re-trained) hold the rule's pick's learning and plan values?"""
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
            "acc_mean": float(best["acc_mean"]), "acc_se": _json_float(float(best["acc_se"])),
            "acc_source": str(best["acc_source"]), "samples_per_s": float(best["samples_per_s"])}


def _plain(v):
    return v.item() if hasattr(v, "item") else v


# ---- the bench's table and verdicts -------------------------------------------------------------------------------

def result_table(records: dict, totals: dict, picks: dict[str, Retrained], names: Sequence[str],
                 grid_cost: float) -> pd.DataFrame:
    """One row per arm (cost, its stages, its pick re-trained, its paired comparison with the grid's pick), then one
    per kind of search over its seeds."""
    rows = []
    for name, r in records.items():
        vs = r["vs_grid"] or {}
        rows.append({"arm": name, "trials": r["trials"], "trial_s": r["trial_seconds"],
                     "cost": r["trial_seconds"] / grid_cost, "probe_s": r["probe_seconds"],
                     "confirm_s": r["confirm_seconds"], "wall_s": r["wall_seconds"], "pick": short(r["pick"], names),
                     "retrained": picks[name].text(), "samples/s": picks[name].speed, **_versus(vs)})
    for kind, t in totals.items():
        seeds = len(t["per_seed_goal"])
        rows.append({"arm": f"{kind} (over {seeds} seeds)", "trials": "", "trial_s": t["trial_seconds"],
                     "cost": t["trial_seconds"] / grid_cost, "probe_s": "", "confirm_s": "",
                     "wall_s": t["wall_seconds"], "pick": "", "retrained": "", "samples/s": "",
                     **_versus(t["vs_grid"])})
    return pd.DataFrame(rows)


def _versus(vs: dict) -> dict[str, str]:
    if not vs:
        return {"acc - grid [low]": "", "speed / grid [low]": ""}
    return {"acc - grid [low]": f"{vs['accuracy_diff']:+.3f} [{_number(vs['accuracy_diff_low'])}]",
            "speed / grid [low]": f"x{vs['speed_ratio']:.2f} [{_number(vs['speed_ratio_low'])}]"}


def _number(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.3f}"


def verdict_lines(totals: dict, pairs: Sequence, alpha: float, delta: float, rung: tuple, noise: dict,
                  distinct: int, simulated: Sequence[dict], observed: dict) -> list[str]:
    """What the bench prints under its table: the goal per kind of search, ASHA's rung (epoch, Spearman, trials),
    the re-trainings' noise, the simulated error rates at it and those the re-trainings show."""
    lines = [f"quality: every pick re-trained on the same {len(pairs)} (fold, seed) pairs {list(pairs)}; [low]: "
             f"one-sided {1 - alpha:.0%} lower bound (per seed over the pairs, per arm over the seeds)"]
    for kind, t in totals.items():
        g = t["goal"]
        lines.append(f"goal ({kind}): equivalent or better than the grid's pick within delta {delta} "
                     f"({'yes' if g['equivalent_or_better'] else 'NO'}), at least as fast "
                     f"({'yes' if g['at_least_as_fast'] else 'NO'}), for <= {GOAL_COST:.2f} of its trial-seconds "
                     f"({g['cost_fraction']:.2f}): {'met' if g['goal_met'] else 'MISSED'}; per search seed: "
                     + ", ".join(f"s{s} {'met' if v['goal_met'] else 'missed'}" for s, v in t["per_seed_goal"].items()))
    epoch, rho, behind = rung
    lines.append(f"ASHA's first rung (epoch {epoch}) vs the last epoch over the grid's {behind} trials: "
                 f"Spearman {rho:+.2f}")
    lines.append(f"re-trainings' noise: own sd {noise['own_sd']:.4f}, shared sd {noise['shared_sd']:.4f}, speed cv "
                 f"{noise['speed_cv']:.4f} ({distinct} distinct picks)")
    lines += [f"simulated ({r['scenario']}): P(worse by > delta) {r['worse']:.3f}, P(missed faster equivalent) "
              f"{r['missed']:.3f}" for r in simulated]
    lines += [f"seen ({kind}, {o['arms']} searches, re-trained means as truths): worse {o['worse']:.2f}, "
              f"missed {o['missed']:.2f}" for kind, o in observed.items()]
    return lines


def short(pick: Optional[dict], names: Sequence[str]) -> str:
    if not pick:
        return "-"
    return " ".join(f"{n}={pick[n]}" for n in names if n in pick)
