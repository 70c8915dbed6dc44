"""Which GGML type each tensor gets under a llama.cpp file type, for pairings not converted yet.

A row per file type (data: the ``mix`` column of src/edge_run/core/quants.py): the base type, the types
llama.cpp gives attn_v / ffn_down by a layer rule (``use_more_bits``: the first and last eighth of layers
and every third layer in between; the first 2 or 4 layers; ...; a fused attn_qkv counts as attn_v),
attn_output's type, and the output (lm head; or the token embedding when tied) type.
Facts from llama.cpp's src/llama-quant.cpp (llama_tensor_get_type); k-quants need rows that are a
multiple of 256 and fall back to the listed legacy type otherwise. Real files are checked against
this prediction in tests/test_estimate.py.
"""

from __future__ import annotations

from edge_run.core.gguf_header import GGML_TYPES
from edge_run.core.quants import LAYER_RULES, QUANT_MIX, Mix, use_more_bits

# ggml type name -> (elements per block, bytes per block): core's table (equal to gguf-py's GGML_QUANT_SIZES,
# tests/test_gguf_header.py), so the memory guard on `edge-run run` does not import gguf-py (~0.1-0.2 s)
BLOCKS: dict[str, tuple[int, int]] = {name: (block, size) for name, block, size in GGML_TYPES.values()}

# k-quant -> the type llama.cpp uses when a row length is not a multiple of 256 (tensor_type_fallback in the
# llama.cpp that llama-cpp-python 0.3.36 vendors: Q2_K and Q3_K fall back to Q4_0, the 256-block IQ types to
# IQ4_NL; checked on SmolLM2's 576-wide rows: its Q2_K / Q3_K_M files hold Q4_0, tests/test_pick_mix_real.py)
K_FALLBACK: dict[str, str] = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0",
                              "IQ4_XS": "IQ4_NL", "IQ3_S": "IQ4_NL", "IQ3_XXS": "IQ4_NL", "IQ2_S": "IQ4_NL",
                              "IQ2_XS": "IQ4_NL", "IQ2_XXS": "IQ4_NL", "IQ1_S": "IQ4_NL", "IQ1_M": "IQ4_NL"}


def tensor_type(ftype: str, name: str, ne0: int, n_layer: int, has_output: bool, n_gqa: int = 1,
                fallback: dict[str, str] | None = None) -> str:
    """GGML type name of tensor ``name`` (GGUF naming) with row length ``ne0``; ``n_gqa`` query heads per KV
    head (Q2_K's attn_v depends on it); ``fallback`` replaces K_FALLBACK (tools/quant_loss_fit.py's ablation)."""
    mix = QUANT_MIX[ftype]
    if name.endswith("norm.weight") or name.endswith(".bias") or name.startswith(("rope_freqs", "rope_factors")):
        return "F32"
    layer = int(name.split(".")[1]) if name.startswith("blk.") else -1
    if name == "output.weight" or (name == "token_embd.weight" and not has_output):
        t = mix.output
    elif (".attn_v." in name or ".attn_qkv." in name) and mix.attn_v:  # llama.cpp: a fused qkv is attn_v-like
        rule, hi, lo = mix.attn_v
        t = hi if LAYER_RULES[rule](layer, n_layer, n_gqa) else lo
    elif ".ffn_down." in name and mix.ffn_down:
        rule, hi, lo = mix.ffn_down
        t = hi if LAYER_RULES[rule](layer, n_layer, n_gqa) else lo
    elif ".attn_output." in name and mix.attn_output:
        t = mix.attn_output
    else:
        t = mix.base
    block, _ = BLOCKS[t]
    if ne0 % block:
        t = (K_FALLBACK if fallback is None else fallback).get(t, t)
        block, _ = BLOCKS[t]
        if ne0 % block:
            t = "F16"
    return t


def tensor_bytes(type_name: str, n_elements: int) -> int:
    block, size = BLOCKS[type_name]
    return n_elements // block * size


__all__ = ["K_FALLBACK", "LAYER_RULES", "QUANT_MIX", "Mix", "tensor_bytes", "tensor_type", "use_more_bits"]
