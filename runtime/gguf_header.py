"""The bounded GGUF header reader lives in edge_run/core/gguf_header.py (converters and runtime both read
headers); this module re-exports it under its old name."""

from edge_run.core.gguf_header import (  # noqa: F401
    _U32,
    _U64,
    DEFAULT_ALIGNMENT,
    DEFAULT_MAX_ITEMS,
    GGML_TYPES,
    GGUF_MAGIC,
    MAX_DIMS,
    SUPPORTED_VERSIONS,
    VALUE_TYPES,
    GGUFHeader,
    GGUFTensor,
    SkippedArray,
    _Corrupt,
    _Cursor,
    _parse,
    _tensor_table,
    read_gguf_header,
)
