"""`python -m asl_ray.train --ray`: the same loop inside a one-worker TorchTrainer on a local Ray."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import ray
import torch

from asl_ray.config import TrainConfig
from asl_ray.data.cache import SequenceCache
from asl_ray.train.local_ray import free_port, init_local_ray
from asl_ray.train.worker import make_trainer, worker_loop_config


def run_with_ray(cfg: TrainConfig, cache: SequenceCache, out: Path, emulate_usable_bytes: Optional[int]) -> dict[str, Any]:
    if not ray.is_initialized():
        init_local_ray("127.0.0.1", free_port("127.0.0.1"))  # its own Ray, even while a search runs
    use_gpu = torch.cuda.is_available()
    trainer = make_trainer(worker_loop_config(cfg, cache.path, emulate_usable_bytes), name="train",
                           storage_path=str(out.resolve() / "ray"), use_gpu=use_gpu)
    result = trainer.fit()
    if result.error:
        raise result.error
    print(f"ray: finished, checkpoint {result.checkpoint.path if result.checkpoint else None}")
    return dict(result.metrics)
