"""The picker's data: a candidate pairing and its evaluated row (split out of src/edge_run/runtime/pick/picker.py so
that
src/edge_run/runtime/pick/quality.py and src/edge_run/runtime/pick/explain.py, which
src/edge_run/runtime/pick/picker.py calls, sit below it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_run.core.tuning import UNKNOWN, Tuning
from edge_run.runtime.estimate.gguf import MemoryEstimate, ModelShape
from edge_run.runtime.pick.prior import Quality


@dataclass(frozen=True)
class Candidate:
    """One pairing: an artifact on disk (``path``), or a checkpoint x quant type not converted yet."""

    model: str
    quant: str
    shape: ModelShape | None = field(repr=False, compare=False)
    n_params: int
    format: str = "gguf"
    path: Path | None = None
    checkpoint: Path | None = None  # where a planned pairing is converted from
    context_length: int = 0  # trained context (0 = take it from the shape)
    # (quant, manifest.quality[CORPUS_KEY]) measured for the same source checkpoint
    references: tuple[tuple[str, dict[str, Any]], ...] = field(default=(), repr=False, compare=False)
    digest: str = field(default="", compare=False)  # the source checkpoint's digest (quality store key)
    imatrix: bool = False  # quantized with an importance matrix
    has_manifest: bool = True  # False: a GGUF made elsewhere, described by its own metadata only
    cache_type: str = ""  # KV cache type of this pairing ("" = the pick's --cache-type); see picker.KV_DIMENSION
    # KV cache type -> measured BPB change of this model with that cache vs f16 (same text, same weights)
    kv_deltas: tuple[tuple[str, float], ...] = field(default=(), repr=False, compare=False)
    # instruction-tuned / base / unknown (src/edge_run/core/tuning.py): a pick for chat prefers a tuned model
    tuning: Tuning = field(default=Tuning(UNKNOWN), compare=False)

    @property
    def planned(self) -> bool:
        return self.path is None

    @property
    def label(self) -> str:
        fmt = "" if self.format == "gguf" else f" [{self.format}]"
        return (f"{self.model} {self.quant}{'+imat' if self.imatrix else ''}{fmt}"
                + (f" KV {self.cache_type}" if self.cache_type else "")
                + (" (planned)" if self.planned else "") + ("" if self.has_manifest else " (no manifest)"))

    @property
    def trained_ctx(self) -> int:
        return self.context_length or (self.shape.n_ctx_train if self.shape else 0)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "quant": self.quant, "format": self.format, "planned": self.planned,
                "path": str(self.path) if self.path else None,
                "checkpoint": str(self.checkpoint) if self.checkpoint else None,
                "parameter_count": self.n_params, "context_length": self.trained_ctx, "manifest": self.has_manifest,
                "imatrix": self.imatrix, "cache_type": self.cache_type or None, **self.tuning.to_dict()}


@dataclass(frozen=True)
class Row:
    candidate: Candidate
    estimate: MemoryEstimate | None
    quality: Quality
    tps: float
    max_ctx: int  # the largest context that fits (0 = none, or not estimable)
    reason: str  # "" = fits; else why it is rejected
    constraints: tuple[str, ...] = ()  # each rejection's kind: memory | page-cache | context | speed | format
    ctx: int = 0  # the context it was fitted at when shorter than the pick's (--min-ctx), else 0

    @property
    def constraint(self) -> str:
        return self.constraints[0] if self.constraints else ""

    @property
    def fits(self) -> bool:
        return not self.reason

    def rank_key(self) -> tuple[bool, float, bool, bool, bool, float, float]:
        # a model with nothing measured never outranks a measured one on a guess from its parameter count;
        # BPB differences under 0.001 (e.g. F16 vs Q8_0) are below what the prediction can resolve: a tie,
        # won by a measured value over a predicted one, then by the default (f16) KV cache (a quantized one is
        # only taken where it makes a better pairing fit), then by the faster pairing
        return (self.quality.unmeasured, round(self.quality.bpb, 3), not self.quality.measured,
                bool(self.candidate.cache_type), bool(self.ctx), -self.tps,
                self.estimate.total_mib if self.estimate else float("inf"))

    def to_dict(self) -> dict[str, Any]:
        return {**self.candidate.to_dict(), "fits": self.fits, "why_not": self.reason or None,
                "constraints": list(self.constraints), "max_ctx": self.max_ctx or None, "at_ctx": self.ctx or None,
                "memory": self.estimate.to_dict() if self.estimate else None,
                "quality": {"bpb": round(self.quality.bpb, 4), "measured": self.quality.measured,
                            "unmeasured": self.quality.unmeasured, "published": self.quality.published,
                            "basis": self.quality.basis},
                "decode_tokens_per_s": round(self.tps, 2)}
