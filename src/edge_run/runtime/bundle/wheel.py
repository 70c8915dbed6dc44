"""Write a wheel (PEP 427 / binary distribution format) from files in memory or on disk.

    NAME-VERSION-PYTAG-ABITAG-PLATTAG.whl   a zip:
        <package files>
        NAME-VERSION.dist-info/METADATA     core metadata (PKG-INFO of the sdist, Version replaced)
        NAME-VERSION.dist-info/WHEEL        Wheel-Version, Generator, Root-Is-Purelib, Tag
        NAME-VERSION.dist-info/RECORD       path,sha256=<urlsafe b64 digest, no padding>,size per file;
                                            its own row has empty hash and size

Entries are written in sorted order with a fixed timestamp, so the same inputs give the same bytes.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import zipfile
from pathlib import Path

from edge_run.core.fsutil import atomic_path

FIXED_TIME = (2020, 1, 1, 0, 0, 0)


def record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def normalize_dist(name: str) -> str:
    """The distribution name as wheel file names spell it (PEP 427: runs of -_. become _)."""
    return re.sub(r"[-_.]+", "_", name)


def set_metadata_version(pkg_info: str, version: str) -> str:
    lines = pkg_info.splitlines()
    out = [f"Version: {version}" if line.startswith("Version:") else line for line in lines]
    return "\n".join(out) + "\n"


def write_wheel(out_dir: Path, name: str, version: str, tag: str, files: dict[str, bytes | Path],
                metadata: str, purelib: bool = False) -> Path:
    """Write ``files`` (archive name -> bytes or a file to read) plus dist-info into ``out_dir``; return it."""
    dist = normalize_dist(name)
    info = f"{dist}-{version}.dist-info"
    wheel_text = (f"Wheel-Version: 1.0\nGenerator: edge-run bundle\nRoot-Is-Purelib: {str(purelib).lower()}\n"
                  f"Tag: {tag}\n")
    contents: dict[str, bytes] = {}
    for arcname, src in files.items():
        contents[arcname] = src if isinstance(src, bytes) else Path(src).read_bytes()
    contents[f"{info}/METADATA"] = metadata.encode("utf-8")
    contents[f"{info}/WHEEL"] = wheel_text.encode("utf-8")
    record_name = f"{info}/RECORD"
    rows = [f"{n},{record_hash(d)},{len(d)}" for n, d in sorted(contents.items())] + [f"{record_name},,"]
    contents[record_name] = ("\n".join(rows) + "\n").encode("utf-8")
    dest = Path(out_dir) / f"{dist}-{version}-{tag}.whl"
    with atomic_path(dest, force=True) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for arcname in [*sorted(n for n in contents if n != record_name), record_name]:
            zi = zipfile.ZipInfo(arcname, FIXED_TIME)
            executable = arcname.endswith(".so") or ".so." in arcname
            zi.external_attr = ((0o755 if executable else 0o644) | 0o100000) << 16
            zi.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(zi, contents[arcname])
    os.chmod(dest, 0o644)
    return dest
