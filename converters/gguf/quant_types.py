"""The GGUF quant types edge-run offers: one row each (name -> llama.cpp ftype).

``bpw`` is llama.cpp's nominal bits per weight of the type's main block format (the real figure
for a converted file, which mixes types per tensor, is measured and stored in its manifest).
``needs_imatrix`` marks types llama.cpp refuses to make without an importance matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

from gguf import LlamaFileType as FT

from edge_run.runtime.errors import UsageError


@dataclass(frozen=True)
class QuantType:
    name: str
    ftype: FT
    bpw: float
    needs_imatrix: bool = False
    full_precision: bool = False


_ROWS: tuple[QuantType, ...] = (
    QuantType("F32", FT.ALL_F32, 32.0, full_precision=True),
    QuantType("F16", FT.MOSTLY_F16, 16.0, full_precision=True),
    QuantType("BF16", FT.MOSTLY_BF16, 16.0, full_precision=True),
    QuantType("Q8_0", FT.MOSTLY_Q8_0, 8.5),
    QuantType("Q6_K", FT.MOSTLY_Q6_K, 6.5625),
    QuantType("Q5_K_M", FT.MOSTLY_Q5_K_M, 5.5),
    QuantType("Q5_K_S", FT.MOSTLY_Q5_K_S, 5.5),
    QuantType("Q5_1", FT.MOSTLY_Q5_1, 6.0),
    QuantType("Q5_0", FT.MOSTLY_Q5_0, 5.5),
    QuantType("Q4_K_M", FT.MOSTLY_Q4_K_M, 4.5),
    QuantType("Q4_K_S", FT.MOSTLY_Q4_K_S, 4.5),
    QuantType("Q4_1", FT.MOSTLY_Q4_1, 5.0),
    QuantType("Q4_0", FT.MOSTLY_Q4_0, 4.5),
    QuantType("IQ4_NL", FT.MOSTLY_IQ4_NL, 4.5),
    QuantType("IQ4_XS", FT.MOSTLY_IQ4_XS, 4.25),
    QuantType("Q3_K_L", FT.MOSTLY_Q3_K_L, 3.4375),
    QuantType("Q3_K_M", FT.MOSTLY_Q3_K_M, 3.4375),
    QuantType("Q3_K_S", FT.MOSTLY_Q3_K_S, 3.4375),
    QuantType("IQ3_M", FT.MOSTLY_IQ3_M, 3.4375),
    QuantType("IQ3_S", FT.MOSTLY_IQ3_S, 3.4375),
    QuantType("IQ3_XS", FT.MOSTLY_IQ3_XS, 3.3, needs_imatrix=True),
    QuantType("IQ3_XXS", FT.MOSTLY_IQ3_XXS, 3.0625, needs_imatrix=True),
    QuantType("Q2_K", FT.MOSTLY_Q2_K, 2.625),
    QuantType("Q2_K_S", FT.MOSTLY_Q2_K_S, 2.625, needs_imatrix=True),
    QuantType("IQ2_M", FT.MOSTLY_IQ2_M, 2.7, needs_imatrix=True),
    QuantType("IQ2_S", FT.MOSTLY_IQ2_S, 2.5, needs_imatrix=True),
    QuantType("IQ2_XS", FT.MOSTLY_IQ2_XS, 2.3125, needs_imatrix=True),
    QuantType("IQ2_XXS", FT.MOSTLY_IQ2_XXS, 2.0625, needs_imatrix=True),
    QuantType("IQ1_M", FT.MOSTLY_IQ1_M, 1.75, needs_imatrix=True),
    QuantType("IQ1_S", FT.MOSTLY_IQ1_S, 1.5625, needs_imatrix=True),
    QuantType("TQ2_0", FT.MOSTLY_TQ2_0, 2.0625),
    QuantType("TQ1_0", FT.MOSTLY_TQ1_0, 1.6875),
)

QUANT_TYPES: dict[str, QuantType] = {q.name: q for q in _ROWS}


def parse_quant_list(spec: str, have_imatrix: bool = False) -> list[QuantType]:
    """'q4_k_m,q8_0' -> [Q4_K_M, Q8_0] (order kept, duplicates dropped)."""
    out: list[QuantType] = []
    for raw in spec.split(","):
        name = raw.strip().upper()
        if not name:
            continue
        q = QUANT_TYPES.get(name)
        if q is None:
            raise UsageError(f"unknown quant type {raw.strip()!r}", f"choose from: {', '.join(QUANT_TYPES)}")
        if q.needs_imatrix and not have_imatrix:
            raise UsageError(f"{q.name} needs an importance matrix", "pass --imatrix-text FILE")
        if q not in out:
            out.append(q)
    if not out:
        raise UsageError("no quant type given", f"pass e.g. --quant q4_k_m,q8_0 (choose from {', '.join(QUANT_TYPES)})")
    return out
