"""The Train worker of a search trial: choose the learning config's execution plan, then train it.

Why the plan search runs here, inside the trial's one Train worker, and not as trials of its own: the plan
is measured on the trial's own device, under the card's memory emulation, with the data memory-mapped as the
training reads it, and without a TorchTrainer start-up (~15-25 s here) per plan; the (plan, device) cache
(asl_ray/plan/cache.py) makes a repeat free, across trials and across a resumed trial's attempts.

The worker's config is one `TrialSpec` (asl_ray/search/trial_spec.py), made by the driver and passed whole: the
candidate TrainConfigs (one learning config's plans, in preference order; without a plan search, the one config
to train as given), the cache path, the card, the emulated size, and the plan search's settings. It reports the
plan it chose and the memory predicted for it, so the search's rows need not re-derive either. A resumed trial (a Train checkpoint exists)
continues with the checkpoint's config, its plan, and reports the plan metrics saved in it: it never
searches again.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import ray
import ray.train

from asl_ray.config import TrainConfig
from asl_ray.data.cache import SequenceCache
from asl_ray.outcome import Status
from asl_ray.plan.cache import PlanCache
from asl_ray.plan.measure import describe_plan
from asl_ray.plan.search import runs_on, search_plans
from asl_ray.search.trial_spec import TrialSpec
from asl_ray.train.runtime import Runtime
from asl_ray.train.worker import EXTRA_METRICS, fit_on_worker, resume_state_of, worker_device

SPEC = "spec"
"""The TorchTrainer's train_loop_config holds the trial's `TrialSpec` under this key, whole."""
PLAN_CONFIG_PREFIX = "plan_config/"
"""Reported per plan key: the chosen plan's value of that key as written (`plan_config/batch_size`, ...);
the rows' plan columns come from these."""


def plan_config_metrics(cfg: TrainConfig, plan_keys: Sequence[str]) -> dict[str, Any]:
    return {PLAN_CONFIG_PREFIX + k: getattr(cfg, k) for k in plan_keys}


def train_fn_per_worker(config: dict[str, Any]) -> None:
    spec: TrialSpec = config[SPEC]
    cache = SequenceCache(Path(spec.cache_path))
    device = worker_device(spec.emulate_usable_bytes)
    resume_state = resume_state_of(ray.train.get_checkpoint())
    if resume_state is not None:  # its plan was chosen by an earlier attempt: continue with it
        cfg = TrainConfig.from_dict(resume_state["config"], source="checkpoint")
        fit_on_worker(cfg, cache, device, resume_state, resume_state.get(EXTRA_METRICS, {}))
        return
    candidates, plan_keys = list(spec.candidates), spec.plan_keys
    if spec.plan_search is None:
        cfg = candidates[0]
        fit_on_worker(cfg, cache, device, None, trained_metrics(spec, cfg, cfg, {"plan": describe_plan(cfg, plan_keys)}))
        return
    runtime = Runtime.create(candidates[0], device)
    choice = search_plans(candidates, cache, runtime, PlanCache(Path(spec.plan_cache_dir)), spec.card,
                          spec.plan_search, plan_keys,
                          usable_bytes=spec.emulate_usable_bytes if device.type == "cuda" else None)
    print(choice.summary(), flush=True)
    if choice.config is None:
        # Nothing to train: the trial's one result says so (infeasible; the searcher adds a constraint).
        ray.train.report({"status": Status.NO_PLAN.value, "feasible": False, "val_acc": 0.0, "samples_per_s": 0.0,
                          "epochs_done": 0, "seed": candidates[0].seed, **choice.metrics(),
                          "node_id": ray.get_runtime_context().get_node_id()})
        return
    # The plan columns name the plan as written (what the target card runs: fp16 stays fp16 though a CPU
    # measured and trains it as fp32; precision_run says what ran), the first candidate this device runs so.
    written = next((c for c in candidates if runs_on(c, runtime) == choice.config), choice.config)
    fit_on_worker(choice.config, cache, device, None, trained_metrics(spec, choice.config, written, choice.metrics()))


def trained_metrics(spec: TrialSpec, cfg: TrainConfig, written: TrainConfig, plan: dict[str, Any]) -> dict[str, Any]:
    """What every report of the trial carries besides the epoch's metrics (kept in its checkpoint): the plan
    it chose and how, the plan as written, its seed, and the memory predicted for it on the target card."""
    return {**plan, "seed": cfg.seed, **plan_config_metrics(written, spec.plan_keys), **_predicted(spec, written)}


def _predicted(spec: TrialSpec, cfg: TrainConfig) -> dict[str, float]:
    return spec.card.predicted_memory(cfg) if spec.card is not None else {}
