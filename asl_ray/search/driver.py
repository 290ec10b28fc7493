"""One Tune trial = `train_driver_fn`: a one-worker TorchTrainer around search/trial_worker.py's
`train_fn_per_worker`, which chooses the trial's execution plan and trains it.

Worker metrics reach Tune through `TuneReportCallback` (one Tune iteration per epoch, so ASHA can stop
the trial between epochs). An OOM is caught by the loop's guard and reported as the trial's last result
(`feasible: false`), as is an empty plan search (`status: no_plan`); the trial then ends normally and the
search goes on.

Packing (`TrialSettings.pack`, asl_ray/search/packing.py): a trial's Train worker asks for its GPU share
(`resources_per_worker={"GPU": share}`), its allocator is capped to the share and its plan search checks plans
against it. In Train V2 a Tune trial holds only its driver's resources (DRIVER_CPUS); the worker's placement group is
Train's own, so it is Ray's GPU accounting, not Tune's, that keeps packed shares within the card: a trial whose share
is not free waits in Ray's queue, with Train's worker-group start timeout raised (PACKED_START_TIMEOUT_S).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import ray.tune
from ray.tune.integration.ray_train import TuneReportCallback

from asl_ray.config import FIELD_NAMES, TrainConfig
from asl_ray.plan.fits import CardFit
from asl_ray.plan.settings import PlanSearchSettings
from asl_ray.search import packing, trial_worker
from asl_ray.search.space import SearchSpace
from asl_ray.search.trial_spec import TrialSpec
from asl_ray.train.worker import make_trainer

DRIVER_CPUS = 0.01  # Tune refuses a 0-CPU trial; the driver only waits on its TorchTrainer
START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
"""Train V2's worker-group start timeout (default 60 s), propagated from the driver to its Train controller."""
PACKED_START_TIMEOUT_S = 6 * 3600.0
"""A packed trial's worker waits this long per try (Train tries 1 + controller_failure_limit times) for its share
to be free: the trials before it must finish first, and a GPU trial lasts minutes to hours."""


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of one search (or of one confirmation stage) shares; passed with tune.with_parameters.
    `spec_for` turns one trial's values into the `TrialSpec` its worker gets."""
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
    card: Optional[CardFit] = None
    """The target card (the plan search's VRAM check, the reported predictions); None: no predictions."""
    emulate_usable_bytes: Optional[int] = None
    """On CUDA: cap the worker's allocator to this card size (None: the device's own memory)."""
    max_failures: int = 0
    """Worker crashes a trial survives (restarted from its last checkpoint)."""
    plan_search: Optional[PlanSearchSettings] = None
    """The space's plan search: a trial's config holds learning values, its worker measures
    `space.plan_candidates` and trains the fastest; None: the config is trained as given (mode optuna, and the
    confirmation stage's full configs)."""
    space: Optional[SearchSpace] = None
    """Resolves a trial's values into TrainConfigs (`plan_candidates`, `config_for`); None: the values are
    TrainConfig keys over `base_config`."""
    plan_cache_dir: Optional[str] = None
    """The plan cache (asl_ray/plan/cache.py): runs/<name>/plans."""
    pack: bool = False
    """On a GPU with a card: each trial's worker takes its predicted share of the GPU (`trial_share`), capped to it,
    instead of a whole GPU (asl_ray/search/packing.py)."""

    def __post_init__(self) -> None:
        if self.plan_search is not None and self.space is None:
            raise ValueError("invalid TrialSettings: space: needed to resolve candidates with a plan search")

    def spec_for(self, values: Mapping[str, Any], share: Optional[packing.Share] = None) -> TrialSpec:
        """With a `share`, the worker's card is its share: the plan search's verdicts and the allocator cap."""
        card, cap = self.card, self.emulate_usable_bytes
        if share is not None and card is not None:
            card, cap = dataclasses.replace(card, usable_bytes=share.bytes), share.bytes
        return TrialSpec(candidates=tuple(trial_candidates(values, self)), cache_path=self.cache_path, card=card,
                         emulate_usable_bytes=cap, plan_search=self.plan_search,
                         plan_keys=tuple(self.space.plan_names()) if self.space is not None else (),
                         plan_cache_dir=self.plan_cache_dir)


def trial_config(values: Mapping[str, Any], settings: TrialSettings) -> TrainConfig:
    """The one TrainConfig of a trial trained as given: a full TrainConfig dict (or keys over the base config
    when there is no space) as is; the space's values through `config_for` (the effective batch resolved)."""
    if settings.space is None or set(FIELD_NAMES) <= set(values):
        return TrainConfig.from_dict({**settings.base_config, **values}, source="train_loop_config")
    return settings.space.config_for(values)


def trial_candidates(values: Mapping[str, Any], settings: TrialSettings) -> list[TrainConfig]:
    """What the trial's worker chooses from: every plan of the learning values (the plan keys among `values`,
    a baseline's pin, restrict them), or the one config trained as given."""
    if settings.plan_search is not None:
        return settings.space.plan_candidates(values)
    return [trial_config(values, settings)]


def trial_share(values: Mapping[str, Any], settings: TrialSettings) -> Optional[packing.Share]:
    """The GPU share of a packed trial (None unpacked: a whole GPU, or a CPU): its largest fitting plan's predicted
    need on the target card (the searcher's verdicts, read from the estimator's disk cache). The worker checks its
    plans against the share again: a plan whose replay does not run at the share's own limit is dropped there (the
    allocator's success is not monotone in its limit, asl_ray/vram/fit.py)."""
    if not (settings.pack and settings.use_gpu and settings.card is not None):
        return None
    candidates = trial_candidates(values, settings)
    return packing.share_for(packing.predicted_need(candidates, settings.card), settings.card.usable_bytes)


def packed_start_timeout() -> None:
    """Let a packed trial's worker wait in Ray's queue for its share (this process's Train controller inherits it);
    a timeout set by the user stays."""
    os.environ.setdefault(START_TIMEOUT_ENV, str(PACKED_START_TIMEOUT_S))


def trial_trainer(config: dict[str, Any], settings: TrialSettings,
                  train_fn: Callable[[dict[str, Any]], None] = trial_worker.train_fn_per_worker, torch_config=None):
    """The trial's one-worker TorchTrainer (its GPU share when packed); `train_fn` and `torch_config` are the
    worker's function and Torch backend (tests probe the wiring with their own on a CPU, which has no NCCL)."""
    trial_id = ray.tune.get_context().get_trial_id()
    values = config["train_loop_config"]
    share = trial_share(values, settings)
    if share is not None:
        packed_start_timeout()
    return make_trainer(
        {trial_worker.SPEC: settings.spec_for(values, share)},
        name=f"trial-{trial_id}",  # a fixed name: a restored trial's TorchTrainer resumes its own run
        storage_path=settings.train_storage, use_gpu=settings.use_gpu, cpus_per_worker=settings.cpus_per_worker,
        gpus_per_worker=share.fraction if share is not None else None,
        max_failures=settings.max_failures, callbacks=[TuneReportCallback()], train_fn=train_fn,
        torch_config=torch_config)


def train_driver_fn(config: dict[str, Any], settings: TrialSettings) -> None:
    trial_trainer(config, settings).fit()
