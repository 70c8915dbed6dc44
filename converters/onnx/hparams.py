"""Decoder hyper-parameters for the ONNX graph, read from config.json and the architecture row, and the
rotary-embedding caches GroupQueryAttention consumes.

    cos_cache, sin_cache: f32 [max_positions, rotary_dim / 2]
        cos_cache[p, i] = cos(p * inv_freq[i]),  inv_freq[i] = theta^(-2i / rotary_dim)  (then scaled)

GQA rotates Q and K in HF's "rotate half" layout (rotary_interleaved=0), so weights keep HF order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_run.runtime.errors import CheckpointError, UnsupportedArchitectureError

from ..architectures import ArchSpec, rope_scaling, rope_theta
from ..checkpoint import Checkpoint

# config activation name -> graph activation kind (builder.ACTIVATIONS)
ACTIVATION_NAMES: dict[str, str] = {
    "silu": "silu", "swish": "silu",
    "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh",
    "gelu": "gelu",
}
DEFAULT_WINDOW = -1  # GroupQueryAttention's local_window_size for a global layer


def _linear(inv_freq: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    return inv_freq / float(p["factor"])


def _llama3(inv_freq: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    """Llama 3.x: long wavelengths slowed by ``factor``, short ones kept, a smooth ramp between."""
    factor, low, high = float(p["factor"]), float(p["low_freq_factor"]), float(p["high_freq_factor"])
    old_ctx = float(p["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > old_ctx / low, inv_freq / factor, inv_freq)
    smooth = (old_ctx / wavelen - low) / (high - low)
    ramp = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_ctx / high) & (wavelen <= old_ctx / low)
    return np.where(medium, ramp, scaled)


ROPE_SCALINGS: dict[str, Callable[[np.ndarray, dict[str, Any]], np.ndarray]] = {
    "linear": _linear,
    "llama3": _llama3,
}


@dataclass(frozen=True)
class Rope:
    theta: float
    scaling: dict[str, Any] | None = None

    def caches(self, rotary_dim: int, max_positions: int) -> tuple[np.ndarray, np.ndarray]:
        inv_freq = 1.0 / (self.theta ** (np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim))
        if self.scaling is not None:
            inv_freq = ROPE_SCALINGS[self.scaling["rope_type"]](inv_freq, self.scaling)
        angles = np.outer(np.arange(max_positions, dtype=np.float64), inv_freq)
        return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


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
    default_type = "sliding_attention" if opts.get("window_all_layers") and window > 0 else "full_attention"
    layer_types = tuple(cfg.get("layer_types") or [default_type] * n_layers)
    if len(layer_types) != n_layers:
        raise CheckpointError(f"config.json lists {len(layer_types)} layer_types for {n_layers} layers")
    ropes: dict[str, Rope] = {}
    for kind in sorted(set(layer_types)):
        theta = rope_theta(cfg, kind)
        scaling = rope_scaling(cfg, kind)
        if scaling is not None and scaling["rope_type"] not in ROPE_SCALINGS:
            raise UnsupportedArchitectureError(f"rope scaling {scaling['rope_type']!r} is not supported by the "
                                               "ONNX converter", f"supported: {', '.join(ROPE_SCALINGS)}")
        ropes[kind] = Rope(theta if theta is not None else 10000.0, scaling)
    windows = tuple(window if kind == "sliding_attention" and window > 0 else DEFAULT_WINDOW for kind in layer_types)
    scalar = cfg.get(opts["attn_scale_key"]) if "attn_scale_key" in opts else None
    return DecoderConfig(
        n_layers=n_layers, hidden=hidden, n_heads=n_heads,
        n_kv_heads=int(_get(cfg, "num_key_value_heads", default=n_heads)), head_dim=head_dim,
        intermediate=int(_get(cfg, "intermediate_size")), vocab=int(_get(cfg, "vocab_size")),
        eps=float(_get(cfg, "rms_norm_eps", "layer_norm_eps", default=1e-6)),
        max_positions=int(_get(cfg, "max_position_embeddings", default=4096)),
        activation=ACTIVATION_NAMES[act_name], norm_offset=spec.norm_offset,
        embed_scale=math.sqrt(hidden) if opts.get("embed_scale") == "sqrt_hidden" else 1.0,
        attn_scale=float(scalar) ** -0.5 if scalar else head_dim ** -0.5,
        qk_norm=bool(opts.get("qk_norm")), sandwich_norms=bool(opts.get("sandwich_norms")),
        layer_types=layer_types, windows=windows, ropes=ropes,
        attn_softcap=float(cfg.get("attn_logit_softcapping") or 0.0),
        final_softcap=float(cfg.get("final_logit_softcapping") or 0.0),
    )
