"""Inference backends behind one interface (llama.cpp, onnxruntime); an artifact's format row
(src/edge_run/runtime/artifacts/formats.py, `open_backend`) picks which one opens it."""

from __future__ import annotations

from edge_run.runtime.backends.base import Backend, GenerationParams, GenerationResult, LoadOptions

__all__ = ["Backend", "GenerationParams", "GenerationResult", "LoadOptions"]
