"""The artifact inside a bundle: exactly the files its manifest vouches for, each hashed while it is copied.

The artifact was verified against its manifest just before (runtime/artifacts/integrity.py, full rehash); the
copy is hashed again so that SHA256SUMS can only ever vouch for the bytes the manifest vouches for (a file
changed or damaged between the check and the copy is refused too). For an ONNX folder that is the manifest's
``extra.files`` and nothing else: no tarball, notes or .DS_Store that happen to sit in the folder. A GGUF without
a manifest (the picker accepts one) is its one file, with nothing to check it against.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from edge_run.core.errors import InputError, IntegrityError
from edge_run.core.formats import hashed_files
from edge_run.core.manifest import Manifest, manifest_path_for
from edge_run.core.quoting import check_text, display_text

CHUNK = 1 << 22


def bundle_name(artifact: Path) -> str:
    """The artifact's file name as it goes into install.sh, the unit and README: one line of UTF-8 text."""
    name = artifact.name
    if name in ("", ".", ".."):
        raise InputError(f"{display_text(str(artifact))} names no artifact file or folder",
                         "pass the path of the .gguf file or the ONNX folder itself")
    return check_text(name, "the artifact's file name", InputError, max_chars=200)


def vouched_files(artifact: Path, manifest: Manifest | None) -> dict[Path, str | None]:
    """{file: the sha256 its manifest gives} of everything to copy (None: a GGUF without manifest)."""
    if manifest is None:
        if not artifact.is_file():
            raise InputError(f"{display_text(str(artifact))} has no manifest", "convert it with `edge-run convert`")
        return {artifact: None}
    if artifact.is_dir() and not manifest.extra.get("files"):
        raise InputError(f"the manifest of {display_text(artifact.name)} lists no files (it was written by an older "
                         "edge-run), so the folder's other files cannot be checked",
                         "re-convert it with `edge-run convert` to bundle it")
    return dict(hashed_files(artifact, manifest))


def _copy_hashed(src: Path, dst: Path) -> str:
    h = hashlib.sha256()
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        while block := fin.read(CHUNK):
            h.update(block)
            fout.write(block)
    shutil.copystat(src, dst)
    return h.hexdigest()


def copy_artifact(artifact: Path, manifest: Manifest | None, models_dir: Path) -> None:
    """Copy what the manifest vouches for into ``models_dir`` (same layout), and the manifest without
    source.path (a path of the machine that made it)."""
    files = vouched_files(artifact, manifest)
    models_dir.mkdir()
    for src, expected in files.items():
        dst = models_dir / src.relative_to(artifact.parent)
        dst.parent.mkdir(parents=True, exist_ok=True)
        digest = _copy_hashed(src, dst)
        if expected is not None and digest != expected:
            raise IntegrityError(f"{display_text(src.name)} changed while it was copied into the bundle (sha256 "
                                 f"{digest[:12]}... != {expected[:12]}...)",
                                 "check the disk, then run `edge-run verify` on the artifact")
    if manifest is None:
        return
    manifest_src = manifest_path_for(artifact)
    data = json.loads(manifest_src.read_text(encoding="utf-8"))
    source = data.get("source")
    if isinstance(source, dict):
        source.pop("path", None)
    (models_dir / manifest_src.relative_to(artifact.parent)).write_text(
        json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
