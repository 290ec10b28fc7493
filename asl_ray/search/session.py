"""One search from start to finish: Ray up, the Tune experiment, then the result files and summary."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd

from asl_ray.data.cache import SequenceCache
from asl_ray.search import report
from asl_ray.search.ray_cluster import start_ray
from asl_ray.search.space import SearchSpace
from asl_ray.vram.cards import Card

MiB = 2 ** 20
EXIT_INTERRUPTED = 130  # the shell's code for a run ended by Ctrl-C


@dataclass(frozen=True)
class SearchPlan:
    space: SearchSpace
    card: Card
    root: Path
    cache: SequenceCache
    data: Path
    trials: int
    resume: bool
    selection: report.Selection
    emulate: bool
    address: Optional[str]
    num_cpus: Optional[int]
    dashboard: bool
    dashboard_host: str
    dashboard_port: int
    concurrency: int = 0
    cpus_per_trial: float = 1.0
    max_failures: int = 2


def run_search(plan: SearchPlan) -> int:
    from asl_ray.search.experiment import Experiment, close_study, result_rows, run, stopped_in_flight
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(f"target: {plan.card.describe()}")
    print(f"space: {plan.space.path} ({plan.trials} trials, {plan.space.budget.epochs} epochs each, "
          f"{plan.space.scheduler}, {plan.space.sampler}); results in {plan.root}")
    start_ray(plan)
    exp = Experiment(space=plan.space, card=plan.card, root=plan.root, cache_path=plan.cache.path,
                     num_classes=plan.cache.num_classes, trials=plan.trials, emulate=plan.emulate,
                     concurrency=plan.concurrency, cpus_per_trial=plan.cpus_per_trial,
                     max_failures=plan.max_failures)
    grid = run(exp, resume=plan.resume)
    if was_interrupted(grid) or stopped_in_flight(grid, exp):
        print(f"\nsearch interrupted: finished trials, checkpoints and the study are kept in {plan.root}.\n"
              f"Finish it with: python -m asl_ray.search --name {plan.root.name} "
              f"--storage-path {plan.root.parent} --resume")
        return EXIT_INTERRUPTED
    close_study(exp)
    df = report.trials_frame(result_rows(grid, exp))
    write_results(df, plan)
    return 0


def was_interrupted(grid) -> bool:
    """Tune returns normally after Ctrl-C; a trial it never finished (no result, or not terminated) tells."""
    unfinished = any(r.error is None and (r.config is None or not r.metrics) for r in grid)
    return unfinished or grid.num_terminated + grid.num_errors < len(grid)


def write_results(df: pd.DataFrame, plan: SearchPlan) -> None:
    root = plan.root
    df.to_parquet(root / "trials.parquet", index=False)
    df.to_csv(root / "trials.csv", index=False)
    usable_mb = plan.card.usable_bytes / MiB
    params = plan.space.param_names()  # the space's own keys, whatever they are
    report.plot_pareto(df, root / "pareto.png", usable_mb, f"{plan.root.name} on {plan.card.name}", params)
    best = report.select_best(df, plan.selection)
    reference = _reference_row(df, plan.space)
    configured = params + [k for k in ("precision",) if k not in params]
    columns = ["trial_id", "status", *configured, "precision_run", "val_acc", "samples_per_s", *report.MEMORY_COLUMNS]
    front = df[df["on_pareto_front"]].sort_values("samples_per_s", ascending=False)
    lines = [f"# Search {root.name}: target {plan.card.describe()}", "",
             f"Space `{plan.space.path}`; {len(df)} configs: " +
             ", ".join(f"{n} {s}" for s, n in df["status"].value_counts().items()) + ".", "",
             "## Pareto front (validation accuracy vs samples/s; finished, feasible trials)", "",
             "```", report.table_text(front, columns), "```", "",
             f"precision: configured; precision_run: what ran. {report.MEMORY_LEGEND}", ""]
    if best is not None:
        cfg = report.write_best_config(best, plan.space.base_config(), root / "best_config.yaml", str(plan.data),
                                       params)
        lines += [f"## Chosen: trial {best['trial_id']} ({plan.selection.describe()})", "",
                  f"batch {cfg.batch_size} x accumulation {cfg.gradient_accumulation_steps} (effective "
                  f"{cfg.effective_batch_size()}), dim {cfg.dim}, depth {cfg.depth}, max_len {cfg.max_len}, "
                  f"precision {cfg.precision} (ran {best['precision_run'] or 'unknown'}), lr_per_64 "
                  f"{cfg.lr_per_64:.3g}: val_acc {best['val_acc']:.4f}, {best['samples_per_s']:.1f} samples/s; "
                  f"{report.memory_text(best)}.", "",
                  report.comparison_text(best, reference), "",
                  f"Train it: `python -m asl_ray.train --data {plan.data} --config {root / 'best_config.yaml'}`"]
    else:
        lines += ["No trial finished feasibly: no best config written."]
    infeasible = df[~df["feasible"].astype(bool)]
    lines += ["", "## Infeasible (never launched, or out of memory)", "", "```",
              report.table_text(infeasible, ["trial_id", "status", *configured, "predicted_reserved_mb",
                                             "predicted_total_mb", "predicted_fit_mb"]), "```",
              "", "Files: trials.parquet, trials.csv, optuna.db (optuna-dashboard sqlite:///" +
              f"{(root / 'optuna.db').resolve()}), pareto.png, best_config.yaml, tune/ (Tune), train/ (per-trial runs)."]
    text = "\n".join(lines) + "\n"
    (root / "report.md").write_text(text)
    print("\n" + text)


def _reference_row(df: pd.DataFrame, space: SearchSpace) -> Optional[pd.Series]:
    """The finished trial of the space's first baseline (the seed's default config)."""
    if not space.baselines:
        return None
    ok = df[report.finished(df)]
    match = pd.Series(True, index=ok.index)
    for k, v in space.baselines[0].items():
        match &= ok[k] == v
    return ok[match].iloc[0] if match.any() else None
