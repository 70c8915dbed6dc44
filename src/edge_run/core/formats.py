"""Artifact formats, the bottom half of their registry: one row per format holding what the file system alone
can tell (no backend, no converter imported). The runtime half of each row (backend, memory estimator,
inspect) is in src/edge_run/runtime/artifacts/formats.py, looked up by the same name.

    row            detect(path, head)          payload(path)                 hashed(path, manifest)
    gguf           first 4 bytes b"GGUF"       the file                      the file: manifest.sha256
    onnx           folder holding model.onnx   every file in the folder      every file the manifest lists
                   (or a .onnx file)           but manifest.json             in extra.files

``head`` is the first HEAD_BYTES bytes of a regular file (b"" for a folder): detection opens a file once,
never a FIFO or a device. Rows are tried in registration order. payload() is what makes up the artifact on
disk: its size (one function, artifact_size, for the integrity check, bench and the estimators) and what a
backend maps. A manifest sits beside a file artifact and inside a folder artifact (src/edge_run/core/manifest.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_run.core.errors import ArtifactError, UsageError
from edge_run.core.manifest import MANIFEST_NAME, Manifest

HEAD_BYTES = 8
GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class ArtifactFormat:
    name: str  # `--format NAME`, manifest.format
    noun: str  # what an artifact of this format is, for messages: "a GGUF file"
    accepts: str  # what to pass, for hints: "a .gguf file"
    detect: Callable[[Path, bytes], bool]  # (path, first HEAD_BYTES bytes or b"" for a folder)
    payload: Callable[[Path], list[Path]]  # the files that make up the artifact (size, mapped bytes)
    hashed: Callable[[Path, Manifest], dict[Path, str]]  # file -> sha256 its manifest vouches for
    converter: str = ""  # "module:function" behind `edge-run convert --format NAME` (resolved by the CLI)


@dataclass(frozen=True)
class ConvertRequest:
    """What `edge-run convert` asks of a format's converter entry, ``fn(checkpoint, out, request, progress)``."""

    quant: str | None = None  # comma list; None: the format's default
    name: str | None = None  # artifact base name; None: the checkpoint folder's
    force: bool = False
    threads: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)  # format-specific: intermediate, block_size, ...


FORMATS: dict[str, ArtifactFormat] = {}


def register_format(row: ArtifactFormat) -> ArtifactFormat:
    if row.name in FORMATS:
        raise ValueError(f"artifact format {row.name!r} is registered twice")
    FORMATS[row.name] = row
    return row


def get_format(name: str) -> ArtifactFormat:
    """The row called ``name``; UsageError naming the known ones otherwise."""
    row = FORMATS.get(name)
    if row is None:
        raise UsageError(f"unknown format {name!r}", f"choose {' or '.join(f'--format {n}' for n in FORMATS)}")
    return row


def what_to_pass() -> str:
    """"a .gguf file or an ONNX artifact folder": every row's ``accepts``."""
    return " or ".join(row.accepts for row in FORMATS.values())


def _head(path: Path) -> bytes:
    if not path.is_file():  # a folder, or something no row reads (FIFO, device): never opened
        return b""
    with open(path, "rb") as f:
        return f.read(HEAD_BYTES)


def detect_format(path: Path) -> ArtifactFormat:
    """The row whose detect() accepts ``path``; ArtifactError naming every known format otherwise."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path} does not exist", f"pass the path of {what_to_pass()}")
    head = _head(path)
    for row in FORMATS.values():
        if row.detect(path, head):
            return row
    nouns = [row.noun for row in FORMATS.values()]
    what = f"neither {nouns[0]} nor {nouns[1]}" if len(nouns) == 2 else f"none of: {', '.join(nouns)}"
    raise ArtifactError(f"{path} is {what}", f"pass {what_to_pass()}")


def artifact_format(path: Path) -> str:
    """The name of the format ``path`` holds ('gguf', 'onnx', ...)."""
    return detect_format(path).name


def _row(path: Path, name: str | None) -> ArtifactFormat:
    """The row a manifest names (it says what the bytes should be, even when they are damaged), else detection."""
    return FORMATS[name] if name in FORMATS else detect_format(path)


def payload_files(path: Path, fmt: str | None = None) -> list[Path]:
    return _row(path, fmt).payload(Path(path))


def artifact_size(path: Path, fmt: str | None = None) -> int:
    """Bytes of everything that makes up the artifact (its manifest excluded): what manifest.file_size records."""
    return sum(p.stat().st_size for p in payload_files(path, fmt))


def hashed_files(path: Path, manifest: Manifest) -> dict[Path, str]:
    """{file: expected sha256} of everything the manifest vouches for."""
    return _row(path, manifest.format).hashed(Path(path), manifest)


# ------------------------------------------------------------------------------------------- the rows

def _gguf_detect(path: Path, head: bytes) -> bool:
    return head[:4] == GGUF_MAGIC


def _single_file(path: Path) -> list[Path]:
    return [path]


def _single_file_hash(path: Path, manifest: Manifest) -> dict[Path, str]:
    return {path: manifest.sha256}


ONNX_GRAPH = "model.onnx"


def _onnx_detect(path: Path, head: bytes) -> bool:
    return (path / ONNX_GRAPH).exists() if path.is_dir() else path.suffix == ".onnx"


def _folder(path: Path) -> Path:
    """An ONNX artifact is its folder; a .onnx file stands for the folder it is in."""
    return path if path.is_dir() else path.parent


def folder_payload(path: Path) -> list[Path]:
    """Every regular file of the artifact's folder but its manifest."""
    return sorted(p for p in _folder(path).iterdir() if p.is_file() and p.name != MANIFEST_NAME)


def folder_hashes(path: Path, manifest: Manifest) -> dict[Path, str]:
    """Every file the manifest lists in ``extra.files`` (older ONNX manifests: the external data file only)."""
    folder = _folder(path)
    files = manifest.extra.get("files")
    if isinstance(files, dict) and files:
        for name in files:
            if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
                raise ArtifactError(f"manifest of {folder.name} lists {name!r}, which is not a plain file name",
                                    "manifests may only name files in their own folder")
        return {folder / name: str(digest) for name, digest in files.items()}
    data = folder / f"{manifest.artifact}.data"
    return {data if data.exists() else folder / manifest.artifact: manifest.sha256}


GGUF = register_format(ArtifactFormat(
    name="gguf", noun="a GGUF file", accepts="a .gguf file", detect=_gguf_detect, payload=_single_file,
    hashed=_single_file_hash, converter="edge_run.converters.gguf.entry:convert_request"))
ONNX = register_format(ArtifactFormat(
    name="onnx", noun="an ONNX artifact", accepts="an ONNX artifact folder", detect=_onnx_detect,
    payload=folder_payload, hashed=folder_hashes, converter="edge_run.converters.onnx.entry:convert_request"))
