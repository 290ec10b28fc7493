"""Choose the execution plan of one learning config: the fastest of its candidates that fits and runs here.

(1) Each candidate becomes what this device runs (`runs_on`: on a CPU fp16 and bf16 are both fp32, so they
are one plan) and duplicates go. (2) The VRAM estimate (`fits`) rejects plans before anything runs: a
rejected plan is listed, never measured. (3) Up to `max_plans` fitting plans, in the given order (the
largest micro-batch first), are measured, each read from the plan cache if it is there, else measured under
the cache's lock and stored. (4) Of the plans that ran (status 'ok'), those the fastest is not credibly faster
than (`credibly_faster`: each figure carries its SE from the spread of its timed steps) are tied with it, and the
simplest of the tied is chosen (`simplicity`: no compile before compile, then fewer accumulation steps, then the
given order): a speed is a measurement with a spread, and a difference within it buys nothing. The other
measured plans are its runner-ups.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from asl_ray.config import TrainConfig
from asl_ray.data.cache import SequenceCache
from asl_ray.faults import faults_for
from asl_ray.plan.cache import PlanCache
from asl_ray.plan.measure import PlanMeasurement, describe_plan, device_identity, measure_plan
from asl_ray.plan.settings import PlanSearchSettings
from asl_ray.stats import t_quantile
from asl_ray.train.metrics import MB
from asl_ray.train.runtime import Runtime

Fits = Callable[[TrainConfig], tuple[bool, int]]
ALPHA = 0.05
"""One-sided level of 'credibly faster' between two plans."""


def _finite_or_none(x: float) -> Optional[float]:
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class PlanChoice:
    config: Optional[TrainConfig]
    """The chosen plan's full config, as this device runs it; None when no plan fits or none ran."""
    chosen: Optional[PlanMeasurement]
    """The chosen plan's measurement; None with `config`."""
    measured: list[PlanMeasurement]
    """Every plan measured or read from the cache: those that ran, fastest first, then the dropped ones."""
    rejected: list[dict]
    """The plans the VRAM estimate refused (never measured): {"plan", "predicted_fit_mb"} each."""
    tied: list[str] = dataclasses.field(default_factory=list)
    """The plans (names) the fastest was not credibly faster than, the fastest among them; the chosen is one."""
    seconds: float = 0.0
    """Wall time of the whole plan search."""

    def runner_ups(self) -> list[PlanMeasurement]:
        return [m for m in self.measured if m is not self.chosen]

    def metrics(self) -> dict[str, Any]:
        """Flat and JSON-able, for the trial's reports (a plan's figures are NaN when none was chosen)."""
        c = self.chosen
        runner_ups = [{"plan": m.plan, "status": m.status, "samples_per_s": _finite_or_none(m.samples_per_s),
                       "ci_half_width": _finite_or_none(_half_width(m)),
                       "peak_reserved_mb": _finite_or_none(m.peak_reserved_mb)} for m in self.runner_ups()]
        return {"plan": c.plan if c else "",
                "plan_samples_per_s": c.samples_per_s if c else math.nan,
                "plan_samples_per_s_ci": _half_width(c) if c else math.nan,
                "plans_tied": json.dumps(self.tied),
                "plan_peak_reserved_mb": c.peak_reserved_mb if c else math.nan,
                "plan_runner_ups": json.dumps(runner_ups),
                "plans_measured": len(self.measured),
                "plans_from_cache": sum(m.from_cache for m in self.measured),
                "plans_rejected": len(self.rejected),
                "plan_search_seconds": self.seconds}

    def summary(self) -> str:
        """One line for the worker's log."""
        found = (f"chose {self.chosen.plan} ({self.chosen.samples_per_s:.1f} +- {_half_width(self.chosen):.1f} "
                 f"samples/s" + (f"; tied within noise: {', '.join(self.tied)}" if len(self.tied) > 1 else "") + ")"
                 if self.chosen else "no plan fits and runs")
        dropped = [f"{m.plan}: {m.status}" for m in self.measured if not m.ok]
        return (f"plan search: {found}; {len(self.measured)} measured ({sum(m.from_cache for m in self.measured)} "
                f"from cache), {len(self.rejected)} rejected by the VRAM estimate"
                + (f"; dropped {', '.join(dropped)}" if dropped else "") + f" in {self.seconds:.1f}s")


def _half_width(m: PlanMeasurement) -> float:
    """The 95% half-width of a measurement's samples/s (NaN below two timed steps)."""
    return t_quantile(0.975, m.steps_timed - 1) * m.samples_per_s_se if m.steps_timed >= 2 else math.nan


def credibly_faster(a: PlanMeasurement, b: PlanMeasurement, alpha: float = ALPHA) -> bool:
    """a's samples/s exceeds b's by more than the one-sided t bound of their combined SE (dof: the fewer timed
    steps less one). An unknown SE (NaN) is never 0: then neither is credibly faster."""
    se = math.sqrt(a.samples_per_s_se ** 2 + b.samples_per_s_se ** 2)
    dof = min(a.steps_timed, b.steps_timed) - 1
    return bool(math.isfinite(se) and dof >= 1 and a.samples_per_s - b.samples_per_s > t_quantile(1 - alpha, dof) * se)


def simplicity(cfg: TrainConfig) -> tuple:
    """Sort key, simplest first: no compile (no compile time, no graph to break), then fewer accumulation steps."""
    return (cfg.compile, cfg.gradient_accumulation_steps)


def runs_on(cfg: TrainConfig, runtime: Runtime) -> TrainConfig:
    """`cfg` as `runtime`'s device runs it (Runtime's rules): off CUDA precision is fp32, pinned memory off and
    compile mode 'default', and neither cudnn.benchmark nor empty_cache has an effect (False and 0)."""
    if runtime.device.type == "cuda":
        return cfg  # a GPU runs every execution key as written
    plan_runtime = Runtime.create(cfg, runtime.device)  # no side effect off CUDA
    return dataclasses.replace(cfg, precision=plan_runtime.precision, pin_memory=plan_runtime.pin_memory,
                               compile_mode=plan_runtime.compile_mode(cfg), cudnn_benchmark=False,
                               empty_cache_every=0)


def search_plans(candidates: list[TrainConfig], cache: SequenceCache, runtime: Runtime, store: PlanCache,
                 fits: Fits, settings: PlanSearchSettings, plan_keys: Sequence[str], *,
                 usable_bytes: Optional[int] = None,
                 measure: Callable[..., PlanMeasurement] = measure_plan) -> PlanChoice:
    """The fastest of `candidates` (one learning config's plans, in preference order) that fits and runs.

    `fits` is asked about each candidate as written: it predicts the card's memory, and the card runs
    the precision as written even where this device (a CPU) runs another. `usable_bytes`: an emulated
    card's size, part of the device identity (`device_identity`). `measure`: `measure_plan` (tests give
    another)."""
    started = time.perf_counter()
    warmup_steps, steps, max_plans = settings.warmup_steps, settings.steps, settings.max_plans
    device = device_identity(runtime, usable_bytes)
    data = cache.path.name  # the cache directory is named by a key over the data's content

    plans: list[tuple[TrainConfig, TrainConfig]] = []  # (as written, as run here)
    for written in candidates:
        run = runs_on(written, runtime)
        if all(run != r for _, r in plans):
            plans.append((written, run))

    fitting: list[TrainConfig] = []
    rejected: list[dict] = []
    for written, run in plans:
        ok, fit_bytes = fits(written)
        if ok:
            fitting.append(run)
        else:
            rejected.append({"plan": describe_plan(run, plan_keys), "predicted_fit_mb": fit_bytes / MB})
    fitting = fitting[:max_plans]

    keys = [store.key(run, device, warmup_steps, steps, data) for run in fitting]
    kill_at = faults_for(candidates[0]).kill_in_plan_search if candidates else 0
    results: list[tuple[TrainConfig, PlanMeasurement]] = []
    for run, key in zip(fitting, keys):
        m = store.get(key)
        if m is None:
            with store.lock(key):
                m = store.get(key)  # another trial may have measured it while this one waited
                if m is None:
                    m = measure(run, cache, runtime, warmup_steps, steps, plan_keys=plan_keys,
                                usable_bytes=usable_bytes)
                    store.put(key, m, run)
                    if kill_at and sum(store.has(k) for k in keys) == kill_at:
                        os.kill(os.getpid(), signal.SIGKILL)  # fault injection: a worker dying mid-search
        # The cached entry may come from a config that differs in speed-neutral keys only: name it for this one.
        results.append((run, dataclasses.replace(m, plan=describe_plan(run, plan_keys))))

    ran = sorted((r for r in results if r[1].ok), key=lambda r: -r[1].samples_per_s)  # stable: ties keep order
    dropped = [r for r in results if not r[1].ok]
    tied = [r for r in ran if not credibly_faster(ran[0][1], r[1])]
    config, chosen = min(tied, key=lambda r: simplicity(r[0])) if tied else (None, None)  # stable: the faster
    return PlanChoice(config=config, chosen=chosen, measured=[m for _, m in ran + dropped], rejected=rejected,
                      tied=[m.plan for _, m in tied], seconds=time.perf_counter() - started)
