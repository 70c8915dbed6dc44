"""Block-wise weight quantization for MatMulNBits / GatherBlockQuantized, and the quant schemes.

The packing is onnxruntime's own (``quantize_matmul_4bits`` / ``quantize_matmul_8bits``, the C++
kernels behind its MatMulNBits quantizer); we only feed it row blocks of the checkpoint's weights.

A linear layer's weight W is [N out, K in] in the checkpoint. MatMulNBits stores it per output row,
quantized along K in blocks of ``block`` values:

    B      uint8 [N, K/block, block*bits/8]   row n, block j: the codes of W[n, j*block:(j+1)*block]
                                              (4 bits: two codes a byte, low nibble first)
    scales f32   [N, K/block]
    zp     uint8 [N, ceil(K/block * bits/8)]  asymmetric only (4 bits: two zero points a byte)

    W[n, k] ~= scales[n, k//block] * (code(n, k) - zp(n, k//block))    (symmetric: zp = 2^(bits-1))

Rows are independent, so a weight is quantized in row chunks and written as it goes: memory stays at
one chunk. Embedding tables ([vocab, hidden], quantized along hidden) use the same layout with
GatherBlockQuantized, so a tied embedding shares lm_head's quantized bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

from edge_run.core.errors import UsageError
from edge_run.core.quants import use_more_bits

MIN_BLOCK, MAX_BLOCK = 16, 256
ROW_CHUNK_ELEMENTS = 1 << 23  # ~32 MiB of f32 per quantization chunk

_KERNELS: dict[int, Callable[..., None]] = {4: quantize_matmul_4bits, 8: quantize_matmul_8bits}


LAYER_RULES: dict[str, Callable[[int, int], bool]] = {
    "all": lambda layer, n: True,
    "more_bits": use_more_bits,
}


@dataclass(frozen=True)
class QuantScheme:
    """Bits for each weight role: ``default_bits`` unless a rule (role, layer rule, bits) matches.
    ``default_bits`` None keeps every weight float32.

    search      per-block scale search (search.py) instead of round-to-nearest
    calibrate   weigh the search by each input column's mean squared activation on a calibration text
                (calibrate.py)
    budget_bpw  sensitivity mix: the matrices with the largest measured loss per extra byte go to 8 bits
                (``wide`` layout) while the weights average at most this many bits (mix.py)
    wide        (block, symmetric) of the 8-bit matrices of a budget mix"""

    name: str
    default_bits: int | None
    rules: tuple[tuple[str, str, int], ...] = ()
    description: str = ""
    search: bool = False
    calibrate: bool = False
    budget_bpw: float | None = None
    wide: tuple[int, bool] | None = None

    def bits(self, role: str, layer: int = -1, n_layers: int = 1) -> int | None:
        if self.default_bits is None:
            return None
        for rule_role, layers, bits in self.rules:
            if rule_role == role and (layer < 0 or LAYER_RULES[layers](layer, n_layers)):
                return bits
        return self.default_bits


# roles: attn_q attn_k attn_v attn_o ffn_gate ffn_up ffn_down lm_head (embed follows lm_head when tied)
SCHEMES: dict[str, QuantScheme] = {
    "fp32": QuantScheme("fp32", None, description="float32 weights (reference / parity)"),
    "int4": QuantScheme("int4", 4, description="int4 with calibrated scale search; the most sensitive matrices "
                        "(measured) at int8 within 5.85 bits per weight (Q4_K_M's size)", search=True,
                        calibrate=True, budget_bpw=5.85, wide=(128, True)),
    "int4-rtn": QuantScheme("int4-rtn", 4, description="every matrix int4 block-wise, round-to-nearest"),
    "int4-search": QuantScheme("int4-search", 4, description="every matrix int4, scale search (no calibration)",
                               search=True),
    "int4-cal": QuantScheme("int4-cal", 4, description="every matrix int4, calibrated scale search (no mix)",
                            search=True, calibrate=True),
    "int4h8": QuantScheme("int4h8", 4, (("lm_head", "all", 8), ("embed", "all", 8)),
                          description="int4, with lm_head/embeddings at int8 (as llama.cpp's Q4_0 keeps the output "
                                      "matrix at 6 bits)"),
    "int8": QuantScheme("int8", 8, description="every matrix int8 block-wise (RTN)"),
    "mixed": QuantScheme("mixed", 4, (("lm_head", "all", 8), ("embed", "all", 8), ("attn_v", "more_bits", 8),
                                      ("ffn_down", "more_bits", 8)),
                         description="int4, with lm_head/embeddings and half the attn_v/ffn_down layers at int8 "
                                     "(as llama.cpp's Q4_K_M mix)"),
}


@dataclass(frozen=True)
class QuantConfig:
    scheme: QuantScheme
    block_size: int = 32
    symmetric: bool = True
    accuracy_level: int = 4

    def layout(self, bits: int, k: int) -> tuple[int, bool]:
        """(block size, symmetric) of a matrix with ``k`` input columns quantized to ``bits``: a budget mix's
        8-bit matrices take the largest block up to ``wide``'s that divides k (no padding bytes)."""
        if bits == 8 and self.scheme.wide is not None and self.scheme.budget_bpw is not None:
            block, symmetric = self.scheme.wide
            while block > self.block_size and k % block:
                block //= 2
            return block, symmetric
        return self.block_size, self.symmetric

    @property
    def label(self) -> str:
        """Manifest quant name, e.g. ``int4-b32-sym``; ``fp32`` for float weights."""
        if self.scheme.default_bits is None:
            return self.scheme.name
        return f"{self.scheme.name}-b{self.block_size}-{'sym' if self.symmetric else 'asym'}"


def parse_quant(quant: str, block_size: int, symmetric: bool, accuracy_level: int) -> QuantConfig:
    scheme = SCHEMES.get(quant.strip().lower())
    if scheme is None:
        raise UsageError(f"unknown ONNX quant type {quant!r}", f"choose one of: {', '.join(SCHEMES)}")
    if not MIN_BLOCK <= block_size <= MAX_BLOCK or block_size & (block_size - 1):
        raise UsageError(f"block size {block_size} is not a power of two in {MIN_BLOCK}..{MAX_BLOCK}",
                         "use 16, 32, 64, 128 or 256")
    if accuracy_level not in range(5):
        raise UsageError(f"accuracy level {accuracy_level} is not in 0..4",
                         "0 = default, 1 = fp32, 2 = fp16, 3 = bf16, 4 = int8 activations")
    return QuantConfig(scheme, block_size, symmetric, accuracy_level)


@dataclass(frozen=True)
class PackedShape:
    n: int
    k: int
    bits: int
    block: int

    @property
    def k_blocks(self) -> int:
        return (self.k + self.block - 1) // self.block

    @property
    def blob(self) -> int:
        return self.block * self.bits // 8

    @property
    def zp_cols(self) -> int:
        return (self.k_blocks * self.bits + 7) // 8


def quantize_rows(w: np.ndarray, bits: int, block: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantize rows ``w`` [n, K] (f32); return (B [n, kb, blob] u8, scales [n, kb] f32, zp [n, zp_cols] u8)."""
    n, k = w.shape
    shape = PackedShape(n, k, bits, block)
    pad = shape.k_blocks * block - k
    src = np.ascontiguousarray(np.pad(w, ((0, 0), (0, pad))).T if pad else w.T, dtype=np.float32)
    packed = np.zeros((n, shape.k_blocks, shape.blob), dtype=np.uint8)
    scales = np.zeros((n, shape.k_blocks), dtype=np.float32)
    zp = np.zeros((n, shape.zp_cols), dtype=np.uint8)
    _KERNELS[bits](packed, src, scales, zp, block, n, k, symmetric)
    return packed, scales, zp


def row_chunks(n_rows: int, row_elems: int) -> Iterator[tuple[int, int]]:
    step = max(1, ROW_CHUNK_ELEMENTS // max(row_elems, 1))
    for start in range(0, n_rows, step):
        yield start, min(n_rows, start + step)


def dequantize_rows(packed: np.ndarray, scales: np.ndarray, zp: np.ndarray | None, bits: int, k: int,
                    block: int) -> np.ndarray:
    """The float weights the packed codes stand for (used by tests and the inspector)."""
    n, kb, _ = packed.shape
    if bits == 4:
        codes = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n, kb, block).astype(np.float32)
        zps = (np.stack([zp & 0x0F, zp >> 4], axis=-1).reshape(n, -1)[:, :kb] if zp is not None
               else np.full((n, kb), 8, np.uint8)).astype(np.float32)
    else:
        codes = packed.reshape(n, kb, block).astype(np.float32)
        zps = (zp[:, :kb] if zp is not None else np.full((n, kb), 128, np.uint8)).astype(np.float32)
    w = (codes - zps[:, :, None]) * scales[:, :, None]
    return w.reshape(n, kb * block)[:, :k]
