"""Ray Train wiring: the same loop as `fit`, inside a TorchTrainer worker (one GPU, or CPU).

The worker's config is plain data: {"train_config": TrainConfig as a dict, "cache_path": str,
"emulate_usable_bytes": int | None}. Data is never read from parquet here: the cache built by the
driver is memory-mapped. A search trial's worker (asl_ray/search/trial_worker.py) chooses its plan first,
then trains through the same `fit_on_worker`.
"""
from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import ray
import ray.train
import ray.train.torch
import torch

from asl_ray.config import TrainConfig
from asl_ray.data.cache import SequenceCache
from asl_ray.faults import faults_for
from asl_ray.train.checkpoint import load_checkpoint, save_checkpoint
from asl_ray.train.loop import fit
from asl_ray.train.runtime import Runtime
from asl_ray.outcome import Status


KILL_GRACE_SECONDS = 6.0
EXTRA_METRICS = "extra_metrics"  # the checkpoint dict's key of RayReporter.extra_metrics


class RayReporter:
    """ray.train.report per epoch; the checkpoint comes from rank 0 only.

    Every report carries `epochs_done`, the epochs this Train run has completed: after a resume the run
    continues from its checkpoint while Tune's `training_iteration` starts again at 1, so the search
    counts epochs with this (ASHA's time attribute, ok/stopped, Optuna's COMPLETE/PRUNED)."""

    def __init__(self, kill_at_epoch: int = 0, extra_metrics: Optional[dict[str, Any]] = None):
        self.kill_at_epoch = kill_at_epoch  # fault injection (tests): 0 never kills
        # Added to every report and kept in the checkpoint under EXTRA_METRICS (a search trial's plan
        # metrics and seed): a resumed run reports them again without searching again.
        self.extra_metrics = dict(extra_metrics or {})

    def epoch_end(self, metrics: dict[str, Any], checkpoint: dict[str, Any]) -> None:
        if self.kill_at_epoch and metrics["epoch"] == self.kill_at_epoch:
            # As a crashed worker would: this epoch's work is lost, the last checkpoint is not. The
            # pause lets the controller register that checkpoint first (it polls every few seconds;
            # a real crash comes long after it, test epochs are very short).
            time.sleep(KILL_GRACE_SECONDS)
            os.kill(os.getpid(), signal.SIGKILL)
        # node_id: where the worker ran. The loop's "epoch" counts from 0. The checkpoint's history holds
        # every epoch of the run, those before a resume too (Tune's own files restart with the trial).
        checkpoint = {**checkpoint, EXTRA_METRICS: self.extra_metrics}
        metrics = {**metrics, **self.extra_metrics, "epochs_done": metrics["epoch"] + 1,
                   "loop_seconds_total": sum(h.get("epoch_seconds", 0.0) for h in checkpoint.get("history", [])),
                   "node_id": ray.get_runtime_context().get_node_id()}
        if ray.train.get_context().get_world_rank() == 0:
            with tempfile.TemporaryDirectory() as tmp:
                save_checkpoint(checkpoint, Path(tmp))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)

    def run_end(self, result: dict[str, Any]) -> None:
        # An OOM or a divergence ends the run early: report it as the trial's last result so Tune
        # records it as infeasible, then return normally instead of raising.
        if result["status"] != Status.OK:
            # Tune's scheduler and the searcher need every metric in every result: an infeasible
            # run scores zero on both objectives (the searcher also marks it with a constraint).
            # "epoch" is the one that failed, so it is also the number of epochs completed.
            ray.train.report({"val_acc": 0.0, "samples_per_s": 0.0, **result, **self.extra_metrics,
                              "epochs_done": result["epoch"],
                              "node_id": ray.get_runtime_context().get_node_id()})


def train_fn_per_worker(config: dict[str, Any]) -> None:
    cfg = TrainConfig.from_dict(config["train_config"], source="train_loop_config")
    cache = SequenceCache(Path(config["cache_path"]))
    device = worker_device(config["emulate_usable_bytes"])
    resume_state = resume_state_of(ray.train.get_checkpoint())
    fit_on_worker(cfg, cache, device, resume_state)


def worker_device(emulate_usable_bytes: Optional[int]) -> torch.device:
    """This worker's device, its allocator capped to the emulated card's size on CUDA."""
    device = ray.train.torch.get_device()
    if device.type == "cuda" and emulate_usable_bytes:
        from asl_ray.train.runtime import emulate_card_memory
        emulate_card_memory(emulate_usable_bytes, device)
    return device


def fit_on_worker(cfg: TrainConfig, cache: SequenceCache, device: torch.device,
                  resume_state: Optional[dict[str, Any]], extra_metrics: Optional[dict[str, Any]] = None) -> None:
    """`fit` with a RayReporter, from `resume_state` when there is one."""
    reporter = RayReporter(kill_at_epoch=faults_for(cfg).kill_at_epoch if resume_state is None else 0,
                           extra_metrics=extra_metrics)
    if resume_state is not None and resume_state["epoch"] + 1 >= cfg.epochs:
        # Restored after the last epoch's report was lost to Tune: say it again, train nothing.
        reporter.epoch_end(resume_state["history"][-1], resume_state)
        return
    fit(cfg, cache, reporter, runtime=Runtime.create(cfg, device), resume_state=resume_state)


def resume_state_of(checkpoint: Optional[ray.train.Checkpoint]) -> Optional[dict[str, Any]]:
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        return load_checkpoint(Path(d))


def worker_loop_config(cfg: TrainConfig, cache_path: Path, emulate_usable_bytes: Optional[int] = None) -> dict[str, Any]:
    return {"train_config": cfg.to_dict(), "cache_path": str(cache_path), "emulate_usable_bytes": emulate_usable_bytes}


def scaling_config(use_gpu: bool, cpus_per_worker: float = 1.0,
                   gpus_per_worker: Optional[float] = None) -> ray.train.ScalingConfig:
    """One worker: `cpus_per_worker` CPUs and, with `use_gpu`, one GPU or `gpus_per_worker` of one (a packed search
    trial's share: Ray places the worker only where that fraction of a GPU is free)."""
    resources = {"CPU": cpus_per_worker}
    if use_gpu and gpus_per_worker is not None:
        resources["GPU"] = gpus_per_worker
    return ray.train.ScalingConfig(num_workers=1, use_gpu=use_gpu, resources_per_worker=resources)


def make_trainer(loop_config: dict[str, Any], name: str, storage_path: str, use_gpu: bool,
                 cpus_per_worker: float = 1.0, max_failures: int = 0, callbacks: Optional[list] = None,
                 train_fn: Optional[Callable[[dict[str, Any]], None]] = None,
                 gpus_per_worker: Optional[float] = None, torch_config=None):
    """A one-worker TorchTrainer around `train_fn` (this module's `train_fn_per_worker` unless given);
    `torch_config`: its Torch backend (None: Ray's default, NCCL with a GPU)."""
    from ray.train.torch import TorchTrainer
    return TorchTrainer(
        train_fn or train_fn_per_worker,
        train_loop_config=loop_config, torch_config=torch_config,
        scaling_config=scaling_config(use_gpu, cpus_per_worker, gpus_per_worker),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path, callbacks=callbacks,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            # A worker group that cannot start (e.g. resources held by a leaked placement group) fails
            # the run after a few tries instead of retrying forever (Ray's default).
            failure_config=ray.train.FailureConfig(max_failures=max_failures, controller_failure_limit=3)),
    )
