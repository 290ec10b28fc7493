"""report.md's account of the decision: each estimate with what it rests on, the confirmation table, the pick
against the seed's default on paired runs, the smallest difference this search could detect, and why the best
search run is a noisy maximum. Frames in, text out; the rule is select.py's, the arithmetic decide.py's. No Ray."""
from __future__ import annotations

import math
from typing import Optional

import pandas as pd

from asl_ray import stats
from asl_ray.search import decide
from asl_ray.search.select import CONFIRMATION_RUNS, Selection, binomial_se, confirmation_matrix, paired_against

ACCURACY_LEGEND = ("acc_mean: validation accuracy: one search run (acc_source 'search run', its binomial SE, a floor: "
                   "the run-to-run spread is not known from one run) or, for a finalist, the mean of its confirmation "
                   "runs alone (acc_source 'confirmation runs', SE their sd / sqrt(runs)); acc_runs: runs behind it.")
SAME_NOISE_CONFIDENCE = 0.95
"""Two-sided confidence of the pick-vs-default intervals."""


def accuracy_text(row: pd.Series) -> str:
    """'0.512 +- 0.025 (one search run, binomial SE)' or '0.498 +- 0.021 (mean of 3 confirmation runs)'."""
    if row.get("acc_source") == CONFIRMATION_RUNS:
        se = f"{row['acc_se']:.4f}" if pd.notna(row["acc_se"]) else "unknown"
        return f"{row['acc_mean']:.4f} +- {se} (mean of {int(row['acc_runs'])} confirmation runs, SE from their spread)"
    se = f"{row['acc_se']:.4f}" if pd.notna(row.get("acc_se")) else "unknown"
    return f"{row['acc_mean']:.4f} +- {se} (one search run, binomial SE; unconfirmed)"


def speed_text(row: pd.Series) -> str:
    if row.get("acc_source") == CONFIRMATION_RUNS:
        return f"{row['samples_per_s']:.1f} samples/s (geometric mean of its confirmation runs' medians)"
    iqr = row.get("samples_per_s_iqr", float("nan"))
    spread = f", epochs' IQR {iqr:.1f}" if pd.notna(iqr) else ""
    return f"{row['samples_per_s']:.1f} samples/s (median over its epochs{spread})"


def interval(low: float, high: float, fmt: str) -> str:
    def show(v: float) -> str:
        return format(v, fmt) if pd.notna(v) and math.isfinite(v) else "?"
    return f"[{show(low)}, {show(high)}]"


def default_comparison(best: pd.Series, reference: Optional[pd.Series], confirmations: Optional[pd.DataFrame],
                       selection: Selection) -> str:
    """The pick against the seed's default: on their shared confirmation pairs (paired, t intervals) when both
    were confirmed, else their single search runs; says in a plain sentence whether the noise tells them apart."""
    if reference is None:
        return ("The seed's default config is not among this search's feasible trials (no baseline of the space, or "
                "it did not run): no comparison.")
    if reference["trial_id"] == best["trial_id"]:
        return "The chosen config is the seed's default config."
    head = (f"Against the seed's default config (trial {reference['trial_id']}, baseline "
            f"{reference.get('baseline') or '?'}, plan {reference.get('plan') or '?'})")
    both = (confirmations is not None and len(confirmations)
            and {best["trial_id"], reference["trial_id"]} <= set(confirmations["finalist"]))
    if not both:
        ratio = best["samples_per_s"] / reference["samples_per_s"] if reference["samples_per_s"] else float("nan")
        return (f"{head}: one search run each, unconfirmed: accuracy {best['acc_mean']:.4f} vs "
                f"{reference['val_acc']:.4f}, samples/s x{ratio:.2f}. One run cannot tell a difference from noise.")
    alpha = (1 - SAME_NOISE_CONFIDENCE) / 2
    c = paired_against(confirmations, best["trial_id"], reference["trial_id"], alpha)
    accuracy_apart = pd.notna(c["diff_low"]) and (c["diff_low"] > 0 or c["diff_high"] < 0)
    speed_apart = pd.notna(c["ratio_low"]) and (c["ratio_low"] > 1 or c["ratio_high"] < 1)
    within = pd.notna(c["diff_low"]) and -selection.delta < c["diff_low"] and c["diff_high"] < selection.delta
    figures = (f"on the same {c['pairs']} (fold, seed) pairs, accuracy difference {c['diff']:+.4f} "
               f"({SAME_NOISE_CONFIDENCE:.0%} CI {interval(c['diff_low'], c['diff_high'], '+.4f')}), samples/s "
               f"x{c['ratio']:.2f} ({SAME_NOISE_CONFIDENCE:.0%} CI {interval(c['ratio_low'], c['ratio_high'], '.2f')})")
    if not accuracy_apart and not speed_apart:
        verdict = "The chosen config cannot be told apart from the seed's default at this noise"
    else:
        told = [w for w, apart in (("accuracy", accuracy_apart), ("speed", speed_apart)) if apart]
        verdict = f"The chosen config and the seed's default can be told apart at this noise by {' and '.join(told)}"
    equivalence = (f"; their accuracies are equivalent within delta {selection.delta:g}" if within else
                   f"; equivalence within delta {selection.delta:g} is not shown")
    return f"{head}: {figures}. {verdict}{equivalence}."


def confirmation_table(table: pd.DataFrame, confirmations: pd.DataFrame) -> pd.DataFrame:
    """Per confirmed finalist (select.confirmed's rows): its search run, each pair's accuracy, the confirmed mean,
    the paired difference to the reference with its bound, the speed against the pick, and the rule's verdicts."""
    ids = list(table["trial_id"])
    acc = confirmation_matrix(confirmations, ids, "val_acc")
    rows = []
    for (_, r), (_, runs) in zip(table.iterrows(), acc.iterrows()):
        rows.append({
            "finalist": r["trial_id"], "baseline": r.get("baseline") or "",
            "search_run": r["search_val_acc"],
            "runs (" + " ".join(acc.columns) + ")": " ".join("-" if pd.isna(v) else f"{v:.3f}" for v in runs),
            "mean +- SE": f"{r['acc_mean']:.4f} +- {r['acc_se']:.4f}" if pd.notna(r["acc_se"]) else
                          (f"{r['acc_mean']:.4f} +- ?" if pd.notna(r["acc_mean"]) else "-"),
            "ref - it [upper]": ("reference" if r["reference"] else
                                 f"{r['diff_vs_reference']:+.4f} [{r['diff_upper']:+.3f}]"
                                 if pd.notna(r["diff_vs_reference"]) else "-"),
            "samples/s": r["samples_per_s"],
            "pick / it [CI]": ("pick" if r["picked"] else
                               f"x{r['speed_ratio']:.2f} {interval(r['speed_ratio_low'], r['speed_ratio_high'], '.2f')}"
                               if pd.notna(r["speed_ratio"]) else "-"),
            "equivalent": "yes" if r["equivalent"] else "no", "tied": "yes" if r["tied"] else "no",
            "failed": int(r["runs_failed"]), "picked": "<-" if r["picked"] else ""})
    return pd.DataFrame(rows)


def detectable_text(table: Optional[pd.DataFrame], confirmations: Optional[pd.DataFrame], screened: pd.DataFrame,
                    selection: Selection) -> str:
    """The smallest true accuracy difference this search's stages detect with 80% power at its own noise."""
    parts = []
    n = pd.to_numeric(screened.get("val_samples", pd.Series(dtype=float)), errors="coerce").dropna()
    if len(screened) and len(n):
        m = len(screened)
        q = decide.max_adjusted_z(max(m, 2), selection.alpha)
        se = binomial_se(float(screened["acc_mean"].median()), float(n.min()))
        screen = (q + stats.t_quantile(stats.POWER, 10 ** 6)) * math.sqrt(2) * se
        parts.append(f"the screening of single search runs tells a config below the best only by more than about "
                     f"{screen:.3f} (binomial SE {se:.4f} at n={int(n.min())}, the max-adjusted z {q:.2f} for {m} "
                     f"finished configs; the run-to-run spread comes on top)")
    if table is not None and confirmations is not None and len(table):
        ids = list(table["trial_id"])
        acc = confirmation_matrix(confirmations, ids, "val_acc")
        reference = int(table["reference"].to_numpy().argmax()) if table["reference"].any() else 0
        diffs = [stats.paired(acc.iloc[reference], acc.iloc[i]) for i in range(len(ids)) if i != reference]
        diffs = [d for d in diffs if d.n >= 2 and math.isfinite(d.sd)]
        if diffs:
            k = min(d.n for d in diffs)
            sd = math.sqrt(sum(d.sd ** 2 for d in diffs) / len(diffs))
            level = selection.alpha / max(1, len(ids) - 1)
            parts.append(f"the confirmation ({k} paired runs per finalist, paired sd {sd:.4f}) detects a difference "
                         f"of {stats.detectable_difference(sd, k, level):.3f} (the equivalence test at level "
                         f"{level:.3g}); delta is {selection.delta:g}")
        else:
            parts.append("the confirmation has fewer than two paired runs per finalist: its spread is unknown, so no "
                         "finalist can be shown equivalent and the pick is the most accurate confirmed one")
    if not parts:
        return "No finished trial: nothing to detect."
    return ("Smallest true accuracy difference this search could detect (80% power): " + "; ".join(parts) + ". "
            "Its error rates for a design and a noise: `python -m asl_ray.search.decision_sim --space FILE`.")


def noisy_maximum_text(m: int, alpha: float) -> str:
    q = decide.max_adjusted_z(max(m, 2), alpha)
    return (f"The most accurate search run is the largest of {m} noisy figures, so it is biased upwards: it only "
            f"nominates finalists, whose estimates come from their confirmation runs alone. A config is a contender "
            f"while it is less than {q:.2f} SEs of the difference below it (max-adjusted: for {m} truly equal configs "
            f"each is called below with probability {alpha:g}; a plain one-sided z of "
            f"{decide.max_adjusted_z(2, alpha):.2f} would call far more of them below).")
