"""GGUF hyper-parameter metadata from an HF config: a common set every decoder writes, plus the
per-architecture extras named in the registry (``ArchSpec.extra_hparams``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gguf
import numpy as np

from edge_run.runtime.errors import CheckpointError

from ..architectures import ArchSpec, rope_scaling, rope_theta

# (HF config key, GGUFWriter method) for required integer fields
REQUIRED_INT_FIELDS: tuple[tuple[str, str], ...] = (
    ("hidden_size", "add_embedding_length"),
    ("num_hidden_layers", "add_block_count"),
    ("intermediate_size", "add_feed_forward_length"),
    ("num_attention_heads", "add_head_count"),
)


def _require(cfg: dict[str, Any], key: str) -> Any:
    if key not in cfg:
        raise CheckpointError(f"config.json lacks {key!r}", "the checkpoint's config is incomplete or not a decoder LM")
    return cfg[key]


def validate_hparams(cfg: dict[str, Any]) -> None:
    """Fail with a CheckpointError before anything is written if a hyper-parameter the converter reads is
    missing or not a positive integer."""
    optional = tuple(k for k in ("num_key_value_heads", "head_dim") if cfg.get(k) is not None)
    for key in (*(k for k, _ in REQUIRED_INT_FIELDS), "vocab_size", *optional):
        value = _require(cfg, key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise CheckpointError(f"config.json has an invalid {key!r}: {value!r}", "it must be a positive integer")


def head_dim(cfg: dict[str, Any]) -> int:
    hd = cfg.get("head_dim")
    return int(hd) if hd else int(_require(cfg, "hidden_size")) // int(_require(cfg, "num_attention_heads"))


def write_common(w: gguf.GGUFWriter, cfg: dict[str, Any], spec: ArchSpec) -> None:
    for key, method in REQUIRED_INT_FIELDS:
        value = _require(cfg, key)
        if not isinstance(value, int) or value <= 0:
            raise CheckpointError(f"config.json has an invalid {key!r}: {value!r}", "it must be a positive integer")
        getattr(w, method)(value)
    w.add_context_length(int(cfg.get("max_position_embeddings", 2048)))
    w.add_head_count_kv(int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"]))
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
    w.add_vocab_size(int(_require(cfg, "vocab_size")))
    hd = head_dim(cfg)
    if hd != cfg["hidden_size"] // cfg["num_attention_heads"]:
        w.add_key_length(hd)
        w.add_value_length(hd)
    w.add_rope_dimension_count(hd)
    theta = rope_theta(cfg)
    if theta is not None:
        w.add_rope_freq_base(theta)
    scaling = rope_scaling(cfg)
    if scaling and scaling["rope_type"] == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(scaling["factor"]))
    elif scaling and scaling["rope_type"] not in ("llama3",):
        raise CheckpointError(f"rope scaling {scaling['rope_type']!r} is not supported yet",
                              "supported: default, linear, llama3")
    for extra in spec.extra_hparams:
        EXTRA_HPARAMS[extra](w, cfg)


def _sliding_window(w: gguf.GGUFWriter, cfg: dict[str, Any]) -> None:
    """Gemma 3: local layers attend to the last ``sliding_window`` tokens with their own rope base;
    the layer pattern is written per layer (True = sliding)."""
    window = cfg.get("sliding_window")
    if window:
        w.add_sliding_window(int(window))
    layer_types = cfg.get("layer_types")
    if isinstance(layer_types, list) and layer_types:
        w.add_sliding_window_pattern([t == "sliding_attention" for t in layer_types])
    local_theta = rope_theta(cfg, "sliding_attention")
    if local_theta is None:
        local_theta = cfg.get("rope_local_base_freq")
    if local_theta is not None:
        w.add_rope_freq_base_swa(float(local_theta))


def _llama3_rope(w: gguf.GGUFWriter, cfg: dict[str, Any]) -> None:
    """Nothing to write as metadata: llama3 rope scaling travels as the ``rope_freqs`` tensor."""


EXTRA_HPARAMS: dict[str, Callable[[gguf.GGUFWriter, dict[str, Any]], None]] = {
    "sliding_window": _sliding_window,
    "llama3_rope": _llama3_rope,
}


def llama3_rope_factors(cfg: dict[str, Any]) -> np.ndarray | None:
    """Per-frequency divisors for Llama 3.1-style rope scaling (llama.cpp reads them from the
    ``rope_freqs.weight`` tensor). Low frequencies are stretched by ``factor``, high ones kept,
    the band between interpolated smoothly."""
    scaling = rope_scaling(cfg)
    if not scaling or scaling["rope_type"] != "llama3":
        return None
    base = rope_theta(cfg) or 10000.0
    dim = head_dim(cfg)
    factor = float(scaling.get("factor", 8.0))
    low = float(scaling.get("low_freq_factor", 1.0))
    high = float(scaling.get("high_freq_factor", 4.0))
    old_ctx = float(scaling.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    wavelen = 2 * np.pi / freqs
    low_wl, high_wl = old_ctx / low, old_ctx / high
    smooth = (old_ctx / wavelen - low) / (high - low)
    out = np.where(wavelen < high_wl, 1.0, np.where(wavelen > low_wl, factor, 1.0 / ((1 - smooth) / factor + smooth)))
    return out.astype(np.float32)
