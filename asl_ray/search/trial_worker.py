"""The Train worker of a search trial: choose the learning config's execution plan, then train it.

Why the plan search runs here, inside the trial's one Train worker, and not as trials of its own: the plan
is measured on the trial's own device, under the card's memory emulation, with the data memory-mapped as the
training reads it, and without a TorchTrainer start-up (~15-25 s here) per plan; the (plan, device) cache
(asl_ray/plan/cache.py) makes a repeat free, across trials and across a resumed trial's attempts.

The worker's config is plain data (`worker_loop_config`): the candidate TrainConfigs as dicts (one learning
config's plans, in preference order; with `plan_search` off, the one config to train as given), the cache
path, the emulated card's size, and the plan search's settings. A resumed trial (a Train checkpoint exists)
continues with the checkpoint's config, its plan, and reports the plan metrics saved in it: it never
searches again.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import ray
import ray.train

from asl_ray.config import TrainConfig
from asl_ray.data.cache import SequenceCache
from asl_ray.plan.cache import PlanCache
from asl_ray.plan.fits import CardFit
from asl_ray.plan.measure import describe_plan
from asl_ray.plan.search import runs_on, search_plans
from asl_ray.train.runtime import Runtime
from asl_ray.train.worker import EXTRA_METRICS, fit_on_worker, resume_state_of, worker_device

PLAN_CONFIG_PREFIX = "plan_config/"
"""Reported per plan key: the chosen plan's value of that key as written (`plan_config/batch_size`, ...);
the rows' plan columns come from these."""


def worker_loop_config(candidates: Sequence[TrainConfig], cache_path: Path, plan_search: bool,
                       plan_keys: Sequence[str], emulate_usable_bytes: Optional[int] = None,
                       plan_cache_dir: Optional[Path] = None, warmup_steps: int = 0, steps: int = 0,
                       max_plans: int = 0, usable_bytes: int = 0, num_classes: int = 0,
                       compute_capability: Optional[tuple[int, int]] = None) -> dict[str, Any]:
    if not plan_search and len(candidates) != 1:
        raise ValueError(f"worker_loop_config: without plan search one config is trained, got {len(candidates)}")
    return {"candidates": [c.to_dict() for c in candidates], "cache_path": str(cache_path),
            "plan_search": plan_search, "plan_keys": list(plan_keys), "emulate_usable_bytes": emulate_usable_bytes,
            "plan_cache_dir": str(plan_cache_dir) if plan_cache_dir else None, "warmup_steps": warmup_steps,
            "steps": steps, "max_plans": max_plans, "usable_bytes": usable_bytes, "num_classes": num_classes,
            "compute_capability": compute_capability}


def plan_config_metrics(cfg: TrainConfig, plan_keys: Sequence[str]) -> dict[str, Any]:
    return {PLAN_CONFIG_PREFIX + k: getattr(cfg, k) for k in plan_keys}


def train_fn_per_worker(config: dict[str, Any]) -> None:
    cache = SequenceCache(Path(config["cache_path"]))
    device = worker_device(config["emulate_usable_bytes"])
    resume_state = resume_state_of(ray.train.get_checkpoint())
    if resume_state is not None:  # its plan was chosen by an earlier attempt: continue with it
        cfg = TrainConfig.from_dict(resume_state["config"], source="checkpoint")
        fit_on_worker(cfg, cache, device, resume_state, resume_state.get(EXTRA_METRICS, {}))
        return
    candidates = [TrainConfig.from_dict(c, source="train_loop_config") for c in config["candidates"]]
    plan_keys = config["plan_keys"]
    if not config["plan_search"]:
        cfg = candidates[0]
        extra = {"plan": describe_plan(cfg, plan_keys), "seed": cfg.seed, **plan_config_metrics(cfg, plan_keys)}
        fit_on_worker(cfg, cache, device, None, extra)
        return
    runtime = Runtime.create(candidates[0], device)
    choice = search_plans(
        candidates, cache, runtime, PlanCache(Path(config["plan_cache_dir"])),
        CardFit(config["usable_bytes"], config["num_classes"], config["compute_capability"]),
        config["warmup_steps"], config["steps"], config["max_plans"], plan_keys,
        usable_bytes=config["emulate_usable_bytes"] if device.type == "cuda" else None)
    print(choice.summary(), flush=True)
    seed = candidates[0].seed if candidates else 0
    if choice.config is None:
        # Nothing to train: the trial's one result says so (infeasible; the searcher adds a constraint).
        ray.train.report({"status": "no_plan", "feasible": False, "val_acc": 0.0, "samples_per_s": 0.0,
                          "epochs_done": 0, "seed": seed, **choice.metrics(),
                          "node_id": ray.get_runtime_context().get_node_id()})
        return
    # The plan columns name the plan as written (what the target card runs: fp16 stays fp16 though a CPU
    # measured and trains it as fp32; precision_run says what ran), the first candidate this device runs so.
    written = next((c for c in candidates if runs_on(c, runtime) == choice.config), choice.config)
    extra = {**choice.metrics(), "seed": choice.config.seed, **plan_config_metrics(written, plan_keys)}
    fit_on_worker(choice.config, cache, device, None, extra)
