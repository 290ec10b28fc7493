"""The search's result files under `sc.root`: trials.parquet/.csv right after the main search (nothing is
lost if the confirmation stage is interrupted), then confirm.parquet, pareto.png, curves.png,
best_config.yaml and report.md once every run is in, and a short summary on the console. No Ray here."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import pandas as pd

from asl_ray.cards import MiB
from asl_ray.config import FIELD_NAMES, FIELD_TYPES, TrainConfig
from asl_ray.search import forecast_actual, plots, report
from asl_ray.search.select import confirmed, screened, select_best

def write_trials(df: pd.DataFrame, sc) -> None:
    df.to_parquet(sc.root / "trials.parquet", index=False)
    df.to_csv(sc.root / "trials.csv", index=False)


def best_config(row: pd.Series, base: TrainConfig, learning: list[str], plan_keys: list[str]) -> TrainConfig:
    """The row's learning values and its plan (batch_size, gradient_accumulation_steps, the other plan keys)
    over `base`. Only TrainConfig keys: effective_batch_size is batch_size x gradient_accumulation_steps."""
    values = {k: _field_value(k, row[k]) for k in [*learning, *plan_keys]
              if k in FIELD_NAMES and k in row and pd.notna(row[k])}
    return base.with_overrides(values, source=f"trial {row['trial_id']}")


def _field_value(key: str, v: Any) -> Any:
    """A frame's value as the field's type: an int column with a gap (a no_plan row) reads back as float."""
    v = report.plain(v)
    if FIELD_TYPES[key] is int and isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def write_best_config(row: pd.Series, sc, path: Path) -> TrainConfig:
    space = sc.space
    cfg = best_config(row, space.base_config(), space.param_names(), space.plan_names())
    plan = report.text_of(row, "plan", "its plan")
    cfg.to_yaml(path, header=f"# python -m asl_ray.train --data {sc.data} --config {path}\n"
                             f"# Chosen by the search (trial {row['trial_id']}, plan {plan}): "
                             f"{sc.selection.describe()}.\n# Add --epochs N to train longer.")
    return cfg


def write_results(df: pd.DataFrame, confirmations: Optional[pd.DataFrame], sc) -> Optional[TrainConfig]:
    """Every result file after the search (and its confirmation runs); returns the best config written,
    None when no trial finished feasibly (then no best_config.yaml)."""
    root = sc.root
    has_runs = confirmations is not None and len(confirmations) > 0
    if has_runs:
        confirmations.to_parquet(root / "confirm.parquet", index=False)
    ok = screened(df, sc.selection.alpha)
    table = confirmed(df, confirmations, sc.selection) if has_runs else None
    best = select_best(df, sc.selection, confirmations)
    chosen_id = None if best is None else best["trial_id"]
    title = f"{root.name} on {sc.card.name}"
    plots.plot_pareto(df, ok, table, confirmations, chosen_id, root / "pareto.png", sc.card.usable_bytes / MiB, title,
                      [*sc.space.param_names(), "plan"])
    budget = sc.space.budget
    rungs = (report.rung_epochs(budget.grace_period, budget.reduction_factor, budget.epochs)
             if sc.space.scheduler == "asha" else [])
    plots.plot_curves(df, root / "curves.png", rungs, 1.0 / sc.num_classes if sc.num_classes else None, title)
    cfg = None if best is None else write_best_config(best, sc, root / "best_config.yaml")
    (root / "report.md").write_text(report.report_text(sc, df, ok, best, confirmations, table)
                                    + forecast_actual.report_section(root))
    reference = report.default_row(ok, table, df, sc.space.baseline_names)
    print("\n" + "\n".join(report.summary_lines(sc, best, reference, confirmations)) +
          f"\n\nFull report: {root / 'report.md'}")
    return cfg
