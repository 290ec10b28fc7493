"""Does a plan fit the card, by the VRAM estimate: the question the plan search asks before it measures."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from asl_ray.config import TrainConfig
from asl_ray.cards import Card, MiB
from asl_ray.vram.estimate import estimate_peak_vram
from asl_ray.vram.fit import fits_within

NAN = float("nan")


@dataclass(frozen=True)
class CardFit:
    """Picklable (it travels to the Train worker and is saved with the searcher): does `cfg` fit the card?"""
    usable_bytes: int
    """What the card leaves a run (total less the driver's reserve and the search's headroom)."""
    num_classes: int
    """Classifier width: the data's number of signs."""
    compute_capability: Optional[tuple[int, int]] = None
    """The card's architecture (cuBLAS workspaces are sized by it); None sizes them for an unknown card."""

    @classmethod
    def for_card(cls, card: Card, num_classes: int) -> "CardFit":
        return cls(card.usable_bytes, num_classes, card.compute_capability)

    def __call__(self, cfg: TrainConfig) -> tuple[bool, int]:
        """(fits, the bytes compared): the least need under the allocator's free-and-retry + context + margin,
        and a replay capped at this card's limit (asl_ray/vram/fit.py)."""
        return fits_within(cfg, self.usable_bytes, self.num_classes, self.compute_capability)

    def predicted_memory(self, cfg: Optional[TrainConfig]) -> dict[str, float]:
        """The predictions for `cfg` on this card, each labelled: the allocator's unconstrained peak (what
        `max_memory_reserved` measures, no CUDA context), that peak with the context (what nvidia-smi would
        show), and the fit figure the verdict compares with the card (least need + context + margin)."""
        if cfg is None:
            return {"predicted_reserved_mb": NAN, "predicted_total_mb": NAN, "predicted_fit_mb": NAN}
        estimate = estimate_peak_vram(cfg, self.num_classes, self.compute_capability)  # cached: the check asked
        return {"predicted_reserved_mb": estimate.reserved_peak_bytes() / MiB,
                "predicted_total_mb": estimate.total_bytes / MiB, "predicted_fit_mb": estimate.fit_bytes() / MiB}
