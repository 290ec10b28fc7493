import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from asl_ray.data.cache import cache_key, load_or_build_cache
from asl_ray.data.features import select_points, sequence_features
from asl_ray.data.gislr import DataError, DataRoot, read_landmarks
from asl_ray.data.synth import write_landmark_file, write_synthetic_root

REPO = Path(__file__).resolve().parents[1]
REAL_40 = REPO.parent / "shared" / "fixtures" / "gislr-real-40"

# A second process: says it is ready, waits for the go line on stdin, then opens (or builds) the cache.
BUILDER = """
import json, sys
from asl_ray.data.cache import load_or_build_cache
print("ready", flush=True)
sys.stdin.readline()
lines = []
cache = load_or_build_cache(sys.argv[1], sys.argv[2], progress=False, log=lines.append)
built = any("sequences read" in line for line in lines)
print(json.dumps({"path": str(cache.path), "built": built, "sequences": len(cache)}), flush=True)
"""

# A process that holds one file lock until its stdin closes.
LOCK_HOLDER = """
import sys
from filelock import FileLock
lock = FileLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
sys.stdin.read()
"""


def _copy_root(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".asl_ray_cache"))
    return dst


def _python(script: str, *args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)


@contextmanager
def lock_held_elsewhere(lock_file: Path):
    """Another process holds `lock_file`, as a builder on another host of the shared storage would."""
    holder = _python(LOCK_HOLDER, lock_file)
    try:
        assert holder.stdout.readline().strip() == "held", holder.stderr.read()
        yield
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    return write_synthetic_root(tmp_path_factory.mktemp("tiny") / "root", num_signs=2, num_signers=2,
                                per_sign_signer=3, seed=5, workers=1, progress=False)


def test_cache_holds_select_points_of_every_file(synth_root, synth_cache):
    table = pd.read_csv(synth_root / "train.csv")
    assert len(synth_cache) == len(table)
    assert synth_cache.summary.read == len(table) and not synth_cache.summary.skipped
    row = table.set_index("sequence_id").loc[int(synth_cache.sequence_ids[5])]
    expected = select_points(read_landmarks(synth_root / row["path"]))
    np.testing.assert_array_equal(synth_cache.sequence(5), expected)
    assert isinstance(synth_cache.points, np.memmap)


def test_second_open_reuses_the_cache(synth_root, synth_cache):
    again = load_or_build_cache(synth_root, synth_cache.path.parent, progress=False)
    assert again.path == synth_cache.path


def test_pickles_as_a_path_not_the_data(synth_cache):
    import pickle
    blob = pickle.dumps(synth_cache)
    assert len(blob) < 1000
    assert len(pickle.loads(blob)) == len(synth_cache)


def test_relative_data_root_gives_an_absolute_cache_path(synth_root, monkeypatch):
    # Regression: a relative path broke every Ray worker, whose working directory is not ours.
    monkeypatch.chdir(synth_root.parent)
    cache = load_or_build_cache(synth_root.name, progress=False)
    assert cache.path.is_absolute() and (cache.path / "manifest.json").exists()


def test_changed_root_gets_a_new_key(synth_root, tmp_path):
    root = _copy_root(synth_root, tmp_path / "root")
    before = cache_key(DataRoot.load(root))
    table = pd.read_csv(root / "train.csv")
    table.iloc[:-1].to_csv(root / "train.csv", index=False)
    assert cache_key(DataRoot.load(root)) != before


def test_killed_build_is_removed_not_read(tiny_root, tmp_path):
    cache_dir = tmp_path / "cache"
    key = cache_key(DataRoot.load(tiny_root))
    stale = [cache_dir / f"{key}.building", cache_dir / f"{key}.building-999999999",  # today's name, the old one
             cache_dir / f"{'0' * 20}.building"]  # another key's, whose lock nobody holds
    for partial in stale:
        partial.mkdir(parents=True)
        (partial / "points.f32").write_bytes(b"\0" * 100)
    cache = load_or_build_cache(tiny_root, cache_dir, progress=False, log=lambda *_: None)
    assert not any(p.exists() for p in stale)
    assert cache.summary.read == len(cache) == 12


def test_a_build_whose_lock_is_held_elsewhere_is_left_alone(tiny_root, tmp_path):
    # Regression: a partial build named by a PID that does not run here (another host's, on shared
    # storage) was deleted while that host was still writing it.
    cache_dir = tmp_path / "cache"
    other_key = "1" * 20
    partial = cache_dir / f"{other_key}.building-999999999"
    partial.mkdir(parents=True)
    (partial / "points.f32").write_bytes(b"\0" * 100)
    with lock_held_elsewhere(cache_dir / f"{other_key}.lock"):
        cache = load_or_build_cache(tiny_root, cache_dir, progress=False, log=lambda *_: None)
        assert (partial / "points.f32").read_bytes() == b"\0" * 100
    assert len(cache) == 12


def test_two_processes_building_one_cache_both_get_it_built_once(tiny_root, tmp_path):
    # Regression: the second to finish failed with ENOTEMPTY (or both built it).
    cache_dir = tmp_path / "cache"
    builders = [_python(BUILDER, tiny_root, cache_dir) for _ in range(2)]
    for b in builders:
        assert b.stdout.readline().strip() == "ready", b.stderr.read()
    for b in builders:  # both start at once
        b.stdin.write("go\n")
        b.stdin.flush()
    results = []
    for b in builders:
        out, err = b.communicate(timeout=300)
        assert b.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert results[0]["path"] == results[1]["path"]
    assert sorted(r["built"] for r in results) == [False, True]
    assert [r["sequences"] for r in results] == [12, 12]
    assert sorted(p.name for p in cache_dir.iterdir()) == sorted([Path(results[0]["path"]).name,
                                                                  Path(results[0]["path"]).name + ".lock"])
    again = load_or_build_cache(tiny_root, cache_dir, progress=False, log=lambda *_: None)
    assert str(again.path) == results[0]["path"] and again.summary.read == 12


def test_a_build_held_past_the_timeout_is_a_clear_error(tiny_root, tmp_path):
    cache_dir = tmp_path / "cache"
    lock_file = cache_dir / f"{cache_key(DataRoot.load(tiny_root))}.lock"
    cache_dir.mkdir()
    said = []
    with lock_held_elsewhere(lock_file), pytest.raises(DataError) as e:
        load_or_build_cache(tiny_root, cache_dir, progress=False, log=said.append, lock_timeout_s=0.5)
    assert e.value.reason == "cache_locked" and str(lock_file) in str(e.value) and "\n" not in str(e.value)
    assert len(said) == 1 and "waiting for another process" in said[0]
    assert [p.name for p in cache_dir.iterdir()] == [lock_file.name]  # nothing half-built left


def test_damaged_sequences_are_skipped_and_counted(synth_root, tmp_path):
    root = _copy_root(synth_root, tmp_path / "root")
    table = pd.read_csv(root / "train.csv")
    paths = [root / p for p in table["path"]]
    data = paths[0].read_bytes()
    paths[0].write_bytes(data[: len(data) // 2])  # truncated
    xyz = read_landmarks(paths[1])
    write_landmark_file(paths[1], np.full_like(xyz, np.nan), 10)  # all NaN
    os.remove(paths[2])  # missing file
    table.loc[3, "sign"] = "not-a-sign"  # unknown sign
    table.loc[4, "sequence_id"] = table.loc[5, "sequence_id"]  # duplicate
    table.to_csv(root / "train.csv", index=False)

    cache = load_or_build_cache(root, tmp_path / "cache", progress=False)
    assert cache.summary.skipped == {"truncated": 1, "all_nan": 1, "missing_file": 1, "unknown_sign": 1,
                                     "duplicate_sequence_id": 1}
    assert cache.summary.read == len(table) - 5
    assert "5 skipped" in cache.summary.line()

    with pytest.raises(DataError) as e:
        load_or_build_cache(root, tmp_path / "strict", strict=True, progress=False)
    assert "\n" not in str(e.value)


def test_rows_that_leave_the_root_are_skipped_as_outside_root(tiny_root, tmp_path):
    # Regression: such a row was opened; a system file was then counted as "truncated", a valid
    # parquet elsewhere was read into the cache.
    root = _copy_root(tiny_root, tmp_path / "root")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(root / pd.read_csv(root / "train.csv")["path"].iloc[0], outside / "valid.parquet")
    (outside / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "escape.parquet").symlink_to(outside / "valid.parquet")
    table = pd.read_csv(root / "train.csv")
    table.loc[0, "path"] = "../elsewhere/valid.parquet"
    table.loc[1, "path"] = str(outside / "passwd")
    table.loc[2, "path"] = "escape.parquet"
    table.loc[3, "path"] = "a\0b.parquet"  # no such name can exist (it used to crash the cache key)
    table.to_csv(root / "train.csv", index=False)

    cache = load_or_build_cache(root, tmp_path / "cache", progress=False, log=lambda *_: None)
    assert cache.summary.skipped == {"outside_root": 3, "missing_file": 1}
    assert cache.summary.read == len(table) - 4
    assert not set(table["sequence_id"].iloc[:4]) & set(cache.sequence_ids.tolist())

    with pytest.raises(DataError) as e:
        load_or_build_cache(root, tmp_path / "strict", strict=True, progress=False)
    assert e.value.reason == "outside_root"
    assert "train.csv: line 2 (../elsewhere/valid.parquet)" in str(e.value) and "\n" not in str(e.value)


def test_root_with_nothing_usable_is_an_error(synth_root, tmp_path):
    root = _copy_root(synth_root, tmp_path / "root")
    shutil.rmtree(root / "train_landmark_files")
    with pytest.raises(DataError, match="no usable sequence left"):
        load_or_build_cache(root, tmp_path / "cache", progress=False)


def test_real_fixture_loads_unchanged(tmp_path):
    from conftest import REAL_FIXTURE
    if not REAL_FIXTURE.exists():
        pytest.skip("shared/fixtures/gislr-real is not beside the repo")
    cache = load_or_build_cache(REAL_FIXTURE, tmp_path / "cache", progress=False)
    assert len(cache) == 1 and cache.num_classes == 250
    assert cache.label_map["brother"] == cache.labels[0]
    assert cache.sequence(0).shape == (7, 118, 2)


def test_all_40_real_sequences_are_cached_with_finite_features(tmp_path):
    if not (REAL_40 / "train.csv").is_file():
        pytest.skip(f"real fixtures not found at {REAL_40}")
    cache = load_or_build_cache(REAL_40, tmp_path / "cache", progress=False, log=lambda *_: None)
    assert cache.summary.rows == cache.summary.read == len(cache) == 40 and cache.summary.skipped == {}
    assert len(set(cache.labels.tolist())) == 40 and len(set(cache.participants.tolist())) == 15
    table = pd.read_csv(REAL_40 / "train.csv").set_index("sequence_id")
    for i, sequence_id in enumerate(cache.sequence_ids.tolist()):
        row = table.loc[sequence_id]
        assert cache.label_map[row["sign"]] == cache.labels[i] and row["participant_id"] == cache.participants[i]
        np.testing.assert_array_equal(cache.sequence(i), select_points(read_landmarks(REAL_40 / row["path"])))
        assert np.isfinite(sequence_features(cache.sequence(i))).all(), row["path"]
