"""The search's tables and text: trial rows as a frame, the Pareto front, and report.md's sections (the
chosen config with its plan and runner-up plans, confirmation runs, the comparison with the seed's
default at the measured noise, the ASHA rung check, the infeasible configs). Plain data in, text out;
the files are written by `results`. No Ray here."""
from __future__ import annotations

import json
import math
from typing import Optional, Sequence

import pandas as pd

from asl_ray.search.select import finished, indistinguishable, seed_baseline

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
ACCURACY_LEGEND = ("acc_mean: validation accuracy (the mean of a finalist's runs where confirmed); acc_se: its "
                   "standard error (binomial sqrt(p(1-p)/n) for one run, or the pooled seed spread where larger: "
                   "acc_source); acc_runs: runs behind the mean.")
SAME_NOISE_Z = 1.96
"""Two-sided z for 'can the chosen config and the seed's default be told apart' (95%)."""
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


def accuracy_text(row: pd.Series) -> str:
    """'0.512 +- 0.025 (one run, binomial SE)' or '0.498 +- 0.021 (mean of 3 runs, SE from the seed spread)'."""
    runs = int(row["acc_runs"])
    what = "one run" if runs == 1 else f"mean of {runs} runs"
    source = "binomial SE" if row["acc_source"] == "binomial" else "SE from the seed spread"
    return f"{row['acc_mean']:.4f} +- {row['acc_se']:.4f} ({what}, {source})"


def learning_text(row: pd.Series, param_names: Sequence[str]) -> str:
    return ", ".join(f"{k} {shown(row[k])}" for k in param_names if k in row)


def plan_text(row: pd.Series, plan_names: Sequence[str]) -> str:
    """'plan 12x4 (batch_size 12, gradient_accumulation_steps 4, precision fp16; ran fp32)'."""
    keys = ", ".join(f"{k} {shown(row[k])}" for k in plan_names if k in row and pd.notna(row[k]))
    ran = f"; ran {row['precision_run']}" if text_of(row, "precision_run", "") else ""
    return f"plan {text_of(row, 'plan')} ({keys}{ran})"


def reference_row(ok: pd.DataFrame, baseline_names: Sequence[str]) -> Optional[pd.Series]:
    """The finished trial of the seed's default config (select.seed_baseline of the space's), if any."""
    name = seed_baseline(baseline_names)
    if "baseline" not in ok or name is None:
        return None
    match = ok[ok["baseline"] == name]
    return match.iloc[0] if len(match) else None


def default_comparison(best: pd.Series, reference: Optional[pd.Series]) -> str:
    """Throughput ratio, accuracy difference, and in a plain sentence whether the noise tells them apart."""
    if reference is None:
        return "The seed's default config did not finish in this search: no comparison."
    if reference["trial_id"] == best["trial_id"]:
        return "The chosen config is the seed's default config."
    ratio = best["samples_per_s"] / reference["samples_per_s"] if reference["samples_per_s"] else float("nan")
    diff = best["acc_mean"] - reference["acc_mean"]
    combined = math.sqrt(best["acc_se"] ** 2 + reference["acc_se"] ** 2)
    figures = (f"accuracy {best['acc_mean']:.4f} +- {best['acc_se']:.4f} vs {reference['acc_mean']:.4f} +- "
               f"{reference['acc_se']:.4f} (difference {diff:+.4f}")
    if indistinguishable(best, reference, SAME_NOISE_Z):
        verdict = (f"The chosen config and the seed's default cannot be told apart at this noise: {figures}, "
                   f"within {SAME_NOISE_Z} x the combined SE {combined:.4f}).")
    else:
        verdict = (f"The chosen config and the seed's default can be told apart at this noise: {figures}, beyond "
                   f"{SAME_NOISE_Z} x the combined SE {combined:.4f}).")
    return (f"Against the seed's default config (trial {reference['trial_id']}, baseline "
            f"{text_of(reference, 'baseline')}, {text_of(reference, 'plan')}): "
            f"throughput x{ratio:.2f} ({best['samples_per_s']:.1f} vs {reference['samples_per_s']:.1f} samples/s). "
            + verdict)


def plan_table(best: pd.Series) -> pd.DataFrame:
    """The chosen plan and the runner-up plans its plan search measured (plan_runner_ups JSON)."""
    rows = [{"plan": best.get("plan"), "status": "chosen", "samples_per_s": best.get("plan_samples_per_s"),
             "peak_reserved_mb": best.get("plan_peak_reserved_mb")}]
    raw = best.get("plan_runner_ups")
    others = json.loads(raw) if isinstance(raw, str) and raw.strip() else []
    rows += [r for r in others if r.get("plan") != best.get("plan")]
    table = pd.DataFrame(rows, columns=["plan", "status", "samples_per_s", "peak_reserved_mb"])
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


def confirmation_table(ok: pd.DataFrame, confirmations: pd.DataFrame) -> pd.DataFrame:
    """Per finalist: its search run, the fresh seeds and their accuracies, and the mean +- SE of all."""
    rows = []
    for finalist, runs in confirmations.groupby("finalist", sort=False):
        match = ok[ok["trial_id"] == finalist]
        search_acc = match["val_acc"].iloc[0] if len(match) else float("nan")
        done = runs[runs["status"] == "ok"]
        failed = runs[runs["status"] != "ok"]
        rows.append({
            "finalist": finalist, "search_run": search_acc,
            "seeds": ", ".join(str(shown(s)) for s in runs["seed"]),
            "accuracies": ", ".join(f"{acc:.4f}" if status == "ok" else status
                                    for acc, status in zip(runs["val_acc"], runs["status"])),
            "mean +- SE": (f"{match['acc_mean'].iloc[0]:.4f} +- {match['acc_se'].iloc[0]:.4f}" if len(match)
                           else "(not a finished trial)"),
            "runs": 1 + len(done) if len(match) else len(done), "failed": len(failed)})
    return pd.DataFrame(rows)


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


def rung_check_text(df: pd.DataFrame, scheduler: str, budget, num_classes: Optional[int]) -> str:
    """At ASHA's first rung, how many trials had left chance level by more than RUNG_MARGIN_SE binomial SEs:
    what the first cut ranks (signal or noise). SE at chance, sqrt(c(1-c)/n): the null of no learning."""
    if scheduler != "asha":
        return f"No ASHA rungs (scheduler {scheduler}): every launched trial ran its whole budget."
    rungs = rung_epochs(budget.grace_period, budget.reduction_factor, budget.epochs)
    if not rungs:
        return "ASHA has no rung below the last epoch in this budget: nothing stopped early."
    if not num_classes:
        return f"ASHA rungs at epochs {rungs}; the number of classes is unknown, so no chance-level check."
    first, chance = rungs[0], 1.0 / num_classes
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
        return f"ASHA rungs at epochs {rungs}: no trial recorded a learning curve up to epoch {first}."
    n = min(sizes)
    lead = (f"ASHA rung check: at epoch {first} (the first rung; rungs at epochs {rungs}), {above} of {reached} "
            f"trials were above chance ({chance:.3f}) by more than {RUNG_MARGIN_SE:g} binomial SE "
            f"({math.sqrt(chance * (1 - chance) / n):.4f} at n={n}): ")
    if 2 * above > reached:
        return lead + "the first cut ranks configs that had learned something."
    return lead + "the first cut ranks mostly noise; a larger budget.grace_period would let trials learn first."


def summary_lines(sc, best: Optional[pd.Series], reference: Optional[pd.Series]) -> list[str]:
    """report.md's top, and what the search prints at its end."""
    space = sc.space
    lines = [f"# Search {sc.root.name}: target {sc.card.describe()}", ""]
    if best is None:
        return lines + ["No trial finished feasibly: no best config written.",
                        f"Selection: {sc.selection.describe()}."]
    return lines + [
        f"Chosen: trial {best['trial_id']} ({learning_text(best, space.param_names())}), "
        f"{plan_text(best, space.plan_names())}: val_acc {accuracy_text(best)}, {best['samples_per_s']:.1f} "
        f"samples/s.", "",
        default_comparison(best, reference), "",
        f"Selection: {sc.selection.describe()}.", "",
        f"Train it: `python -m asl_ray.train --data {sc.data} --config {sc.root / 'best_config.yaml'}`"]


def report_text(sc, df: pd.DataFrame, ok: pd.DataFrame, best: Optional[pd.Series],
                confirmations: Optional[pd.DataFrame]) -> str:
    """The whole report.md. `ok`: the finished trials with their accuracy estimates (select.scored)."""
    space = sc.space
    learning, plans = space.param_names(), space.plan_names()
    reference = reference_row(ok, space.baseline_names)
    columns = ["trial_id", "status", "baseline", *learning, "plan", "precision_run", "acc_mean", "acc_se", "acc_runs",
               "samples_per_s", *MEMORY_COLUMNS]
    front = ok[pareto_mask(ok, "acc_mean")].sort_values("samples_per_s", ascending=False)
    lines = summary_lines(sc, best, reference) + [
        "", f"Space `{space.path}`; {len(df)} configs: " +
        ", ".join(f"{n} {s}" for s, n in df["status"].value_counts().items()) + ".", "",
        "## Pareto front (accuracy +- SE vs samples/s; finished, feasible trials)", "",
        "```", table_text(front, columns), "```", "", ACCURACY_LEGEND, "",
        f"precision: configured; precision_run: what ran. {MEMORY_LEGEND}", ""]
    if best is not None:
        lines += [f"## Chosen: trial {best['trial_id']}", "",
                  f"{learning_text(best, learning)}; {plan_text(best, plans)}; val_acc {accuracy_text(best)}; "
                  f"{best['samples_per_s']:.1f} samples/s; {memory_text(best)}.", "",
                  plan_search_text(best), "", "Plans measured for this config (runner-ups after the chosen one):",
                  "", "```", table_text(plan_table(best), ["plan", "status", "samples_per_s", "peak_reserved_mb",
                                                          "vs_chosen"]), "```", ""]
    lines += ["## Confirmation runs", ""]
    if confirmations is not None and len(confirmations):
        lines += [f"Each finalist re-trained with fresh seeds ({sc.confirm_seeds} per finalist, up to "
                  f"{sc.finalists} finalists); its accuracy is the mean of its search run and these.", "",
                  "```", table_text(confirmation_table(ok, confirmations),
                                    ["finalist", "search_run", "seeds", "accuracies", "mean +- SE", "runs",
                                     "failed"]), "```", ""]
    else:
        lines += ["None (--confirm 0): every accuracy is one run with its binomial SE.", ""]
    lines += ["## Selection", "", f"{sc.selection.describe()}.", "",
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
