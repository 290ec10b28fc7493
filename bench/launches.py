"""Kernel launches per training sample and samples/s: today's loop, each fewer-launches switch alone, all of them.

    python bench/launches.py [--data DIR] [--steps 2] [--repeats 3] [--compile] [--set key=value ...]

At the seed's default (batch 12 x accumulation 4, dim 192, depth 2) and at the small CPU config (batch 48 x 1,
dim 64, depth 1, max_len 64). COUNTS (exact, machine-independent): launches over one whole optimizer step of
the real `TrainStep` on real loader batches, after the steps that create the optimizer state and compile every
shape the counted step sees: "launches" = torch.profiler events that run a kernel (top-level CPU aten ops that
launch one - no views, no `to` that copies nothing - plus inductor's fused C++ kernels, compiled with
`cpp.enable_kernel_profile`; CUDA kernels on CUDA), the one count every variant has; "aten ops" = aten ops under
a counting TorchDispatchMode (eager variants only, views apart). TIMINGS (this machine, noisy): samples/s from
the real loop (`asl_ray.ablate.measure`, loader included), every variant interleaved in each repeat, medians,
and the ratio to today's loop within the same run; compile seconds = torch.compile's own time (CompileClock)
for every shape of the counted steps, cold (no FX graph cache). With --compile: `compile` (+ the ladder, its
static shapes) alone and in "all". Prints a table and writes bench/results/launches-<device>.json.
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
import torch._inductor.config as inductor_config  # noqa: E402

from asl_ray.ablate.launches import count_train_steps, profiled_kernels, run_steps  # noqa: E402
from asl_ray.ablate.measure import measure  # noqa: E402
from asl_ray.cli import open_data_or_fail, parse_overrides  # noqa: E402
from asl_ray.config import FIELD_NAMES, TrainConfig  # noqa: E402
from asl_ray.train.loop import setup  # noqa: E402
from asl_ray.train.runtime import Runtime, compile_metrics  # noqa: E402

GOAL_PER_SAMPLE = 15
EAGER_SWITCHES = {"foreach_optimizer": {"foreach_optimizer": True},
                  "features_on_device": {"features_on_device": True},
                  "pad_to=ladder": {"pad_to": "ladder"},
                  "host_step_counts": {"host_step_counts": True},
                  "foreach_grad_accumulation": {"foreach_grad_accumulation": True}}
COMPILE = {"compile": True, "pad_to": "ladder"}  # static lengths: one graph per rung
# Not a variant of its own: it launches nothing different and a one-epoch measurement cannot show it
# (it saves the workers' re-spawn between epochs). It is part of "all".
ACROSS_EPOCHS_ONLY = {"persistent_workers": True}
SMALL_CPU = {"batch_size": 48, "gradient_accumulation_steps": 1, "dim": 64, "depth": 1, "max_len": 64}


# Today's loop whatever the defaults become: every switch of this table off.
TODAY = {"foreach_optimizer": False, "features_on_device": False, "pad_to": "batch_max", "host_step_counts": False,
         "foreach_grad_accumulation": False, "persistent_workers": False, "compile": False}


def variants(with_compile: bool) -> dict[str, dict]:
    """today, each switch alone, all (eager) and, with compile, compile alone and everything."""
    switches = {k: v for k, v in EAGER_SWITCHES.items() if all(f in FIELD_NAMES for f in v)}
    every = {k: v for o in switches.values() for k, v in o.items()} | ACROSS_EPOCHS_ONLY
    out = {"today": {}, **switches, **({"compile": COMPILE} if with_compile else {}),
           "all eager" if with_compile else "all": every, **({"all": every | COMPILE} if with_compile else {})}
    return {name: TODAY | o for name, o in out.items()}


def count(cfg: TrainConfig, cache, runtime: Runtime, dispatch: bool = True) -> dict:
    """Launches over one optimizer step on real batches, after a first step (optimizer state, compilation)
    and, for a compiled model, a pass over the counted batches (every shape compiled before counting)."""
    cfg = cfg.with_overrides({"num_workers": 0, "epochs": 1})
    if cfg.compile:
        torch._dynamo.reset()  # compile under the kernel-profile setting, and time it cold
    with inductor_config.patch({"cpp.enable_kernel_profile": True, "fx_graph_cache": False}):
        torch.manual_seed(cfg.seed)
        s = setup(cfg, cache, runtime)
        s.model.train()
        accum = cfg.gradient_accumulation_steps
        batches = list(islice(s.train_loader, 3 * accum))
        counted = batches[2 * accum:]
        started = time.perf_counter()
        run_steps(s.step, batches[:2 * accum], accum, runtime.device)
        if cfg.compile:
            run_steps(s.step, counted, accum, runtime.device)
        runtime.synchronize()
        result = {"warmup_seconds": time.perf_counter() - started, **compile_metrics(s.step.model)}
        if dispatch and not cfg.compile:
            ops = count_train_steps(s.step, counted, accum, runtime.device)
            result.update(ops_per_sample=ops.per_sample(), dispatched_per_sample=ops.dispatched_per_sample(),
                          top_ops=ops.top(8))
        prof = profiled_kernels(lambda: run_steps(s.step, counted, accum, runtime.device), runtime.device)
        result.update(launches_per_sample=prof.per_sample(), samples=prof.samples, profiler_top=prof.top(10),
                      inductor_kernels_per_sample=sum(n for name, n in prof.ops.items() if "cpp_fused" in name
                                                      or "triton" in name) / max(1, prof.samples))
    return result


def device_name(runtime: Runtime) -> str:
    if runtime.device.type == "cuda":
        return torch.cuda.get_device_name(runtime.device)
    return f"cpu-{platform.machine()}"


def run_table(bases: dict[str, TrainConfig], vs: dict[str, dict], cache, runtime: Runtime, steps: int,
              repeats: int) -> dict:
    table = {}
    for base_name, base in bases.items():
        cfgs = {name: base.with_overrides(o) for name, o in vs.items()}
        counts = {}
        for name, cfg in cfgs.items():
            counts[name] = count(cfg, cache, runtime)
            print(f"{base_name}: {name:<26} {counts[name]['launches_per_sample']:7.1f} launches/sample"
                  + (f", compiled in {counts[name]['compile_seconds']:.0f} s" if cfg.compile else ""), flush=True)
        for name, cfg in cfgs.items():
            if cfg.compile and repeats:  # every shape the measured steps see compiles here, outside the figures
                measure(cfg, cache, steps, runtime.device)
        speeds: dict[str, list[float]] = {name: [] for name in cfgs}
        for r in range(repeats):
            for name, cfg in cfgs.items():  # interleaved: drift in machine load hits every variant alike
                speeds[name].append(measure(cfg, cache, steps, runtime.device).samples_per_s)
                print(f"{base_name} repeat {r}: {name:<26} {speeds[name][-1]:7.1f} samples/s", flush=True)
        paired = {name: [a / b for a, b in zip(speeds[name], speeds["today"])] for name in cfgs}
        table[base_name] = {
            "config": {"batch_size": base.batch_size, "accumulation": base.gradient_accumulation_steps,
                       "dim": base.dim, "depth": base.depth, "max_len": base.max_len},
            "variants": {name: {"overrides": vs[name], **counts[name],
                                "samples_per_s": _median(speeds[name]), "samples_per_s_runs": speeds[name],
                                "speed_x_today": _median(paired[name]),
                                "speed_x_today_runs": paired[name]} for name in cfgs}}
    return table


def _median(xs: list[float]):
    return statistics.median(xs) if xs else None  # --repeats 0: counts only


def print_table(table: dict, dev: str, precision: str, steps: int, repeats: int) -> None:
    print(f"\nlaunches per training sample (COUNTS) and samples/s (TIMINGS) on {dev} ({precision}), one run, "
          f"medians of {repeats} repeats x {steps} optimizer steps")
    print(f"{'config':<13} {'variant':<26} {'launches/sample':>15} {'of which inductor':>17} {'aten ops/sample':>15} "
          f"{'samples/s':>9} {'x today':>7} {'compile s':>9}")
    print(f"{'':<13} {'':<26} {'(count)':>15} {'(count)':>17} {'(count, eager)':>15} "
          f"{'(timing)':>9} {'(timing)':>7} {'(timing)':>9}")
    for base_name, t in table.items():
        for name, v in t["variants"].items():
            ops = f"{v['ops_per_sample']:.1f}" if "ops_per_sample" in v else "-"
            compiled = f"{v['compile_seconds']:.0f}" if v["compile_mode"] != "off" else "-"
            sps = f"{v['samples_per_s']:.1f}" if v["samples_per_s"] is not None else "-"
            ratio = f"{v['speed_x_today']:.2f}" if v["speed_x_today"] is not None else "-"
            print(f"{base_name:<13} {name:<26} {v['launches_per_sample']:>15.1f} "
                  f"{v['inductor_kernels_per_sample']:>17.1f} {ops:>15} {sps:>9} {ratio:>7} {compiled:>9}")
    seed = table.get("seed default")
    if seed:
        name, v = min(seed["variants"].items(), key=lambda kv: kv[1]["launches_per_sample"])
        print(f"\ngoal: at most {GOAL_PER_SAMPLE} launches per sample at the seed's default; fewest here: {name} "
              f"{v['launches_per_sample']:.1f}: {'met' if v['launches_per_sample'] <= GOAL_PER_SAMPLE else 'missed'}")


def write(table: dict, runtime: Runtime, dev: str, args, argv, stem: str) -> Path:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem}-{dev.replace(' ', '_').lower()}.json"
    path.write_text(json.dumps({
        "device": dev, "precision": runtime.precision, "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"), "steps": args.steps, "repeats": args.repeats,
        "counts": ["launches_per_sample", "inductor_kernels_per_sample", "ops_per_sample", "dispatched_per_sample"],
        "timings": ["samples_per_s", "speed_x_today", "compile_seconds", "warmup_seconds"],
        "goal_launches_per_sample_at_seed_default": GOAL_PER_SAMPLE, "results": table,
        "command": f"python bench/{Path(sys.argv[0]).name} " + " ".join(argv if argv is not None else sys.argv[1:])},
        indent=2, default=str))
    print(f"wrote {path}")
    return path


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", default=None, help="GISLR data root (default: the synthetic set in data/synth)")
    p.add_argument("--steps", type=int, default=2, help="measured optimizer steps per variant and repeat")
    p.add_argument("--repeats", type=int, default=3, help="0: counts only, no samples/s")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="applied to both configs")
    p.add_argument("--only-config", choices=("seed default", "small CPU"), default=None)
    p.add_argument("--only-variants", default=None, metavar="NAME,NAME",
                   help="comma-separated variant names (default: all; 'today' is always kept, the ratios need it)")
    p.add_argument("--out", default=str(REPO / "bench" / "results"))
    return p


def main(argv=None, with_compile: bool = False, stem: str = "launches") -> int:
    p = parser(__doc__.splitlines()[0])
    if not with_compile:
        p.add_argument("--compile", action="store_true", help="add torch.compile variants (minutes of compilation)")
    args = p.parse_args(argv)
    _, cache = open_data_or_fail(args.data)
    seed_default = TrainConfig().with_overrides(parse_overrides(args.overrides), source="--set")
    bases = {"seed default": seed_default, "small CPU": seed_default.with_overrides(SMALL_CPU)}
    if args.only_config:
        bases = {args.only_config: bases[args.only_config]}
    runtime = Runtime.create(seed_default)
    vs = variants(with_compile or args.compile)
    if args.only_variants:
        wanted = {"today", *(n.strip() for n in args.only_variants.split(","))}
        unknown = wanted - set(vs)
        if unknown:
            p.error(f"--only-variants: unknown {', '.join(sorted(unknown))}; known: {', '.join(vs)}")
        vs = {n: o for n, o in vs.items() if n in wanted}
    table = run_table(bases, vs, cache, runtime, args.steps, args.repeats)
    dev = device_name(runtime)
    print_table(table, dev, runtime.precision, args.steps, args.repeats)
    write(table, runtime, dev, args, argv, stem)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
