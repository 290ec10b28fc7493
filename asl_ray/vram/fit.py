"""Does a config fit a card, and what is the largest micro-batch that does (by the VRAM estimate)."""
from __future__ import annotations

import dataclasses
from typing import Optional

from asl_ray.config import TrainConfig
from asl_ray.cards import Card
from asl_ray.vram.estimate import estimate_peak_vram, runs_within


def fits(cfg: TrainConfig, card: Card, num_classes: int = 250) -> bool:
    """The fit verdict for `card` (see `fits_within`)."""
    return fits_within(cfg, card.usable_bytes, num_classes, card.compute_capability)[0]


def fits_within(cfg: TrainConfig, usable_bytes: int, num_classes: int = 250,
                compute_capability: Optional[tuple[int, int]] = None) -> tuple[bool, int]:
    """(fits, the figure compared): the least need under the allocator's free-and-retry, plus the
    context and the stated margin (`VramEstimate.fit_bytes`), is within `usable_bytes`, AND the real
    shape sequence runs with the allocator capped where this card caps it (usable less context,
    compile kernels and margin): the allocator's success is not monotone in its limit."""
    est = estimate_peak_vram(cfg, num_classes, compute_capability)
    if not est.fits(usable_bytes):
        return False, est.fit_bytes()
    limit = usable_bytes - est.fixed_bytes() - est.margin_bytes()
    return runs_within(cfg, num_classes, compute_capability, limit), est.fit_bytes()


def largest_batch_that_fits(cfg: TrainConfig, card: Card, low: int = 1, high: int = 512,
                            num_classes: int = 250) -> int:
    """Largest batch_size in [low, high] that fits `card`; 0 if even `low` does not.

    The estimate grows with the batch size, so a bisection finds the boundary: about log2(high - low)
    estimates, all cached; after the first two batch sizes of a config each further one is a replay
    of the traced step (milliseconds), not a new trace.
    """
    if low < 1 or high < low:
        raise ValueError(f"largest_batch_that_fits: need 1 <= low <= high, got low={low}, high={high}")

    def fits_with(batch_size: int) -> bool:
        # min_lr is checked against the learning rate, which scales with the batch; it does not
        # change memory, so it is cleared to keep every batch size a valid TrainConfig.
        return fits(dataclasses.replace(cfg, batch_size=batch_size, min_lr=0.0), card, num_classes)

    if not fits_with(low):
        return 0
    if fits_with(high):
        return high
    fitting, failing = low, high
    while failing - fitting > 1:
        middle = (fitting + failing) // 2
        if fits_with(middle):
            fitting = middle
        else:
            failing = middle
    return fitting
