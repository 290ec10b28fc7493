"""Step 2 of the VRAM estimate: replay a traced step through a model of CUDA's caching allocator.

`CachingAllocatorModel` reduces c10's allocator to what sets `max_memory_reserved` (rounding, pools,
segment sizes, best-fit, split and merge); `replay_through_allocator` runs a `Trace` through it as
the training loop would (setup, then accumulation windows of two micro-batches) and reports the peak
reserved bytes and the live bytes per part at the moment of most live bytes.
"""
from __future__ import annotations

import bisect
from collections import Counter
from typing import Any

from asl_ray.vram.constants import MiB
from asl_ray.vram.trace import ALLOC, FREE, GRAD_READY, _HOST, Trace, _Alloc, _round_up

_MIN_BLOCK = 512  # every allocation is rounded up to this
_SMALL_SIZE = 1 * MiB  # requests up to this come from the small pool
_SMALL_SEGMENT = 2 * MiB
_LARGE_SEGMENT = 20 * MiB  # for large requests below _MIN_LARGE_ALLOC
_MIN_LARGE_ALLOC = 10 * MiB
_ROUND_LARGE = 2 * MiB


class CachingAllocatorModel:
    """CUDA's caching allocator (c10/cuda/CUDACachingAllocator.cpp) for one stream, reduced to what
    sets `max_memory_reserved`: size rounding, pools, segment sizes, best-fit, split and merge."""

    def __init__(self) -> None:
        self.reserved = 0
        self._free = {True: [], False: []}  # small pool? -> sorted [(size, segment, offset)]
        self._blocks: list[dict[int, list]] = []  # per segment: offset -> [size, is_free]
        self._ends: list[dict[int, int]] = []  # per segment: end offset -> start offset
        self._small_segment: list[bool] = []
        self._where: dict[Any, tuple[int, int]] = {}  # allocation key -> (segment, offset)

    @staticmethod
    def block_size(nbytes: int) -> int:
        return max(_MIN_BLOCK, _round_up(nbytes, _MIN_BLOCK))

    @staticmethod
    def segment_size(size: int) -> int:
        if size <= _SMALL_SIZE:
            return _SMALL_SEGMENT
        return _LARGE_SEGMENT if size < _MIN_LARGE_ALLOC else _round_up(size, _ROUND_LARGE)

    def malloc(self, key: Any, nbytes: int) -> None:
        size = self.block_size(nbytes)
        small = size <= _SMALL_SIZE
        pool = self._free[small]
        i = bisect.bisect_left(pool, (size, -1, -1))
        if i < len(pool):  # best fit: the smallest cached block that is large enough
            block_size, seg, offset = pool.pop(i)
            self._remove_block(seg, offset)
        else:
            block_size, seg, offset = self.segment_size(size), self._new_segment(small), 0
            self.reserved += block_size
        remaining = block_size - size
        if remaining >= _MIN_BLOCK if small else remaining > _SMALL_SIZE:
            self._add_block(seg, offset, size, is_free=False)
            self._add_block(seg, offset + size, remaining, is_free=True)
        else:
            self._add_block(seg, offset, block_size, is_free=False)
        self._where[key] = (seg, offset)

    def free(self, key: Any) -> None:
        seg, offset = self._where.pop(key)
        size = self._remove_block(seg, offset)
        following = self._blocks[seg].get(offset + size)
        if following is not None and following[1]:
            size += self._take_free(seg, offset + size)
        start = self._ends[seg].get(offset)
        if start is not None and self._blocks[seg][start][1]:
            size += self._take_free(seg, start)
            offset = start
        self._add_block(seg, offset, size, is_free=True)

    def _new_segment(self, small: bool) -> int:
        self._blocks.append({})
        self._ends.append({})
        self._small_segment.append(small)
        return len(self._blocks) - 1

    def _add_block(self, seg: int, offset: int, size: int, is_free: bool) -> None:
        self._blocks[seg][offset] = [size, is_free]
        self._ends[seg][offset + size] = offset
        if is_free:
            bisect.insort(self._free[self._small_segment[seg]], (size, seg, offset))

    def _remove_block(self, seg: int, offset: int) -> int:
        size = self._blocks[seg].pop(offset)[0]
        del self._ends[seg][offset + size]
        return size

    def _take_free(self, seg: int, offset: int) -> int:
        size = self._blocks[seg][offset][0]
        pool = self._free[self._small_segment[seg]]
        pool.pop(bisect.bisect_left(pool, (size, seg, offset)))
        return self._remove_block(seg, offset)


REPLAYED_WINDOWS = 3  # the first window creates optimizer state; later ones show the steady state


def accumulation_window(trace: Trace) -> list[tuple[str, list[tuple[int, Any, str]]]]:
    """The loop's window of two micro-batches, built from the traced one, as (stage, events) with
    each event (kind, allocation, the micro-batch that owns the allocation):
    - 'first': the traced forward/backward (no gradients yet: autograd's outputs become .grad);
      what the traced step kept until its boundary (the batch, the loss) is freed when it returns;
    - 'accumulating': the same with the gradients already there: each incoming gradient is added
      into .grad in place and freed, and AccumulateGrad makes no copies;
    - 'boundary': unscale, clip, optimizer step, zero_grad (which frees the first one's gradients)."""
    traced = trace.events[trace.window_start:trace.boundary_start]
    boundary = trace.events[trace.boundary_start:]
    made_before_boundary = {id(a) for kind, a in traced if kind == ALLOC}
    kept_to_boundary = [a for kind, a in boundary
                        if kind == FREE and id(a) in made_before_boundary and a.part != "gradients"]
    first = [(kind, a, "first") for kind, a in traced if kind != GRAD_READY]
    first += [(FREE, a, "first") for a in kept_to_boundary]
    accumulating = []
    for kind, item in traced:
        if kind == GRAD_READY:
            if item.grad is not None and not item.grad.by_accumulate_grad:
                accumulating.append((FREE, item.grad, "accumulating"))  # `grad += incoming`; incoming freed
        elif not item.by_accumulate_grad:
            accumulating.append((kind, item, "accumulating"))
    closing = []
    for kind, a in boundary:
        if id(a) not in made_before_boundary:
            owner = "boundary"
        else:
            owner = "first" if a.part == "gradients" else "accumulating"
        closing.append((kind, a, owner))
    return [("first", first), ("accumulating", accumulating), ("boundary", closing)]


class _LiveBytes:
    """Live bytes per part, remembering the split at the moment of most live bytes."""

    def __init__(self) -> None:
        self.by_part: Counter = Counter()
        self.total = 0
        self.peak = -1
        self.at_peak: dict[str, int] = {}

    def add(self, part: str, nbytes: int) -> None:
        self.by_part[part] += nbytes
        self.total += nbytes
        if self.total > self.peak:
            self.peak, self.at_peak = self.total, dict(self.by_part)

    def remove(self, part: str, nbytes: int) -> None:
        self.by_part[part] -= nbytes
        self.total -= nbytes


def replay_through_allocator(trace: Trace, windows: int = REPLAYED_WINDOWS) -> tuple[int, dict[str, int]]:
    """(peak reserved bytes, live bytes per part at the moment of most live bytes) over the setup
    and `windows` accumulation windows."""
    persistent = _never_freed(trace.events)
    allocator, live = CachingAllocatorModel(), _LiveBytes()
    first_time: set[int] = set()  # persistent allocations already made once

    def apply(kind: int, alloc: _Alloc, key: Any, owner: str) -> None:
        if alloc.part == _HOST:
            return
        if alloc in persistent:
            if id(alloc) in first_time:
                return  # optimizer state, workspaces, the loss scale: created once
            first_time.add(id(alloc))
            key = id(alloc)
        # In the accumulating micro-batch, what became .grad in the first one is a temporary.
        part = "attention_and_temporaries" if owner == "accumulating" and alloc.part == "gradients" else alloc.part
        if kind == ALLOC:
            allocator.malloc(key, alloc.nbytes)
            live.add(part, alloc.nbytes)
        else:
            allocator.free(key)
            live.remove(part, alloc.nbytes)

    for kind, alloc in trace.events[:trace.window_start]:
        apply(kind, alloc, id(alloc), "setup")
    stages = accumulation_window(trace)
    for window in range(windows):
        for stage, events in stages:
            for kind, alloc, owner in events:
                apply(kind, alloc, (window, owner, id(alloc)), owner)
    return allocator.reserved, live.at_peak


def _never_freed(events: list[tuple[int, Any]]) -> set:
    freed = {id(a) for kind, a in events if kind == FREE}
    return {a for kind, a in events if kind == ALLOC and id(a) not in freed}
