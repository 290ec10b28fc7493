"""Where a smoke search's time goes, per trial: the training loop vs everything around it
(Tune trial start, TorchTrainer and worker start-up, data mapping, checkpoints, teardown).

    python bench/search_overhead.py [--space search_spaces/cpu-smoke.yaml] [--trials 4] [--data data/synth]

Runs the real search (asl_ray.search) into a temporary storage path, then prints a table and writes
bench/results/search_overhead-<device>.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default=str(REPO / "search_spaces" / "cpu-smoke.yaml"))
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--data", default=None)
    p.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = p.parse_args(argv)

    from asl_ray.search.__main__ import main as search_main
    storage = Path(tempfile.mkdtemp(prefix="search-overhead-"))
    started = time.perf_counter()
    cli = ["--space", args.space, "--trials", str(args.trials), "--storage-path", str(storage), "--name", "overhead"]
    if args.data:
        cli += ["--data", args.data]
    search_main(cli)
    wall = time.perf_counter() - started

    df = pd.read_parquet(storage / "overhead" / "trials.parquet")
    runs = df[df["status"] != "rejected"].copy()
    runs["overhead_seconds"] = runs["trial_seconds"] - runs["loop_seconds"]
    runs["loop_share"] = runs["loop_seconds"] / runs["trial_seconds"]
    cols = ["trial_id", "status", "epochs_run", "trial_seconds", "loop_seconds", "overhead_seconds", "loop_share"]
    print("\n" + runs[cols].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    total_trial, total_loop = runs["trial_seconds"].sum(), runs["loop_seconds"].sum()
    print(f"\nall trials: {total_trial:.0f} s in trials, {total_loop:.0f} s in the loop "
          f"({total_loop / total_trial:.0%}); search wall time {wall:.0f} s "
          f"(Ray start, cache, reports included)")
    device = runs["device"].iloc[0] if len(runs) else "cpu"
    name = f"{device}-{platform.machine()}" if device == "cpu" else device
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"search_overhead-{name.replace(':', '')}.json"
    path.write_text(json.dumps({"benchmark": "search_overhead", "date": time.strftime("%Y-%m-%d"),
                                "device": device, "space": args.space, "wall_seconds": wall,
                                "trials": runs[cols].to_dict(orient="records"),
                                "loop_share_overall": total_loop / total_trial}, indent=1, default=float))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
