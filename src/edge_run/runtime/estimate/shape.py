"""A model's shape as the memory estimate reads it: hyperparameters and the tensor table (name, GGML type,
row length, rows, bytes), from a GGUF header or a checkpoint's plan."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type: str
    ne0: int  # row length
    ne1: int  # rows (product of the other dimensions)
    n_bytes: int


@dataclass(frozen=True)
class ModelShape:
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    n_vocab: int
    n_ctx_train: int
    n_swa: int  # sliding window (0 = none)
    n_swa_layers: int
    tensors: tuple[TensorInfo, ...]

    @property
    def weight_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)
