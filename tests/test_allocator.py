"""The caching-allocator model against hand-worked cases of c10's rules (c10/cuda/CUDACachingAllocator.cpp),
free-and-retry under a limit, the least need of a real traced run, and the attention scratch formula."""
from __future__ import annotations

import pytest
import torch

from asl_ray.config import TrainConfig
from asl_ray.vram.allocator import (AllocatorOutOfMemory, CachingAllocatorModel, ReplayPlan, least_need_bytes,
                                    replay)
from asl_ray.vram.attention import mem_efficient_backward_scratch_bytes
from asl_ray.vram.trace import trace_training_step

KiB, MiB = 1024, 1024 ** 2


@pytest.mark.parametrize("request_bytes,block", [(1, 512), (512, 512), (513, 1024), (1 * MiB + 1, 1 * MiB + 512)])
def test_requests_round_up_to_512_bytes(request_bytes, block):
    assert CachingAllocatorModel.block_size(request_bytes) == block


@pytest.mark.parametrize("block,segment", [
    (512, 2 * MiB), (1 * MiB, 2 * MiB),               # small pool: 2 MiB segments
    (1 * MiB + 512, 20 * MiB), (10 * MiB - 512, 20 * MiB),  # large pool below 10 MiB: 20 MiB segments
    (10 * MiB, 10 * MiB), (10 * MiB + 512, 12 * MiB),  # from 10 MiB: the size rounded up to 2 MiB
])
def test_segment_sizes(block, segment):
    assert CachingAllocatorModel.segment_size(block) == segment


def test_small_requests_share_a_2_mib_segment_and_large_ones_never_use_it():
    a = CachingAllocatorModel()
    for i in range(4):
        a.malloc(i, 512 * KiB)
    assert a.reserved == 2 * MiB  # four 512 KiB blocks fill one small segment
    a.malloc(4, 512 * KiB)
    assert a.reserved == 4 * MiB
    a.free(0)  # 512 KiB free in the small pool ...
    a.malloc("large", 1 * MiB + 1)  # ... but a large request takes a 20 MiB segment of its own
    assert a.reserved == 24 * MiB


def test_a_large_block_splits_only_if_more_than_1_mib_remains():
    split = CachingAllocatorModel()
    split.malloc("a", 18 * MiB + 512 * KiB)  # 1.5 MiB remain in the 20 MiB segment: split off
    split.malloc("b", 1 * MiB + 256 * KiB)  # served by the remainder
    assert split.reserved == 20 * MiB

    whole = CachingAllocatorModel()
    whole.malloc("a", 19 * MiB)  # exactly 1 MiB remains: not more than 1 MiB, the block stays whole
    whole.malloc("b", 1 * MiB + 256 * KiB)
    assert whole.reserved == 40 * MiB


def test_a_small_block_splits_when_512_bytes_remain():
    a = CachingAllocatorModel()
    a.malloc("a", 1 * MiB)  # a 2 MiB small segment: 1 MiB remains, split off
    a.malloc("b", 1 * MiB - 512)  # from that remainder: 512 B remain, still split off
    a.malloc("c", 512)  # served by the last 512 B
    assert a.reserved == 2 * MiB
    a.malloc("d", 512)
    assert a.reserved == 4 * MiB


def test_best_fit_takes_the_smallest_cached_block_that_is_large_enough():
    a = CachingAllocatorModel()
    a.malloc("six", 6 * MiB)   # a 20 MiB segment: 6 used, 14 free
    a.malloc("four", 4 * MiB)  # same segment: 4 used, 10 free
    a.malloc("fill", 10 * MiB)  # the remaining 10 MiB exactly: the segment is full
    a.free("six")
    a.free("four")  # merges with "six": one free 10 MiB block
    a.malloc("three", 3 * MiB)
    assert a.reserved == 20 * MiB
    b = CachingAllocatorModel()
    for key, size in (("x", 6 * MiB), ("gap", 14 * MiB)):
        b.malloc(key, size)  # segment 1: a 6 MiB block then a 14 MiB one
    for key, size in (("y", 4 * MiB), ("gap2", 16 * MiB)):
        b.malloc(key, size)  # segment 2: 4 then 16 (its own 16 MiB segment)
    b.free("x")  # free: 6 MiB in segment 1
    b.free("y")  # free: 4 MiB in segment 2
    reserved = b.reserved
    b.malloc("three", 3 * MiB + 512 * KiB)  # best fit: the 4 MiB block (0.5 MiB left: not split)
    b.malloc("five", 5 * MiB + 512 * KiB)  # still served: the 6 MiB block was kept
    assert b.reserved == reserved


def test_a_freed_block_merges_with_both_free_neighbours():
    a = CachingAllocatorModel()
    for key in ("left", "middle", "right"):
        a.malloc(key, 4 * MiB)  # one 20 MiB segment: 4 + 4 + 4 + 8 free
    a.free("left")
    a.free("right")  # merges with the free 8 MiB tail
    a.free("middle")  # merges with both: the whole 20 MiB segment is one free block again
    a.malloc("whole", 20 * MiB)
    assert a.reserved == 20 * MiB


def test_free_and_retry_releases_wholly_free_segments_before_failing():
    def two_segments(limit):
        a = CachingAllocatorModel(limit)
        a.malloc("a", 12 * MiB)  # its own 12 MiB segment
        a.malloc("b", 20 * MiB)  # its own 20 MiB segment
        a.free("a")  # cached, wholly free
        return a

    unconstrained = two_segments(None)
    unconstrained.malloc("c", 24 * MiB)  # no cached block fits: a new segment
    assert unconstrained.reserved == 56 * MiB and unconstrained.releases == 0

    retried = two_segments(44 * MiB)
    retried.malloc("c", 24 * MiB)  # 32 + 24 > 44: release the free 12 MiB segment, then 20 + 24 fits
    assert retried.reserved == 44 * MiB and retried.releases == 1

    with pytest.raises(AllocatorOutOfMemory):
        two_segments(43 * MiB).malloc("c", 24 * MiB)


def test_a_split_segment_is_not_released():
    a = CachingAllocatorModel(40 * MiB)
    a.malloc("free later", 4 * MiB)
    a.malloc("kept", 4 * MiB)  # same 20 MiB segment
    a.free("free later")  # the segment is split: part of it is live, so it cannot be released
    with pytest.raises(AllocatorOutOfMemory):
        a.malloc("c", 24 * MiB)  # 20 + 24 > 40, though only 4 + 24 MiB would be live


def test_least_need_of_a_real_step_runs_and_one_step_less_does_not():
    trace = trace_training_step(TrainConfig(dim=64, depth=1, max_len=64, batch_size=32), 20)
    plan = ReplayPlan((trace,) * 6)
    unconstrained = replay(plan)
    need = least_need_bytes(plan, unconstrained, resolution=2 * MiB)
    assert unconstrained.peak_live <= need <= unconstrained.peak_reserved
    assert replay(plan, need).peak_reserved <= need
    with pytest.raises(AllocatorOutOfMemory):
        replay(plan, need - 2 * MiB)


@pytest.mark.parametrize("shape,dtype,expected", [
    # (B, H, M, K): 4 B x B x H x (grad-Q: ceil64(M) x ceil32(K) + grad-K/V staging + delta: M)
    ((2, 4, 100, 32), torch.float16, 4 * 2 * 4 * (128 * 32 + 0 + 100)),  # fp16, K <= 64: K/V in registers
    ((2, 4, 100, 32), torch.float32, 4 * 2 * 4 * (128 * 32 + 64 * (64 + 64) + 100)),  # fp32: staged
    ((2, 4, 100, 96), torch.float16, 4 * 2 * 4 * (128 * 96 + 128 * (128 + 128) + 100)),  # K > 64: 64x128 blocks
])
def test_mem_efficient_attention_scratch_formula(shape, dtype, expected):
    q = torch.empty(shape, dtype=dtype, device="meta")
    assert mem_efficient_backward_scratch_bytes(q, q) == expected
