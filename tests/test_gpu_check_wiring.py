"""bench/gpu_check.sh --dry-run: without a GPU, every step's script and flags are checked, nothing measured."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_wires_every_step_and_measures_nothing(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PY": sys.executable, "ASL_RAY_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "dry run: every step wired" in out and "wiring broken" not in out
    for step in ("gpu_tests", "vram_accuracy", "ablation", "search"):
        assert f"=== {step}" in out
    assert "cudnn.benchmark on" in out  # fp16 configs are measured with benchmark on as well
    assert "nothing measured (no GPU figures)" in out
    assert not list(tmp_path.glob("vram_accuracy-*.json"))  # no figures invented
