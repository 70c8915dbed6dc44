"""GGUF hyper-parameter metadata from an HF config: a common set every decoder writes, plus the
per-architecture extras named in the registry (``ArchSpec.extra_hparams``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gguf
import numpy as np

from edge_run.converters.architectures import ArchSpec
from edge_run.converters.rope import RopePlan, RopeVariant, rope_dim, rope_plan, rope_theta
from edge_run.core.errors import CheckpointError

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
    w.add_rope_dimension_count(rope_dim(cfg, hd))
    theta = rope_theta(cfg)
    if theta is not None:
        w.add_rope_freq_base(theta)
    variant, plan, _ = rope_plan(cfg, hd, spec.rope_types, f"llama.cpp's {spec.key} graph")
    if variant is not None and plan is not None:
        ROPE_METADATA[variant.gguf_metadata](w, cfg, plan)
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


def _phi3_window(w: gguf.GGUFWriter, cfg: dict[str, Any]) -> None:
    """Phi-3 writes its sliding window as llama.cpp's converter does (0 = none); llama.cpp reads it but
    runs Phi-3 with full attention (its Phi SWA is disabled)."""
    w.add_sliding_window(int(cfg.get("sliding_window") or 0))


EXTRA_HPARAMS: dict[str, Callable[[gguf.GGUFWriter, dict[str, Any]], None]] = {
    "sliding_window": _sliding_window,
    "phi3_window": _phi3_window,
}


def _no_metadata(w: gguf.GGUFWriter, cfg: dict[str, Any], plan: RopePlan) -> None:
    """llama3: nothing but the generated ``rope_freqs`` tensor."""


def _linear_metadata(w: gguf.GGUFWriter, cfg: dict[str, Any], plan: RopePlan) -> None:
    w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    w.add_rope_scaling_factor(float(plan.short[0]))


def _longrope_metadata(w: gguf.GGUFWriter, cfg: dict[str, Any], plan: RopePlan) -> None:
    """llama.cpp picks rope_factors_long when the context exceeds the original one and multiplies
    cos/sin by the attention factor."""
    w.add_rope_scaling_attn_factors(plan.mscale)
    w.add_rope_scaling_orig_ctx_len(plan.switch_at)


# RopeVariant.gguf_metadata -> writer
ROPE_METADATA: dict[str, Callable[[gguf.GGUFWriter, dict[str, Any], RopePlan], None]] = {
    "": _no_metadata, "linear": _linear_metadata, "longrope": _longrope_metadata,
}


def generated_tensors(cfg: dict[str, Any], spec: ArchSpec) -> list[tuple[str, np.ndarray]]:
    """(GGUF name, f32 data) of the tensors the rope variant adds (rope_freqs, rope_factors_long/short)."""
    variant: RopeVariant | None
    variant, plan, _ = rope_plan(cfg, head_dim(cfg), spec.rope_types, f"llama.cpp's {spec.key} graph")
    if variant is None or plan is None:
        return []
    out = []
    for tensor, which in variant.gguf_tensors:
        data = plan.long if which == "long" else plan.short
        assert data is not None
        out.append((gguf.TENSOR_NAMES[gguf.MODEL_TENSOR[tensor]] + ".weight", data))
    return out
