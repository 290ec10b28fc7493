"""Throughput and memory figures for each epoch: torch's allocator, pynvml's device view, process RSS."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import psutil
import torch

MB = 1024 * 1024


class ThroughputMeter:
    """Samples/s and optimizer steps/s over an epoch's training batches, after `warmup` micro-batches.

    Warm-up batches (loader start, cuDNN autotuning, compilation) are left out; validation never
    enters. If an epoch is too short to have any batch after warm-up, the whole epoch counts.
    """

    def __init__(self, runtime, warmup: int):
        self.runtime, self.warmup = runtime, warmup
        self.batches = self.samples = self.steps = 0
        self.all_samples = self.all_steps = 0
        self.start = self.all_start = time.perf_counter()

    def batch_done(self, samples: int, optimizer_step: bool) -> None:
        self.batches += 1
        self.all_samples += samples
        self.all_steps += int(optimizer_step)
        if self.batches == self.warmup:
            self.runtime.synchronize()
            self.start = time.perf_counter()
        elif self.batches > self.warmup:
            self.samples += samples
            self.steps += int(optimizer_step)

    def result(self) -> dict[str, float]:
        self.runtime.synchronize()
        now = time.perf_counter()
        if self.samples:
            seconds, samples, steps = now - self.start, self.samples, self.steps
        else:
            seconds, samples, steps = now - self.all_start, self.all_samples, self.all_steps
        seconds = max(seconds, 1e-9)
        return {"samples_per_s": samples / seconds, "steps_per_s": steps / seconds,
                "train_seconds": now - self.all_start}


class MemoryMonitor:
    """Peak memory of the epoch: torch allocator peaks and pynvml device memory on CUDA, RSS always."""

    def __init__(self, device: torch.device):
        self.device = device
        self._nvml = _nvml_handle(device) if device.type == "cuda" else None
        self.peak_rss = 0

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.peak_rss = 0

    def sample(self) -> None:
        """Cheap: call it now and then inside the epoch to catch the RSS peak."""
        self.peak_rss = max(self.peak_rss, psutil.Process().memory_info().rss)

    def result(self) -> dict[str, Any]:
        self.sample()
        out: dict[str, Any] = {"rss_peak_mb": self.peak_rss / MB}
        if self.device.type == "cuda":
            out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(self.device) / MB
            out["cuda_max_reserved_mb"] = torch.cuda.max_memory_reserved(self.device) / MB
            out["peak_memory_mb"] = out["cuda_max_reserved_mb"]
            if self._nvml is not None:
                import pynvml
                info = pynvml.nvmlDeviceGetMemoryInfo(self._nvml)
                out["nvml_used_mb"] = info.used / MB
                out["nvml_total_mb"] = info.total / MB
        else:
            out["peak_memory_mb"] = out["rss_peak_mb"]
        return out


def _nvml_handle(device: torch.device):
    try:
        import pynvml
        pynvml.nvmlInit()
        index = device.index if device.index is not None else torch.cuda.current_device()
        return pynvml.nvmlDeviceGetHandleByIndex(index)
    except Exception:  # no driver library, or inside a container without NVML: torch's figures remain
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


def format_epoch(m: dict[str, Any]) -> str:
    return (f"epoch {m['epoch']:>3}  loss {m['train_loss']:.4f}  val_acc {m['val_acc']:.4f}  "
            f"{m['samples_per_s']:.1f} samples/s  {m['steps_per_s']:.2f} steps/s  "
            f"peak {m['peak_memory_mb']:.0f} MB  skipped {m['scaler_skipped_steps']}  lr {m['lr']:.2e}")
