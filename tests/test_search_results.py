"""The search's result files from trial rows built here (no Ray, no Tune): trials.parquet/.csv, then with
confirmation runs confirm.parquet, pareto.png, curves.png, a best_config.yaml that `python -m asl_ray.train
--config` reads (the chosen plan's micro-batch x accumulation, never effective_batch_size), and report.md
with the runner-up plans, the confirmation runs and the comparison with the seed's default at the noise."""
import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import yaml

from asl_ray.config import TrainConfig, load_config_yaml
from asl_ray.search import report
from asl_ray.search.results import write_results, write_trials
from asl_ray.search.select import Selection

LEARNING = ["effective_batch_size", "dim", "max_len"]
PLANS = ["batch_size", "gradient_accumulation_steps", "precision"]
PNG = b"\x89PNG\r\n\x1a\n"


def stand_in_config(root: Path, confirm_seeds: int = 2, **selection) -> SimpleNamespace:
    """What results reads of a SearchConfig (asl_ray/search/config.py)."""
    base = TrainConfig(depth=1, num_workers=0, lr_per_64=4e-3, epochs=6, max_steps_per_epoch=4)
    space = SimpleNamespace(path=Path("search_spaces/cpu-smoke.yaml"), scheduler="asha",
                            budget=SimpleNamespace(trials=6, epochs=6, grace_period=2, reduction_factor=2),
                            param_names=lambda: list(LEARNING), plan_names=lambda: list(PLANS),
                            base_config=lambda: base, baselines=({"effective_batch_size": 48},),
                            baseline_names=("default",))
    card = SimpleNamespace(name="rtx4070", usable_bytes=11 * 2 ** 30, describe=lambda: "rtx4070 (11 GiB usable)")
    return SimpleNamespace(root=root, card=card, space=space, selection=Selection(**selection), data=Path("data/x"),
                           confirm_seeds=confirm_seeds, confirm_folds=1, finalists=2, num_classes=10, concurrency=0,
                           cpus_per_trial=1.0)


def row(trial_id, status, acc, speed, eff=48, bs=12, dim=64, baseline="", curve=None, **extra) -> dict:
    runner_ups = [{"plan": "8x6", "status": "ok", "samples_per_s": speed * 0.8, "peak_reserved_mb": float("nan")},
                  {"plan": "48x1", "status": "oom", "samples_per_s": float("nan"), "peak_reserved_mb": float("nan")}]
    return {"trial_id": trial_id, "status": status, "feasible": status in ("ok", "stopped"), "baseline": baseline,
            "effective_batch_size": eff, "dim": dim, "max_len": 64, "batch_size": bs,
            "gradient_accumulation_steps": eff // bs if bs else None, "precision": "fp16", "precision_run": "fp32",
            "effective_batch": eff, "epochs_run": 6 if status == "ok" else 2, "seed": 42, "val_acc": acc,
            "val_samples": 400, "samples_per_s": speed, "plan": f"{bs}x{eff // bs}" if bs else "",
            "plan_samples_per_s": speed * 1.1, "plan_peak_reserved_mb": float("nan"),
            "plan_runner_ups": json.dumps(runner_ups), "plans_measured": 3, "plans_from_cache": 0,
            "plans_rejected": 1, "plan_search_seconds": 4.2,
            "val_acc_curve": json.dumps(curve if curve is not None else [0.08, acc / 2, acc, acc, acc, acc]),
            "cuda_max_reserved_mb": float("nan"), "cuda_max_allocated_mb": float("nan"),
            "predicted_reserved_mb": 300.0, "predicted_total_mb": 800.0, "predicted_fit_mb": 900.0,
            "rss_peak_mb": 501.0, "device": "cpu", "node_id": "n", "hostname": "h", "trial_seconds": 30.0,
            "loop_seconds": 25.0, "error": "", **extra}


def frame() -> pd.DataFrame:
    return report.trials_frame([
        row("default", "ok", 0.50, 100.0, baseline="default"),
        row("fast", "ok", 0.48, 300.0, eff=24, bs=24, dim=32),  # 24x1: faster, within the noise of the best
        row("stopped", "stopped", 0.11, 250.0, curve=[0.1, 0.11]),  # still at chance at the rung
        row("oom", "oom", 0.0, 0.0, curve=[]),
        row("noplan", "no_plan", 0.0, 0.0, bs=None, curve=[]),
    ])


def confirmations() -> pd.DataFrame:
    """fast and default on the same three (fold, seed) pairs: fast is credibly within delta of the default's
    accuracy and credibly 3x faster."""
    return pd.DataFrame({"finalist": ["default"] * 3 + ["fast"] * 3, "trial_id": [f"c{i}" for i in range(6)],
                         "fold": 0, "seed": [1042, 1043, 1044] * 2, "status": "ok",
                         "val_acc": [0.50, 0.50, 0.50, 0.495, 0.50, 0.49], "val_samples": 400,
                         "samples_per_s": [100.0, 101.0, 99.0, 300.0, 305.0, 296.0], "samples_per_s_iqr": 2.0,
                         "trial_seconds": 30.0, "error": ""})


def test_write_trials_keeps_every_row(tmp_path):
    df = frame()
    write_trials(df, stand_in_config(tmp_path))
    saved = pd.read_parquet(tmp_path / "trials.parquet")
    assert list(saved["trial_id"]) == list(df["trial_id"]) and (tmp_path / "trials.csv").exists()
    assert json.loads(saved["plan_runner_ups"].iloc[0])[0]["plan"] == "8x6"


def test_write_results_writes_every_file_and_a_trainable_best_config(tmp_path, capsys):
    sc = stand_in_config(tmp_path)
    df = frame()
    write_trials(df, sc)
    # What the confirmation stage reads back: an int column with a gap comes back as float.
    df = pd.read_parquet(tmp_path / "trials.parquet")
    assert df["batch_size"].dtype == float
    cfg = write_results(df, confirmations(), sc)
    for name in ("confirm.parquet", "pareto.png", "curves.png", "best_config.yaml", "report.md"):
        assert (tmp_path / name).exists() and (tmp_path / name).stat().st_size > 0, name
    for name in ("pareto.png", "curves.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG
    assert len(pd.read_parquet(tmp_path / "confirm.parquet")) == 6

    written = yaml.safe_load((tmp_path / "best_config.yaml").read_text())
    assert "effective_batch_size" not in written
    loaded = load_config_yaml(tmp_path / "best_config.yaml")  # what `python -m asl_ray.train --config` does
    assert loaded == cfg
    assert (loaded.batch_size, loaded.gradient_accumulation_steps, loaded.dim) == (24, 1, 32)  # the fast one's plan
    assert (loaded.depth, loaded.epochs, loaded.lr_per_64) == (1, 6, 4e-3)  # the space's base beneath
    header = (tmp_path / "best_config.yaml").read_text().splitlines()[0]
    assert header.startswith("# python -m asl_ray.train --data data/x --config")

    text = (tmp_path / "report.md").read_text()
    assert "Chosen: trial fast" in text and "plan 24x1 (batch_size 24, gradient_accumulation_steps 1," in text
    assert "8x6" in text and "48x1" in text and "vs_chosen" in text  # the runner-up plans
    assert "f0/s1042 f0/s1043 f0/s1044" in text and "mean +- SE" in text  # the confirmation runs
    assert "mean of 3 confirmation runs" in text
    assert "The chosen config and the seed's default can be told apart at this noise by speed" in text
    assert "equivalent within delta 0.02" in text and "acc_se" in text
    assert "Smallest true accuracy difference this search could detect" in text and "max-adjusted" in text
    assert "ASHA rung check: at epoch 2" in text and "2 of 3 trials" in text
    assert "noplan" in text and "oom" in text  # the infeasible table
    assert "no CUDA measurement" in text and "host RSS 501 MiB" in text and report.MEMORY_LEGEND in text
    assert "precision fp16; ran fp32" in text and "confirm.parquet" in text and "curves.png" in text
    out = capsys.readouterr().out
    assert "Chosen: trial fast" in out and "can be told apart" in out and "Pareto" not in out  # summary only


def test_without_confirmations_or_a_finished_trial(tmp_path, capsys):
    sc = stand_in_config(tmp_path, confirm_seeds=0, rule="most-accurate")
    assert write_results(frame(), None, sc).dim == 64  # most accurate: the default itself
    text = (tmp_path / "report.md").read_text()
    assert "The chosen config is the seed's default config." in text and "None (--confirm 0)" in text
    assert not (tmp_path / "confirm.parquet").exists()

    other = tmp_path / "none"
    other.mkdir()
    failed = report.trials_frame([row("oom", "oom", 0.0, 0.0, curve=[])])
    assert write_results(failed, None, stand_in_config(other)) is None
    assert not (other / "best_config.yaml").exists() and (other / "pareto.png").exists()
    assert "No trial finished feasibly" in (other / "report.md").read_text()
