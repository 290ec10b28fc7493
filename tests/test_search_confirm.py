"""Ctrl-C during the confirmation stage (--confirm-folds 2: the two runs are the search's fold and the next), after
one confirmation run finished and while the next is mid-fit:
exit 130, no best_config.yaml (it is written only once every run is in); then --resume: the main search is
not run again, the finished confirmation run is not re-run, the interrupted one continues from its Train
checkpoint, and best_config.yaml is written."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import PACED_AT_RAY_DEFAULT, REPO, write_search_space

EPOCHS = 10  # a confirmation run is mid-fit (an epoch reported, three or more to go) for seven epochs: Tune's
# progress.csv trails the Train run by several seconds, and four paced epochs (8 s) proved too short a window
STEPS = 20

pytestmark = pytest.mark.slow


def _progress(tune_dir: Path) -> dict[str, int]:
    """Trial folder -> epochs reported in its progress.csv (0 while empty or being written)."""
    out = {}
    for progress in tune_dir.glob("*/progress.csv"):
        try:
            out[progress.parent.name] = len(pd.read_csv(progress))
        except Exception:  # empty, or being written
            out[progress.parent.name] = 0
    return out


def test_interrupted_confirmation_resumes_only_the_unfinished_runs(synth_root, synth_cache, tmp_path):
    space = write_search_space(tmp_path / "space.yaml", trials=1, epochs=EPOCHS, grace_period=EPOCHS,
                               max_steps_per_epoch=STEPS, confirm={"seeds": 1, "finalists": 1},
                               baselines=[{"effective_batch_size": 16, "max_len": 32, "batch_size": 8}])
    runs = tmp_path / "runs"
    root = runs / "c"
    confirm_tune = root / "confirm" / "tune"
    # --concurrency 1: the two confirmation runs one after the other, so one finishes before the other starts.
    cmd = [sys.executable, "-m", "asl_ray.search", "--space", str(space), "--data", str(synth_root), "--cache-dir",
           str(synth_cache.path.parent), "--storage-path", str(runs), "--name", "c", "--concurrency", "1",
           "--confirm-folds", "2"]
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **PACED_AT_RAY_DEFAULT})
        deadline, finished, mid_fit = time.time() + 600, [], []
        while time.time() < deadline and proc.poll() is None:
            progress = _progress(confirm_tune)
            finished = [t for t, n in progress.items() if n == EPOCHS]
            mid_fit = [t for t, n in progress.items() if 0 < n <= EPOCHS - 3]
            if finished and mid_fit:
                break
            time.sleep(0.3)
        assert proc.poll() is None and finished and mid_fit, (tmp_path / "first.log").read_text()[-3000:]
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=180)
    first_log = (tmp_path / "first.log").read_text()
    assert code == 130, first_log[-3000:]
    assert "confirmation interrupted" in first_log and "--resume" in first_log
    assert (root / "trials.parquet").exists() and (root / "finalists.json").exists()
    assert not (root / "best_config.yaml").exists() and not (root / "confirm.parquet").exists()
    finished_progress = (confirm_tune / finished[0] / "progress.csv").read_text()

    resume = [sys.executable, "-m", "asl_ray.search", "--name", "c", "--storage-path", str(runs), "--resume"]
    resumed = subprocess.run(resume, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "search: finished earlier" in resumed.stdout  # the main search is read back, not run again
    assert len(list((root / "train").glob("trial-*"))) == 1

    assert (root / "best_config.yaml").exists()
    confirm = pd.read_parquet(root / "confirm.parquet")
    trials = pd.read_parquet(root / "trials.parquet")
    finalist = trials.loc[trials["status"] == "ok"].iloc[0]
    assert len(confirm) == 2 and set(confirm["status"]) == {"ok"} and set(confirm["finalist"]) == {finalist["trial_id"]}
    # --confirm-folds 2 with 1 seed: the search's fold and the next, both with the fresh seed (and kept on --resume)
    assert sorted(zip(confirm["fold"], confirm["seed"])) == [(0, finalist["seed"] + 1000), (1, finalist["seed"] + 1000)]
    # Two runs, each one Tune trial and one Train run: nothing started twice.
    assert len(_progress(confirm_tune)) == 2 and len(list((root / "confirm" / "train").glob("trial-*"))) == 2
    assert (confirm_tune / finished[0] / "progress.csv").read_text() == finished_progress  # not re-run
    # The interrupted run went on from its Train checkpoint: Tune's progress.csv restarts with it and holds
    # only the epochs after the resume, each once.
    epochs = pd.read_csv(confirm_tune / mid_fit[0] / "progress.csv")["epoch"].tolist()
    assert epochs == list(range(EPOCHS - len(epochs), EPOCHS)) and len(epochs) < EPOCHS, epochs
    report = (root / "report.md").read_text()
    assert "## Confirmation runs" in report and finalist["trial_id"] in report
