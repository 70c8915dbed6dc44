"""edge-run runtime: memory estimates, device picking and CPU inference (GGUF / ONNX)."""

from edge_run.core import __version__

__all__ = ["__version__"]
