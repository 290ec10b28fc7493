"""Which finished config the search recommends, with every accuracy carrying its noise. No Ray here.

Each validation accuracy is an estimate. One run's standard error is binomial, sqrt(p(1-p)/n), with n the
validation size (`val_samples`). Where the run-to-run spread was measured (the confirmation stage: a
finalist's own search run plus its K fresh-seed runs), a finalist's accuracy is the mean of its k runs
and its SE is s / sqrt(k), with s = max(pooled run-to-run sd over every confirmed finalist, the binomial
SE of one run at that mean); every unconfirmed single run's SE becomes max(binomial, pooled sd) too
(`acc_source` says which of the two it is). Every config is scored on the same held-out signers, so what
separates two configs is the run-to-run spread (init, data order, augmentation), which the binomial
figure stands in for until seeds measure it; the binomial floor keeps a spread measured from a few runs
from looking smaller than one run's noise.

The default rule, "noise-aware": the best is the highest accuracy (mean); a config is *credibly below the
best* when (best.mean - x.mean) > z * sqrt(best.se^2 + x.se^2), z one-sided (default 1.645: 95%); of the
configs not credibly below the best, the fastest (training samples/s with its chosen plan) is picked.
Only finished, feasible trials (status ok: every epoch run, within memory) compete.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import pandas as pd

from asl_ray.config import ConfigError

SELECT_RULES = ("noise-aware", "most-accurate", "fastest", "fastest-within-margin")
ESTIMATE_COLUMNS = ("acc_mean", "acc_se", "acc_runs", "acc_source")
DEFAULT_BASELINE = "default"
"""The `baseline` name of the seed's own TrainConfig (the space's `baselines: [default]`)."""


def seed_baseline(baseline_names) -> Optional[str]:
    """Which baseline stands for the seed's default config: "default" if the space lists it, else its first
    baseline (a space whose params exclude the seed's own values pins the seed's plan in a mapping)."""
    names = [n for n in baseline_names if n]
    return DEFAULT_BASELINE if DEFAULT_BASELINE in names else (names[0] if names else None)


@dataclass(frozen=True)
class Selection:
    rule: str = "noise-aware"
    """How the recommended config is chosen among finished, feasible trials (one of SELECT_RULES)."""
    z: float = 1.645
    """noise-aware: one-sided z of the 'credibly below the best' test (1.645: 95%)."""
    margin: float = 0.01
    """fastest-within-margin: accuracy (absolute) a config may give up against the most accurate."""

    def __post_init__(self) -> None:
        problems = []
        if self.rule not in SELECT_RULES:
            problems.append(f"--select: must be one of {', '.join(SELECT_RULES)}, got {self.rule!r}")
        if not _finite_number(self.z) or self.z <= 0:
            problems.append(f"--z: must be a finite number > 0, got {self.z!r}")
        if not _finite_number(self.margin) or not 0 <= self.margin < 1:
            problems.append(f"--margin: must be a finite number in [0, 1), got {self.margin!r}")
        if problems:
            raise ConfigError("; ".join(problems))

    def describe(self) -> str:
        if self.rule == "noise-aware":
            return (f"noise-aware: the fastest config not credibly below the most accurate one, where x is "
                    f"credibly below the best when best.mean - x.mean > {self.z:g} x sqrt(best.se^2 + x.se^2) "
                    f"(one-sided z {self.z:g})")
        if self.rule == "fastest-within-margin":
            return f"fastest-within-margin: highest samples/s within {self.margin:.3f} accuracy of the best"
        return {"most-accurate": "most-accurate: highest validation accuracy",
                "fastest": "fastest: highest samples/s"}[self.rule]


def _finite_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def finished(df: pd.DataFrame) -> pd.Series:
    """Trials that ran every epoch and fit: the only ones whose accuracy compares fairly."""
    if "status" not in df:
        return pd.Series(False, index=df.index)
    return (df["status"] == "ok") & df["feasible"].astype(bool)


def binomial_se(p, n):
    """sqrt(p(1-p)/n) elementwise (scalars or Series); NaN where n is unknown or not positive."""
    if isinstance(n, pd.Series):
        n = pd.to_numeric(n, errors="coerce")
        return (p * (1 - p) / n.where(n > 0)) ** 0.5
    if n is None or not pd.notna(n) or not n > 0:
        return float("nan")
    return math.sqrt(p * (1 - p) / n)


def pooled_sd(runs: dict[str, list[float]]) -> float:
    """Run-to-run sd pooled over groups of repeated runs: sqrt(sum (k-1) s^2 / sum (k-1)); NaN without
    any group of two runs or more."""
    dof = sum(len(v) - 1 for v in runs.values() if len(v) > 1)
    if not dof:
        return float("nan")
    ss = sum(pd.Series(v).var(ddof=1) * (len(v) - 1) for v in runs.values() if len(v) > 1)
    return math.sqrt(ss / dof)


def accuracy_estimates(trials: pd.DataFrame, confirmations: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """acc_mean, acc_se, acc_runs, acc_source for each finished trial (indexed like those rows).
    `confirmations`: rows of confirm.parquet (finalist = the trial id a run re-trains); runs not ok are
    left out. acc_source: "seeds" where the SE is the measured run-to-run spread, "binomial" where it
    is one run's binomial SE (the larger of the two counts)."""
    ok = trials[finished(trials)]
    n = ok["val_samples"] if "val_samples" in ok else pd.Series(float("nan"), index=ok.index)
    runs = {tid: [acc] for tid, acc in zip(ok["trial_id"], ok["val_acc"])}
    if confirmations is not None and len(confirmations):
        done = confirmations[(confirmations["status"] == "ok") & confirmations["finalist"].isin(runs)]
        for finalist, acc in zip(done["finalist"], done["val_acc"]):
            runs[finalist].append(float(acc))
    spread = pooled_sd(runs)
    out = pd.DataFrame(index=ok.index, columns=list(ESTIMATE_COLUMNS))
    for i, tid, size in zip(ok.index, ok["trial_id"], n):
        values = runs[tid]
        mean = sum(values) / len(values)
        one_run = binomial_se(mean, size)
        seeds_win = not math.isnan(spread) and not one_run > spread  # an unknown n leaves the spread
        s = spread if seeds_win else one_run
        out.loc[i] = (mean, s / math.sqrt(len(values)), len(values), "seeds" if seeds_win else "binomial")
    return out.astype({"acc_mean": float, "acc_se": float, "acc_runs": int, "acc_source": str})


def scored(trials: pd.DataFrame, confirmations: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """The finished trials with their accuracy estimates as extra columns."""
    ok = trials[finished(trials)].drop(columns=[c for c in ESTIMATE_COLUMNS if c in trials])
    return ok.join(accuracy_estimates(trials, confirmations))


def credibly_below(best: pd.Series, others: pd.DataFrame | pd.Series, z: float):
    """(best.mean - x.mean) > z * sqrt(best.se^2 + x.se^2); an unknown SE counts as 0."""
    se2 = others["acc_se"] ** 2
    se2 = se2.fillna(0.0) if isinstance(se2, pd.Series) else (se2 if pd.notna(se2) else 0.0)
    best_se2 = best["acc_se"] ** 2 if pd.notna(best["acc_se"]) else 0.0
    tolerance = z * (best_se2 + se2) ** 0.5
    return (best["acc_mean"] - others["acc_mean"]) > tolerance


def _most_accurate(ok: pd.DataFrame) -> pd.Series:
    return ok.sort_values(["acc_mean", "samples_per_s"], ascending=False, na_position="last").iloc[0]


def _fastest_first(ok: pd.DataFrame) -> pd.DataFrame:
    return ok.sort_values(["samples_per_s", "acc_mean"], ascending=False, na_position="last")


def contenders(ok: pd.DataFrame, z: float) -> pd.DataFrame:
    """Scored finished trials not credibly below the most accurate, fastest first."""
    best = _most_accurate(ok)
    return _fastest_first(ok[~credibly_below(best, ok, z)])


def select_best(trials: pd.DataFrame, selection: Selection,
                confirmations: Optional[pd.DataFrame] = None) -> Optional[pd.Series]:
    """The recommended trial's row, with acc_mean/acc_se/acc_runs/acc_source; None if none finished."""
    ok = scored(trials, confirmations)
    if ok.empty:
        return None
    if selection.rule == "most-accurate":
        return _most_accurate(ok)
    if selection.rule == "fastest":
        return _fastest_first(ok).iloc[0]
    if selection.rule == "fastest-within-margin":
        return _fastest_first(ok[ok["acc_mean"] >= ok["acc_mean"].max() - selection.margin]).iloc[0]
    return contenders(ok, selection.z).iloc[0]


def finalists(trials: pd.DataFrame, selection: Selection, count: int,
              reference: Optional[str] = None) -> list[str]:
    """Trial ids worth re-training with fresh seeds, at most `count`, each once, in this order: the
    selection's pick (the noise-aware one by default), the most accurate, the seed's default config
    (baseline `reference`) if it finished, then the next fastest configs not credibly below the most
    accurate (at `selection.z`). Configs credibly below the best are never finalists: more seeds would
    not change the pick. Fewer than `count` when fewer qualify; [] when none finished.
    `reference` None: `seed_baseline` of the baselines in row order (Optuna runs them first, in the
    space's order); pass `seed_baseline(space.baseline_names)` to be exact."""
    ok = scored(trials)
    if ok.empty or count < 1:
        return []
    order = [select_best(trials, selection)["trial_id"], _most_accurate(ok)["trial_id"]]
    if "baseline" in ok:
        reference = reference or seed_baseline(dict.fromkeys(trials["baseline"].fillna("")))
        order += list(ok.loc[ok["baseline"] == reference, "trial_id"][:1])
    order += list(contenders(ok, selection.z)["trial_id"])
    return list(dict.fromkeys(order))[:count]


def indistinguishable(a_row: pd.Series, b_row: pd.Series, z: float = 1.96) -> bool:
    """|a.mean - b.mean| <= z * sqrt(a.se^2 + b.se^2) (two-sided; 1.96: 95%). A row without acc_mean /
    acc_se (a raw trial row) is taken as one run: val_acc with its binomial SE."""
    (ma, sa), (mb, sb) = _estimate(a_row), _estimate(b_row)
    se2 = (0.0 if math.isnan(sa) else sa ** 2) + (0.0 if math.isnan(sb) else sb ** 2)
    return abs(ma - mb) <= z * math.sqrt(se2)


def _estimate(row: pd.Series) -> tuple[float, float]:
    if "acc_mean" in row and pd.notna(row["acc_mean"]):
        return float(row["acc_mean"]), float(row["acc_se"])
    return float(row["val_acc"]), float(binomial_se(float(row["val_acc"]), row.get("val_samples", float("nan"))))
