"""Two searches at once on one machine, each on its own local Ray and dashboard port: both finish, and the
--dashboard one's printed URL works and its Train page lists its own trial's run (token in the header; 401
without it)."""
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, write_search_space

pytestmark = pytest.mark.slow

TRAIN_RUNS_API = "/api/train/v2/runs/v1"  # what the dashboard's Train page reads (Train V2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _token() -> str:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"]
    return (Path.home() / ".ray" / "auth_token").read_text().strip()


def _get(url: str, token: str = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as e:  # not listening yet, or already gone
        return 0, str(e)


def _start(name, space, synth_root, synth_cache, tmp_path, *extra):
    out = open(tmp_path / f"{name}.out", "w")
    cmd = [sys.executable, "-m", "asl_ray.search", "--space", str(space), "--data", str(synth_root),
           "--cache-dir", str(synth_cache.path.parent), "--storage-path", str(tmp_path / "runs"), "--name", name,
           *extra]
    return subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, text=True), tmp_path / f"{name}.out"


def _launched(trials: Path) -> set:
    df = pd.read_parquet(trials)
    return set(df.loc[~df["status"].isin(["rejected", "no_plan"]), "trial_id"])


def test_two_searches_at_once_and_the_train_page(synth_root, synth_cache, tmp_path):
    space = write_search_space(tmp_path / "space.yaml", trials=1, epochs=1, grace_period=1, max_steps_per_epoch=3)
    port_a, port_b = _free_port(), _free_port()
    assert port_a != port_b
    a, a_log = _start("watched", space, synth_root, synth_cache, tmp_path, "--dashboard", "--dashboard-port",
                      str(port_a))
    b, b_log = _start("other", space, synth_root, synth_cache, tmp_path, "--dashboard-port", str(port_b))
    url, seen, unauthorized, root_page = None, {}, set(), None
    deadline = time.monotonic() + 600
    try:
        while a.poll() is None and time.monotonic() < deadline:
            if url is None:
                m = re.search(r"^Ray dashboard: (http://\S+)$", a_log.read_text(), re.M)
                url = m.group(1).rstrip("/") if m else None
            if url is not None:
                if root_page is None:
                    status, _ = _get(url + "/", _token())
                    root_page = status if status == 200 else None
                status, body = _get(url + TRAIN_RUNS_API, _token())
                if status == 200:
                    seen.update({run["name"]: run["status"] for run in json.loads(body)["train_runs"]})
                status, _ = _get(url + TRAIN_RUNS_API)
                if status:  # 0: the dashboard is not up yet or already gone
                    unauthorized.add(status)
            time.sleep(0.5)
        rc_a, rc_b = a.wait(timeout=max(1, deadline - time.monotonic())), b.wait(timeout=600)
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
    log_a, log_b = a_log.read_text(), b_log.read_text()
    assert rc_a == 0 and rc_b == 0, log_a[-3000:] + "\n----\n" + log_b[-3000:]
    assert "multiple active Ray instances" not in log_a + log_b
    assert url == f"http://127.0.0.1:{port_a}", log_a[:2000]
    assert root_page == 200  # the printed URL answers (with the token)
    assert unauthorized == {401}, unauthorized  # the API without the token: refused, every time
    trial_ids, other_ids = (_launched(tmp_path / "runs" / name / "trials.parquet") for name in ("watched", "other"))
    assert len(trial_ids) == 1 and len(other_ids) == 1
    # Its own trial's TorchTrainer run, seen while the search ran; none of the other search's.
    assert set(seen) == {f"trial-{t}" for t in trial_ids}, seen
    assert "RUNNING" in seen.values() or "FINISHED" in seen.values(), seen
