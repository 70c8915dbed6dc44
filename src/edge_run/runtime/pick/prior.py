"""Quality of a pairing in bits per byte (BPB) on WikiText-2: measured when `edge-run eval` stored it in
the manifest, predicted otherwise (and labelled so).

Prediction = the same checkpoint's measured BPB at another quant type, moved by the difference of
the two types' penalties; without any measurement of that checkpoint, a prior from its parameter
count. Penalties come from llama.cpp's published perplexity deltas (llama-quantize's type table,
"+X ppl @ Llama-3-8B", WikiText-2, F16 PPL ~6.233), turned into nats per token: ln((6.233 + X) / 6.233).
Small models lose more to quantization than an 8B model: when the pairing's tensor table is known, the
shift is predicted from its real type mix instead (src/edge_run/runtime/pick/quant_loss.py, fitted on measured zoo
data).
A model with nothing measured is "unmeasured": its prior from parameter count ranks below every measured
model (parameter count says nothing about what a model was trained on).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeGuard

from edge_run.core.quants import PUBLISHED_PPL_DELTA

LLAMA3_8B_F16_PPL = 6.233
# quant -> PPL increase over F16 for Llama-3-8B: the ppl_delta column of src/edge_run/core/quants.py
DEFAULT_TOKENS_PER_BYTE = 0.25
CORPUS_KEY = "wikitext2"
# Quant loss (nats over F16) with an importance matrix / without, on the zoo's measured Q2_K..Q4_K_M rows
# (tools/quant_loss_fit.py, results/quant_loss_fit.json "imatrix"; each model's ratio within 0.05 of it)
IMATRIX_LOSS_RATIO = 0.55
# KV cache type -> BPB change over an f16 cache where the model's own is not measured: the zoo's mean
# (results/pick_dimensions.json: SmolLM2 / Gemma3 at ctx 512 and 2048, -0.0016..+0.0013, mean -0.0001)
KV_DELTA_BPB: dict[str, float] = {"q8_0": 0.0}


def penalty_nats(quant: str) -> float:
    delta = PUBLISHED_PPL_DELTA.get(quant.upper())
    if delta is None:  # unlisted types (IQ*, ONNX int4): interpolate from bits, as a 4.5-bit k-quant
        delta = PUBLISHED_PPL_DELTA["Q4_K_S"]
    return math.log((LLAMA3_8B_F16_PPL + delta) / LLAMA3_8B_F16_PPL)


def prior_bpb(n_params: int) -> float:
    """Full-precision BPB prior from parameter count: a log-linear line through published-scale
    anchors (~1.10 BPB at 100M, ~0.60 at 8B on WikiText-2); coarse, used only with nothing measured."""
    return max(0.3, 1.10 - 0.263 * math.log10(max(n_params, 1) / 1e8))


UNMEASURED = "unmeasured"  # basis of a prediction from the parameter count alone
PUBLISHED = "published"  # basis of a value from another's measurement of the same model (pick/published.py)


@dataclass(frozen=True)
class Quality:
    bpb: float
    measured: bool
    basis: str  # how it was obtained, for the table

    @property
    def unmeasured(self) -> bool:
        """Nothing of this model was measured: the value is a guess from its size and never outranks a
        model that was measured."""
        return self.basis.startswith(UNMEASURED)

    @property
    def published(self) -> bool:
        """Nothing of this model was measured here: the value is a published figure for the same model (or
        predicted from one), src/edge_run/runtime/pick/published.py."""
        return self.basis.startswith(PUBLISHED)

    @property
    def label(self) -> str:
        if self.unmeasured:
            return f"unmeasured (~{self.bpb:.2f})"
        if self.published:
            return f"{self.bpb:.3f}{'*' if 'predicted' in self.basis else ''} published"
        return f"{self.bpb:.3f}" + ("" if self.measured else "*")


def usable(entry: object) -> TypeGuard[dict[str, Any]]:
    """A quality entry whose BPB is a finite, non-negative number (anything else is never used)."""
    if not isinstance(entry, dict):
        return False
    bpb = entry.get("bpb")
    return isinstance(bpb, (int, float)) and not isinstance(bpb, bool) and math.isfinite(bpb) and bpb >= 0


def predict(quant: str, n_params: int, references: list[tuple[str, dict]],
            loss: Callable[[str], float] | None = None, imatrix: bool = False) -> Quality:
    """``references``: (quant, quality entry) measured for the same checkpoint (an entry may say
    ``"imatrix": true``). ``loss``: predicted nats/token over F16 of this model at a quant type (from its
    tensor-type mix, src/edge_run/runtime/pick/quant_loss.py); without it, llama.cpp's Llama-3-8B penalties are used."""
    references = [(q, e) for q, e in references if usable(e)]
    for ref_quant, entry in references:
        if ref_quant.upper() == quant.upper() and bool(entry.get("imatrix")) == imatrix:
            return Quality(float(entry["bpb"]), True, str(entry.get("basis", "measured")))
    ratio = IMATRIX_LOSS_RATIO if imatrix else 1.0  # an importance matrix keeps about half the loss away
    plain = [r for r in references if not r[1].get("imatrix")] or references
    if plain:
        nats = loss or penalty_nats
        ref_quant, entry = min(plain, key=lambda r: (nats(r[0]), -int(r[1].get("chunks", 0))))
        tpb = entry.get("tokens_scored", 0) / max(entry.get("bytes_scored", 0), 1) or DEFAULT_TOKENS_PER_BYTE
        shift = (ratio * nats(quant) - nats(ref_quant)) / math.log(2) * tpb
        how = "tensor-type mix" if loss is not None else "Llama-3-8B penalties"
        return Quality(float(entry["bpb"]) + shift, False,
                       f"predicted from measured {ref_quant} ({how}{', imatrix' if imatrix else ''})")
    tpb = DEFAULT_TOKENS_PER_BYTE
    return Quality(prior_bpb(n_params) + ratio * penalty_nats(quant) / math.log(2) * tpb, False,
                   f"{UNMEASURED}: a guess from the parameter count")
