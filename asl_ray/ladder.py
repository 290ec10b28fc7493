"""The padded lengths a run can see: a short, fixed ladder of time lengths up to max_len.

Padding every batch to its own longest sequence makes nearly every batch a new shape (cuDNN re-tunes,
a static compile recompiles, CUDA graphs are captured per shape). Padding up to the next rung of a
fixed ladder bounds the shapes of a whole run to the ladder's length; masking keeps padding inert.
"""
from __future__ import annotations

import bisect
import math
from functools import lru_cache

LADDER_QUANTUM = 16
"""Rungs are multiples of this (tensor-core friendly), except the top rung, which is max_len itself."""
MAX_RUNGS = 12
"""An epoch sees at most this many padded lengths (the last partial batch included)."""


@lru_cache(maxsize=None)
def length_ladder(max_len: int) -> tuple[int, ...]:
    """Ascending padded lengths for `max_len`: multiples of a step (a multiple of 16) plus max_len."""
    if max_len <= 0:
        raise ValueError(f"max_len must be > 0, got {max_len}")
    step = LADDER_QUANTUM * math.ceil(max_len / (LADDER_QUANTUM * MAX_RUNGS))
    rungs = list(range(step, max_len, step)) + [max_len]
    return tuple(rungs)


def pad_to_ladder(longest: int, max_len: int) -> int:
    """The smallest rung of `length_ladder(max_len)` that holds `longest` frames (capped at max_len)."""
    ladder = length_ladder(max_len)
    return ladder[min(bisect.bisect_left(ladder, min(longest, max_len)), len(ladder) - 1)]
