"""Describe an artifact (manifest + format metadata) as plain data for `edge-run inspect`."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .backends import artifact_format
from .manifest import read_manifest


def gguf_metadata(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from .preflight import read_gguf_header

    reader = read_gguf_header(path)
    meta: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        if key in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
                   "tokenizer.ggml.merges"):
            meta[key] = f"[{len(field.data)} entries]"
            continue
        try:
            meta[key] = field.contents()
        except (ValueError, IndexError):
            meta[key] = "?"
    tensors = [{"name": t.name, "type": t.tensor_type.name, "shape": [int(x) for x in t.shape],
                "n_bytes": int(t.n_bytes)} for t in reader.tensors]
    return meta, tensors


def describe_artifact(path: Path, with_tensors: bool = False) -> dict[str, Any]:
    path = Path(path)
    fmt = artifact_format(path)
    manifest = read_manifest(path)
    info: dict[str, Any] = {"path": str(path), "format": fmt,
                            "manifest": asdict(manifest) if manifest else None}
    if fmt == "gguf":
        meta, tensors = gguf_metadata(path)
        info["metadata"] = meta
        info["tensor_types"] = dict(Counter(t["type"] for t in tensors))
        if with_tensors:
            info["tensors"] = tensors
    else:
        from .onnx_info import onnx_summary  # provided by the ONNX backend

        info["metadata"] = onnx_summary(path)
    return info
