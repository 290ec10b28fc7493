"""Kernel launches per training sample: what bounds an eager loop on a GPU (each op costs host time).

Two counters, both over whole optimizer steps of the real `TrainStep`:
- `OpCounter`, a `TorchDispatchMode`: every aten op dispatched in eager (forward, backward, clipping,
  optimizer, Lookahead), grouped by op. View ops (`view`, `t`, `transpose`...) are counted apart: they
  cost host time but launch no kernel.
- `profiled_kernels`: `torch.profiler` events, for compiled code (a dispatch mode cannot watch inductor's
  kernels): CUDA kernel events on CUDA; on CPU the top-level aten ops that launch a kernel (no views, no
  composite op that called nothing, such as a `to` with nothing to copy) plus inductor's fused C++ kernels
  (visible only in code compiled with `torch._inductor.config.cpp.enable_kernel_profile`).
No Ray here.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class OpCounter(TorchDispatchMode):
    """Counts aten ops as they are dispatched (below autograd: what actually runs), by op name."""

    def __init__(self):
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.views: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        (self.views if func.is_view else self.ops)[name] += 1
        return func(*args, **(kwargs or {}))


@dataclass(frozen=True)
class LaunchCount:
    samples: int
    """Training samples the counted steps consumed."""
    optimizer_steps: int
    """Whole optimizer steps counted."""
    ops: dict[str, int] = field(default_factory=dict)
    """Kernel-launching aten ops (eager) or kernel events (profiler), by name."""
    views: dict[str, int] = field(default_factory=dict)
    """View ops by name (eager only): dispatched, host time, no kernel."""
    source: str = "dispatch"
    """'dispatch' (TorchDispatchMode, eager) or 'profiler' (torch.profiler kernel events)."""

    def launches(self) -> int:
        return sum(self.ops.values())

    def dispatched(self) -> int:
        """Every op dispatched, views included (an earlier count of 141 per sample counted these)."""
        return self.launches() + sum(self.views.values())

    def per_sample(self) -> float:
        return self.launches() / max(1, self.samples)

    def dispatched_per_sample(self) -> float:
        return self.dispatched() / max(1, self.samples)

    def top(self, n: int = 8) -> list[tuple[str, int]]:
        return Counter(self.ops).most_common(n)


def count_dispatched(fn: Callable[[], object]) -> LaunchCount:
    """Aten ops that `fn()` dispatches (samples = 0: per-sample figures are for `count_train_steps`)."""
    counter = OpCounter()
    with counter:
        fn()
    return LaunchCount(0, 0, dict(counter.ops), dict(counter.views))


def run_steps(step, batches: Iterable, accum: int, device: torch.device) -> tuple[int, int]:
    """Feed `batches` to a `TrainStep` in accumulation windows of `accum`; (samples, optimizer steps)."""
    from asl_ray.train.loop import accumulation_window
    batches = list(batches)
    samples = 0
    for i, batch in enumerate(batches):
        window, at_boundary = accumulation_window(i, len(batches), accum)
        step(batch.to(device), window, at_boundary)
        samples += len(batch)
    return samples, -(-len(batches) // accum)


def count_train_steps(step, batches: list, accum: int, device: torch.device) -> LaunchCount:
    """Eager aten ops over whole optimizer steps of `step` (`len(batches)` a multiple of `accum`).
    The host-to-device copy of each batch (and features_on_device's dx/dx2) is counted too."""
    if len(batches) % accum:
        raise ValueError(f"{len(batches)} batches is not a whole number of optimizer steps of {accum}")
    counter = OpCounter()
    with counter:
        samples, steps = run_steps(step, batches, accum, device)
    return LaunchCount(samples, steps, dict(counter.ops), dict(counter.views))


def profiled_kernels(fn: Callable[[], tuple[int, int]], device: torch.device) -> LaunchCount:
    """Kernel events of `fn()` (which returns (samples, optimizer steps)) under torch.profiler.

    CUDA: every CUDA kernel event. CPU: aten ops with no aten op above them that launch a kernel (what the
    dispatcher ran at the top; the ops a composite op calls inside it are not extra launches) plus inductor's
    fused C++ kernels (`graph_<n>_cpp_fused_...`), events only in code compiled with
    `cpp.enable_kernel_profile` on: set it before compiling, or they are silently missing."""
    from torch.profiler import ProfilerActivity, profile
    import torch._inductor.config as inductor_config
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with inductor_config.patch({"cpp.enable_kernel_profile": True}), profile(activities=activities) as prof:
        samples, steps = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    counts: Counter[str] = Counter()
    for evt in prof.events():
        if device.type == "cuda":
            if evt.device_type == torch.autograd.DeviceType.CUDA:
                counts[evt.name] += 1
        elif _is_cpu_kernel(evt):
            counts[evt.name] += 1
    return LaunchCount(samples, steps, dict(counts), {}, source="profiler")


_INDUCTOR_KERNEL_MARKS = ("cpp_fused", "cpp_CppKernelProxy")  # inductor names them graph_<n>_cpp_fused_...


def _is_inductor_kernel(name: str) -> bool:
    return any(mark in name for mark in _INDUCTOR_KERNEL_MARKS)


def _is_cpu_kernel(evt) -> bool:
    if _is_inductor_kernel(evt.name):
        return True
    if not evt.name.startswith("aten::") or not _launches(evt):
        return False
    parent: Optional[object] = evt.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::") or _is_inductor_kernel(parent.name):
            return False
        parent = parent.cpu_parent
    return True


def _launches(evt) -> bool:
    """Whether an aten event ran a kernel: a composite op (`to`, `item`, `pad`, `reshape`) only through an op
    it called (a `to` that needs no copy calls nothing); any other op unless it is a view."""
    name = evt.name[len("aten::"):]
    if not _is_composite_op(name):
        return not _is_view_op(name)
    return any(child.name.startswith("aten::") and _launches(child) or _is_inductor_kernel(child.name)
               for child in evt.cpu_children)


def _main_overload(name: str):
    packet = getattr(torch.ops.aten, name, None)
    if packet is None:
        return None
    return getattr(packet, "default", None) or next(
        (getattr(packet, o) for o in packet.overloads()), None)


def _is_view_op(name: str) -> bool:
    packet = getattr(torch.ops.aten, name, None)
    # transpose has no .default overload (transpose.int): any view overload makes the op a view
    return packet is not None and any(getattr(packet, o).is_view for o in packet.overloads()
                                      if o in ("default", "int", "Tensor", "dim"))


def _is_composite_op(name: str) -> bool:
    overload = _main_overload(name)
    if overload is None:
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(overload.name(), "CompositeImplicitAutograd")
    except RuntimeError:
        return False
