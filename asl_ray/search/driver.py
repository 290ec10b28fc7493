"""One Tune trial = `train_driver_fn`: a one-worker TorchTrainer around search/trial_worker.py's
`train_fn_per_worker`, which chooses the trial's execution plan and trains it.

Worker metrics reach Tune through `TuneReportCallback` (one Tune iteration per epoch, so ASHA can stop
the trial between epochs). An OOM is caught by the loop's guard and reported as the trial's last result
(`feasible: false`), as is an empty plan search (`status: no_plan`); the trial then ends normally and the
search goes on.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import ray.tune
from ray.tune.integration.ray_train import TuneReportCallback

from asl_ray.config import FIELD_NAMES, TrainConfig
from asl_ray.search import trial_worker
from asl_ray.search.space import SearchSpace
from asl_ray.train.worker import make_trainer

DRIVER_CPUS = 0.01  # Tune refuses a 0-CPU trial; the driver only waits on its TorchTrainer


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of one search (or of one confirmation stage) shares; passed with tune.with_parameters."""
    base_config: dict
    """The TrainConfig every trial starts from, as a dict (`SearchSpace.base_config().to_dict()`)."""
    cache_path: str
    """The data's SequenceCache directory (memory-mapped by the worker)."""
    train_storage: str
    """Where each trial's TorchTrainer run lives (`trial-<id>` under it)."""
    use_gpu: bool
    """One GPU per Train worker (else CPU)."""
    cpus_per_worker: float
    """CPUs of the Train worker."""
    emulate_usable_bytes: Optional[int] = None
    """On CUDA: cap the worker's allocator to this card size (None: the device's own memory)."""
    max_failures: int = 0
    """Worker crashes a trial survives (restarted from its last checkpoint)."""
    plan_search: bool = False
    """True: a trial's config holds learning values, its worker measures `space.plan_candidates` and trains the
    fastest; False: the config is trained as given (mode optuna, and the confirmation stage's full configs)."""
    space: Optional[SearchSpace] = None
    """Resolves a trial's values into TrainConfigs (`plan_candidates`, `config_for`); None: the values are
    TrainConfig keys over `base_config`."""
    plan_cache_dir: Optional[str] = None
    """The plan cache (asl_ray/plan/cache.py): runs/<name>/plans."""
    warmup_steps: int = 2
    """Optimizer steps before a plan's timing starts."""
    steps: int = 3
    """Optimizer steps a plan is timed over."""
    max_plans: int = 8
    """Most plans measured per learning config."""
    plan_keys: tuple[str, ...] = ()
    """The plan's keys (`space.plan_names()`): how a plan is named and reported."""
    usable_bytes: int = 0
    """The target card's usable bytes: the plan search's VRAM check."""
    num_classes: int = 250
    """The data's number of signs (the classifier's width, for the VRAM check)."""
    compute_capability: Optional[tuple[int, int]] = None
    """The target card's architecture (cuBLAS workspaces); None: unknown."""

    def __post_init__(self) -> None:
        problems = []
        if self.plan_search and self.space is None:
            problems.append("space: needed to resolve candidates when plan_search is on")
        if self.plan_search and not self.plan_cache_dir:
            problems.append("plan_cache_dir: needed when plan_search is on")
        if self.plan_search and self.usable_bytes <= 0:
            problems.append(f"usable_bytes: must be > 0 when plan_search is on, got {self.usable_bytes}")
        if problems:
            raise ValueError("invalid TrialSettings: " + "; ".join(problems))


def trial_config(values: Mapping[str, Any], settings: TrialSettings) -> TrainConfig:
    """The one TrainConfig of a trial trained as given: a full TrainConfig dict (or keys over the base config
    when there is no space) as is; the space's values through `config_for` (the effective batch resolved)."""
    if settings.space is None or set(FIELD_NAMES) <= set(values):
        return TrainConfig.from_dict({**settings.base_config, **values}, source="train_loop_config")
    return settings.space.config_for(values)


def trial_candidates(values: Mapping[str, Any], settings: TrialSettings) -> list[TrainConfig]:
    """What the trial's worker chooses from: every plan of the learning values (the plan keys among `values`,
    a baseline's pin, restrict them), or the one config trained as given."""
    if settings.plan_search:
        return settings.space.plan_candidates(values)
    return [trial_config(values, settings)]


def loop_config(values: Mapping[str, Any], settings: TrialSettings) -> dict[str, Any]:
    return trial_worker.worker_loop_config(
        trial_candidates(values, settings), Path(settings.cache_path), settings.plan_search, settings.plan_keys,
        emulate_usable_bytes=settings.emulate_usable_bytes,
        plan_cache_dir=Path(settings.plan_cache_dir) if settings.plan_cache_dir else None,
        warmup_steps=settings.warmup_steps, steps=settings.steps, max_plans=settings.max_plans,
        usable_bytes=settings.usable_bytes, num_classes=settings.num_classes,
        compute_capability=settings.compute_capability)


def train_driver_fn(config: dict[str, Any], settings: TrialSettings) -> None:
    trial_id = ray.tune.get_context().get_trial_id()
    trainer = make_trainer(
        loop_config(config["train_loop_config"], settings),
        name=f"trial-{trial_id}",  # a fixed name: a restored trial's TorchTrainer resumes its own run
        storage_path=settings.train_storage, use_gpu=settings.use_gpu, cpus_per_worker=settings.cpus_per_worker,
        max_failures=settings.max_failures, callbacks=[TuneReportCallback()], train_fn=trial_worker.train_fn_per_worker)
    trainer.fit()
