"""Quantization loss of a pairing, predicted from its real tensor-type mix and the model's size.

    loss (nats per token over the same model's F16) =
        (N_block / 1e8) ** -GAMMA  *  ( sum over GGML types t of share_t * COST[t]  +  OUTPUT_WEIGHT * COST[t_out] )

    share_t  fraction of the block weights (the 2-D tensors of blk.*) stored as type t
    t_out    type of the output projection (the lm head, or the token embedding when they are tied)
    N_block  number of block weights (embeddings left out: a 270M model with a 168M embedding is a 100M model here)

The mix is the one llama.cpp really makes for the model's shapes (src/edge_run/runtime/estimate/quant_mix.py: k-quants
fall
back to Q5_0 / Q5_1 / Q8_0 / Q4_0 on rows not divisible by 256), so a Q5_K_M that is mostly Q5_1 on a
576-wide model is predicted as Q5_1, not as Q5_K. COST / GAMMA / OUTPUT_WEIGHT are fitted by
tools/quant_loss_fit.py on measured zoo rows (results/tradeoff.json) and llama.cpp's published
Llama-3-8B deltas; its leave-one-model-out error is in results/quant_loss_fit.json and the README.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import gguf

from edge_run.runtime.estimate.gguf import ModelShape, TensorInfo
from edge_run.runtime.estimate.quant_mix import QUANT_MIX, tensor_type

# GGML type -> loss (nats/token) of a 1e8-block-weight model stored entirely in that type (fitted, see above)
COST: dict[str, float] = {
    "F32": 0.0, "F16": 0.0, "BF16": 0.0,
    "Q8_0": 0.002916, "Q6_K": 0.01748, "Q5_K": 0.038267, "Q5_1": 0.044816, "Q5_0": 0.060041, "Q4_K": 0.113992,
    "Q4_1": 0.249723, "Q4_0": 0.256894, "Q3_K": 0.60167, "Q2_K": 2.189677
}
GAMMA = 0.3
OUTPUT_WEIGHT = 0.0
BLOCK_SCALE = 1e8


@dataclass(frozen=True)
class TypeMix:
    shares: dict[str, float]  # GGML type -> fraction of block weights
    output_type: str
    n_block: int


def mix_of(tensors: Iterable[TensorInfo]) -> TypeMix:
    counts: dict[str, int] = {}
    output_type = "F16"
    tied = True
    items = list(tensors)
    for t in items:
        if t.name == "output.weight":
            tied = False
    for t in items:
        if t.name == "output.weight" or (tied and t.name == "token_embd.weight"):
            output_type = t.type
        elif t.name.startswith("blk.") and t.ne1 > 1 and t.ne0 > 1:
            counts[t.type] = counts.get(t.type, 0) + t.ne0 * t.ne1
    n_block = sum(counts.values())
    return TypeMix({k: v / n_block for k, v in counts.items()} if n_block else {}, output_type, n_block)


def retyped(shape: ModelShape, ftype: str) -> tuple[TensorInfo, ...]:
    """The model's tensors with the types llama.cpp would give them under file type ``ftype``."""
    has_output = any(t.name == "output.weight" for t in shape.tensors)
    n_gqa = shape.n_head // max(shape.n_head_kv, 1)  # Q2_K's attn_v rule depends on it, as in estimate.py
    return tuple(TensorInfo(t.name, "F32" if t.ne1 <= 1 else tensor_type(ftype, t.name, t.ne0, shape.n_layer,
                                                                          has_output, n_gqa), t.ne0, t.ne1, 0)
                 for t in shape.tensors)


def _bits(type_name: str) -> float:
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
    return 8.0 * size / block


def type_cost(type_name: str, cost: dict[str, float] = COST) -> float:
    """COST of a type; a type not in the table (IQ*, TQ*) is interpolated from its bits per weight
    (log-linear between the fitted types nearest in bits)."""
    if type_name in cost:
        return cost[type_name]
    b = _bits(type_name)
    known = sorted((_bits(t), c) for t, c in cost.items() if c > 0)
    lo = max((k for k in known if k[0] <= b), default=known[0])
    hi = min((k for k in known if k[0] >= b), default=known[-1])
    if hi[0] == lo[0]:
        return hi[1]
    f = (b - lo[0]) / (hi[0] - lo[0])
    return math.exp(math.log(lo[1]) + f * (math.log(hi[1]) - math.log(lo[1])))


def loss_nats(mix: TypeMix, cost: dict[str, float] = COST, gamma: float = GAMMA,
              output_weight: float = OUTPUT_WEIGHT) -> float:
    if not mix.n_block:
        return 0.0
    inner = sum(share * type_cost(t, cost) for t, share in mix.shares.items())
    inner += output_weight * type_cost(mix.output_type, cost)
    return (mix.n_block / BLOCK_SCALE) ** -gamma * inner


def predicted_loss(shape: ModelShape, ftype: str | None = None) -> float:
    """Loss over F16 of ``shape`` as it is (``ftype`` None: the types in its tensor table) or as it would
    be under file type ``ftype``."""
    if ftype is not None and ftype.upper() in QUANT_MIX:
        return loss_nats(mix_of(retyped(shape, ftype.upper())))
    return loss_nats(mix_of(shape.tensors))
