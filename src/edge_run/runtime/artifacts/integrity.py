"""Artifact integrity: an artifact must match its manifest before it is loaded.

What is hashed is the format row's ``hashed`` (src/edge_run/core/formats.py): a GGUF file whole; for an ONNX folder
every file
its manifest lists in ``extra.files`` (model.onnx, model.onnx.data, genai_config.json, the tokenizer files; older
manifests: model.onnx.data only). The size checked is that of the files the manifest vouches for: anything else
in an ONNX folder (.DS_Store, notes, a tarball) is not part of the artifact and changes nothing; a vouched file
missing, of another size or with other bytes fails (exit 5). Where the manifest vouches for only part of what
its file_size counts (older ONNX manifests), the size checked is the folder's payload, as when it was written.

When: the size is checked on every load (free). The sha256 is checked on first use and remembered in
``cache_dir()/verified.json`` (src/edge_run/core/stamp_cache.py), keyed by the file's path, size, mtime *and this
boot's id*
(/proc/sys/kernel/random/boot_id). Bit rot on an SD card or eMMC changes bytes without touching the mtime, so a
cache keyed by mtime alone would never notice it; rehashing on the first use after each reboot catches it at
the cost of one read of the file per boot (on an edge device a reboot is a power cycle, the moment flash
corruption shows up), while repeated runs within a boot stay free. ``edge-run verify ARTIFACT`` rehashes on
demand.
"""

from __future__ import annotations

import os
import stat as stat_module
from pathlib import Path

from edge_run.core.errors import ArtifactError, IntegrityError
from edge_run.core.formats import artifact_size, hashed_files, what_to_pass
from edge_run.core.fsutil import is_regular_or_folder, sha256_file
from edge_run.core.manifest import Manifest, read_manifest
from edge_run.core.stamp_cache import StampCache

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str:
    """This boot's random id (Linux); "" elsewhere, which keeps the cache valid across reboots there."""
    try:
        return BOOT_ID.read_text(encoding="ascii").strip()
    except OSError:
        return ""


def check_artifact_path(artifact: Path) -> None:
    """ArtifactError unless ``artifact`` is an existing regular file or folder (a FIFO named x.gguf would block
    the first read, a device would never end)."""
    try:
        odd = is_regular_or_folder(artifact)
    except FileNotFoundError as e:
        raise ArtifactError(f"{artifact} does not exist", f"pass the path of {what_to_pass()}") from e
    except OSError as e:  # a symlink loop, a permission problem
        raise ArtifactError(f"cannot read {artifact}: {e.strerror or e}", "check the path") from e
    if odd:
        raise ArtifactError(f"{artifact} is {odd}", f"pass {what_to_pass()}")


def payload_files(artifact: Path, manifest: Manifest) -> dict[str, str]:
    """{file path: expected sha256} of everything the manifest vouches for (the format's row says what)."""
    return {str(path): digest for path, digest in hashed_files(artifact, manifest).items()}


VERIFIED = StampCache("verified")  # file (path, size, mtime) -> {"sha256", "boot_id"} it was verified with


def verify_artifact(artifact: Path, full: bool | None = None) -> Manifest | None:
    """Check ``artifact`` against its manifest; None when it has no manifest (nothing to check).

    ``full``: True rehashes, False checks sizes only, None rehashes unless this boot already verified the file
    unchanged."""
    artifact = Path(artifact)
    check_artifact_path(artifact)
    manifest = read_manifest(artifact)
    if manifest is None:
        return None
    vouched = payload_files(artifact, manifest)
    stats = {path_s: _vouched_stat(artifact, Path(path_s)) for path_s in vouched}
    size = sum(st.st_size for st in stats.values())
    if size != manifest.file_size and (_legacy_size(artifact, manifest.format) != manifest.file_size):
        raise IntegrityError(f"{artifact.name} is {size} bytes but its manifest says {manifest.file_size}",
                             "the file is truncated or was replaced: re-convert it")
    boot = boot_id()
    for path_s, expected in vouched.items():
        path = Path(path_s)
        verified = {"sha256": expected, "boot_id": boot}
        if full is False or (full is None and VERIFIED.get(path) == verified):
            continue
        digest = sha256_file(path)
        if digest != expected:
            what = artifact.name if path == artifact else f"{path.name} in {artifact.name}"
            raise IntegrityError(f"{what} does not match its manifest (sha256 {digest[:12]}... "
                                 f"!= {expected[:12]}...)", "the file is corrupt: re-convert it")
        VERIFIED.put(path, verified)  # skipped when the cache is read-only
    return manifest


def _vouched_stat(artifact: Path, path: Path) -> os.stat_result:
    """The stat of a file the manifest vouches for; IntegrityError when it is missing or not a regular file."""
    try:
        st = path.stat()
    except FileNotFoundError as e:
        raise IntegrityError(f"{artifact.name} lacks {path.name}, which its manifest lists",
                             "the artifact is incomplete: re-convert it") from e
    except OSError as e:  # a symlink loop, no permission
        raise IntegrityError(f"cannot read {path.name} in {artifact.name}: {e.strerror or e}",
                             "the artifact was tampered with: re-convert it") from e
    if not stat_module.S_ISREG(st.st_mode):  # a FIFO would block the hash
        raise IntegrityError(f"{path.name} in {artifact.name} is not a regular file",
                             "the artifact was tampered with: re-convert it")
    return st


def _legacy_size(artifact: Path, fmt: str) -> int:
    """What a manifest that vouches for only part of the artifact counted: every payload file (-1 if unreadable)."""
    try:
        return artifact_size(artifact, fmt)
    except OSError:
        return -1
