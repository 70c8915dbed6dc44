"""Inference backends behind one interface; the format of an artifact picks the backend."""

from __future__ import annotations

from pathlib import Path

from ..errors import ArtifactError
from .base import Backend, GenerationParams, GenerationResult, LoadOptions

__all__ = ["Backend", "GenerationParams", "GenerationResult", "LoadOptions", "artifact_format", "open_backend"]


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
    if magic == b"GGUF":
        return "gguf"
    raise ArtifactError(f"{path} is neither a GGUF file nor an ONNX artifact",
                        "pass a .gguf file or an ONNX artifact folder")


def open_backend(path: Path, options: LoadOptions | None = None) -> Backend:
    """Load the artifact with the backend for its format (registry lookup, no branching on callers' side)."""
    from . import registry

    fmt = artifact_format(path)
    return registry.BACKENDS[fmt](Path(path), options or LoadOptions())
