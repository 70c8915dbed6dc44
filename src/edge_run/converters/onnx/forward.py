"""The decoder the builder writes (builder.py), computed in numpy one layer at a time, for calibration: a
layer's weights are read, used for every sequence that passes through it, and dropped, so memory holds one
layer plus the sequences' hidden states, never the model.

    h = embed(ids) [* embed_scale]
    per layer i:  a = attn(norm_in(h)) [-> post_attn_norm];  h += a
                  m = mlp(norm_pre_mlp(h)) [-> post_mlp_norm]; h += m
    logits = lm_head(norm(h)) [softcapped]

The operators mirror onnxruntime's (SimplifiedLayerNormalization; GroupQueryAttention with rotate-half
rotary over the first rotary_dim dimensions, local window, softcap; Gelu / FastGelu / SiLU), in float32,
for one sequence of at most ``positions`` tokens without a cache. ``mats`` maps a matrix's checkpoint role
(q k v o gate up down) to the float weights a caller wants used, the checkpoint's or a quantized copy,
transposed to [in, out] and C-contiguous (OpenBLAS multiplies x @ W^T of a row-major W at a third of the
speed); ``observe`` sees every MatMul's input under its unit key (calibrate.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np

from edge_run.converters.onnx.builder import Weights
from edge_run.converters.onnx.hparams import DecoderConfig

Observe = Callable[[str, np.ndarray], None]
ATTN_ROLES = ("q", "k", "v", "o")
MLP_ROLES = ("gate", "up", "down")


# OpenBLAS builds' thread-count setters (numpy's wheels prefix and suffix the names)
_BLAS_THREADS = (("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
                 ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
                 ("openblas_get_num_threads", "openblas_set_num_threads"))


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Run numpy's OpenBLAS on one thread (restored after): the calibration's matrices are small, and on a
    loaded machine OpenBLAS's threads spin-wait for each other (measured on 2 busy cores: 3.6x the CPU time
    and 3.7x the wall time of one thread). A no-op where the library cannot be found (not Linux, not
    OpenBLAS)."""
    setters: list[tuple[Callable[[int], None], int]] = []
    maps = Path("/proc/self/maps")
    paths = sorted({line.split()[-1] for line in maps.read_text().splitlines()
                    if "openblas" in line.lower() and line.split()[-1].startswith("/")}) if maps.exists() else []
    for path in paths:
        with contextlib.suppress(OSError):
            lib = ctypes.CDLL(path)
            for get, set_ in _BLAS_THREADS:
                if hasattr(lib, get) and hasattr(lib, set_):
                    setters.append((getattr(lib, set_), int(getattr(lib, get)())))
                    getattr(lib, set_)(1)
                    break
    try:
        yield
    finally:
        for set_threads, n in setters:
            set_threads(n)


def tensor_name(i: int, role: str) -> str:
    """The checkpoint name (after the model prefix) of layer ``i``'s matrix ``role``."""
    return f"layers.{i}.self_attn.{role}_proj.weight" if role in ATTN_ROLES else f"layers.{i}.mlp.{role}_proj.weight"


def unit_key(i: int, role: str) -> str:
    """The builder's unit key (initializer prefix) of the matrix: q, k and v share one."""
    if role in ("q", "k", "v"):
        return f"model.layers.{i}.attn.qkv_proj"
    return f"model.layers.{i}.attn.o_proj" if role == "o" else f"model.layers.{i}.mlp.{role}_proj"


def _erf(x: np.ndarray) -> np.ndarray:
    """Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): numpy has no erf."""
    t = 1 / (1 + 0.3275911 * np.abs(x))
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return np.sign(x) * (1 - poly * np.exp(-x * x))


ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "silu": lambda x: x / (1 + np.exp(-x)),
    "gelu_tanh": lambda x: 0.5 * x * (1 + np.tanh(np.float32(math.sqrt(2 / math.pi)) * (x + 0.044715 * x * x * x))),
    "gelu": lambda x: 0.5 * x * (1 + _erf(x / np.float32(math.sqrt(2)))),
}


class Forward:
    def __init__(self, cfg: DecoderConfig, weights: Weights, positions: int) -> None:
        self.cfg, self.w = cfg, weights
        self.rope: dict[str, tuple[np.ndarray, np.ndarray]] = {
            kind: rope.caches(positions) for kind, rope in cfg.ropes.items()}

    def norm(self, x: np.ndarray, weight: str) -> np.ndarray:
        gamma = self.w.vector(weight, self.cfg.norm_offset)
        ms = np.mean(x * x, axis=-1, keepdims=True)
        return (x / np.sqrt(ms + np.float32(self.cfg.eps)) * gamma).astype(np.float32)

    def embed(self, ids: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """The embeddings of ``ids`` [T] (``rows``: the caller's own copy of those rows, e.g. quantized)."""
        if rows is None:
            t = self.w.get("embed_tokens.weight")
            rows = np.stack([t.read_rows(int(j), int(j) + 1)[0] for j in ids])
        return (rows * np.float32(self.cfg.embed_scale)).astype(np.float32)

    def layer_weights(self, i: int) -> dict[str, np.ndarray]:
        """Layer ``i``'s matrices as the checkpoint stores them, [out, in]."""
        tensors = {r: self.w.get(tensor_name(i, r)) for r in (*ATTN_ROLES, *MLP_ROLES)}
        return {r: np.asarray(t.read_rows(0, t.shape[0]), np.float32) for r, t in tensors.items()}

    def _bias(self, i: int, role: str) -> np.ndarray | None:
        b = self.w.maybe(f"layers.{i}.self_attn.{role}_proj.bias")
        return None if b is None else np.asarray(b.numpy(), np.float32)

    def _linear(self, x: np.ndarray, wt: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
        y = x @ wt
        return y + bias if bias is not None else y

    def _rotary(self, x: np.ndarray, kind: str) -> np.ndarray:
        """x [T, heads, D]: rotate-half over the first rotary_dim dimensions."""
        cos, sin = self.rope[kind]
        half = cos.shape[1]
        t = x.shape[0]
        c, s = cos[:t, None, :], sin[:t, None, :]
        x1, x2 = x[..., :half], x[..., half:2 * half]
        return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s, x[..., 2 * half:]], axis=-1)

    def attention(self, i: int, x: np.ndarray, mats: Mapping[str, np.ndarray], observe: Observe | None) -> np.ndarray:
        c = self.cfg
        t = x.shape[0]
        if observe:
            observe(unit_key(i, "q"), x)
        q = self._linear(x, mats["q"], self._bias(i, "q")).reshape(t, c.n_heads, c.head_dim)
        k = self._linear(x, mats["k"], self._bias(i, "k")).reshape(t, c.n_kv_heads, c.head_dim)
        v = self._linear(x, mats["v"], self._bias(i, "v")).reshape(t, c.n_kv_heads, c.head_dim)
        if c.qk_norm:
            q = self.norm(q, f"layers.{i}.self_attn.q_norm.weight")
            k = self.norm(k, f"layers.{i}.self_attn.k_norm.weight")
        kind = c.layer_types[i]
        q, k = self._rotary(q, kind), self._rotary(k, kind)
        group = c.n_heads // c.n_kv_heads
        k = np.ascontiguousarray(np.repeat(k, group, axis=1).transpose(1, 2, 0))  # [heads, D, T]
        v = np.ascontiguousarray(np.repeat(v, group, axis=1).transpose(1, 0, 2))  # [heads, T, D]
        scores = (np.ascontiguousarray(q.transpose(1, 0, 2)) @ k) * np.float32(c.attn_scale)  # [heads, Tq, Tk]
        if c.attn_softcap:
            scores = np.float32(c.attn_softcap) * np.tanh(scores / np.float32(c.attn_softcap))
        pos = np.arange(t)
        masked = pos[None, :] > pos[:, None]
        if c.windows[i] > 0:
            masked |= pos[None, :] <= pos[:, None] - c.windows[i]
        scores = np.where(masked[None], -np.inf, scores)
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        out = ((scores / scores.sum(axis=-1, keepdims=True)) @ v).transpose(1, 0, 2).reshape(t, c.q_size)
        out = out.astype(np.float32)
        if observe:
            observe(unit_key(i, "o"), out)
        return self._linear(out, mats["o"], self._bias(i, "o"))

    def mlp(self, i: int, x: np.ndarray, mats: Mapping[str, np.ndarray], observe: Observe | None) -> np.ndarray:
        if observe:
            observe(unit_key(i, "gate"), x)
        h = (ACTIVATIONS[self.cfg.activation](x @ mats["gate"]) * (x @ mats["up"])).astype(np.float32)
        if observe:
            observe(unit_key(i, "down"), h)
        return h @ mats["down"]

    def layer(self, i: int, h: np.ndarray, mats: Mapping[str, np.ndarray], observe: Observe | None = None
              ) -> np.ndarray:
        c = self.cfg
        a = self.attention(i, self.norm(h, f"layers.{i}.input_layernorm.weight"), mats, observe)
        if c.sandwich_norms:
            a = self.norm(a, f"layers.{i}.post_attention_layernorm.weight")
        h = h + a
        pre_mlp = "pre_feedforward_layernorm" if c.sandwich_norms else "post_attention_layernorm"
        m = self.mlp(i, self.norm(h, f"layers.{i}.{pre_mlp}.weight"), mats, observe)
        if c.sandwich_norms:
            m = self.norm(m, f"layers.{i}.post_feedforward_layernorm.weight")
        return (h + m).astype(np.float32)

    def final(self, h: np.ndarray) -> np.ndarray:
        return self.norm(h, "norm.weight")

    def logits(self, normed: np.ndarray, head_t: np.ndarray) -> np.ndarray:
        """Logits over vocabulary rows given transposed, ``head_t`` [hidden, V'] (softcapped as the graph does)."""
        z = normed @ head_t
        if self.cfg.final_softcap:
            cap = np.float32(self.cfg.final_softcap)
            z = cap * np.tanh(z / cap)
        return z
