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

import contextlib
import dataclasses
import gc
import math
import platform
import time
import warnings
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


def probe_config(cfg: TrainConfig, warmup_steps: int, steps: int, fixed: bool = False) -> TrainConfig:
    """`cfg` cut to one epoch of at most `warmup_steps + MAX_STEPS_FACTOR x steps` optimizer steps (exactly
    `warmup_steps + steps` when `fixed`), the warm-up left out of the timing."""
    accumulation = cfg.gradient_accumulation_steps
    timed = steps if fixed else MAX_STEPS_FACTOR * steps
    return dataclasses.replace(cfg, epochs=1, max_steps_per_epoch=(warmup_steps + timed) * accumulation,
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


@dataclass(frozen=True)
class StepRun:
    """What `run_steps` saw: the loop's epoch metrics, its memory monitor's figures, the wall time, and why it
    failed (never the exception itself: its frames would hold the batch's tensors through the release)."""
    train: dict
    """`loop.train_epoch`'s metrics (samples_per_s, steps_per_s, ...); empty when the run failed."""
    memory: dict
    """`MemoryMonitor.result()` over the run (cuda_max_reserved_mb, rss_peak_mb, ...)."""
    seconds: float
    """Wall time: setup, warm-up and the measured steps."""
    oom: str = ""
    """The out-of-memory error's first line, when it ran out of memory."""
    error: str = ""
    """'Type: message' of any other failure."""
    notes: tuple[str, ...] = ()
    """torch.compile warnings the run raised (e.g. a fallback to eager), when recorded."""


def run_steps(cfg: TrainConfig, cache: SequenceCache, device, warmup_steps: int, steps: int,
              stop: Optional[Callable[[ThroughputMeter], bool]] = None, record_warnings: bool = False) -> StepRun:
    """The one step measurer (the plan search's probe, the ablation, the dry run's forecast): `cfg` on `device` for
    `warmup_steps` optimizer steps, then `steps` more (a fixed count, the whole window timed at once), or with
    `stop` step by step until it says enough, at most `MAX_STEPS_FACTOR x steps`. Starts from an empty allocator
    with reset peaks and gives everything back before returning; a failure is reported, never raised."""
    probe = probe_config(cfg, warmup_steps, steps, fixed=stop is None)
    runtime = Runtime.create(probe, device)  # the plan's own precision and cudnn.benchmark
    release(runtime, compiled=False)  # nothing left from before; peaks from here on
    started = time.perf_counter()
    session, train, oom_text, error = None, {}, "", ""
    with warnings.catch_warnings(record=True) if record_warnings else contextlib.nullcontext() as caught:
        if record_warnings:
            warnings.simplefilter("always", RuntimeWarning)
        try:
            session = setup(probe, cache, runtime)
            session.memory.reset()
            train = train_epoch(session, stop=stop)
        except Exception as e:  # a failed run is a measurement, not a crash
            oom = out_of_memory_in(e)
            reason = oom if oom is not None else e
            text = str(reason).splitlines()[0] if str(reason) else ""
            oom_text, error = (text[:300], "") if oom is not None else ("", f"{type(reason).__name__}: {text}"[:300])
    # Outside the except block: the exception (and the frames holding the batch) is gone by now.
    memory = (session.memory if session is not None else MemoryMonitor(runtime.device)).result()
    if session is not None:
        session.step.optimizer.zero_grad(set_to_none=True)
    del session
    seconds = time.perf_counter() - started
    release(runtime, compiled=cfg.compile)
    notes = tuple(sorted({str(w.message).splitlines()[0][:200] for w in caught or () if "compile" in str(w.message)}))
    return StepRun(train=train if not (oom_text or error) else {}, memory=memory, seconds=seconds, oom=oom_text,
                   error=error, notes=notes)


def measure_plan(cfg: TrainConfig, cache: SequenceCache, runtime: Runtime, warmup_steps: int, steps: int,
                 plan_keys: Sequence[str] = (), usable_bytes: Optional[int] = None) -> PlanMeasurement:
    """Train `cfg` for `warmup_steps` optimizer steps on `runtime`'s device, then time it step by step until its
    figure is narrow (`timed_enough`) or the probe's last step (`run_steps`).
    An out-of-memory error is a status ('oom'), any other failure too ('error'): never raised."""
    if warmup_steps < 0 or steps < 1:
        raise ValueError(f"measure_plan: need warmup_steps >= 0 and steps >= 1, got {warmup_steps}, {steps}")
    run = run_steps(cfg, cache, runtime.device, warmup_steps, steps, stop=timed_enough(steps))
    status = "oom" if run.oom else "error" if run.error else "ok"
    ok, train = status == "ok", run.train
    return PlanMeasurement(
        plan=describe_plan(cfg, plan_keys), status=status,
        samples_per_s=float(train["samples_per_s"]) if ok else math.nan,
        steps_per_s=float(train["steps_per_s"]) if ok else math.nan,
        samples_per_s_se=float(train["samples_per_s"] * train["samples_per_s_rel_se"]) if ok else math.nan,
        steps_timed=int(train["steps_timed"]) if ok else 0,
        peak_reserved_mb=float(run.memory.get("cuda_max_reserved_mb", math.nan)),
        rss_peak_mb=float(run.memory["rss_peak_mb"]), seconds=run.seconds,
        device=device_identity(runtime, usable_bytes), error=run.oom or run.error)
