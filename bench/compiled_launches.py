"""Launches per training sample, eager vs the whole model compiled, at the seed's default config.

    python bench/compiled_launches.py [--data DIR]

Both variants pad every batch to max_len (one shape, so the compiled one compiles once in its warm-up step)
and use the foreach optimizer. Counted with torch.profiler over one optimizer step after a warm-up step
(`bench/launches.py`'s `count`): top-level aten ops and inductor kernels on CPU, CUDA kernels on CUDA.
Prints a table and writes bench/results/launches-compiled-<device>.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from launches import count, device_name  # noqa: E402 (the sibling bench script)

from asl_ray.cli import open_data_or_fail  # noqa: E402
from asl_ray.config import TrainConfig  # noqa: E402
from asl_ray.train.runtime import Runtime  # noqa: E402

VARIANTS = {"eager": {}, "compiled": {"compile": True}}
COMMON = {"pad_to": "max_len", "foreach_optimizer": True}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="GISLR data root (default: the synthetic set in data/synth)")
    args = p.parse_args(argv)
    _, cache = open_data_or_fail(args.data)
    results = {}
    for name, extra in VARIANTS.items():
        cfg = TrainConfig().with_overrides({**COMMON, **extra})
        runtime = Runtime.create(cfg)
        started = time.perf_counter()
        results[name] = {"overrides": {**COMMON, **extra}, **count(cfg, cache, runtime, profile=True),
                         "wall_seconds": time.perf_counter() - started}
    dev = device_name(runtime)
    print(f"\nlaunches per training sample at the seed's default (batch 12 x 4), padded to max_len, on {dev}")
    print(f"{'variant':<10} {'profiler events/sample':>22} {'first step s (compile)':>22}  top events per step")
    for name, r in results.items():
        top = ", ".join(f"{op} {n}" for op, n in r["profiler_top"][:5])
        print(f"{name:<10} {r['profiler_per_sample']:>22.1f} {r['first_step_seconds']:>22.1f}  {top}")
    out = Path(__file__).resolve().parent / "results" / f"launches-compiled-{dev}.json"
    out.write_text(json.dumps({"device": dev, "config": "seed default", "variants": results}, indent=1, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
