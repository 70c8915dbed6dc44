"""Artifact integrity: an artifact must match its manifest before it is loaded.

The size is checked on every load (free). The sha256 is checked on first use and remembered in
``cache_dir()/verified.json`` keyed by the file's path, size and mtime, so later loads cost nothing
until the file changes.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from .errors import IntegrityError
from .fsutil import atomic_write_text, cache_dir, sha256_file
from .manifest import Manifest, read_manifest


def _payload(artifact: Path, manifest: Manifest) -> tuple[Path, int]:
    """The file whose digest the manifest records, and the size it records for the whole artifact."""
    if artifact.is_dir():
        return artifact / f"{manifest.artifact}.data" if (artifact / f"{manifest.artifact}.data").exists() \
            else artifact / manifest.artifact, manifest.file_size
    return artifact, manifest.file_size


def artifact_size(artifact: Path) -> int:
    if artifact.is_dir():
        return sum(p.stat().st_size for p in artifact.iterdir() if p.is_file() and p.name != "manifest.json")
    return artifact.stat().st_size


def _verified_db() -> Path:
    return cache_dir() / "verified.json"


def _load_db() -> dict[str, dict[str, object]]:
    try:
        data = json.loads(_verified_db().read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def verify_artifact(artifact: Path, full: bool | None = None) -> Manifest | None:
    """Check ``artifact`` against its manifest; None when it has no manifest (nothing to check)."""
    artifact = Path(artifact)
    manifest = read_manifest(artifact)
    if manifest is None:
        return None
    size = artifact_size(artifact)
    if size != manifest.file_size:
        raise IntegrityError(f"{artifact.name} is {size} bytes but its manifest says {manifest.file_size}",
                             "the file is truncated or was replaced: re-convert it")
    payload, _ = _payload(artifact, manifest)
    stat = payload.stat()
    key = str(payload.resolve())
    stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": manifest.sha256}
    db = _load_db()
    if full is False or (full is None and db.get(key) == stamp):
        return manifest
    digest = sha256_file(payload)
    if digest != manifest.sha256:
        raise IntegrityError(f"{artifact.name} does not match its manifest (sha256 {digest[:12]}... "
                             f"!= {manifest.sha256[:12]}...)", "the file is corrupt: re-convert it")
    db[key] = stamp
    with contextlib.suppress(OSError):  # the cache is an optimisation; a read-only home is fine
        atomic_write_text(_verified_db(), json.dumps(db, indent=1), force=True)
    return manifest
