"""Format -> backend class. Adding a backend is one row."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .base import Backend, LoadOptions


def _gguf(path: Path, options: LoadOptions) -> Backend:
    from .gguf import GGUFBackend

    return GGUFBackend(path, options)


def _onnx(path: Path, options: LoadOptions) -> Backend:
    from .onnx import ONNXBackend

    return ONNXBackend(path, options)


BACKENDS: dict[str, Callable[[Path, LoadOptions], Backend]] = {
    "gguf": _gguf,
    "onnx": _onnx,
}
