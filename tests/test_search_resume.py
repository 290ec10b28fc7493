"""Interrupt a real search (SIGINT as Ctrl-C, or SIGKILL as a crash) after a trial finished and while the next
one is mid-fit, then --resume: nothing finished runs again, the interrupted trial continues from its Train
checkpoint and ends ok with all its epochs, each counted once, and the study has no duplicate or orphan trials."""
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from conftest import PACED_AT_RAY_DEFAULT, REPO, write_search_space

# The first search saves Tune's experiment state every second (TUNE_GLOBAL_CHECKPOINT_S; the search's own
# default is 10 s), so a SIGKILL need not wait long for a saved state that holds the mid-fit trial.
CHECKPOINT_S = "1"
EPOCHS = 7  # a trial is mid-fit (an epoch reported, three or more to go) for four epochs, many CHECKPOINT_S
STEPS = 40

pytestmark = pytest.mark.slow


def _storage_ready(db: Path) -> bool:
    """Whether the search has finished creating its Optuna storage. Asked read-only: opening a half-made
    SQLite storage with Optuna would create its tables too, racing the search's own creation of them."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as c:
            return c.execute("SELECT COUNT(*) FROM alembic_version").fetchone()[0] > 0
    except sqlite3.Error:
        return False


def _finished_trials(db: Path, name: str) -> list:
    if not db.exists() or not _storage_ready(db):
        return []
    try:
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    except Exception:  # study not created yet
        return []
    return [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")
            and t.user_attrs.get("status") not in ("rejected", "no_plan", "duplicate")]


def _saved_trial_states(tune_dir: Path) -> dict:
    """Trial id -> status in Tune's newest saved experiment state ({} while there is none, or mid-write)."""
    states = sorted(tune_dir.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    if not states:
        return {}
    try:
        trial_data = json.loads(states[-1].read_text())["trial_data"]
        return {t["trial_id"]: t["status"] for t in (json.loads(entry[0]) for entry in trial_data)}
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return {}


def _mid_fit_trial(tune_dir: Path, finished: set) -> str:
    """The Tune trial that has reported at least one epoch, with three or more still to run ('' if none)."""
    for progress in tune_dir.glob("*/progress.csv"):
        try:
            rows = pd.read_csv(progress, dtype={"trial_id": str})  # "65515353" is a trial id, not a number
        except Exception:  # empty, or being written
            continue
        if 0 < len(rows) <= EPOCHS - 3 and rows["trial_id"].iloc[0] not in finished:
            return rows["trial_id"].iloc[0]
    return ""


def _space(tmp_path: Path) -> Path:
    """Two learning configs that fit and train (their plans pinned), no early stopping (grace period =
    epochs): the first finishes, the second is interrupted mid-fit and is the last trial."""
    return write_search_space(tmp_path / "space.yaml", trials=2, epochs=EPOCHS, grace_period=EPOCHS,
                              max_steps_per_epoch=STEPS, baselines=[
                                  {"effective_batch_size": 16, "max_len": 32, "batch_size": 8},
                                  {"effective_batch_size": 32, "max_len": 32, "batch_size": 8}])


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "sigkill"])
def test_interrupted_search_resumes_without_rerunning_finished_trials(synth_root, synth_cache, tmp_path, stop):
    space = _space(tmp_path)
    cmd = [sys.executable, "-m", "asl_ray.search", "--space", str(space), "--data", str(synth_root),
           "--cache-dir", str(synth_cache.path.parent), "--storage-path", str(tmp_path / "runs"), "--name", "r"]
    root = tmp_path / "runs" / "r"
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": CHECKPOINT_S, **PACED_AT_RAY_DEFAULT})
        deadline, first_finished, mid_fit = time.time() + 600, None, ""
        while time.time() < deadline and proc.poll() is None:
            finished = {t.user_attrs["ray_trial_id"] for t in _finished_trials(root / "optuna.db", "r")}
            first_finished = first_finished or (time.time() if finished else None)
            mid_fit = _mid_fit_trial(root / "tune", finished) if first_finished else ""
            # A SIGKILL loses what Tune has not saved yet (it saves its state every CHECKPOINT_S here): kill
            # only once its saved state holds the finished trial as TERMINATED and the mid-fit one as RUNNING.
            saved = _saved_trial_states(root / "tune") if mid_fit and stop == signal.SIGKILL else {}
            if mid_fit and (stop != signal.SIGKILL or (saved.get(mid_fit) == "RUNNING" and all(
                    saved.get(t) == "TERMINATED" for t in finished))):
                break
            time.sleep(0.3)
        assert proc.poll() is None and mid_fit, (tmp_path / "first.log").read_text()[-3000:]
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
    launched = df[~df["status"].isin(["rejected", "no_plan"])]
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

    # The trial interrupted mid-fit finished from its Train checkpoint: ok, every epoch, each once, one
    # COMPLETE Optuna trial (Tune's own iteration count restarted at 1 on resume).
    row = launched.set_index("trial_id").loc[mid_fit]
    assert row["status"] == "ok" and row["epochs_run"] == EPOCHS, row.to_dict()
    # Tune's progress.csv restarts with the trial: it holds the epochs after the resume, each once.
    progress = pd.read_csv(next((root / "tune").glob(f"*{mid_fit}*/progress.csv")))
    epochs = progress["epoch"].tolist()
    assert epochs == list(range(EPOCHS - len(epochs), EPOCHS)) and len(epochs) < EPOCHS, epochs
    assert (progress["epochs_done"] == progress["epoch"] + 1).all()
    assert progress["training_iteration"].tolist() == list(range(1, len(epochs) + 1))  # Tune's count restarted
    told = [t for t in study.trials if t.user_attrs.get("ray_trial_id") == mid_fit]
    assert [t.state.name for t in told] == ["COMPLETE"] and told[0].user_attrs["epochs_done"] == EPOCHS
