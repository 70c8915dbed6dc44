"""Artifact manifests: a JSON file beside every GGUF / ONNX artifact describing what it is.

    model.Q4_K_M.gguf
    model.Q4_K_M.gguf.manifest.json   <- manifest_path_for(artifact)

For ONNX the artifact is a folder (model.onnx + model.onnx.data + tokenizer.json + genai_config.json)
and its manifest is ``<folder>/manifest.json``.

Fields (schema version 1):
    schema, tool_version, created
    format            "gguf" | "onnx"
    artifact          file name relative to the manifest's folder (never a path outside it)
    source            {path, digest}: digest = sha256 over the checkpoint's config + weight headers
    architecture      HF architecture name, e.g. "LlamaForCausalLM"
    arch              registry key, e.g. "llama"
    parameter_count   number of weights (embeddings included)
    quant             quant type, e.g. "Q4_K_M", "F16", "int4-b32-sym"
    bits_per_weight   8 * (bytes of all weight tensors) / parameter_count
    file_size         bytes of the artifact (all files, for ONNX)
    sha256            sha256 of the artifact file (of model.onnx.data for ONNX)
    tokenizer         "gpt2" (byte-level BPE) | "llama" (SentencePiece) ...
    context_length    the model's trained context
    quality           optional: {"wikitext2": {...}} written by `edge-run eval`
    extra             optional, format-specific
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_run.core import __version__
from edge_run.core.errors import ArtifactError
from edge_run.core.fsutil import atomic_write_text, read_regular_file

SCHEMA_VERSION = 1
# JSON type of every field: a manifest is untrusted input, checked before anything uses a value
FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "format": str, "artifact": str, "source": dict, "architecture": str, "arch": str, "parameter_count": int,
    "quant": str, "bits_per_weight": (int, float), "file_size": int, "sha256": str, "tokenizer": str,
    "context_length": int, "quality": dict, "extra": dict, "tool_version": str, "schema": int, "created": str,
}


@dataclass
class Manifest:
    format: str
    artifact: str
    source: dict[str, str]
    architecture: str
    arch: str
    parameter_count: int
    quant: str
    bits_per_weight: float
    file_size: int
    sha256: str
    tokenizer: str
    context_length: int
    quality: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    tool_version: str = __version__
    schema: int = SCHEMA_VERSION
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))

    REQUIRED = (
        "format", "artifact", "source", "architecture", "arch", "parameter_count", "quant",
        "bits_per_weight", "file_size", "sha256", "tokenizer", "context_length",
    )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any], origin: str = "manifest") -> Manifest:
        if not isinstance(d, dict):
            raise ArtifactError(f"{origin} is not a JSON object", "re-create it with `edge-run convert`")
        missing = [k for k in cls.REQUIRED if k not in d]
        if missing:
            raise ArtifactError(f"{origin} lacks field(s) {', '.join(missing)}",
                                "re-create it with `edge-run convert`")
        known = {f for f in cls.__dataclass_fields__}
        art = d["artifact"]
        if not isinstance(art, str) or Path(art).name != art or art in ("", ".", "..") or "\x00" in art:
            raise ArtifactError(f"{origin} names artifact {art!r}, which is not a plain file name",
                                "manifests may only name a file in their own folder")
        wrong = [k for k, t in FIELD_TYPES.items() if k in d and (isinstance(d[k], bool) or not isinstance(d[k], t))]
        if wrong:
            raise ArtifactError(f"{origin} has field(s) of the wrong type: {', '.join(wrong)}",
                                "re-create it with `edge-run convert`")
        try:
            m = cls(**{k: v for k, v in d.items() if k in known})
        except TypeError as e:
            raise ArtifactError(f"{origin} is malformed: {e}") from e
        if not isinstance(m.file_size, int) or m.file_size < 0 or not isinstance(m.sha256, str):
            raise ArtifactError(f"{origin} has an invalid file_size or sha256")
        return m


MANIFEST_NAME = "manifest.json"  # inside a folder artifact


def manifest_path_for(artifact: Path) -> Path:
    """Every format's layout: a folder artifact holds its manifest, a file artifact has one beside it."""
    artifact = Path(artifact)
    if artifact.is_dir():
        return artifact / MANIFEST_NAME
    return artifact.with_name(artifact.name + ".manifest.json")


def write_manifest(artifact: Path, manifest: Manifest, force: bool = True) -> Path:
    path = manifest_path_for(artifact)
    atomic_write_text(path, manifest.to_json(), force=force)
    return path


def read_manifest(artifact: Path) -> Manifest | None:
    """The manifest beside ``artifact``, or None when there is none."""
    path = manifest_path_for(artifact)
    if not path.exists():
        return None
    raw = read_regular_file(path, "manifest", MAX_MANIFEST_BYTES, ArtifactError)
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_non_finite, parse_float=_finite_float)
    except _NonFinite as e:
        raise ArtifactError(f"manifest {path.name} holds a non-finite number ({e})",
                            "edit it or re-create it with `edge-run convert`") from e
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ArtifactError(f"manifest {path.name} is not valid JSON ({e})",
                            "re-create it with `edge-run convert`") from e
    return Manifest.from_dict(data, origin=f"manifest {path.name}")


MAX_MANIFEST_BYTES = 16 * 2**20  # a manifest is a few KB


class _NonFinite(ValueError):
    pass


def _non_finite(token: str) -> float:
    """json.loads accepts NaN and Infinity; a manifest must not (a NaN bpb sorts anywhere in a pick)."""
    raise _NonFinite(token)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999
        raise _NonFinite(text)
    return value


def update_manifest(artifact: Path, **changes: Any) -> Manifest:
    """Merge ``changes`` into the manifest (dict fields are merged one level deep) and rewrite it."""
    m = read_manifest(artifact)
    if m is None:
        raise ArtifactError(f"{artifact} has no manifest", "convert it with `edge-run convert` first")
    for k, v in changes.items():
        cur = getattr(m, k)
        if isinstance(cur, dict) and isinstance(v, dict):
            cur.update(v)
        else:
            setattr(m, k, v)
    write_manifest(artifact, m, force=True)
    return m
