"""Which artifact format a path holds, from the file system alone (no backend imported): a fact both the
runtime's backends and its checks (preflight, integrity, inspect) need, so it lives in the bottom layer."""

from __future__ import annotations

from pathlib import Path

from .errors import ArtifactError

GGUF_MAGIC = b"GGUF"


def artifact_format(path: Path) -> str:
    """'gguf' for a .gguf file, 'onnx' for a folder holding model.onnx (or a .onnx file)."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path} does not exist", "pass the path of a .gguf file or an ONNX artifact folder")
    if path.is_dir():
        if (path / "model.onnx").exists():
            return "onnx"
        raise ArtifactError(f"{path} is a folder without model.onnx",
                            "pass a .gguf file or an ONNX artifact folder made by `edge-run convert`")
    if path.suffix == ".onnx":
        return "onnx"
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == GGUF_MAGIC:
        return "gguf"
    raise ArtifactError(f"{path} is neither a GGUF file nor an ONNX artifact",
                        "pass a .gguf file or an ONNX artifact folder")
