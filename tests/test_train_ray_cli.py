"""`python -m asl_ray.train --ray` as a user runs it: its own local Ray, a TorchTrainer, a checkpoint."""
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def test_train_with_ray_flag_runs_a_torch_trainer_and_checkpoints(synth_root, synth_cache, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "asl_ray.train", "--data", str(synth_root), "--cache-dir", str(synth_cache.path.parent),
           "--out", str(out), "--ray", "--epochs", "1", "--set", "max_steps_per_epoch=2", "--set", "dim=32",
           "--set", "depth=1", "--set", "max_len=32", "--set", "num_workers=0", "--set", "batch_size=8"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ray: finished, checkpoint" in done.stdout
    checkpoints = list((out / "ray" / "train").glob("checkpoint_*"))
    assert checkpoints, sorted(p.name for p in (out / "ray").rglob("*"))[:20]
