"""One Tune trial = `train_driver_fn`: a one-worker TorchTrainer around the loop's `train_fn_per_worker`.

Worker metrics reach Tune through `TuneReportCallback` (one Tune iteration per epoch, so ASHA can stop
the trial between epochs). An OOM is caught by the loop's guard and reported as the trial's last result
(`feasible: false`); the trial then ends normally and the search goes on.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import ray.train
import ray.tune
from ray.tune.integration.ray_train import TuneReportCallback

from asl_ray.config import TrainConfig
from asl_ray.train.worker import make_trainer, worker_loop_config

DRIVER_CPUS = 0.01  # Tune refuses a 0-CPU trial; the driver only waits on its TorchTrainer


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of one search shares (passed with tune.with_parameters)."""
    base_config: dict
    cache_path: str
    train_storage: str
    use_gpu: bool
    cpus_per_worker: float
    emulate_usable_bytes: Optional[int] = None
    max_failures: int = 0


def trial_config(config: dict[str, Any], settings: TrialSettings) -> TrainConfig:
    return TrainConfig.from_dict({**settings.base_config, **config["train_loop_config"]},
                                 source="train_loop_config")


def train_driver_fn(config: dict[str, Any], settings: TrialSettings) -> None:
    trial_id = ray.tune.get_context().get_trial_id()
    cfg = trial_config(config, settings)
    trainer = make_trainer(
        worker_loop_config(cfg, Path(settings.cache_path), settings.emulate_usable_bytes),
        name=f"trial-{trial_id}",  # a fixed name: a restored trial's TorchTrainer resumes its own run
        storage_path=settings.train_storage, use_gpu=settings.use_gpu, cpus_per_worker=settings.cpus_per_worker,
        max_failures=settings.max_failures, callbacks=[TuneReportCallback()])
    trainer.fit()
