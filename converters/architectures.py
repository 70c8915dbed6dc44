"""The architecture registry: one frozen row per supported Hugging Face architecture.

A row says which GGUF architecture it becomes and which of the few real differences between
decoder-only transformers apply. Tensor *names* come from gguf-py's TensorNameMap; only the value
transforms that llama.cpp expects live here. Adding an architecture is adding a row (plus, if it
has a genuinely new quirk, one field).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gguf

from edge_run.runtime.errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class ArchSpec:
    key: str  # edge-run's name, stored in manifests
    gguf_arch: gguf.MODEL_ARCH
    # HF stores Q/K rows in "rotate half" order; llama.cpp's llama graph uses interleaved (GPT-J
    # style) rope, so llama-family Q/K weights (and biases) are permuted back. NEOX-rope families
    # (qwen2/3, gemma3) keep HF order.
    permute_qk: bool = False
    # Gemma's RMSNorm computes x * (1 + w); llama.cpp computes x * w, so w + 1 is stored.
    norm_offset: float = 0.0
    # extra GGUF hyper-parameters beyond the common set: name of a function in _EXTRA_HPARAMS
    extra_hparams: tuple[str, ...] = ()
    # HF tensor-name fragments that are not weights (buffers) and are skipped
    skip: tuple[str, ...] = ("rotary_emb.inv_freq",)
    # onnx graph builder options for the same architecture (used by the ONNX converter)
    onnx: dict[str, Any] = field(default_factory=dict)


ARCHITECTURES: dict[str, ArchSpec] = {
    "LlamaForCausalLM": ArchSpec("llama", gguf.MODEL_ARCH.LLAMA, permute_qk=True, extra_hparams=("llama3_rope",)),
    "MistralForCausalLM": ArchSpec("mistral", gguf.MODEL_ARCH.LLAMA, permute_qk=True,
                                   onnx={"window_all_layers": True}),
    "Qwen2ForCausalLM": ArchSpec("qwen2", gguf.MODEL_ARCH.QWEN2),
    "Qwen3ForCausalLM": ArchSpec("qwen3", gguf.MODEL_ARCH.QWEN3, onnx={"qk_norm": True}),
    "Gemma3ForCausalLM": ArchSpec("gemma3", gguf.MODEL_ARCH.GEMMA3, norm_offset=1.0,
                                  extra_hparams=("sliding_window",),
                                  onnx={"qk_norm": True, "sandwich_norms": True, "embed_scale": "sqrt_hidden",
                                        "attn_scale_key": "query_pre_attn_scalar"}),
}


def supported() -> list[str]:
    return sorted(ARCHITECTURES)


def lookup(config: dict[str, Any]) -> tuple[str, ArchSpec]:
    archs = config.get("architectures") or []
    if not isinstance(archs, list) or not archs:
        raise UnsupportedArchitectureError(
            "config.json names no architecture (no 'architectures' list)",
            f"edge-run supports: {', '.join(supported())}")
    name = archs[0]
    spec = ARCHITECTURES.get(name)
    if spec is None:
        raise UnsupportedArchitectureError(
            f"architecture {name!r} is not supported", f"edge-run supports: {', '.join(supported())}")
    return name, spec


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
    params = cfg.get("rope_parameters") or cfg.get("rope_scaling")
    if isinstance(params, dict) and layer_type in params and isinstance(params[layer_type], dict):
        params = params[layer_type]
    if not isinstance(params, dict):
        return None
    kind = params.get("rope_type", params.get("type", "default"))
    return None if kind == "default" else {**params, "rope_type": kind}
