"""Which GGML type each tensor gets under a llama.cpp file type, for pairings not converted yet.

A row per file type (data): the base type, the "more bits" type llama.cpp gives some layers'
attn_v / ffn_down (``use_more_bits``: the first and last eighth of layers and every third layer in
between), attn_output's type, and the output (lm head; or the token embedding when tied) type.
Facts from llama.cpp's src/llama-quant.cpp (llama_tensor_get_type); k-quants need rows that are a
multiple of 256 and fall back to the listed legacy type otherwise. Real files are checked against
this prediction in tests/test_estimate.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import gguf

Q = gguf.GGMLQuantizationType


@dataclass(frozen=True)
class Mix:
    base: str
    attn_v: tuple[str, str] | None = None  # (more-bits layers, other layers)
    ffn_down: tuple[str, str] | None = None
    attn_output: str | None = None
    output: str = "Q6_K"


QUANT_MIX: dict[str, Mix] = {
    "F32": Mix("F32", output="F32"),
    "F16": Mix("F16", output="F16"),
    "BF16": Mix("BF16", output="BF16"),
    "Q8_0": Mix("Q8_0", output="Q8_0"),
    "Q6_K": Mix("Q6_K"),
    "Q5_K_M": Mix("Q5_K", attn_v=("Q6_K", "Q5_K"), ffn_down=("Q6_K", "Q5_K")),
    "Q5_K_S": Mix("Q5_K"),
    "Q5_1": Mix("Q5_1"),
    "Q5_0": Mix("Q5_0"),
    "Q4_K_M": Mix("Q4_K", attn_v=("Q6_K", "Q4_K"), ffn_down=("Q6_K", "Q4_K")),
    "Q4_K_S": Mix("Q4_K", attn_v=("Q5_K", "Q4_K"), ffn_down=("Q5_K", "Q4_K")),
    "Q4_1": Mix("Q4_1"),
    "Q4_0": Mix("Q4_0"),
    "IQ4_NL": Mix("IQ4_NL"),
    "IQ4_XS": Mix("IQ4_XS"),
    "Q3_K_L": Mix("Q3_K", attn_v=("Q5_K", "Q5_K"), ffn_down=("Q5_K", "Q5_K"), attn_output="Q5_K"),
    "Q3_K_M": Mix("Q3_K", attn_v=("Q5_K", "Q4_K"), ffn_down=("Q5_K", "Q4_K"), attn_output="Q4_K"),
    "Q3_K_S": Mix("Q3_K"),
    "Q2_K": Mix("Q2_K", attn_v=("Q4_K", "Q3_K"), ffn_down=("Q3_K", "Q3_K"), attn_output="Q3_K"),
}

# k-quant -> the type llama.cpp uses when a row length is not a multiple of 256
K_FALLBACK: dict[str, str] = {"Q2_K": "IQ4_NL", "Q3_K": "IQ4_NL", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0",
                              "IQ4_XS": "IQ4_NL"}


def use_more_bits(layer: int, n_layer: int) -> bool:
    return layer < n_layer // 8 or layer >= 7 * n_layer // 8 or (layer - n_layer // 8) % 3 == 2


def tensor_type(ftype: str, name: str, ne0: int, n_layer: int, has_output: bool) -> str:
    """GGML type name of tensor ``name`` (GGUF naming) with row length ``ne0``."""
    mix = QUANT_MIX[ftype]
    if name.endswith("norm.weight") or name.endswith(".bias") or name.startswith("rope_freqs"):
        return "F32"
    layer = int(name.split(".")[1]) if name.startswith("blk.") else -1
    if name == "output.weight" or (name == "token_embd.weight" and not has_output):
        t = mix.output
    elif ".attn_v." in name and mix.attn_v:
        t = mix.attn_v[0] if use_more_bits(layer, n_layer) else mix.attn_v[1]
    elif ".ffn_down." in name and mix.ffn_down:
        t = mix.ffn_down[0] if use_more_bits(layer, n_layer) else mix.ffn_down[1]
    elif ".attn_output." in name and mix.attn_output:
        t = mix.attn_output
    else:
        t = mix.base
    block, _ = gguf.GGML_QUANT_SIZES[Q[t]]
    if ne0 % block:
        t = K_FALLBACK.get(t, t)
        block, _ = gguf.GGML_QUANT_SIZES[Q[t]]
        if ne0 % block:
            t = "F16"
    return t


def tensor_bytes(type_name: str, n_elements: int) -> int:
    block, size = gguf.GGML_QUANT_SIZES[Q[type_name]]
    return n_elements // block * size
