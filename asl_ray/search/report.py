"""The search's tables and text: trial rows as a frame, the Pareto front, and report.md's sections (the
chosen config with its plan and runner-up plans, the decision (decision_report.py), the ASHA rung check, the
infeasible configs). Plain data in, text out; the files are written by `results`. No Ray here."""
from __future__ import annotations

import json
import math
from typing import Optional, Sequence

import pandas as pd

from asl_ray.search import decision_report as decision
from asl_ray.search.select import finished, seed_baseline
from asl_ray.outcome import Status

MEMORY_COLUMNS = ["cuda_max_reserved_mb", "predicted_reserved_mb", "predicted_total_mb", "predicted_fit_mb",
                  "rss_peak_mb"]
"""Like with like, each labelled: measured `max_memory_reserved` (CUDA only, NaN on CPU) beside the
predicted allocator peak (no CUDA context); that peak with the context; the fit figure the verdict
compares with the card; host RSS (never GPU memory)."""
MEMORY_LEGEND = ("cuda_max_reserved_mb: measured torch.cuda.max_memory_reserved (NaN on CPU); "
                 "predicted_reserved_mb: predicted unconstrained allocator peak, no CUDA context; "
                 "predicted_total_mb: that peak with the CUDA context (what nvidia-smi would show); "
                 "predicted_fit_mb: least need under the allocator's free-and-retry + context + margin "
                 "(compared with the card); rss_peak_mb: host process RSS, not GPU memory.")
RUNG_MARGIN_SE = 2.0
"""The rung check counts a trial above chance when it beats chance by more than this many binomial SEs."""


def trials_frame(rows: Sequence[dict]) -> pd.DataFrame:
    df = pd.DataFrame(list(rows))
    for col in ("val_acc", "samples_per_s", *MEMORY_COLUMNS):
        if col not in df:
            df[col] = float("nan")
    df["on_pareto_front"] = pareto_mask(df)
    return df


def pareto_mask(df: pd.DataFrame, accuracy: str = "val_acc") -> pd.Series:
    """Non-dominated finished trials in (accuracy, samples_per_s), both maximised."""
    mask = pd.Series(False, index=df.index)
    ok = df[finished(df)]
    for i, row in ok.iterrows():
        dominated = ((ok[accuracy] >= row[accuracy]) & (ok["samples_per_s"] >= row["samples_per_s"]) &
                     ((ok[accuracy] > row[accuracy]) | (ok["samples_per_s"] > row["samples_per_s"]))).any()
        mask[i] = not dominated
    return mask


def plain(v):
    """A numpy scalar as the Python value (YAML and f-strings want those)."""
    return v.item() if hasattr(v, "item") else v


def shown(v):
    """A value as the report prints it: an int column with a gap (a no_plan row) holds floats like 12.0."""
    v = plain(v)
    return int(v) if isinstance(v, float) and v.is_integer() else v


def text_of(row: pd.Series, key: str, missing: str = "?") -> str:
    """A text column's value; `missing` for an absent, empty or NaN one."""
    v = row.get(key)
    return v if isinstance(v, str) and v else missing


def table_text(df: pd.DataFrame, columns: Sequence[str]) -> str:
    cols = list(dict.fromkeys(c for c in columns if c in df))
    return df[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}") if len(df) else "(none)"


def memory_text(row: pd.Series) -> str:
    """The row's memory figures, each named for what it is (no CUDA figure exists for a CPU run)."""
    measured = row.get("cuda_max_reserved_mb", float("nan"))
    device = (f"measured max_memory_reserved {measured:.0f} MiB" if pd.notna(measured)
              else "no CUDA measurement (not run on a GPU)")
    return (f"{device}, predicted allocator peak {row['predicted_reserved_mb']:.0f} MiB "
            f"(with CUDA context {row['predicted_total_mb']:.0f} MiB; fit figure {row['predicted_fit_mb']:.0f} MiB), "
            f"host RSS {row['rss_peak_mb']:.0f} MiB")


def learning_text(row: pd.Series, param_names: Sequence[str]) -> str:
    return ", ".join(f"{k} {shown(row[k])}" for k in param_names if k in row)


def plan_text(row: pd.Series, plan_names: Sequence[str]) -> str:
    """'plan 12x4 (batch_size 12, gradient_accumulation_steps 4, precision fp16; ran fp32)'."""
    keys = ", ".join(f"{k} {shown(row[k])}" for k in plan_names if k in row and pd.notna(row[k]))
    ran = f"; ran {row['precision_run']}" if text_of(row, "precision_run", "") else ""
    return f"plan {text_of(row, 'plan')} ({keys}{ran})"


def reference_row(ok: pd.DataFrame, baseline_names: Sequence[str]) -> Optional[pd.Series]:
    """The trial of the seed's default config (select.seed_baseline of the space's) among `ok`'s rows, if any."""
    name = seed_baseline(baseline_names)
    if "baseline" not in ok or name is None:
        return None
    match = ok[ok["baseline"] == name]
    return match.iloc[0] if len(match) else None


def default_row(ok: pd.DataFrame, confirmed: Optional[pd.DataFrame], df: pd.DataFrame,
                baseline_names: Sequence[str]) -> Optional[pd.Series]:
    """The seed's default as the pick is compared with it: its confirmed row where it was confirmed (ASHA may have
    stopped its search run), else its finished search run."""
    if confirmed is not None:
        row = reference_row(confirmed, baseline_names)
        if row is not None:
            return row
    return reference_row(ok, baseline_names)


def plan_table(best: pd.Series) -> pd.DataFrame:
    """The chosen plan and the runner-up plans its plan search measured (plan_runner_ups JSON), each samples/s with
    its 95% half-width; a runner-up the chosen plan was tied with (within their noise) says 'tied'."""
    rows = [{"plan": best.get("plan"), "status": "chosen", "samples_per_s": best.get("plan_samples_per_s"),
             "ci_half_width": best.get("plan_samples_per_s_ci"), "peak_reserved_mb": best.get("plan_peak_reserved_mb")}]
    raw, tied = best.get("plan_runner_ups"), best.get("plans_tied")
    others = json.loads(raw) if isinstance(raw, str) and raw.strip() else []
    tied = set(json.loads(tied)) if isinstance(tied, str) and tied.strip() else set()
    rows += [{**r, "status": "tied" if r.get("plan") in tied else r.get("status")} for r in others
             if r.get("plan") != best.get("plan")]
    table = pd.DataFrame(rows, columns=["plan", "status", "samples_per_s", "ci_half_width", "peak_reserved_mb"])
    chosen_speed = pd.to_numeric(table["samples_per_s"], errors="coerce").iloc[0]
    table["vs_chosen"] = pd.to_numeric(table["samples_per_s"], errors="coerce") / chosen_speed
    return table


def plan_search_text(best: pd.Series) -> str:
    counts = ", ".join(f"{what} {shown(best[k])}" for k, what in
                       (("plans_measured", "measured"), ("plans_from_cache", "from the plan cache"),
                        ("plans_rejected", "refused by the VRAM estimate")) if k in best and pd.notna(best[k]))
    seconds = best.get("plan_search_seconds", float("nan"))
    took = f" in {seconds:.1f} s" if pd.notna(seconds) else ""
    return f"Plan search: {counts or 'no figures'}{took}. Measured samples/s of the chosen plan: " \
           f"{best.get('plan_samples_per_s', float('nan')):.1f}; trained at {best['samples_per_s']:.1f}."


def rung_epochs(grace_period: int, reduction_factor: int, epochs: int) -> list[int]:
    """ASHA's rungs below the last epoch: grace_period x reduction_factor^k < epochs."""
    rungs, r = [], grace_period
    while r < epochs:
        rungs.append(r)
        r *= reduction_factor
    return rungs


def curve(row: pd.Series) -> list[float]:
    """The trial's val_acc per epoch (its val_acc_curve JSON); [] when it has none."""
    raw = row.get("val_acc_curve")
    return [float(v) for v in json.loads(raw)] if isinstance(raw, str) and raw.strip() else []


def rung_rank_correlation(df: pd.DataFrame, rung: int) -> tuple[float, int]:
    """(Spearman rank correlation between val_acc at epoch `rung` and at the last epoch, trials behind it) over
    the trials that ran every epoch (status ok): does the first cut rank as the end does? NaN below 3 trials."""
    pairs = [(accs[rung - 1], accs[-1]) for _, row in df[df["status"] == Status.OK].iterrows()
             if len(accs := curve(row)) > rung]
    if len(pairs) < 3:
        return float("nan"), len(pairs)
    at_rung, final = (pd.Series(v).rank() for v in zip(*pairs))
    return float(at_rung.corr(final)), len(pairs)


def rung_check_text(df: pd.DataFrame, scheduler: str, budget, num_classes: Optional[int]) -> str:
    """At ASHA's first rung: how many trials had left chance level by more than RUNG_MARGIN_SE binomial SEs (what
    the first cut ranks: signal or noise; SE at chance sqrt(c(1-c)/n), the null of no learning), and how well the
    rung's ranking predicts the last epoch's (Spearman, over the trials that reached both)."""
    if scheduler != "asha":
        return f"No ASHA rungs (scheduler {scheduler}): every launched trial ran its whole budget."
    rungs = rung_epochs(budget.grace_period, budget.reduction_factor, budget.epochs)
    if not rungs:
        return "ASHA has no rung below the last epoch in this budget: nothing stopped early."
    first = rungs[0]
    rho, behind = rung_rank_correlation(df, first)
    ranks = (f" Rank correlation (Spearman) of val_acc at epoch {first} with the last epoch's, over the {behind} "
             f"trials that reached both: " + (f"{rho:+.2f}" + (" (few trials: a rough figure)" if behind < 8 else "")
                                                if pd.notna(rho) else "too few trials to tell") + ".")
    if not num_classes:
        return f"ASHA rungs at epochs {rungs}; the number of classes is unknown, so no chance-level check." + ranks
    chance = 1.0 / num_classes
    reached, above, sizes = 0, 0, set()
    for _, row in df.iterrows():
        accs = curve(row)
        n = row.get("val_samples", float("nan"))
        if len(accs) < first or not pd.notna(n) or n <= 0:
            continue
        reached += 1
        sizes.add(int(n))
        above += accs[first - 1] - chance > RUNG_MARGIN_SE * math.sqrt(chance * (1 - chance) / n)
    if not reached:
        return f"ASHA rungs at epochs {rungs}: no trial recorded a learning curve up to epoch {first}." + ranks
    n = min(sizes)
    lead = (f"ASHA rung check: at epoch {first} (the first rung; rungs at epochs {rungs}), {above} of {reached} "
            f"trials were above chance ({chance:.3f}) by more than {RUNG_MARGIN_SE:g} binomial SE "
            f"({math.sqrt(chance * (1 - chance) / n):.4f} at n={n}): ")
    if 2 * above > reached:
        return lead + "the first cut ranks configs that had learned something." + ranks
    return lead + "the first cut ranks mostly noise; a larger budget.grace_period would let trials learn first." + ranks


def conditions_text(sc) -> str:
    """Under which conditions every speed of the report was measured (they compare only like with like)."""
    at_once = sc.concurrency or "one per GPU (one without GPUs)"
    runs = f"every search trial and confirmation run ran {at_once} at a time"
    if getattr(sc, "pack", False):  # packed trials shared a GPU's compute: their speeds carry each other's load
        runs = ("search trials were packed onto each GPU by predicted memory (--pack; each measured while sharing "
                "it with whichever trials ran beside it), confirmation runs ran one per GPU")
    return (f"Speeds: {runs}, each Train worker with "
            f"{sc.cpus_per_trial:g} CPU(s) (torch threads as Ray gives them); a run's samples/s is the median over "
            f"its epochs, a confirmed finalist's the geometric mean of its runs'. Plan probes ran inside the trials' "
            f"workers, under the same conditions.")


def summary_lines(sc, best: Optional[pd.Series], reference: Optional[pd.Series],
                  confirmations: Optional[pd.DataFrame] = None) -> list[str]:
    """report.md's top, and what the search prints at its end."""
    space = sc.space
    lines = [f"# Search {sc.root.name}: target {sc.card.describe()}", ""]
    if best is None:
        return lines + ["No trial finished feasibly" + (" and was confirmed" if confirmations is not None else "")
                        + ": no best config written.", f"Selection: {sc.selection.describe()}."]
    return lines + [
        f"Chosen: trial {best['trial_id']} ({learning_text(best, space.param_names())}), "
        f"{plan_text(best, space.plan_names())}: val_acc {decision.accuracy_text(best)}, "
        f"{decision.speed_text(best)}.", "",
        decision.default_comparison(best, reference, confirmations, sc.selection), "",
        f"Selection: {sc.selection.describe()}.", "",
        f"Train it: `python -m asl_ray.train --data {sc.data} --config {sc.root / 'best_config.yaml'}`"]


def report_text(sc, df: pd.DataFrame, ok: pd.DataFrame, best: Optional[pd.Series],
                confirmations: Optional[pd.DataFrame], confirmed: Optional[pd.DataFrame] = None) -> str:
    """The whole report.md. `ok`: the finished trials with their one-run estimates (select.screened);
    `confirmed`: the finalists with their confirmed estimates (select.confirmed), None without confirmation."""
    space = sc.space
    learning, plans = space.param_names(), space.plan_names()
    reference = default_row(ok, confirmed, df, space.baseline_names)
    columns = ["trial_id", "status", "baseline", *learning, "plan", "precision_run", "acc_mean", "acc_se", "acc_runs",
               "samples_per_s", "samples_per_s_iqr", "contender", *MEMORY_COLUMNS]
    front = ok[pareto_mask(ok, "acc_mean")].sort_values("samples_per_s", ascending=False)
    lines = summary_lines(sc, best, reference, confirmations) + [
        "", f"Space `{space.path}`; {len(df)} configs: " +
        ", ".join(f"{n} {s}" for s, n in df["status"].value_counts().items()) + ".", "",
        "## Pareto front of the search runs (accuracy +- SE vs samples/s; finished, feasible trials)", "",
        "```", table_text(front, columns), "```", "", decision.ACCURACY_LEGEND, "",
        f"precision: configured; precision_run: what ran. {MEMORY_LEGEND}", "", conditions_text(sc), ""]
    if best is not None:
        lines += [f"## Chosen: trial {best['trial_id']}", "",
                  f"{learning_text(best, learning)}; {plan_text(best, plans)}; val_acc "
                  f"{decision.accuracy_text(best)}; {decision.speed_text(best)}; {memory_text(best)}.", "",
                  plan_search_text(best), "", "Plans measured for this config (runner-ups after the chosen one):",
                  "", "```", table_text(plan_table(best), ["plan", "status", "samples_per_s", "ci_half_width",
                                                          "peak_reserved_mb", "vs_chosen"]), "```", ""]
    lines += ["## Confirmation runs", ""]
    if confirmed is not None and len(confirmed):
        lines += [f"Every finalist re-trained on the same {sc.confirm_folds} fold(s) x {sc.confirm_seeds} fresh seeds "
                  f"(fold/seed pairs; a fold is the same signers for every finalist). Each estimate is the mean of its "
                  f"confirmation runs alone; the search run only nominated it. 'ref - it [upper]': the paired "
                  f"difference to the most accurate finalist with its one-sided bound; 'pick / it': the paired speed "
                  f"ratio with its 95% CI.", "",
                  "```", table_text(decision.confirmation_table(confirmed, confirmations),
                                    list(decision.confirmation_table(confirmed, confirmations).columns)), "```", ""]
    else:
        lines += ["None (--confirm 0): every accuracy is one search run with its binomial SE, and the pick is "
                  "unconfirmed.", ""]
    lines += ["## Selection", "", f"{sc.selection.describe()}.", "",
              decision.noisy_maximum_text(len(ok), sc.selection.alpha), "",
              decision.detectable_text(confirmed, confirmations, ok, sc.selection), "",
              "## ASHA rungs", "", rung_check_text(df, space.scheduler, space.budget, sc.num_classes), ""]
    infeasible = df[~df["feasible"].astype(bool)]
    lines += ["## Infeasible (never launched, no plan, or out of memory)", "", "```",
              table_text(infeasible, ["trial_id", "status", *learning, *plans, "predicted_reserved_mb",
                                      "predicted_total_mb", "predicted_fit_mb", "error"]), "```", "",
              "Files: trials.parquet, trials.csv, " + ("confirm.parquet, " if confirmations is not None and
                                                        len(confirmations) else "") +
              f"optuna.db (optuna-dashboard sqlite:///{(sc.root / 'optuna.db').resolve()}), pareto.png, "
              "curves.png, best_config.yaml, report.md, tune/ (Tune), train/ (per-trial runs), plans/ (plan cache)"
              + (", confirm/ (confirmation runs)." if confirmations is not None and len(confirmations) else ".")]
    return "\n".join(lines) + "\n"
