"""Searching one space three ways, on the same data and budget: what each costs, and how good its pick is.

    python bench/search_efficiency.py [--space search_spaces/cpu-smoke.yaml] [--seeds 0 1 2 3 4] [--search-trials N]
                                      [--arms grid two-level [one-level]] [--retrain-folds 0 1]
                                      [--retrain-seeds 7001 7002 7003] [--confirm K] [--delta 0.02] [--alpha 0.05]
                                      [--data DIR] [--reuse] [--dry-run]

Every arm runs the real `python -m asl_ray.search`, one after another, each in its own process group (its
own local Ray), into runs/search-efficiency/<arm>/, with the space's own confirmation stage (as shipped; --confirm
K overrides its seeds):
  grid             the exhaustive grid over the product space: `sampler: grid`, `scheduler: fifo` and
                   `plan_search: {mode: optuna}`, so every micro-batch x learning config is one trial, every
                   epoch (points whose micro-batch does not divide the effective batch are not points).
  two-level-s<k>   the default: Optuna + ASHA over the learning knobs; each trial measures its plans first; the
                   space's seed k.
  one-level-s<k>   (with --arms ... one-level) `--plan-search optuna`: Optuna samples the micro-batch too.
Seeds are interleaved (two-level s0, one-level s0, two-level s1, ...) so a load drift falls on all alike.

Cost: trial-seconds = Tune's time_total_s summed over the trials an arm launched (start-up and plan probes
included) plus its confirmation runs': what a user pays; beside it each arm's wall time and the probes' share.
Pick: the arm's recommendation (its best_config.yaml, checked against `select_best`). Quality is never the
pick's own trial or confirmation (both selected it): every pick is re-trained on the same (fold, seed) pairs
(`--retrain-folds` x `--retrain-seeds`, seeds no search or confirmation uses; `python -m asl_ray.train --config
<arm>/best_config.yaml --set fold=F --set seed=S`, one thread, one at a time), and scored on both axes against
the grid's pick with paired differences: accuracy (pick - grid) and log samples/s (pick / grid), per pair. Per
search seed the comparison is paired over the pairs; an arm's is over its search seeds (each seed one unit, t on
seeds - 1 dof: which config a search lands on is part of its noise).
Goal: the two-level pick is equivalent to or better than the grid's pick on accuracy (one-sided lower bound of the
difference above -delta), at least as fast (the speed ratio's lower bound at least 1 - 5%), for at most 30% of
the grid's trial-seconds, every stage included. Also: the rank correlation of ASHA's first rung with the last
epoch over the grid's trials (every one ran every epoch), the noise the re-trainings measured, and the error rates
asl_ray/search/decision_sim.py predicts for the space's design at that noise beside those the re-trainings show.
Prints a table and writes bench/results/search_efficiency-<device>.json. Scoring lives in
bench/search_efficiency_scoring.py; this file runs the arms and the re-trainings. `--reuse` reuses finished arms and
re-trainings; `--dry-run` writes the arms' space files and prints every command without running any.
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
    GOAL_COST, NOT_LAUNCHED, Comparison, Retrained, compare, confirm_seconds, matches_pick, measured_noise,
    observed_rates, over_seeds, pick_of, probe_seconds, result_table, retrained, search_seconds, short, trial_seconds,
    verdict_lines, verdicts)

WALL_FILE = "arm_wall.json"


@dataclasses.dataclass(frozen=True)
class Arm:
    name: str
    """Its experiment name under --storage-path: grid, two-level-s<k>, one-level-s<k>."""
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


def plan_arms(space_path: Path, storage: Path, seeds: Sequence[int], search_trials: int,
              kinds: Sequence[str] = ("two-level",)) -> list[Arm]:
    """Writes each arm's space file; returns the arms in the order they run."""
    product = load_space(space_path).with_plan_search_mode("optuna")
    grid_file = arm_space(space_path, storage, "grid-space", sampler="grid", scheduler="fifo",
                          plan_search_mode="optuna", trials=runnable_points(product))
    arms = [Arm("grid", "grid", None, grid_file)]
    trials = search_trials or load_space(space_path).budget.trials
    for seed in seeds:
        for kind in kinds:
            name = f"{kind}-s{seed}"
            arms.append(Arm(name, kind, seed, arm_space(space_path, storage, f"{name}-space", seed=seed,
                                                         trials=trials)))
    return arms


def search_command(arm: Arm, storage: Path, data: Path, confirm: Optional[int]) -> list[str]:
    """The arm's search (its space's confirmation stage unless `confirm` says otherwise); an arm interrupted earlier
    (its Tune folder exists) is resumed instead."""
    if (storage / arm.name / "tune").exists():
        return [sys.executable, "-m", "asl_ray.search", "--storage-path", str(storage), "--name", arm.name,
                "--resume"]
    return [sys.executable, "-m", "asl_ray.search", "--space", str(arm.space), "--storage-path", str(storage),
            "--name", arm.name, "--data", str(data), "--select", "noise-aware",
            *(["--confirm", str(confirm)] if confirm is not None else []), *arm.search_flags()]


def retrain_command(config: Path, data: Path, fold: int, seed: int, out: Path) -> list[str]:
    return [sys.executable, "-m", "asl_ray.train", "--data", str(data), "--config", str(config),
            "--set", f"fold={fold}", "--set", f"seed={seed}", "--out", str(out)]


def retrain_dir(storage: Path, arm: Arm, fold: int, seed: int) -> Path:
    return storage / arm.name / f"retrain-f{fold}-s{seed}"


# ---- running --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ArmRun:
    trials: pd.DataFrame
    """trials.parquet."""
    confirmations: Optional[pd.DataFrame]
    """confirm.parquet, if the arm confirmed its finalists."""
    wall_seconds: float
    """The whole arm: Ray start, trial start/teardown, confirmation and reports included."""


def run_arm(arm: Arm, storage: Path, data: Path, confirm: Optional[int], reuse: bool) -> ArmRun:
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


def retrain(arm: Arm, storage: Path, data: Path, pairs: Sequence[tuple[int, int]], reuse: bool,
            done: dict[tuple, dict]) -> list[dict]:
    """The arm's best_config.yaml trained once per (fold, seed) pair. `done` (config without its fold and seed,
    fold, seed) -> run is shared by the arms: a config two arms picked is trained once per pair."""
    config = storage / arm.name / "best_config.yaml"
    if not config.exists():
        print(f"[{arm.name}] no best_config.yaml (no trial finished): nothing to re-train", flush=True)
        return []
    key = tuple(sorted((k, v) for k, v in load_config_yaml(config).to_dict().items() if k not in ("seed", "fold")))
    runs = []
    for fold, seed in pairs:
        if (key, fold, seed) in done:
            runs.append({**done[key, fold, seed], "same_as": done[key, fold, seed]["arm"]})
            continue
        out = retrain_dir(storage, arm, fold, seed)
        if not (reuse and (out / "result.json").exists()):
            if out.exists():
                shutil.rmtree(out)  # a partial run of this bench's own (train refuses a used --out)
            cmd = retrain_command(config, data, fold, seed, out)
            print(f"[{arm.name}] {' '.join(cmd[1:])}", flush=True)
            # One thread, as the trials' Ray workers run (1 CPU each): two OpenMP threads on a busy 2-core
            # machine fell to 9-15 samples/s from ~300. 3: the run ended infeasible (OOM, diverged): it still scores.
            run_own_session(cmd, allowed=(0, 3), env={**os.environ, "OMP_NUM_THREADS": "1"})
        result = json.loads((out / "result.json").read_text())
        feasible = result.get("feasible", True)
        run = {"arm": arm.name, "fold": fold, "seed": seed, "status": result.get("status", "ok"),
               "val_acc": float(result.get("val_acc", 0.0)) if feasible else 0.0,
               "val_samples": result.get("val_samples"),
               "samples_per_s": float(result.get("samples_per_s_median", result.get("samples_per_s", "nan")))
               if feasible else float("nan")}
        done[key, fold, seed] = run
        runs.append(run)
    return runs


# ---- main -----------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default=str(REPO / "search_spaces" / "cpu-smoke.yaml"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="space seeds of the search arms")
    p.add_argument("--arms", nargs="+", default=["grid", "two-level"], choices=["grid", "two-level", "one-level"],
                   help="the grid always runs: every pick is compared with its pick")
    p.add_argument("--search-trials", type=int, default=0, help="trials per search (default: the space's)")
    p.add_argument("--retrain-folds", type=int, nargs="+", default=[0, 1], help="folds every pick is re-trained on")
    p.add_argument("--retrain-seeds", type=int, nargs="+", default=[7001, 7002, 7003],
                   help="seeds every pick is re-trained with, on every fold (no trial or confirmation uses them)")
    p.add_argument("--confirm", type=int, default=None, help="confirmation seeds of every arm (default: the space's)")
    p.add_argument("--delta", type=float, default=0.02, help="equivalence margin (accuracy, absolute)")
    p.add_argument("--alpha", type=float, default=0.05, help="one-sided level of every bound")
    p.add_argument("--replications", type=int, default=4000, help="of the decision simulation")
    p.add_argument("--data", default=None, help=f"data root (default: the synthetic set, {DEFAULT_DATA}, made if missing)")
    p.add_argument("--storage-path", default=str(REPO / "runs" / "search-efficiency"))
    p.add_argument("--reuse", action="store_true", help="reuse arms and re-trainings already finished")
    p.add_argument("--dry-run", action="store_true", help="write the arms' space files, print the commands, stop")
    p.add_argument("--out", default=str(REPO / "bench" / "results"))
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if (args.confirm is not None and args.confirm < 0) or args.search_trials < 0:
        build_parser().error("--confirm and --search-trials must be >= 0")
    if len(args.retrain_folds) * len(args.retrain_seeds) < 2:
        build_parser().error("--retrain-folds x --retrain-seeds: at least 2 pairs (a paired spread needs two)")
    space_path, storage = Path(args.space).resolve(), Path(args.storage_path).resolve()
    data = Path(args.data) if args.data else REPO / DEFAULT_DATA
    if not args.dry_run and args.data is None:
        from asl_ray.cli import open_data_or_fail
        os.chdir(REPO)  # the default set lives at REPO/data/synth, as for every entry point
        open_data_or_fail(None)
    space = load_space(space_path)
    storage.mkdir(parents=True, exist_ok=True)
    kinds = [k for k in ("two-level", "one-level") if k in args.arms]
    arms = plan_arms(space_path, storage, args.seeds, args.search_trials, kinds)
    pairs = [(f, s) for f in args.retrain_folds for s in args.retrain_seeds]
    if args.dry_run:
        for arm in arms:
            print(" ".join(search_command(arm, storage, data, args.confirm)))
            for fold, seed in pairs:
                print(" ".join(retrain_command(storage / arm.name / "best_config.yaml", data, fold, seed,
                                               retrain_dir(storage, arm, fold, seed))))
        return 0

    names = [*space.param_names(), *space.plan_names()]
    commands = {arm.name: search_command(arm, storage, data, args.confirm)[1:] for arm in arms}
    runs = {arm.name: run_arm(arm, storage, data, args.confirm, args.reuse) for arm in arms}
    done: dict[tuple, dict] = {}
    retrains = {arm.name: retrain(arm, storage, data, pairs, args.reuse, done) for arm in arms}
    picks = {name: retrained(r) for name, r in retrains.items()}
    grid = picks["grid"]

    records = {}
    for arm in arms:
        run = runs[arm.name]
        pick = pick_of(run, names)
        records[arm.name] = {
            "kind": arm.kind, "seed": arm.seed, "trial_seconds": trial_seconds(run),
            "search_seconds": search_seconds(run), "confirm_seconds": confirm_seconds(run),
            "probe_seconds": probe_seconds(run), "wall_seconds": run.wall_seconds,
            "trials": int((~run.trials["status"].isin(NOT_LAUNCHED)).sum()), "pick": pick,
            "best_config_matches_pick": matches_pick(storage / arm.name / "best_config.yaml", pick, names),
            "retrain": retrains[arm.name], "retrained_mean": picks[arm.name].mean,
            "retrained_samples_per_s": picks[arm.name].speed,
            "vs_grid": compare(picks[arm.name], grid).record(args.delta, args.alpha) if arm.kind != "grid" else None}
        if not records[arm.name]["best_config_matches_pick"]:
            print(f"[{arm.name}] warning: best_config.yaml is not the rule's pick {pick}", flush=True)
    grid_cost = records["grid"]["trial_seconds"]
    totals = {}
    for kind in kinds:
        mine = [a.name for a in arms if a.kind == kind]
        overall = over_seeds([compare(picks[name], grid) for name in mine])
        cost = statistics.fmean(records[name]["trial_seconds"] for name in mine)
        wall = statistics.fmean(records[n]["wall_seconds"] for n in mine)
        totals[kind] = {"trial_seconds": cost, "wall_seconds": wall,
                        "vs_grid": overall.record(args.delta, args.alpha),
                        "goal": verdicts(overall, cost, grid_cost, args.delta, args.alpha),
                        "per_seed_goal": {records[n]["seed"]: verdicts(compare(picks[n], grid),
                                                                       records[n]["trial_seconds"], grid_cost,
                                                                       args.delta, args.alpha) for n in mine}}

    from asl_ray.search import report
    from asl_ray.search.decision_sim import Noise, design_of, operating_characteristics
    rung = space.budget.grace_period
    rho, behind = report.rung_rank_correlation(runs["grid"].trials, rung)
    distinct = list({picks[a.name]: picks[a.name] for a in arms if picks[a.name].accs}.values())  # picks, not arms
    noise = measured_noise(distinct)
    design = design_of(space, args.search_trials or None, args.confirm)
    val_samples = int(runs["grid"].trials["val_samples"].dropna().min())
    simulated = []
    if all(v == v for v in noise.values()):  # NaN-free: at least two distinct picks were re-trained
        sim_noise = Noise(own_sd=noise["own_sd"], shared_sd=noise["shared_sd"], val_samples=val_samples,
                          speed_cv=noise["speed_cv"])
        simulated = [dataclasses.asdict(r) for r in operating_characteristics(
            design, sim_noise, args.delta, args.alpha, args.replications)]
    observed = {kind: observed_rates(picks, [a.name for a in arms if a.kind == kind], args.delta) for kind in kinds}

    table = result_table(records, totals, picks, names, grid_cost)
    print("\n" + table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print("\n" + "\n".join(verdict_lines(totals, pairs, args.alpha, args.delta, (rung, rho, behind), noise,
                                         len(distinct), simulated, observed)))

    trials = runs["grid"].trials
    device = str(trials["device"].dropna().iloc[0]) if "device" in trials and trials["device"].notna().any() else "cpu"
    device_name = f"{device}-{platform.machine()}" if device == "cpu" else device
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"search_efficiency-{device_name.replace(':', '').replace(' ', '-').replace('=', '')}.json"
    path.write_text(json.dumps({
        "benchmark": "search_efficiency", "date": time.strftime("%Y-%m-%d"), "device": device,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "space": str(args.space),
        "seeds": args.seeds, "retrain_pairs": pairs, "confirm": args.confirm, "delta": args.delta,
        "alpha": args.alpha, "goal_cost_fraction": GOAL_COST, "arms": records, "totals": totals,
        "asha_rung": {"epoch": rung, "spearman_vs_last_epoch": rho, "grid_trials": behind},
        "noise": noise, "design": dataclasses.asdict(design), "simulated": simulated, "observed": observed,
        "commands": commands, "table": table.to_dict(orient="records"),
    }, indent=1, default=_plain_json))
    print(f"wrote {path}")
    return 0


def _plain_json(v):
    return v.item() if hasattr(v, "item") else str(v)


if __name__ == "__main__":
    sys.exit(main())
