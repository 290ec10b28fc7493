"""The GPU check's steps: what `bench/gpu_check.sh` runs on a lent GPU machine, one process per step.

    python bench/gpu_check.py --plan                 # the steps and their time limits (the .sh reads this)
    python bench/gpu_check.py STEP --out DIR [--dry-run]

Steps, cheapest and most decision-grade first (each writes DIR/STEP.json):
  facts    torch, CUDA, cuDNN, driver; mem_get_info's total beside total_memory and the card table's figure.
  probe    this card's CUDA context (measured, labelled with the card), cuBLAS workspace per handle, the SDPA
           kernel torch picks and the one forced where a 4070's memory is predicted, cuDNN's workspace with
           CUDNN_CONV_WSCAP_DBG=1 vs unset.
  vram     predicted reserved (the estimate less context and compile kernels) vs measured
           max_memory_reserved for 10 configs under RTX 4070 emulation, the fit boundary and 10% above it
           included; OOM or not; the fraction actually set; the context apart.
  speed    samples/s (the plan search's step measurer, real loader batches) of the seed default and of the
           fewest-launches config, eager and compiled, as ratios from one run; host launches
           (cudaLaunchKernel, cuLaunchKernel, cudaGraphLaunch) per sample and the GPU's busy fraction.
  tests    the GPU tests and the CUDA-path tests, on CUDA.
  summary  DIR/summary.md (one table), the logs in DIR/logs.tar.gz.
--dry-run (CI, no GPU): every step's code runs on the CPU where it can (the configs, the child commands, the
measurer on a tiny config, the profiler's counting) and nothing is reported as a GPU figure.
Uses only torch 2.11's API (the lent machine's torch); no Ray, no Optuna.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import torch  # noqa: E402

from asl_ray.cards import CARDS, MiB, resolve_card  # noqa: E402
from asl_ray.config import TrainConfig  # noqa: E402
from gpu_check_measure import (LAUNCH_EVENTS, classify_attention_kernels, context_child, cudnn_child,  # noqa: E402,F401
                               speed_child, union_length)

EMULATED = "rtx4070"
BUDGET_S = 420
"""The steps' limits add up to at most this (7 minutes on an H100); the machine's start is on top."""


@dataclass(frozen=True)
class Step:
    name: str
    limit_s: int
    """Its own timeout in gpu_check.sh."""


STEPS = (Step("facts", 10), Step("probe", 45), Step("vram", 155), Step("speed", 160), Step("tests", 40),
         Step("summary", 10))


def on_gpu() -> bool:
    return torch.cuda.is_available()


def write(out: Path, name: str, data: dict) -> Path:
    path = out / f"{name}.json"
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    return path


def child(args: list[str], timeout: float, env: Optional[dict] = None) -> dict:
    """Run `python gpu_check.py ARGS` (a clean CUDA context of its own); its last JSON line, or an error.
    `env`: variables to set, or to remove where the value is None."""
    merged = {**os.environ, **{k: v for k, v in (env or {}).items() if v is not None}}
    for k in [k for k, v in (env or {}).items() if v is None]:
        merged.pop(k, None)
    try:
        proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, timeout=timeout,
                              cwd=REPO, env=merged)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]}


# ---- facts ------------------------------------------------------------------------------------

def facts(out: Path, dry: bool) -> dict:
    d: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
                         "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                         "api_missing": missing_api()}
    if on_gpu():
        props = torch.cuda.get_device_properties(0)
        free, total = torch.cuda.mem_get_info(0)
        d.update(card=props.name, capability=f"sm_{props.major}{props.minor}", sms=props.multi_processor_count,
                 total_memory_mib=props.total_memory / MiB, mem_get_info_total_mib=total / MiB,
                 mem_get_info_free_mib=free / MiB, bf16=torch.cuda.is_bf16_supported(),
                 nvidia_smi=_nvidia_smi("--query-gpu=name,memory.total,driver_version"))
        profile = _profile_of(props.name)
        if profile is not None:
            d["card_table"] = {"name": profile[0], "cuda_total_mib": profile[1].cuda_total_mib,
                               "source": profile[1].source,
                               "error_mib": profile[1].cuda_total_mib - total / MiB}
    return d


def missing_api() -> list[str]:
    """What the check's code paths use that this torch lacks (the lent machine runs torch 2.11)."""
    needed = {"torch.nn.attention.sdpa_kernel": lambda: __import__("torch.nn.attention").nn.attention.sdpa_kernel,
              "SDPBackend.EFFICIENT_ATTENTION": lambda: torch.nn.attention.SDPBackend.EFFICIENT_ATTENTION,
              "torch.compiler.cudagraph_mark_step_begin": lambda: torch.compiler.cudagraph_mark_step_begin,
              "torch._dynamo.config.recompile_limit": lambda: torch._dynamo.config.recompile_limit,
              "torch._dynamo.maybe_mark_dynamic": lambda: torch._dynamo.maybe_mark_dynamic,
              "torch.amp.GradScaler": lambda: torch.amp.GradScaler,
              "torch.cuda.set_per_process_memory_fraction": lambda: torch.cuda.set_per_process_memory_fraction,
              "torch._foreach_add_": lambda: torch._foreach_add_,
              "torch.profiler.ProfilerActivity.CUDA": lambda: torch.profiler.ProfilerActivity.CUDA}
    missing = []
    for name, get in needed.items():
        try:
            get()
        except (AttributeError, ImportError):
            missing.append(name)
    return missing


def _nvidia_smi(query: str) -> str:
    try:
        return subprocess.run(["nvidia-smi", query, "--format=csv,noheader"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except Exception as e:
        return f"nvidia-smi: {e}"


def _profile_of(device_name: str):
    name = device_name.lower()
    for key in ("h200", "h100", "a100-80gb", "rtx4090", "rtx4070", "l4", "t4"):
        if key.replace("-80gb", "").replace("rtx", "rtx ") in name or key in name.replace(" ", ""):
            return key, CARDS[key]
    return None


# ---- probe ------------------------------------------------------------------------------------

def probe(out: Path, dry: bool) -> dict:
    if dry:
        return {"dry_run": True, "attention_kernel_names": classify_attention_kernels(
            ["aten::_scaled_dot_product_flash_attention_for_cpu"]), "would_run": ["context", "cudnn cap 1", "unset"]}
    return {"card": torch.cuda.get_device_name(0), "context": child(["--child", "context"], 18),
            "cudnn_capped_1mib": child(["--child", "cudnn"], 12, env={"CUDNN_CONV_WSCAP_DBG": "1"}),
            "cudnn_uncapped": child(["--child", "cudnn"], 12, env={"CUDNN_CONV_WSCAP_DBG": None})}


# ---- vram -------------------------------------------------------------------------------------

def vram_configs(capability: tuple[int, int]) -> list[tuple[str, TrainConfig]]:
    """10 configs, the decision-grade ones first: at two model sizes the largest batch the estimator says fits an
    RTX 4070 (this card's kernels) and the first batch from 10% above it that it says does not fit; then the seed
    default and a small grid."""
    from asl_ray.vram.fit import fits, largest_batch_that_fits
    card = dataclasses.replace(resolve_card(EMULATED), compute_capability=capability)
    small = TrainConfig(dim=192, depth=2, max_len=384, batch_size=32, gradient_accumulation_steps=2)
    large = TrainConfig(dim=384, depth=4, max_len=384, batch_size=32, gradient_accumulation_steps=2)
    out = []
    for label, cfg in (("dim192 fp16", small), ("dim384 bf16", dataclasses.replace(large, precision="bf16"))):
        edge = largest_batch_that_fits(cfg, card, low=8, high=1024)
        if not edge:
            continue
        out.append((f"{label} B{edge} (boundary)", dataclasses.replace(cfg, batch_size=edge, min_lr=0.0)))
        # The verdict need not be monotone in the batch (the allocator's is not in its limit): the first batch
        # from +10% on that is predicted not to fit.
        for batch in range(math.ceil(edge * 1.1), 2 * edge):
            above = dataclasses.replace(cfg, batch_size=batch, min_lr=0.0)
            if not fits(above, card):
                out.append((f"{label} B{batch} (+{100 * (batch / edge - 1):.0f}%)", above))
                break
    out += [("seed default", TrainConfig()),
            *[(f"dim192 B32 {p}", dataclasses.replace(small, precision=p)) for p in ("fp16", "bf16", "fp32")],
            ("dim384 B32 fp16", large), ("dim384 B32 fp32", dataclasses.replace(large, precision="fp32"))]
    return out[:10]


def vram(out: Path, dry: bool) -> dict:
    """Each config runs under the 4070's cap (OOM or not). Its predicted reserved peak is scored against a run
    whose allocator the cap never bounded: the same run where the prediction is within the cap, an uncapped run
    where it is not (a capped allocator frees and retries, and its peak is the cap, not the config's)."""
    import vram_accuracy as va
    from asl_ray.vram.estimate import estimate_peak_vram
    from asl_ray.vram.fit import fits
    capability = tuple(torch.cuda.get_device_capability(0)) if on_gpu() else (9, 0)
    card = dataclasses.replace(resolve_card(EMULATED), compute_capability=capability)
    rows: list[dict] = []
    report = {"emulated": card.describe(), "capability": list(capability), "dry_run": dry, "rows": rows}
    for label, cfg in vram_configs(capability):
        est = estimate_peak_vram(cfg, va.NUM_CLASSES, capability)
        row = {"config": label, "overrides": va._overrides(cfg), "predicted_reserved_mib": est.reserved_peak_bytes() / MiB,
               "predicted_context_mib": est.fixed_bytes() / MiB, "predicted_fit_mib": est.fit_bytes() / MiB,
               "predicted_fits": fits(cfg, card, va.NUM_CLASSES)}
        within_cap = est.total_bytes <= card.usable_bytes
        runs = [EMULATED] + ([] if within_cap else [None])
        if dry:
            row["would_run"] = [" ".join(va.child_command(cfg, e, cfg.cudnn_benchmark)[3:]) or "uncapped" for e in runs]
        else:
            capped, *uncapped = [va.measure_in_subprocess(cfg, e, timeout=40, benchmark=cfg.cudnn_benchmark)
                                 for e in runs]
            scored = (uncapped or [capped])[0]
            row.update(oom=bool(capped.get("oom")), fraction=capped.get("fraction"), error_text=capped.get("error"),
                       scored_run="capped" if within_cap else "uncapped",
                       measured_reserved_mib=scored.get("peak_reserved_with_warmup_bytes", 0) / MiB or None,
                       measured_context_mib=(scored["context_bytes"] / MiB) if "context_bytes" in scored else None)
            if row["measured_reserved_mib"] and not scored.get("oom"):
                err = (row["predicted_reserved_mib"] - row["measured_reserved_mib"]) / row["measured_reserved_mib"]
                row.update(error=err, within_10pct=abs(err) <= 0.10, under_by_more_than_3pct=err < -0.03)
        rows.append(row)
        report["acceptance"] = vram_acceptance(rows)
        write(out, "vram", report)  # after every config: a step cut off by its limit keeps what it measured
    return report


def vram_acceptance(rows: list[dict]) -> dict:
    scored = [r for r in rows if "error" in r]
    return {"scored": len(scored), "within_10pct": sum(r["within_10pct"] for r in scored),
            "under_by_more_than_3pct": sum(r["under_by_more_than_3pct"] for r in scored),
            "oom_among_predicted_fit": sum(r.get("oom", False) for r in rows if r["predicted_fits"]),
            "predicted_not_to_fit": sum(not r["predicted_fits"] for r in rows),
            "oom_among_predicted_not_to_fit": sum(r.get("oom", False) for r in rows if not r["predicted_fits"]),
            "met": bool(scored) and all(r["within_10pct"] and not r["under_by_more_than_3pct"] for r in scored)
            and not any(r.get("oom") for r in rows if r["predicted_fits"])}


# ---- speed ------------------------------------------------------------------------------------

FEWEST_LAUNCHES = {"foreach_optimizer": True, "features_on_device": True, "host_step_counts": True,
                   "foreach_grad_accumulation": True, "pad_to": "max_len"}
"""Every fewer-launches switch of bench/launches.py, with one static length (one CUDA graph)."""


def speed_variants(dry: bool) -> dict[str, TrainConfig]:
    seed = TrainConfig()
    fewest = seed.with_overrides(FEWEST_LAUNCHES, source="gpu check")
    # Eager first (seconds each), then one static shape (one graph), then dynamic shapes (the longest compile).
    out = {"seed default, eager": seed, "fewest launches, eager": fewest,
           "fewest launches, CUDA graphs": dataclasses.replace(fewest, compile=True, compile_mode="reduce-overhead"),
           "seed default, compiled": dataclasses.replace(seed, compile=True)}
    if dry:  # the CPU runs a tiny model, eager only (compiling on 2 cores takes minutes)
        tiny = {"dim": 32, "depth": 1, "batch_size": 4, "max_len": 32, "num_workers": 0}
        out = {k: dataclasses.replace(v, **tiny) for k, v in out.items() if not v.compile}
    return out


def speed(out: Path, dry: bool) -> dict:
    data = Path(tempfile.mkdtemp(prefix="gpu-check-data-"))
    from asl_ray.data.synth import write_synthetic_root
    write_synthetic_root(data / "root", num_signs=50, num_signers=5, per_sign_signer=8, seed=3,
                         workers=min(8, os.cpu_count() or 1), progress=False)
    rows: dict[str, dict] = {}
    report = {"dry_run": dry, "rows": rows, "card": torch.cuda.get_device_name(0) if on_gpu() else "cpu",
              "data": "synthetic, 2,000 sequences in the real format (asl_ray.data.synth)"}
    for name, cfg in speed_variants(dry).items():
        args = ["--child", "speed", "--data", str(data), "--config", json.dumps(cfg.to_dict())]
        rows[name] = speed_child(cfg, data) if dry else child(args, 75 if cfg.compile else 35)
        base = rows["seed default, eager"].get("samples_per_s")
        if base and rows[name].get("samples_per_s"):
            rows[name]["ratio_to_seed_eager"] = rows[name]["samples_per_s"] / base
        write(out, "speed", report)
    return report


# ---- tests and summary ------------------------------------------------------------------------

def tests(out: Path, dry: bool) -> dict:
    files = ["tests/test_gpu.py", "tests/test_cuda_paths.py", "tests/test_metrics.py"]
    if dry:
        return {"dry_run": True, "would_run": files, "present": all((REPO / f).exists() for f in files)}
    # The compile test is left to the speed step, which compiles the seed's own model.
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "not compile_runs",
                           *files], capture_output=True, text=True, cwd=REPO, timeout=35)
    (out / "tests.log").write_text(proc.stdout + proc.stderr)
    return {"returncode": proc.returncode, "last_line": (proc.stdout.strip().splitlines() or [""])[-1]}


def summary(out: Path, dry: bool) -> dict:
    def load(name):
        p = out / f"{name}.json"
        return json.loads(p.read_text()) if p.exists() else {}
    f, p, v, s, t = (load(n) for n in ("facts", "probe", "vram", "speed", "tests"))
    lines = [f"# GPU check: {f.get('card', 'no GPU (dry run)')}", "",
             f"torch {f.get('torch')}, CUDA {f.get('cuda')}, cuDNN {f.get('cudnn')}, {f.get('nvidia_smi', '')}; "
             f"missing API: {', '.join(f.get('api_missing', [])) or 'none'}", ""]
    if f.get("card"):
        lines.append(f"mem_get_info total {f['mem_get_info_total_mib']:.0f} MiB, total_memory "
                     f"{f['total_memory_mib']:.0f} MiB; card table: {f.get('card_table', 'no profile')}")
    ctx = p.get("context", {})
    if "context" in ctx:
        lines += ["", f"## Probe (measured on {ctx.get('card')}, not a 4070's figures)",
                  f"context MiB by stage: {ctx['context']} ({ctx['method']})",
                  f"cuBLAS workspace per handle: {ctx['cublas_workspace_bytes']}",
                  f"SDPA: {ctx['sdpa']}",
                  f"cuDNN workspace cap 1 MiB: {p.get('cudnn_capped_1mib')}; unset: {p.get('cudnn_uncapped')}"]
    if v.get("rows"):
        lines += ["", f"## VRAM under {v['emulated']}", "",
                  "| config | predicted fits | predicted reserved MiB | measured reserved MiB | error | OOM | context MiB |",
                  "|---|---|---|---|---|---|---|"]
        for r in v["rows"]:
            err = f"{100 * r['error']:+.1f}%" if "error" in r else "-"
            lines.append(f"| {r['config']} | {r['predicted_fits']} | {r['predicted_reserved_mib']:.0f} | "
                         f"{_fmt(r.get('measured_reserved_mib'))} | {err} | {r.get('oom', '-')} | "
                         f"{_fmt(r.get('measured_context_mib'))} |")
        lines.append(f"\nacceptance: {v.get('acceptance')}")
    if s.get("rows"):
        lines += ["", "## Speed (real loop, synthetic data)", "",
                  "| variant | samples/s | rel SE | x seed eager | host launches/sample | busy | compile s |",
                  "|---|---|---|---|---|---|---|"]
        for name, r in s["rows"].items():
            busy = f"{100 * r['busy_fraction']:.0f}%" if r.get("busy_fraction") is not None else "-"
            lines.append(f"| {name} | {_fmt(r.get('samples_per_s'))} | {_fmt(r.get('samples_per_s_rel_se'), 3)} | "
                         f"{_fmt(r.get('ratio_to_seed_eager'), 2)} | {_fmt(r.get('host_launches_per_sample'), 1)} | "
                         f"{busy} | {_fmt(r.get('compile_seconds'), 1)} |" + (f" {r['error']}" if "error" in r else ""))
    lines += ["", f"tests: {t.get('last_line', t)}"]
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    print(text)
    logs = sorted(out.glob("*.log"))
    if logs:
        with tarfile.open(out / "logs.tar.gz", "w:gz") as tar:
            for log in logs:
                tar.add(log, arcname=log.name)
        for log in logs:
            log.unlink()
    return {"files": sorted(x.name for x in out.iterdir())}


def _fmt(x, digits: int = 0) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


STEP_FUNCTIONS = {"facts": facts, "probe": probe, "vram": vram, "speed": speed, "tests": tests, "summary": summary}


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("step", nargs="?", choices=sorted(STEP_FUNCTIONS))
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "gpu-check"))
    p.add_argument("--dry-run", action="store_true", help="on the CPU: run the wiring, measure nothing on a GPU")
    p.add_argument("--plan", action="store_true", help="print each step and its limit in seconds")
    p.add_argument("--child", choices=("context", "cudnn", "speed"), help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.plan:
        print("\n".join(f"{s.name} {s.limit_s}" for s in STEPS))
        return 0
    if args.child:
        result = {"context": context_child, "cudnn": cudnn_child}.get(args.child)
        data = result() if result else speed_child(TrainConfig.from_dict(json.loads(args.config)), Path(args.data))
        print(json.dumps(data, default=str))
        return 0
    if args.step is None:
        p.error("name a step, or --plan")
    if not args.dry_run and not on_gpu():
        print("no CUDA device: nothing to check here (--dry-run checks the wiring)", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = STEP_FUNCTIONS[args.step](out, args.dry_run)
    if args.step != "summary":
        write(out, args.step, {**result, "seconds": time.perf_counter() - started})
    print(json.dumps({"step": args.step, "seconds": round(time.perf_counter() - started, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
