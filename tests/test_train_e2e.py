"""A real CPU run on the synthetic set: it learns, checkpoints every epoch, and resumes."""
import json

import pytest

from asl_ray.train.__main__ import main as train_main
from asl_ray.train.checkpoint import LocalReporter, load_checkpoint
from asl_ray.train.loop import fit
from conftest import tiny_config


def test_short_run_reports_every_metric(synth_cache, tmp_path):
    cfg = tiny_config(epochs=1, max_steps_per_epoch=3)
    result = fit(cfg, synth_cache, LocalReporter(tmp_path, log=lambda *_: None))
    for key in ("train_loss", "val_acc", "samples_per_s", "steps_per_s", "peak_memory_mb", "rss_peak_mb",
                "scaler_skipped_steps", "epoch", "feasible"):
        assert key in result
    assert result["optimizer_steps"] == 3 and result["feasible"] and not result["oom"]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["epoch"] == 0
    assert (tmp_path / "checkpoints" / "last" / "checkpoint.pt").exists()


@pytest.mark.slow
def test_cpu_run_learns_then_resumes(synth_cache, tmp_path):
    chance = 1 / synth_cache.num_classes
    cfg = tiny_config(epochs=12)
    first = fit(cfg.with_overrides({"epochs": 10}), synth_cache, LocalReporter(tmp_path, log=lambda *_: None))
    assert first["val_acc"] > 3 * chance, first  # held-out signers, well above chance

    state = load_checkpoint(tmp_path / "checkpoints" / "last")
    assert state["epoch"] == 9
    resumed = fit(cfg, synth_cache, LocalReporter(tmp_path, log=lambda *_: None), resume_state=state)
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(12))  # no epoch repeated or lost
    assert resumed["optimizer_steps"] == 12 * first["optimizer_steps"] // 10


def test_cli_trains_and_resumes(synth_root, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--data", str(synth_root), "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
            "--set", "dim=32", "--set", "depth=1", "--set", "max_len=32", "--set", "num_workers=0",
            "--set", "max_steps_per_epoch=2", "--set", "batch_size=8"]
    assert train_main(args + ["--epochs", "1"]) == 0
    assert train_main(args + ["--epochs", "2", "--resume"]) == 0
    text = capsys.readouterr().out
    assert "epoch   0" in text and "epoch   1" in text
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
