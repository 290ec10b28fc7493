"""The data pipeline alone: samples/s from the cache into padded, augmented batches, no training.

Two figures. On one core (num_workers=0, one torch thread): what each loader worker can deliver.
With the config's W workers (real DataLoader worker processes, on this machine's cores): what the
pipeline delivers here. `W x one core` is only an UPPER BOUND (each worker on a free core of its own,
none shared with the training loop); it is labelled as such and never printed as a measurement.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from itertools import islice
from typing import Any, Optional

import torch

from asl_ray.config import TrainConfig
from asl_ray.data.cache import SequenceCache
from asl_ray.data.dataset import SequenceDataset, make_loader, split_of


@dataclass(frozen=True)
class LoaderRate:
    samples_per_s: float
    """Measured samples/s after warm-up (memory-map paging, worker start-up and prefetch left out)."""
    batches: int
    samples: int
    workers: int = 0
    """DataLoader workers it ran with; 0 = in the measuring process, on one core."""


def _time_loader(cfg: TrainConfig, cache: SequenceCache, batches: int) -> LoaderRate:
    train_idx, _ = split_of(cfg, cache.participants)
    loader = make_loader(SequenceDataset(cache, train_idx, cfg, train=True), cfg, train=True, pin_memory=False)
    it = iter(loader)
    # Page the memory map in and start the workers; with workers, also drain the batches they
    # prefetched meanwhile (prefetch_factor 2 each), which would otherwise count as free.
    for _ in islice(it, 1 + 2 * cfg.num_workers):
        pass
    samples, n, started = 0, 0, time.perf_counter()
    for batch in islice(it, batches):
        samples += len(batch)
        n += 1
    elapsed = time.perf_counter() - started
    del it
    return LoaderRate(samples_per_s=samples / max(elapsed, 1e-9), batches=n, samples=samples,
                      workers=cfg.num_workers)


def measure_loader_one_core(cfg: TrainConfig, cache: SequenceCache, batches: int = 40) -> LoaderRate:
    one_core = cfg.with_overrides({"num_workers": 0}, source="loader measurement")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _time_loader(one_core, cache, batches)
    finally:
        torch.set_num_threads(threads)


def measure_loader_with_workers(cfg: TrainConfig, cache: SequenceCache, batches: int = 40) -> LoaderRate:
    """With cfg.num_workers real worker processes (one torch thread each, as in training)."""
    return _time_loader(cfg, cache, batches)


def loader_margin(one_core: LoaderRate, loop_samples_per_s: float, workers: int,
                  with_workers: Optional[LoaderRate] = None) -> dict[str, Any]:
    """How many times over the pipeline covers the loop's appetite: on one core (measured), with
    `workers` (measured, if `with_workers` is given) and the upper bound `workers x one core` (computed)."""
    one = one_core.samples_per_s / loop_samples_per_s
    measured = with_workers.samples_per_s if with_workers is not None else None
    return {"loader_samples_per_s_one_core": one_core.samples_per_s, "loop_samples_per_s": loop_samples_per_s,
            "margin_one_core": one, "workers": workers, "cpu_cores": os.cpu_count(),
            "margin_with_workers_upper_bound": one * max(1, workers),
            "loader_samples_per_s_with_workers_measured": measured,
            "margin_with_workers_measured": measured / loop_samples_per_s if measured is not None else None}


def loader_text(m: dict[str, Any], variant: str) -> str:
    """One line: every figure says whether it was measured or computed."""
    text = (f"data pipeline alone: {m['loader_samples_per_s_one_core']:.0f} samples/s on one core (measured) vs the "
            f"loop's {m['loop_samples_per_s']:.1f} at {variant}: margin {m['margin_one_core']:.1f}x on one core")
    if m["workers"] == 0:
        text += " (loading inside the training process)"
    else:
        text += (f"; with {m['workers']} workers at most {m['margin_with_workers_upper_bound']:.1f}x (upper bound, "
                 f"computed: {m['workers']} x one core, as if each worker had a free core)")
        if m["margin_with_workers_measured"] is not None:
            text += (f", measured {m['loader_samples_per_s_with_workers_measured']:.0f} samples/s = "
                     f"{m['margin_with_workers_measured']:.1f}x ({m['workers']} workers on this "
                     f"{m['cpu_cores']}-core machine, no training beside them)")
    if m["margin_one_core"] < 1:
        text += "  <-- the loader is the bottleneck on one core"
    return text
