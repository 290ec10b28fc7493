"""How good is `--dry-run`'s forecast: on the CPU smoke space, the dry run's stage forecast against the real search's
stage times (stage_times.json), for a few search seeds (goal: total within 25%).

    python bench/forecast_accuracy.py [--space search_spaces/cpu-smoke.yaml] [--seeds 0 1 2] [--data data/synth]

Each seed: a copy of the space with `seed:` set, a dry run, then the real search of the same --name in a fresh
process (its own local Ray), both into a temporary storage path. Prints a table and writes
bench/results/forecast_accuracy.json. A smoke search takes ~9 minutes on the project's 2-core CPU, the dry run ~30 s.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
STAGES = ("search", "confirmation", "total")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default=str(REPO / "search_spaces" / "cpu-smoke.yaml"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--data", default=None)
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "forecast_accuracy.json"))
    args = p.parse_args(argv)

    storage = Path(tempfile.mkdtemp(prefix="forecast-accuracy-"))
    rows = []
    for seed in args.seeds:
        space = yaml.safe_load(Path(args.space).read_text())
        space["seed"] = seed
        space_file = storage / f"space-seed{seed}.yaml"
        space_file.write_text(f"# python -m asl_ray.search --space {space_file}\n" + yaml.safe_dump(space, sort_keys=False))
        name = f"seed{seed}"
        cli = [sys.executable, "-m", "asl_ray.search", "--space", str(space_file), "--storage-path", str(storage),
               "--name", name, *(["--data", args.data] if args.data else [])]
        started = time.perf_counter()
        subprocess.run([*cli, "--dry-run"], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        dry_s = time.perf_counter() - started
        started = time.perf_counter()
        subprocess.run(cli, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        forecast = json.loads((storage / name / "forecast.json").read_text())
        actual = json.loads((storage / name / "stage_times.json").read_text())
        for stage in STAGES:
            f = forecast["stages"][stage]
            a = actual[f"{stage}_s"]
            rows.append({"seed": seed, "stage": stage, "expected_s": f["expected_s"], "worst_s": f["worst_s"],
                         "actual_s": a, "error": a / f["expected_s"] - 1 if f["expected_s"] else None,
                         "dry_run_s": dry_s, "process_wall_s": wall})
        print(f"seed {seed}: dry run {dry_s:.0f} s, search process {wall:.0f} s", flush=True)

    print(f"\n{'seed':>4}  {'stage':<12} {'forecast':>9} {'worst':>8} {'actual':>8} {'error':>7}")
    for r in rows:
        print(f"{r['seed']:>4}  {r['stage']:<12} {r['expected_s']:>8.0f}s {r['worst_s']:>7.0f}s {r['actual_s']:>7.0f}s "
              f"{r['error']:>+7.0%}")
    totals = [r for r in rows if r["stage"] == "total"]
    within = sum(abs(r["error"]) <= 0.25 for r in totals)
    print(f"\ntotal within 25% of the forecast in {within} of {len(totals)} seeds")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "forecast_accuracy", "date": time.strftime("%Y-%m-%d"),
                               "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                               "space": args.space, "seeds": args.seeds, "rows": rows,
                               "total_within_25pct": within}, indent=1))
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
