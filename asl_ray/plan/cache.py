"""Plan measurements on disk, one JSON file per (plan, device, data, probe length), shared by the trials of a
machine: a plan measured once is not measured again, by this trial after a restart or by another trial.

The key leaves out the config keys that change what is learned but not how fast a step runs
(`SPEED_NEUTRAL_KEYS`): two learning configs that differ only in those share their measurements. Every
status is kept: a plan that ran out of memory stays dropped. `lock(key)` serialises the measurement of one
key across processes (a second trial waits for the first's result instead of measuring it alongside,
which would also halve both figures).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Optional

from filelock import FileLock

from asl_ray.config import TrainConfig
from asl_ray.faults import faults_for
from asl_ray.plan.measure import PlanMeasurement

SPEED_NEUTRAL_KEYS = ("epochs", "fold", "label_smoothing", "lr_per_64", "min_lr", "seed", "split_seed",
                      "warmup_epochs", "weight_decay_ratio")
"""Left out of the key. The seed, the fold and the split seed change which samples come first, not the length mix a few
steps see; the learning rate, its schedule, weight decay and label smoothing are arithmetic on the same tensors; the
epochs do not enter a few steps. An injected out-of-memory error (asl_ray/faults.py: tests only) makes a plan fail as
measured, so it is part of the key."""
KEY_VERSION = 2  # bump when what a measurement means changes (the probe, the meter): 2 times step by step


class PlanCache:
    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def key(self, cfg: TrainConfig, device: str, warmup_steps: int, steps: int, data: str = "") -> str:
        """sha1 of the config's speed-relevant keys, the device identity, the data's identity (the cache
        directory's content key) and the probe's length."""
        speed = {k: v for k, v in cfg.to_dict().items() if k not in SPEED_NEUTRAL_KEYS}
        oom = faults_for(cfg).oom_at_step
        text = json.dumps({"version": KEY_VERSION, "config": speed, "device": device, "data": data,
                           **({"injected_oom_at_step": oom} if oom else {}),
                           "warmup_steps": warmup_steps, "steps": steps}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def get(self, key: str) -> Optional[PlanMeasurement]:
        """The stored measurement (marked from_cache), or None if there is none (or it cannot be read)."""
        try:
            record = json.loads(self.path(key).read_text())
            return PlanMeasurement.from_dict({**record["measurement"], "from_cache": True})
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def put(self, key: str, measurement: PlanMeasurement, cfg: Optional[TrainConfig] = None) -> None:
        """Write atomically (a reader sees the old file or the new one, never half of one). `cfg` is stored
        beside the measurement for whoever reads the file, never read back."""
        self.directory.mkdir(parents=True, exist_ok=True)
        record = {"measurement": {**measurement.to_dict(), "from_cache": False},
                  "config": cfg.to_dict() if cfg is not None else None}
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{key}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(record, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path(key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def lock(self, key: str) -> FileLock:
        self.directory.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.directory / f"{key}.lock"))
