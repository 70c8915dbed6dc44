"""Quality of a pairing in bits per byte (BPB) on WikiText-2: measured when `edge-run eval` stored it in
the manifest, predicted otherwise (and labelled so).

Prediction = the same checkpoint's measured BPB at another quant type, moved by the difference of
the two types' penalties; without any measurement of that checkpoint, a prior from its parameter
count. Penalties come from llama.cpp's published perplexity deltas (llama-quantize's type table,
"+X ppl @ Llama-3-8B", WikiText-2, F16 PPL ~6.233), turned into nats per token: ln((6.233 + X) / 6.233).
Small models lose more to quantization than an 8B model, so predictions understate their penalty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LLAMA3_8B_F16_PPL = 6.233
# quant -> PPL increase over F16 for Llama-3-8B (llama.cpp tools/quantize/quantize.cpp QUANT_OPTIONS)
PUBLISHED_PPL_DELTA: dict[str, float] = {
    "F32": 0.0, "F16": 0.0, "BF16": 0.0, "Q8_0": 0.0026, "Q6_K": 0.0217, "Q5_K_M": 0.0569, "Q5_K_S": 0.1049,
    "Q5_1": 0.1062, "Q5_0": 0.1316, "Q4_K_M": 0.1754, "Q4_K_S": 0.2689, "Q4_1": 0.4511, "Q4_0": 0.4685,
    "Q3_K_L": 0.5562, "Q3_K_M": 0.6569, "Q3_K_S": 1.6321, "Q2_K": 3.5199, "Q2_K_S": 3.1836,
}
DEFAULT_TOKENS_PER_BYTE = 0.25
CORPUS_KEY = "wikitext2"


def penalty_nats(quant: str) -> float:
    delta = PUBLISHED_PPL_DELTA.get(quant.upper())
    if delta is None:  # unlisted types (IQ*, ONNX int4): interpolate from bits, as a 4.5-bit k-quant
        delta = PUBLISHED_PPL_DELTA["Q4_K_S"]
    return math.log((LLAMA3_8B_F16_PPL + delta) / LLAMA3_8B_F16_PPL)


def prior_bpb(n_params: int) -> float:
    """Full-precision BPB prior from parameter count: a log-linear line through published-scale
    anchors (~1.10 BPB at 100M, ~0.60 at 8B on WikiText-2); coarse, used only with nothing measured."""
    return max(0.3, 1.10 - 0.263 * math.log10(max(n_params, 1) / 1e8))


@dataclass(frozen=True)
class Quality:
    bpb: float
    measured: bool
    basis: str  # how it was obtained, for the table

    @property
    def label(self) -> str:
        return f"{self.bpb:.3f}" + ("" if self.measured else "*")


def predict(quant: str, n_params: int, references: list[tuple[str, dict]]) -> Quality:
    """``references``: (quant, quality entry) measured for the same checkpoint."""
    for ref_quant, entry in references:
        if ref_quant.upper() == quant.upper():
            return Quality(float(entry["bpb"]), True, "measured")
    if references:
        ref_quant, entry = min(references, key=lambda r: penalty_nats(r[0]))
        tpb = entry.get("tokens_scored", 0) / max(entry.get("bytes_scored", 0), 1) or DEFAULT_TOKENS_PER_BYTE
        shift = (penalty_nats(quant) - penalty_nats(ref_quant)) / math.log(2) * tpb
        return Quality(float(entry["bpb"]) + shift, False, f"predicted from measured {ref_quant}")
    tpb = DEFAULT_TOKENS_PER_BYTE
    return Quality(prior_bpb(n_params) + penalty_nats(quant) / math.log(2) * tpb, False,
                   "predicted from parameter count")
