"""Samples/s of the training loop: padding to the batch maximum vs padding every batch to max_len.

    python bench/loop_throughput.py [--data data/synth] [--batches 12] [--repeats 3] [--set key=value ...]

Both variants run side by side in one process, interleaved repeat by repeat, on the synthetic set
(real length distribution) through the real loop (`setup` + `train_epoch`). Prints a table and writes
bench/results/loop_throughput-<device>.json.
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

from asl_ray.cli import parse_overrides  # noqa: E402
from asl_ray.config import TrainConfig  # noqa: E402
from asl_ray.data.cache import load_or_build_cache  # noqa: E402
from asl_ray.train.loop import setup, train_epoch  # noqa: E402
from asl_ray.train.runtime import Runtime  # noqa: E402


def ensure_data(path: Path) -> Path:
    if not (path / "train.csv").exists():
        from asl_ray.data.synth import write_synthetic_root
        write_synthetic_root(path)
    return path


def measure(cfg: TrainConfig, cache, runtime: Runtime) -> dict:
    s = setup(cfg, cache, runtime)
    m = train_epoch(s)
    return {"samples_per_s": m["samples_per_s"], "steps_per_s": m["steps_per_s"]}


def device_name(runtime: Runtime) -> str:
    if runtime.device.type == "cuda":
        import torch
        return torch.cuda.get_device_name(runtime.device)
    return f"cpu-{platform.processor() or platform.machine()}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(REPO / "data" / "synth"))
    p.add_argument("--batches", type=int, default=12, help="measured micro-batches per repeat (after warm-up)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = p.parse_args(argv)

    cache = load_or_build_cache(ensure_data(Path(args.data)))
    base = TrainConfig(num_workers=0, epochs=1, max_steps_per_epoch=args.batches + args.warmup,
                       throughput_warmup_steps=args.warmup).with_overrides(parse_overrides(args.overrides))
    runtime = Runtime.create(base)
    variants = {"batch_max": base.with_overrides({"pad_to": "batch_max"}),
                "max_len": base.with_overrides({"pad_to": "max_len"})}
    runs: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.repeats):
        for name, cfg in variants.items():  # interleaved: drift in machine load hits both alike
            runs[name].append(measure(cfg, cache, runtime)["samples_per_s"])
            print(f"repeat {r}: {name:<9} {runs[name][-1]:8.1f} samples/s", flush=True)

    median = {k: statistics.median(v) for k, v in runs.items()}
    ratio = median["batch_max"] / median["max_len"]
    dev = device_name(runtime)
    print(f"\n{'padding':<10} {'samples/s (median)':>20} {'min':>8} {'max':>8}")
    for k, v in runs.items():
        print(f"{k:<10} {median[k]:>20.1f} {min(v):>8.1f} {max(v):>8.1f}")
    print(f"\nbatch_max / max_len = {ratio:.2f}x  on {dev}, {runtime.precision}, "
          f"batch {base.batch_size}, dim {base.dim}, max_len {base.max_len}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "-" for c in dev.lower()).strip("-")
    record = {"benchmark": "loop_throughput", "device": dev, "precision": runtime.precision,
              "date": time.strftime("%Y-%m-%d"), "config": base.to_dict(), "samples_per_s": runs,
              "median_samples_per_s": median, "ratio_batch_max_over_max_len": ratio,
              "data": {"root": args.data, "sequences": len(cache), "mean_length": float(cache.lengths.mean())}}
    path = out / f"loop_throughput-{slug}.json"
    path.write_text(json.dumps(record, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
