"""config.json is untrusted input: every size and hyper-parameter a converter reads is checked here, against
the checkpoint's tensors and against what llama.cpp / onnxruntime accept, before anything is allocated or
written (a ``vocab_size`` of 10^12 used to build a padding list of that length first; ``rms_norm_eps: -1``
converted fine and then aborted llama.cpp at load).

Checks are data: one row per integer field (bounds), one per float field (open interval), one function per
rope scaling type.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from edge_run.converters.checkpoint import Checkpoint
from edge_run.core.errors import CheckpointError

# (key, required, upper bound). The bounds are far above any real model (Gemma 3's 262144-token vocabulary,
# Llama 3.1 405B's 126 layers and 53248-wide FFN) and far below what would exhaust memory when a list of that
# length is built.
INT_FIELDS: tuple[tuple[str, bool, int], ...] = (
    ("vocab_size", True, 1 << 22),
    ("hidden_size", True, 1 << 17),
    ("intermediate_size", True, 1 << 19),
    ("num_hidden_layers", True, 1 << 12),
    ("num_attention_heads", True, 1 << 12),
    ("num_key_value_heads", False, 1 << 12),
    ("head_dim", False, 1 << 14),
    ("max_position_embeddings", False, 1 << 24),
    ("sliding_window", False, 1 << 24),
)
# (key, low, high): open interval a finite float must lie in. llama.cpp asserts eps > 0 at load.
FLOAT_FIELDS: tuple[tuple[str, float, float], ...] = (
    ("rms_norm_eps", 0.0, 1.0),
    ("layer_norm_eps", 0.0, 1.0),
    ("rope_theta", 0.0, 1e12),
    ("rope_local_base_freq", 0.0, 1e12),
    ("query_pre_attn_scalar", 0.0, 1e9),
)
# read with a default when absent, so an explicit null is a mistake (other keys, e.g. sliding_window, may be null)
NOT_NULL: tuple[str, ...] = ("max_position_embeddings", "rms_norm_eps", "rope_theta", "tie_word_embeddings")
# special token ids: absent/null, an id inside the vocabulary, or (eos) a list of them
TOKEN_ID_FIELDS: tuple[str, ...] = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")
HINT = "fix config.json or re-download the checkpoint"
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def _bad(key: str, value: object, why: str) -> CheckpointError:
    return CheckpointError(f"config.json has an invalid {key!r}: {value!r} ({why})", HINT)


def _number(key: str, value: object, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(key, value, "it must be a number")
    x = float(value)
    if not math.isfinite(x) or not low < x < high:
        raise _bad(key, value, f"it must be a finite number between {low:g} and {high:g}")
    return x


def _linear(params: dict[str, Any]) -> None:
    _number("rope_scaling.factor", params.get("factor"), 0.0, 1e6)


def _llama3(params: dict[str, Any]) -> None:
    _number("rope_scaling.factor", params.get("factor", 8.0), 0.0, 1e6)
    low = _number("rope_scaling.low_freq_factor", params.get("low_freq_factor", 1.0), 0.0, 1e6)
    high = _number("rope_scaling.high_freq_factor", params.get("high_freq_factor", 4.0), 0.0, 1e6)
    old = params.get("original_max_position_embeddings", 8192)
    if isinstance(old, bool) or not isinstance(old, int) or old <= 0:
        raise _bad("rope_scaling.original_max_position_embeddings", old, "it must be a positive integer")
    if not high > low:  # the smoothing band divides by (high - low): equal factors give NaN rope factors
        raise _bad("rope_scaling.high_freq_factor", high, f"it must be larger than low_freq_factor {low:g}")


def _no_check(params: dict[str, Any]) -> None:
    """Types the converters reject with their own message (yarn, dynamic, ...)."""


ROPE_SCALING_CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {"linear": _linear, "llama3": _llama3}


def _rope_params(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rope parameter dict in the config: the flat one and, as in Gemma 3, one per layer type."""
    found = []
    for key in ("rope_scaling", "rope_parameters"):
        params = cfg.get(key)
        if params is None:
            continue
        if not isinstance(params, dict):
            raise _bad(key, params, "it must be a JSON object")
        nested = [v for v in params.values() if isinstance(v, dict)]
        found.extend(nested or [params])
    return found


def check_config(ckpt: Checkpoint) -> None:
    """Raise CheckpointError for the first size or hyper-parameter in config.json that is invalid or does not
    match the tensors."""
    nested = ckpt.config.get("text_config")
    if "text_config" in ckpt.config and not isinstance(nested, dict):  # gguf-py reads it too, null included
        raise _bad("text_config", nested, "it must be a JSON object")
    cfg = ckpt.text_config()
    for key in NOT_NULL:
        if key in cfg and cfg[key] is None:
            raise _bad(key, None, "give a value or leave the key out")
    sizes: dict[str, int] = {}
    for key, required, bound in INT_FIELDS:
        value = cfg.get(key)
        if value is None:
            if required:
                raise CheckpointError(f"config.json lacks {key!r}",
                                      "the checkpoint's config is incomplete or not a decoder LM")
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise CheckpointError(f"config.json has an invalid {key!r}: {value!r}", "it must be a positive integer")
        if value > bound:
            raise _bad(key, value, f"more than {bound}; no real model is this large")
        sizes[key] = value
    for key, low, high in FLOAT_FIELDS:
        if cfg.get(key) is not None:
            _number(key, cfg[key], low, high)
    for params in _rope_params(cfg):
        if "rope_theta" in params:
            _number("rope_theta", params["rope_theta"], 0.0, 1e12)
        kind = params.get("rope_type", params.get("type", "default"))
        if not isinstance(kind, str):
            raise _bad("rope_type", kind, "it must be a string")
        ROPE_SCALING_CHECKS.get(kind, _no_check)(params)
    layer_types = cfg.get("layer_types")
    if layer_types is not None and (not isinstance(layer_types, list) or len(layer_types) != sizes["num_hidden_layers"]
                                    or not all(isinstance(t, str) for t in layer_types)):
        raise _bad("layer_types", layer_types if not isinstance(layer_types, list) else f"{len(layer_types)} entries",
                   f"it must list one attention type (a string) for each of the {sizes['num_hidden_layers']} layers")
    for key in TOKEN_ID_FIELDS:
        ids = cfg.get(key)
        for i in ids if isinstance(ids, list) else [] if ids is None else [ids]:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < sizes["vocab_size"]:
                raise _bad(key, ids, f"token ids must be integers from 0 to {sizes['vocab_size'] - 1}")
    heads, kv_heads = sizes["num_attention_heads"], sizes.get("num_key_value_heads", sizes["num_attention_heads"])
    if "head_dim" not in sizes and sizes["hidden_size"] % heads:
        raise _bad("num_attention_heads", heads, f"it does not divide hidden_size {sizes['hidden_size']}")
    if heads % kv_heads:
        raise _bad("num_key_value_heads", kv_heads, f"it does not divide num_attention_heads {heads}")
    _check_against_tensors(ckpt, sizes)


def _check_against_tensors(ckpt: Checkpoint, sizes: dict[str, int]) -> None:
    emb = next((t for t in ckpt if t.name.endswith("embed_tokens.weight") and len(t.shape) == 2), None)
    if emb is not None:
        rows, cols = emb.shape
        if rows != sizes["vocab_size"]:
            raise CheckpointError(f"embedding has {rows} rows but config.json says vocab_size={sizes['vocab_size']}",
                                  "the config does not belong to these weights")
        if cols != sizes["hidden_size"]:
            raise CheckpointError(f"embedding has {cols} columns but config.json says "
                                  f"hidden_size={sizes['hidden_size']}", "the config does not belong to these weights")
    heads = sizes["num_attention_heads"]
    kv = sizes.get("num_key_value_heads", heads)
    hd = sizes.get("head_dim") or sizes["hidden_size"] // heads
    # rows of layer 0's attention projections: llama.cpp reshapes them by these counts
    expected_rows = {"self_attn.q_proj.weight": ("num_attention_heads x head_dim", heads * hd),
                     "self_attn.k_proj.weight": ("num_key_value_heads x head_dim", kv * hd),
                     "self_attn.qkv_proj.weight": ("(heads + 2 kv heads) x head_dim", (heads + 2 * kv) * hd)}
    for t in ckpt:
        m = _LAYER.search(t.name)
        part = t.name[m.end():] if m and m.group(1) == "0" else ""
        if part in expected_rows and t.shape and t.shape[0] != expected_rows[part][1]:
            what, rows = expected_rows[part]
            raise CheckpointError(f"{t.name} has {t.shape[0]} rows but config.json's {what} gives {rows}",
                                  "the attention heads in config.json do not match the weights: fix config.json")
    layers = {int(m.group(1)) for t in ckpt if (m := _LAYER.search(t.name))}
    if layers and max(layers) + 1 != sizes["num_hidden_layers"]:
        raise CheckpointError(f"the weights have {max(layers) + 1} layers but config.json says "
                              f"num_hidden_layers={sizes['num_hidden_layers']}",
                              "the config does not belong to these weights")
