"""Describe an artifact (manifest + its format's metadata) as plain data for `edge-run inspect`."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from edge_run.runtime.artifacts.formats import row_for
from edge_run.runtime.artifacts.gguf_info import VOCAB_ARRAYS, gguf_metadata

__all__ = ["VOCAB_ARRAYS", "describe_artifact", "gguf_metadata"]


def describe_artifact(path: Path, with_tensors: bool = False) -> dict[str, Any]:
    from edge_run.runtime.artifacts.integrity import verify_artifact

    path = Path(path)
    manifest = verify_artifact(path)  # a file that does not match its manifest is described by neither
    row = row_for(path)
    info: dict[str, Any] = {"path": str(path), "format": row.name,
                            "manifest": asdict(manifest) if manifest else None}
    info.update(row.inspect(path, with_tensors))  # the format's sections (metadata, tensor types, ...)
    return info
