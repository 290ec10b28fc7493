"""Ray Train wiring: the same loop as `fit`, inside a TorchTrainer worker (one GPU, or CPU).

The worker's config is plain data: {"train_config": TrainConfig as a dict, "cache_path": str,
"emulate_usable_bytes": int | None}. Data is never read from parquet here: the cache built by the
driver is memory-mapped.
"""
from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import ray
import ray.train
import ray.train.torch
import torch

from asl_ray.config import TrainConfig
from asl_ray.data.cache import SequenceCache
from asl_ray.train.checkpoint import load_checkpoint, save_checkpoint
from asl_ray.train.loop import fit
from asl_ray.train.runtime import Runtime


KILL_GRACE_SECONDS = 6.0


class RayReporter:
    """ray.train.report per epoch; the checkpoint comes from rank 0 only.

    Every report carries `epochs_done`, the epochs this Train run has completed: after a resume the run
    continues from its checkpoint while Tune's `training_iteration` starts again at 1, so the search
    counts epochs with this (ASHA's time attribute, ok/stopped, Optuna's COMPLETE/PRUNED)."""

    def __init__(self, kill_at_epoch: int = 0):
        self.kill_at_epoch = kill_at_epoch  # fault injection (tests): 0 never kills

    def epoch_end(self, metrics: dict[str, Any], checkpoint: dict[str, Any]) -> None:
        if self.kill_at_epoch and metrics["epoch"] == self.kill_at_epoch:
            # As a crashed worker would: this epoch's work is lost, the last checkpoint is not. The
            # pause lets the controller register that checkpoint first (it polls every few seconds;
            # a real crash comes long after it, test epochs are very short).
            time.sleep(KILL_GRACE_SECONDS)
            os.kill(os.getpid(), signal.SIGKILL)
        # node_id: where the worker ran. The loop's "epoch" counts from 0. The checkpoint's history holds
        # every epoch of the run, those before a resume too (Tune's own files restart with the trial).
        metrics = {**metrics, "epochs_done": metrics["epoch"] + 1,
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
        if result["status"] != "ok":
            # Tune's scheduler and the searcher need every metric in every result: an infeasible
            # run scores zero on both objectives (the searcher also marks it with a constraint).
            # "epoch" is the one that failed, so it is also the number of epochs completed.
            ray.train.report({"val_acc": 0.0, "samples_per_s": 0.0, **result, "epochs_done": result["epoch"],
                              "node_id": ray.get_runtime_context().get_node_id()})


def train_fn_per_worker(config: dict[str, Any]) -> None:
    cfg = TrainConfig.from_dict(config["train_config"], source="train_loop_config")
    cache = SequenceCache(Path(config["cache_path"]))
    device = ray.train.torch.get_device()
    if device.type == "cuda" and config["emulate_usable_bytes"]:
        from asl_ray.vram.cards import emulate_card_memory
        emulate_card_memory(config["emulate_usable_bytes"], device)
    resume_state = _resume_state(ray.train.get_checkpoint())
    reporter = RayReporter(kill_at_epoch=cfg.inject_worker_kill_at_epoch if resume_state is None else 0)
    if resume_state is not None and resume_state["epoch"] + 1 >= cfg.epochs:
        # Restored after the last epoch's report was lost to Tune: say it again, train nothing.
        reporter.epoch_end(resume_state["history"][-1], resume_state)
        return
    fit(cfg, cache, reporter, runtime=Runtime.create(cfg, device), resume_state=resume_state)


def _resume_state(checkpoint: Optional[ray.train.Checkpoint]) -> Optional[dict[str, Any]]:
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        return load_checkpoint(Path(d))


def worker_loop_config(cfg: TrainConfig, cache_path: Path, emulate_usable_bytes: Optional[int] = None) -> dict[str, Any]:
    return {"train_config": cfg.to_dict(), "cache_path": str(cache_path), "emulate_usable_bytes": emulate_usable_bytes}


def make_trainer(loop_config: dict[str, Any], name: str, storage_path: str, use_gpu: bool,
                 cpus_per_worker: float = 1.0, max_failures: int = 0, callbacks: Optional[list] = None):
    """A one-worker TorchTrainer around `train_fn_per_worker`."""
    from ray.train.torch import TorchTrainer
    return TorchTrainer(
        train_fn_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=1, use_gpu=use_gpu,
                                               resources_per_worker={"CPU": cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path, callbacks=callbacks,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            # A worker group that cannot start (e.g. resources held by a leaked placement group) fails
            # the run after a few tries instead of retrying forever (Ray's default).
            failure_config=ray.train.FailureConfig(max_failures=max_failures, controller_failure_limit=3)),
    )
