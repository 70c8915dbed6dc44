"""The decoder graph, built node by node from the checkpoint's weights (no torch, no tracing).

Graph inputs / outputs (onnxruntime-genai's naming; B batch, S new tokens, P past, T = P + S):

    input_ids                 int64 [B, S]
    attention_mask            int64 [B, T]           1 for every real token, past and new
    past_key_values.N.key     f32   [B, kv, P, D]    (and .value) for every layer N
    logits_to_keep            int64 []               optional, default 0 = every position; 1 = only the
                                                     last (prefill then skips lm_head for the others)
    logits                    f32   [B, S or keep, vocab]
    present.N.key             f32   [B, kv, T, D]    (and .value)

With past and present bound to one preallocated [B, kv, max_len, D] buffer, GroupQueryAttention
appends in place (no per-token copy of the cache); seqlens_k says how much of it is valid.

One layer (``sandwich`` norms are Gemma 3's extra post-attention / post-MLP norms):

    residual ─┬──────────────────────────────────────────────┐
              │                                              │
    SkipSimplifiedLayerNorm(input_layernorm) ──► attn ──► [post_attention_layernorm] ──►
    SkipSimplifiedLayerNorm(pre-MLP norm, skip=residual) ─┬─► normed ─► mlp ─► [post_feedforward_layernorm]
                                                          └─► residual (input + skip)   ─► next layer's skip
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from onnx import TensorProto

from edge_run.converters.checkpoint import Checkpoint, LazyTensor
from edge_run.converters.onnx.graph import MS_DOMAIN, Graph
from edge_run.converters.onnx.hparams import DecoderConfig
from edge_run.converters.onnx.quantize import PackedShape, QuantConfig, quantize_rows, row_chunks
from edge_run.converters.onnx.search import search_rows
from edge_run.core.errors import CheckpointError

F32 = TensorProto.FLOAT
I64 = TensorProto.INT64
LayerProgress = Callable[[int, int], None]


def past_name(layer: int, kind: str) -> str:
    return f"past_key_values.{layer}.{kind}"


def present_name(layer: int, kind: str) -> str:
    return f"present.{layer}.{kind}"


@dataclass
class Weights:
    """The checkpoint's tensors under their HF names, with the decoder prefix found once."""

    ckpt: Checkpoint
    prefix: str = field(init=False)
    parts: dict[str, LazyTensor] = field(init=False, default_factory=dict)  # row ranges of fused tensors

    def __post_init__(self) -> None:
        hits = [n[: -len("embed_tokens.weight")] for n in self.ckpt.tensors if n.endswith("embed_tokens.weight")]
        if not hits:
            raise CheckpointError("the checkpoint has no embed_tokens.weight tensor",
                                  "is this a decoder-only language model checkpoint?")
        self.prefix = min(hits, key=len)

    def get(self, name: str, model_prefix: bool = True) -> LazyTensor:
        full = self.prefix + name if model_prefix else name
        t = self.ckpt.tensors.get(full) or self.parts.get(full)
        if t is None:
            raise CheckpointError(f"tensor {full!r} is missing from the checkpoint",
                                  "the weights do not match config.json's architecture")
        return t

    def maybe(self, name: str) -> LazyTensor | None:
        return self.ckpt.tensors.get(self.prefix + name) or self.parts.get(self.prefix + name)

    def split_fused(self, cfg: DecoderConfig) -> None:
        """Expose each part of a stacked projection (ArchSpec.fused) under the name it has in architectures
        that store it apart, as a row range of the stacked tensor: ``layers.3.self_attn.k_proj.weight`` =
        rows [q_size, q_size + kv_size) of ``layers.3.self_attn.qkv_proj.weight``."""
        sizes = {"q": cfg.q_size, "kv": cfg.kv_size, "ffn": cfg.intermediate}
        for i in range(cfg.n_layers):
            for f in cfg.fused:
                stacked = self.get(f"layers.{i}.{f.fused}")
                start = 0
                for part, size_key in f.parts:
                    stop = start + sizes[size_key]
                    name = f"{self.prefix}layers.{i}.{part}"
                    self.parts[name] = stacked.row_range(start, stop, name)
                    start = stop
                if start != stacked.shape[0]:
                    raise CheckpointError(f"tensor {stacked.name!r} has {stacked.shape[0]} rows but config.json's "
                                          f"sizes add up to {start}", "the config does not belong to these weights")

    def vector(self, name: str, offset: float = 0.0) -> np.ndarray:
        return np.asarray(self.get(name).numpy(), dtype=np.float32) + np.float32(offset)

    @property
    def lm_head(self) -> LazyTensor | None:
        return self.ckpt.tensors.get("lm_head.weight")


@dataclass(frozen=True)
class Unit:
    """One stored weight matrix (a MatMul's, or the embedding table's): what a budget mix gives bits to."""

    key: str  # initializer name prefix, e.g. model.layers.3.attn.qkv_proj
    tensors: tuple[LazyTensor, ...]  # row-concatenated checkpoint tensors
    input: str | None  # the value entering the MatMul (None: only gathered)


class DecoderBuilder:
    """``importance``: checkpoint tensor name -> per-input-column weights for the scale search;
    ``plan``: unit key -> bits, overriding the scheme's rules (a budget mix); ``packed4``: unit key -> .npz
    of (B, scales, zp) already searched at 4 bits with this importance and layout (calibrate.py)."""

    def __init__(self, g: Graph, cfg: DecoderConfig, weights: Weights, quant: QuantConfig,
                 importance: Mapping[str, np.ndarray] | None = None, plan: Mapping[str, int] | None = None,
                 packed4: Mapping[str, Path] | None = None) -> None:
        self.g, self.cfg, self.w, self.q = g, cfg, weights, quant
        self.importance = importance or {}
        self.plan = plan or {}
        self.packed4 = packed4 or {}
        weights.split_fused(cfg)
        self.linears: dict[str, int | None] = {}  # node path -> bits (None = f32), for the manifest
        self.units: dict[str, Unit] = {}
        self._packed: dict[str, tuple[list[str], PackedShape]] = {}

    def _bits(self, key: str, role: str, layer: int = -1) -> int | None:
        if self.q.scheme.default_bits is not None and key in self.plan:
            return self.plan[key]
        return self.q.scheme.bits(role, layer, self.cfg.n_layers)

    # -- weights --------------------------------------------------------------------------------
    def _rows(self, tensors: list[LazyTensor]) -> Iterator[np.ndarray]:
        for t in tensors:
            if len(t.shape) != 2 or t.shape[1] != tensors[0].shape[1]:
                raise CheckpointError(f"tensor {t.name!r} has shape {list(t.shape)}, expected a matrix with "
                                      f"{tensors[0].shape[1]} columns")
            for a, b in row_chunks(t.shape[0], t.shape[1]):
                yield t.read_rows(a, b)

    def _quantized(self, key: str, tensors: list[LazyTensor], bits: int) -> tuple[list[str], PackedShape]:
        """Write B / scales / [zp] for the row-concatenation of ``tensors``; return their names."""
        if key in self._packed:
            return self._packed[key]
        n = sum(t.shape[0] for t in tensors)
        block, symmetric = self.q.layout(bits, tensors[0].shape[1])
        shape = PackedShape(n, tensors[0].shape[1], bits, block)
        scales: list[np.ndarray] = []
        zps: list[np.ndarray] = []
        importance = self.importance.get(tensors[0].name)

        def packed_chunks() -> Iterator[np.ndarray]:
            if bits == 4 and key in self.packed4:
                with np.load(self.packed4[key]) as saved:
                    packed, s, z = (saved[f"arr_{i}"] for i in range(3))
                scales.append(s)
                zps.append(z)
                yield packed
                return
            for rows in self._rows(tensors):
                if self.q.scheme.search:
                    packed, s, z = search_rows(rows, bits, block, symmetric, importance)
                else:
                    packed, s, z = quantize_rows(rows, bits, block, symmetric)
                scales.append(s)
                zps.append(z)
                yield packed

        names = [self.g.initializer_chunks(f"{key}.weight_Q{bits}", np.uint8, (n, shape.k_blocks, shape.blob),
                                           packed_chunks())]
        names.append(self.g.initializer(f"{key}.weight_scales", np.concatenate(scales)))
        if not symmetric:
            names.append(self.g.initializer(f"{key}.weight_zp", np.concatenate(zps)))
        self._packed[key] = (names, shape)
        return names, shape

    def _float(self, key: str, tensors: list[LazyTensor]) -> str:
        name = f"{key}.weight"
        if name in self._packed:
            return self._packed[name][0][0]
        n = sum(t.shape[0] for t in tensors)
        self.g.initializer_chunks(name, np.float32, (n, tensors[0].shape[1]), self._rows(tensors))
        self._packed[name] = ([name], PackedShape(n, tensors[0].shape[1], 32, 1))
        return name

    # -- building blocks ------------------------------------------------------------------------
    def linear(self, x: str, path: str, key: str, tensors: list[LazyTensor], bits: int | None,
               biases: list[LazyTensor] | None = None, source: str | None = None) -> str:
        """y = x W^T (+ b) for W the row-concatenation of ``tensors`` (e.g. q, k, v); ``source``: the value
        whose activation statistics stand for x's (default x itself)."""
        self.linears[path] = bits
        self.units[key] = Unit(key, tuple(tensors), source or x)
        if bits is None:
            w = self._float(key, tensors)
            y = self.g.op("FusedMatMul", [x, w], f"{path}/MatMul", domain=MS_DOMAIN, transB=1)
        else:
            names, shape = self._quantized(key, tensors, bits)
            y = self.g.op("MatMulNBits", [x, *names], f"{path}/MatMul", domain=MS_DOMAIN, K=shape.k, N=shape.n,
                          bits=bits, block_size=shape.block, accuracy_level=self.q.accuracy_level)
        if biases:
            b = np.concatenate([np.asarray(t.numpy(), dtype=np.float32) for t in biases])
            y = self.g.op("Add", [y, self.g.initializer(f"{key}.bias", b)], f"{path}/Add")
        return y

    def norm(self, x: str, path: str, weight: str) -> str:
        gamma = self.g.initializer(weight, self.w.vector(weight, self.cfg.norm_offset))
        return self.g.node("SimplifiedLayerNormalization", [x, gamma], f"{path}/SimplifiedLayerNormalization",
                           n_out=1, axis=-1, epsilon=self.cfg.eps, stash_type=1)[0]

    def skip_norm(self, x: str, skip: str, path: str, weight: str) -> tuple[str, str]:
        """(normalized x + skip, x + skip)."""
        gamma = self.g.initializer(weight, self.w.vector(weight, self.cfg.norm_offset))
        out = self.g.node("SkipSimplifiedLayerNormalization", [x, skip, gamma],
                          f"{path}/SkipSimplifiedLayerNormalization", n_out=4, domain=MS_DOMAIN,
                          epsilon=self.cfg.eps)
        return out[0], out[3]

    def head_norm(self, x: str, path: str, weight: str) -> str:
        """RMS-normalize each head of x [B, S, H*D] over D (Qwen 3 / Gemma 3 q_norm, k_norm)."""
        heads = self.g.op("Reshape", [x, self.g.const([0, 0, -1, self.cfg.head_dim])], f"{path}/Reshape")
        normed = self.norm(heads, path, weight)
        return self.g.op("Reshape", [normed, self.g.const([0, 0, -1])], f"{path}/Reshape_1")

    # -- the model ------------------------------------------------------------------------------
    def inputs(self) -> tuple[str, str, str]:
        """Graph inputs, and (input_ids, seqlens_k, total_sequence_length) for attention:

            attention_mask ─► ReduceSum(axis 1) ─► Sub 1 ─► Cast int32 ─► seqlens_k [B]
            attention_mask ─► Shape ─► Gather(1) ─► Cast int32 ──────────► total_sequence_length []
        """
        c, g = self.cfg, self.g
        ids = g.add_input("input_ids", I64, ["batch_size", "sequence_length"])
        mask = g.add_input("attention_mask", I64, ["batch_size", "total_sequence_length"])
        for i in range(c.n_layers):
            for kind in ("key", "value"):
                g.add_input(past_name(i, kind), F32, ["batch_size", c.n_kv_heads, "past_sequence_length", c.head_dim])
        base = "/model/attn_mask_reformat"
        total = g.op("ReduceSum", [mask, g.const([1])], f"{base}/ReduceSum", keepdims=0)
        seqlens = g.op("Sub", [total, g.const(1)], f"{base}/Sub")
        seqlens = g.op("Cast", [seqlens], f"{base}/Cast", to=TensorProto.INT32)
        shape = g.op("Shape", [mask], f"{base}/Shape")
        length = g.op("Gather", [shape, g.const(1)], f"{base}/Gather", axis=0)
        length = g.op("Cast", [length], f"{base}/Cast_1", to=TensorProto.INT32)
        return ids, seqlens, length

    def embedding(self, ids: str) -> str:
        """input_ids ─► Gather / GatherBlockQuantized (shares lm_head's bytes when tied) ─► [× sqrt(hidden)]"""
        c, g = self.cfg, self.g
        embed = self.w.get("embed_tokens.weight")
        tied = self.w.lm_head is None
        key = "lm_head" if tied else "model.embed_tokens"
        bits = self._bits(key, "lm_head" if tied else "embed")
        self.units.setdefault(key, Unit(key, (embed,), None))
        if bits is None:
            x = g.op("Gather", [self._float(key, [embed]), ids], "/model/embed_tokens/Gather", axis=0)
        else:
            names, shape = self._quantized(key, [embed], bits)
            flat = g.op("Reshape", [names[0], g.const([shape.n, shape.k_blocks * shape.blob])],
                        "/model/embed_tokens/Reshape")
            x = g.op("GatherBlockQuantized", [flat, ids, *names[1:]], "/model/embed_tokens/GatherBlockQuantized",
                     domain=MS_DOMAIN, bits=bits, block_size=shape.block, gather_axis=0, quantize_axis=1)
            if shape.k_blocks * shape.block != shape.k:
                x = g.op("Slice", [x, g.const([0]), g.const([shape.k]), g.const([-1])], "/model/embed_tokens/Slice")
        if c.embed_scale != 1.0:
            x = g.op("Mul", [x, g.const(np.float32(c.embed_scale), "float32")], "/model/embed_tokens/Mul")
        return x

    def attention(self, i: int, x: str, seqlens: str, total: str, rope: tuple[str, str]) -> str:
        """x ─► q,k,v projections (one packed MatMul when they share bits; Split when q/k need norms)
        ─► [q_norm, k_norm] ─► GroupQueryAttention(rotary from cos/sin caches, KV cache in place) ─► o_proj"""
        c, w = self.cfg, self.w
        p, base = f"/model/layers.{i}/attn", f"model.layers.{i}.attn"
        names = ("q_proj", "k_proj", "v_proj")
        roles = ("attn_q", "attn_k", "attn_v")
        mats = [w.get(f"layers.{i}.self_attn.{n}.weight") for n in names]
        biases = [w.maybe(f"layers.{i}.self_attn.{n}.bias") for n in names]
        bits = [self._bits(f"{base}.qkv_proj", r, i) for r in roles]
        if len(set(bits)) == 1:
            qkv = self.linear(x, f"{p}/qkv_proj", f"{base}.qkv_proj", mats, bits[0],
                              [b for b in biases if b is not None] if any(biases) else None)
            q, k, v = qkv, "", ""
            if c.qk_norm:  # the norms need q and k apart: one MatMul, then Split
                q, k, v = self.g.node("Split", [qkv, self.g.const([c.q_size, c.kv_size, c.kv_size])],
                                      f"{p}/qkv_proj/Split", n_out=3, axis=-1)
        else:
            q, k, v = (self.linear(x, f"{p}/{n}", f"{base}.{n}", [m], b, [bias] if bias is not None else None)
                       for n, m, b, bias in zip(names, mats, bits, biases, strict=True))
        if c.qk_norm:
            q = self.head_norm(q, f"{p}/q_norm", f"layers.{i}.self_attn.q_norm.weight")
            k = self.head_norm(k, f"{p}/k_norm", f"layers.{i}.self_attn.k_norm.weight")
        outs = [f"{p}/GroupQueryAttention/output_0", present_name(i, "key"), present_name(i, "value")]
        self.g.node("GroupQueryAttention", [q, k, v, past_name(i, "key"), past_name(i, "value"), seqlens, total,
                                            *rope], f"{p}/GroupQueryAttention", domain=MS_DOMAIN, outputs=outs,
                    num_heads=c.n_heads, kv_num_heads=c.n_kv_heads, scale=c.attn_scale, do_rotary=1,
                    rotary_interleaved=0, local_window_size=c.windows[i], softcap=c.attn_softcap)
        o = w.get(f"layers.{i}.self_attn.o_proj.weight")
        return self.linear(outs[0], f"{p}/o_proj", f"{base}.o_proj", [o], self._bits(f"{base}.o_proj", "attn_o", i),
                           [b] if (b := w.maybe(f"layers.{i}.self_attn.o_proj.bias")) is not None else None)

    def mlp(self, i: int, x: str) -> str:
        """x ─► gate ─► act ─┐
           x ─► up ──────────┴─► Mul ─► down"""
        c, g = self.cfg, self.g
        p, base = f"/model/layers.{i}/mlp", f"model.layers.{i}.mlp"
        proj = {n: self.linear(x, f"{p}/{n}_proj", f"{base}.{n}_proj", [self.w.get(f"layers.{i}.mlp.{n}_proj.weight")],
                               self._bits(f"{base}.{n}_proj", f"ffn_{n}", i)) for n in ("gate", "up")}
        act = ACTIVATIONS[c.activation](g, proj["gate"], f"{p}/act_fn")
        h = g.op("Mul", [act, proj["up"]], f"{p}/Mul")
        return self.linear(h, f"{p}/down_proj", f"{base}.down_proj", [self.w.get(f"layers.{i}.mlp.down_proj.weight")],
                           self._bits(f"{base}.down_proj", "ffn_down", i))

    def rope_caches(self, total: str) -> dict[str, tuple[str, str]]:
        """cos/sin caches per layer type. With two sets (longrope), the long set applies once the total
        sequence is longer than the original context, as in transformers:

            total_sequence_length ─► Greater(switch_at) ─► If ─┬ then: cos/sin_cache.long
                                                               └ else: cos/sin_cache.short
        """
        g, out = self.g, {}
        for kind, rope in self.cfg.ropes.items():
            short = [g.initializer(f"{n}_cache.{kind}", a, weight=False)
                     for n, a in zip(("cos", "sin"), rope.caches(self.cfg.max_positions), strict=True)]
            if not rope.switch_at:
                out[kind] = (short[0], short[1])
                continue
            long = [g.initializer(f"{n}_cache.{kind}.long", a, weight=False)
                    for n, a in zip(("cos", "sin"), rope.caches(self.cfg.max_positions, True), strict=True)]
            p = f"/model/rotary_emb.{kind}"
            cond = g.op("Greater", [total, g.const(np.int32(rope.switch_at), "int32")], f"{p}/Greater")
            cos, sin = g.node("If", [cond], f"{p}/If", n_out=2,
                              then_branch=g.branch(f"{kind}_long", long), else_branch=g.branch(f"{kind}_short", short))
            out[kind] = (cos, sin)
        return out

    def build(self, progress: LayerProgress | None = None) -> None:
        c = self.cfg
        ids, seqlens, total = self.inputs()
        ropes = self.rope_caches(total)
        residual = self.embedding(ids)
        pending: str | None = None  # the last block's output, not yet added to the residual
        pre_mlp = "pre_feedforward_layernorm" if c.sandwich_norms else "post_attention_layernorm"
        for i in range(c.n_layers):
            p = f"/model/layers.{i}"
            if pending is None:
                h = self.norm(residual, f"{p}/input_layernorm", f"layers.{i}.input_layernorm.weight")
            else:
                h, residual = self.skip_norm(pending, residual, f"{p}/input_layernorm",
                                             f"layers.{i}.input_layernorm.weight")
            a = self.attention(i, h, seqlens, total, ropes[c.layer_types[i]])
            if c.sandwich_norms:
                a = self.norm(a, f"{p}/post_attention_layernorm", f"layers.{i}.post_attention_layernorm.weight")
            h, residual = self.skip_norm(a, residual, f"{p}/{pre_mlp}", f"layers.{i}.{pre_mlp}.weight")
            pending = self.mlp(i, h)
            if c.sandwich_norms:
                pending = self.norm(pending, f"{p}/post_feedforward_layernorm",
                                    f"layers.{i}.post_feedforward_layernorm.weight")
            if progress:
                progress(i + 1, c.n_layers)
        assert pending is not None
        h, _ = self.skip_norm(pending, residual, "/model/norm", "norm.weight")
        self.lm_head(h)

    def lm_head(self, h: str) -> None:
        """normed ─► Slice(last ``logits_to_keep`` positions, all when 0) ─► lm_head ─► [softcap] ─► logits

        (onnxruntime runs every node of the graph whatever outputs are asked for, so the cut has to
        happen inside the graph for a prefill to skip the vocabulary projection of the prompt.)"""
        c, g = self.cfg, self.g
        head = self.w.lm_head
        tensor = head if head is not None else self.w.get("embed_tokens.weight")
        keep = g.add_input_with_default("logits_to_keep", np.array(0, dtype=np.int64))
        start = g.op("Neg", [g.op("Unsqueeze", [keep, g.const([0])], "/lm_head/Unsqueeze")], "/lm_head/Neg")
        cut = g.op("Slice", [h, start, g.const([np.iinfo(np.int64).max]), g.const([1])], "/lm_head/Slice")
        # statistics from every position (calibration runs keep one logit row)
        y = self.linear(cut, "/lm_head", "lm_head", [tensor], self._bits("lm_head", "lm_head"), source=h)
        if c.final_softcap:
            cap = g.const(np.float32(c.final_softcap), "float32")
            y = g.op("Mul", [g.op("Tanh", [g.op("Div", [y, cap], "/lm_head/Div")], "/lm_head/Tanh"), cap],
                     "/lm_head/Mul")
        g.node("Identity", [y], "/lm_head/Identity", outputs=["logits"])
        g.add_output("logits", F32, ["batch_size", "logits_length", c.vocab])
        for i in range(c.n_layers):
            for kind in ("key", "value"):
                g.add_output(present_name(i, kind), F32,
                             ["batch_size", c.n_kv_heads, "total_sequence_length", c.head_dim])


def _silu(g: Graph, x: str, path: str) -> str:
    return g.op("Mul", [x, g.op("Sigmoid", [x], f"{path}/Sigmoid")], f"{path}/Mul")


def _gelu_tanh(g: Graph, x: str, path: str) -> str:
    return g.op("FastGelu", [x], f"{path}/FastGelu", domain=MS_DOMAIN)


def _gelu(g: Graph, x: str, path: str) -> str:
    return g.op("Gelu", [x], f"{path}/Gelu")


ACTIVATIONS: dict[str, Callable[[Graph, str, str], str]] = {
    "silu": _silu, "gelu_tanh": _gelu_tanh, "gelu": _gelu,
}
