"""Three ways to search one space, on the same data and budget: what each costs, and how good its pick is.

    python bench/search_efficiency.py [--space search_spaces/cpu-smoke.yaml] [--seeds 0 1 2] [--search-trials N]
                                      [--retrain-seeds 7001 7002 7003] [--confirm K] [--data DIR] [--reuse]
                                      [--dry-run]

Every arm runs the real `python -m asl_ray.search`, one after another, each in its own process group (its
own local Ray), into runs/search-efficiency/<arm>/:
  grid             the exhaustive grid over the product space: `sampler: grid`, `scheduler: fifo` and
                   `plan_search: {mode: optuna}`, so every micro-batch x learning config is one trial, every
                   epoch (points whose micro-batch does not divide the effective batch are not points).
  one-level-s<k>   today's design: `--plan-search optuna` (Optuna samples the micro-batch too), TPE + ASHA,
                   the space's seed k.
  two-level-s<k>   the default: Optuna + ASHA over the learning knobs; each trial measures its plans first.
Both search arms get N trials (default: the space's budget.trials) and the space's epochs and rungs; every arm
runs with `--confirm K` (default 0: off; with K > 0 the confirmation runs are part of the arm's cost).
Seeds are interleaved (one-level s0, two-level s0, one-level s1, ...) so a load drift falls on both alike.

Cost: trial-seconds = Tune's time_total_s summed over the trials an arm launched (start-up included: what a
user pays), beside each arm's wall time. Pick: the arm's recommendation under the noise-aware rule
(`asl_ray.search.select.select_best(trials, Selection(), confirmations)`), i.e. its best_config.yaml. Quality:
never the pick's own trial (a winner's accuracy is biased upwards by its selection), but its best_config.yaml
re-trained with fresh seeds (`python -m asl_ray.train --config <arm>/best_config.yaml --set seed=S`), the same
seeds for every arm: mean +- sd, SE = max(sd, the binomial SE of one run) / sqrt(runs). A search arm's
quality over its search seeds: the mean of its picks' means, SE = max(their sd / sqrt(K), sqrt(sum SE^2) / K).
Goal: the two-level pick is not credibly below the grid's (grid mean - two-level mean <= z sqrt(SE^2 + SE^2),
z = the noise-aware rule's 1.645) for at most a quarter of the grid's trial-seconds, and it costs fewer
trial-seconds than the one-level search for a pick not credibly below the one-level one. Prints a table and
writes bench/results/search_efficiency-<device>.json. Scoring (cost, pick, quality, verdicts) lives in
bench/search_efficiency_scoring.py; this file runs the arms and the re-trainings. `--reuse` reuses finished arms and re-trainings;
`--dry-run` writes the arms' space files and prints every command without running any.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from asl_ray.cli import DEFAULT_DATA  # noqa: E402
from asl_ray.config import ConfigError, load_config_yaml  # noqa: E402
from asl_ray.search.space import SearchSpace, load_space  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_efficiency_scoring import (  # noqa: E402,F401 (the sibling module; names re-exported for tests)
    GOAL_COST, NOT_LAUNCHED, Quality, _plain, _short, credibly_below, matches_pick, pick_of, pooled, quality,
    trial_seconds, verdicts)

WALL_FILE = "arm_wall.json"


@dataclasses.dataclass(frozen=True)
class Arm:
    name: str
    """Its experiment name under --storage-path: grid, one-level-s<k>, two-level-s<k>."""
    kind: str
    """grid | one-level | two-level."""
    seed: Optional[int]
    """The space's sampler seed (None: the grid, which has no randomness worth repeating)."""
    space: Path
    """The arm's copy of the space file."""

    def search_flags(self) -> list[str]:
        return ["--plan-search", "optuna"] if self.kind == "one-level" else []


# ---- the arms ----------------------------------------------------------------------------------------

def arm_space(space_path: Path, out: Path, name: str, *, sampler: Optional[str] = None,
              scheduler: Optional[str] = None, seed: Optional[int] = None, trials: Optional[int] = None,
              plan_search_mode: Optional[str] = None) -> Path:
    """A copy of the space file with these keys changed, runnable on its own (its first line says how)."""
    raw = yaml.safe_load(space_path.read_text())
    changes = {"sampler": sampler, "scheduler": scheduler, "seed": seed}
    raw.update({k: v for k, v in changes.items() if v is not None})
    if trials is not None:
        raw["budget"] = {**raw.get("budget", {}), "trials": trials}
    if plan_search_mode is not None:
        raw["plan_search"] = {**raw.get("plan_search", {}), "mode": plan_search_mode}
    if raw.get("sampler") == "grid":
        raw.pop("baselines", None)  # every baseline is a grid point already
    path = out / f"{name}.yaml"
    path.write_text(f"# python -m asl_ray.search --space {path}\n"
                    f"# written by bench/search_efficiency.py from {space_path}\n" + yaml.safe_dump(raw, sort_keys=False))
    return path


def runnable_points(space: SearchSpace) -> int:
    """Grid points that are configs: in mode optuna a micro-batch must divide the effective batch."""
    count = 0
    for values in space.grid():
        try:
            space.config_for(values)
        except ConfigError:
            continue
        count += 1
    return count


def plan_arms(space_path: Path, storage: Path, seeds: Sequence[int], search_trials: int) -> list[Arm]:
    """Writes each arm's space file; returns the arms in the order they run."""
    product = load_space(space_path).with_plan_search_mode("optuna")
    grid_file = arm_space(space_path, storage, "grid-space", sampler="grid", scheduler="fifo",
                          plan_search_mode="optuna", trials=runnable_points(product))
    arms = [Arm("grid", "grid", None, grid_file)]
    trials = search_trials or load_space(space_path).budget.trials
    for seed in seeds:
        for kind in ("one-level", "two-level"):
            name = f"{kind}-s{seed}"
            arms.append(Arm(name, kind, seed, arm_space(space_path, storage, f"{name}-space", seed=seed,
                                                         trials=trials)))
    return arms


def search_command(arm: Arm, storage: Path, data: Path, confirm: int) -> list[str]:
    """The arm's search; an arm interrupted earlier (its Tune folder exists) is resumed instead."""
    if (storage / arm.name / "tune").exists():
        return [sys.executable, "-m", "asl_ray.search", "--storage-path", str(storage), "--name", arm.name,
                "--resume"]
    return [sys.executable, "-m", "asl_ray.search", "--space", str(arm.space), "--storage-path", str(storage),
            "--name", arm.name, "--data", str(data), "--select", "noise-aware", "--confirm", str(confirm),
            *arm.search_flags()]


def retrain_command(config: Path, data: Path, seed: int, out: Path) -> list[str]:
    return [sys.executable, "-m", "asl_ray.train", "--data", str(data), "--config", str(config),
            "--set", f"seed={seed}", "--out", str(out)]


def retrain_dir(storage: Path, arm: Arm, seed: int) -> Path:
    return storage / arm.name / f"retrain-s{seed}"


# ---- running --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ArmRun:
    trials: pd.DataFrame
    """trials.parquet."""
    confirmations: Optional[pd.DataFrame]
    """confirm.parquet, if the arm confirmed its finalists."""
    wall_seconds: float
    """The whole arm: Ray start, trial start/teardown, confirmation and reports included."""


def run_arm(arm: Arm, storage: Path, data: Path, confirm: int, reuse: bool) -> ArmRun:
    root = storage / arm.name
    if not (reuse and (root / "trials.parquet").exists() and (root / "best_config.yaml").exists()):
        cmd = search_command(arm, storage, data, confirm)
        print(f"[{arm.name}] {' '.join(cmd[1:])}", flush=True)
        started = time.perf_counter()
        run_own_session(cmd)
        wall = time.perf_counter() - started
        (root / WALL_FILE).write_text(json.dumps({"wall_seconds": wall}))
        print(f"[{arm.name}] finished in {wall:.0f} s", flush=True)
    else:
        print(f"[{arm.name}] reusing {root}")
    confirmations = pd.read_parquet(root / "confirm.parquet") if (root / "confirm.parquet").exists() else None
    return ArmRun(pd.read_parquet(root / "trials.parquet"), confirmations, arm_wall_seconds(root))


def run_own_session(cmd: list[str], allowed: Sequence[int] = (0,), env: Optional[dict] = None) -> int:
    """Run one command in a process group of its own; afterwards stop what is left of it (and only that).

    Each arm's search starts its own local Ray, whose processes die with it (Ray's fate sharing) and stay in
    its process group: cleaning up that group never touches another Ray on this machine (`ray stop` would).
    An exit code outside `allowed` raises CalledProcessError."""
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, env=env)
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
    if rc not in allowed:
        raise subprocess.CalledProcessError(rc, cmd)
    return rc


def arm_wall_seconds(arm: Path) -> float:
    """Recorded by run_arm; for an arm run before that existed: from its first file to its results."""
    if (arm / WALL_FILE).exists():
        return float(json.loads((arm / WALL_FILE).read_text())["wall_seconds"])
    return (arm / "trials.parquet").stat().st_mtime - (arm / "search_args.json").stat().st_mtime


def retrain(arm: Arm, storage: Path, data: Path, seeds: Sequence[int], reuse: bool,
            done: dict[tuple, dict]) -> list[dict]:
    """The arm's best_config.yaml trained once per seed. `done` (config without its seed, seed) -> run is
    shared by the arms: a config two arms picked is trained once per seed."""
    config = storage / arm.name / "best_config.yaml"
    if not config.exists():
        print(f"[{arm.name}] no best_config.yaml (no trial finished): nothing to re-train", flush=True)
        return []
    key = tuple(sorted((k, v) for k, v in load_config_yaml(config).to_dict().items() if k != "seed"))
    runs = []
    for seed in seeds:
        if (key, seed) in done:
            runs.append({**done[key, seed], "same_as": done[key, seed]["arm"]})
            continue
        out = retrain_dir(storage, arm, seed)
        if not (reuse and (out / "result.json").exists()):
            if out.exists():
                shutil.rmtree(out)  # a partial run of this bench's own (train refuses a used --out)
            cmd = retrain_command(config, data, seed, out)
            print(f"[{arm.name}] {' '.join(cmd[1:])}", flush=True)
            # One thread, as the trials' Ray workers run (1 CPU each): two OpenMP threads on a busy 2-core
            # machine fell to 9-15 samples/s from ~300. 3: the run ended infeasible (OOM, diverged): it still scores.
            run_own_session(cmd, allowed=(0, 3), env={**os.environ, "OMP_NUM_THREADS": "1"})
        result = json.loads((out / "result.json").read_text())
        run = {"arm": arm.name, "seed": seed, "status": result.get("status", "ok"),
               "val_acc": float(result.get("val_acc", 0.0)) if result.get("feasible", True) else 0.0,
               "val_samples": result.get("val_samples")}
        done[key, seed] = run
        runs.append(run)
    return runs


# ---- main -----------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default=str(REPO / "search_spaces" / "cpu-smoke.yaml"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="space seeds of the two search arms")
    p.add_argument("--search-trials", type=int, default=0, help="trials per search (default: the space's)")
    p.add_argument("--retrain-seeds", type=int, nargs="+", default=[7001, 7002, 7003],
                   help="fresh seeds every pick is re-trained with (no trial or confirmation uses them)")
    p.add_argument("--confirm", type=int, default=0, help="passed to every arm's search (0: no confirmation)")
    p.add_argument("--data", default=None, help=f"data root (default: the synthetic set, {DEFAULT_DATA}, made if missing)")
    p.add_argument("--storage-path", default=str(REPO / "runs" / "search-efficiency"))
    p.add_argument("--reuse", action="store_true", help="reuse arms and re-trainings already finished")
    p.add_argument("--dry-run", action="store_true", help="write the arms' space files, print the commands, stop")
    p.add_argument("--out", default=str(REPO / "bench" / "results"))
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.confirm < 0 or args.search_trials < 0:
        build_parser().error("--confirm and --search-trials must be >= 0")
    space_path, storage = Path(args.space).resolve(), Path(args.storage_path).resolve()
    data = Path(args.data) if args.data else REPO / DEFAULT_DATA
    if not args.dry_run and args.data is None:
        from asl_ray.cli import open_data_or_fail
        os.chdir(REPO)  # the default set lives at REPO/data/synth, as for every entry point
        open_data_or_fail(None)
    space = load_space(space_path)
    storage.mkdir(parents=True, exist_ok=True)
    arms = plan_arms(space_path, storage, args.seeds, args.search_trials)
    if args.dry_run:
        for arm in arms:
            print(" ".join(search_command(arm, storage, data, args.confirm)))
            for seed in args.retrain_seeds:
                print(" ".join(retrain_command(storage / arm.name / "best_config.yaml", data, seed,
                                               retrain_dir(storage, arm, seed))))
        return 0

    names = [*space.param_names(), *space.plan_names()]
    commands = {arm.name: search_command(arm, storage, data, args.confirm)[1:] for arm in arms}
    runs = {arm.name: run_arm(arm, storage, data, args.confirm, args.reuse) for arm in arms}
    done: dict[tuple, dict] = {}
    retrained = {arm.name: retrain(arm, storage, data, args.retrain_seeds, args.reuse, done) for arm in arms}
    from asl_ray.search.select import Selection
    z = Selection().z

    records = {}
    for arm in arms:
        run = runs[arm.name]
        records[arm.name] = {"kind": arm.kind, "seed": arm.seed, "trial_seconds": trial_seconds(run),
                             "wall_seconds": run.wall_seconds,
                             "trials": int((~run.trials["status"].isin(NOT_LAUNCHED)).sum()),
                             "pick": pick_of(run, names), "retrain": retrained[arm.name],
                             "quality": dataclasses.asdict(quality(retrained[arm.name]))}
        records[arm.name]["best_config_matches_pick"] = matches_pick(storage / arm.name / "best_config.yaml",
                                                                     records[arm.name]["pick"], names)
        if not records[arm.name]["best_config_matches_pick"]:
            print(f"[{arm.name}] warning: best_config.yaml is not the noise-aware pick "
                  f"{records[arm.name]['pick']}", flush=True)
    grid = records["grid"]
    grid_q = Quality(**grid["quality"])
    per_seed = {}
    for seed in args.seeds:
        one, two = records[f"one-level-s{seed}"], records[f"two-level-s{seed}"]
        per_seed[seed] = verdicts(grid_q, grid["trial_seconds"], Quality(**two["quality"]), two["trial_seconds"],
                                  Quality(**one["quality"]), one["trial_seconds"], z)
    arm_totals = {}
    for kind in ("one-level", "two-level"):
        mine = [records[f"{kind}-s{s}"] for s in args.seeds]
        arm_totals[kind] = {"quality": pooled([Quality(**r["quality"]) for r in mine]),
                            "trial_seconds": statistics.fmean(r["trial_seconds"] for r in mine),
                            "wall_seconds": statistics.fmean(r["wall_seconds"] for r in mine)}
    overall = verdicts(grid_q, grid["trial_seconds"], arm_totals["two-level"]["quality"],
                       arm_totals["two-level"]["trial_seconds"], arm_totals["one-level"]["quality"],
                       arm_totals["one-level"]["trial_seconds"], z)

    rows = []
    for name, r in records.items():
        q = Quality(**r["quality"])
        pick = r["pick"]
        rows.append({"arm": name, "trials": r["trials"], "trial_s": r["trial_seconds"],
                     "cost": r["trial_seconds"] / grid["trial_seconds"], "wall_s": r["wall_seconds"],
                     "pick": _short(pick, names),
                     "own acc": f"{pick['acc_mean']:.3f} +- {pick['acc_se']:.3f}" if pick else "-",
                     "retrained": q.text(), "below grid": credibly_below(q, grid_q, z) if name != "grid" else ""})
    for kind, t in arm_totals.items():
        rows.append({"arm": f"{kind} (mean of {len(args.seeds)})", "trials": "", "trial_s": t["trial_seconds"],
                     "cost": t["trial_seconds"] / grid["trial_seconds"], "wall_s": t["wall_seconds"], "pick": "",
                     "own acc": "", "retrained": t["quality"].text(),
                     "below grid": credibly_below(t["quality"], grid_q, z)})
    table = pd.DataFrame(rows)
    print("\n" + table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"\nquality: each pick's best_config.yaml re-trained with seeds {args.retrain_seeds}; 'below grid': "
          f"credibly below the grid's pick (one-sided z {z:g})")
    print(f"goal: two-level not credibly below the grid ({'yes' if overall['two_level_not_credibly_below_grid'] else 'NO'})"
          f", for <= {GOAL_COST:.2f} of its trial-seconds ({overall['two_level_cost_fraction']:.2f}), and cheaper than "
          f"one-level for a pick as good ({'yes' if overall['two_level_cheaper_than_one_level_for_as_good'] else 'NO'})"
          f": {'met' if overall['goal_met'] else 'MISSED'}; per search seed: "
          + ", ".join(f"s{s} {'met' if v['goal_met'] else 'missed'}" for s, v in per_seed.items()))

    trials = runs["grid"].trials
    device = str(trials["device"].dropna().iloc[0]) if "device" in trials and trials["device"].notna().any() else "cpu"
    device_name = f"{device}-{platform.machine()}" if device == "cpu" else device
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"search_efficiency-{device_name.replace(':', '').replace(' ', '-').replace('=', '')}.json"
    path.write_text(json.dumps({
        "benchmark": "search_efficiency", "date": time.strftime("%Y-%m-%d"), "device": device,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "space": str(args.space),
        "seeds": args.seeds, "retrain_seeds": args.retrain_seeds, "confirm": args.confirm, "z": z,
        "goal": {"cost_fraction": GOAL_COST, "overall": overall, "per_seed": per_seed},
        "arms": records, "means": {k: {**v, "quality": dataclasses.asdict(v["quality"])} for k, v in arm_totals.items()},
        "commands": commands,
        "table": table.to_dict(orient="records"),
    }, indent=1, default=_plain))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
