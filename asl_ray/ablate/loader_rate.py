"""The data pipeline alone: samples/s that one core turns from the cache into padded, augmented batches.

The loop must never wait for data; with W loader workers (one core each) the pipeline can deliver
about W x this rate, so `margin = W x loader rate / loop rate` must stay above 1.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from itertools import islice

import torch

from asl_ray.config import TrainConfig
from asl_ray.data.cache import SequenceCache
from asl_ray.data.dataset import SequenceDataset, make_loader, participant_split


@dataclass(frozen=True)
class LoaderRate:
    samples_per_s: float
    """On one core: num_workers=0 and one torch thread, training augmentations on."""
    batches: int
    samples: int


def measure_loader_one_core(cfg: TrainConfig, cache: SequenceCache, batches: int = 40) -> LoaderRate:
    one_core = cfg.with_overrides({"num_workers": 0}, source="loader measurement")
    train_idx, _ = participant_split(cache.participants, one_core.num_folds, one_core.fold, one_core.seed)
    data = SequenceDataset(cache, train_idx, one_core, train=True)
    loader = make_loader(data, one_core, train=True, pin_memory=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        it = iter(loader)
        next(it)  # first batch: page the memory map in
        samples, n, started = 0, 0, time.perf_counter()
        for batch in islice(it, batches):
            samples += len(batch)
            n += 1
        elapsed = time.perf_counter() - started
    finally:
        torch.set_num_threads(threads)
    return LoaderRate(samples_per_s=samples / max(elapsed, 1e-9), batches=n, samples=samples)


def loader_margin(loader: LoaderRate, loop_samples_per_s: float, workers: int) -> dict[str, float]:
    """How many times over the pipeline covers the loop's appetite: on one core, and with `workers`."""
    one = loader.samples_per_s / loop_samples_per_s
    return {"loader_samples_per_s_one_core": loader.samples_per_s, "loop_samples_per_s": loop_samples_per_s,
            "margin_one_core": one, "workers": workers, "margin_with_workers": one * max(1, workers)}
