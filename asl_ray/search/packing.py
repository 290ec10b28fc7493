"""Packing trials onto one GPU by predicted memory (`--pack`, or the space's `concurrency: auto`): the arithmetic.

A packed trial's Train worker asks Ray for a fraction of a GPU: its **share**, the trial's predicted need (the
VRAM estimate's fit figure, which already holds the trial's own CUDA context and the fit margin) over the target
card's usable memory, rounded UP to a whole number of `GRID` units. Ray places a worker only where its fraction is
free, so the fractions of the trials on one GPU never sum past 1; rounded up, each share holds its prediction, so
their predictions never sum past the card. Each trial's allocator is capped to its own share (`share.bytes`), and
its plan search checks its plans against that share. Ray does the packing (fractional GPU resources); nothing here
schedules. The Ray wiring is in asl_ray/search/driver.py (`trial_share`) and experiment.py (`max_concurrent`).

Integer units throughout: float fractions summed by Ray must not round past 1. No Ray here.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from asl_ray.cards import CUDA_CONTEXT_BYTES

GRID = 100
"""Units per GPU: a share is a whole number of hundredths of the card (Ray's own resource granularity is 1/10000)."""

Fits = Callable[..., tuple[bool, int]]
"""The VRAM verdict of one TrainConfig: (fits, predicted fit bytes) (`asl_ray.plan.fits.CardFit`)."""


@dataclass(frozen=True)
class Share:
    """One trial's part of a GPU."""
    units: int
    """Its size in GRID units (1..GRID)."""
    card_usable_bytes: int
    """The target card's usable memory the units are a part of."""

    def __post_init__(self) -> None:
        if not 1 <= self.units <= GRID:
            raise ValueError(f"Share: units must be in 1..{GRID}, got {self.units}")
        if self.card_usable_bytes <= 0:
            raise ValueError(f"Share: card_usable_bytes must be > 0, got {self.card_usable_bytes}")

    @property
    def fraction(self) -> float:
        """What the Train worker asks Ray for (`resources_per_worker={"GPU": fraction}`)."""
        return self.units / GRID

    @property
    def bytes(self) -> int:
        """The trial's memory: its allocator cap (CUDA context included, as `emulate_card_memory` takes it) and the
        card its plan search checks plans against. Rounded down, so shares that fit together sum within the card."""
        return self.units * self.card_usable_bytes // GRID


def units_for(need_bytes: int, card_usable_bytes: int) -> int:
    """The GRID units that hold `need_bytes` of a card with `card_usable_bytes`: rounded up, at least 1, at most the
    whole card (a need beyond the card still gets the card alone: it is infeasible as unpacked, and says so)."""
    if card_usable_bytes <= 0:
        raise ValueError(f"units_for: card_usable_bytes must be > 0, got {card_usable_bytes}")
    units = -(-max(0, int(need_bytes)) * GRID // card_usable_bytes)
    return min(GRID, max(1, units))


def share_for(need_bytes: int | None, card_usable_bytes: int) -> Share:
    """The share of a trial predicted to need `need_bytes` (None: unknown, so the whole card)."""
    units = GRID if need_bytes is None else units_for(need_bytes, card_usable_bytes)
    return Share(units, card_usable_bytes)


def predicted_need(candidates: Iterable, fits: Fits) -> int | None:
    """A trial's predicted need: the largest fit figure among its candidate plans that fit the card (its worker may
    train any of them); None when none fits (such a trial is never launched by the searcher; a pinned one that is
    gets the whole card)."""
    needs = [need for ok, need in (fits(cfg) for cfg in candidates) if ok]
    return max(needs) if needs else None


def fits_together(shares: Sequence[Share]) -> bool:
    """Can these trials run on one GPU at once: their units sum within the card."""
    return sum(s.units for s in shares) <= GRID


def max_concurrent(trials: int, gpus: int, card_usable_bytes: int, concurrency: int = 0) -> int:
    """Tune's `max_concurrent_trials` when packing: `concurrency` if given (a cap the user chose), else as many as
    the cluster's GPUs could hold if every trial needed no more than its own CUDA context (no trial needs less).
    Ray's resources then decide which of them run at once; never more than the trials, never fewer than 1."""
    if concurrency:
        return max(1, min(concurrency, trials))
    per_gpu = GRID // units_for(CUDA_CONTEXT_BYTES, card_usable_bytes)
    return max(1, min(trials, max(1, gpus) * per_gpu))
