"""Artifact formats, the runtime half of their registry: one row per format, looked up by the name its bottom
half (src/edge_run/core/formats.py: detect, payload files, size, integrity hashes, converter entry) gives a path.

    row    open (backend)                 estimate (peak RSS)             inspect               trained context
    gguf   backends/gguf.py (llama.cpp)   estimate.py (tensor table)      gguf_info.py          GGUF header
    onnx   backends/onnx.py (onnxruntime) estimate_onnx.py (genai dims)   onnx_info.py          genai_config.json

Adding a format is its modules plus one row here and one in src/edge_run/core/formats.py; every command (run, chat,
serve, bench, eval, inspect, verify, pick, bundle, convert) goes through the rows, none branches on a name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edge_run.core.errors import ArtifactError
from edge_run.core.formats import FORMATS, detect_format
from edge_run.runtime.backends.base import Backend, LoadOptions
from edge_run.runtime.estimate.gguf import MemoryEstimate, ModelShape, estimate_memory, host_simd, refuse_if_short


class Estimator(Protocol):
    """(artifact or None for a planned pairing, its shape if known, n_ctx, CPU SIMD features, KV cache type,
    load mode: auto | on | off, GGUF's use_mmap) -> the estimate."""

    def __call__(self, path: Path | None, shape: ModelShape | None, n_ctx: int, simd: tuple[str, ...],
                 cache_type: str, mmap: str = "auto") -> MemoryEstimate: ...


@dataclass(frozen=True)
class FormatRow:
    name: str  # the core row's name
    open: Callable[[Path, LoadOptions], Backend]
    estimate: Estimator
    inspect: Callable[[Path, bool], dict[str, Any]]  # (artifact, with_tensors) -> `inspect` sections
    trained_context: Callable[[Path], int | None]  # from the artifact itself (a manifest's value wins)
    chunk_scorer: Callable[[Backend], Any] | None = None  # eval: scores only a chunk's scored rows (or None)


ROWS: dict[str, FormatRow] = {}


def register_row(row: FormatRow) -> FormatRow:
    if row.name not in FORMATS:
        raise ValueError(f"format {row.name!r} has no row in src/edge_run/core/formats.py")
    if row.name in ROWS:
        raise ValueError(f"format {row.name!r} is registered twice")
    ROWS[row.name] = row
    return row


def get_row(name: str) -> FormatRow:
    row = ROWS.get(name)
    if row is None:
        raise ArtifactError(f"edge-run has no runtime for {name!r} artifacts", f"known formats: {', '.join(ROWS)}")
    return row


def row_for(artifact: Path) -> FormatRow:
    """The row of the format ``artifact`` holds (ArtifactError naming the known formats otherwise)."""
    return get_row(detect_format(Path(artifact)).name)


# ------------------------------------------------------------------------------ what commands call

def open_artifact(artifact: Path, options: LoadOptions) -> Backend:
    return row_for(artifact).open(Path(artifact), options)


def open_backend(path: Path, options: LoadOptions | None = None) -> Backend:
    """Load the artifact with the backend of its format's row (no integrity or memory check: that is
    src/edge_run/runtime/session.py's open_session)."""
    return open_artifact(Path(path), options or LoadOptions())


def estimate_artifact(artifact: Path, n_ctx: int, simd: tuple[str, ...] | None = None,
                      cache_type: str = "f16", mmap: str = "auto") -> MemoryEstimate:
    simd = host_simd() if simd is None else simd
    row = row_for(artifact)
    if mmap == "auto":  # a row's estimator takes the load mode only if its format has load modes
        return row.estimate(Path(artifact), None, n_ctx, simd, cache_type)
    return row.estimate(Path(artifact), None, n_ctx, simd, cache_type, mmap)


def check_memory(artifact: Path, n_ctx: int, available_mib: float | None = None,
                 cache_type: str = "f16", mmap: str = "auto") -> MemoryEstimate:
    """InsufficientMemoryError when the artifact's estimate at ``n_ctx`` exceeds the memory available now."""
    artifact = Path(artifact)
    est = estimate_artifact(artifact, n_ctx, cache_type=cache_type, mmap=mmap)
    return refuse_if_short(est, artifact.name, available_mib)


def trained_context(artifact: Path) -> int | None:
    """The context length the model was trained for: the manifest's, else the artifact's own (None if unknown)."""
    from edge_run.core.manifest import read_manifest

    artifact = Path(artifact)
    manifest = read_manifest(artifact)
    if manifest is not None and isinstance(manifest.context_length, int) and manifest.context_length > 0:
        return manifest.context_length
    return row_for(artifact).trained_context(artifact)


# ------------------------------------------------------------------------------------------- the rows

def _open_gguf(path: Path, options: LoadOptions) -> Backend:
    from edge_run.runtime.backends.gguf import GGUFBackend

    return GGUFBackend(path, options)


def _estimate_gguf(path: Path | None, shape: ModelShape | None, n_ctx: int, simd: tuple[str, ...],
                   cache_type: str, mmap: str = "auto") -> MemoryEstimate:
    from edge_run.runtime.estimate.gguf import shape_from_gguf

    if shape is None:
        if path is None:
            raise ArtifactError("a GGUF estimate needs the file or its tensor table")
        shape = shape_from_gguf(path)
    return estimate_memory(shape, n_ctx, simd, cache_type=cache_type, mmap=mmap)


def _inspect_gguf(path: Path, with_tensors: bool) -> dict[str, Any]:
    from edge_run.runtime.artifacts.gguf_info import gguf_summary

    return gguf_summary(path, with_tensors)


def _gguf_context(path: Path) -> int | None:
    from edge_run.runtime.backends.preflight import check_gguf

    n = check_gguf(path).get("context_length")
    return int(n) if isinstance(n, int) and n > 0 else None


def _gguf_scorer(backend: Backend) -> Any:
    from edge_run.runtime.backends.gguf_scorer import LlamaChunkLogits

    return LlamaChunkLogits.for_backend(backend)


def _open_onnx(path: Path, options: LoadOptions) -> Backend:
    from edge_run.runtime.backends.onnx import ONNXBackend

    return ONNXBackend(path, options)


def _estimate_onnx(path: Path | None, shape: ModelShape | None, n_ctx: int, simd: tuple[str, ...],
                   cache_type: str, mmap: str = "auto") -> MemoryEstimate:
    from edge_run.runtime.estimate.onnx import estimate_onnx

    if path is None:
        raise ArtifactError("an ONNX estimate needs the artifact folder", "convert the checkpoint first")
    return estimate_onnx(path, n_ctx)  # the cache is float32 whatever cache_type asks; onnxruntime has no mmap mode


def _inspect_onnx(path: Path, with_tensors: bool) -> dict[str, Any]:
    from edge_run.runtime.artifacts.onnx_info import onnx_summary

    return {"metadata": onnx_summary(path)}


def _onnx_context(path: Path) -> int | None:
    from edge_run.runtime.estimate.onnx import onnx_trained_context

    return onnx_trained_context(path)


register_row(FormatRow("gguf", open=_open_gguf, estimate=_estimate_gguf, inspect=_inspect_gguf,
                       trained_context=_gguf_context, chunk_scorer=_gguf_scorer))
register_row(FormatRow("onnx", open=_open_onnx, estimate=_estimate_onnx, inspect=_inspect_onnx,
                       trained_context=_onnx_context))
