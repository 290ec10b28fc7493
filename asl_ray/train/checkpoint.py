"""Checkpoints on disk and the standalone reporter (metrics.jsonl + checkpoints/last.pt under --out)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import torch

from asl_ray.train.metrics import JsonlLog, format_epoch

CHECKPOINT_FILE = "checkpoint.pt"


def save_checkpoint(state: dict[str, Any], directory: Path) -> Path:
    """Written under a temporary name and renamed: a crash mid-save never leaves a torn checkpoint."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CHECKPOINT_FILE
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(directory: Path) -> dict[str, Any]:
    return torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)


class LocalReporter:
    """Prints each epoch, appends it to <out>/metrics.jsonl, keeps <out>/checkpoints/last/."""

    def __init__(self, out: Optional[Path], log=print):
        self.out = Path(out) if out else None
        self.log = log
        self.metrics = JsonlLog(self.out / "metrics.jsonl" if self.out else None)

    @property
    def checkpoint_dir(self) -> Optional[Path]:
        return self.out / "checkpoints" / "last" if self.out else None

    def epoch_end(self, metrics: dict[str, Any], checkpoint: dict[str, Any]) -> None:
        self.log(format_epoch(metrics))
        self.metrics.write(metrics)
        if self.checkpoint_dir:
            save_checkpoint(checkpoint, self.checkpoint_dir)

    def run_end(self, result: dict[str, Any]) -> None:
        if result["status"] != "ok":  # ended early: out of memory or diverged
            self.log(f"run ended early ({result['status']}, infeasible): {result['error']}")
            self.metrics.write(result)
        if self.out:
            (self.out / "result.json").write_text(json.dumps(result, indent=1, default=float))
