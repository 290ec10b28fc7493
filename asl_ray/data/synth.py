"""A synthetic GISLR data root, in exactly the real layout and parquet schema.

This module writes it (landmark files, train.csv, label map, a pool of writer processes); the signs,
signers and landmark sequences come from the generative model in `asl_ray.data.synth_motion`.
"""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from asl_ray.data.gislr import (
    FRAME_LANDMARK_INDEX,
    FRAME_TYPE_CODES,
    LABEL_MAP_JSON,
    LANDMARK_DIR,
    LANDMARK_SCHEMA,
    LANDMARKS_PER_FRAME,
    TRAIN_COLUMNS,
    TRAIN_CSV,
    TYPE_ORDER,
)
from asl_ray.data.synth_motion import (
    MAX_FRAMES,
    MIN_FRAMES,
    SignerStyle,
    SignSpec,
    generate_sequence,
    make_sign_specs,
    make_signer_styles,
    sample_lengths,
)

# The real sign names, used when the shared fixtures sit beside the repository.
REAL_LABEL_MAP = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "gislr-real" / LABEL_MAP_JSON

_SPEC_STREAM, _SEQUENCE_STREAM = 0, 1


# ---------------------------------------------------------------- writing one landmark file


@lru_cache(maxsize=1)
def _row_suffixes() -> pa.Array:
    """The 543 per-frame row_id tails, "face-0" ... "right_hand-20"."""
    return pa.array([f"{TYPE_ORDER[c]}-{i}" for c, i in zip(FRAME_TYPE_CODES, FRAME_LANDMARK_INDEX)])


def landmark_table(xyz: np.ndarray, first_frame: int) -> pa.Table:
    """A (frames, 543, 3) array (NaN allowed) as a table with the real schema and row order."""
    xyz = np.asarray(xyz, dtype=np.float64)
    if xyz.ndim != 3 or xyz.shape[1:] != (LANDMARKS_PER_FRAME, 3):
        raise ValueError(f"xyz must have shape (frames, {LANDMARKS_PER_FRAME}, 3), got {xyz.shape}")
    frames = len(xyz)
    if not (-(2**15) <= first_frame and first_frame + frames - 1 < 2**15):
        raise ValueError(f"frame numbers {first_frame}..{first_frame + frames - 1} do not fit int16")
    frame_of_row = np.repeat(np.arange(frames, dtype=np.int32), LANDMARKS_PER_FRAME)
    slot_of_row = np.tile(np.arange(LANDMARKS_PER_FRAME, dtype=np.int32), frames)
    # Dictionary arrays decoded in C++: building millions of row_id strings in Python is the slow path.
    prefixes = pa.array([f"{first_frame + f}-" for f in range(frames)], type=pa.string())
    row_id = pc.binary_join_element_wise(
        pa.DictionaryArray.from_arrays(pa.array(frame_of_row), prefixes).dictionary_decode(),
        pa.DictionaryArray.from_arrays(pa.array(slot_of_row), _row_suffixes()).dictionary_decode(),
        "",
    )
    types = pa.DictionaryArray.from_arrays(
        pa.array(np.tile(FRAME_TYPE_CODES, frames)), pa.array(TYPE_ORDER)
    ).dictionary_decode()
    flat = xyz.reshape(-1, 3)
    columns = [
        pa.array((first_frame + frame_of_row).astype(np.int16)),
        row_id,
        types,
        pa.array(np.tile(FRAME_LANDMARK_INDEX, frames)),
        *(pa.array(np.ascontiguousarray(flat[:, axis])) for axis in range(3)),
    ]
    return pa.Table.from_arrays(columns, schema=LANDMARK_SCHEMA)


def write_landmark_file(path: str | Path, xyz: np.ndarray, first_frame: int) -> Path:
    """Write one sequence parquet exactly as the real files are (frames numbered from first_frame)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # No dictionary for row_id and x/y/z (all distinct values): halves the write time, same schema.
    pq.write_table(landmark_table(xyz, first_frame), path, use_dictionary=["frame", "type", "landmark_index"])
    return path


# ---------------------------------------------------------------- sign names


def choose_sign_names(rng: np.random.Generator, num_signs: int, names: Sequence[str] | None = None) -> list[str]:
    """num_signs names in ASCII order: from names, else the real map beside the repo, else sign000..."""
    if names is not None and len(set(names)) < num_signs:
        raise ValueError(f"{num_signs} signs asked for but only {len(set(names))} distinct names given")
    if names is None and REAL_LABEL_MAP.is_file():
        real = list(json.loads(REAL_LABEL_MAP.read_text(encoding="utf-8")))
        names = real if len(real) >= num_signs else None
    if names is not None:
        pool = sorted(set(names))
        return sorted(pool[i] for i in rng.choice(len(pool), num_signs, replace=False))
    width = max(3, len(str(num_signs - 1)))
    return [f"sign{i:0{width}d}" for i in range(num_signs)]


# ---------------------------------------------------------------- the whole data root


@dataclass(frozen=True)
class _Job:
    index: int
    path: str
    sign: int
    signer: int
    frames: int
    first_frame: int


_WORKER_STATE: dict = {}


def _init_worker(out: Path, seed: int, signs: list[SignSpec], signers: list[SignerStyle]) -> None:
    _WORKER_STATE.update(out=out, seed=seed, signs=signs, signers=signers)


def _write_jobs(jobs: list[_Job]) -> int:
    state = _WORKER_STATE
    for job in jobs:
        rng = np.random.default_rng([state["seed"], _SEQUENCE_STREAM, job.index])
        xyz = generate_sequence(state["signs"][job.sign], state["signers"][job.signer], job.frames, rng)
        write_landmark_file(state["out"] / job.path, xyz, job.first_frame)
    return len(jobs)


def _plan_jobs(rng, signs, signers, per_sign_signer, max_frames) -> list[_Job]:
    pairs = [(s, p) for s in range(len(signs)) for p in range(len(signers)) for _ in range(per_sign_signer)]
    count = len(pairs)
    sequence_ids = _unique_sequence_ids(rng, count)
    log_shift = np.array([signs[s].length_log_shift for s, _ in pairs])
    lengths = sample_lengths(rng, count, max_frames, log_shift)
    first_frames = rng.integers(1, 150, count)
    return [
        _Job(
            index=i,
            path=f"{LANDMARK_DIR}/{signers[p].participant_id}/{sequence_ids[i]}.parquet",
            sign=s,
            signer=p,
            frames=int(lengths[i]),
            first_frame=int(first_frames[i]),
        )
        for i, (s, p) in enumerate(pairs)
    ]


def _unique_sequence_ids(rng, count) -> np.ndarray:
    """Distinct ids in the real range (about 1e5 .. 2**32), order random."""
    ids = np.unique(rng.integers(85_000, 2**32 - 1, count + count // 10 + 16))
    while len(ids) < count:
        ids = np.unique(np.concatenate([ids, rng.integers(85_000, 2**32 - 1, count)]))
    return rng.permutation(ids)[:count]


def write_synthetic_root(
    out: str | Path,
    num_signs: int = 20,
    num_signers: int = 6,
    per_sign_signer: int = 10,
    seed: int = 0,
    max_frames: int = MAX_FRAMES,
    workers: int | None = None,
    sign_names: Sequence[str] | None = None,
    progress: bool = True,
) -> Path:
    """Write a synthetic data root (train.csv, label map, landmark files) to out; return out.

    ``num_signs * num_signers * per_sign_signer`` sequences; the same seed gives the same files.
    """
    for name, value in (("num_signs", num_signs), ("num_signers", num_signers), ("per_sign_signer", per_sign_signer)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if max_frames < MIN_FRAMES:
        raise ValueError(f"max_frames must be at least {MIN_FRAMES}, got {max_frames}")
    out = Path(out)
    spec_rng = np.random.default_rng([seed, _SPEC_STREAM])
    names = choose_sign_names(spec_rng, num_signs, sign_names)
    signs = make_sign_specs(spec_rng, names)
    signers = make_signer_styles(spec_rng, num_signers)
    jobs = _plan_jobs(spec_rng, signs, signers, per_sign_signer, max_frames)

    for signer in signers:
        (out / LANDMARK_DIR / str(signer.participant_id)).mkdir(parents=True, exist_ok=True)
    _run_jobs(jobs, out, seed, signs, signers, workers or default_workers(), progress)
    (out / LABEL_MAP_JSON).write_text(json.dumps({name: i for i, name in enumerate(names)}), encoding="utf-8")
    # train.csv last: a root without it is visibly unfinished.
    _train_table(jobs, signs, signers).to_csv(out / TRAIN_CSV, index=False)
    return out


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _run_jobs(jobs, out, seed, signs, signers, workers, progress) -> None:
    chunk = max(1, min(32, math.ceil(len(jobs) / (4 * workers))))
    chunks = [jobs[i:i + chunk] for i in range(0, len(jobs), chunk)]
    bar = tqdm(total=len(jobs), desc="synthetic sequences", unit="seq", disable=not progress)
    init_args = (out, seed, signs, signers)
    if workers == 1 or len(chunks) == 1:
        _init_worker(*init_args)
        for part in chunks:
            bar.update(_write_jobs(part))
    else:
        # spawn, not fork: forking a process that already runs pyarrow threads can deadlock.
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                                 initargs=init_args) as pool:
            for done in pool.map(_write_jobs, chunks):
                bar.update(done)
    bar.close()


def _train_table(jobs, signs, signers) -> pd.DataFrame:
    table = pd.DataFrame(
        {
            "path": [job.path for job in jobs],
            "participant_id": np.array([signers[job.signer].participant_id for job in jobs], dtype=np.int64),
            "sequence_id": np.array([int(Path(job.path).stem) for job in jobs], dtype=np.int64),
            "sign": [signs[job.sign].name for job in jobs],
        },
        columns=list(TRAIN_COLUMNS),
    )
    # The real train.csv is ordered by file name, i.e. by the sequence id as text.
    order = np.argsort(table["sequence_id"].astype(str).to_numpy(), kind="stable")
    return table.iloc[order].reset_index(drop=True)
