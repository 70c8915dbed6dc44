"""A checkpoint's plan: what a HF checkpoint folder would become once converted, read from its config and
safetensors headers alone. The converters make it (src/edge_run/converters/planning.py); the runtime's picker and memory
estimate read it (src/edge_run/core/planning.py). It lives here, below both, so neither imports the other."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PlanTensor:
    gguf_name: str
    shape: tuple[int, ...]  # the checkpoint's (rows, ..., columns): shape[-1] is GGUF's ne0
    n_elements: int


@dataclass(frozen=True)
class CheckpointPlan:
    name: str
    digest: str
    parameter_count: int
    text_config: Mapping[str, Any]
    head_dim: int
    tensors: tuple[PlanTensor, ...]  # the GGUF tensors at full precision, generated ones included
