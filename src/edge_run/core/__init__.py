"""edge-run's bottom layer: facts and helpers both converters/ and runtime/ use (errors, files, manifests,
quant types, GGUF headers, artifact formats). It imports nothing from edge_run.converters or edge_run.runtime
(tests/test_layers.py)."""

__version__ = "0.1.0"
