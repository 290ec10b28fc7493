"""One measurement of one config: samples/s over a few optimizer steps of the real loop, and its memory.

Each call builds its own Session and Runtime (cuDNN, precision and pinning come from the config), and
frees everything before returning, so a variant's peak memory is its own.
"""
from __future__ import annotations

import gc
import math
import time
import warnings
from dataclasses import dataclass
from typing import Optional

from asl_ray.config import TrainConfig
from asl_ray.data.cache import SequenceCache
from asl_ray.train.loop import setup, train_epoch
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


def warmup_batches(cfg: TrainConfig, minimum: int = 3) -> int:
    """Whole optimizer steps, at least `minimum` micro-batches: loader start, cuDNN autotuning and
    compilation (a first shape, then the dynamic-shape recompile) stay out of the figures."""
    accum = cfg.gradient_accumulation_steps
    return math.ceil(minimum / accum) * accum


def measurement_config(cfg: TrainConfig, steps: int) -> TrainConfig:
    warmup = warmup_batches(cfg)
    return cfg.with_overrides({"epochs": 1, "throughput_warmup_steps": warmup,
                               "max_steps_per_epoch": warmup + steps * cfg.gradient_accumulation_steps},
                              source="measurement")


def measure(cfg: TrainConfig, cache: SequenceCache, steps: int, device=None) -> Measurement:
    """Run `steps` optimizer steps of `cfg` after warm-up; every micro-batch is a real loader batch."""
    cfg = measurement_config(cfg, steps)
    runtime = Runtime.create(cfg, device)
    release(runtime)
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        session = setup(cfg, cache, runtime)
        session.memory.reset()
        metrics = train_epoch(session)
        memory = session.memory.result()
    seconds = time.perf_counter() - started
    notes = tuple(sorted({str(w.message).splitlines()[0][:200] for w in caught if "compile" in str(w.message)}))
    del session
    release(runtime)
    return Measurement(samples_per_s=metrics["samples_per_s"], steps_per_s=metrics["steps_per_s"], seconds=seconds,
                       peak_reserved_mb=memory.get("cuda_max_reserved_mb"),
                       peak_allocated_mb=memory.get("cuda_max_allocated_mb"),
                       device_used_mb_sampled_max=memory.get("device_used_mb_sampled_max"), notes=notes)


def release(runtime: Runtime) -> None:
    """Return cached blocks to the driver so the next config starts from an empty allocator."""
    gc.collect()
    runtime.empty_cache()
    if runtime.device.type == "cuda":
        import torch
        torch.cuda.reset_peak_memory_stats(runtime.device)
