"""Inference backends behind one interface; the format of an artifact picks the backend."""

from __future__ import annotations

from pathlib import Path

from edge_run.core.formats import artifact_format
from edge_run.runtime.backends.base import Backend, GenerationParams, GenerationResult, LoadOptions

__all__ = ["Backend", "GenerationParams", "GenerationResult", "LoadOptions", "artifact_format", "open_backend"]


def open_backend(path: Path, options: LoadOptions | None = None) -> Backend:
    """Load the artifact with the backend of its format's row (src/edge_run/runtime/artifacts/formats.py)."""
    from edge_run.runtime.artifacts.formats import open_artifact

    return open_artifact(Path(path), options or LoadOptions())
