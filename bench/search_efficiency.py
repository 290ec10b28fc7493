"""Exhaustive grid vs Optuna + ASHA on the same space and data: trial-seconds spent, and how close the
search's best comes to the grid's best under the same selection rule.

    python bench/search_efficiency.py [--space search_spaces/cpu-smoke.yaml] [--seeds 0 1 2]
                                      [--search-trials N] [--data DIR] [--reuse]

Both arms run the real `python -m asl_ray.search`, one after the other, each in its own process (its own
local Ray), into runs/search-efficiency/:
  grid        `sampler: grid`, `scheduler: fifo`: every grid point of the space once, every epoch.
  search-s<k> the space as written (TPE + ASHA), seed k, N trials (default: a quarter of the grid).
Trial-seconds are Tune's `time_total_s` summed over launched trials (start-up included), so they count
what a user pays for; each arm's wall time (Ray start and trial teardown too) is reported beside them.
The grid also measures every config the search picks, so the search's pick is
scored twice: by its own run, and by the grid's run of the same config (no run-to-run noise).
Prints a table and writes bench/results/search_efficiency-<device>.json.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from asl_ray.search.report import Selection, finished, select_best  # noqa: E402
from asl_ray.search.space import load_space  # noqa: E402

GOAL_CLOSENESS = 0.95  # within 5% of the grid's best ...
GOAL_COST = 0.25  # ... for at most a quarter of its trial-seconds
WALL_FILE = "arm_wall.json"


def arm_space(space_path: Path, out: Path, name: str, **changes) -> Path:
    """A copy of the space file with `changes` applied (sampler, scheduler, seed, trials)."""
    raw = yaml.safe_load(space_path.read_text())
    budget = dict(raw.get("budget", {}))
    if "trials" in changes:
        budget["trials"] = changes.pop("trials")
    raw.update(changes, budget=budget)
    if raw.get("sampler") == "grid":
        raw.pop("baselines", None)  # every baseline is a grid point already
    path = out / f"{name}.yaml"
    path.write_text(f"# python -m asl_ray.search --space {path}\n"
                    f"# written by bench/search_efficiency.py from {space_path}\n" + yaml.safe_dump(raw, sort_keys=False))
    return path


def run_arm(space: Path, storage: Path, name: str, data: Optional[str], reuse: bool) -> tuple[pd.DataFrame, float]:
    """(trial rows, wall seconds of the whole arm: Ray start, trial start/teardown, reports included)."""
    trials_file = storage / name / "trials.parquet"
    if reuse and trials_file.exists():
        print(f"[{name}] reusing {trials_file}")
        return pd.read_parquet(trials_file), arm_wall_seconds(storage / name)
    cmd = [sys.executable, "-m", "asl_ray.search", "--space", str(space), "--storage-path", str(storage),
           "--name", name]
    if data:
        cmd += ["--data", data]
    if (storage / name / "tune").exists():
        cmd = [sys.executable, "-m", "asl_ray.search", "--storage-path", str(storage), "--name", name, "--resume"]
    print(f"[{name}] {' '.join(cmd[1:])}", flush=True)
    started = time.perf_counter()
    run_own_session(cmd)
    wall = time.perf_counter() - started
    (storage / name / WALL_FILE).write_text(json.dumps({"wall_seconds": wall}))
    print(f"[{name}] finished in {wall:.0f} s", flush=True)
    return pd.read_parquet(trials_file), wall


def run_own_session(cmd: list[str]) -> None:
    """Run one arm in a process group of its own; afterwards stop what is left of it (and only that).

    Each arm's search starts its own local Ray, whose processes die with it (Ray's fate sharing) and stay in
    its process group: cleaning up that group never touches another Ray on this machine (`ray stop` would)."""
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True)
    try:
        try:
            rc = proc.wait()
        except KeyboardInterrupt:  # the terminal's Ctrl-C no longer reaches the arm: pass it on, let it save
            proc.send_signal(signal.SIGINT)
            proc.wait()
            raise
    finally:
        with contextlib.suppress(ProcessLookupError):  # nothing of the arm left
            os.killpg(proc.pid, signal.SIGKILL)
    if rc != 0:
        raise subprocess.CalledProcessError(rc, cmd)


def arm_wall_seconds(arm: Path) -> float:
    """Recorded by run_arm; for an arm run before that existed: from its first file to its results."""
    if (arm / WALL_FILE).exists():
        return float(json.loads((arm / WALL_FILE).read_text())["wall_seconds"])
    return (arm / "trials.parquet").stat().st_mtime - (arm / "search_args.json").stat().st_mtime


def config_key(row: pd.Series, names: list[str]) -> tuple:
    return tuple(row[n] for n in names)


def trial_seconds(df: pd.DataFrame) -> float:
    launched = df[df["status"] != "rejected"]
    return float(launched["trial_seconds"].fillna(0).sum())


def compare(grid: pd.DataFrame, search: pd.DataFrame, names: list[str], selection: Selection) -> dict:
    """The search's pick against the grid's pick, under `selection`, scored on both runs."""
    g_best, s_best = select_best(grid, selection), select_best(search, selection)
    out = {"grid_best": _describe(g_best, names), "search_best": _describe(s_best, names),
           "search_trial_seconds": trial_seconds(search), "search_trials": int((search["status"] != "rejected").sum()),
           "search_finished_trials": int(finished(search).sum())}
    if g_best is None or s_best is None:
        return {**out, "closeness": math.nan, "closeness_grid_measured": math.nan}
    in_grid = grid[finished(grid)].set_index(names)
    key = config_key(s_best, names)
    s_in_grid = in_grid.loc[[key]].iloc[0] if key in in_grid.index else None
    out["closeness"] = closeness(s_best, g_best, grid, selection)
    out["closeness_grid_measured"] = closeness(s_in_grid, g_best, grid, selection) if s_in_grid is not None else math.nan
    out["same_config"] = config_key(g_best, names) == key
    return out


def closeness(pick: Optional[pd.Series], best: pd.Series, grid: pd.DataFrame, selection: Selection) -> float:
    """1.0 = as good as the grid's best under the rule. 'most-accurate': the accuracy ratio; 'fastest': the
    samples/s ratio; 'fastest-within-margin': both must hold, so the worse of the accuracy against the
    rule's bar (the grid's best accuracy minus the margin, capped at 1) and the samples/s ratio."""
    if pick is None:
        return math.nan
    acc_ratio = pick["val_acc"] / best["val_acc"] if best["val_acc"] > 0 else math.nan
    speed_ratio = pick["samples_per_s"] / best["samples_per_s"]
    if selection.rule == "most-accurate":
        return float(acc_ratio)
    if selection.rule == "fastest":
        return float(speed_ratio)
    bar = grid.loc[finished(grid), "val_acc"].max() - selection.margin
    return float(min(min(1.0, pick["val_acc"] / bar), speed_ratio))


def _describe(row: Optional[pd.Series], names: list[str]) -> Optional[dict]:
    if row is None:
        return None
    return {**{n: _plain(row[n]) for n in names}, "val_acc": float(row["val_acc"]),
            "samples_per_s": float(row["samples_per_s"]), "trial_id": str(row["trial_id"])}


def _plain(v):
    return v.item() if hasattr(v, "item") else v


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default=str(REPO / "search_spaces" / "cpu-smoke.yaml"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--search-trials", type=int, default=0, help="trials per search (default: grid size / 4)")
    p.add_argument("--data", default=None)
    p.add_argument("--storage-path", default=str(REPO / "runs" / "search-efficiency"))
    p.add_argument("--reuse", action="store_true", help="reuse arms already finished under --storage-path")
    p.add_argument("--rules", nargs="+", default=["fastest-within-margin", "most-accurate"])
    p.add_argument("--margin", type=float, default=0.01)
    p.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = p.parse_args(argv)

    space_path = Path(args.space).resolve()
    space = load_space(space_path)
    names = [q.name for q in space.params]
    storage = Path(args.storage_path).resolve()
    storage.mkdir(parents=True, exist_ok=True)
    grid_size = space.grid_size()
    search_trials = args.search_trials or max(1, grid_size // 4)

    grid_space = arm_space(space_path, storage, "grid-space", sampler="grid", scheduler="fifo", trials=grid_size)
    grid, grid_wall = run_arm(grid_space, storage, "grid", args.data, args.reuse)
    searches, walls = {}, {}
    for seed in args.seeds:
        s_space = arm_space(space_path, storage, f"search-s{seed}-space", seed=seed, trials=search_trials)
        searches[seed], walls[seed] = run_arm(s_space, storage, f"search-s{seed}", args.data, args.reuse)

    grid_seconds = trial_seconds(grid)
    rows, record_rules = [], {}
    for rule in args.rules:
        selection = Selection(rule, args.margin)
        per_seed = {}
        for seed, df in searches.items():
            c = compare(grid, df, names, selection)
            c["cost_fraction"] = c["search_trial_seconds"] / grid_seconds
            c["wall_seconds"], c["wall_fraction"] = walls[seed], walls[seed] / grid_wall
            c["goal_met"] = bool(c["closeness"] >= GOAL_CLOSENESS and c["cost_fraction"] <= GOAL_COST)
            per_seed[seed] = c
            rows.append({"rule": rule, "arm": f"search seed {seed}", "trials": c["search_trials"],
                         "trial_s": c["search_trial_seconds"], "cost": c["cost_fraction"],
                         "wall_s": c["wall_seconds"], "wall cost": c["wall_fraction"],
                         "closeness": c["closeness"], "closeness (grid-measured)": c["closeness_grid_measured"],
                         "same pick": c.get("same_config", False), "goal": "met" if c["goal_met"] else "missed",
                         "pick": _short(c["search_best"], names)})
        g = select_best(grid, selection)
        rows.append({"rule": rule, "arm": "grid", "trials": int((grid["status"] != "rejected").sum()),
                     "trial_s": grid_seconds, "cost": 1.0, "wall_s": grid_wall, "wall cost": 1.0,
                     "closeness": 1.0, "closeness (grid-measured)": 1.0,
                     "same pick": True, "goal": "", "pick": _short(_describe(g, names), names)})
        record_rules[rule] = {"grid_best": _describe(g, names), "searches": per_seed}

    table = pd.DataFrame(rows)
    print("\n" + table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"\ngoal: closeness >= {GOAL_CLOSENESS:.2f} for cost <= {GOAL_COST:.2f} of the grid's trial-seconds "
          f"({grid_size} grid points, {grid_seconds:.0f} trial-s)")
    device = str(grid["device"].dropna().iloc[0]) if "device" in grid and grid["device"].notna().any() else "cpu"
    name = f"{device}-{platform.machine()}" if device == "cpu" else device
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"search_efficiency-{name.replace(':', '').replace(' ', '-')}.json"
    path.write_text(json.dumps({
        "benchmark": "search_efficiency", "date": time.strftime("%Y-%m-%d"), "device": device,
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores", "space": str(args.space),
        "grid_points": grid_size, "grid_trial_seconds": grid_seconds, "grid_wall_seconds": grid_wall,
        "search_trials": search_trials,
        "seeds": args.seeds, "margin": args.margin, "goal": {"closeness": GOAL_CLOSENESS, "cost": GOAL_COST},
        "rules": record_rules, "table": table.to_dict(orient="records"),
        "grid_trials": grid[["trial_id", "status", *names, "val_acc", "samples_per_s", "trial_seconds"]]
        .to_dict(orient="records"),
    }, indent=1, default=_plain))
    print(f"wrote {path}")
    return 0


def _short(d: Optional[dict], names: list[str]) -> str:
    if not d:
        return "-"
    return " ".join(f"{n}={d[n]}" for n in names) + f" acc={d['val_acc']:.3f} sps={d['samples_per_s']:.0f}"


if __name__ == "__main__":
    sys.exit(main())
