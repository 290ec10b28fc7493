"""Real searches on a real local Ray with a real Optuna study.

The two-level search (`--confirm 1 --finalists 2`): learning configs sampled by Optuna, each trial's plan
chosen by measuring its candidates in the worker, rejected configs never run, OOM and NaN trials infeasible,
the finalists re-trained with fresh seeds before best_config.yaml is written, and the best config trains.
The one-level search (`--plan-search optuna`): Optuna samples the micro-batch too, and no plan is measured.
"""
import json

import optuna
import pandas as pd
import pytest
import yaml

from asl_ray.config import load_config_yaml
from asl_ray.search.__main__ import main as search_main
from asl_ray.train.__main__ import main as train_main
from conftest import SEARCH_FAULTS, write_search_space

pytestmark = pytest.mark.slow

NEVER_LAUNCHED = ("rejected", "no_plan")


def _search(space, synth_root, synth_cache, tmp_path, name, *extra):
    return search_main(["--space", str(space), "--data", str(synth_root), "--cache-dir", str(synth_cache.path.parent),
                        "--storage-path", str(tmp_path / "runs"), "--name", name, *extra])


def test_two_level_search_with_confirmation(ray_local, synth_root, synth_cache, tmp_path, capsys, inject):
    inject(*SEARCH_FAULTS)
    space = write_search_space(tmp_path / "space.yaml", trials=4)
    assert _search(space, synth_root, synth_cache, tmp_path, "e2e", "--confirm", "1", "--finalists", "2") == 0
    root = tmp_path / "runs" / "e2e"
    for f in ("trials.parquet", "trials.csv", "optuna.db", "pareto.png", "curves.png", "best_config.yaml",
              "report.md", "confirm.parquet", "finalists.json"):
        assert (root / f).exists(), f
    df = pd.read_parquet(root / "trials.parquet")
    launched = df[~df["status"].isin(NEVER_LAUNCHED)]
    rejected = df[df["status"] == "rejected"]
    assert len(launched) == 4  # configs never launched do not use up the trial budget
    assert set(launched["status"]) <= {"ok", "stopped", "oom", "diverged"}
    oom = launched[launched["baseline"] == "baseline2"]  # kernel_size 5, 16 x 1
    assert set(oom["status"]) == {"oom"} and not oom["feasible"].any()  # infeasible, and the search went on
    nan = launched[launched["baseline"] == "baseline3"]  # kernel_size 7, 16 x 2: NaN from step 2
    assert set(nan["status"]) == {"diverged"} and not nan["on_pareto_front"].any()  # never the best
    # The second baseline (64 x 1 at max_len 512, its plan pinned) is predicted not to fit 0.7 GiB: recorded,
    # never launched.
    big = rejected[(rejected["effective_batch_size"] == 64) & (rejected["max_len"] == 512)]
    assert len(big) >= 1 and (big["predicted_fit_mb"] > 0.7 * 1024).all()
    assert not ((launched["batch_size"] == 64) & (launched["max_len"] == 512)).any()
    assert (launched["predicted_fit_mb"] <= 0.7 * 1024).all()
    assert (launched["predicted_reserved_mb"] < launched["predicted_total_mb"]).all()  # without the CUDA context

    # Each trial ran a plan of its learning config: micro-batch x accumulation = its effective batch.
    ran = launched[launched["status"].isin(["ok", "stopped"])]
    assert (ran["batch_size"] * ran["gradient_accumulation_steps"] == ran["effective_batch_size"]).all()
    assert (ran["plan"] == ran["batch_size"].astype(str) + "x" + ran["gradient_accumulation_steps"].astype(str)).all()
    first = launched[launched["baseline"] == "baseline0"].iloc[0]  # its plan pinned: 8 x 2, measured alone
    assert (first["plan"], first["plans_measured"] + first["plans_from_cache"]) == ("8x2", 1)
    assert (launched["plans_measured"] + launched["plans_from_cache"]).between(1, 2).all()  # max_plans 2
    assert (ran["plan_samples_per_s"] > 0).all() and (ran["val_samples"] > 0).all()
    assert (ran["rss_peak_mb"] > 0).all() and ran["cuda_max_reserved_mb"].isna().all()  # a CPU run: no CUDA figure
    assert set(ran["precision_run"]) == {"fp32"}  # what the CPU ran, whatever was configured
    ok = df[df["status"] == "ok"]
    assert (ok["epochs_run"] == 2).all() and all(len(json.loads(c)) == 2 for c in ok["val_acc_curve"])
    assert not [p.name for p in (root / "tune").iterdir() if "predicted" in p.name]  # TrainConfig keys only
    assert len(list((root / "train").glob("trial-*"))) == len(launched)

    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{root / 'optuna.db'}")
    assert study.metric_names == ["val_acc", "samples_per_s"]
    assert {name for t in study.trials for name in t.params} <= {"effective_batch_size", "max_len", "kernel_size"}
    assert all(t.user_attrs.get("status") != "duplicate" and "ray_trial_id" in t.user_attrs for t in study.best_trials)
    assert not [t.number for t in study.trials if t.state.name == "RUNNING"]
    assert sum(1 for t in study.trials if t.user_attrs.get("status") == "rejected") == len(rejected)
    completed_feasible = [t for t in study.trials if t.state.name == "COMPLETE" and t.constraints.get("infeasible") == 0
                          and t.user_attrs.get("status") != "duplicate"]
    assert sorted(round(t.values[0], 6) for t in completed_feasible) == sorted(round(v, 6) for v in ok["val_acc"])

    # The confirmation stage: each finalist (the most accurate and the seed's default at least) once more with a
    # fresh seed on the search's fold, the same (fold, seed) pair for all, in its own Tune experiment, one
    # TorchTrainer run each.
    finalists = json.loads((root / "finalists.json").read_text())
    assert 1 <= len(finalists) <= 2 and set(finalists) <= set(launched[launched["feasible"]]["trial_id"])
    assert ok.sort_values("val_acc", ascending=False)["trial_id"].iloc[0] == finalists[0]
    assert set(df[df["baseline"] == "baseline0"]["trial_id"]) <= set(finalists)
    confirm = pd.read_parquet(root / "confirm.parquet")
    assert sorted(confirm["finalist"]) == sorted(finalists) and set(confirm["status"]) == {"ok"}
    assert set(zip(confirm["fold"], confirm["seed"])) == {(0, 42 + 1000)}  # one pair, shared by every finalist
    assert confirm["trial_id"].is_unique and not set(confirm["trial_id"]) & set(df["trial_id"])
    assert (confirm["val_samples"] == ok["val_samples"].iloc[0]).all() and confirm["val_acc"].between(0, 1).all()
    assert len(list((root / "confirm" / "train").glob("trial-*"))) == len(confirm)
    assert len(list((root / "confirm" / "tune").glob("*/progress.csv"))) == len(confirm)

    best = yaml.safe_load((root / "best_config.yaml").read_text())
    cfg = load_config_yaml(root / "best_config.yaml")
    chosen = ok[(ok["batch_size"] == cfg.batch_size) & (ok["gradient_accumulation_steps"] ==
                                                        cfg.gradient_accumulation_steps) & (ok["max_len"] == cfg.max_len)]
    assert len(chosen) >= 1 and "effective_batch_size" not in best  # TrainConfig keys only
    report = (root / "report.md").read_text()
    assert "## Confirmation runs" in report and all(f in report for f in finalists)
    assert "Plans measured for this config" in report and chosen["plan"].iloc[0] in report
    captured = capsys.readouterr()
    out = captured.out
    # Confirmation runs one at a time, like the trials: no more workers start at once than the raylet expects
    # (two at once on two CPUs made Ray warn "... worker processes have been started ... maximum expected startup
    # concurrency", twice per default search).
    assert "maximum expected startup concurrency" not in out + captured.err
    assert "search: " in out and f"confirm: {len(finalists)} finalists" in out and "the same 1 (fold, seed)" in out
    assert "Chosen: trial" in out
    assert "TrainingReport(" not in out and "(RayTrainWorker" not in out  # workers' output: Ray's log files

    _assert_no_secret_written(root)

    assert train_main(["--data", str(synth_root), "--cache-dir", str(synth_cache.path.parent), "--config",
                       str(root / "best_config.yaml"), "--out", str(tmp_path / "best"), "--epochs", "1"]) == 0


def test_one_level_search_samples_the_micro_batch(ray_local, synth_root, synth_cache, tmp_path):
    space = write_search_space(tmp_path / "space.yaml", trials=2, epochs=1, grace_period=1, max_steps_per_epoch=3,
                               baselines=[{"effective_batch_size": 16, "max_len": 32, "batch_size": 8}])
    assert _search(space, synth_root, synth_cache, tmp_path, "one", "--plan-search", "optuna") == 0
    root = tmp_path / "runs" / "one"
    df = pd.read_parquet(root / "trials.parquet")
    launched = df[~df["status"].isin(NEVER_LAUNCHED)]
    assert len(launched) == 2 and (launched["plans_measured"] == 0).all()  # no plan is measured
    assert (launched["batch_size"] * launched["gradient_accumulation_steps"] == launched["effective_batch_size"]).all()
    study = optuna.load_study(study_name="one", storage=f"sqlite:///{root / 'optuna.db'}")
    assert "batch_size" in {name for t in study.trials for name in t.params}  # Optuna samples it
    assert (root / "best_config.yaml").exists() and not (root / "confirm.parquet").exists()


def _assert_no_secret_written(root):
    """Ray's auth token (on by default, never switched off by us) appears in no result or log file."""
    import os
    from pathlib import Path
    assert os.environ.get("RAY_AUTH_MODE", "token") != "disabled"
    token_file = Path.home() / ".ray" / "auth_token"
    secrets = [token_file.read_text().strip()] if token_file.exists() else []
    secrets += [os.environ["RAY_AUTH_TOKEN"]] if os.environ.get("RAY_AUTH_TOKEN") else []
    for path in root.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".csv", ".md", ".yaml", ".log", ".txt", ".jsonl", ""):
            text = path.read_text(errors="ignore")
            assert not any(secret and secret in text for secret in secrets), path


def test_time_budget_stops_launching_on_a_real_ray(ray_local, synth_root, synth_cache, tmp_path):
    """--time-budget through Tune: a budget shorter than one trial lets the first trial run (nothing is known
    yet) and launches nothing after it, although --trials asks for 3; the search still ends with its results."""
    space = write_search_space(tmp_path / "space.yaml", trials=3, epochs=1, grace_period=1, max_steps_per_epoch=2,
                               baselines=[{"effective_batch_size": 16, "max_len": 32, "batch_size": 8}])
    assert _search(space, synth_root, synth_cache, tmp_path, "budget", "--plan-search", "optuna",
                   "--time-budget", "1s") == 0
    root = tmp_path / "runs" / "budget"
    df = pd.read_parquet(root / "trials.parquet")
    launched = df[~df["status"].isin(NEVER_LAUNCHED)]
    assert len(launched) == 1 and launched["baseline"].iloc[0] != ""  # the pinned baseline, then the budget
    assert json.loads((root / "search_args.json").read_text())["time_budget"] == "1s"
    assert (root / "best_config.yaml").exists()
