"""The GISLR reader on the real fixture, on crafted files and on every kind of broken input."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from asl_ray.data.features import select_points, sequence_features
from asl_ray.data.gislr import (
    LANDMARK_COLUMNS,
    LANDMARKS_PER_FRAME,
    TYPE_ORDER,
    TYPE_SIZES,
    DataError,
    DataRoot,
    find_row_problems,
    problem_code,
    read_label_map,
    read_landmarks,
    read_train_csv,
)
from asl_ray.data.synth import landmark_table, write_landmark_file

REAL = Path(__file__).resolve().parents[2] / "shared/fixtures/gislr-real"
REAL_FILE = REAL / "train_landmark_files/2044/635217.parquet"
# 40 real sequences, one per sign, 15 participants (see its README).
REAL_40 = Path(__file__).resolve().parents[2] / "shared/fixtures/gislr-real-40"
REAL_40_ORIGINAL = "train_landmark_files/16069/10042041.parquet"  # "green", 105 frames, the original bytes

LEFT_HAND = slice(468, 489)
POSE = slice(489, 522)
RIGHT_HAND = slice(522, 543)


def needs_real():
    if not REAL_FILE.is_file():
        pytest.skip(f"real fixtures not found at {REAL}")


def needs_real_40():
    if not (REAL_40 / "train.csv").is_file():
        pytest.skip(f"real fixtures not found at {REAL_40}")


def random_xyz(frames: int, seed: int = 0) -> np.ndarray:
    xyz = np.random.default_rng(seed).random((frames, LANDMARKS_PER_FRAME, 3))
    xyz[:, LEFT_HAND] = np.nan
    return xyz


def write_root(root: Path, rows: list[tuple[str, int, int, str]], signs=("apple", "bird")) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "sign_to_prediction_index_map.json").write_text(json.dumps({s: i for i, s in enumerate(sorted(signs))}))
    table = pd.DataFrame(rows, columns=["path", "participant_id", "sequence_id", "sign"])
    table.to_csv(root / "train.csv", index=False)
    return root


def expect_error(reason: str, name: str, call, *args) -> DataError:
    with pytest.raises(DataError) as caught:
        call(*args)
    err = caught.value
    assert err.reason == reason, str(err)
    assert name in str(err) and name in err.path
    assert "\n" not in str(err)
    return err


# ---------------------------------------------------------------- constants and the real fixture


def test_constants_describe_one_frame():
    assert sum(TYPE_SIZES[t] for t in TYPE_ORDER) == LANDMARKS_PER_FRAME == 543
    assert LANDMARK_COLUMNS == ("frame", "row_id", "type", "landmark_index", "x", "y", "z")


def test_reads_the_real_file_unchanged():
    needs_real()
    xyz = read_landmarks(REAL_FILE)
    assert xyz.shape == (7, 543, 3) and xyz.dtype == np.float32
    assert np.isnan(xyz[:, LEFT_HAND]).all()
    assert not np.isnan(xyz[:, POSE]).any()
    table = pq.read_table(REAL_FILE).to_pandas()
    expected = table[["x", "y", "z"]].to_numpy(np.float32).reshape(7, 543, 3)
    np.testing.assert_array_equal(xyz, expected)


def test_loads_the_real_data_root():
    needs_real()
    root = DataRoot.load(REAL)
    assert root.num_classes == 250 and root.label_map["TV"] == 0
    assert list(root.label_map) == sorted(root.label_map)
    assert root.table["participant_id"].dtype == np.int64 and root.table["sequence_id"].dtype == np.int64
    assert root.table.iloc[0]["sign"] == "brother"
    assert root.row_problems().isna().all()
    assert read_landmarks(root.landmark_path(root.table.iloc[0]["path"])).shape[0] == 7


def test_reads_all_40_real_sequences_with_finite_features():
    needs_real_40()
    needs_real()  # its train_with_meta.parquet is the reference
    root = DataRoot.load(REAL_40)
    table = root.table
    assert len(table) == 40 and table["sign"].nunique() == 40 and table["participant_id"].nunique() == 15
    assert root.num_classes == 250 and set(table["sign"]) <= set(root.label_map)
    assert root.row_problems().isna().all()
    frames, x_range = {}, {}
    for rel in table["path"]:
        xyz = read_landmarks(root.landmark_path(rel))
        x_range[rel] = (np.nanmin(xyz[..., 0]), np.nanmax(xyz[..., 0]))
        rows = pq.ParquetFile(REAL_40 / rel).metadata.num_rows
        assert xyz.shape == (rows // LANDMARKS_PER_FRAME, 543, 3) and rows % LANDMARKS_PER_FRAME == 0, rel
        assert not np.isnan(xyz[:, POSE]).all(), rel  # the pose is seen in every real sequence
        points = select_points(xyz)
        assert len(points) > 0, rel
        features = sequence_features(points)
        assert features.shape == (len(points), 708) and np.isfinite(features).all(), rel
        frames[rel] = len(xyz)
    # Frame counts as the competition's own metadata gives them, where it has the sequence. (Its README
    # says "3 to 105 frames"; the files and this metadata agree on 6 to 105.)
    meta = pq.read_table(REAL / "train_with_meta.parquet", columns=["path", "frames", "x_min", "x_max"]).to_pandas()
    meta = meta[meta["path"].isin(list(frames)) & meta["frames"].notna()]
    assert len(meta) == 32  # the sequences the metadata covers
    for rel, n, x_min, x_max in meta.itertuples(index=False):
        assert frames[rel] == n, rel
        np.testing.assert_allclose(x_range[rel], (x_min, x_max), rtol=1e-6, err_msg=rel)
    assert min(frames.values()) == 6 and max(frames.values()) == frames[REAL_40_ORIGINAL] == 105


# ---------------------------------------------------------------- crafted good files


def test_round_trip_of_a_crafted_file(tmp_path):
    xyz = random_xyz(5)
    path = write_landmark_file(tmp_path / "a.parquet", xyz, first_frame=40)
    np.testing.assert_array_equal(read_landmarks(path), xyz.astype(np.float32))
    table = pq.read_table(path)
    assert table.column("frame").to_pylist()[:: LANDMARKS_PER_FRAME] == [40, 41, 42, 43, 44]
    assert table.column("row_id")[0].as_py() == "40-face-0"
    assert table.column("row_id")[-1].as_py() == "44-right_hand-20"


def test_accepts_other_integer_and_float_widths(tmp_path):
    table = landmark_table(random_xyz(2), first_frame=3)
    table = table.set_column(0, "frame", pc.cast(table.column("frame"), pa.int64()))
    table = table.set_column(4, "x", pc.cast(table.column("x"), pa.float32()))
    pq.write_table(table, tmp_path / "wide.parquet")
    assert read_landmarks(tmp_path / "wide.parquet").shape == (2, 543, 3)


def test_arrow_nulls_read_as_nan(tmp_path):
    table = landmark_table(random_xyz(1), first_frame=1)
    x = pa.array([None] + table.column("x").to_pylist()[1:], pa.float64())
    pq.write_table(table.set_column(4, "x", x), tmp_path / "nulls.parquet")
    assert np.isnan(read_landmarks(tmp_path / "nulls.parquet")[0, 0, 0])


# ---------------------------------------------------------------- broken landmark files


def test_missing_landmark_file(tmp_path):
    expect_error("missing_file", "nope.parquet", read_landmarks, tmp_path / "nope.parquet")


def test_missing_column(tmp_path):
    table = landmark_table(random_xyz(1), 1).drop_columns(["x"])
    pq.write_table(table, tmp_path / "nox.parquet")
    err = expect_error("wrong_columns", "nox.parquet", read_landmarks, tmp_path / "nox.parquet")
    assert str(err).endswith("missing column 'x'")


def test_string_x(tmp_path):
    table = landmark_table(random_xyz(1), 1)
    table = table.set_column(4, "x", pc.cast(table.column("x"), pa.string()))
    pq.write_table(table, tmp_path / "strx.parquet")
    err = expect_error("bad_dtype", "strx.parquet", read_landmarks, tmp_path / "strx.parquet")
    assert "'x'" in str(err)


def test_empty_file_with_zero_rows(tmp_path):
    write_landmark_file(tmp_path / "empty.parquet", np.zeros((0, 543, 3)), first_frame=1)
    expect_error("empty", "empty.parquet", read_landmarks, tmp_path / "empty.parquet")


def test_zero_byte_file(tmp_path):
    (tmp_path / "zero.parquet").write_bytes(b"")
    expect_error("empty", "zero.parquet", read_landmarks, tmp_path / "zero.parquet")


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.1])
def test_truncated_parquet(tmp_path, keep):
    good = write_landmark_file(tmp_path / "good.parquet", random_xyz(4), 1).read_bytes()
    (tmp_path / "cut.parquet").write_bytes(good[: int(len(good) * keep)])
    expect_error("truncated", "cut.parquet", read_landmarks, tmp_path / "cut.parquet")


def test_rows_not_a_multiple_of_543(tmp_path):
    table = landmark_table(random_xyz(2), 1)
    pq.write_table(table.slice(0, table.num_rows - 1), tmp_path / "short.parquet")
    err = expect_error("rows_not_multiple_of_543", "short.parquet", read_landmarks, tmp_path / "short.parquet")
    assert "1085" in str(err)


def test_swapped_rows_in_a_later_frame(tmp_path):
    table = landmark_table(random_xyz(3), 1)
    order = np.arange(table.num_rows)
    order[543 + 10], order[543 + 11] = order[543 + 11], order[543 + 10]
    pq.write_table(table.take(order), tmp_path / "swap.parquet")
    err = expect_error("bad_landmark_order", "swap.parquet", read_landmarks, tmp_path / "swap.parquet")
    assert "frame block 1" in str(err)


def test_hands_in_the_wrong_order(tmp_path):
    # Same landmark_index sequence, but left and right hand blocks labelled the other way round.
    table = landmark_table(random_xyz(1), 1)
    types = np.array(table.column("type").to_pylist(), dtype=object)
    types[RIGHT_HAND], types[LEFT_HAND] = "left_hand", "right_hand"
    pq.write_table(table.set_column(2, "type", pa.array(types.tolist())), tmp_path / "hands.parquet")
    expect_error("bad_landmark_order", "hands.parquet", read_landmarks, tmp_path / "hands.parquet")


def test_unknown_type_name(tmp_path):
    table = landmark_table(random_xyz(1), 1)
    types = table.column("type").to_pylist()
    types[0] = "Face"
    pq.write_table(table.set_column(2, "type", pa.array(types)), tmp_path / "type.parquet")
    expect_error("bad_landmark_order", "type.parquet", read_landmarks, tmp_path / "type.parquet")


def test_frames_out_of_order(tmp_path):
    table = landmark_table(random_xyz(2), 1)
    order = np.concatenate([np.arange(543, 1086), np.arange(543)])
    pq.write_table(table.take(order), tmp_path / "late.parquet")
    expect_error("bad_frame_order", "late.parquet", read_landmarks, tmp_path / "late.parquet")


def test_all_nan(tmp_path):
    write_landmark_file(tmp_path / "nan.parquet", np.full((2, 543, 3), np.nan), 1)
    expect_error("all_nan", "nan.parquet", read_landmarks, tmp_path / "nan.parquet")


# ---------------------------------------------------------------- train.csv and the label map


def test_missing_train_csv(tmp_path):
    err = expect_error("missing_train_csv", "train.csv", read_train_csv, tmp_path)
    assert str(err) == f"{tmp_path / 'train.csv'}: file not found"


def test_train_csv_missing_column(tmp_path):
    (tmp_path / "train.csv").write_text("path,participant_id,sequence_id\na.parquet,1,2\n")
    err = expect_error("wrong_columns", "train.csv", read_train_csv, tmp_path)
    assert str(err).endswith("train.csv: missing column 'sign'")


def test_train_csv_non_integer_id(tmp_path):
    (tmp_path / "train.csv").write_text("path,participant_id,sequence_id,sign\na.parquet,1,x2,bird\n")
    err = expect_error("bad_dtype", "train.csv", read_train_csv, tmp_path)
    assert "'sequence_id'" in str(err) and "line 2" in str(err)


def test_train_csv_header_only(tmp_path):
    (tmp_path / "train.csv").write_text("path,participant_id,sequence_id,sign\n")
    expect_error("empty", "train.csv", read_train_csv, tmp_path)


def test_sign_named_like_a_missing_value_stays_text(tmp_path):
    (tmp_path / "train.csv").write_text("path,participant_id,sequence_id,sign\na.parquet,1,2,null\n")
    assert read_train_csv(tmp_path)["sign"].tolist() == ["null"]


def test_row_problems_are_reported_not_raised(tmp_path):
    write_landmark_file(tmp_path / "train_landmark_files/1/10.parquet", random_xyz(2), 5)
    write_landmark_file(tmp_path / "train_landmark_files/1/11.parquet", random_xyz(2), 5)
    rows = [
        ("train_landmark_files/1/10.parquet", 1, 10, "apple"),
        ("train_landmark_files/1/11.parquet", 1, 11, "foo"),
        ("train_landmark_files/1/12.parquet", 1, 12, "bird"),
        ("train_landmark_files/1/10.parquet", 1, 10, "apple"),
    ]
    root = DataRoot.load(write_root(tmp_path, rows))
    problems = root.row_problems()
    assert problems.tolist() == [None, "unknown_sign: 'foo'", "missing_file", "duplicate_sequence_id"]
    assert [problem_code(p) for p in problems] == [None, "unknown_sign", "missing_file", "duplicate_sequence_id"]
    assert find_row_problems(root.table, root.root, root.label_map).equals(problems)


def test_paths_that_leave_the_root_are_refused_by_name(tmp_path):
    # Each outside target would read fine (a valid parquet) or as "truncated" (a system-like text file):
    # the reason outside_root says it was refused by its resolved name, not judged by its content.
    outside = tmp_path / "outside"
    write_landmark_file(outside / "valid.parquet", random_xyz(2), 5)
    (outside / "passwd").parent.mkdir(exist_ok=True)
    (outside / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    root = tmp_path / "root"
    inside = write_landmark_file(root / "train_landmark_files/1/10.parquet", random_xyz(2), 5)
    (root / "train_landmark_files/1/out.parquet").symlink_to(outside / "valid.parquet")
    (root / "train_landmark_files/1/in.parquet").symlink_to(inside)  # a symlink that stays inside is fine
    (root / "train_landmark_files/2").symlink_to(outside, target_is_directory=True)  # a directory out
    rows = [
        ("train_landmark_files/1/10.parquet", 1, 10, "apple"),
        ("../outside/valid.parquet", 1, 11, "apple"),
        (str(outside / "passwd"), 1, 12, "bird"),
        ("train_landmark_files/1/out.parquet", 1, 13, "bird"),
        ("train_landmark_files/../train_landmark_files/1/in.parquet", 1, 14, "bird"),
        ("train_landmark_files/2/valid.parquet", 1, 15, "bird"),
    ]
    data = DataRoot.load(write_root(root, rows))
    codes = [problem_code(p) for p in data.row_problems()]
    assert codes == [None, "outside_root", "outside_root", "outside_root", None, "outside_root"]
    assert str(outside / "valid.parquet") in data.row_problems()[3]  # names where the symlink leads
    assert data.landmark_path(rows[4][0]) == inside.resolve()
    err = expect_error("outside_root", "train.csv", data.landmark_path, rows[1][0])
    assert "../outside/valid.parquet" in str(err)


def test_a_symlink_loop_or_a_nul_byte_is_a_missing_file_not_a_crash(tmp_path):
    root = tmp_path / "root"
    (root / "train_landmark_files/1").mkdir(parents=True)
    (root / "train_landmark_files/1/a.parquet").symlink_to(root / "train_landmark_files/1/b.parquet")
    (root / "train_landmark_files/1/b.parquet").symlink_to(root / "train_landmark_files/1/a.parquet")
    rows = [("train_landmark_files/1/a.parquet", 1, 10, "apple"), ("train_landmark_files/1/\0.parquet", 1, 11, "apple")]
    data = DataRoot.load(write_root(root, rows))
    assert [problem_code(p) for p in data.row_problems()] == ["missing_file", "missing_file"]


def test_label_map_missing(tmp_path):
    expect_error("missing_file", "sign_to_prediction_index_map.json", read_label_map, tmp_path)


@pytest.mark.parametrize(
    "content",
    ['{"a": 0, "b": 2}', '{"a": 1, "b": 1}', '{"a": "0"}', "{}", "[1, 2]", '{"a": true}', "{not json"],
)
def test_bad_label_map(tmp_path, content):
    (tmp_path / "sign_to_prediction_index_map.json").write_text(content)
    expect_error("bad_label_map", "sign_to_prediction_index_map.json", read_label_map, tmp_path)


def test_data_error_is_a_value_error_that_pickles():
    err = DataError("data/x/train.csv", "wrong_columns", "missing column 'sign'")
    assert isinstance(err, ValueError)
    assert str(err) == "data/x/train.csv: missing column 'sign'"
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.path, copy.reason, str(copy)) == (err.path, err.reason, str(err))
