"""Measure one execution plan: a few optimizer steps of the real loop, on the data's own length mix.

The plan's config is trained for `warmup_steps` optimizer steps and then timed step by step (the device
synchronised at each) for at least `steps` and until the 95% interval of its samples/s is within TIMING_CI of
the figure, or `MAX_STEPS_FACTOR x steps` steps were timed: a speed is a measurement with a spread, and the
plan search compares plans with it (asl_ray/plan/search.py: plans within each other's noise are tied). It is
epoch 0 of its fold (the same loader, augmentations and sample order as its training: all seeded from
cfg.seed), through `loop.setup` and `loop.train_epoch`, so what is timed is what training runs. Samples/s come
from the loop's ThroughputMeter with the warm-up steps left out; memory from its MemoryMonitor.

The peak reserved figure includes the warm-up: the caching allocator keeps what warm-up reserved
(cuDNN autotuning workspaces, compilation), so a reset after it would report nearly the same reserved
peak, and the training's own epoch-0 peak includes its warm-up too. Peaks are reset before each plan, after
the previous one was freed, so no plan inherits another's.
"""
from __future__ import annotations

import dataclasses
import gc
import math
import platform
import time
from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

from asl_ray.config import TrainConfig
from asl_ray.stats import t_quantile
from asl_ray.data.cache import SequenceCache
from asl_ray.train.loop import setup, train_epoch
from asl_ray.train.metrics import MB, MemoryMonitor, ThroughputMeter
from asl_ray.train.runtime import Runtime, out_of_memory_in

STATUSES = ("ok", "oom", "error")
TIMING_CI = 0.05
"""A plan's timing stops once the 95% interval of its samples/s is within this fraction of the figure."""
MAX_STEPS_FACTOR = 4
"""... or once `MAX_STEPS_FACTOR x steps` optimizer steps were timed."""
_SPLIT_KEYS = ("batch_size", "gradient_accumulation_steps")  # shown as "12x4", not as key=value


@dataclass(frozen=True)
class PlanMeasurement:
    plan: str
    """The plan's name: "12x4" (batch_size x gradient_accumulation_steps), then " key=value" per other plan key."""
    status: str
    """'ok'; 'oom' (it ran out of memory: dropped, never chosen); 'error' (anything else failed)."""
    samples_per_s: float
    """Training samples per second after the warm-up steps; NaN unless status is 'ok'."""
    steps_per_s: float
    """Optimizer steps per second after the warm-up steps; NaN unless status is 'ok'."""
    samples_per_s_se: float
    """Standard error of samples_per_s, from the spread of the timed steps; NaN below two timed steps."""
    steps_timed: int
    """Optimizer steps timed after the warm-up."""
    peak_reserved_mb: float
    """torch's caching-allocator reserved peak over the measurement, MiB (no CUDA context); NaN on a CPU."""
    rss_peak_mb: float
    """This process's host RSS peak over the measurement, MiB."""
    seconds: float
    """Wall time of the measurement: setup, warm-up and the measured steps."""
    device: str
    """Where it was measured (`device_identity`)."""
    error: str = ""
    """One line: why it did not run ('' when status is 'ok')."""
    from_cache: bool = False
    """Read from the plan cache instead of measured by this search."""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"PlanMeasurement.status: must be one of {', '.join(STATUSES)}, got {self.status!r}")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (no NaN: an absent figure is None)."""
        return {k: None if isinstance(v, float) and not math.isfinite(v) else v
                for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PlanMeasurement":
        floats = {f.name for f in fields(cls) if f.type == "float"}
        known = {f.name for f in fields(cls)}
        return cls(**{k: (math.nan if v is None else float(v)) if k in floats else v
                      for k, v in d.items() if k in known})


def describe_plan(cfg: TrainConfig, plan_keys: Sequence[str]) -> str:
    """ "12x4", then " key=value" for every other key of `plan_keys`, in that order."""
    extra = "".join(f" {k}={getattr(cfg, k)}" for k in plan_keys if k not in _SPLIT_KEYS)
    return f"{cfg.batch_size}x{cfg.gradient_accumulation_steps}{extra}"


def device_identity(runtime: Runtime, usable_bytes: Optional[int] = None) -> str:
    """What a measurement's speed belongs to. CUDA: the GPU's name, plus " cap <MiB> MiB" when this process's
    allocator is capped (a per-process memory fraction below 1, or `usable_bytes` given: an emulated card);
    CPU: "cpu-<arch> <model> threads=<torch threads>" (a trial with fewer threads is another device)."""
    if runtime.device.type == "cuda":
        name = torch.cuda.get_device_name(runtime.device)
        if usable_bytes is None:
            fraction = torch.cuda.get_per_process_memory_fraction(runtime.device)
            if fraction < 1.0:
                usable_bytes = int(fraction * torch.cuda.get_device_properties(runtime.device).total_memory)
        return name if usable_bytes is None else f"{name} cap {usable_bytes // MB} MiB"
    return f"cpu-{platform.machine()} {_cpu_model()} threads={torch.get_num_threads()}"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or "unknown"


def probe_config(cfg: TrainConfig, warmup_steps: int, steps: int) -> TrainConfig:
    """`cfg` cut to one epoch of at most `warmup_steps + MAX_STEPS_FACTOR x steps` optimizer steps, the warm-up left
    out of the timing."""
    accumulation = cfg.gradient_accumulation_steps
    return dataclasses.replace(cfg, epochs=1,
                               max_steps_per_epoch=(warmup_steps + MAX_STEPS_FACTOR * steps) * accumulation,
                               throughput_warmup_steps=warmup_steps * accumulation)


def timed_enough(steps: int) -> Callable[[ThroughputMeter], bool]:
    """The probe's stopping rule: at least `steps` steps timed, and the 95% interval within TIMING_CI."""
    def enough(meter: ThroughputMeter) -> bool:
        timed = len(meter.step_seconds)
        if timed < max(steps, 2):
            return False
        return t_quantile(0.975, timed - 1) * meter.relative_se() <= TIMING_CI
    return enough


def release(runtime: Runtime, compiled: bool) -> None:
    """Give back what a plan held so the next plan (and the training after the search) starts clean."""
    if compiled:
        torch._dynamo.reset()
    gc.collect()
    runtime.empty_cache()
    if runtime.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(runtime.device)


def measure_plan(cfg: TrainConfig, cache: SequenceCache, runtime: Runtime, warmup_steps: int, steps: int,
                 plan_keys: Sequence[str] = (), usable_bytes: Optional[int] = None) -> PlanMeasurement:
    """Train `cfg` for `warmup_steps` optimizer steps on `runtime`'s device, then time it step by step until its
    figure is narrow (`timed_enough`) or the probe's last step.
    An out-of-memory error is a status ('oom'), any other failure too ('error'): never raised."""
    if warmup_steps < 0 or steps < 1:
        raise ValueError(f"measure_plan: need warmup_steps >= 0 and steps >= 1, got {warmup_steps}, {steps}")
    device = device_identity(runtime, usable_bytes)
    plan = describe_plan(cfg, plan_keys)
    probe = probe_config(cfg, warmup_steps, steps)
    release(runtime, compiled=False)  # nothing left from before; peaks from here on
    started = time.perf_counter()
    session = None
    train: dict[str, Any] = {}
    status, error = "ok", ""
    try:
        # The plan's own runtime: its precision and cudnn.benchmark (Runtime.create applies both).
        session = setup(probe, cache, Runtime.create(probe, runtime.device))
        session.memory.reset()
        train = train_epoch(session, stop=timed_enough(steps))
    except Exception as e:  # a failed plan is a measurement, not a failed trial
        oom = out_of_memory_in(e)
        status = "oom" if oom is not None else "error"
        reason = oom if oom is not None else e
        text = str(reason).splitlines()[0] if str(reason) else ""
        error = (text if oom is not None else f"{type(reason).__name__}: {text}")[:300]
    # Outside the except block: the exception (and the frames holding the batch) is gone by now.
    memory = (session.memory if session is not None else MemoryMonitor(runtime.device)).result()
    if session is not None:
        session.step.optimizer.zero_grad(set_to_none=True)
    del session
    seconds = time.perf_counter() - started
    release(runtime, compiled=cfg.compile)
    ok = status == "ok"
    return PlanMeasurement(
        plan=plan, status=status,
        samples_per_s=float(train["samples_per_s"]) if ok else math.nan,
        steps_per_s=float(train["steps_per_s"]) if ok else math.nan,
        samples_per_s_se=float(train["samples_per_s"] * train["samples_per_s_rel_se"]) if ok else math.nan,
        steps_timed=int(train["steps_timed"]) if ok else 0,
        peak_reserved_mb=float(memory.get("cuda_max_reserved_mb", math.nan)),
        rss_peak_mb=float(memory["rss_peak_mb"]), seconds=seconds, device=device, error=error)
