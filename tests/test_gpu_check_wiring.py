"""bench/gpu_check.sh: its steps fit 7 minutes, and --dry-run runs every step's wiring on the CPU, measuring nothing."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import gpu_check  # noqa: E402


def test_the_planned_steps_fit_their_budget_and_the_script_reads_the_plan():
    assert sum(s.limit_s for s in gpu_check.STEPS) <= 420 == gpu_check.BUDGET_S
    names = [s.name for s in gpu_check.STEPS]
    assert names[:3] == ["facts", "probe", "vram"] and names[-1] == "summary"  # cheapest, decision-grade first
    script = (REPO / "bench" / "gpu_check.sh").read_text()
    assert "gpu_check.py --plan" in script and not re.search(r"timeout -k 5 \d", script)  # no limit of its own


def test_gpu_check_dry_run_wires_every_step_and_measures_nothing(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PY": sys.executable, "ASL_RAY_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "dry run: every step wired" in out
    for step in gpu_check.STEPS:
        assert f"=== {step.name} (limit {step.limit_s}s" in out
    files = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    assert len(files) <= 8 and "summary.md" in files and "logs.tar.gz" in files
    facts = json.loads((tmp_path / "facts.json").read_text())
    assert facts["api_missing"] == [] and "card" not in facts
    vram = json.loads((tmp_path / "vram.json").read_text())
    rows = vram["rows"]
    assert len(rows) == 10 and vram["dry_run"] and not any("measured_reserved_mib" in r for r in rows)
    boundary = [r for r in rows if "(boundary)" in r["config"]]
    above = [r for r in rows if "(+" in r["config"]]
    assert len(boundary) == 2 and all(r["predicted_fits"] for r in boundary)
    assert len(above) == 2 and not any(r["predicted_fits"] for r in above)
    # A prediction above the cap is scored on an uncapped run as well (the capped run's peak is the cap's).
    assert all(len(r["would_run"]) == 2 for r in boundary + above)
    speed = json.loads((tmp_path / "speed.json").read_text())
    assert speed["dry_run"] and set(speed["rows"]) == {"seed default, eager", "fewest launches, eager"}
    for row in speed["rows"].values():  # the real measurer and profiler ran, on the CPU: no CUDA launches
        assert row["samples_per_s"] > 0 and row["host_launches_per_sample"] == 0 and row["busy_fraction"] is None
    assert "no GPU (dry run)" in (tmp_path / "summary.md").read_text()


def test_speed_variants_compare_the_seed_default_with_the_fewest_launches_config():
    variants = gpu_check.speed_variants(dry=False)
    assert list(variants)[0] == "seed default, eager"
    graphs = variants["fewest launches, CUDA graphs"]
    assert graphs.compile and graphs.compile_mode == "reduce-overhead" and graphs.pad_to == "max_len"
    assert graphs.gradient_accumulation_steps == 4  # the seed's: CUDA graphs with accumulation, the fixed path


def test_busy_time_counts_overlapping_kernels_once():
    assert gpu_check.union_length([(0, 10), (5, 15), (20, 25), (21, 22)]) == 20
    assert gpu_check.union_length([]) == 0


def test_launch_calls_and_attention_kernels_are_recognised_by_name():
    for name in ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx", "cudaGraphLaunch",
                 "cudaLaunchKernel_v7000"):
        assert gpu_check.LAUNCH_EVENTS.match(name)
    assert not gpu_check.LAUNCH_EVENTS.match("cudaMemcpyAsync")
    names = ["aten::_efficient_attention_forward", "fmha_cutlassF_f16_aligned_64x64_rf_sm80"]
    assert gpu_check.classify_attention_kernels(names)["kernel"] == "memory-efficient"
    assert gpu_check.classify_attention_kernels(["aten::_scaled_dot_product_cudnn_attention",
                                                 "cudnn_generated_fort_native_sdpa"])["kernel"] == "cudnn"
    assert gpu_check.classify_attention_kernels(["flash_fwd_kernel"])["kernel"] == "flash"
