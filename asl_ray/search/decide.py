"""The decision rule's arithmetic on plain arrays. No pandas, no Ray: `select` applies it to result frames and
`decision_sim` to simulated ones, so what the simulation checks is what the search runs.

Two stages, each with the statistics its data allow:

- **Screening** (search runs: one run per config, only its binomial SE known). Configs not credibly below the
  most accurate one stay contenders. "The best" is the largest of m noisy figures, so comparing each config with
  it at a plain z calls far more than alpha of truly equal configs "below" (40% of 28 at z 1.645). The critical
  value is therefore the one at which, for m truly equal configs with equal SEs, each is called below the maximum
  with probability alpha (`max_adjusted_z`). An unknown SE is never 0: such a config is never called below.
- **Choice** (confirmation runs: every finalist re-trained on the same (fold, seed) pairs). Differences are
  paired per pair (same validation signers, same seed), with t quantiles on k - 1 degrees of freedom. The
  reference is the finalist with the highest mean over its confirmation runs; a finalist is *equivalent* to it
  when the upper confidence bound of (reference - finalist) is within `delta` (one-sided, alpha split over the
  finalists compared: Bonferroni). Among the equivalent finalists speeds count: a finalist is *tied* with the
  fastest when the fastest is not credibly faster (the paired log speed ratio's lower bound is not above 0), and
  the pick is the most accurate of the tied. With one pair the spread is unknown: nothing is shown equivalent or
  faster, and the pick is the reference.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import stats

from asl_ray.stats import Paired, paired

# ---- screening: one run per config ------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def max_adjusted_z(m: int, alpha: float) -> float:
    """q such that for m iid normal figures, P(max - X_i > q x sqrt(2) sd) = alpha for each i: the critical value,
    in SEs of a difference, of "credibly below the maximum of m". q = z(1 - alpha) at m = 2, and grows with m."""
    if m <= 2:
        return float(stats.norm.ppf(1 - alpha))
    x = np.linspace(-9.0, 9.0, 3601)
    density = stats.norm.pdf(x)

    def rate(t: float) -> float:  # P(some other X_j > X_i + t)
        return 1.0 - float(np.trapezoid(density * stats.norm.cdf(x + t) ** (m - 1), x))

    low, high = 0.0, 20.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if rate(mid) > alpha else (low, mid)
    return high / math.sqrt(2)


def not_credibly_below_best(mean, se, alpha: float) -> np.ndarray:
    """Per config: not credibly below the most accurate one, at the max-adjusted critical value for their number.
    A NaN SE (unknown) never makes a config credibly below; a NaN mean is never a contender."""
    mean, se = np.asarray(mean, dtype=float), np.asarray(se, dtype=float)
    known = np.isfinite(mean)
    out = np.zeros(len(mean), dtype=bool)
    if not known.any():
        return out
    best = int(np.nanargmax(np.where(known, mean, -np.inf)))
    q = max_adjusted_z(int(known.sum()), alpha)
    tolerance = q * np.sqrt(se[best] ** 2 + se ** 2)  # NaN where either SE is unknown
    below = (mean[best] - mean) > tolerance  # NaN compares False: unknown is never below
    out[known] = ~below[known]
    return out


def finalists(mean, se, speed, count: int, alpha: float, default: Optional[int] = None,
              by_accuracy: bool = False) -> list[int]:
    """Which configs to confirm, as indices, each once: the most accurate (ties: the faster), the seed's default
    (`default`, an index whose mean may be NaN: a config that ran but did not finish), then the contenders fastest
    first (`by_accuracy`: most accurate first), up to `count` in all but never without the first two."""
    mean, se, speed = (np.asarray(v, dtype=float) for v in (mean, se, speed))
    if not np.isfinite(mean).any():
        return [] if default is None else [default]
    speed_key = np.where(np.isfinite(speed), speed, -np.inf)
    mean_key = np.where(np.isfinite(mean), mean, -np.inf)
    best = int(np.lexsort((-speed_key, -mean_key))[0])
    required = list(dict.fromkeys([best] + ([default] if default is not None else [])))
    contenders = np.flatnonzero(not_credibly_below_best(mean, se, alpha))
    fast, accurate = -speed_key[contenders], -mean_key[contenders]  # np.lexsort sorts by its last key first
    ordered = contenders[np.lexsort((fast, accurate) if by_accuracy else (accurate, fast))]
    return list(dict.fromkeys([*required, *map(int, ordered)]))[:max(count, len(required))]


# ---- the choice among confirmed finalists ----------------------------------------------------------------------

@dataclass(frozen=True)
class Choice:
    """What the rule decided about F confirmed finalists (indices into the rows it was given)."""
    pick: int
    """The recommended finalist."""
    reference: int
    """The finalist with the highest mean accuracy over its confirmation runs."""
    equivalent: tuple[bool, ...]
    """Per finalist: within delta of the reference on accuracy (upper bound of reference - it <= delta)."""
    tied: tuple[bool, ...]
    """Per finalist: equivalent, and the fastest equivalent one is not credibly faster."""
    accuracy: tuple[Paired, ...]
    """Per finalist: the paired difference reference - it."""
    speed: tuple[Paired, ...]
    """Per finalist: the paired log speed ratio log(pick) - log(it)."""


def choose(acc, log_speed, delta: float, alpha: float, competing=None) -> Choice:
    """The pick among F finalists from their confirmation runs: `acc` and `log_speed` are (F, K) arrays, one
    column per (fold, seed) pair, NaN where a run is missing. `competing` (F bools, default all): finalists whose
    runs all finished; the others are never chosen (an out-of-memory or diverged run is infeasible)."""
    acc, log_speed = np.atleast_2d(np.asarray(acc, dtype=float)), np.atleast_2d(np.asarray(log_speed, dtype=float))
    count = acc.shape[0]
    competing = np.ones(count, dtype=bool) if competing is None else np.asarray(competing, dtype=bool)
    if not competing.any():
        raise ValueError("choose: no competing finalist")
    means = np.where(competing, _row_means(acc), -np.inf)
    reference = int(np.argmax(means))
    level = alpha / max(1, int(competing.sum()) - 1)  # Bonferroni over the finalists compared with the reference
    accuracy = tuple(paired(acc[reference], acc[f]) for f in range(count))
    equivalent = np.array([competing[f] and (f == reference or accuracy[f].upper(level) <= delta)
                           for f in range(count)])
    speeds = np.where(equivalent, _row_means(log_speed), -np.inf)
    speeds = np.where(np.isnan(speeds), -np.inf, speeds)
    fastest = int(np.argmax(speeds)) if np.isfinite(speeds).any() else reference
    tied = np.array([equivalent[f] and (f == fastest or not paired(log_speed[fastest], log_speed[f]).lower(alpha) > 0)
                     for f in range(count)])
    order = sorted(np.flatnonzero(tied), key=lambda f: (-means[f], -speeds[f]))
    pick = int(order[0])
    return Choice(pick=pick, reference=reference, equivalent=tuple(bool(v) for v in equivalent),
                  tied=tuple(bool(v) for v in tied), accuracy=accuracy,
                  speed=tuple(paired(log_speed[pick], log_speed[f]) for f in range(count)))


def _row_means(m: np.ndarray) -> np.ndarray:
    """Each row's mean over its finite entries; NaN for a row without any (no warning)."""
    finite = np.isfinite(m)
    counts = finite.sum(axis=1)
    sums = np.where(finite, m, 0.0).sum(axis=1)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
