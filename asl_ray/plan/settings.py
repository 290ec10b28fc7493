"""How a trial searches its execution plans: the space's `plan_search:` section, read once and passed whole to
the worker (asl_ray/search/trial_spec.py) and to `search_plans`."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PlanSearchSettings:
    mode: str = "measure"
    """'measure': Optuna samples the learning knobs and each trial measures its candidate plans before training;
    'optuna': Optuna samples the plan knobs too, one plan per trial (the literal one-level search)."""
    warmup_steps: int = 2
    """Optimizer steps run before a plan's timing starts (allocator, cuDNN autotune, compilation)."""
    steps: int = 3
    """Optimizer steps a plan is timed over."""
    max_plans: int = 8
    """Most plans measured per learning config (fitting candidates, largest micro-batch first)."""
    min_batch_size: int = 1
    """The smallest micro-batch any plan may use: a learning constraint, not a speed one. BatchNorm sees the
    micro-batch, and below some size it changes what is learned (bench/microbatch_accuracy.py: at effective batch
    32, micro-batch 4 trained 0.036 below 32 on the smoke model and 0.127 below at dim 192, both beyond delta 0.02)."""
