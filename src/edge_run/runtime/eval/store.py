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
Anything under an entry's name that the store did not write is skipped the same way before it is opened for
reading: a FIFO (would block), a symlink (to /dev/zero, or a loop), a folder or device, a file over
MAX_ENTRY_BYTES; the JSON is parsed only when it nests at most MAX_NESTING deep, and its fields must have
their types (a file's name is a hash of its key, so anyone can forge a matching name).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import stat
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from edge_run.core.errors import ResourceError, UsageError
from edge_run.core.fsutil import cache_dir


class Evaluated(Protocol):
    """What the store reads of an eval result (src/edge_run/runtime/eval/perplexity.py EvalResult)."""

    @property
    def ctx(self) -> int: ...

    @property
    def chunks(self) -> int: ...

    @property
    def cache_type(self) -> str: ...

    @property
    def corpus(self) -> Any: ...

    def quality_entry(self) -> dict[str, Any]: ...

SCHEMA = 1
STALE_TEMP_S = 3600.0
# an entry is under 1 KiB (a dozen numbers, a corpus name, an artifact file name, at most a parent path)
MAX_ENTRY_BYTES = 64 * 1024
MAX_NESTING = 8  # an entry nests 2 deep
NUMBER = (int, float)
# entry fields other code reads, with their types; "finite": what the picker computes with
ENTRY_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "tokens_scored": (NUMBER, True), "bytes_scored": (NUMBER, True), "chunks": (NUMBER, True),
    "ctx": (NUMBER, True), "ppl": (NUMBER, False), "ppl_stderr": (NUMBER, False), "kld_vs_parent": (NUMBER, False),
    "top1_agreement": (NUMBER, False), "corpus": ((str,), False), "corpus_sha256": ((str,), False),
    "artifact": ((str,), False), "cache_type": ((str,), False), "parent": ((str,), False),
    "basis": ((str,), False), "flash_attn": ((bool,), False), "imatrix": ((bool,), False),
}


def finite_number(value: Any) -> bool:
    """An int or float (not a bool) that a float holds and that is finite."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond a float's range
        return False


def valid_bpb(value: Any) -> bool:
    return finite_number(value) and value >= 0


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
        if not os.path.lexists(path):
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
            text = read_entry_bytes(path).decode("utf-8")
            if (depth := nesting(text)) > MAX_NESTING:
                raise ValueError(f"JSON nested {depth} deep, an entry nests at most {MAX_NESTING}")
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("schema") != SCHEMA:
                raise ValueError(f"schema is not {SCHEMA}")
            key = _key(data["key"])
            entry = data["entry"]
            if not isinstance(entry, dict):
                raise ValueError("entry is not an object")
            if not valid_bpb(entry.get("bpb")):
                raise ValueError(f"bpb {_short(entry.get('bpb'))} is not a finite non-negative number")
            _check_fields(entry)
            if key.file_name() != path.name:
                raise ValueError("its key does not match its file name")
        except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, RecursionError) as e:
            why = (e.strerror if isinstance(e, OSError) and e.strerror else str(e)).replace("\n", " ")[:200]
            self.problems.append(f"ignored a corrupt quality store entry {path} ({why}): delete it; "
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


def read_entry_bytes(path: Path) -> bytes:
    """The bytes of an entry file; OSError unless it is a regular file (not a symlink) of at most
    MAX_ENTRY_BYTES. The type and size are checked before it is opened for reading and again on the open file,
    which is opened without following a symlink and without blocking (a FIFO swapped in between never hangs)."""
    st = os.lstat(path)
    _check_stat(st)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        _check_stat(os.fstat(fd))
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_ENTRY_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_ENTRY_BYTES:  # it grew after the check
        raise OSError(f"larger than {MAX_ENTRY_BYTES // 1024} KiB, more than an entry can be")
    return data


KINDS = ((stat.S_ISLNK, "a symlink"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a folder"),
         (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"))


def _check_stat(st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in KINDS if test(st.st_mode)), "something")
        raise OSError(f"{kind}, not a regular file the store wrote")
    if st.st_size > MAX_ENTRY_BYTES:
        raise OSError(f"{st.st_size} bytes, more than an entry can be ({MAX_ENTRY_BYTES // 1024} KiB)")


def nesting(text: str) -> int:
    """How deep JSON ``text`` nests arrays and objects (brackets inside strings do not count)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _key(raw: Any) -> StoreKey:
    if not isinstance(raw, dict):
        raise ValueError("key is not an object")
    key = StoreKey(**raw)
    for f in fields(StoreKey):
        want = int if f.type == "int" else str
        value = getattr(key, f.name)
        if not isinstance(value, want) or isinstance(value, bool):
            raise ValueError(f"key field {f.name} is {type(value).__name__}, not {want.__name__}")
    return key


def _check_fields(entry: dict[str, Any]) -> None:
    for name, (types, finite) in ENTRY_FIELDS.items():
        if name not in entry:
            continue
        value = entry[name]
        ok = isinstance(value, types) and (bool in types or not isinstance(value, bool))
        if not ok or (finite and not finite_number(value)):
            raise ValueError(f"entry field {name} is {_short(value)}")


def _short(value: Any) -> str:
    text = repr(value) if isinstance(value, (int, float, str, bool)) or value is None else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def record_eval(artifact: Path, result: Evaluated, store: QualityStore | None = None) -> bool:
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
