"""Reader of a GISLR ("asl-signs") data root, in exactly the real Kaggle format.

Layout::

    train.csv                              path,participant_id,sequence_id,sign
    sign_to_prediction_index_map.json      {"TV": 0, "after": 1, ...}
    train_landmark_files/<participant_id>/<sequence_id>.parquet

Whole-file problems raise :class:`DataError`; per-row problems of ``train.csv``
are reported by :func:`find_row_problems` so a cache builder can skip and count them.
A ``path`` that resolves outside the data root (``..``, an absolute path, a symlink out) is one of
those problems, found before anything opens it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from asl_ray.config import UserInputError

LANDMARKS_PER_FRAME = 543
TYPE_ORDER = ("face", "left_hand", "pose", "right_hand")
TYPE_SIZES = {"face": 468, "left_hand": 21, "pose": 33, "right_hand": 21}
LANDMARK_COLUMNS = ("frame", "row_id", "type", "landmark_index", "x", "y", "z")
# row_id is redundant (frame + type + index), so the reader neither needs nor reads it.
REQUIRED_LANDMARK_COLUMNS = ("frame", "type", "landmark_index", "x", "y", "z")
LANDMARK_SCHEMA = pa.schema(
    [
        ("frame", pa.int16()),
        ("row_id", pa.string()),
        ("type", pa.string()),
        ("landmark_index", pa.int16()),
        ("x", pa.float64()),
        ("y", pa.float64()),
        ("z", pa.float64()),
    ]
)

TRAIN_CSV = "train.csv"
LABEL_MAP_JSON = "sign_to_prediction_index_map.json"
LANDMARK_DIR = "train_landmark_files"
TRAIN_COLUMNS = ("path", "participant_id", "sequence_id", "sign")

# Flat offset of each type inside one frame's 543 rows: face 0, left hand 468, pose 489, right hand 522.
TYPE_OFFSETS = dict(zip(TYPE_ORDER, np.cumsum([0] + [TYPE_SIZES[t] for t in TYPE_ORDER[:-1]]).tolist()))

# The order of one frame's rows, as (type code into TYPE_ORDER, landmark_index).
FRAME_TYPE_CODES = np.concatenate(
    [np.full(TYPE_SIZES[t], code, dtype=np.int8) for code, t in enumerate(TYPE_ORDER)]
)
FRAME_LANDMARK_INDEX = np.concatenate([np.arange(TYPE_SIZES[t], dtype=np.int16) for t in TYPE_ORDER])
assert len(FRAME_TYPE_CODES) == LANDMARKS_PER_FRAME


class DataError(UserInputError):
    """A data file (or key) that is not in the GISLR format; the message is one line."""

    def __init__(self, path: str | Path, reason: str, detail: str | None = None):
        self.path = str(path)
        self.reason = reason
        self.detail = " ".join((detail or reason.replace("_", " ")).split())
        super().__init__(f"{self.path}: {self.detail}")

    def __reduce__(self):
        # Keeps the attributes when the error crosses a process boundary.
        return (type(self), (self.path, self.reason, self.detail))


# ---------------------------------------------------------------- label map


def read_label_map(root: str | Path) -> dict[str, int]:
    """Read ``sign_to_prediction_index_map.json``: sign -> class index, values exactly 0..n-1."""
    path = Path(root) / LABEL_MAP_JSON
    if not path.is_file():
        raise DataError(path, "missing_file", "file not found")
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(path, "bad_label_map", f"not valid JSON ({err})") from err
    _check_label_map(path, mapping)
    return dict(mapping)


def _check_label_map(path: Path, mapping: object) -> None:
    if not isinstance(mapping, dict) or not mapping:
        raise DataError(path, "bad_label_map", "expected a non-empty JSON object of sign -> index")
    for sign, index in mapping.items():
        # bool is an int subclass; true/false are not indices.
        if not isinstance(index, int) or isinstance(index, bool):
            raise DataError(path, "bad_label_map", f"index of sign {sign!r} is not an integer: {index!r}")
    indices = sorted(mapping.values())
    if indices != list(range(len(mapping))):
        raise DataError(path, "bad_label_map", f"indices must be 0..{len(mapping) - 1}, each once")


# ---------------------------------------------------------------- train.csv


def read_train_csv(root: str | Path) -> pd.DataFrame:
    """Read ``train.csv`` with columns path (str), participant_id (int64), sequence_id (int64), sign (str).

    Raises DataError for a missing file, missing columns or non-integer ids; per-row problems
    are left to :func:`find_row_problems`.
    """
    path = Path(root) / TRAIN_CSV
    if not path.is_file():
        raise DataError(path, "missing_train_csv", "file not found")
    try:
        # Everything as text first: pandas would otherwise turn a sign such as "null" into NaN.
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError as err:
        raise DataError(path, "empty", "file is empty") from err
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataError(path, "bad_csv", f"cannot parse CSV ({err})") from err
    missing = [c for c in TRAIN_COLUMNS if c not in raw.columns]
    if missing:
        names = ", ".join(repr(c) for c in missing)
        raise DataError(path, "wrong_columns", f"missing column{'s' if len(missing) > 1 else ''} {names}")
    if raw.empty:
        raise DataError(path, "empty", "no rows")
    table = pd.DataFrame(
        {
            "path": raw["path"].astype(str),
            "participant_id": _integer_column(path, raw, "participant_id"),
            "sequence_id": _integer_column(path, raw, "sequence_id"),
            "sign": raw["sign"].astype(str),
        }
    )
    return table


def _integer_column(path: Path, raw: pd.DataFrame, column: str) -> pd.Series:
    text = raw[column].str.strip()
    ok = text.str.fullmatch(r"[+-]?\d+")
    if not ok.all():
        first = int(np.flatnonzero(~ok.to_numpy())[0])
        # +2: header line, 1-based lines.
        raise DataError(
            path, "bad_dtype", f"column {column!r} must be integer, line {first + 2} has {raw[column].iloc[first]!r}"
        )
    try:
        return text.astype(np.int64)
    except OverflowError as err:
        raise DataError(path, "bad_dtype", f"column {column!r} has a value outside int64") from err


def find_row_problems(df: pd.DataFrame, root: str | Path, label_map: dict[str, int]) -> pd.Series:
    """Per-row problem of a train.csv table: None, or a reason string whose code is the part before ':'.

    Reasons: ``"outside_root: ..."`` (the path resolves outside the data root; it is never opened),
    ``"duplicate_sequence_id"`` (every occurrence after the first), ``"unknown_sign: 'foo'"``,
    ``"missing_file"``. Only the first problem of a row is given.
    """
    resolver = RowPathResolver(root)
    duplicate = df["sequence_id"].duplicated(keep="first").to_numpy()
    known = df["sign"].isin(label_map.keys()).to_numpy()
    problems: list[str | None] = []
    for is_duplicate, is_known, sign, path in zip(duplicate, known, df["sign"], df["path"]):
        real, refused = resolver.resolve(path)
        if real is None:
            problems.append(refused)
        elif is_duplicate:
            problems.append("duplicate_sequence_id")
        elif not is_known:
            problems.append(f"unknown_sign: {sign!r}")
        elif not real.is_file():
            problems.append("missing_file")
        else:
            problems.append(None)
    return pd.Series(problems, index=df.index, dtype=object)


class RowPathResolver:
    """Resolves train.csv paths against the real data root, by name only (lstat/readlink, never open).

    A ``path`` whose real location (``..``, an absolute path and symlinks all followed) is not inside the
    real root is refused, so a system file, a FIFO or a device elsewhere is never read, never blocks the
    reader and is never counted as a damaged landmark file. Each directory is resolved once and a file
    costs one lstat, on strings (Path.resolve per row is about 3x slower over 94k rows).
    """

    def __init__(self, root: str | Path):
        self.real_root = Path(root).resolve()
        self._root = str(self.real_root)
        self._inside_prefix = os.path.join(self._root, "")
        self._real_dirs: dict[str, str] = {}

    def resolve(self, relative: str) -> tuple[Path | None, str | None]:
        """(real path, None), or (None, the problem: ``outside_root: ...`` or ``missing_file: ...``)."""
        if "\0" in relative:
            return None, f"missing_file: {relative!r} holds a NUL byte, which no file name can"
        path = os.path.join(self._root, relative)  # an absolute `relative` replaces the root
        try:
            folder, name = os.path.split(path)
            if name in ("", ".", ".."):
                real = os.path.realpath(path)
            else:
                real_folder = self._real_dirs.get(folder)
                if real_folder is None:
                    real_folder = self._real_dirs[folder] = os.path.realpath(folder)
                real = os.path.join(real_folder, name)
                if os.path.islink(real):
                    real = os.path.realpath(real)
        except OSError as err:  # realpath is not strict: even a symlink loop comes back as a (non-)file
            return None, f"missing_file: cannot resolve {relative!r} ({err})"
        if real != self._root and not real.startswith(self._inside_prefix):
            return None, f"outside_root: {relative!r} resolves to {real!r}, outside the data root {self._root!r}"
        return Path(real), None


def problem_code(problem: str | None) -> str | None:
    """The reason code of a :func:`find_row_problems` value (``"unknown_sign: 'x'"`` -> ``"unknown_sign"``)."""
    return None if problem is None else problem.split(":", 1)[0]


@dataclass(frozen=True, eq=False)
class DataRoot:
    """A loaded data root: its label map and its train.csv table (row problems not yet removed)."""

    root: Path
    label_map: dict[str, int]
    table: pd.DataFrame

    @classmethod
    def load(cls, root: str | Path) -> "DataRoot":
        root = Path(root)
        if not root.is_dir():
            raise DataError(root, "missing_file", "data root is not a directory")
        return cls(root=root, label_map=read_label_map(root), table=read_train_csv(root))

    @property
    def num_classes(self) -> int:
        return len(self.label_map)

    def row_problems(self) -> pd.Series:
        return find_row_problems(self.table, self.root, self.label_map)

    @cached_property
    def path_resolver(self) -> RowPathResolver:
        """Resolves this root's train.csv paths, each directory once for all rows."""
        return RowPathResolver(self.root)

    def landmark_path(self, relative: str) -> Path:
        """The real path of a train.csv ``path``; DataError if it resolves outside the data root."""
        real, refused = self.path_resolver.resolve(relative)
        if real is None:
            raise DataError(self.root / TRAIN_CSV, problem_code(refused), refused.split(": ", 1)[1])
        return real


# ---------------------------------------------------------------- landmark parquet


def read_landmarks(path: str | Path) -> np.ndarray:
    """Read one sequence's parquet as float32 ``(frames, 543, 3)``; NaN marks an undetected landmark."""
    path = Path(path)
    table = _read_landmark_table(path)
    rows = table.num_rows
    if rows == 0:
        raise DataError(path, "empty", "no rows")
    if rows % LANDMARKS_PER_FRAME:
        raise DataError(path, "rows_not_multiple_of_543", f"{rows} rows is not a multiple of {LANDMARKS_PER_FRAME}")
    frames = rows // LANDMARKS_PER_FRAME
    _check_landmark_order(path, table, frames)
    _check_frame_numbers(path, table, frames)
    xyz = np.empty((rows, 3), dtype=np.float32)
    for axis, name in enumerate("xyz"):
        # ChunkedArray.to_numpy turns arrow nulls of a float column into NaN.
        xyz[:, axis] = table.column(name).to_numpy()
    if np.isnan(xyz).all():
        raise DataError(path, "all_nan", "every landmark is NaN")
    return xyz.reshape(frames, LANDMARKS_PER_FRAME, 3)


def _read_landmark_table(path: Path) -> pa.Table:
    try:
        if path.stat().st_size == 0:
            raise DataError(path, "empty", "file has 0 bytes")
        # read_dictionary: the type column arrives as 4 strings + int codes, so checking it is cheap.
        parquet = pq.ParquetFile(path, read_dictionary=["type"])
        _check_landmark_schema(path, parquet.schema_arrow)
        return parquet.read(columns=list(REQUIRED_LANDMARK_COLUMNS), use_threads=False)
    except FileNotFoundError as err:
        raise DataError(path, "missing_file", "file not found") from err
    except (pa.ArrowException, OSError) as err:
        raise DataError(path, "truncated", f"unreadable parquet ({err})") from err


def _check_landmark_schema(path: Path, schema: pa.Schema) -> None:
    missing = [c for c in REQUIRED_LANDMARK_COLUMNS if schema.get_field_index(c) < 0]
    if missing:
        names = ", ".join(repr(c) for c in missing)
        raise DataError(path, "wrong_columns", f"missing column{'s' if len(missing) > 1 else ''} {names}")
    for name, wanted, accepts in (
        ("frame", "integer", pa.types.is_integer),
        ("landmark_index", "integer", pa.types.is_integer),
        ("x", "float", pa.types.is_floating),
        ("y", "float", pa.types.is_floating),
        ("z", "float", pa.types.is_floating),
        ("type", "string", _is_string_type),
    ):
        dtype = schema.field(name).type
        if not accepts(dtype):
            raise DataError(path, "bad_dtype", f"column {name!r} must be {wanted}, not {dtype}")


def _is_string_type(dtype: pa.DataType) -> bool:
    if pa.types.is_dictionary(dtype):
        dtype = dtype.value_type
    return pa.types.is_string(dtype) or pa.types.is_large_string(dtype)


def _check_landmark_order(path: Path, table: pa.Table, frames: int) -> None:
    index = table.column("landmark_index")
    types = _type_codes(table.column("type"))
    if index.null_count or types is None:
        raise DataError(path, "bad_landmark_order", "null or unknown value in 'type' or 'landmark_index'")
    index = index.to_numpy()
    frame_index = index.reshape(frames, LANDMARKS_PER_FRAME)
    frame_types = types.reshape(frames, LANDMARKS_PER_FRAME)
    bad = (frame_index != FRAME_LANDMARK_INDEX).any(axis=1) | (frame_types != FRAME_TYPE_CODES).any(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DataError(
            path,
            "bad_landmark_order",
            f"frame block {first} is not in the order face 0-467, left_hand 0-20, pose 0-32, right_hand 0-20",
        )


def _type_codes(column: pa.ChunkedArray) -> np.ndarray | None:
    """Codes into TYPE_ORDER for each row (-1 for an unknown type), or None if there are nulls."""
    if column.null_count:
        return None
    parts = []
    for chunk in column.chunks:
        if not pa.types.is_dictionary(chunk.type):
            chunk = chunk.dictionary_encode()
        lookup = np.array([TYPE_ORDER.index(v) if v in TYPE_ORDER else -1 for v in chunk.dictionary.to_pylist()])
        lookup = lookup.astype(np.int8) if len(lookup) else np.zeros(0, np.int8)
        parts.append(lookup[chunk.indices.to_numpy()])
    return np.concatenate(parts) if parts else np.zeros(0, np.int8)


def _check_frame_numbers(path: Path, table: pa.Table, frames: int) -> None:
    column = table.column("frame")
    if column.null_count:
        raise DataError(path, "bad_frame_order", "null value in 'frame'")
    frame = column.to_numpy().reshape(frames, LANDMARKS_PER_FRAME)
    if (frame != frame[:, :1]).any():
        raise DataError(path, "bad_frame_order", "the 543 rows of a frame do not share one frame number")
    if (np.diff(frame[:, 0].astype(np.int64)) <= 0).any():
        raise DataError(path, "bad_frame_order", "frame numbers are not strictly increasing")
