"""The architecture registry: one frozen row per supported Hugging Face architecture.

A row says which GGUF architecture it becomes and which of the few real differences between
decoder-only transformers apply. Tensor *names* come from gguf-py's TensorNameMap; the value
transforms llama.cpp expects, the rope scaling types its graph reads, stacked (fused) projections and
the ONNX builder's options are typed fields of the row. Adding an architecture is adding a row (plus,
if it has a genuinely new quirk, one field).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import gguf

from edge_run.converters.rope import rope_scaling, rope_theta
from edge_run.core.errors import UnsupportedArchitectureError

__all__ = ["ARCHITECTURES", "ArchSpec", "FusedTensor", "OnnxHooks", "lookup", "rope_scaling", "rope_theta",
           "supported"]


@dataclass(frozen=True)
class FusedTensor:
    """One HF matrix that stacks several projections by rows, and the names those projections have in
    architectures that store them apart. The ONNX builder reads each part as a row range of the fused
    tensor (so per-projection quantization still works); GGUF keeps the tensor fused when llama.cpp's
    graph for the architecture expects it so (Phi-3's attn_qkv, ffn_up holding gate and up).

        qkv_proj.weight  [q_size + 2 * kv_size, hidden]  =  q_proj rows | k_proj rows | v_proj rows
        gate_up_proj     [2 * intermediate, hidden]      =  gate_proj rows | up_proj rows
    """

    fused: str  # within a layer, e.g. "self_attn.qkv_proj.weight"
    parts: tuple[tuple[str, str], ...]  # (part name within a layer, size key: "q" | "kv" | "ffn")


@dataclass(frozen=True)
class OnnxHooks:
    """What the ONNX graph builder does differently for an architecture."""

    qk_norm: bool = False  # per-head RMS norm of q and k (Qwen 3, Gemma 3)
    sandwich_norms: bool = False  # extra post-attention / post-MLP norms (Gemma 3)
    window_all_layers: bool = False  # config's sliding_window applies to every layer (Mistral, Phi-3)
    embed_scale: Literal["none", "sqrt_hidden"] = "none"  # embeddings multiplied by sqrt(hidden) (Gemma)
    attn_scale_key: str | None = None  # config key whose ^-0.5 is the attention scale (else head_dim^-0.5)


@dataclass(frozen=True)
class ArchSpec:
    key: str  # edge-run's name, stored in manifests
    gguf_arch: gguf.MODEL_ARCH
    # HF stores Q/K rows in "rotate half" order; llama.cpp's llama graph uses interleaved (GPT-J
    # style) rope, so llama-family Q/K weights (and biases) are permuted back. NEOX-rope families
    # (qwen2/3, gemma3, phi3) keep HF order.
    permute_qk: bool = False
    # Gemma's RMSNorm computes x * (1 + w); llama.cpp computes x * w, so w + 1 is stored.
    norm_offset: float = 0.0
    # extra GGUF hyper-parameters beyond the common set: names of functions in gguf/hparams.py EXTRA_HPARAMS
    extra_hparams: tuple[str, ...] = ()
    # rope scaling types (rope.ROPE_VARIANTS keys) llama.cpp's graph for gguf_arch reads
    rope_types: tuple[str, ...] = ("linear",)
    # HF tensor-name fragments that are not weights (buffers) and are skipped
    skip: tuple[str, ...] = ("rotary_emb.inv_freq",)
    # stacked projections in the checkpoint (names of the parts as other architectures spell them)
    fused: tuple[FusedTensor, ...] = ()
    onnx: OnnxHooks = field(default_factory=OnnxHooks)


PHI3_FUSED = (
    FusedTensor("self_attn.qkv_proj.weight", (("self_attn.q_proj.weight", "q"), ("self_attn.k_proj.weight", "kv"),
                                               ("self_attn.v_proj.weight", "kv"))),
    FusedTensor("mlp.gate_up_proj.weight", (("mlp.gate_proj.weight", "ffn"), ("mlp.up_proj.weight", "ffn"))),
)

ARCHITECTURES: dict[str, ArchSpec] = {
    "LlamaForCausalLM": ArchSpec("llama", gguf.MODEL_ARCH.LLAMA, permute_qk=True, rope_types=("linear", "llama3")),
    "MistralForCausalLM": ArchSpec("mistral", gguf.MODEL_ARCH.LLAMA, permute_qk=True, rope_types=("linear", "llama3"),
                                   onnx=OnnxHooks(window_all_layers=True)),
    "Qwen2ForCausalLM": ArchSpec("qwen2", gguf.MODEL_ARCH.QWEN2),
    "Qwen3ForCausalLM": ArchSpec("qwen3", gguf.MODEL_ARCH.QWEN3, onnx=OnnxHooks(qk_norm=True)),
    "Gemma3ForCausalLM": ArchSpec("gemma3", gguf.MODEL_ARCH.GEMMA3, norm_offset=1.0,
                                  extra_hparams=("sliding_window",),
                                  onnx=OnnxHooks(qk_norm=True, sandwich_norms=True, embed_scale="sqrt_hidden",
                                                 attn_scale_key="query_pre_attn_scalar")),
    "Phi3ForCausalLM": ArchSpec("phi3", gguf.MODEL_ARCH.PHI3, extra_hparams=("phi3_window",),
                                rope_types=("longrope", "su"), fused=PHI3_FUSED,
                                onnx=OnnxHooks(window_all_layers=True)),
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
