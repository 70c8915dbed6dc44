"""Decoder hyper-parameters for the ONNX graph, read from config.json and the architecture row, and the
rotary-embedding caches GroupQueryAttention consumes.

    cos_cache, sin_cache: f32 [max_positions, rotary_dim / 2]
        cos_cache[p, i] = cos(p * inv_freq[i]) * mscale,  inv_freq[i] = theta^(-2i / rotary_dim) / divisor[i]
    (divisors and mscale from the rope scaling variant, src/edge_run/converters/rope.py; longrope has a second pair)

GQA rotates Q and K in HF's "rotate half" layout (rotary_interleaved=0), so weights keep HF order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_run.converters.architectures import ArchSpec, FusedTensor
from edge_run.converters.checkpoint import Checkpoint
from edge_run.converters.rope import ROPE_VARIANTS, RopePlan, rope_dim, rope_plan
from edge_run.core.errors import CheckpointError, UnsupportedArchitectureError

# config activation name -> graph activation kind (builder.ACTIVATIONS)
ACTIVATION_NAMES: dict[str, str] = {
    "silu": "silu", "swish": "silu",
    "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh",
    "gelu": "gelu",
}
DEFAULT_WINDOW = -1  # GroupQueryAttention's local_window_size for a global layer


@dataclass(frozen=True)
class Rope:
    """One layer type's rotary embedding: base, rotated dimensions and the scaling plan (rope.py)."""

    theta: float
    dim: int
    plan: RopePlan | None = None

    @property
    def switch_at(self) -> int:
        """Total sequence length above which the long caches apply (0: one set of caches)."""
        return self.plan.switch_at if self.plan is not None and self.plan.long is not None else 0

    def caches(self, max_positions: int, use_long: bool = False) -> tuple[np.ndarray, np.ndarray]:
        inv_freq = 1.0 / (self.theta ** (np.arange(0, self.dim, 2, dtype=np.float64) / self.dim))
        plan = self.plan or RopePlan(np.ones(self.dim // 2, dtype=np.float32))
        return plan.caches(inv_freq, max_positions, use_long)


@dataclass(frozen=True)
class DecoderConfig:
    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    eps: float
    max_positions: int
    activation: str
    norm_offset: float
    embed_scale: float
    attn_scale: float
    qk_norm: bool
    sandwich_norms: bool
    layer_types: tuple[str, ...]  # per layer: a key of ``ropes``
    windows: tuple[int, ...]  # per layer: GQA local_window_size (-1 = global)
    ropes: dict[str, Rope]
    fused: tuple[FusedTensor, ...] = ()  # stacked projections, read as row ranges (ArchSpec.fused)
    attn_softcap: float = 0.0
    final_softcap: float = 0.0

    @property
    def q_size(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.n_kv_heads * self.head_dim


def _get(cfg: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for k in keys:
        if cfg.get(k) is not None:
            return cfg[k]
    if default is None:
        raise CheckpointError(f"config.json lacks {keys[0]!r}", "the checkpoint's config is incomplete")
    return default


def decoder_config(ckpt: Checkpoint, spec: ArchSpec) -> DecoderConfig:
    cfg = ckpt.text_config()
    opts = spec.onnx
    hidden = int(_get(cfg, "hidden_size"))
    n_heads = int(_get(cfg, "num_attention_heads"))
    n_layers = int(_get(cfg, "num_hidden_layers"))
    head_dim = int(_get(cfg, "head_dim", default=hidden // n_heads))
    act_name = str(_get(cfg, "hidden_activation", "hidden_act", default="silu"))
    if act_name not in ACTIVATION_NAMES:
        raise UnsupportedArchitectureError(f"activation {act_name!r} is not supported by the ONNX converter",
                                           f"supported: {', '.join(ACTIVATION_NAMES)}")
    window = int(cfg.get("sliding_window") or 0)
    default_type = "sliding_attention" if opts.window_all_layers and window > 0 else "full_attention"
    layer_types = tuple(cfg.get("layer_types") or [default_type] * n_layers)
    if len(layer_types) != n_layers:
        raise CheckpointError(f"config.json lists {len(layer_types)} layer_types for {n_layers} layers")
    ropes: dict[str, Rope] = {}
    for kind in sorted(set(layer_types)):
        _, plan, theta = rope_plan(cfg, head_dim, tuple(ROPE_VARIANTS), "the ONNX converter", kind)
        ropes[kind] = Rope(theta, rope_dim(cfg, head_dim), plan)
    windows = tuple(window if kind == "sliding_attention" and window > 0 else DEFAULT_WINDOW for kind in layer_types)
    scalar = cfg.get(opts.attn_scale_key) if opts.attn_scale_key else None
    return DecoderConfig(
        n_layers=n_layers, hidden=hidden, n_heads=n_heads,
        n_kv_heads=int(_get(cfg, "num_key_value_heads", default=n_heads)), head_dim=head_dim,
        intermediate=int(_get(cfg, "intermediate_size")), vocab=int(_get(cfg, "vocab_size")),
        eps=float(_get(cfg, "rms_norm_eps", "layer_norm_eps", default=1e-6)),
        max_positions=int(_get(cfg, "max_position_embeddings", default=4096)),
        activation=ACTIVATION_NAMES[act_name], norm_offset=spec.norm_offset,
        embed_scale=math.sqrt(hidden) if opts.embed_scale == "sqrt_hidden" else 1.0,
        attn_scale=float(scalar) ** -0.5 if scalar else head_dim ** -0.5,
        qk_norm=opts.qk_norm, sandwich_norms=opts.sandwich_norms,
        layer_types=layer_types, windows=windows, ropes=ropes, fused=spec.fused,
        attn_softcap=float(cfg.get("attn_logit_softcapping") or 0.0),
        final_softcap=float(cfg.get("final_logit_softcapping") or 0.0),
    )
