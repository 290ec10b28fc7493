"""How close is the VRAM estimate to a real training step's peak?

On a CUDA GPU: for each config of a grid (batch x dim x max_len x fp16/bf16/fp32), a fresh
subprocess runs real optimizer steps of the real loop pieces (`Runtime.create`, `GISLRModel`,
`make_optimizer`, `TrainStep`) with every sequence at max_len, and records the measured peak:
`torch.cuda.max_memory_reserved()` after a warm-up step (peaks reset after it; the peak with it is
kept too) plus the CUDA context (the process's GPU memory per NVML, or the device's used memory
before vs after, minus what torch reserved). Each is compared with the estimate's unconstrained
peak (`total_bytes`, for this card's compute capability); the table flags errors outside +-10% and
under-predictions worse than -3%. fp16 configs (the ones whose depthwise conv reaches cuDNN) run
again with `cudnn.benchmark` on. With --emulate-gpu, `fits()` (least need under free-and-retry +
context + margin) is checked against OOMs, and with --at-need each config also runs capped at its
predicted fit figure: it must not OOM. On sm_90 and later (H100/H200) SDPA is held to the
memory-efficient kernel (math as its fallback), the one an RTX 4070 runs: cuDNN attention would be
measured otherwise. Results: bench/results/vram_accuracy-<card-name-slug>.json.

Without CUDA: prints each config's estimate and how long it took (first call, cached call) and
writes bench/results/vram_estimates-cpu.json.

    python bench/vram_accuracy.py [--out DIR] [--quick] [--emulate-gpu CARD] [--at-need] [--dry-run]

--dry-run (no GPU needed): builds the grid and every child command line, checks that the kernel
selection and the estimate work, and measures nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from asl_ray.cards import MiB  # noqa: E402
from asl_ray.config import NUM_FEATURE_CHANNELS, TrainConfig  # noqa: E402
NUM_CLASSES = 250
TOLERANCE = 0.10  # |error| within 10%
WORST_UNDER = -0.03  # never under-predict by more than 3%
MEASURED_STEPS = 3  # optimizer steps actually taken (fp16 may skip a few while the scale settles)


# ---- the grid --------------------------------------------------------------------------------

def config_grid(quick: bool, precisions: tuple[str, ...]) -> list[TrainConfig]:
    """batch x model size x max_len x precision; accumulation 2 (the worst case the estimate assumes)."""
    models = [(192, 2)] if quick else [(192, 2), (384, 4)]
    lengths = [384] if quick else [128, 384]
    batches = [8, 32]
    grid = []
    for precision in precisions:
        for dim, depth in models:
            for max_len in lengths:
                for batch in batches:
                    grid.append(TrainConfig(dim=dim, depth=depth, max_len=max_len, batch_size=batch,
                                            precision=precision, gradient_accumulation_steps=2))
    return grid


def describe(cfg: TrainConfig) -> str:
    return f"dim{cfg.dim}/d{cfg.depth} T{cfg.max_len} B{cfg.batch_size} {cfg.precision}"


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


# ---- measuring one config (in its own process, so the context and the allocator start clean) ----

def attention_kernels(capability: tuple[int, int]):
    """The SDPA kernel selection to measure under: on sm_90 and later recent cuDNN makes SDPA prefer
    cuDNN attention, so the memory-efficient kernel (what an RTX 4070 runs, and what the estimate
    traces) is forced, math being its fallback where it cannot run; elsewhere torch chooses."""
    import contextlib
    from torch.nn.attention import SDPBackend, sdpa_kernel
    if capability[0] >= 9:
        return sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
    return contextlib.nullcontext()


def measure_in_this_process(cfg: TrainConfig, emulate_card: Optional[str], benchmark: bool = False,
                            cap_bytes: Optional[int] = None) -> dict[str, Any]:
    from asl_ray.data.dataset import Batch
    from asl_ray.model import GISLRModel
    from asl_ray.train.loop import TrainStep
    from asl_ray.train.optim import make_optimizer
    from asl_ray.train.runtime import Runtime, maybe_compile

    used_before = _process_gpu_bytes()  # 0 before CUDA is initialised, where NVML can see processes
    device_used_before = _device_used_bytes()
    runtime = Runtime.create(cfg)
    device = runtime.device
    torch.cuda.init()
    torch.backends.cudnn.benchmark = benchmark
    free_at_start, cuda_total = torch.cuda.mem_get_info(device)
    fraction = None
    if cap_bytes is not None:  # the card emulated by the predicted fit figure itself
        from asl_ray.train.runtime import emulate_card_memory
        fraction = emulate_card_memory(cap_bytes, device)
    elif emulate_card:
        from asl_ray.cards import resolve_card
        from asl_ray.train.runtime import emulate_card_memory
        fraction = emulate_card_memory(resolve_card(emulate_card).usable_bytes, device)
    result: dict[str, Any] = {"oom": False, "cudnn_benchmark": benchmark, "cap_bytes": cap_bytes, "fraction": fraction,
                              "cuda_total_bytes": int(cuda_total), "free_at_start_bytes": int(free_at_start)}
    kernels = attention_kernels(torch.cuda.get_device_capability(device))
    try:
        kernels.__enter__()
        torch.manual_seed(0)
        model = GISLRModel.from_config(cfg, NUM_CLASSES).to(device)
        optimizer, _ = make_optimizer(model, cfg)
        step = TrainStep(maybe_compile(model, cfg.compile), optimizer, runtime.grad_scaler(), runtime, cfg)
        host = _worst_case_host_batch(cfg, runtime.pin_memory)
        accum = cfg.gradient_accumulation_steps
        micro = 0
        warmed_up = False
        while step.taken_steps < MEASURED_STEPS + 1 and step.attempted_steps < 10 * MEASURED_STEPS:
            at_boundary = (micro + 1) % accum == 0
            step(Batch(*host).to(device, non_blocking=runtime.non_blocking), accum, at_boundary)
            micro += 1
            if at_boundary and not warmed_up and step.taken_steps >= 1:
                # The first window (optimizer state made, cuDNN benchmark tried) is kept apart.
                runtime.synchronize()
                result["peak_reserved_with_warmup_bytes"] = torch.cuda.max_memory_reserved()
                torch.cuda.reset_peak_memory_stats()
                warmed_up = True
        runtime.synchronize()
        result.update(taken_steps=step.taken_steps, attempted_steps=step.attempted_steps)
    except torch.cuda.OutOfMemoryError as e:
        result.update(oom=True, error=str(e).splitlines()[0][:200])
    finally:
        kernels.__exit__(None, None, None)
    torch.cuda.synchronize()
    result.setdefault("peak_reserved_with_warmup_bytes", torch.cuda.max_memory_reserved())
    reserved_now = torch.cuda.memory_reserved()
    peak_reserved = torch.cuda.max_memory_reserved()
    process_after = _process_gpu_bytes()
    if process_after is not None:
        context, how = process_after - (used_before or 0) - reserved_now, "nvml process memory - reserved"
    else:
        free, total = torch.cuda.mem_get_info()
        after = total - free
        context = after - (device_used_before or 0) - reserved_now
        how = "device used after - before - reserved (mem_get_info/nvml)"
    result.update(peak_reserved_bytes=peak_reserved, peak_allocated_bytes=torch.cuda.max_memory_allocated(),
                  context_bytes=int(context), context_method=how,
                  measured_total_bytes=int(peak_reserved + context),
                  device_name=torch.cuda.get_device_name(device), torch=torch.__version__,
                  cuda=torch.version.cuda, capability=list(torch.cuda.get_device_capability(device)))
    return result


def _worst_case_host_batch(cfg: TrainConfig, pin: bool):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(cfg.batch_size, cfg.max_len, NUM_FEATURE_CHANNELS, generator=g)
    mask = torch.ones(cfg.batch_size, cfg.max_len, dtype=torch.bool)
    y = torch.randint(0, NUM_CLASSES, (cfg.batch_size,), generator=g)
    return tuple(t.pin_memory() for t in (x, mask, y)) if pin else (x, mask, y)


def _nvml():
    try:
        import pynvml
        pynvml.nvmlInit()
        index = int(os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or 0)
        return pynvml, pynvml.nvmlDeviceGetHandleByIndex(index)
    except Exception:
        return None, None


def _process_gpu_bytes() -> Optional[int]:
    """This process's GPU memory per NVML (None where NVML cannot say, e.g. inside some containers)."""
    pynvml, handle = _nvml()
    if handle is None:
        return None
    try:
        for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if proc.pid == os.getpid() and proc.usedGpuMemory is not None:
                return int(proc.usedGpuMemory)
        return 0 if not torch.cuda.is_initialized() else None
    except Exception:
        return None


def _device_used_bytes() -> Optional[int]:
    pynvml, handle = _nvml()
    if handle is None:
        return None
    try:
        return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
    except Exception:
        return None


def child_command(cfg: TrainConfig, emulate_card: Optional[str], benchmark: bool = False,
                  cap_bytes: Optional[int] = None) -> list[str]:
    cmd = [sys.executable, __file__, "--measure", json.dumps(cfg.to_dict())]
    if emulate_card:
        cmd += ["--emulate-gpu", emulate_card]
    if benchmark:
        cmd += ["--cudnn-benchmark"]
    if cap_bytes is not None:
        cmd += ["--cap-bytes", str(int(cap_bytes))]
    return cmd


def measure_in_subprocess(cfg: TrainConfig, emulate_card: Optional[str], timeout: float, benchmark: bool = False,
                          cap_bytes: Optional[int] = None) -> dict[str, Any]:
    cmd = child_command(cfg, emulate_card, benchmark, cap_bytes)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]}


# ---- comparing and reporting ------------------------------------------------------------------

def error_of(estimate_bytes: int, measured_bytes: int) -> float:
    return (estimate_bytes - measured_bytes) / measured_bytes


def run_gpu(args) -> Path:
    from asl_ray.vram.estimate import estimate_peak_vram
    card_name = torch.cuda.get_device_name(0)
    capability = tuple(torch.cuda.get_device_capability(0))
    free, cuda_total = torch.cuda.mem_get_info(0)
    precisions = ("fp16", "bf16", "fp32") if torch.cuda.is_bf16_supported() else ("fp16", "fp32")
    grid = config_grid(args.quick, precisions)
    card = None
    if args.emulate_gpu:
        from asl_ray.cards import resolve_card
        # The emulated card's memory, this card's kernels and workspaces (what the run really uses).
        card = dataclasses.replace(resolve_card(args.emulate_gpu), compute_capability=capability)
    rows = []
    print(f"{card_name} (sm_{capability[0]}{capability[1]}, CUDA total {cuda_total / MiB:.0f} MiB): "
          f"{len(grid)} configs" + (f", emulating {card.describe()}" if card else ""))
    header = (f"{'config':<28} {'bench':>5} {'estimate':>9} {'measured':>9} {'reserved':>9} {'context':>8} "
              f"{'error':>7}  ok")
    print(header + "\n" + "-" * len(header))
    for cfg in grid:
        est = estimate_peak_vram(cfg, NUM_CLASSES, capability)
        for benchmark in ((False, True) if cfg.precision == "fp16" else (False,)):
            rows.append(_measure_row(cfg, est, card, benchmark, args))
    scored = [r for r in rows if "error" in r]
    admitted = [r for r in rows if r.get("predicted_fits")]
    summary = {
        "configs": len(rows), "measured": len(scored),
        "within_10pct": sum(r["within_10pct"] for r in scored),
        "under_by_more_than_3pct": sum(r["under_by_more_than_3pct"] for r in scored),
        "mean_abs_error": sum(abs(r["error"]) for r in scored) / len(scored) if scored else None,
        "worst_error": min((r["error"] for r in scored), default=None),
        "median_context_bytes": _median([r["measurement"]["context_bytes"] for r in scored]),
        "fit_agrees_with_run": sum(r["predicted_fits"] == r["ran_without_oom"] for r in rows if "predicted_fits" in r),
        "oom_among_admitted": sum(not r["ran_without_oom"] for r in admitted),
        "oom_at_predicted_need": sum(r["at_need"].get("oom", False) for r in rows if "at_need" in r),
        "goal_met": bool(scored) and all(r["within_10pct"] and not r["under_by_more_than_3pct"] for r in scored)
        and not any(not r["ran_without_oom"] for r in admitted),
    }
    print(f"\nwithin +-10%: {summary['within_10pct']}/{len(scored)}; "
          f"under-predicted by more than 3%: {summary['under_by_more_than_3pct']}; "
          f"OOM among admitted: {summary['oom_among_admitted']}; "
          f"OOM capped at the predicted need: {summary['oom_at_predicted_need']}; "
          f"median measured context: {(summary['median_context_bytes'] or 0) / MiB:.0f} MiB")
    out = Path(args.out) / f"vram_accuracy-{slug(card_name)}.json"
    _write(out, {"card": card_name, "compute_capability": list(capability), "cuda_total_bytes": int(cuda_total),
                 "free_bytes_at_start": int(free), "emulated_card": args.emulate_gpu, "summary": summary,
                 "rows": rows, **_environment()})
    return out


def _measure_row(cfg: TrainConfig, est, card, benchmark: bool, args) -> dict[str, Any]:
    m = measure_in_subprocess(cfg, args.emulate_gpu, args.timeout, benchmark)
    row = {"config": describe(cfg), "cudnn_benchmark": benchmark, "overrides": _overrides(cfg),
           "estimate_bytes": est.total_bytes, "estimate_reserved_bytes": est.reserved_peak_bytes(),
           "estimate_need_bytes": est.need_bytes, "estimate_fit_bytes": est.fit_bytes(),
           "estimate_breakdown": est.breakdown, "measurement": m}
    notes = ""
    if card is not None and ("measured_total_bytes" in m or m.get("oom")):
        from asl_ray.vram.fit import fits
        row.update(predicted_fits=fits(cfg, card, NUM_CLASSES), ran_without_oom=not m.get("oom"))
        notes += f"  predicted {'fits' if row['predicted_fits'] else 'OOM'}"
    if args.at_need and not benchmark:
        row["at_need"] = measure_in_subprocess(cfg, None, args.timeout, False, cap_bytes=est.fit_bytes())
        notes += f"  at need: {'OOM' if row['at_need'].get('oom') else 'ran'}"
    bench = "on" if benchmark else "off"
    if "measured_total_bytes" in m and not m.get("oom"):
        err = error_of(est.total_bytes, m["measured_total_bytes"])
        row.update(error=err, within_10pct=abs(err) <= TOLERANCE, under_by_more_than_3pct=err < WORST_UNDER)
        ok = "yes" if row["within_10pct"] and not row["under_by_more_than_3pct"] else "NO"
        print(f"{describe(cfg):<28} {bench:>5} {est.total_mib:>8.0f}M {m['measured_total_bytes'] / MiB:>8.0f}M "
              f"{m['peak_reserved_bytes'] / MiB:>8.0f}M {m['context_bytes'] / MiB:>7.0f}M {100 * err:>6.1f}%  "
              f"{ok}{notes}")
    else:
        print(f"{describe(cfg):<28} {bench:>5} {est.total_mib:>8.0f}M  {'OOM' if m.get('oom') else m.get('error', '?')}"
              f"{notes}")
    return row


def dry_run(args) -> int:
    """Without a GPU: the grid, every child command, the kernel selection and one estimate."""
    from asl_ray.vram.estimate import estimate_peak_vram
    grid = config_grid(args.quick, ("fp16", "bf16", "fp32"))
    for cfg in grid:
        for benchmark in ((False, True) if cfg.precision == "fp16" else (False,)):
            cmd = child_command(cfg, args.emulate_gpu, benchmark)
            assert cmd[1] == __file__ and json.loads(cmd[3]) == cfg.to_dict(), cmd
            print(f"would measure {describe(cfg)} (cudnn.benchmark {'on' if benchmark else 'off'})")
    attention_kernels((9, 0)).__enter__()  # the H100/H200 selection must exist in this torch
    est = estimate_peak_vram(grid[0], NUM_CLASSES, (9, 0))
    print(f"estimate of {describe(grid[0])} on sm_90: peak {est.total_mib:.0f} MiB, need {est.need_bytes / MiB:.0f} "
          f"MiB, fit {est.fit_bytes() / MiB:.0f} MiB")
    print(f"dry run: {len(grid)} configs wired; nothing measured (no GPU figures)")
    return 0


def run_cpu(args) -> Path:
    """Estimates and their cost on this machine: the first call for each config (a trace, or a replay
    once two batch sizes of the same shape are known) and the cached call."""
    from asl_ray.vram import estimate as E
    grid = config_grid(args.quick, ("fp16", "bf16", "fp32"))
    with tempfile.TemporaryDirectory() as cache_dir:
        os.environ["ASL_RAY_CACHE_DIR"] = cache_dir  # a cold disk cache, so first calls really compute
        E.clear_memory_cache()
        started = time.perf_counter()
        from torch._subclasses.fake_tensor import FakeTensorMode
        FakeTensorMode()  # its one-off import (torch._dynamo) is reported apart from the first trace
        import_seconds = time.perf_counter() - started
        print(f"one-off FakeTensorMode import: {import_seconds:.2f} s")
        card = None
        if args.emulate_gpu:
            from asl_ray.cards import resolve_card
            card = resolve_card(args.emulate_gpu)
            print(card.describe())
        header = f"{'config':<28} {'estimate':>9} {'first call':>11} {'cached':>9}  how" + ("  fits" if card else "")
        print(header + "\n" + "-" * len(header))
        rows = []
        for cfg in grid:
            first = E.estimate_peak_vram(cfg, NUM_CLASSES)
            cached = E.estimate_peak_vram(cfg, NUM_CLASSES)
            how = "traced" if "(traced;" in first.method else "replay of 2 traced batch sizes"
            row = {"config": describe(cfg), "overrides": _overrides(cfg), "estimate_bytes": first.total_bytes,
                   "need_bytes": first.need_bytes, "fit_bytes": first.fit_bytes(), "breakdown": first.breakdown, "first_call_seconds": first.seconds,
                   "cached_call_seconds": cached.seconds, "first_call": how}
            if card is not None:
                from asl_ray.vram.fit import fits
                row["predicted_fits"] = fits(cfg, card, NUM_CLASSES)
            print(f"{describe(cfg):<28} {first.total_mib:>8.0f}M {first.seconds:>10.3f}s "
                  f"{1000 * cached.seconds:>7.2f}ms  {how}" + (f"  {row['predicted_fits']}" if card else ""))
            rows.append(row)
        reference = _time_reference_config(E, Path(cache_dir) / "reference")
        E.clear_memory_cache()
    for name, cfg in (("TrainConfig()", TrainConfig()), ("large (dim 384, depth 4, batch 8)",
                                                        TrainConfig(dim=384, depth=4, batch_size=8))):
        print(f"\n{name}:\n{E.estimate_peak_vram(cfg, NUM_CLASSES).table()}")
    out = Path(args.out) / "vram_estimates-cpu.json"
    _write(out, {"device": "cpu", "emulated_card": args.emulate_gpu,
                 "one_off_import_seconds": import_seconds, "largest_config": reference, "method": E.METHOD,
                 "estimator_version": E.ESTIMATOR_VERSION, "rows": rows, **_environment()})
    return out


def _time_reference_config(E, cache_dir: Path) -> dict[str, Any]:
    """The largest config the estimator is meant for, traced from scratch (no traces in memory)."""
    cfg = TrainConfig(dim=384, depth=4, batch_size=64, max_len=384)
    E.clear_memory_cache()
    os.environ["ASL_RAY_CACHE_DIR"] = str(cache_dir)
    first = E.estimate_peak_vram(cfg, NUM_CLASSES)
    cached = E.estimate_peak_vram(cfg, NUM_CLASSES)
    print(f"\n{describe(cfg)} (largest config, traced from scratch): first call {first.seconds:.3f} s, "
          f"cached {1000 * cached.seconds:.2f} ms, estimate {first.total_mib:.0f} MiB")
    return {"config": describe(cfg), "estimate_bytes": first.total_bytes, "first_call_seconds": first.seconds,
            "cached_call_seconds": cached.seconds}


def _overrides(cfg: TrainConfig) -> dict[str, Any]:
    default = TrainConfig()
    return {k: v for k, v in dataclasses.asdict(cfg).items() if getattr(default, k) != v}


def _median(values: list) -> Optional[float]:
    values = sorted(values)
    return values[len(values) // 2] if values else None


def _environment() -> dict[str, Any]:
    from asl_ray.vram import constants
    return {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "constants": {k: getattr(constants, k) for k in dir(constants) if k.isupper()}}


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    print(f"\nwrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(REPO / "bench" / "results"), help="folder for the JSON results")
    p.add_argument("--quick", action="store_true", help="fewer configs")
    p.add_argument("--emulate-gpu", metavar="CARD",
                   help="cap the allocator to this card (e.g. rtx4070) and check fits() against OOMs")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per measured config")
    p.add_argument("--at-need", action="store_true",
                   help="also run each config capped at its predicted fit figure (it must not OOM)")
    p.add_argument("--dry-run", action="store_true", help="check the wiring without a GPU; measure nothing")
    p.add_argument("--measure", help=argparse.SUPPRESS)  # child process: one config as JSON
    p.add_argument("--cudnn-benchmark", action="store_true", help=argparse.SUPPRESS)  # child process
    p.add_argument("--cap-bytes", type=int, help=argparse.SUPPRESS)  # child process
    args = p.parse_args(argv)
    if args.measure:
        cfg = TrainConfig.from_dict(json.loads(args.measure))
        print(json.dumps(measure_in_this_process(cfg, args.emulate_gpu, args.cudnn_benchmark, args.cap_bytes)))
        return 0
    if args.dry_run:
        return dry_run(args)
    if torch.cuda.is_available():
        run_gpu(args)
    else:
        run_cpu(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
