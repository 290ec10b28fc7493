"""The synthetic data root: real layout and schema, realistic statistics, determinism, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from asl_ray.data import synth
from asl_ray.data.gislr import LANDMARK_SCHEMA, DataRoot, read_landmarks, read_train_csv
from asl_ray.data.synth import sample_lengths, write_synthetic_root
from asl_ray.synth import main

REAL = Path(__file__).resolve().parents[2] / "shared/fixtures/gislr-real"
REAL_FILE = REAL / "train_landmark_files/2044/635217.parquet"

LEFT_HAND = slice(468, 489)
POSE = slice(489, 522)
RIGHT_HAND = slice(522, 543)
SMALL = dict(num_signs=6, num_signers=3, per_sign_signer=3, workers=1, progress=False)


@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> Path:
    return write_synthetic_root(tmp_path_factory.mktemp("synth") / "root", seed=7, **SMALL)


@pytest.fixture(scope="module")
def small_sequences(small_root):
    table = read_train_csv(small_root)
    return table, [read_landmarks(small_root / path) for path in table["path"]]


def test_layout_and_train_csv(small_root):
    root = DataRoot.load(small_root)
    table = root.table
    assert len(table) == 6 * 3 * 3 and table["participant_id"].nunique() == 3
    assert table["sequence_id"].is_unique and (table["sequence_id"] > 10_000).all()
    assert root.row_problems().isna().all()
    expected = [f"train_landmark_files/{p}/{s}.parquet" for p, s in zip(table["participant_id"], table["sequence_id"])]
    assert table["path"].tolist() == expected
    raw = pd.read_csv(small_root / "train.csv")
    assert list(raw.columns) == ["path", "participant_id", "sequence_id", "sign"]
    assert raw["participant_id"].dtype == np.int64 and raw["sequence_id"].dtype == np.int64


def test_label_map_is_sorted_ascii_and_dense(small_root):
    mapping = json.loads((small_root / "sign_to_prediction_index_map.json").read_text())
    assert list(mapping) == sorted(mapping)
    assert list(mapping.values()) == list(range(6))
    assert set(read_train_csv(small_root)["sign"]) == set(mapping)


def test_real_sign_names_when_the_fixture_is_there(small_root):
    if not (REAL / "sign_to_prediction_index_map.json").is_file():
        pytest.skip("real fixtures not found")
    real = json.loads((REAL / "sign_to_prediction_index_map.json").read_text())
    assert set(json.loads((small_root / "sign_to_prediction_index_map.json").read_text())) <= set(real)


def test_generated_names_without_the_fixture(tmp_path, monkeypatch):
    monkeypatch.setattr(synth, "REAL_LABEL_MAP", tmp_path / "absent.json")
    root = write_synthetic_root(tmp_path / "r", num_signs=3, num_signers=1, per_sign_signer=1, workers=1,
                                progress=False)
    mapping = json.loads((root / "sign_to_prediction_index_map.json").read_text())
    assert mapping == {"sign000": 0, "sign001": 1, "sign002": 2}


def test_schema_equals_the_real_files(small_root):
    path = small_root / read_train_csv(small_root)["path"].iloc[0]
    schema = pq.read_schema(path)
    assert schema.equals(LANDMARK_SCHEMA, check_metadata=False)
    if REAL_FILE.is_file():
        assert schema.equals(pq.read_schema(REAL_FILE), check_metadata=False)


def test_row_layout_matches_the_real_file(small_root):
    if not REAL_FILE.is_file():
        pytest.skip("real fixtures not found")
    real = pq.read_table(REAL_FILE, columns=["type", "landmark_index"]).slice(0, 543)
    path = small_root / read_train_csv(small_root)["path"].iloc[0]
    ours = pq.read_table(path, columns=["frame", "row_id", "type", "landmark_index"])
    assert ours.select(["type", "landmark_index"]).slice(0, 543).equals(real)
    first = ours.column("frame")[0].as_py()
    assert ours.column("row_id")[544].as_py() == f"{first + 1}-face-1"


def test_frames_do_not_start_at_zero(small_root):
    table = read_train_csv(small_root)
    firsts = [pq.read_table(small_root / p, columns=["frame"]).column("frame")[0].as_py() for p in table["path"]]
    assert min(firsts) > 0 and len(set(firsts)) > 1


def test_hands_pose_and_values(small_sequences):
    table, sequences = small_sequences
    for xyz in sequences:
        left_absent, right_absent = np.isnan(xyz[:, LEFT_HAND]).all(), np.isnan(xyz[:, RIGHT_HAND]).all()
        assert not (left_absent and right_absent)
        assert not np.isnan(xyz[:, POSE]).any()
        # A hand is NaN as a whole (21 landmarks together), never landmark by landmark.
        for hand in (xyz[:, LEFT_HAND, 0], xyz[:, RIGHT_HAND, 0]):
            assert (np.isnan(hand).all(axis=1) | ~np.isnan(hand).any(axis=1)).all()
    face_xy = np.concatenate([xyz[:, :468, :2].reshape(-1, 2) for xyz in sequences])
    assert np.nanmin(face_xy) > 0 and np.nanmax(face_xy) < 1
    z = np.concatenate([xyz[:, :468, 2].ravel() for xyz in sequences])
    assert np.nanmax(np.abs(z)) < 0.5


def test_one_handed_signs_follow_the_signers_handedness(tmp_path):
    root = write_synthetic_root(tmp_path / "r", seed=3, num_signs=20, num_signers=4, per_sign_signer=1,
                                workers=1, progress=False)
    table = read_train_csv(root)
    absent = {"left": [], "right": []}
    for path, pid in zip(table["path"], table["participant_id"]):
        xyz = read_landmarks(root / path)
        absent["left"].append(np.isnan(xyz[:, LEFT_HAND]).all())
        absent["right"].append(np.isnan(xyz[:, RIGHT_HAND]).all())
    frame = pd.DataFrame({"pid": table["participant_id"], **absent})
    per_signer = frame.groupby("pid")[["left", "right"]].mean()
    # Each signer hides the same hand in (nearly) all sequences; both handednesses exist.
    assert ((per_signer.max(axis=1) >= 0.8) & (per_signer.min(axis=1) == 0)).all()
    assert (per_signer["left"] > 0.5).any() and (per_signer["right"] > 0.5).any()
    both_present = (~frame["left"] & ~frame["right"]).mean()
    assert 0 < both_present < 0.2


def test_length_distribution_matches_the_real_one():
    lengths = sample_lengths(np.random.default_rng(0), 10_000, max_frames=537)
    assert lengths.min() == 3 and lengths.max() <= 537
    assert 18 <= np.median(lengths) <= 24
    assert 65 <= np.percentile(lengths, 90) <= 90
    assert 10 <= np.percentile(lengths, 25) <= 14
    assert 30 <= lengths.mean() <= 40


def test_max_frames_clips(tmp_path):
    root = write_synthetic_root(tmp_path / "r", max_frames=8, num_signs=2, num_signers=2, per_sign_signer=4,
                                workers=1, progress=False)
    lengths = [len(read_landmarks(root / p)) for p in read_train_csv(root)["path"]]
    assert 3 <= min(lengths) and max(lengths) <= 8


def test_same_seed_same_data_in_one_or_two_processes(tmp_path, small_root, small_sequences):
    again = write_synthetic_root(tmp_path / "again", seed=7, **{**SMALL, "workers": 2})
    assert (again / "train.csv").read_bytes() == (small_root / "train.csv").read_bytes()
    table, sequences = small_sequences
    for path, xyz in zip(table["path"], sequences):
        np.testing.assert_array_equal(read_landmarks(again / path), xyz)


def test_other_seed_other_data(tmp_path, small_root):
    other = write_synthetic_root(tmp_path / "other", seed=8, **SMALL)
    assert (other / "train.csv").read_bytes() != (small_root / "train.csv").read_bytes()


def test_cli_writes_a_root(tmp_path, capsys):
    main(["--out", str(tmp_path / "cli"), "--signs", "2", "--signers", "2", "--per-sign-signer", "1",
          "--workers", "1", "--seed", "1"])
    assert len(DataRoot.load(tmp_path / "cli").table) == 4
    assert "wrote 4 sequences" in capsys.readouterr().out


@pytest.mark.parametrize(
    "flag, value",
    [("--signs", "0"), ("--signers", "-1"), ("--per-sign-signer", "x"), ("--max-frames", "2"), ("--workers", "0"),
     ("--seed", "-3")],
)
def test_cli_rejects_bad_values(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as caught:
        main(["--out", str(tmp_path / "x"), flag, value])
    assert caught.value.code == 2
    assert flag in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_requires_out(capsys):
    with pytest.raises(SystemExit) as caught:
        main([])
    assert caught.value.code == 2 and "--out" in capsys.readouterr().err
