"""From raw measurements to rows: medians, paired ratios with their spread, and the claim's verdict."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Optional

from asl_ray.ablate.measure import Measurement
from asl_ray.ablate.variants import Ablation

NEEDS_GPU = "needs GPU"
BASE = "base"


@dataclass
class VariantRuns:
    ablation: Optional[Ablation]
    """None for the base config."""
    runs: list[Measurement] = field(default_factory=list)
    skipped: str = ""
    """Why it was not measured ('needs GPU'), or ''."""
    predicted_reserved_mb: float = float("nan")
    """The estimator's allocator peak (modelled max_memory_reserved, no CUDA context): beside the measured one."""
    predicted_with_context_mb: float = float("nan")
    """The estimator's whole-card total (allocator peak + CUDA context + compile kernels): what must fit."""

    @property
    def name(self) -> str:
        return self.ablation.name if self.ablation else BASE


def paired_ratios(variant: list[Optional[float]], base: list[Optional[float]]) -> list[float]:
    """variant_r / base_r for each repeat r: both were measured back to back, so drift cancels."""
    return [v / b for v, b in zip(variant, base) if v is not None and b]


def spread(values: list[float]) -> dict[str, Optional[float]]:
    if not values:
        return {"median": None, "min": None, "max": None}
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def verdict(ratio: Optional[float], claimed: Optional[tuple[float, float]]) -> str:
    if claimed is None:
        return ""
    if ratio is None:
        return NEEDS_GPU
    lo, hi = claimed
    if lo <= ratio <= hi:
        return "as claimed"
    return f"{'below' if ratio < lo else 'above'} the claimed {lo:.2f}-{hi:.2f}"


def row(v: VariantRuns, base: VariantRuns) -> dict[str, Any]:
    """One table row; ratios are None where nothing was measured (or nothing can be on this device)."""
    sps = [m.samples_per_s for m in v.runs]
    mem = [m.peak_reserved_mb for m in v.runs]
    speed_ratio = spread(paired_ratios(sps, [m.samples_per_s for m in base.runs]))
    memory_ratio = spread(paired_ratios(mem, [m.peak_reserved_mb for m in base.runs]))
    measured_mem = [m for m in mem if m is not None]
    device_used = [m.device_used_mb_sampled_max for m in v.runs if m.device_used_mb_sampled_max is not None]
    a = v.ablation
    claim = a.claim if a else None
    out: dict[str, Any] = {
        "variant": v.name, "changes": dict(a.overrides) if a else {}, "note": a.note if a else "",
        "status": v.skipped or "measured", "repeats": len(v.runs),
        "samples_per_s": spread(sps), "speed_ratio": speed_ratio,
        "peak_reserved_mb": statistics.median(measured_mem) if measured_mem else None,
        "memory_ratio": memory_ratio,
        "predicted_reserved_mb": v.predicted_reserved_mb,
        "predicted_memory_ratio": (v.predicted_reserved_mb / base.predicted_reserved_mb
                                   if base.predicted_reserved_mb else None),
        "device_used_mb_sampled_max": statistics.median(device_used) if device_used else None,
        "predicted_with_context_mb": v.predicted_with_context_mb,
        "claim": claim.text if claim else "", "claimed_speed_ratio": claim.speed_ratio if claim else None,
        "claimed_memory_ratio": claim.memory_ratio if claim else None,
        "notes": sorted({n for m in v.runs for n in m.notes}),
    }
    if v.skipped == NEEDS_GPU:
        out["verdict"] = NEEDS_GPU
    elif v.skipped:
        out["verdict"] = v.skipped  # e.g. "out of memory on rtx4070"
    elif claim:
        parts = []
        if claim.speed_ratio:
            parts.append("speed " + verdict(speed_ratio["median"] if v is not base else 1.0, claim.speed_ratio))
        if claim.memory_ratio:
            parts.append("memory " + verdict(memory_ratio["median"], claim.memory_ratio))
        out["verdict"] = "; ".join(parts)
    else:
        out["verdict"] = ""
    return out
