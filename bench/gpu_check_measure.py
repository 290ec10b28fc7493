"""What the GPU check measures inside its child processes (each a clean CUDA context of its own): the context as
the libraries load, cuBLAS workspaces, the SDPA kernel, cuDNN's workspace cap, and one speed variant's samples/s
with its host launches and busy fraction. `bench/gpu_check.py` runs the steps and starts these. No Ray.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from asl_ray.cards import MiB
from asl_ray.config import TrainConfig


def _process_bytes() -> Optional[int]:
    """This process's GPU memory per NVML (the context and everything torch reserved), None if NVML can't say."""
    try:
        import pynvml
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if p.pid == os.getpid() and p.usedGpuMemory is not None:
                return int(p.usedGpuMemory)
    except Exception:
        return None
    return None


def _outside_allocator(device_used_before: int) -> tuple[float, str]:
    """MiB this process holds outside torch's caching allocator: the CUDA context and the libraries' kernels."""
    torch.cuda.synchronize()
    reserved = torch.cuda.memory_reserved()
    process = _process_bytes()
    if process is not None:
        return (process - reserved) / MiB, "nvml process memory - reserved"
    free, total = torch.cuda.mem_get_info()
    return (total - free - device_used_before - reserved) / MiB, "device used now - before - reserved"


def context_child() -> dict:
    """The context as each library loads (lazy module loading), the cuBLAS workspace per handle, SDPA's kernel."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend
    # Before the context exists, mem_get_info would create it: use NVML's device total (0 processes of ours yet).
    try:
        import pynvml
        pynvml.nvmlInit()
        before = int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).used)
    except Exception:
        before = 0
    stages: dict[str, Any] = {}
    x = torch.zeros(1, device="cuda")
    stages["after_init_mib"], method = _outside_allocator(before)
    a = torch.randn(1024, 1024, device="cuda", dtype=torch.float16)
    allocated = torch.cuda.memory_allocated()
    (a @ a).sum().item()
    workspace_default = torch.cuda.memory_allocated() - allocated
    stages["after_cublas_mib"], _ = _outside_allocator(before)
    side = torch.cuda.Stream()
    allocated = torch.cuda.memory_allocated()
    with torch.cuda.stream(side):
        (a @ a).sum()
    torch.cuda.synchronize()
    workspace_side = torch.cuda.memory_allocated() - allocated
    conv = torch.nn.Conv1d(192, 192, 17, padding=8, groups=192).cuda().half()
    conv(torch.randn(8, 192, 384, device="cuda", dtype=torch.float16)).sum().backward()
    stages["after_cudnn_mib"], _ = _outside_allocator(before)
    # The model's attention: batch 32, 4 heads of 48, 384 frames, a key mask, fp16; forward and backward.
    q, k, v = (torch.randn(32, 4, 384, 48, device="cuda", dtype=torch.float16, requires_grad=True) for _ in range(3))
    mask = torch.ones(32, 1, 1, 384, device="cuda", dtype=torch.bool)
    mask[:, :, :, 300:] = False
    chosen = {}
    for label, backends in (("default", None), ("forced_for_4070", [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])):
        names = _kernels_of(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=192 ** -0.5)
                            .sum().backward(), backends)
        chosen[label] = classify_attention_kernels(names)
    stages["after_sdpa_mib"], _ = _outside_allocator(before)
    del x
    return {"context": stages, "method": method, "cublas_workspace_bytes": {"default_stream": workspace_default,
            "side_stream": workspace_side}, "sdpa": chosen, "cudnn_version": torch.backends.cudnn.version(),
            "card": torch.cuda.get_device_name(0)}


def _kernels_of(fn: Callable[[], None], backends) -> list[str]:
    import contextlib
    from torch.nn.attention import sdpa_kernel
    from torch.profiler import ProfilerActivity, profile
    with (sdpa_kernel(backends) if backends else contextlib.nullcontext()):
        fn()  # warm-up outside the profile
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
    return sorted({e.name for e in prof.events()})


ATTENTION_KERNELS = (("cudnn", ("cudnn_attention", "_cudnn_attention", "cudnn_sdpa", "fmha_cudnn")),
                     ("flash", ("flash_attention", "flash_fwd", "flash_bwd")),
                     ("memory-efficient", ("efficient_attention", "fmha_cutlass", "mem_efficient", "fmha")),
                     ("math", ("_scaled_dot_product_attention_math", "aten::bmm")))


def classify_attention_kernels(names: list[str]) -> dict:
    """The SDPA implementation that ran, from the op and kernel names a profile recorded."""
    lowered = [n.lower() for n in names]
    for label, marks in ATTENTION_KERNELS:
        hits = sorted({n for n in names if any(m in n.lower() for m in marks)})
        if hits:
            return {"kernel": label, "names": hits[:6]}
    if any("for_cpu" in n for n in lowered):
        return {"kernel": "cpu", "names": [n for n in names if "for_cpu" in n][:6]}
    return {"kernel": "unknown", "names": names[:6]}


def cudnn_child() -> dict:
    """The seed model's fp16 step with cudnn.benchmark on, under whatever CUDNN_CONV_WSCAP_DBG the process has."""
    from asl_ray.model import GISLRModel
    torch.backends.cudnn.benchmark = True
    cfg = TrainConfig()
    model = GISLRModel.from_config(cfg, 250).cuda()
    x = torch.randn(64, 384, 708, device="cuda")
    mask = torch.ones(64, 384, dtype=torch.bool, device="cuda")
    y = torch.randint(0, 250, (64,), device="cuda")
    base = torch.cuda.memory_allocated()
    for _ in range(3):
        with torch.autocast("cuda", dtype=torch.float16):
            loss = model(x, mask, y)
        loss.backward()
    torch.cuda.synchronize()
    return {"CUDNN_CONV_WSCAP_DBG": os.environ.get("CUDNN_CONV_WSCAP_DBG") or "unset",
            "peak_allocated_above_start_mib": (torch.cuda.max_memory_allocated() - base) / MiB,
            "peak_reserved_mib": torch.cuda.max_memory_reserved() / MiB}


LAUNCH_EVENTS = re.compile(r"^(cudaLaunchKernel|cudaLaunchKernelExC|cuLaunchKernel|cuLaunchKernelEx|"
                           r"cudaLaunchCooperativeKernel|cudaGraphLaunch)(_v\d+)?$")


def speed_child(cfg: TrainConfig, data: Path) -> dict:
    """Time `cfg` with the plan search's measurer (its stopping rule), then profile 2 more optimizer steps of the
    same session: host launch calls per sample, and busy = kernel time per sample / wall time per sample."""
    from itertools import islice
    from asl_ray.ablate.launches import run_steps
    from asl_ray.data.cache import load_or_build_cache
    from asl_ray.plan.measure import probe_config, timed_enough
    from asl_ray.train.loop import setup, train_epoch
    from asl_ray.train.runtime import Runtime, compile_metrics
    from torch.profiler import ProfilerActivity, profile
    cache = load_or_build_cache(data / "root", data / "cache", progress=False, log=lambda *_: None)
    runtime = Runtime.create(cfg)
    session = setup(probe_config(cfg, warmup_steps=2, steps=5), cache, runtime)
    timing = train_epoch(session, stop=timed_enough(5))
    step_seconds = session_step_seconds(timing)
    accum = cfg.gradient_accumulation_steps
    batches = list(islice(session.train_loader, 2 * accum))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if runtime.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        samples, _ = run_steps(session.step, batches, accum, runtime.device)
        runtime.synchronize()
    launches: dict[str, int] = {}
    kernels = []
    for e in prof.events():
        if LAUNCH_EVENTS.match(e.name):
            launches[e.name] = launches.get(e.name, 0) + 1
        elif e.device_type == torch.autograd.DeviceType.CUDA:
            kernels.append((e.time_range.start, e.time_range.end))
    busy_us = union_length(kernels)
    per_sample_s = 1 / timing["samples_per_s"]
    return {"samples_per_s": timing["samples_per_s"], "samples_per_s_rel_se": timing.get("samples_per_s_rel_se"),
            "steps_timed": timing.get("steps_timed"), "step_seconds_median": step_seconds,
            "host_launches_per_sample": sum(launches.values()) / samples, "host_launches": launches,
            "kernel_us_per_sample": busy_us / samples,
            "busy_fraction": (busy_us / samples) * 1e-6 / per_sample_s if kernels else None,
            **compile_metrics(session.step.model), "device": str(runtime.device)}


def session_step_seconds(timing: dict) -> Optional[float]:
    steps_per_s = timing.get("steps_per_s")
    return 1 / steps_per_s if steps_per_s else None


def union_length(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by the intervals (overlapping kernels on several streams counted once)."""
    total, end = 0.0, -math.inf
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total
