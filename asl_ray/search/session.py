"""One search from start to finish, in stages: Ray up; the main Tune experiment (its rows written to
trials.parquet at once); the confirmation runs of the finalists (`--confirm K`, `--confirm-folds F`); then the
result files (best_config.yaml only once every run is in) and the summary. Ctrl-C in either Tune stage exits 130
with the command that finishes it; `--resume` skips what is done (a finished main search is read back from
trials.parquet, finished confirmation runs are not run again).

The console carries our stage lines ("search: ...", "confirm: ..."), Tune's progress table and the summary;
workers' output stays in Ray's log files (ray_cluster.py), Optuna says only warnings.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Optional

import pandas as pd

from asl_ray.search.config import DEFAULT_DATA, SearchConfig, SearchConfigError
from asl_ray.search.dashboard import choose_dashboard_port
from asl_ray.outcome import Status

EXIT_INTERRUPTED = 130  # the shell's code for a run ended by Ctrl-C


def prepare(sc: SearchConfig, port_given: bool, log=print) -> SearchConfig:
    """The actions a search needs before Ray starts, after `resolve` checked the values: make the experiment
    folder (and check it is writable), settle the dashboard port (a free one if the default is taken; a port
    given and taken is refused), open the data (the default root is synthesised if missing, then cached).
    Returns the config with the port and the data's cache path and classes."""
    try:
        sc.root.mkdir(parents=True, exist_ok=True)
        probe = sc.root / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise SearchConfigError(f"--storage-path: cannot write to {sc.root}: {e.strerror or e}") from None
    port = sc.dashboard_port
    if not sc.address:  # an --address cluster has its own dashboard: nothing to probe here
        port = choose_dashboard_port(sc.dashboard_host, sc.dashboard_port if port_given else None, log)
    data, cache = _open_data(sc.data, sc.cache_dir)
    return dataclasses.replace(sc, dashboard_port=port, data=Path(data), cache_path=Path(cache.path),
                               num_classes=cache.num_classes)


def _open_data(data: Path, cache_dir: Optional[Path]):
    """(data root, its SequenceCache); the default root is synthesised if missing."""
    from asl_ray.cli import open_data_or_fail
    return open_data_or_fail(None if Path(data) == DEFAULT_DATA else str(data),
                             str(cache_dir) if cache_dir is not None else None)


def run_search(sc: SearchConfig) -> int:
    """The search's stages; `--dry-run` instead forecasts them (asl_ray/search/forecast.py: no Ray imported;
    `python -m asl_ray.search` calls it directly, telling it whether --gpu was given)."""
    from asl_ray.search import forecast, forecast_actual
    if sc.dry_run:
        return forecast.dry_run(sc)
    import optuna
    from asl_ray.search import results
    from asl_ray.search.ray_cluster import start_ray
    started = time.time()  # the stages' actual wall times, for forecast vs actual (stage_times.json)
    forecast_actual.record_stage(sc.root, started=started, resumed=sc.resume)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not one line per study and trial
    space = sc.space
    print(f"target: {sc.card.describe()}")
    print(f"search: {space.path}: {sc.trials} trials of {space.budget.epochs} epochs ({space.scheduler}, "
          f"{space.sampler}), plan search {sc.plan_search}; results in {sc.root}", flush=True)
    log_dir = start_ray(sc)
    df = _main_search(sc)
    if df is None:
        return _interrupted(sc, "search")
    searched = time.time()
    confirmations = _confirmation(sc, df)
    if confirmations is False:
        return _interrupted(sc, "confirmation")
    forecast_actual.record_stage(sc.root, search_s=searched - started, confirmation_s=time.time() - searched,
                          total_s=time.time() - started)
    results.write_results(df, confirmations, sc)
    forecast_actual.record_stage(sc.root, total_s=time.time() - started)  # the result files included, as forecast
    print("\nForecast vs actual:\n" + "\n".join(forecast_actual.comparison_lines(sc.root)))
    if log_dir is not None:
        print(f"Ray's log files (workers' output): {log_dir}")
    return 0


def _main_search(sc: SearchConfig) -> Optional[pd.DataFrame]:
    """The trial rows (written to trials.parquet), or None when the search was interrupted."""
    from asl_ray.search import experiment, report, results
    from asl_ray.search.tuners import was_interrupted
    done = sc.root / "trials.parquet"
    if sc.resume and done.exists():  # written only once the main search ran to its end
        print(f"search: finished earlier ({done})")
        return pd.read_parquet(done)
    grid = experiment.run(sc, resume=sc.resume)
    if was_interrupted(grid) or experiment.stopped_in_flight(grid, sc):
        return None
    experiment.close_study(sc)
    df = report.trials_frame(experiment.result_rows(grid, sc))
    results.write_trials(df, sc)
    counts = ", ".join(f"{n} {s}" for s, n in df["status"].value_counts().items())
    print(f"search: {len(df)} configs ({counts}); rows in {done}", flush=True)
    return df


def _confirmation(sc: SearchConfig, df: pd.DataFrame):
    """The confirmation rows; None when there are none to run; False when interrupted."""
    from asl_ray.search import confirm, select
    if sc.confirm_seeds <= 0:
        return None
    path = sc.finalists_file()
    if path.exists():  # a resume re-trains the finalists chosen before the interruption
        finalist_ids = json.loads(path.read_text())
    else:
        finalist_ids = select.finalists(df, sc.selection, sc.finalists,
                                        reference=select.seed_baseline(sc.space.baseline_names))
        path.write_text(json.dumps(finalist_ids))
    if not finalist_ids:
        print("confirm: no trial finished: nothing to confirm")
        return None
    pairs = sc.confirm_folds * sc.confirm_seeds
    print(f"confirm: {len(finalist_ids)} finalists ({', '.join(finalist_ids)}) x the same {pairs} (fold, seed) pairs "
          f"({sc.confirm_folds} fold(s) x {sc.confirm_seeds} fresh seeds): {len(finalist_ids) * pairs} runs of "
          f"{sc.space.budget.epochs} epochs; results in {sc.confirm_dir()}", flush=True)
    confirmations = confirm.run_confirmation(sc, df, finalist_ids, resume=sc.resume)
    if confirmations is None:
        return False
    ok = confirmations[confirmations["status"] == Status.OK]
    print(f"confirm: {len(ok)} of {len(confirmations)} runs finished", flush=True)
    return confirmations


def _interrupted(sc: SearchConfig, stage: str) -> int:
    kept = ("finished trials, checkpoints and the study" if stage == "search"
            else "the search's results and the finished confirmation runs")
    print(f"\n{stage} interrupted: {kept} are kept in {sc.root}; no best_config.yaml yet.\n"
          f"Finish it with: python -m asl_ray.search --name {sc.root.name} --storage-path {sc.root.parent} "
          f"--resume")
    return EXIT_INTERRUPTED
