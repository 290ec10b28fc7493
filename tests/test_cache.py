import os
import shutil

import numpy as np
import pandas as pd
import pytest

from asl_ray.data.cache import SequenceCache, cache_key, load_or_build_cache
from asl_ray.data.features import select_points
from asl_ray.data.gislr import DataError, DataRoot, read_landmarks
from asl_ray.data.synth import write_landmark_file


def _copy_root(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".asl_ray_cache"))
    return dst


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


def test_killed_build_is_removed_not_read(synth_root, tmp_path):
    cache_dir = tmp_path / "cache"
    stale = cache_dir / f"{cache_key(DataRoot.load(synth_root))}.building-999999999"
    stale.mkdir(parents=True)
    (stale / "points.f32").write_bytes(b"\0" * 100)
    cache = load_or_build_cache(synth_root, cache_dir, progress=False)
    assert not stale.exists()
    assert cache.summary.read == len(cache)


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
