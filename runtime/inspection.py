"""Describe an artifact (manifest + format metadata) as plain data for `edge-run inspect`."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .backends import artifact_format

# vocabulary-sized arrays: counted, not listed
VOCAB_ARRAYS = frozenset({"tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
                          "tokenizer.ggml.merges"})


def gguf_metadata(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from .gguf_header import SkippedArray, read_gguf_header

    header = read_gguf_header(path, max_items=None, skip_keys=VOCAB_ARRAYS)
    meta = {key: f"[{len(value)} entries]" if isinstance(value, SkippedArray) else value
            for key, value in header.fields.items()}
    tensors = [{"name": t.name, "type": t.type_name, "shape": list(t.shape), "n_bytes": t.n_bytes}
               for t in header.tensors]
    return meta, tensors


def describe_artifact(path: Path, with_tensors: bool = False) -> dict[str, Any]:
    from .integrity import verify_artifact

    path = Path(path)
    manifest = verify_artifact(path)  # a file that does not match its manifest is described by neither
    fmt = artifact_format(path)
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
