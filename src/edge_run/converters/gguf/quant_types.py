"""The GGUF quant types edge-run offers (name -> llama.cpp ftype), read from the one quant-type table in
src/edge_run/core/quants.py.

``bpw`` is llama.cpp's nominal bits per weight of the type's main block format (the real figure
for a converted file, which mixes types per tensor, is measured and stored in its manifest).
``needs_imatrix`` marks types llama.cpp refuses to make without an importance matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

from gguf import LlamaFileType as FT

from edge_run.core.errors import UsageError
from edge_run.core.quants import QUANTS


@dataclass(frozen=True)
class QuantType:
    name: str
    ftype: FT
    bpw: float
    needs_imatrix: bool = False
    full_precision: bool = False


# a view of edge_run.core.quants, where every fact about a quant type lives (one row each)
QUANT_TYPES: dict[str, QuantType] = {
    q.name: QuantType(q.name, q.ftype, q.bpw, q.needs_imatrix, q.full_precision) for q in QUANTS}


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
