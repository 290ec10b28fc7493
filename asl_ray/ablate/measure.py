"""One measurement of one config: samples/s over a few optimizer steps of the real loop, and its memory.

The plan search's step measurer (asl_ray/plan/measure.py: run_steps) with a fixed step count: each call builds its
own Session and Runtime (cuDNN, precision and pinning come from the config), and frees everything before
returning, so a variant's peak memory is its own.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from asl_ray.config import TrainConfig
from asl_ray.data.cache import SequenceCache
from asl_ray.plan.measure import probe_config, run_steps
from asl_ray.train.runtime import Runtime


@dataclass(frozen=True)
class Measurement:
    samples_per_s: float
    steps_per_s: float
    seconds: float
    """Wall time of the whole measurement: setup, warm-up (compilation included) and measured steps."""
    peak_reserved_mb: Optional[float] = None
    """torch.cuda.max_memory_reserved (CUDA only): the caching allocator's peak, WITHOUT the CUDA context."""
    peak_allocated_mb: Optional[float] = None
    """torch.cuda.max_memory_allocated (CUDA only): live tensors at the peak, without the context."""
    device_used_mb_sampled_max: Optional[float] = None
    """NVML's used memory of this process's GPU, the largest of the snapshots taken during the run (every
    process on the GPU and the CUDA context included; a sampled maximum, not a peak). CUDA with NVML only."""
    notes: tuple[str, ...] = ()
    """Warnings the run raised (e.g. torch.compile fell back to eager: its ratio is then eager's)."""


def warmup_steps(cfg: TrainConfig, minimum: int = 3) -> int:
    """Optimizer steps of warm-up, at least `minimum` micro-batches: loader start, cuDNN autotuning and
    compilation (a first shape, then the dynamic-shape recompile) stay out of the figures."""
    return math.ceil(minimum / cfg.gradient_accumulation_steps)


def warmup_batches(cfg: TrainConfig, minimum: int = 3) -> int:
    """`warmup_steps` in micro-batches."""
    return warmup_steps(cfg, minimum) * cfg.gradient_accumulation_steps


def measurement_config(cfg: TrainConfig, steps: int) -> TrainConfig:
    """What `measure` runs: one epoch cut to the warm-up and `steps` optimizer steps."""
    return probe_config(cfg, warmup_steps(cfg), steps, fixed=True)


def measure(cfg: TrainConfig, cache: SequenceCache, steps: int, device=None) -> Measurement:
    """Run `steps` optimizer steps of `cfg` after warm-up with the plan search's step measurer (`run_steps`, the
    whole window timed at once); every micro-batch is a real loader batch. Out of memory is raised (the caller
    marks the variant), as is any other failure."""
    device = device if device is not None else Runtime.create(cfg).device
    run = run_steps(cfg, cache, device, warmup_steps(cfg), steps, record_warnings=True)
    if run.oom:
        raise torch.cuda.OutOfMemoryError(run.oom)
    if run.error:
        raise RuntimeError(f"measuring {cfg.batch_size}x{cfg.gradient_accumulation_steps}: {run.error}")
    m = run.memory
    return Measurement(samples_per_s=run.train["samples_per_s"], steps_per_s=run.train["steps_per_s"],
                       seconds=run.seconds, peak_reserved_mb=m.get("cuda_max_reserved_mb"),
                       peak_allocated_mb=m.get("cuda_max_allocated_mb"),
                       device_used_mb_sampled_max=m.get("device_used_mb_sampled_max"), notes=run.notes)
