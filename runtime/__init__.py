"""edge-run runtime: memory estimates, device picking and CPU inference (GGUF / ONNX)."""

__version__ = "0.1.0"
