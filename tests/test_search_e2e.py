"""A real search on a real local Ray with a real Optuna study: results agree, rejected configs never run,
the best config trains."""
import optuna
import pandas as pd
import pytest
import yaml

from asl_ray.search.__main__ import main as search_main
from asl_ray.train.__main__ import main as train_main
from conftest import write_search_space

pytestmark = pytest.mark.slow


def test_search_end_to_end(ray_local, synth_root, synth_cache, tmp_path, capsys):
    space = write_search_space(tmp_path / "space.yaml", trials=4)
    rc = search_main(["--space", str(space), "--data", str(synth_root), "--cache-dir", str(synth_cache.path.parent),
                      "--storage-path", str(tmp_path / "runs"), "--name", "e2e"])
    assert rc == 0
    root = tmp_path / "runs" / "e2e"
    for f in ("trials.parquet", "trials.csv", "optuna.db", "pareto.png", "best_config.yaml", "report.md"):
        assert (root / f).exists(), f
    df = pd.read_parquet(root / "trials.parquet")
    launched = df[df["status"] != "rejected"]
    rejected = df[df["status"] == "rejected"]
    assert len(launched) == 4  # rejected configs do not use up the trial budget
    assert set(launched["status"]) <= {"ok", "stopped", "oom", "diverged"}
    oom = launched[(launched["inject_oom_at_step"] == 2) & (launched["inject_nan_at_step"] == 0)]
    assert set(oom["status"]) == {"oom"} and not oom["feasible"].any()  # infeasible, and the search went on
    nan = launched[(launched["inject_nan_at_step"] == 2) & (launched["inject_oom_at_step"] == 0)]
    assert set(nan["status"]) == {"diverged"} and not nan["on_pareto_front"].any()  # never the best
    # The second baseline (64 x 512) is predicted not to fit 0.7 GiB: recorded, never launched.
    big = rejected[(rejected["batch_size"] == 64) & (rejected["max_len"] == 512)]
    assert len(big) >= 1 and (big["predicted_fit_mb"] > 0.7 * 1024).all()
    assert not ((launched["batch_size"] == 64) & (launched["max_len"] == 512)).any()
    assert (launched["predicted_fit_mb"] <= 0.7 * 1024).all()
    assert (launched["predicted_reserved_mb"] < launched["predicted_total_mb"]).all()  # without the CUDA context
    ran = launched[launched["status"].isin(["ok", "stopped"])]
    assert (ran["rss_peak_mb"] > 0).all() and ran["cuda_max_reserved_mb"].isna().all()  # a CPU run: no CUDA figure
    assert set(ran["precision_run"]) == {"fp32"}  # what the CPU ran, whatever was configured
    assert (df.loc[df["status"] == "ok", "epochs_run"] == 2).all()
    # Trial configs hold TrainConfig keys only (the predicted figure named every trial directory).
    assert not [p.name for p in (root / "tune").iterdir() if "predicted" in p.name]
    assert len(list((root / "train").glob("trial-*"))) == len(launched)

    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{root / 'optuna.db'}")
    assert study.metric_names == ["val_acc", "samples_per_s"]
    assert all("/" not in name for t in study.trials for name in t.params)  # TrainConfig keys, as in the space
    assert all(t.user_attrs.get("status") != "duplicate" and "ray_trial_id" in t.user_attrs for t in study.best_trials)
    by_state = pd.Series([t.state.name for t in study.trials]).value_counts().to_dict()
    assert by_state.get("RUNNING", 0) == 0
    assert sum(1 for t in study.trials if t.user_attrs.get("status") == "rejected") == len(rejected)
    assert all(t.constraints.get("infeasible", 0) > 0 for t in study.trials
               if t.user_attrs.get("status") in ("rejected", "oom", "diverged"))
    finished_ok = df[df["status"] == "ok"]
    completed_feasible = [t for t in study.trials if t.state.name == "COMPLETE" and t.constraints.get("infeasible") == 0
                          and t.user_attrs.get("status") != "duplicate"]  # a repeat is told, never launched
    assert len(completed_feasible) == len(finished_ok)
    assert sorted(round(t.values[0], 6) for t in completed_feasible) == sorted(round(v, 6) for v in finished_ok["val_acc"])

    best = yaml.safe_load((root / "best_config.yaml").read_text())
    chosen = df[df["on_pareto_front"]]
    assert any((chosen["batch_size"] == best["batch_size"]) & (chosen["max_len"] == best["max_len"]))
    out = capsys.readouterr().out
    assert "Pareto front" in out and "Chosen: trial" in out

    _assert_no_secret_written(root)

    assert train_main(["--data", str(synth_root), "--cache-dir", str(synth_cache.path.parent), "--config",
                       str(root / "best_config.yaml"), "--out", str(tmp_path / "best"), "--epochs", "1"]) == 0


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
