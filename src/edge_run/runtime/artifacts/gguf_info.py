"""`edge-run inspect` for GGUF files: header metadata and the tensor table, read without loading the weights."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

# vocabulary-sized arrays: counted, not listed
VOCAB_ARRAYS = frozenset({"tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
                          "tokenizer.ggml.merges"})


def gguf_metadata(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from edge_run.core.gguf_header import SkippedArray, read_gguf_header

    header = read_gguf_header(path, max_items=None, skip_keys=VOCAB_ARRAYS)
    meta = {key: f"[{len(value)} entries]" if isinstance(value, SkippedArray) else value
            for key, value in header.fields.items()}
    tensors = [{"name": t.name, "type": t.type_name, "shape": list(t.shape), "n_bytes": t.n_bytes}
               for t in header.tensors]
    return meta, tensors


def gguf_summary(path: Path, with_tensors: bool = False) -> dict[str, Any]:
    """The format sections of `edge-run inspect`: metadata, tensor types (and every tensor)."""
    meta, tensors = gguf_metadata(path)
    info: dict[str, Any] = {"metadata": meta, "tensor_types": dict(Counter(t["type"] for t in tensors))}
    if with_tensors:
        info["tensors"] = tensors
    return info
