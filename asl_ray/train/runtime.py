"""Where a run executes, as objects: device, autocast, grad scaler, pinned copies, compile.

The loop never branches on CPU vs GPU; it asks the Runtime. On CPU, mixed precision is off (CPU
autocast is slower than fp32 here), the scaler is a disabled GradScaler and copies are blocking.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from asl_ray.config import TrainConfig

_AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def make_grad_scaler(precision: str, device_type: str) -> torch.amp.GradScaler:
    """Loss scaling only for fp16: bf16 has fp32's exponent range and needs none."""
    return torch.amp.GradScaler(device_type, enabled=precision == "fp16")


@dataclass
class Runtime:
    device: torch.device
    precision: str  # the precision actually used (fp32 on CPU)
    pin_memory: bool

    @classmethod
    def create(cls, cfg: TrainConfig, device: torch.device | None = None) -> "Runtime":
        device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        on_cuda = device.type == "cuda"
        if on_cuda:
            torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
            torch.cuda.set_device(device)
        return cls(device=device, precision=cfg.precision if on_cuda else "fp32",
                   pin_memory=cfg.pin_memory and on_cuda)

    @property
    def non_blocking(self) -> bool:
        # Only a pinned source makes a host-to-device copy truly asynchronous.
        return self.pin_memory

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=_AUTOCAST_DTYPES[self.precision],
                              enabled=self.precision != "fp32")

    def grad_scaler(self) -> torch.amp.GradScaler:
        return make_grad_scaler(self.precision, self.device.type)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def empty_cache(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


class EagerFallback(nn.Module):
    """Runs the compiled module; if compiling fails, warns once and runs the eager one from then on."""

    def __init__(self, eager: nn.Module, compiled: nn.Module):
        super().__init__()
        self.eager = eager
        self._compiled = [compiled]  # a list keeps it out of state_dict and parameters()
        self.failed = False

    def forward(self, *args, **kwargs):
        if not self.failed:
            try:
                return self._compiled[0](*args, **kwargs)
            except Exception as e:  # torch._dynamo / inductor raise many types; any means "use eager"
                self.failed = True
                warnings.warn(f"torch.compile failed, continuing in eager mode: {type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}", RuntimeWarning, stacklevel=2)
        return self.eager(*args, **kwargs)


def maybe_compile(model: nn.Module, enabled: bool) -> nn.Module:
    """The module the loop calls: compiled (dynamic shapes: batches are padded to varying lengths) or eager."""
    if not enabled:
        return model
    try:
        compiled = torch.compile(model, dynamic=True)
    except Exception as e:
        warnings.warn(f"torch.compile unavailable, running eager: {e}", RuntimeWarning, stacklevel=2)
        return model
    return EagerFallback(model, compiled)
