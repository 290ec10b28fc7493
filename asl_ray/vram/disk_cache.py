"""The VRAM estimator's disk cache: one JSON file of entries shared by every process on a machine (the search's
driver writes, its Train workers read), merged on write under a file lock and replaced atomically."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Optional

from filelock import FileLock

log = logging.getLogger(__name__)

MAX_ENTRIES = 4096
LOCK_TIMEOUT_S = 10.0  # a write takes milliseconds; past this, skip the write rather than stall an estimate


def cache_file() -> Path:
    """$ASL_RAY_CACHE_DIR, else $XDG_CACHE_HOME/asl_ray, else ~/.cache/asl_ray; file vram-estimates.json."""
    override = os.environ.get("ASL_RAY_CACHE_DIR")
    if override:
        root = Path(override)
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "asl_ray"
    return root / "vram-estimates.json"


def _read(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text())
        entries = data.get("entries", {}) if isinstance(data, dict) else {}
        return entries if isinstance(entries, dict) else {}
    except (OSError, ValueError):
        return {}  # missing or damaged: the cache only saves time


class DiskCache:
    """Entries keyed by strings that contain `version_tag`; entries of other versions are dropped on write."""

    def __init__(self, version_tag: str):
        self.version_tag = version_tag
        self._entries: Optional[dict[str, dict]] = None  # the file's entries, read once per process

    def get(self, key: str) -> Optional[dict]:
        if self._entries is None:
            self._entries = _read(cache_file())
        return self._entries.get(key)

    def forget(self) -> None:
        """Re-read the file on the next `get`."""
        self._entries = None

    def put(self, key: str, entry: dict) -> None:
        """Merge with what other processes wrote meanwhile, then replace the file atomically."""
        path = cache_file()
        if self._entries is None:
            self._entries = _read(path)
        self._entries[key] = entry
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Two searches on one machine write at once: without the lock, each reads the file, adds its key and
            # replaces the file, and the later replace drops the other's key. The atomic replace alone only
            # keeps readers (the Train workers, which do not lock) from seeing half a file.
            with FileLock(str(path.with_name(path.name + ".lock")), timeout=LOCK_TIMEOUT_S):
                entries = {k: v for k, v in _read(path).items() if self.version_tag in k}
                entries[key] = entry
                while len(entries) > MAX_ENTRIES:
                    entries.pop(next(iter(entries)))
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".vram-estimates.", suffix=".tmp")
                try:
                    with os.fdopen(fd, "w") as f:
                        json.dump({"format": 1, "entries": entries}, f, separators=(",", ":"))
                    os.replace(tmp, path)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                    raise
        except OSError as e:
            # A read-only home, or a lock held past LOCK_TIMEOUT_S (filelock.Timeout is an OSError), must not
            # break estimation: the in-memory cache still answers.
            log.debug("VRAM estimate cache not written to %s: %s", path, e)
