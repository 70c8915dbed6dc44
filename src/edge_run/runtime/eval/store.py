"""A local store of measured quality, so nothing is measured twice (`edge-run eval`, `pick --measure`).

    <edge-run cache>/quality/v1/
      <sha256(checkpoint digest)[:24]>/          one folder per source checkpoint
        <sha256(key)[:32]>.json                  {"schema": 1, "key": {...}, "entry": {...}}
        .tmp-*                                   a write in progress (never read; stale ones are removed)

key   = checkpoint digest, quant type, imatrix ("" = none), corpus sha256, ctx, chunks, KV cache type
entry = the manifest's quality record (src/edge_run/runtime/eval/perplexity.py EvalResult.quality_entry): bpb, ppl,
tokens, bytes...

Each entry is one file written to a temp file in the same folder and renamed into place (os.replace is
atomic), so concurrent writers never interleave: the last complete write wins and readers see a whole
old or a whole new entry. A corrupt entry (bad JSON, wrong key, a non-finite or negative BPB) is
skipped and described in ``problems``; a BPB that is not a finite non-negative number is never stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_run.core.errors import ResourceError, UsageError
from edge_run.core.fsutil import cache_dir

if TYPE_CHECKING:
    from edge_run.runtime.eval.perplexity import EvalResult

SCHEMA = 1
STALE_TEMP_S = 3600.0


def valid_bpb(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


@dataclass(frozen=True)
class StoreKey:
    digest: str  # the source checkpoint's digest (manifest source.digest)
    quant: str
    imatrix: str  # "" without an importance matrix
    corpus_sha256: str
    ctx: int
    chunks: int
    cache_type: str = "f16"  # KV cache element type of the run

    def file_name(self) -> str:
        key = asdict(self)
        if self.cache_type == "f16":  # the name entries had before the cache type was part of the key
            del key["cache_type"]
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32] + ".json"


@dataclass(frozen=True)
class Stored:
    key: StoreKey
    entry: dict[str, Any]


@dataclass
class QualityStore:
    root: Path
    problems: list[str] = field(default_factory=list)  # corrupt entries met while reading, one line each

    @classmethod
    def default(cls) -> QualityStore:
        return cls(cache_dir() / "quality" / "v1")

    def _folder(self, digest: str) -> Path:
        return self.root / hashlib.sha256(digest.encode()).hexdigest()[:24]

    def put(self, key: StoreKey, entry: dict[str, Any]) -> Path:
        """Store ``entry`` under ``key`` (replacing an older measurement with the same key)."""
        if not valid_bpb(entry.get("bpb")):
            raise UsageError(f"refusing to store a BPB of {entry.get('bpb')!r} for {key.quant}",
                             "the measurement is broken: rerun it with EDGE_RUN_DEBUG=1 and report it")
        if not key.digest:
            raise UsageError("a quality entry needs the checkpoint digest of its artifact")
        folder = self._folder(key.digest)
        dest = folder / key.file_name()
        text = json.dumps({"schema": SCHEMA, "key": asdict(key), "entry": entry}, sort_keys=True) + "\n"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._remove_stale_temps(folder)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
            try:
                os.fchmod(fd, 0o644)  # mkstemp makes 0600; an entry is no secret
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(text)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, dest)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as e:
            raise ResourceError(f"cannot write the quality store at {folder}: {e.strerror or e}",
                                "free some disk space or set EDGE_RUN_CACHE to a writable folder") from e
        return dest

    def get(self, key: StoreKey) -> dict[str, Any] | None:
        """The entry stored under ``key``; None when absent or unusable (then ``problems`` says why)."""
        path = self._folder(key.digest) / key.file_name()
        if not path.is_file():
            return None
        got = self._read(path)
        return got.entry if got is not None and got.key == key else None

    def entries(self, digest: str) -> list[Stored]:
        """Every usable entry of one checkpoint (any quant, corpus, settings)."""
        folder = self._folder(digest)
        if not digest or not folder.is_dir():
            return []
        out = []
        try:
            paths = sorted(folder.glob("*.json"))
        except OSError as e:  # an unreadable cache folder: nothing measured, said once
            self.problems.append(f"cannot read the quality store at {folder} ({e.strerror or e}): "
                                 "fix its permissions or set EDGE_RUN_CACHE")
            return []
        for path in paths:
            if path.name.startswith("."):
                continue
            got = self._read(path)
            if got is not None and got.key.digest == digest:
                out.append(got)
        return out

    def _read(self, path: Path) -> Stored | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get("schema") != SCHEMA:
                raise ValueError(f"schema is not {SCHEMA}")
            key = StoreKey(**data["key"])
            entry = data["entry"]
            if not isinstance(entry, dict):
                raise ValueError("entry is not an object")
            if not valid_bpb(entry.get("bpb")):
                raise ValueError(f"bpb {entry.get('bpb')!r} is not a finite non-negative number")
            if key.file_name() != path.name:
                raise ValueError("its key does not match its file name")
        except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError) as e:
            self.problems.append(f"ignored a corrupt quality store entry {path} ({e}): delete it; "
                                 "the next `edge-run eval` or `pick --measure` measures it again")
            return None
        return Stored(key, entry)

    @staticmethod
    def _remove_stale_temps(folder: Path) -> None:
        now = time.time()
        for tmp in folder.glob(".tmp-*"):
            with contextlib.suppress(OSError):
                if now - tmp.stat().st_mtime > STALE_TEMP_S:
                    tmp.unlink()


def record_eval(artifact: Path, result: EvalResult, store: QualityStore | None = None) -> bool:
    """Feed an `edge-run eval` result into the store (keyed by the artifact's manifest); False when the
    artifact has no manifest (no checkpoint digest) or the BPB is not a finite non-negative number."""
    from edge_run.core.manifest import read_manifest

    m = read_manifest(artifact)
    entry = result.quality_entry()
    if m is None or not m.source.get("digest") or not valid_bpb(entry.get("bpb")):
        return False
    imatrix = "imatrix" if isinstance(m.extra, dict) and m.extra.get("imatrix") else ""
    key = StoreKey(m.source["digest"], m.quant.upper(), imatrix, result.corpus.sha256, result.ctx, result.chunks,
                   result.cache_type)
    (store or QualityStore.default()).put(key, {**entry, "artifact": Path(artifact).name})
    return True
