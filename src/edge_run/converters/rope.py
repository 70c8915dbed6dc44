"""Rotary position embedding: the config keys, and one row per scaling variant, shared by both converters.

Every variant is expressed as per-frequency *divisors* of the plain frequencies, which is how llama.cpp
stores them (``rope_freqs`` / ``rope_factors_*`` tensors, ``freq_factors`` in ggml_rope_ext):

    inv_freq[i] = theta^(-2i / dim) / divisor[i]          i < dim / 2
    cos/sin     = cos/sin(position * inv_freq) * mscale   (mscale: longrope's attention factor)

The GGUF converter writes the divisors (and metadata) as llama.cpp reads them; the ONNX converter bakes
them into GroupQueryAttention's cos/sin caches. A variant with ``long`` divisors switches to them once the
sequence is longer than ``original_max_position_embeddings`` (transformers' longrope rule; llama.cpp
decides once per context: long when n_ctx exceeds the original context).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_run.core.errors import CheckpointError, UnsupportedArchitectureError


def rope_theta(cfg: dict[str, Any], layer_type: str = "full_attention") -> float | None:
    """rope base from either the classic ``rope_theta`` key or transformers 5's ``rope_parameters``
    (flat, or one dict per layer type as in Gemma 3)."""
    params = cfg.get("rope_parameters")
    if isinstance(params, dict):
        if layer_type in params and isinstance(params[layer_type], dict):
            params = params[layer_type]
        if "rope_theta" in params:
            return float(params["rope_theta"])
    return float(cfg["rope_theta"]) if "rope_theta" in cfg else None


def rope_scaling(cfg: dict[str, Any], layer_type: str = "full_attention") -> dict[str, Any] | None:
    """The scaling parameters with their ``rope_type`` (None for plain rope)."""
    params = cfg.get("rope_parameters") or cfg.get("rope_scaling")
    if isinstance(params, dict) and layer_type in params and isinstance(params[layer_type], dict):
        params = params[layer_type]
    if not isinstance(params, dict):
        return None
    kind = params.get("rope_type", params.get("type", "default"))
    return None if kind == "default" else {**params, "rope_type": kind}


@dataclass(frozen=True)
class RopeInputs:
    """What a variant reads: the base, the rotated dimensions, the scaling dict and the config."""

    theta: float
    dim: int
    params: dict[str, Any]
    cfg: dict[str, Any] = field(repr=False)

    @property
    def plain_inv_freq(self) -> np.ndarray:
        return 1.0 / (self.theta ** (np.arange(0, self.dim, 2, dtype=np.float64) / self.dim))

    @property
    def max_positions(self) -> int:
        return int(self.cfg.get("max_position_embeddings") or 2048)

    @property
    def original_ctx(self) -> int:
        return int(self.params.get("original_max_position_embeddings")
                   or self.cfg.get("original_max_position_embeddings") or self.max_positions)


@dataclass(frozen=True)
class RopePlan:
    """Divisors (float32, dim / 2) for sequences up to ``switch_at`` tokens, and optionally beyond it."""

    short: np.ndarray
    long: np.ndarray | None = None
    switch_at: int = 0
    mscale: float = 1.0

    def caches(self, inv_freq: np.ndarray, max_positions: int, use_long: bool = False
               ) -> tuple[np.ndarray, np.ndarray]:
        """GroupQueryAttention's cos/sin caches, f32 [max_positions, dim / 2]."""
        div = self.long if use_long and self.long is not None else self.short
        angles = np.outer(np.arange(max_positions, dtype=np.float64), inv_freq / div.astype(np.float64))
        return ((np.cos(angles) * self.mscale).astype(np.float32),
                (np.sin(angles) * self.mscale).astype(np.float32))


def _linear(r: RopeInputs) -> RopePlan:
    return RopePlan(np.full(r.dim // 2, float(r.params["factor"]), dtype=np.float32))


def _llama3(r: RopeInputs) -> RopePlan:
    """Llama 3.1: wavelengths longer than old_ctx / low_freq_factor are stretched by ``factor``, shorter
    than old_ctx / high_freq_factor kept, the band between interpolated smoothly."""
    p = r.params
    factor = float(p.get("factor", 8.0))
    low = float(p.get("low_freq_factor", 1.0))
    high = float(p.get("high_freq_factor", 4.0))
    old_ctx = float(p.get("original_max_position_embeddings", 8192))
    wavelen = 2 * np.pi / r.plain_inv_freq
    smooth = (old_ctx / wavelen - low) / (high - low)
    div = np.where(wavelen < old_ctx / high, 1.0,
                   np.where(wavelen > old_ctx / low, factor, 1.0 / ((1 - smooth) / factor + smooth)))
    return RopePlan(div.astype(np.float32))


def _longrope(r: RopeInputs) -> RopePlan:
    """Phi-3 (su / longrope): two lists of per-frequency divisors, short below the original context and
    long above it, and an attention factor sqrt(1 + ln(scale) / ln(original)) for scale = max / original."""
    short, long = r.params.get("short_factor"), r.params.get("long_factor")
    for key, value in (("short_factor", short), ("long_factor", long)):
        if not isinstance(value, list) or len(value) != r.dim // 2:
            raise CheckpointError(f"config.json's rope {key} must list {r.dim // 2} numbers",
                                  "fix config.json or re-download the checkpoint")
    scale = r.max_positions / r.original_ctx
    default = math.sqrt(1 + math.log(scale) / math.log(r.original_ctx)) if scale > 1.0 else 1.0
    attn = r.params.get("attention_factor")
    return RopePlan(np.asarray(short, dtype=np.float32), np.asarray(long, dtype=np.float32),
                    switch_at=r.original_ctx, mscale=float(attn) if attn is not None else default)


@dataclass(frozen=True)
class RopeVariant:
    """One rope scaling type: how its divisors are computed and how llama.cpp wants them stored."""

    name: str
    plan: Callable[[RopeInputs], RopePlan]
    # GGUF tensors generated from the plan: (gguf-py MODEL_TENSOR name, which divisors)
    gguf_tensors: tuple[tuple[str, str], ...] = ()
    # GGUF metadata: "linear" (scaling type + factor) and/or "longrope" (attn factor + original ctx)
    gguf_metadata: str = ""


ROPE_VARIANTS: dict[str, RopeVariant] = {
    "linear": RopeVariant("linear", _linear, gguf_metadata="linear"),
    "llama3": RopeVariant("llama3", _llama3, gguf_tensors=(("ROPE_FREQS", "short"),)),
    "longrope": RopeVariant("longrope", _longrope, gguf_tensors=(("ROPE_FACTORS_LONG", "long"),
                                                                 ("ROPE_FACTORS_SHORT", "short")),
                            gguf_metadata="longrope"),
    "su": RopeVariant("su", _longrope, gguf_tensors=(("ROPE_FACTORS_LONG", "long"), ("ROPE_FACTORS_SHORT", "short")),
                      gguf_metadata="longrope"),
}


def rope_dim(cfg: dict[str, Any], head_dim: int) -> int:
    """Rotated dimensions per head (``partial_rotary_factor`` rotates only the first part)."""
    params = cfg.get("rope_parameters")
    factor = cfg.get("partial_rotary_factor", 1.0)
    if isinstance(params, dict) and "partial_rotary_factor" in params:
        factor = params["partial_rotary_factor"]
    return int(head_dim * float(factor or 1.0))


def rope_plan(cfg: dict[str, Any], head_dim: int, allowed: tuple[str, ...], what: str,
              layer_type: str = "full_attention") -> tuple[RopeVariant | None, RopePlan | None, float]:
    """(variant, plan, theta) for one layer type; the variant must be one ``allowed`` for the architecture."""
    theta = rope_theta(cfg, layer_type)
    theta = 10000.0 if theta is None else theta
    scaling = rope_scaling(cfg, layer_type)
    if scaling is None:
        return None, None, theta
    kind = scaling["rope_type"]
    if kind not in allowed or kind not in ROPE_VARIANTS:
        raise UnsupportedArchitectureError(f"rope scaling {kind!r} is not supported by {what}",
                                           f"supported: default, {', '.join(allowed)}")
    variant = ROPE_VARIANTS[kind]
    return variant, variant.plan(RopeInputs(theta, rope_dim(cfg, head_dim), scaling, cfg)), theta
