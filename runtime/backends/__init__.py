"""Inference backends behind one interface; the format of an artifact picks the backend."""

from __future__ import annotations

from pathlib import Path

from edge_run.core.formats import artifact_format

from .base import Backend, GenerationParams, GenerationResult, LoadOptions

__all__ = ["Backend", "GenerationParams", "GenerationResult", "LoadOptions", "artifact_format", "open_backend"]


def open_backend(path: Path, options: LoadOptions | None = None) -> Backend:
    """Load the artifact with the backend for its format (registry lookup, no branching on callers' side)."""
    from . import registry

    fmt = artifact_format(path)
    return registry.BACKENDS[fmt](Path(path), options or LoadOptions())
