"""One-time preprocessing of a data root into a single memory-mapped cache.

Every parquet file is read once (in parallel), reduced to the 118 selected points (`select_points`), and
appended to one flat float32 file. Training and every Tune trial map that file; none of them ever opens
a parquet file. The cache directory's name is a key over the data's content (train.csv, the label map,
and each landmark file's path, size and mtime) and PREPROCESS_VERSION, so a changed root or a changed
preprocessing rebuilds it. It is written under a temporary name and renamed when complete, so a build
that was killed is never read.

Builds are serialised by a file lock per key in the cache directory (``<key>.lock``, a real flock, released
when its holder dies: by the kernel here, by the server's lock recovery for another NFS client): a second process waits,
then opens the complete cache instead of building it again. A partial build is deleted only by a
process holding its key's lock, so a build running anywhere else on shared storage is never touched.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from filelock import FileLock, Timeout

from asl_ray.data.features import NUM_POINTS, select_points
from asl_ray.data.gislr import DataError, DataRoot, problem_code, read_landmarks

PREPROCESS_VERSION = 1  # bump when select_points or the cache layout changes
CACHE_DIRNAME = ".asl_ray_cache"
_MANIFEST = "manifest.json"
_BUILDING = ".building"  # <key>.building: the one partial build of a key, written under <key>.lock
# How long a second process waits for another's build of the same cache: longer than building the full
# 94k-sequence set takes on a slow shared disk.
LOCK_TIMEOUT_S = 6 * 3600.0


@dataclass
class CacheSummary:
    rows: int
    read: int
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def line(self) -> str:
        skipped = sum(self.skipped.values())
        why = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items()))
        return (f"{self.read} of {self.rows} sequences read, {skipped} skipped"
                + (f" ({why})" if why else "") + f" in {self.seconds:.1f}s")


class SequenceCache:
    """The preprocessed set: per-sequence raw (T, 118, 2) points, labels and participants, memory-mapped."""

    def __init__(self, path: Path):
        # Absolute: Ray workers and DataLoader workers reopen it from another working directory.
        self.path = Path(path).absolute()
        manifest = json.loads((self.path / _MANIFEST).read_text())
        self.manifest = manifest
        self.label_map: dict[str, int] = manifest["label_map"]
        self.summary = CacheSummary(**manifest["summary"])
        self.offsets = np.load(self.path / "offsets.npy")
        self.labels = np.load(self.path / "labels.npy")
        self.participants = np.load(self.path / "participants.npy")
        self.sequence_ids = np.load(self.path / "sequence_ids.npy")
        total = int(self.offsets[-1])
        self.points = np.memmap(self.path / "points.f32", dtype=np.float32, mode="r",
                                shape=(total, NUM_POINTS, 2)) if total else np.zeros((0, NUM_POINTS, 2), np.float32)

    @property
    def num_classes(self) -> int:
        return len(self.label_map)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.labels)

    def sequence(self, i: int) -> np.ndarray:
        return self.points[self.offsets[i]:self.offsets[i + 1]]

    # A memmap pickles as a full copy: DataLoader workers and Ray reopen the file instead.
    def __getstate__(self):
        return {"path": str(self.path)}

    def __setstate__(self, state):
        self.__init__(Path(state["path"]))


def cache_key(root: DataRoot) -> str:
    h = hashlib.sha256(f"asl_ray-cache-v{PREPROCESS_VERSION}".encode())
    h.update((root.root / "train.csv").read_bytes())
    h.update(json.dumps(root.label_map, sort_keys=True).encode())
    for rel in root.table["path"].astype(str):
        try:
            st = root.landmark_path(rel).stat()
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except DataError:  # refused by name (outside the root, unresolvable): never stat-ed
            h.update(f"{rel}\0refused\n".encode())
        except OSError:
            h.update(f"{rel}\0missing\n".encode())
    return h.hexdigest()[:20]


def default_cache_parent(data_root: Path) -> Path:
    """Beside the data if it is writable, else in the user's cache folder."""
    beside = Path(data_root) / CACHE_DIRNAME
    if os.access(data_root, os.W_OK) or (beside.exists() and os.access(beside, os.W_OK)):
        return beside
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "asl_ray"


def load_or_build_cache(data_root: str | Path, cache_dir: Optional[str | Path] = None, workers: Optional[int] = None,
                        strict: bool = False, progress: bool = True, log=print,
                        lock_timeout_s: float = LOCK_TIMEOUT_S) -> SequenceCache:
    """Open the cache for `data_root`, building it first if it is missing or stale.

    Another process building the same cache is waited for (at most `lock_timeout_s`), then its cache is used.
    """
    root = DataRoot.load(Path(data_root))
    parent = Path(cache_dir) if cache_dir else default_cache_parent(root.root)
    target = parent / cache_key(root)
    if (target / _MANIFEST).exists():
        return SequenceCache(target)
    parent.mkdir(parents=True, exist_ok=True)
    with _BuildLock(parent, target.name, lock_timeout_s, log):
        # Whoever held the lock before us may have just finished this very cache.
        if (target / _MANIFEST).exists():
            return SequenceCache(target)
        _remove_abandoned_builds(parent, target.name)
        # No manifest: not a cache (only a complete build is renamed to this name), and the lock is ours.
        shutil.rmtree(target, ignore_errors=True)
        tmp = parent / f"{target.name}{_BUILDING}"
        tmp.mkdir()
        try:
            summary = _build(root, tmp, workers, strict, progress)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log(f"cache: {summary.line()} -> {target}")
    return SequenceCache(target)


def _lock_path(parent: Path, key: str) -> Path:
    return parent / f"{key}.lock"


class _BuildLock:
    """The key's build lock: taken at once if free, else after saying who we wait for; a clear error on timeout."""

    def __init__(self, parent: Path, key: str, timeout_s: float, log):
        self.path = _lock_path(parent, key)
        self.lock = FileLock(self.path)
        self.timeout_s = timeout_s
        self.log = log

    def __enter__(self):
        try:
            self.lock.acquire(timeout=0)
            return self
        except Timeout:
            pass
        self.log(f"cache: waiting for another process building {self.path.with_suffix('')} (lock {self.path})")
        try:
            self.lock.acquire(timeout=self.timeout_s)
        except Timeout:
            raise DataError(self.path, "cache_locked",
                            f"another process has been building this cache for over {self.timeout_s:g} s; "
                            "wait for it to finish, or give --cache-dir another folder") from None
        return self

    def __exit__(self, *exc):
        self.lock.release()


def _remove_abandoned_builds(parent: Path, own_key: str) -> None:
    """Delete partial builds nobody is writing: ours (we hold its lock) and any other key's whose lock is free.

    A free lock proves its builder is gone (the kernel drops a dead holder's flock); a PID cannot, as
    the builder may run on another host of the shared storage. Older ``<key>.building-<pid>`` names too.
    """
    for partial in parent.glob(f"*{_BUILDING}*"):
        key = partial.name.split(_BUILDING, 1)[0]
        if key == own_key:
            shutil.rmtree(partial, ignore_errors=True)
            continue
        other = FileLock(_lock_path(parent, key))
        try:
            other.acquire(timeout=0)
        except Timeout:
            continue  # being built right now, here or elsewhere
        try:
            shutil.rmtree(partial, ignore_errors=True)
        finally:
            other.release()


def _load_points(path: str) -> tuple[Optional[np.ndarray], Optional[DataError]]:
    """Worker: one file -> (points, None) or (None, the DataError saying why it is unusable)."""
    try:
        pts = select_points(read_landmarks(path))
    except DataError as e:
        return None, e
    if len(pts) == 0:
        return None, DataError(path, "all_nan", "no selected landmark in any frame (all NaN or zero frames)")
    return pts, None


def _iter_loaded(paths: list[str], workers: int) -> Iterator[tuple[Optional[np.ndarray], Optional[DataError]]]:
    if workers <= 1 or len(paths) < 64:
        yield from map(_load_points, paths)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(_load_points, paths, chunksize=max(1, min(64, len(paths) // (workers * 8))))


def _build(root: DataRoot, out: Path, workers: Optional[int], strict: bool, progress: bool) -> CacheSummary:
    start = time.perf_counter()
    table = root.table
    problems = root.row_problems()
    skipped: Counter[str] = Counter()
    keep_rows = []
    for i, problem in enumerate(problems):
        if problem is None:
            keep_rows.append(i)
            continue
        if strict:
            # +2: the header line, 1-based lines (as read_train_csv counts them).
            raise DataError(root.root / "train.csv", problem_code(problem),
                            f"line {i + 2} ({table['path'].iloc[i]}): {problem}")
        skipped[problem_code(problem)] += 1

    # The resolved paths that were checked to lie inside the root, not the names in train.csv.
    paths = [str(root.landmark_path(table["path"].iloc[i])) for i in keep_rows]
    workers = workers or min(8, os.cpu_count() or 1)
    offsets, labels, participants, sequence_ids = [0], [], [], []
    bar = _progress(len(paths), progress)
    with open(out / "points.f32", "wb") as f:
        for row, (pts, error) in zip(keep_rows, _iter_loaded(paths, workers)):
            bar.update(1)
            if error is not None:
                if strict:
                    bar.close()
                    raise error
                skipped[error.reason] += 1
                continue
            f.write(np.ascontiguousarray(pts, dtype=np.float32).tobytes())
            offsets.append(offsets[-1] + len(pts))
            labels.append(root.label_map[table["sign"].iloc[row]])
            participants.append(int(table["participant_id"].iloc[row]))
            sequence_ids.append(int(table["sequence_id"].iloc[row]))
    bar.close()
    if not labels:
        why = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())) or "no rows"
        raise DataError(root.root, "nothing_usable", f"no usable sequence left ({why})")

    np.save(out / "offsets.npy", np.asarray(offsets, dtype=np.int64))
    np.save(out / "labels.npy", np.asarray(labels, dtype=np.int64))
    np.save(out / "participants.npy", np.asarray(participants, dtype=np.int64))
    np.save(out / "sequence_ids.npy", np.asarray(sequence_ids, dtype=np.int64))
    summary = CacheSummary(rows=len(table), read=len(labels), skipped=dict(skipped),
                           seconds=time.perf_counter() - start)
    manifest = {"version": PREPROCESS_VERSION, "data_root": str(root.root), "label_map": root.label_map,
                "summary": summary.__dict__}
    # The manifest is written last: its presence is what marks a cache complete.
    (out / _MANIFEST).write_text(json.dumps(manifest, indent=1))
    return summary


def _progress(total: int, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, desc="caching sequences", unit="seq", disable=not enabled or total < 64,
                file=sys.stderr, mininterval=1.0)
