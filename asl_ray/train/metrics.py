"""Throughput and memory figures for each epoch: torch's allocator, the device as NVML sees it, process RSS.

Memory keys (all MiB; "_mb" is kept for the readers of these keys):
- `peak_memory_mb`: the device figure the search and reports compare. On CUDA it is
  `cuda_max_reserved_mb`; on a CPU it is NaN (there is no device memory; host RSS is not one).
- `cuda_max_reserved_mb` / `cuda_max_allocated_mb`: torch's caching-allocator peaks over the epoch.
  They do NOT include the CUDA context (driver, kernels, cuBLAS/cuDNN handles), which sits outside
  the allocator; compare them with an estimate's allocator part, not with its context-inclusive total.
- `device_used_mb_sampled_max`: NVML's used memory of the GPU this process runs on, the largest of the
  snapshots taken every 16 batches and at the epoch's end. Every process on that GPU and the CUDA
  context are in it; it is a sampled maximum, not a peak (a short spike between samples is missed).
  `device_total_mb` is that GPU's size. Absent when NVML is unavailable or the GPU cannot be matched.
- `rss_peak_mb`: this process's host RSS, sampled the same way, on every device.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import psutil
import torch

from asl_ray.cards import MiB as MB


class ThroughputMeter:
    """Samples/s and optimizer steps/s over an epoch's training batches, after `warmup` micro-batches.

    Warm-up batches (loader start, cuDNN autotuning, compilation) are left out; validation never
    enters. If an epoch is too short to have any batch after warm-up, the whole epoch counts.
    `per_step` (the plan probe): the device is synchronised at every optimizer step after warm-up and each step's
    seconds kept, so the result carries the figure's noise: the relative SE of the mean step time
    (`samples_per_s_rel_se`) over `steps_timed` steps.
    """

    def __init__(self, runtime, warmup: int, per_step: bool = False):
        self.runtime, self.warmup, self.per_step = runtime, warmup, per_step
        self.batches = self.samples = self.steps = 0
        self.all_samples = self.all_steps = 0
        self.start = self.all_start = time.perf_counter()
        self.step_seconds: list[float] = []
        self._last_step = self.start

    def batch_done(self, samples: int, optimizer_step: bool) -> None:
        self.batches += 1
        self.all_samples += samples
        self.all_steps += int(optimizer_step)
        if self.batches == self.warmup:
            self.runtime.synchronize()
            self.start = self._last_step = time.perf_counter()
        elif self.batches > self.warmup:
            self.samples += samples
            self.steps += int(optimizer_step)
            if self.per_step and optimizer_step:
                self.runtime.synchronize()
                now = time.perf_counter()
                self.step_seconds.append(now - self._last_step)
                self._last_step = now

    def relative_se(self) -> float:
        """SE of the mean step time over that mean (per_step only); NaN below two timed steps."""
        n = len(self.step_seconds)
        if n < 2:
            return math.nan
        mean = sum(self.step_seconds) / n
        sd = math.sqrt(sum((t - mean) ** 2 for t in self.step_seconds) / (n - 1))
        return sd / math.sqrt(n) / mean if mean > 0 else math.nan

    def result(self) -> dict[str, float]:
        self.runtime.synchronize()
        now = time.perf_counter()
        if self.samples:
            seconds, samples, steps = now - self.start, self.samples, self.steps
        else:
            seconds, samples, steps = now - self.all_start, self.all_samples, self.all_steps
        seconds = max(seconds, 1e-9)
        out = {"samples_per_s": samples / seconds, "steps_per_s": steps / seconds,
               "train_seconds": now - self.all_start}
        if self.per_step:
            out.update(steps_timed=len(self.step_seconds), samples_per_s_rel_se=self.relative_se())
        return out


def run_speed(history: Sequence[dict[str, Any]]) -> dict[str, float]:
    """A run's samples/s so far: the median of its epochs' figures and their interquartile range. One epoch's
    figure is one draw (the machine's load, the epoch's length mix): the median of several is the run's speed."""
    values = sorted(float(h["samples_per_s"]) for h in history
                    if isinstance(h.get("samples_per_s"), (int, float)) and math.isfinite(h["samples_per_s"]))
    if not values:
        return {"samples_per_s_median": math.nan, "samples_per_s_iqr": math.nan}
    q25, q50, q75 = (float(v) for v in np.quantile(values, [0.25, 0.5, 0.75]))
    return {"samples_per_s_median": q50, "samples_per_s_iqr": q75 - q25}


class _NoDeviceMemory:
    """A CPU run: no device memory to report."""

    def reset(self) -> None:
        pass

    def sample(self) -> None:
        pass

    def result(self) -> dict[str, Any]:
        return {"peak_memory_mb": math.nan}


class _CudaMemory:
    """torch's allocator peaks, and NVML's used memory of the GPU this process actually runs on."""

    def __init__(self, device: torch.device):
        self.device = device
        self._nvml = _nvml_handle_for(device)
        self.device_used_max = 0

    def reset(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)
        self.device_used_max = 0

    def sample(self) -> None:
        if self._nvml is not None:
            import pynvml
            self.device_used_max = max(self.device_used_max, pynvml.nvmlDeviceGetMemoryInfo(self._nvml).used)

    def result(self) -> dict[str, Any]:
        reserved = torch.cuda.max_memory_reserved(self.device) / MB
        out: dict[str, Any] = {"cuda_max_reserved_mb": reserved,
                               "cuda_max_allocated_mb": torch.cuda.max_memory_allocated(self.device) / MB,
                               "peak_memory_mb": reserved}
        if self._nvml is not None:
            import pynvml
            self.sample()
            out["device_used_mb_sampled_max"] = self.device_used_max / MB
            out["device_total_mb"] = pynvml.nvmlDeviceGetMemoryInfo(self._nvml).total / MB
        return out


class MemoryMonitor:
    """Memory of the epoch (see the module docstring for what each figure is): the device's, and RSS."""

    def __init__(self, device: torch.device):
        self.device = device
        self._device_memory = _CudaMemory(device) if device.type == "cuda" else _NoDeviceMemory()
        self.peak_rss = 0

    def reset(self) -> None:
        self._device_memory.reset()
        self.peak_rss = 0

    def sample(self) -> None:
        """Cheap: call it now and then inside the epoch to catch the RSS (and device-used) maximum."""
        self.peak_rss = max(self.peak_rss, psutil.Process().memory_info().rss)
        self._device_memory.sample()

    def result(self) -> dict[str, Any]:
        self.peak_rss = max(self.peak_rss, psutil.Process().memory_info().rss)
        return {"rss_peak_mb": self.peak_rss / MB, **self._device_memory.result()}


def _uuid_key(uuid: Optional[str]) -> str:
    """NVML writes 'GPU-6f1e...', torch '6f1e...': compare without the prefix and case."""
    return (uuid or "").strip().lower().removeprefix("gpu-")


def nvml_index_for(torch_index: int, torch_uuids: Sequence[Optional[str]], nvml_uuids: Sequence[str],
                   cuda_visible_devices: Optional[str]) -> Optional[int]:
    """The NVML index of the GPU that torch calls `torch_index`, or None if it cannot be told.

    torch numbers only the GPUs in CUDA_VISIBLE_DEVICES (Ray sets it per worker, so a worker's
    cuda:0 is often NVML's GPU 3); NVML numbers every GPU in PCI bus order. A GPU's UUID is the same
    on both sides, so it decides. Without a UUID from torch, the CUDA_VISIBLE_DEVICES entry is used
    (an ordinal, or a UUID or its prefix); an ordinal names CUDA's order, which is NVML's only with
    CUDA_DEVICE_ORDER=PCI_BUS_ID, hence the UUID first. A UUID NVML does not list (a MIG instance)
    gives None: no figure is better than another GPU's.
    """
    nvml = [_uuid_key(u) for u in nvml_uuids]
    wanted = _uuid_key(torch_uuids[torch_index]) if 0 <= torch_index < len(torch_uuids) else ""
    if wanted:
        return nvml.index(wanted) if wanted in nvml else None
    if cuda_visible_devices is None:
        return torch_index if 0 <= torch_index < len(nvml) else None
    entries = [e.strip() for e in cuda_visible_devices.split(",")]
    if not 0 <= torch_index < len(entries) or not entries[torch_index]:
        return None
    entry = entries[torch_index]
    if entry.isdigit():
        return int(entry) if int(entry) < len(nvml) else None
    prefix = _uuid_key(entry)
    matches = [i for i, u in enumerate(nvml) if u.startswith(prefix)]
    return matches[0] if len(matches) == 1 else None


def _nvml_handle_for(device: torch.device):
    """NVML's handle for the GPU `device` is, or None (no NVML, or no match): torch's figures remain."""
    try:
        import pynvml
        pynvml.nvmlInit()
        index = device.index if device.index is not None else torch.cuda.current_device()
        torch_uuids = [str(torch.cuda.get_device_properties(i).uuid) for i in range(torch.cuda.device_count())]
        nvml_uuids = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            uuid = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i))
            nvml_uuids.append(uuid.decode() if isinstance(uuid, bytes) else uuid)
        nvml_index = nvml_index_for(index, torch_uuids, nvml_uuids, os.environ.get("CUDA_VISIBLE_DEVICES"))
        return None if nvml_index is None else pynvml.nvmlDeviceGetHandleByIndex(nvml_index)
    except Exception:  # no driver library, or a container without NVML
        return None


class JsonlLog:
    """Append-only metrics log: one JSON object per line, flushed per epoch."""

    def __init__(self, path: Optional[Path]):
        self.path = Path(path) if path else None

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record, default=float) + "\n")


def memory_text(m: dict[str, Any]) -> str:
    """The epoch's memory figures, each named for what it is."""
    parts = []
    if "cuda_max_reserved_mb" in m:
        parts.append(f"cuda reserved peak {m['cuda_max_reserved_mb']:.0f} MiB (no context)")
    if "device_used_mb_sampled_max" in m:
        parts.append(f"GPU used (sampled max) {m['device_used_mb_sampled_max']:.0f} MiB")
    parts.append(f"RSS peak {m['rss_peak_mb']:.0f} MiB")
    return "  ".join(parts)


def format_epoch(m: dict[str, Any]) -> str:
    return (f"epoch {m['epoch']:>3}  loss {m['train_loss']:.4f}  val_acc {m['val_acc']:.4f}  "
            f"{m['samples_per_s']:.1f} samples/s  {m['steps_per_s']:.2f} steps/s  "
            f"{memory_text(m)}  skipped {m['scaler_skipped_steps']}  lr {m['lr']:.2e}")
