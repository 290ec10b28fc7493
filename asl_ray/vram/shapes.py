"""The padded lengths a run's micro-batches see, in the order the loop's own sampler draws them.

Lengths: `asl_ray.data.synth_motion.sample_lengths`, the length distribution fitted to the real
GISLR quantiles (its docstring compares 10k draws with the real set). Chosen over a cache's lengths
because the estimate is asked per config before (and without) any data, and must not change with the
data a machine happens to hold; chosen over /work/shared/fixtures/gislr-real-40 because 40 sequences
say little about the tail (p95-p99) that decides how often a batch reaches max_len.
Batches: the loop's `LengthBucketSampler` or `ShuffledBatchSampler` (asl_ray/data/dataset.py) over
those lengths, seed 0, each batch padded as `TrainConfig.pad_length` pads it.
"""
from __future__ import annotations

import numpy as np

from asl_ray.config import TrainConfig

DRAWN_WINDOWS = 3
"""Accumulation windows (two micro-batches each) replayed in drawn order before the max_len windows."""
LENGTH_DRAWS = 4096
"""Sequences drawn for the sampler: enough for its chunks of batch_size x 50 at the batch sizes searched."""


def drawn_lengths(cfg: TrainConfig, micro_batches: int = 2 * DRAWN_WINDOWS) -> tuple[int, ...]:
    """Padded length of each of the first `micro_batches` training batches of an epoch."""
    from asl_ray.data.dataset import LengthBucketSampler, ShuffledBatchSampler
    from asl_ray.data.synth_motion import sample_lengths

    if cfg.pad_to == "max_len":
        return (cfg.max_len,) * micro_batches
    lengths = sample_lengths(np.random.default_rng(0), LENGTH_DRAWS)
    if cfg.length_bucketing:
        sampler = LengthBucketSampler(lengths, cfg.batch_size, seed=0)
    else:
        sampler = ShuffledBatchSampler(len(lengths), cfg.batch_size, seed=0)
    padded: list[int] = []
    epoch = 0
    while len(padded) < micro_batches:  # a batch larger than an epoch's draws: the next epochs follow
        sampler.set_epoch(epoch)
        for batch in sampler:
            padded.append(cfg.pad_length(int(lengths[batch].max())))
            if len(padded) == micro_batches:
                break
        epoch += 1
    return tuple(padded)
