"""What one search trial's Train worker is given: one frozen `TrialSpec`, made by the driver and passed whole.

No Ray here. The spec holds objects, not their fields copied: the learning config's candidate plans, the space's
`PlanSearchSettings` as read from the YAML, and the target card as a `CardFit`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from asl_ray.config import TrainConfig
from asl_ray.plan.fits import CardFit
from asl_ray.plan.settings import PlanSearchSettings


@dataclass(frozen=True)
class TrialSpec:
    candidates: tuple[TrainConfig, ...]
    """One learning config's plans in preference order; without a plan search, the one config trained as given."""
    cache_path: str
    """The data's SequenceCache directory (memory-mapped by the worker)."""
    card: Optional[CardFit] = None
    """The target card: the plan search's VRAM check and the memory figures the worker reports (None: neither)."""
    emulate_usable_bytes: Optional[int] = None
    """On CUDA: cap the worker's allocator to this card size (None: the device's own memory)."""
    plan_search: Optional[PlanSearchSettings] = None
    """How to choose among the candidates; None: train `candidates[0]` as given."""
    plan_keys: tuple[str, ...] = ()
    """The plan's keys (`SearchSpace.plan_names()`): how a plan is named and reported."""
    plan_cache_dir: Optional[str] = None
    """The (plan, device) cache (asl_ray/plan/cache.py), needed with a plan search."""

    def __post_init__(self) -> None:
        problems = []
        if not self.candidates:
            problems.append("candidates: at least one TrainConfig")
        if self.plan_search is None and len(self.candidates) > 1:
            problems.append(f"candidates: without a plan search one config is trained, got {len(self.candidates)}")
        if self.plan_search is not None and not self.plan_cache_dir:
            problems.append("plan_cache_dir: needed with a plan search")
        if self.plan_search is not None and self.card is None:
            problems.append("card: needed with a plan search (its VRAM check)")
        if problems:
            raise ValueError("invalid TrialSpec: " + "; ".join(problems))
