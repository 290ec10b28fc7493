"""Seconds per epoch with and without persistent loader workers: what re-spawning them costs every epoch.

    python bench/persistent_workers.py [--data DIR] [--epochs 4] [--steps 8] [--repeats 3] [--set key=value ...]

A one-epoch measurement (the ablation, bench/launches.py) cannot see this switch: it saves the train and the
validation loaders' worker start-up at every epoch after the first. Both variants run the real `fit` (train,
evaluate, checkpoint state) for `--epochs` short epochs, interleaved repeat by repeat in one process; the figure
is each run's median `epoch_seconds` over epochs 2.. (epoch 1 starts the workers either way), and the paired
difference and ratio off/on. TIMINGS (this machine). Prints a table and writes
bench/results/persistent_workers-<device>.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from asl_ray.cli import open_data_or_fail, parse_overrides  # noqa: E402
from asl_ray.config import TrainConfig  # noqa: E402
from asl_ray.train.loop import fit  # noqa: E402
from asl_ray.train.runtime import Runtime  # noqa: E402

VARIANTS = {"respawned (off)": {"persistent_workers": False}, "persistent (on)": {"persistent_workers": True}}


class EpochSeconds:
    """A Reporter that keeps each epoch's wall time and nothing else."""

    def __init__(self):
        self.seconds: list[float] = []

    def epoch_end(self, metrics, checkpoint) -> None:
        self.seconds.append(metrics["epoch_seconds"])

    def run_end(self, result) -> None:
        pass


def epoch_seconds_after_the_first(cfg: TrainConfig, cache) -> float:
    reporter = EpochSeconds()
    fit(cfg, cache, reporter, Runtime.create(cfg))
    return statistics.median(reporter.seconds[1:])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="GISLR data root (default: the synthetic set in data/synth)")
    p.add_argument("--epochs", type=int, default=4, help="epochs per run (the first is left out)")
    p.add_argument("--steps", type=int, default=8, help="micro-batches per training epoch")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="applied to the base config (default: the seed's, num_workers 4)")
    p.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = p.parse_args(argv)
    if args.epochs < 2:
        p.error("--epochs: at least 2 (the first epoch is left out)")
    _, cache = open_data_or_fail(args.data)
    base = TrainConfig().with_overrides({"epochs": args.epochs, "max_steps_per_epoch": args.steps,
                                         **parse_overrides(args.overrides)}, source="--set")
    if base.num_workers == 0:
        p.error("--set num_workers: persistent workers need num_workers > 0")
    runs: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for r in range(args.repeats):
        for name, o in VARIANTS.items():  # interleaved: drift in machine load hits both alike
            runs[name].append(epoch_seconds_after_the_first(base.with_overrides(o), cache))
            print(f"repeat {r}: {name:<16} {runs[name][-1]:6.2f} s per epoch", flush=True)
    off, on = runs["respawned (off)"], runs["persistent (on)"]
    saved = [a - b for a, b in zip(off, on)]
    ratio = [a / b for a, b in zip(off, on)]
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu-{platform.machine()}"
    print(f"\nseconds per epoch after the first (TIMINGS, {dev}, median of {args.repeats} runs; "
          f"{args.steps} training micro-batches + the validation set per epoch, num_workers {base.num_workers})")
    print(f"{'variant':<16} {'s/epoch':>8}")
    for name, xs in runs.items():
        print(f"{name:<16} {statistics.median(xs):8.2f}")
    print(f"saved per epoch: {statistics.median(saved):.2f} s (runs: {', '.join(f'{s:.2f}' for s in saved)}); "
          f"off / on: {statistics.median(ratio):.2f}x")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"persistent_workers-{dev.replace(' ', '_').lower()}.json"
    path.write_text(json.dumps({
        "device": dev, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "epochs": args.epochs,
        "steps": args.steps, "repeats": args.repeats, "num_workers": base.num_workers,
        "timings": ["epoch_seconds_runs", "saved_seconds_per_epoch", "off_over_on"],
        "epoch_seconds_runs": runs, "saved_seconds_per_epoch": statistics.median(saved),
        "saved_seconds_per_epoch_runs": saved, "off_over_on": statistics.median(ratio),
        "command": "python bench/persistent_workers.py " + " ".join(argv if argv is not None else sys.argv[1:])},
        indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
