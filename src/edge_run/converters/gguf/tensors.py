"""HF tensors -> GGUF tensors: names from gguf-py's TensorNameMap, values transformed per the
architecture row, output dtype per llama.cpp's conventions (1-D tensors stay F32).

Rope permutation for llama-family Q/K (rows of one head shown, head_dim = 8):

    HF ("rotate half"):  [x0 x1 x2 x3 | y0 y1 y2 y3]     pairs (xi, yi) are rotated together
    llama.cpp (GPT-J):   [x0 y0 x1 y1 x2 y2 x3 y3]

    reshape rows to (n_head, 2, head_dim/2, cols) -> swap axes 1,2 -> reshape back
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import gguf
import numpy as np

from edge_run.converters.architectures import ArchSpec
from edge_run.converters.checkpoint import SAFETENSORS_DTYPES, Checkpoint, LazyTensor
from edge_run.converters.gguf.half import all_finite_f16, to_f16
from edge_run.converters.gguf.hparams import generated_tensors
from edge_run.core.errors import CheckpointError

# Which full-precision GGUF type a 2-D weight gets for each --outtype; 1-D tensors are always F32.
OUTTYPES: dict[str, tuple[gguf.GGMLQuantizationType, np.dtype | None]] = {
    "f32": (gguf.GGMLQuantizationType.F32, np.dtype(np.float32)),
    "f16": (gguf.GGMLQuantizationType.F16, np.dtype(np.float16)),
    "bf16": (gguf.GGMLQuantizationType.BF16, None),  # stored as raw uint16 bits
}


CHUNK_BYTES = 32 * 1024 * 1024  # float32 bytes converted at a time


def permute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    rows = w.shape[0]
    return (w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 -> bfloat16 bit pattern (uint16)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = bits + (0x7FFF + ((bits >> 16) & 1))
    return (rounded >> 16).astype(np.uint16)


@dataclass(frozen=True)
class PlannedTensor:
    """One GGUF tensor to write: where it comes from and how it is transformed."""

    gguf_name: str
    source: LazyTensor | None  # None for generated tensors (rope_freqs, rope_factors_long/short)
    shape: tuple[int, ...]
    qtype: gguf.GGMLQuantizationType
    permute_heads: int = 0  # >0: apply permute_rope with this many heads
    add: float = 0.0  # gemma norm offset
    data: np.ndarray | None = field(default=None, compare=False, repr=False)  # a generated tensor's values

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        return self.n_elements * (4 if self.qtype == gguf.GGMLQuantizationType.F32 else 2)

    def _convert(self, x: np.ndarray, heads: int) -> np.ndarray:
        if heads:
            x = permute_rope(x, heads)
        if self.add:
            x = x + np.float32(self.add)
        if self.qtype == gguf.GGMLQuantizationType.F32:
            return np.ascontiguousarray(x, dtype=np.float32)
        if self.qtype == gguf.GGMLQuantizationType.F16:
            half = to_f16(x)  # ggml's converter (half.py)
            if not all_finite_f16(half):  # finite float32 beyond +-65504 becomes inf
                name = self.source.name if self.source else self.gguf_name
                raise CheckpointError(f"tensor {name!r} has values beyond float16's range (+-65504)",
                                      "convert with --intermediate bf16 or f32")
            return half
        return f32_to_bf16_bits(x)

    def iter_chunks(self, cfg: dict, chunk_bytes: int = CHUNK_BYTES) -> Iterator[np.ndarray]:
        """The converted tensor in row chunks (whole rope heads per chunk when permuting)."""
        if self.source is None:
            assert self.data is not None
            yield np.ascontiguousarray(self.data, dtype=np.float32)
            return
        rows = self.shape[0] if self.shape else 1
        row_bytes = max(1, self.source.nbytes // max(rows, 1)) * 4 // SAFETENSORS_DTYPES[self.source.dtype].itemsize
        step = max(1, chunk_bytes // row_bytes)
        if self.permute_heads:
            head_rows = rows // self.permute_heads
            step = max(1, step // head_rows) * head_rows
        for start in range(0, rows, step):
            x = self.source.read_rows(start, start + step)
            yield self._convert(x, x.shape[0] // (rows // self.permute_heads) if self.permute_heads else 0)

    def streamed(self, cfg: dict) -> StreamedTensor:
        return StreamedTensor(self, cfg)


class StreamedTensor:
    """Duck-types the two members of a numpy array that GGUFWriter.write_tensor_data uses
    (``nbytes`` and ``tofile``) so a tensor is converted and written chunk by chunk."""

    def __init__(self, planned: PlannedTensor, cfg: dict) -> None:
        self.planned, self.cfg, self.nbytes = planned, cfg, planned.nbytes

    def tofile(self, f: BinaryIO) -> None:
        for chunk in self.planned.iter_chunks(self.cfg):
            chunk.tofile(f)


def plan_tensors(ckpt: Checkpoint, spec: ArchSpec, outtype: str) -> list[PlannedTensor]:
    cfg = ckpt.text_config()
    n_layers = int(cfg["num_hidden_layers"])
    n_head = int(cfg["num_attention_heads"])
    n_kv = int(cfg.get("num_key_value_heads") or n_head)
    tie = bool(cfg.get("tie_word_embeddings", ckpt.config.get("tie_word_embeddings", False)))
    name_map = gguf.get_tensor_name_map(spec.gguf_arch, n_layers)
    wide_type, _ = OUTTYPES[outtype]
    plan: list[PlannedTensor] = []
    seen: set[str] = set()
    for t in ckpt:
        if any(s in t.name for s in spec.skip):
            continue
        if tie and t.name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when output.weight is absent
        name = name_map.get_name(t.name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise CheckpointError(f"tensor {t.name!r} has no GGUF name for {spec.key}",
                                  "the checkpoint does not match its declared architecture")
        if name in seen:
            raise CheckpointError(f"two tensors map to GGUF name {name!r}", "the checkpoint has duplicate weights")
        seen.add(name)
        if t.dtype not in ("F32", "F16", "BF16", "F64"):
            raise CheckpointError(f"tensor {t.name!r} has dtype {t.dtype}; expected floating point",
                                  "pass an unquantized (fp32/fp16/bf16) checkpoint")
        heads = 0
        if spec.permute_qk and (".attn_q." in name or ".attn_k." in name):
            heads = n_head if ".attn_q." in name else n_kv
        add = spec.norm_offset if name.endswith("norm.weight") else 0.0
        qtype = wide_type if len(t.shape) >= 2 else gguf.GGMLQuantizationType.F32
        plan.append(PlannedTensor(name, t, t.shape, qtype, heads, add))
    for gguf_name, data in generated_tensors(cfg, spec):
        plan.append(PlannedTensor(gguf_name, None, data.shape, gguf.GGMLQuantizationType.F32, data=data))
    if "token_embd.weight" not in seen:
        raise CheckpointError("the checkpoint has no token embedding", "the weights are incomplete")
    _check_blocks(seen, n_layers)
    return plan


def _check_blocks(gguf_names: set[str], n_layers: int) -> None:
    """Every block must hold the same tensors: a weight missing from one layer makes llama.cpp refuse the file."""
    per_block: dict[int, set[str]] = {i: set() for i in range(n_layers)}
    for name in gguf_names:
        parts = name.split(".", 2)
        if parts[0] == "blk" and len(parts) == 3 and parts[1].isdigit() and int(parts[1]) in per_block:
            per_block[int(parts[1])].add(parts[2])
    union = set().union(*per_block.values())
    for i, names in per_block.items():
        if union - names:
            raise CheckpointError(f"layer {i} lacks {', '.join(sorted(union - names))}",
                                  "the weights are incomplete: re-download the checkpoint")


