"""Every fact edge-run keeps about a llama.cpp quant type: one row each, read by the converter (ftype,
imatrix), the memory estimate (per-tensor type mix), the picker (planned pairings, quality prior) and the
GGUF backend (KV cache types).

    name      llama.cpp's name (llama-quantize's type list)
    ftype     LLAMA_FTYPE_* written as general.file_type
    bpw       nominal bits per weight of the main block format (a real file's figure is in its manifest)
    mix       which GGML type each tensor gets (llama.cpp src/llama-quant.cpp, llama_tensor_get_type):
              base type; attn_v (and a fused attn_qkv, which llama.cpp treats as attn_v) and ffn_down as
              (layer rule, type on the layers it selects, type elsewhere); attn_output; the output matrix
              (or the tied token embedding). None: not predicted, never planned.
    ppl_delta llama.cpp's published perplexity increase over F16 for Llama-3-8B on WikiText-2
              (tools/quantize/quantize.cpp QUANT_OPTIONS): the picker's quality prior
    planned   offered for a local checkpoint as a pairing not converted yet
    kv_cache  usable as llama.cpp's KV cache type (type_k / type_v)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edge_run.core.gguf_header import GGML_TYPES

if TYPE_CHECKING:  # gguf-py (and the yaml/sentencepiece it pulls in) is imported only by who asks for an ftype
    from gguf import LlamaFileType

# ggml type name -> id (ggml.h enum ggml_type), from the header reader's table
GGML_TYPE_IDS: dict[str, int] = {name: type_id for type_id, (name, _, _) in GGML_TYPES.items()}

# Which layers a mix gives its "hi" type (else "lo"): layer index, layer count, query heads per KV head.
LAYER_RULES: dict[str, Callable[[int, int, int], bool]] = {
    "all": lambda i, n, gqa: True,
    "more_bits": lambda i, n, gqa: use_more_bits(i, n),
    "first2": lambda i, n, gqa: i < 2,
    "first4": lambda i, n, gqa: i < 4,
    "first_eighth": lambda i, n, gqa: i < n // 8,
    "first_sixteenth": lambda i, n, gqa: i < n // 16,
    "gqa4": lambda i, n, gqa: gqa >= 4,  # every layer, when 4+ query heads share a KV head
}


@dataclass(frozen=True)
class Mix:
    base: str
    attn_v: tuple[str, str, str] | None = None  # (LAYER_RULES key, hi type, lo type)
    ffn_down: tuple[str, str, str] | None = None
    attn_output: str | None = None
    output: str = "Q6_K"


def use_more_bits(layer: int, n_layer: int) -> bool:
    """llama.cpp's k-quant mixes give these layers' attn_v / ffn_down more bits: the first and last eighth
    of the stack and every third layer in between."""
    return layer < n_layer // 8 or layer >= 7 * n_layer // 8 or (layer - n_layer // 8) % 3 == 2


@dataclass(frozen=True)
class QuantRow:
    name: str
    ftype_name: str  # gguf-py LlamaFileType member (LLAMA_FTYPE_*)
    bpw: float
    mix: Mix | None = None
    ppl_delta: float | None = None
    planned: bool = False
    needs_imatrix: bool = False
    full_precision: bool = False
    kv_cache: bool = False

    @property
    def ftype(self) -> LlamaFileType:
        """LLAMA_FTYPE_* as gguf-py's enum (what general.file_type stores)."""
        from gguf import LlamaFileType

        return LlamaFileType[self.ftype_name]

    @property
    def ggml_type(self) -> int:
        """The id of the GGML block type of the same name (F32, F16, Q8_0, Q4_0 ...; KV cache types)."""
        return GGML_TYPE_IDS[self.name]

    @property
    def kv_bytes_per_element(self) -> float:
        _, block, size = GGML_TYPES[self.ggml_type]
        return size / block


R = QuantRow
QUANTS: tuple[QuantRow, ...] = (
    R("F32", "ALL_F32", 32.0, Mix("F32", output="F32"), 0.0, full_precision=True, kv_cache=True),
    R("F16", "MOSTLY_F16", 16.0, Mix("F16", output="F16"), 0.0, planned=True, full_precision=True, kv_cache=True),
    R("BF16", "MOSTLY_BF16", 16.0, Mix("BF16", output="BF16"), 0.0, full_precision=True),
    R("Q8_0", "MOSTLY_Q8_0", 8.5, Mix("Q8_0", output="Q8_0"), 0.0026, planned=True, kv_cache=True),
    R("Q6_K", "MOSTLY_Q6_K", 6.5625, Mix("Q6_K"), 0.0217, planned=True),
    R("Q5_K_M", "MOSTLY_Q5_K_M", 5.5, Mix("Q5_K", attn_v=("more_bits", "Q6_K", "Q5_K"),
                                         ffn_down=("more_bits", "Q6_K", "Q5_K")), 0.0569, planned=True),
    R("Q5_K_S", "MOSTLY_Q5_K_S", 5.5, Mix("Q5_K"), 0.1049),
    R("Q5_1", "MOSTLY_Q5_1", 6.0, Mix("Q5_1"), 0.1062),
    R("Q5_0", "MOSTLY_Q5_0", 5.5, Mix("Q5_0"), 0.1316),
    R("Q4_K_M", "MOSTLY_Q4_K_M", 4.5, Mix("Q4_K", attn_v=("more_bits", "Q6_K", "Q4_K"),
                                         ffn_down=("more_bits", "Q6_K", "Q4_K")), 0.1754, planned=True),
    R("Q4_K_S", "MOSTLY_Q4_K_S", 4.5, Mix("Q4_K", attn_v=("first4", "Q5_K", "Q4_K"),
                                         ffn_down=("first_eighth", "Q5_K", "Q4_K")), 0.2689),
    R("Q4_1", "MOSTLY_Q4_1", 5.0, Mix("Q4_1"), 0.4511),
    R("Q4_0", "MOSTLY_Q4_0", 4.5, Mix("Q4_0"), 0.4685, planned=True, kv_cache=True),
    R("IQ4_NL", "MOSTLY_IQ4_NL", 4.5, Mix("IQ4_NL")),
    R("IQ4_XS", "MOSTLY_IQ4_XS", 4.25, Mix("IQ4_XS")),
    R("Q3_K_L", "MOSTLY_Q3_K_L", 3.4375, Mix("Q3_K", attn_v=("all", "Q5_K", "Q5_K"), ffn_down=("all", "Q5_K", "Q5_K"),
                                             attn_output="Q5_K"), 0.5562),
    R("Q3_K_M", "MOSTLY_Q3_K_M", 3.4375, Mix("Q3_K", attn_v=("first2", "Q5_K", "Q4_K"),
                                             ffn_down=("first_sixteenth", "Q5_K", "Q4_K"),
                                             attn_output="Q4_K"), 0.6569, planned=True),
    R("Q3_K_S", "MOSTLY_Q3_K_S", 3.4375, Mix("Q3_K"), 1.6321),
    R("IQ3_M", "MOSTLY_IQ3_M", 3.4375),
    R("IQ3_S", "MOSTLY_IQ3_S", 3.4375),
    R("IQ3_XS", "MOSTLY_IQ3_XS", 3.3, needs_imatrix=True),
    R("IQ3_XXS", "MOSTLY_IQ3_XXS", 3.0625, needs_imatrix=True),
    R("Q2_K", "MOSTLY_Q2_K", 2.625, Mix("Q2_K", attn_v=("gqa4", "Q4_K", "Q3_K"), ffn_down=("all", "Q3_K", "Q3_K"),
                                        attn_output="Q3_K"), 3.5199, planned=True),
    R("Q2_K_S", "MOSTLY_Q2_K_S", 2.625, ppl_delta=3.1836, needs_imatrix=True),
    R("IQ2_M", "MOSTLY_IQ2_M", 2.7, needs_imatrix=True),
    R("IQ2_S", "MOSTLY_IQ2_S", 2.5, needs_imatrix=True),
    R("IQ2_XS", "MOSTLY_IQ2_XS", 2.3125, needs_imatrix=True),
    R("IQ2_XXS", "MOSTLY_IQ2_XXS", 2.0625, needs_imatrix=True),
    R("IQ1_M", "MOSTLY_IQ1_M", 1.75, needs_imatrix=True),
    R("IQ1_S", "MOSTLY_IQ1_S", 1.5625, needs_imatrix=True),
    R("TQ2_0", "MOSTLY_TQ2_0", 2.0625),
    R("TQ1_0", "MOSTLY_TQ1_0", 1.6875),
)
del R

BY_NAME: dict[str, QuantRow] = {q.name: q for q in QUANTS}
# views the readers use
QUANT_MIX: dict[str, Mix] = {q.name: q.mix for q in QUANTS if q.mix is not None}
PUBLISHED_PPL_DELTA: dict[str, float] = {q.name: q.ppl_delta for q in QUANTS if q.ppl_delta is not None}
PLANNED_QUANTS: tuple[str, ...] = tuple(q.name for q in QUANTS if q.planned)
KV_CACHE_TYPES: dict[str, QuantRow] = {q.name.lower(): q for q in QUANTS if q.kv_cache}
