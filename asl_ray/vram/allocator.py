"""Step 2 of the VRAM estimate: replay a traced step through a model of CUDA's caching allocator.

`CachingAllocatorModel` reduces c10's allocator to what sets `max_memory_reserved` (rounding, pools,
segment sizes, best-fit, split and merge); `replay_through_allocator` runs a `Trace` through it as
the training loop would (setup, then accumulation windows of two micro-batches) and reports the peak
reserved bytes and the live bytes per part at the moment of most live bytes.
"""
from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass
from typing import Any, Optional

from asl_ray.vram.constants import MiB
from asl_ray.vram.trace import ALLOC, FREE, GRAD_READY, _HOST, Trace, _Alloc, _round_up

_MIN_BLOCK = 512  # every allocation is rounded up to this
_SMALL_SIZE = 1 * MiB  # requests up to this come from the small pool
_SMALL_SEGMENT = 2 * MiB
_LARGE_SEGMENT = 20 * MiB  # for large requests below _MIN_LARGE_ALLOC
_MIN_LARGE_ALLOC = 10 * MiB
_ROUND_LARGE = 2 * MiB


class AllocatorOutOfMemory(MemoryError):
    """A request the capped allocator could not serve even after releasing its cached segments."""


class CachingAllocatorModel:
    """CUDA's caching allocator (c10/cuda/CUDACachingAllocator.cpp) for one stream, reduced to what
    sets `max_memory_reserved`: size rounding, pools, segment sizes, best-fit, split and merge.

    With `limit_bytes` (what `set_per_process_memory_fraction` or the card allows) a request that no
    cached block serves and that a new segment would take over the limit first releases every cached
    segment that is wholly free (c10's `release_cached_blocks`, the last retry before raising: with
    the default max_split_size `release_available_cached_blocks` does nothing), then retries; only then
    it raises `AllocatorOutOfMemory`."""

    def __init__(self, limit_bytes: Optional[int] = None) -> None:
        self.reserved = 0
        self.peak_reserved = 0
        self.limit_bytes = limit_bytes
        self.releases = 0  # how many times free-and-retry emptied the cache
        self._free = {True: [], False: []}  # small pool? -> sorted [(size, segment, offset)]
        self._blocks: list[dict[int, list]] = []  # per segment: offset -> [size, is_free]
        self._ends: list[dict[int, int]] = []  # per segment: end offset -> start offset
        self._small_segment: list[bool] = []
        self._segment_size: list[int] = []  # 0 once released
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
            (block_size, seg), offset = self._new_segment(small, self.segment_size(size)), 0
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

    def release_cached_blocks(self) -> int:
        """Give every wholly free segment back to the driver (torch.cuda.empty_cache); bytes released."""
        released = 0
        for small in (True, False):
            pool = self._free[small]
            keep = []
            for size, seg, offset in pool:
                if offset == 0 and size == self._segment_size[seg]:
                    self._remove_block(seg, offset)
                    self._segment_size[seg] = 0
                    released += size
                else:
                    keep.append((size, seg, offset))
            self._free[small] = keep
        self.reserved -= released
        return released

    def _new_segment(self, small: bool, size: int) -> tuple[int, int]:
        if self.limit_bytes is not None and self.reserved + size > self.limit_bytes:
            self.release_cached_blocks()
            self.releases += 1
            if self.reserved + size > self.limit_bytes:
                raise AllocatorOutOfMemory(f"{size} bytes more on {self.reserved} reserved exceeds {self.limit_bytes}")
        self._blocks.append({})
        self._ends.append({})
        self._small_segment.append(small)
        self._segment_size.append(size)
        self.reserved += size
        self.peak_reserved = max(self.peak_reserved, self.reserved)
        return size, len(self._blocks) - 1

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


@dataclass(frozen=True)
class ReplayPlan:
    """What the loop runs, in order: micro-batches in pairs (one accumulation window each: the first
    of a pair is replayed as a window's first micro-batch, the second as the accumulating one plus the
    boundary), and the evaluation pass after `eval_after_window` windows. Traces of one config at
    different lengths share their event structure (the same position is the same tensor)."""
    micro_batches: tuple[Trace, ...]
    """An even number of traced steps, in the order the loop runs them."""
    evaluation: Optional[Trace] = None
    """One evaluation batch (inference), or None."""
    eval_after_window: int = -1
    """The evaluation pass runs after this many windows; -1: never."""

    def __post_init__(self) -> None:
        if not self.micro_batches or len(self.micro_batches) % 2:
            raise ValueError(f"ReplayPlan: need a positive even number of micro-batches, got {len(self.micro_batches)}")

    @property
    def windows(self) -> int:
        return len(self.micro_batches) // 2


@dataclass(frozen=True)
class ReplayResult:
    peak_reserved: int
    """max_memory_reserved of the run (the allocator's peak), context not included."""
    peak_live: int
    """Most bytes live at once (max_memory_allocated before rounding)."""
    live_at_peak: dict[str, int]
    """Live bytes per part at that moment."""
    releases: int
    """How often free-and-retry emptied the cache (0 without a limit)."""


# Compiled events: (kind, key, nbytes, part, made once). The key is the allocation's position in its
# trace and its owner (traces of one config at different lengths agree on positions). No window tag:
# everything a window allocates it frees, but what is made once.
_OWNER_CODE = {"setup": 0, "first": 1, "accumulating": 2, "boundary": 3, "eval": 4}
_MADE_ONCE = 7


class _CompiledTrace:
    def __init__(self, trace: Trace) -> None:
        position = {id(a): i for i, (kind, a) in enumerate(trace.events) if kind == ALLOC}
        persistent = {id(a) for a in _never_freed(trace.events)}

        def compiled(kind: int, alloc: _Alloc, owner: str) -> Optional[tuple]:
            if alloc.part == _HOST:
                return None
            made_once = id(alloc) in persistent
            key = position[id(alloc)] << 3 | (_MADE_ONCE if made_once else _OWNER_CODE[owner])
            # In the accumulating micro-batch, what became .grad in the first one is a temporary.
            part = "attention_and_temporaries" if owner == "accumulating" and alloc.part == "gradients" else alloc.part
            return kind, key, alloc.nbytes, part, made_once

        self.setup = [c for kind, a in trace.events[:trace.window_start] if (c := compiled(kind, a, "setup"))]
        self.stages = {stage: [c for kind, a, owner in events if (c := compiled(kind, a, owner))]
                       for stage, events in accumulation_window(trace)}
        # An inference pass frees all it makes; what it never frees (a workspace) exists already.
        self.inference = [c for kind, a in trace.events
                          if kind != GRAD_READY and (c := compiled(kind, a, "eval")) and not c[4]]


class _CompiledPlan:
    def __init__(self, plan: ReplayPlan, compiled: Optional[dict[int, _CompiledTrace]] = None) -> None:
        """`compiled`: traces compiled before (by id), shared between plans with the same traces."""
        by_id = compiled if compiled is not None else {}
        for trace in plan.micro_batches + ((plan.evaluation,) if plan.evaluation is not None else ()):
            if id(trace) not in by_id:
                by_id[id(trace)] = _CompiledTrace(trace)
        self.steps = [by_id[id(trace)] for trace in plan.micro_batches]
        self.evaluation = by_id[id(plan.evaluation)].inference if plan.evaluation is not None else []
        self.eval_after_window = plan.eval_after_window

    def run(self, limit_bytes: Optional[int] = None, track_live: bool = True) -> ReplayResult:
        allocator, live, made = CachingAllocatorModel(limit_bytes), _LiveBytes(), set()
        malloc, free = allocator.malloc, allocator.free
        if not track_live:
            live.add = live.remove = lambda part, nbytes: None  # the bisection asks only "does it run"

        def apply(events: list) -> None:
            for kind, key, nbytes, part, made_once in events:
                if made_once:
                    if key in made:
                        continue  # optimizer state, workspaces, the loss scale: created once
                    made.add(key)
                if kind == ALLOC:
                    malloc(key, nbytes)
                    live.add(part, nbytes)
                else:
                    free(key)
                    live.remove(part, nbytes)

        apply(self.steps[0].setup)
        for window in range(len(self.steps) // 2):
            first, second = self.steps[2 * window], self.steps[2 * window + 1]
            apply(first.stages["first"])
            apply(second.stages["accumulating"])
            apply(second.stages["boundary"])
            if window + 1 == self.eval_after_window:
                apply(self.evaluation)
        return ReplayResult(allocator.peak_reserved, live.peak, live.at_peak, allocator.releases)


def replay(plan: ReplayPlan, limit_bytes: Optional[int] = None,
           compiled: Optional[dict[int, _CompiledTrace]] = None) -> ReplayResult:
    """Run `plan` through the allocator model, capped at `limit_bytes` (None: unconstrained).
    Raises AllocatorOutOfMemory if the cap is too small even with free-and-retry. `compiled`: a dict
    to share compiled traces between calls on the same traces."""
    return _CompiledPlan(plan, compiled).run(limit_bytes)


NEED_RESOLUTION = 4 * MiB
"""The least need is found to within this (rounded up): each halving of it costs a replay."""


def least_need_bytes(plan: ReplayPlan, unconstrained: Optional[ReplayResult] = None,
                     resolution: int = NEED_RESOLUTION, compiled: Optional[dict[int, _CompiledTrace]] = None) -> int:
    """The smallest allocator limit under which `plan` runs without OOM, free-and-retry included
    (what the card must leave to the caching allocator; context not included), to within
    `resolution` (a multiple of 2 MiB, as every segment is) and rounded up. Bisection between the
    live peak and the unconstrained reserved peak, assuming that a larger limit never fails where a
    smaller one runs."""
    runner = _CompiledPlan(plan, compiled)
    unconstrained = unconstrained or runner.run()
    step = resolution
    low = _round_up(unconstrained.peak_live, step) // step - 1  # in steps: known to fail (or be the floor)
    high = _round_up(unconstrained.peak_reserved, step) // step  # known to run
    while high - low > 1:
        middle = (low + high) // 2
        try:
            runner.run(middle * step, track_live=False)
            high = middle
        except AllocatorOutOfMemory:
            low = middle
    return high * step


def replay_through_allocator(trace: Trace, windows: int = REPLAYED_WINDOWS) -> tuple[int, dict[str, int]]:
    """(peak reserved bytes, live bytes per part at the moment of most live bytes) over the setup
    and `windows` accumulation windows, every micro-batch the traced one."""
    result = replay(ReplayPlan((trace,) * (2 * windows)))
    return result.peak_reserved, result.live_at_peak


def _never_freed(events: list[tuple[int, Any]]) -> set:
    freed = {id(a) for kind, a in events if kind == FREE}
    return {a for kind, a in events if kind == ALLOC and id(a) not in freed}
