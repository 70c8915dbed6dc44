"""Benchmarks, studies and checks run as ``python -m tools.NAME``. Like the CLI, tools compose the runtime and the
converters: they plug the GGUF converter into the runtime's planning interface."""

from edge_run.core import planning

planning.use(planning.GGUF_CONVERTER)
