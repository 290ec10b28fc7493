"""Which config the search recommends, each estimate with its noise. No Ray here; the arithmetic is decide.py's.

Search runs choose the finalists; only the finalists' confirmation runs estimate them.

- **Search runs** are one run each, selected for being high (the best of many is a noisy maximum), so they only
  nominate. Each carries one run's binomial SE, sqrt(p(1-p)/n) with n the validation size (`val_samples`): a
  floor, since the run-to-run spread (init, data order, augmentation) comes on top and is not known yet. A config
  is a *contender* while it is not credibly below the most accurate, at the max-adjusted critical value for the
  number of finished configs (decide.not_credibly_below_best). Finalists, in this order: the most accurate
  search run, the seed's default config (so "indistinguishable from the default" is always an answer), then the
  fastest contenders, up to `count` (never fewer than those two).
- **Confirmation runs** re-train every finalist on the same (fold, seed) pairs: fold decides the held-out
  signers (`split_seed` deals them, never `seed`), the seed the init, order and augmentation, so the runs of two
  finalists pair up. A finalist's estimate is the mean over its confirmation runs alone (its search run never
  enters it), SE their sd / sqrt(k); its speed the geometric mean of its runs' median samples/s. The choice is
  among the confirmed finalists only (decide.choose): the reference is the most accurate by confirmed mean, the
  equivalent finalists those whose paired difference to it is credibly within `delta`, and of those, the most
  accurate among the ones the fastest is not credibly faster than.

Without confirmation runs (`--confirm 0`) the pick is the fastest contender by search runs: unconfirmed, and the
report says so. Only finished, feasible trials (status ok: every epoch run, within memory) compete.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd

from asl_ray.config import is_finite_number, ConfigError
from asl_ray import stats
from asl_ray.search import decide
from asl_ray.outcome import Status

SELECT_RULES = ("noise-aware", "most-accurate", "fastest")
DEFAULT_BASELINE = "default"
"""The `baseline` name of the seed's own TrainConfig (the space's `baselines: [default]`)."""
SEARCH_RUN, CONFIRMATION_RUNS = "search run", "confirmation runs"
"""acc_source: one search run with its binomial SE, or the mean of a finalist's confirmation runs."""
PAIR_KEYS = ("fold", "seed")


def seed_baseline(baseline_names) -> Optional[str]:
    """Which baseline stands for the seed's default config: "default" if the space lists it, else its first
    baseline (a space whose params exclude the seed's own values pins the seed's plan in a mapping)."""
    names = [n for n in baseline_names if n]
    return DEFAULT_BASELINE if DEFAULT_BASELINE in names else (names[0] if names else None)


@dataclass(frozen=True)
class Selection:
    rule: str = "noise-aware"
    """How the recommended config is chosen (one of SELECT_RULES): noise-aware weighs accuracy and speed with
    their noise; most-accurate and fastest take the highest estimate of one."""
    alpha: float = 0.05
    """One-sided error rate of every test: the screening's max-adjusted z, the equivalence test (split over the
    finalists compared), the speed test."""
    delta: float = 0.02
    """Equivalence margin (accuracy, absolute): a finalist credibly within it of the most accurate one counts as
    equally accurate, and then speed decides."""

    def __post_init__(self) -> None:
        problems = []
        if self.rule not in SELECT_RULES:
            problems.append(f"--select: must be one of {', '.join(SELECT_RULES)}, got {self.rule!r}")
        if not is_finite_number(self.alpha) or not 0 < self.alpha < 0.5:
            problems.append(f"--alpha: must be a finite number in (0, 0.5), got {self.alpha!r}")
        if not is_finite_number(self.delta) or not 0 <= self.delta < 1:
            problems.append(f"--delta: must be a finite number in [0, 1), got {self.delta!r}")
        if problems:
            raise ConfigError("; ".join(problems))

    def describe(self) -> str:
        if self.rule == "noise-aware":
            return (f"noise-aware: among the confirmed finalists, those whose accuracy is credibly within "
                    f"delta {self.delta:g} of the most accurate one (paired differences over the same (fold, seed) "
                    f"runs, one-sided t bound at alpha {self.alpha:g} split over the finalists), then the most "
                    f"accurate of those the fastest is not credibly faster than (paired log speed ratio); without "
                    f"confirmation runs, the fastest search run not credibly below the most accurate one "
                    f"(max-adjusted z at alpha {self.alpha:g}), unconfirmed")
        return {"most-accurate": "most-accurate: highest validation accuracy (confirmed mean where confirmed)",
                "fastest": "fastest: highest samples/s (confirmed where confirmed)"}[self.rule]



def finished(df: pd.DataFrame) -> pd.Series:
    """Trials that ran every epoch and fit: the only ones whose accuracy compares fairly."""
    if "status" not in df:
        return pd.Series(False, index=df.index)
    return (df["status"] == Status.OK) & df["feasible"].astype(bool)


def binomial_se(p, n):
    """sqrt(p(1-p)/n) elementwise (scalars or Series); NaN where n is unknown or not positive."""
    if isinstance(n, pd.Series):
        n = pd.to_numeric(n, errors="coerce")
        return (p * (1 - p) / n.where(n > 0)) ** 0.5
    if n is None or not pd.notna(n) or not n > 0:
        return float("nan")
    return math.sqrt(p * (1 - p) / n)


# ---- search runs: nominate ------------------------------------------------------------------------------------

def screened(trials: pd.DataFrame, alpha: float = Selection.alpha) -> pd.DataFrame:
    """The finished trials with their one-run estimates (acc_mean = val_acc, acc_se its binomial SE, NaN where the
    validation size is unknown) and `contender`: not credibly below the most accurate at the max-adjusted z."""
    ok = trials[finished(trials)].copy()
    n = ok["val_samples"] if "val_samples" in ok else pd.Series(float("nan"), index=ok.index)
    ok["acc_mean"] = ok["val_acc"].astype(float)
    ok["acc_se"] = binomial_se(ok["acc_mean"], n).astype(float)
    ok["acc_runs"] = 1
    ok["acc_source"] = SEARCH_RUN
    ok["contender"] = decide.not_credibly_below_best(ok["acc_mean"], ok["acc_se"], alpha)
    return ok


def _most_accurate(ok: pd.DataFrame) -> pd.Series:
    return ok.sort_values(["acc_mean", "samples_per_s"], ascending=False, na_position="last").iloc[0]


def _fastest_first(ok: pd.DataFrame) -> pd.DataFrame:
    return ok.sort_values(["samples_per_s", "acc_mean"], ascending=False, na_position="last")


def finalists(trials: pd.DataFrame, selection: Selection, count: int, reference: Optional[str] = None) -> list[str]:
    """Trial ids to re-train on the confirmation pairs, each once: the most accurate finished trial, the seed's
    default config (baseline `reference`; re-trained in full when ASHA stopped it, not when it was infeasible),
    then the contenders fastest first (most accurate first under rule most-accurate), up to `count` in all but
    never without the first two. `reference` None: `seed_baseline` of the baselines in row order (Optuna runs
    them first, in the space's order); pass `seed_baseline(space.baseline_names)` to be exact."""
    ok = screened(trials, selection.alpha)
    if ok.empty:
        return []
    if "baseline" in trials:
        reference = reference or seed_baseline(dict.fromkeys(trials["baseline"].fillna("")))
        default = trials[(trials["baseline"] == reference) & trials["feasible"].astype(bool)][:1]
        if len(default) and default.index[0] not in ok.index:  # stopped early: re-trained, never a contender
            ok = pd.concat([ok, default.assign(acc_mean=np.nan, acc_se=np.nan, contender=False)])
        default_at = ok.index.get_loc(default.index[0]) if len(default) else None
    else:
        default_at = None
    order = decide.finalists(ok["acc_mean"], ok["acc_se"], ok["samples_per_s"], count, selection.alpha,
                             default=default_at, by_accuracy=selection.rule == "most-accurate")
    return [ok["trial_id"].iloc[i] for i in order]


# ---- confirmation runs: estimate and choose -----------------------------------------------------------------

CONFIRMED_COLUMNS = ("acc_mean", "acc_se", "acc_runs", "acc_source", "samples_per_s", "search_val_acc",
                     "search_samples_per_s", "runs_failed", "competing", "reference", "diff_vs_reference",
                     "diff_upper", "equivalent", "speed_ratio", "speed_ratio_low", "speed_ratio_high", "tied",
                     "picked")
"""What `confirmed` adds to a finalist's trial row (samples_per_s and acc_* replaced by the confirmed ones)."""


def pair_label(fold, seed) -> str:
    return f"f{int(fold)}/s{int(seed)}"


def confirmation_matrix(confirmations: pd.DataFrame, finalist_ids: list[str], column: str) -> pd.DataFrame:
    """finalist x (fold, seed) pair: `column` of the ok runs, NaN where a run is missing or did not finish."""
    runs = confirmations.assign(pair=[pair_label(f, s) for f, s in zip(_folds(confirmations), confirmations["seed"])])
    done = runs[runs["status"] == Status.OK]
    pairs = list(dict.fromkeys(runs["pair"]))
    table = done.pivot_table(index="finalist", columns="pair", values=column, aggfunc="first")
    return table.reindex(index=finalist_ids, columns=pairs).astype(float)


def _folds(confirmations: pd.DataFrame) -> pd.Series:
    """A confirm.parquet written before folds were recorded ran fold 0 only."""
    return confirmations["fold"].fillna(0) if "fold" in confirmations else pd.Series(0, index=confirmations.index)


def confirmed(trials: pd.DataFrame, confirmations: pd.DataFrame, selection: Selection) -> pd.DataFrame:
    """One row per finalist, in the order they were confirmed: its trial row with its confirmed estimates
    (CONFIRMED_COLUMNS) and what the rule decided. A finalist competes only when every one of its runs finished."""
    ids = [f for f in dict.fromkeys(confirmations["finalist"]) if f in set(trials["trial_id"])]
    rows = trials.set_index("trial_id").loc[ids].reset_index()
    acc = confirmation_matrix(confirmations, ids, "val_acc")
    speed = confirmation_matrix(confirmations, ids, "samples_per_s")
    log_speed = np.log(speed.where(speed > 0))
    failed = confirmations[confirmations["status"] != Status.OK].groupby("finalist").size()
    runs = acc.notna().sum(axis=1)
    competing = ((runs == acc.shape[1]) & (runs > 0) & rows["feasible"].astype(bool).to_numpy()).to_numpy()
    out = rows.assign(search_val_acc=rows["val_acc"], search_samples_per_s=rows["samples_per_s"])
    out["acc_mean"] = acc.mean(axis=1).to_numpy()
    out["acc_se"] = (acc.std(axis=1, ddof=1) / np.sqrt(runs.where(runs > 1))).to_numpy()
    out["acc_runs"] = runs.to_numpy()
    out["acc_source"] = CONFIRMATION_RUNS
    out["samples_per_s"] = np.exp(log_speed.mean(axis=1)).to_numpy()
    out["runs_failed"] = [int(failed.get(f, 0)) for f in ids]
    out["competing"] = competing
    out["reference"] = out["equivalent"] = out["tied"] = out["picked"] = False
    for column in ("diff_vs_reference", "diff_upper", "speed_ratio", "speed_ratio_low", "speed_ratio_high"):
        out[column] = np.nan
    if not competing.any():
        return out
    choice = decide.choose(acc.to_numpy(), log_speed.to_numpy(), selection.delta, selection.alpha, competing)
    pick = {"noise-aware": choice.pick, "most-accurate": choice.reference,
            "fastest": int(np.argmax(np.where(competing, out["samples_per_s"].fillna(-np.inf), -np.inf)))
            }[selection.rule]
    level = selection.alpha / max(1, int(competing.sum()) - 1)  # the level choose tests equivalence at
    index = np.arange(len(ids))
    out["reference"] = index == choice.reference
    out["diff_vs_reference"] = [d.mean for d in choice.accuracy]
    out["diff_upper"] = [d.upper(level) for d in choice.accuracy]
    out["equivalent"] = choice.equivalent
    out["tied"] = choice.tied
    out["picked"] = index == pick
    ratios = [_ratio(stats.paired(log_speed.iloc[pick], log_speed.iloc[f]), selection.alpha) for f in index]
    out["speed_ratio"], out["speed_ratio_low"], out["speed_ratio_high"] = map(list, zip(*ratios))
    return out


def select_best(trials: pd.DataFrame, selection: Selection,
                confirmations: Optional[pd.DataFrame] = None) -> Optional[pd.Series]:
    """The recommended trial's row with its estimates (acc_mean, acc_se, acc_runs, acc_source, samples_per_s):
    a confirmed finalist when there are confirmation runs, else the screening's pick; None if nothing finished."""
    if confirmations is not None and len(confirmations):
        table = confirmed(trials, confirmations, selection)
        picked = table[table["picked"]]
        return picked.iloc[0] if len(picked) else None
    ok = screened(trials, selection.alpha)
    if ok.empty:
        return None
    if selection.rule == "most-accurate":
        return _most_accurate(ok)
    if selection.rule == "fastest":
        return _fastest_first(ok).iloc[0]
    return _fastest_first(ok[ok["contender"]]).iloc[0]


def paired_against(confirmations: pd.DataFrame, a: str, b: str, alpha: float) -> dict[str, float]:
    """a vs b on their shared confirmation pairs: accuracy difference a - b with its two-sided (1 - 2 alpha) t
    interval, and the speed ratio a / b with its interval; NaN bounds below two pairs."""
    acc = confirmation_matrix(confirmations, [a, b], "val_acc")
    speed = np.log(confirmation_matrix(confirmations, [a, b], "samples_per_s"))
    d = stats.paired(acc.iloc[0], acc.iloc[1])
    ratio, ratio_low, ratio_high = _ratio(stats.paired(speed.iloc[0], speed.iloc[1]), 2 * alpha)
    return {"pairs": d.n, "diff": d.mean, "diff_low": _finite(d.lower(alpha)), "diff_high": _finite(d.upper(alpha)),
            "diff_sd": d.sd, "ratio": ratio, "ratio_low": ratio_low, "ratio_high": ratio_high}


def _finite(v: float) -> float:
    return v if math.isfinite(v) else math.nan


def _ratio(log_ratio: stats.Paired, alpha: float) -> tuple[float, float, float]:
    """A paired log speed ratio as (ratio, two-sided (1 - alpha) interval); NaN bounds below two pairs."""
    if not log_ratio.n:
        return math.nan, math.nan, math.nan
    low, high = log_ratio.lower(alpha / 2), log_ratio.upper(alpha / 2)
    return (math.exp(log_ratio.mean), math.exp(low) if math.isfinite(low) else math.nan,
            math.exp(high) if math.isfinite(high) else math.nan)
