"""Facts derived from a file, cached under edge-run's cache folder and keyed by the file's identity.

    <cache>/<name>.json = { "/resolved/path": {"stamp": {"size": S, "mtime_ns": T}, "value": <JSON>}, ... }

A fact is reused only while the file's size and modification time are unchanged; a new or rewritten file is
read again. A fact about several files (an ONNX artifact folder's payload) is keyed by the folder and stamped
with each file's name, size and modification time. The cache is an optimisation: unreadable, corrupt or
read-only cache files count as empty, and at most ``max_entries`` entries are remembered (the oldest go first).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge_run.core.fsutil import cache_dir, write_cache_text


def files_stamp(files: Sequence[Path]) -> tuple[tuple[str, int, int], ...]:
    """(name, size, mtime_ns) of each file: what says that a set of files is unchanged (hashable, for in-process
    memos too)."""
    return tuple((f.name, (st := f.stat()).st_size, st.st_mtime_ns) for f in files)


class StampCache:
    def __init__(self, name: str, max_entries: int = 256) -> None:
        self.name = name
        self.max_entries = max_entries

    @property
    def path(self) -> Path:
        return cache_dir() / f"{self.name}.json"  # cache_dir() is read at each use: tests point it elsewhere

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return {}
        return data if isinstance(data, dict) else {}

    @staticmethod
    def _key(path: Path, files: Sequence[Path] | None) -> tuple[str, Any]:
        if files is None:
            st = Path(path).stat()
            return str(Path(path).resolve()), {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        return str(Path(path).resolve()), [list(s) for s in files_stamp(files)]  # as JSON gives it back

    def get(self, path: Path, files: Sequence[Path] | None = None) -> Any | None:
        """The value stored for ``path`` while the file (or each of ``files``) is unchanged, else None (also when
        a file cannot be looked at: the caller's own read reports that)."""
        try:
            key, stamp = self._key(path, files)
        except (OSError, RuntimeError):  # missing, unreadable, a symlink loop
            return None
        entry = self._load().get(key)
        if isinstance(entry, dict) and entry.get("stamp") == stamp:
            return entry.get("value")
        return None

    def put(self, path: Path, value: Any, files: Sequence[Path] | None = None) -> None:
        try:
            key, stamp = self._key(path, files)
        except (OSError, RuntimeError):
            return
        db = self._load()
        db.pop(key, None)
        db[key] = {"stamp": stamp, "value": value}  # insertion order = age
        for old in list(db)[:-self.max_entries]:
            del db[old]
        write_cache_text(self.path, json.dumps(db, separators=(",", ":")))
