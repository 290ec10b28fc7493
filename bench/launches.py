"""Kernel launches per training sample and samples/s: today's loop, each fewer-launches switch alone, all of them.

    python bench/launches.py [--data DIR] [--steps 3] [--repeats 2] [--compile] [--set key=value ...]

At the seed's default (batch 12 x accumulation 4, dim 192, depth 2) and at the best CPU config of the
ablation (the same with length bucketing: README, Performance). Launches are counted over one whole
optimizer step of the real `TrainStep` on real loader batches, after a first step that creates the
optimizer state: aten ops under a counting TorchDispatchMode in eager ("ops", views apart), and
torch.profiler events for today's loop, "all" and any compiled variant ("profiler": top-level CPU aten
ops and inductor kernels; CUDA kernels on CUDA), the only count a compiled variant has. Samples/s come from the real loop
(`asl_ray.ablate.measure`, loader included), every variant interleaved in each repeat, medians.
Prints a table and writes bench/results/launches-<device>.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from itertools import islice
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from asl_ray.ablate.launches import count_train_steps, profiled_kernels, run_steps  # noqa: E402
from asl_ray.ablate.measure import measure  # noqa: E402
from asl_ray.cli import open_data_or_fail, parse_overrides  # noqa: E402
from asl_ray.config import FIELD_NAMES, TrainConfig  # noqa: E402
from asl_ray.train.loop import setup  # noqa: E402
from asl_ray.train.runtime import Runtime  # noqa: E402

GOAL_PER_SAMPLE = 15
EAGER_SWITCHES = {"foreach_optimizer": {"foreach_optimizer": True},
                  "features_on_device": {"features_on_device": True},
                  "pad_to=ladder": {"pad_to": "ladder"}}
# Not a variant of its own: it launches nothing different and a one-epoch measurement cannot show it
# (it saves the workers' re-spawn between epochs). It is part of "all".
ACROSS_EPOCHS_ONLY = {"persistent_workers": True}


def variants(with_compile: bool) -> dict[str, dict]:
    out = {"today": {}, **{k: v for k, v in EAGER_SWITCHES.items() if all(f in FIELD_NAMES for f in v)}}
    every = {**{k: v for o in out.values() for k, v in o.items()}, **ACROSS_EPOCHS_ONLY}
    if with_compile:
        out["compile"] = {"compile": True}
    out["all"] = {**every, **({"compile": True} if with_compile else {})}
    return out


def count(cfg: TrainConfig, cache, runtime: Runtime, profile: bool) -> dict:
    """Launches over one optimizer step after a first one (optimizer state, compilation) on real batches;
    the profiler's count too when `profile` (always for a compiled variant)."""
    cfg = cfg.with_overrides({"num_workers": 0, "epochs": 1})
    torch.manual_seed(cfg.seed)
    s = setup(cfg, cache, runtime)
    s.model.train()
    accum = cfg.gradient_accumulation_steps
    profile = profile or cfg.compile
    batches = list(islice(s.train_loader, (3 if profile else 2) * accum))
    started = time.perf_counter()
    run_steps(s.step, batches[:accum], accum, runtime.device)
    runtime.synchronize()
    first_step_s = time.perf_counter() - started
    result = {"first_step_seconds": first_step_s}
    if not cfg.compile:
        ops = count_train_steps(s.step, batches[accum:2 * accum], accum, runtime.device)
        result.update(ops_per_sample=ops.per_sample(), dispatched_per_sample=ops.dispatched_per_sample(),
                      top_ops=ops.top(8), samples=ops.samples)
    if profile:
        prof = profiled_kernels(lambda: run_steps(s.step, batches[2 * accum:], accum, runtime.device),
                                runtime.device)
        result.update(profiler_per_sample=prof.per_sample(), profiler_top=prof.top(8))
    return result


def device_name(runtime: Runtime) -> str:
    if runtime.device.type == "cuda":
        return torch.cuda.get_device_name(runtime.device)
    return f"cpu-{platform.machine()}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="GISLR data root (default: the synthetic set in data/synth)")
    p.add_argument("--steps", type=int, default=2, help="measured optimizer steps per variant and repeat")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="add torch.compile variants (minutes of compilation)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = p.parse_args(argv)

    _, cache = open_data_or_fail(args.data)
    seed_default = TrainConfig().with_overrides(parse_overrides(args.overrides), source="--set")
    bases = {"seed default": seed_default,
             "best CPU (bucketing)": seed_default.with_overrides({"length_bucketing": True})}
    runtime = Runtime.create(seed_default)
    table = {}
    for base_name, base in bases.items():
        vs = {name: base.with_overrides(o) for name, o in variants(args.compile).items()}
        counts = {name: count(cfg, cache, runtime, profile=name in ("today", "all")) for name, cfg in vs.items()}
        print(f"{base_name}: counted", flush=True)
        speeds: dict[str, list[float]] = {name: [] for name in vs}
        for r in range(args.repeats):
            for name, cfg in vs.items():  # interleaved: drift in machine load hits every variant alike
                speeds[name].append(measure(cfg, cache, args.steps, runtime.device).samples_per_s)
                print(f"{base_name} repeat {r}: {name:<20} {speeds[name][-1]:7.1f} samples/s", flush=True)
        today = statistics.median(speeds["today"])
        table[base_name] = {
            "config": {"batch_size": base.batch_size, "accumulation": base.gradient_accumulation_steps,
                       "dim": base.dim, "depth": base.depth, "length_bucketing": base.length_bucketing},
            "variants": {name: {"overrides": variants(args.compile)[name], **counts[name],
                                "samples_per_s": statistics.median(speeds[name]), "samples_per_s_runs": speeds[name],
                                "speed_x_today": statistics.median(speeds[name]) / today} for name in vs}}
    dev = device_name(runtime)
    print(f"\nlaunches per training sample and samples/s on {dev} ({runtime.precision}), one run, "
          f"medians of {args.repeats} repeats x {args.steps} optimizer steps")
    header = (f"{'config':<22} {'variant':<20} {'aten ops/sample':>15} {'+views':>8} {'profiler/sample':>15} "
              f"{'samples/s':>9} {'x today':>7} {'1st step s':>10}")
    print(header)
    for base_name, t in table.items():
        for name, v in t["variants"].items():
            ops = f"{v['ops_per_sample']:.1f}" if "ops_per_sample" in v else "-"
            views = f"{v['dispatched_per_sample']:.1f}" if "dispatched_per_sample" in v else "-"
            prof = f"{v['profiler_per_sample']:.1f}" if "profiler_per_sample" in v else "-"
            print(f"{base_name:<22} {name:<20} {ops:>15} {views:>8} {prof:>15} "
                  f"{v['samples_per_s']:>9.1f} {v['speed_x_today']:>7.2f} {v['first_step_seconds']:>10.1f}")
    best_eager = min(v.get("ops_per_sample", float("inf")) for v in table["seed default"]["variants"].values())
    print(f"\ngoal: at most {GOAL_PER_SAMPLE} launches per sample at the seed's default; best eager here "
          f"{best_eager:.1f} aten ops/sample: {'met' if best_eager <= GOAL_PER_SAMPLE else 'missed'}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"launches-{dev.replace(' ', '_').lower()}.json"
    path.write_text(json.dumps({
        "device": dev, "precision": runtime.precision, "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"), "steps": args.steps, "repeats": args.repeats,
        "goal_launches_per_sample_at_seed_default": GOAL_PER_SAMPLE, "results": table,
        "command": "python bench/launches.py " + " ".join(argv if argv is not None else sys.argv[1:])},
        indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
