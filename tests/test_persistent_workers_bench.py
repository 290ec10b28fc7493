"""bench/persistent_workers.py as a user runs it: both variants through the real fit, figures written."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO

SCRIPT = str(REPO / "bench" / "persistent_workers.py")
TINY_SETS = ["dim=32", "depth=1", "max_len=32", "batch_size=16", "gradient_accumulation_steps=1", "num_workers=1"]


@pytest.mark.slow
def test_the_bench_times_epochs_with_and_without_persistent_workers(synth_root, tmp_path):
    out = subprocess.run([sys.executable, SCRIPT, "--data", str(synth_root), "--epochs", "2", "--steps", "2",
                          "--repeats", "1", "--out", str(tmp_path), *[a for s in TINY_SETS for a in ("--set", s)]],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    written = json.loads(next(tmp_path.glob("persistent_workers-*.json")).read_text())
    assert set(written["epoch_seconds_runs"]) == {"respawned (off)", "persistent (on)"}
    assert all(len(xs) == 1 and xs[0] > 0 for xs in written["epoch_seconds_runs"].values())
    assert written["num_workers"] == 1 and "saved per epoch" in out.stdout


def test_the_bench_refuses_a_config_without_workers(synth_root, tmp_path):
    out = subprocess.run([sys.executable, SCRIPT, "--data", str(synth_root), "--set", "num_workers=0",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "--set num_workers" in out.stderr
    assert not list(tmp_path.glob("*.json"))
