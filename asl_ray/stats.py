"""A measurement with a spread: paired differences over shared runs, and Student's t quantiles. Plain numbers and
arrays; used by the plan search's timing (asl_ray/plan/), the decision rule (asl_ray/search/decide.py) and the
benches."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

POWER = 0.8
"""The power at which `detectable_difference` states the smallest difference a design detects."""


def t_quantile(p: float, dof: int) -> float:
    """The p quantile of Student's t with `dof` degrees of freedom; +inf (p > 0.5) without any."""
    if dof < 1:
        return math.inf if p > 0.5 else -math.inf
    # Imported here, not at the top: scipy.stats costs ~0.6 s, paid again by every Ray trial's processes.
    from scipy import stats
    return float(stats.t.ppf(p, dof))


@dataclass(frozen=True)
class Paired:
    """Mean, sd and count of the pairwise differences a - b over the pairs where both are finite."""
    mean: float
    sd: float
    n: int

    @property
    def se(self) -> float:
        """sd / sqrt(n); NaN below two pairs (no spread to speak of)."""
        return self.sd / math.sqrt(self.n) if self.n >= 2 else math.nan

    def half_width(self, alpha: float) -> float:
        """One-sided (1 - alpha) half-width: t(1 - alpha, n - 1) x SE; +inf below two pairs."""
        return t_quantile(1 - alpha, self.n - 1) * self.se if self.n >= 2 else math.inf

    def upper(self, alpha: float) -> float:
        return self.mean + self.half_width(alpha)

    def lower(self, alpha: float) -> float:
        return self.mean - self.half_width(alpha)


def paired(a, b) -> Paired:
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    d = d[np.isfinite(d)]
    if not len(d):
        return Paired(math.nan, math.nan, 0)
    return Paired(float(d.mean()), float(d.std(ddof=1)) if len(d) > 1 else math.nan, len(d))


def detectable_difference(sd: float, n: int, alpha: float, power: float = POWER) -> float:
    """The smallest true paired difference a one-sided level-alpha test on n pairs with this sd detects with
    `power`: (t(1 - alpha) + t(power)) x sd / sqrt(n), t on n - 1 dof; +inf below two pairs or without an sd."""
    if n < 2 or not math.isfinite(sd):
        return math.inf
    return (t_quantile(1 - alpha, n - 1) + t_quantile(power, n - 1)) * sd / math.sqrt(n)
