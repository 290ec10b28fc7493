"""Interrupt a real search (SIGINT as Ctrl-C, or SIGKILL as a crash) after a trial finished, then --resume:
nothing finished runs again, and the study has no duplicate or orphan trials."""
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from conftest import REPO, write_search_space

pytestmark = pytest.mark.slow


def _finished_trials(db: Path, name: str) -> list:
    if not db.exists():
        return []
    try:
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    except Exception:  # study not created yet
        return []
    return [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED") and t.user_attrs.get("status") != "rejected"]


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "sigkill"])
def test_interrupted_search_resumes_without_rerunning_finished_trials(synth_root, synth_cache, tmp_path, stop):
    space = write_search_space(tmp_path / "space.yaml", trials=3)
    cmd = [sys.executable, "-m", "asl_ray.search", "--space", str(space), "--data", str(synth_root),
           "--cache-dir", str(synth_cache.path.parent), "--storage-path", str(tmp_path / "runs"), "--name", "r"]
    root = tmp_path / "runs" / "r"
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None and not _finished_trials(root / "optuna.db", "r"):
            time.sleep(2)
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        if stop == signal.SIGKILL:
            time.sleep(15)  # Tune saves the experiment's state every 10 s; a kill loses at most that
        proc.send_signal(stop)
        code = proc.wait(timeout=180)
        assert code == (130 if stop == signal.SIGINT else -signal.SIGKILL)  # Ctrl-C: said so, exit 130
    before = {t.user_attrs["ray_trial_id"]: t.number for t in _finished_trials(root / "optuna.db", "r")}
    assert before

    assert not (root / "trials.parquet").exists()
    # Only the name: the rest is what the experiment started with.
    resume = [sys.executable, "-m", "asl_ray.search", "--name", "r", "--storage-path", str(tmp_path / "runs"), "--resume"]
    resumed = subprocess.run(resume, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]

    df = pd.read_parquet(root / "trials.parquet")
    launched = df[df["status"] != "rejected"]
    assert launched["trial_id"].is_unique
    assert set(before) <= set(launched["trial_id"])
    for trial_id in before:  # a finished trial kept its results and was not trained again
        progress = next((root / "tune").glob(f"*{trial_id}*/progress.csv"))
        epochs = pd.read_csv(progress)["epoch"].tolist()
        assert epochs == sorted(set(epochs)), f"{trial_id} re-ran epochs: {epochs}"
        assert len(list((root / "train").glob(f"trial-{trial_id}"))) == 1
    after = {t.user_attrs["ray_trial_id"]: t.number for t in _finished_trials(root / "optuna.db", "r")}
    assert all(after[k] == v for k, v in before.items())  # the same Optuna trials, not new copies
    study = optuna.load_study(study_name="r", storage=f"sqlite:///{root / 'optuna.db'}")
    assert not [t.number for t in study.trials if t.state.name == "RUNNING"]  # no orphans
    told = sorted(t.user_attrs["ray_trial_id"] for t in study.trials if "ray_trial_id" in t.user_attrs)
    assert told == sorted(launched["trial_id"])  # one Optuna trial per Tune trial: no failed twins
    assert (root / "best_config.yaml").exists() or not (launched["status"] == "ok").any()
