"""The training loop: setup -> epochs (train step, evaluation, report) -> result.

`fit` is shared by the standalone CLI and the Ray Train worker; only the Reporter differs.
"""
from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Callable, Optional, Protocol

import torch
from torch import nn

from asl_ray.config import TrainConfig
from asl_ray.data.cache import SequenceCache
from asl_ray.faults import NO_FAULTS, Faults, faults_for
from asl_ray.data.dataset import Batch, SequenceDataset, make_loader, split_of
from asl_ray.model import GISLRModel
from asl_ray.outcome import Status
from asl_ray.train.accumulate import make_accumulation
from asl_ray.train.metrics import MemoryMonitor, ThroughputMeter, run_speed
from asl_ray.train.optim import Lookahead, make_optimizer, make_schedule
from asl_ray.train.runtime import (Runtime, compile_for, compile_metrics, needs_stable_grads,
                                   with_eager_fallback)


class Reporter(Protocol):
    def epoch_end(self, metrics: dict[str, Any], checkpoint: dict[str, Any]) -> None: ...

    def run_end(self, result: dict[str, Any]) -> None: ...


class FaultInjector:
    """Test hooks (asl_ray/faults.py, never a config key): an OOM or a NaN loss at a chosen optimizer step
    (1-based)."""

    def __init__(self, faults: Faults = NO_FAULTS):
        self.oom_at, self.nan_at = faults.oom_at_step, faults.nan_at_step

    def before_forward(self, step: int) -> None:
        if self.oom_at and step == self.oom_at:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (injected at optimizer step {step})")

    def poison_loss(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        return loss * float("nan") if self.nan_at and step >= self.nan_at else loss


class TrainStep:
    """One micro-batch: forward under autocast, scaled backward of loss / window, and at the
    accumulation boundary unscale -> clip -> step -> update -> zero_grad."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 runtime: Runtime, cfg: TrainConfig, schedule=None, faults: Faults = NO_FAULTS):
        self.model, self.optimizer, self.scaler, self.runtime = model, optimizer, scaler, runtime
        self.schedule, self.clip = schedule, cfg.gradient_clip_val
        self.clip_foreach = True if cfg.foreach_optimizer else None  # None: torch's default (foreach on CUDA)
        self.faults = FaultInjector(faults)
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.backward = make_accumulation(self.params, cfg.foreach_grad_accumulation)
        self.stable_grads = needs_stable_grads(model)  # CUDA graphs: .grad must not be a graph output
        if self.stable_grads:
            for p in self.params:
                p.grad = torch.zeros_like(p)
        self.attempted_steps = 0  # optimizer steps asked for; the scaler may skip some
        self.taken_steps = 0
        optimizer.register_step_post_hook(self._count_taken)

    def _count_taken(self, *_):
        self.taken_steps += 1

    @property
    def skipped_steps(self) -> int:
        return self.attempted_steps - self.taken_steps

    def __call__(self, batch: Batch, window: int, at_boundary: bool) -> torch.Tensor:
        step = self.attempted_steps + 1
        self.faults.before_forward(step)
        loss = with_eager_fallback(self.model, lambda: self._forward_backward(batch, window, step))
        if at_boundary:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            if self.clip > 0:
                torch.nn.utils.clip_grad_norm_(self.params, self.clip, foreach=self.clip_foreach)
            self.scaler.step(self.optimizer)  # skipped if fp16 gradients overflowed
            self.scaler.update()
            if self.schedule is not None:
                self.schedule.step()
            self.optimizer.zero_grad(set_to_none=not self.stable_grads)
            self.attempted_steps += 1
        return loss.detach()

    def _forward_backward(self, batch: Batch, window: int, step: int) -> torch.Tensor:
        with self.runtime.autocast():
            loss = self.model(batch.x, batch.mask, batch.y)  # the model's own loss: compiled, in its graph
        loss = self.faults.poison_loss(loss, step)
        # Dividing by the window (not always by accumulation steps) keeps the last, partial window of
        # an epoch an average too.
        self.backward(self.scaler.scale(loss / window))
        return loss


def accumulation_window(i: int, n: int, accum: int) -> tuple[int, bool]:
    """(micro-batches in the window of batch i, whether batch i ends its window) for an epoch of n batches."""
    window_start = (i // accum) * accum
    window = min(accum, n - window_start)
    return window, i + 1 == window_start + window


@dataclass
class Session:
    cfg: TrainConfig
    runtime: Runtime
    model: GISLRModel
    step: TrainStep
    lookahead: Optional[Lookahead]
    train_set: SequenceDataset
    train_loader: Any
    val_loader: Any
    memory: MemoryMonitor
    epoch: int = 0
    history: list = field(default_factory=list)

    def batches_per_epoch(self) -> int:
        return batches_per_epoch(self.cfg, len(self.train_loader))


def batches_per_epoch(cfg: TrainConfig, loader_batches: int) -> int:
    return min(loader_batches, cfg.max_steps_per_epoch) if cfg.max_steps_per_epoch else loader_batches


def setup(cfg: TrainConfig, cache: SequenceCache, runtime: Runtime) -> Session:
    torch.manual_seed(cfg.seed)
    train_idx, val_idx = split_of(cfg, cache.participants)
    train_set = SequenceDataset(cache, train_idx, cfg, train=True)
    val_set = SequenceDataset(cache, val_idx, cfg, train=False)
    train_loader = make_loader(train_set, cfg, train=True, pin_memory=runtime.pin_memory)
    val_loader = make_loader(val_set, cfg, train=False, pin_memory=runtime.pin_memory,
                             batch_size=max(cfg.batch_size, 32))
    model = GISLRModel.from_config(cfg, cache.num_classes).to(runtime.device)
    optimizer, lookahead = make_optimizer(model, cfg)
    steps_per_epoch = math.ceil(batches_per_epoch(cfg, len(train_loader)) / cfg.gradient_accumulation_steps)
    schedule = make_schedule(optimizer, cfg, steps_per_epoch)
    step = TrainStep(compile_for(model, cfg, runtime), optimizer, runtime.grad_scaler(), runtime, cfg, schedule,
                     faults_for(cfg))
    return Session(cfg, runtime, model, step, lookahead, train_set, train_loader, val_loader,
                   MemoryMonitor(runtime.device))


def train_epoch(s: Session, stop: Optional[Callable[[ThroughputMeter], bool]] = None) -> dict[str, float]:
    """One epoch of training. `stop` (the plan probe): the meter times every optimizer step, and the epoch ends at
    the first step boundary where `stop(meter)` says enough was measured."""
    cfg, rt = s.cfg, s.runtime
    s.model.train()
    s.model.late_dropout_active = s.epoch >= cfg.late_dropout_start_epoch
    s.train_set.set_epoch(s.epoch)
    s.train_loader.batch_sampler.set_epoch(s.epoch)
    meter = ThroughputMeter(rt, cfg.throughput_warmup_steps, per_step=stop is not None)
    n = s.batches_per_epoch()
    # Counted on the device: no host sync per batch.
    loss_sum = torch.zeros((), device=rt.device)
    nonfinite = torch.zeros((), device=rt.device, dtype=torch.int64)
    for i, batch in enumerate(islice(s.train_loader, n)):
        window, at_boundary = accumulation_window(i, n, cfg.gradient_accumulation_steps)
        loss = s.step(batch.to(rt.device, non_blocking=rt.non_blocking), window, at_boundary)
        finite = torch.isfinite(loss)
        loss_sum += torch.where(finite, loss, torch.zeros_like(loss))
        nonfinite += (~finite).long()
        meter.batch_done(len(batch), at_boundary)
        if cfg.empty_cache_every and (i + 1) % cfg.empty_cache_every == 0:
            rt.empty_cache()
        if i % 16 == 0:
            s.memory.sample()
        if stop is not None and at_boundary and stop(meter):
            n = i + 1
            break
    bad = int(nonfinite)
    return {"train_loss": float(loss_sum) / max(1, n - bad), "nonfinite_losses": bad, "train_batches": n,
            **meter.result(), **compile_metrics(s.step.model)}


def has_diverged(s: Session, train_metrics: dict[str, float]) -> bool:
    """Most of the epoch's losses were NaN/inf, or the weights are. An fp16 overflow now and then is
    not divergence: the GradScaler skips those steps and lowers its scale."""
    if train_metrics["nonfinite_losses"] * 2 > train_metrics["train_batches"]:
        return True
    return not all(bool(torch.isfinite(p).all()) for p in s.model.parameters())


def diverged_result(s: Session, train_metrics: dict[str, float]) -> dict[str, Any]:
    s.step.optimizer.zero_grad(set_to_none=True)
    return {"oom": False, "feasible": False, "status": Status.DIVERGED.value, "epoch": s.epoch,
            "optimizer_steps": s.step.attempted_steps, "scaler_skipped_steps": s.step.skipped_steps,
            **train_metrics, **s.memory.result(),
            "error": f"loss not finite in {train_metrics['nonfinite_losses']} of {train_metrics['train_batches']} "
                     f"batches of epoch {s.epoch}"}


@torch.inference_mode()
def evaluate(s: Session) -> dict[str, float]:
    s.model.eval()
    rt = s.runtime
    correct = total = 0
    loss_sum = torch.zeros((), device=rt.device, dtype=torch.float64)
    criterion = nn.CrossEntropyLoss(reduction="sum")
    for batch in s.val_loader:
        batch = batch.to(rt.device, non_blocking=rt.non_blocking)
        with rt.autocast():
            logits = s.model(batch.x, batch.mask).float()
        loss_sum += criterion(logits, batch.y)
        correct += int((logits.argmax(-1) == batch.y).sum())
        total += len(batch)
    # val_samples: the binomial standard error of val_acc needs the count it is a fraction of.
    return {"val_loss": float(loss_sum) / max(1, total), "val_acc": correct / max(1, total), "val_samples": total}


def checkpoint_state(s: Session) -> dict[str, Any]:
    return {
        "epoch": s.epoch, "config": s.cfg.to_dict(), "history": s.history,
        "model": s.model.state_dict(), "optimizer": s.step.optimizer.state_dict(),
        "scaler": s.step.scaler.state_dict(), "schedule": s.step.schedule.state_dict(),
        "lookahead": s.lookahead.state_dict() if s.lookahead else None,
        "steps": {"attempted": s.step.attempted_steps, "taken": s.step.taken_steps},
        "torch_rng": torch.get_rng_state(),
    }


def restore(s: Session, state: dict[str, Any]) -> None:
    s.model.load_state_dict(state["model"])
    s.step.optimizer.load_state_dict(state["optimizer"])
    s.step.scaler.load_state_dict(state["scaler"])
    s.step.schedule.load_state_dict(state["schedule"])
    if s.lookahead and state["lookahead"]:
        s.lookahead.load_state_dict(state["lookahead"])
    s.step.attempted_steps, s.step.taken_steps = state["steps"]["attempted"], state["steps"]["taken"]
    torch.set_rng_state(state["torch_rng"])
    s.history = list(state["history"])
    s.epoch = state["epoch"] + 1


def oom_result(s: Session, error: BaseException) -> dict[str, Any]:
    """Free what the failed step held and describe the failure as a result, not a traceback."""
    s.step.optimizer.zero_grad(set_to_none=True)
    gc.collect()
    s.runtime.empty_cache()
    return {"oom": True, "feasible": False, "status": Status.OOM.value, "epoch": s.epoch,
            "oom_step": s.step.attempted_steps + 1, **s.memory.result(),
            "error": str(error).splitlines()[0][:300]}


def fit(cfg: TrainConfig, cache: SequenceCache, reporter: Reporter, runtime: Optional[Runtime] = None,
        resume_state: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Train `cfg` on `cache`, reporting every epoch; returns the last epoch's metrics (or the OOM result)."""
    runtime = runtime or Runtime.create(cfg)
    try:
        s = setup(cfg, cache, runtime)
        if resume_state is not None:
            restore(s, resume_state)
    except torch.cuda.OutOfMemoryError as e:  # the model or optimizer state alone does not fit
        gc.collect()
        runtime.empty_cache()
        result = {"oom": True, "feasible": False, "status": Status.OOM.value, "epoch": 0, "oom_step": 0,
                  **MemoryMonitor(runtime.device).result(), "error": str(e).splitlines()[0][:300]}
        reporter.run_end(result)
        return result
    result: dict[str, Any] = s.history[-1] if s.history else {}
    while s.epoch < cfg.epochs:
        s.memory.reset()
        started = time.perf_counter()
        try:
            train_metrics = train_epoch(s)
            if has_diverged(s, train_metrics):
                result = diverged_result(s, train_metrics)
                reporter.run_end(result)
                return result
            val_metrics = evaluate(s)
        except torch.cuda.OutOfMemoryError as e:
            result = oom_result(s, e)
            reporter.run_end(result)
            return result
        result = {"epoch": s.epoch, **train_metrics, **val_metrics, **s.memory.result(),
                  "scaler_skipped_steps": s.step.skipped_steps, "optimizer_steps": s.step.attempted_steps,
                  "lr": s.step.optimizer.param_groups[0]["lr"], "epoch_seconds": time.perf_counter() - started,
                  "device": str(runtime.device), "precision": runtime.precision, **compile_metrics(s.step.model),
                  "oom": False, "feasible": True, "status": Status.OK.value}
        result.update(run_speed([*s.history, result]))
        s.history.append(result)
        reporter.epoch_end(result, checkpoint_state(s))
        s.epoch += 1
    reporter.run_end(result)
    return result
