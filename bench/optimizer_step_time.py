"""Wall time of the two pieces the fewer-launches optimizer switches change, side by side in one run.

    python bench/optimizer_step_time.py [--repeats 30]

What `host_step_counts` and `foreach_grad_accumulation` change is a small part of a loop step, too small for
the loop's samples/s to resolve (its run-to-run noise is several percent), so each piece is timed alone on
the real model's parameters, every variant interleaved in each repeat (TIMINGS, medians, ratio to today's):
- optimizer step: torch's RAdam as today's loop builds it (CPU: per-parameter loop), torch's RAdam
  `foreach=True` (foreach_optimizer), HostStepRAdam (host_step_counts);
- an accumulating micro-batch's backward (gradients already in .grad): AccumulateGrad vs one foreach add.
At the seed's default model (dim 192, depth 2, micro-batch 12) and the small CPU config's (dim 64, depth 1,
micro-batch 48). Prints a table and writes bench/results/launches-optimizer-step-<device>.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import torch  # noqa: E402

from asl_ray.config import TrainConfig  # noqa: E402
from asl_ray.model import GISLRModel  # noqa: E402
from asl_ray.train.accumulate import make_accumulation  # noqa: E402
from asl_ray.train.optim import make_optimizer  # noqa: E402
from launches import SMALL_CPU, TODAY, device_name  # noqa: E402
from asl_ray.train.runtime import Runtime  # noqa: E402

OPTIMIZERS = {"today (torch RAdam)": {}, "foreach_optimizer": {"foreach_optimizer": True},
              "host_step_counts": {"host_step_counts": True}}
ACCUMULATIONS = {"today (AccumulateGrad)": False, "foreach_grad_accumulation": True}


def _model(cfg: TrainConfig) -> GISLRModel:
    torch.manual_seed(0)
    return GISLRModel.from_config(cfg, 250)


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def optimizer_steps(cfg: TrainConfig, repeats: int) -> dict[str, list[float]]:
    runs = {}
    for name, o in OPTIMIZERS.items():
        model = _model(cfg)
        for p in model.parameters():
            p.grad = torch.randn_like(p) * 1e-3
        opt, _ = make_optimizer(model, cfg.with_overrides(o))
        for _ in range(8):  # state created, past RAdam's unrectified first steps
            opt.step()
        runs[name] = opt
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, opt in runs.items():
            times[name].append(_timed(opt.step))
    return times


def accumulating_backwards(cfg: TrainConfig, repeats: int) -> dict[str, list[float]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(cfg.batch_size, 48, 708, generator=g)
    mask = torch.ones(cfg.batch_size, 48, dtype=torch.bool)
    y = torch.randint(0, 250, (cfg.batch_size,), generator=g)
    runs = {}
    for name, foreach in ACCUMULATIONS.items():
        model = _model(cfg).train()
        params = list(model.parameters())
        backward = make_accumulation(params, foreach)
        backward(torch.nn.functional.cross_entropy(model(x, mask), y))  # .grad exists: every timed one accumulates
        runs[name] = (model, backward)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, (model, backward) in runs.items():
            loss = torch.nn.functional.cross_entropy(model(x, mask), y)
            started = time.perf_counter()
            backward(loss)
            times[name].append(time.perf_counter() - started)
    return times


def summary(times: dict[str, list[float]]) -> dict[str, dict]:
    today = next(iter(times))
    return {name: {"ms_median": 1e3 * statistics.median(t), "ms_runs": [1e3 * s for s in t],
                   "speed_x_today": statistics.median(a / b for a, b in zip(times[today], t))}
            for name, t in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = p.parse_args(argv)
    torch.set_grad_enabled(True)
    configs = {"seed default": TrainConfig().with_overrides(TODAY),
               "small CPU": TrainConfig().with_overrides({**TODAY, **SMALL_CPU})}
    results = {}
    for name, cfg in configs.items():
        results[name] = {"optimizer step": summary(optimizer_steps(cfg, args.repeats)),
                         "accumulating backward": summary(accumulating_backwards(cfg, args.repeats))}
    dev = device_name(Runtime.create(TrainConfig()))
    print(f"\nTIMINGS on {dev}: medians of {args.repeats} interleaved repeats; x today = today's time / the "
          f"variant's (> 1: faster), paired within each repeat")
    print(f"{'config':<13} {'piece':<22} {'variant':<26} {'ms':>9} {'x today':>8}")
    for cname, pieces in results.items():
        for piece, vs in pieces.items():
            for vname, v in vs.items():
                print(f"{cname:<13} {piece:<22} {vname:<26} {v['ms_median']:>9.2f} {v['speed_x_today']:>8.3f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"launches-optimizer-step-{dev.replace(' ', '_').lower()}.json"
    path.write_text(json.dumps({"device": dev, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
                                "repeats": args.repeats, "kind": "timings", "results": results,
                                "command": "python bench/optimizer_step_time.py " +
                                           " ".join(argv if argv is not None else sys.argv[1:])}, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
