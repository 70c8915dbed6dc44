"""Facts derived from a file, cached under edge-run's cache folder and keyed by the file's identity.

    <cache>/<name>.json = { "/resolved/path": {"stamp": {"size": S, "mtime_ns": T}, "value": <JSON>}, ... }

A fact is reused only while the file's size and modification time are unchanged; a new or rewritten file is
read again. The cache is an optimisation: unreadable, corrupt or read-only cache files count as empty, and at
most ``max_entries`` files are remembered (the oldest entries go first).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .fsutil import cache_dir, write_cache_text


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
    def _key(path: Path) -> tuple[str, dict[str, int]]:
        st = Path(path).stat()
        return str(Path(path).resolve()), {"size": st.st_size, "mtime_ns": st.st_mtime_ns}

    def get(self, path: Path) -> Any | None:
        """The value stored for ``path`` while the file is unchanged, else None (also when ``path`` cannot be
        looked at: the caller's own read reports that)."""
        try:
            key, stamp = self._key(path)
        except (OSError, RuntimeError):  # missing, unreadable, a symlink loop
            return None
        entry = self._load().get(key)
        if isinstance(entry, dict) and entry.get("stamp") == stamp:
            return entry.get("value")
        return None

    def put(self, path: Path, value: Any) -> None:
        try:
            key, stamp = self._key(path)
        except (OSError, RuntimeError):
            return
        db = self._load()
        db.pop(key, None)
        db[key] = {"stamp": stamp, "value": value}  # insertion order = age
        for old in list(db)[:-self.max_entries]:
            del db[old]
        write_cache_text(self.path, json.dumps(db, separators=(",", ":")))
