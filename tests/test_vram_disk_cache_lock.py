"""The VRAM estimator's disk cache keeps every process's entries when several processes write at once."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TAG = '"version":test'
PROCESSES = 4
KEYS_PER_PROCESS = 150

# Each writer waits for the go file so that all of them write at the same time. `_read` sleeps a little after
# reading, which widens the gap between a put's read and its replace: without a lock around read-merge-write,
# a writer that replaces the file in that gap has its entry dropped by the next replace.
WRITER = r"""
import sys, time
from pathlib import Path
from asl_ray.vram import disk_cache

name, n, go, tag = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
real_read = disk_cache._read
def slow_read(path):
    entries = real_read(path)
    time.sleep(0.002)
    return entries
disk_cache._read = slow_read

cache = disk_cache.DiskCache(tag)
while not go.exists():
    time.sleep(0.005)
for i in range(n):
    cache.put(f"{name}/{i}/{tag}", {"writer": name, "i": i})
assert "ray" not in sys.modules
"""


def test_concurrent_writers_lose_no_entries(tmp_path):
    cache_dir, go = tmp_path / "cache", tmp_path / "go"
    env = {**os.environ, "ASL_RAY_CACHE_DIR": str(cache_dir),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, f"w{p}", str(KEYS_PER_PROCESS), str(go), TAG],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for p in range(PROCESSES)]
    time.sleep(0.5)  # let the interpreters start and reach the wait
    go.touch()
    for w in writers:
        out, _ = w.communicate(timeout=120)
        assert w.returncode == 0, out

    entries = json.loads((cache_dir / "vram-estimates.json").read_text())["entries"]
    expected = {f"w{p}/{i}/{TAG}" for p in range(PROCESSES) for i in range(KEYS_PER_PROCESS)}
    missing = expected - entries.keys()
    assert not missing, f"{len(missing)} of {len(expected)} entries lost, e.g. {sorted(missing)[:5]}"
    assert all(entries[k] == {"writer": k.split("/")[0], "i": int(k.split("/")[1])} for k in expected)
    assert not list(cache_dir.glob(".vram-estimates.*.tmp"))  # every temp file was replaced or removed
