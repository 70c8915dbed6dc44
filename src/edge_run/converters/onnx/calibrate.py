"""Activation statistics and sensitivities for the calibrated int4 schemes, from the checkpoint's float32
weights in a numpy forward pass one layer at a time (forward.py; no torch, no onnxruntime session, memory
of one layer):

    calibration text (Tiny Shakespeare by default: never the evaluation text, WikiText-2)
      ─► the checkpoint's tokenizer ─► IMPORTANCE_CHUNKS chunks of CTX tokens, the tokenizer's prefix first
    per layer i (its float32 weights read once):
      ─► the chunks through layer i; importance[tensor] = Σ x² / tokens over the input columns of each
         MatMul of the layer (lm_head: the final norm's output)
      ─► (sensitivity) each unit (one stored matrix) of the layer: its 4-bit scale search weighted by that
         importance (search.py), saved in the work folder for the artifact's builder (the search runs once
         per matrix), and err[unit] = Σ_k importance_k ‖ΔW[:, k]‖², the expected squared output error
      ─► (sensitivity) one SENSITIVITY_TOKENS sequence per group (a role in one of BANDS depth bands:
         attn.qkv_proj@0 .. mlp.down_proj@2; lm_head; an untied embedding) through layer i with that
         group's matrices at their 4-bit results, the others float
    KL[group] = mean KL(p_float ‖ p_group) over the positions, streamed over vocabulary row chunks
    sensitivity[unit] = KL[group] × err[unit] / Σ_{v in group} err[v]

One forward sequence per group (16 for a tied llama) instead of one per matrix (151 at SmolLM2-135M): the
groups' measured losses set the exchange rate between roles and depths, and each matrix's share of its
group's loss is its share of the group's expected output error. On SmolLM2-135M the per-group KLs add up
to within 20% of the per-matrix ones, and the budget mix they choose leaves a 4-bit loss within 5% of the
per-matrix choice's. A tied table's group (lm_head) measures the output projection only. Everything is
float32 numpy on one BLAS thread in a fixed order: the same input gives the same bytes.
"""

from __future__ import annotations

import functools
import itertools
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_run.converters.checkpoint import Checkpoint, LazyTensor
from edge_run.converters.onnx.builder import Weights
from edge_run.converters.onnx.forward import (
    ATTN_ROLES,
    MLP_ROLES,
    Forward,
    single_threaded_blas,
    tensor_name,
    unit_key,
)
from edge_run.converters.onnx.hparams import DecoderConfig
from edge_run.converters.onnx.quantize import PackedShape, QuantConfig, dequantize_rows, row_chunks
from edge_run.converters.onnx.search import search_rows
from edge_run.core.errors import CorpusError

Progress = Callable[[str, int, int], None]
# the corpus the eval package ships (read by path: converters do not import runtime)
DEFAULT_TEXT = Path(__file__).resolve().parents[2] / "runtime" / "eval" / "data" / "tinyshakespeare.txt"
CTX = 256
IMPORTANCE_CHUNKS = 8  # 2k tokens
SENSITIVITY_TOKENS = 128
BANDS = 3  # depth bands a role's sensitivity is measured in (SmolLM2-135M: one pass per matrix chose
# int8 units whose 4-bit loss 3 bands come within 5% of, one band within 20%)
HEAD_ROWS = 4096  # vocabulary rows per lm_head step (logits of every sequence for these rows)
CHARS_PER_CHUNK = 8 * CTX  # generous: tokens are ~4 characters of English
HEAD, EMBED = "lm_head", "model.embed_tokens"
SAME_INPUT = {"up": "gate"}  # forward.py observes a shared MatMul input once


@dataclass
class Calibration:
    text: str  # file name of the calibration text
    tokens: int  # tokens the importance is averaged over
    importance: dict[str, np.ndarray] = field(default_factory=dict)  # checkpoint tensor name -> [K]
    sensitivity: dict[str, float] = field(default_factory=dict)  # unit key -> KL (nats per token)
    groups: dict[str, float] = field(default_factory=dict)  # group -> KL with all its units at 4 bits
    shapes: dict[str, tuple[int, int]] = field(default_factory=dict)  # unit key -> (rows, cols)
    packed: dict[str, Path] = field(default_factory=dict)  # unit key -> its 4-bit search result (.npz in work)
    seconds: float = 0.0


def calibration_chunks(ckpt: Checkpoint, text_path: Path, n_chunks: int, ctx: int = CTX) -> list[np.ndarray]:
    """Up to ``n_chunks`` token chunks of ``ctx`` tokens from the start of the text."""
    from tokenizers import Tokenizer

    try:
        text = text_path.read_text(encoding="utf-8")[: n_chunks * CHARS_PER_CHUNK]
    except (OSError, UnicodeDecodeError) as e:
        raise CorpusError(f"cannot read the calibration text {text_path.name}: {e.__class__.__name__}",
                          "pass a readable UTF-8 text file") from e
    tok = Tokenizer.from_file(str(ckpt.path / "tokenizer.json"))
    prefix = tok.encode("", add_special_tokens=True).ids
    ids = tok.encode(text, add_special_tokens=False).ids
    body = ctx - len(prefix)
    chunks = [np.array([prefix + ids[i:i + body]], dtype=np.int64)
              for i in range(0, len(ids) - body + 1, body)][:n_chunks]
    if not chunks:
        raise CorpusError(f"the calibration text {text_path.name} has fewer than {ctx} tokens",
                          "pass a longer text")
    return chunks


def unit_group(key: str, n_layers: int) -> str:
    """A role in one depth band of layers: ``model.layers.3.mlp.up_proj`` -> ``mlp.up_proj@0`` (bands of
    n_layers / BANDS consecutive layers); other units are groups of their own."""
    m = re.match(r"^model\.layers\.(\d+)\.(.+)$", key)
    return f"{m.group(2)}@{int(m.group(1)) * BANDS // n_layers}" if m else key


def layer_units(i: int) -> dict[str, tuple[str, ...]]:
    """Unit key -> the roles (forward.py) whose rows it concatenates, for layer ``i``."""
    out: dict[str, tuple[str, ...]] = {}
    for role in (*ATTN_ROLES, *MLP_ROLES):
        out[unit_key(i, role)] = (*out.get(unit_key(i, role), ()), role)
    return out


class _Packed:
    """A unit's 4-bit search result (B, scales, zp), filled row chunk by row chunk, saved (.npz) for the
    artifact's builder."""

    def __init__(self, quant: QuantConfig, n: int, k: int) -> None:
        block, _ = quant.layout(4, k)
        shape = PackedShape(n, k, 4, block)
        self.arrays: tuple[np.ndarray, ...] = (np.empty((n, shape.k_blocks, shape.blob), np.uint8),
                                               np.empty((n, shape.k_blocks), np.float32),
                                               np.empty((n, shape.zp_cols), np.uint8))
        self.rows = 0

    def put(self, *parts: np.ndarray) -> None:
        for dst, src in zip(self.arrays, parts, strict=True):
            dst[self.rows:self.rows + len(src)] = src
        self.rows += len(parts[0])

    def save(self, path: Path) -> None:
        np.savez(path, *self.arrays)


def _search(tensors: list[LazyTensor], quant: QuantConfig, importance: np.ndarray | None, save: Path,
            rows: list[np.ndarray] | None = None, chunk_rows: int | None = None) -> Iterator[tuple[np.ndarray, ...]]:
    """Search the 4-bit codes of the tensors' row concatenation, one row chunk at a time: yield (float rows,
    the floats their codes stand for, Σ_k importance_k ‖ΔW[:, k]‖² of the chunk as a 0-d array); the codes
    are saved to ``save`` after the last chunk."""
    k = tensors[0].shape[1]
    block, symmetric = quant.layout(4, k)
    imp = np.ones(k, np.float32) if importance is None else importance
    out = _Packed(quant, sum(t.shape[0] for t in tensors), k)
    for j, t in enumerate(tensors):
        bounds = (row_chunks(t.shape[0], k) if chunk_rows is None else
                  ((a, min(a + chunk_rows, t.shape[0])) for a in range(0, t.shape[0], chunk_rows)))
        for a, b in bounds:
            x = rows[j][a:b] if rows is not None else np.asarray(t.read_rows(a, b), np.float32)
            packed, scales, zp = search_rows(x, 4, block, symmetric, importance)
            out.put(packed, scales, zp)
            deq = dequantize_rows(packed, scales, None if symmetric else zp, 4, k, block)
            d = deq - x
            yield x, deq, np.einsum("nk,nk,k->", d, d, imp, dtype=np.float64)
    out.save(save)


def _search_unit(tensors: list[LazyTensor], quant: QuantConfig, importance: np.ndarray | None, save: Path,
                 rows: list[np.ndarray]) -> tuple[float, list[np.ndarray]]:
    """A layer unit's search: (its weighted error, the floats its codes stand for per tensor, [in, out])."""
    err, deq = 0.0, []
    for _, d, e in _search(tensors, quant, importance, save, rows):
        err += float(e)
        deq.append(d)
    bounds = np.cumsum([0] + [t.shape[0] for t in tensors])
    whole = np.concatenate(deq)
    return err, [np.ascontiguousarray(whole[a:b].T) for a, b in itertools.pairwise(bounds)]


class _OnlineKL:
    """KL(p_ref ‖ p_g) per position for several sequences g, from logits arriving in vocabulary chunks
    (running maxima and sums, rescaled as the maxima grow)."""

    def __init__(self, positions: int, names: list[str]) -> None:
        self.names = names
        self.m = np.full(positions, -1e30)
        self.l = np.zeros(positions)
        self.a = {g: np.zeros(positions) for g in names}
        self.mg = {g: np.full(positions, -1e30) for g in names}
        self.lg = {g: np.zeros(positions) for g in names}

    def add(self, ref: np.ndarray, logits: dict[str, np.ndarray]) -> None:
        ref = ref.astype(np.float64)
        m = np.maximum(self.m, ref.max(axis=1))
        e = np.exp(ref - m[:, None])
        scale = np.exp(self.m - m)
        self.l = self.l * scale + e.sum(axis=1)
        for g, z in logits.items():
            z = z.astype(np.float64)
            self.a[g] = self.a[g] * scale + (e * (ref - z)).sum(axis=1)
            mg = np.maximum(self.mg[g], z.max(axis=1))
            self.lg[g] = self.lg[g] * np.exp(self.mg[g] - mg) + np.exp(z - mg[:, None]).sum(axis=1)
            self.mg[g] = mg
        self.m = m

    def result(self) -> dict[str, float]:
        lse = self.m + np.log(self.l)
        return {g: float(np.mean(self.a[g] / self.l - lse + self.mg[g] + np.log(self.lg[g]))) for g in self.names}


def calibrate(ckpt: Checkpoint, cfg: DecoderConfig, quant: QuantConfig, work: Path, text_path: Path | None = None,
              sensitivity: bool = True, progress: Progress | None = None) -> Calibration:
    """Importance of every matrix's input columns; with ``sensitivity`` also every unit's 4-bit search result
    (``packed``) and its share of its group's measured 4-bit KL divergence."""
    with single_threaded_blas():
        return _calibrate(ckpt, cfg, quant, work, text_path, sensitivity, progress)


def _calibrate(ckpt: Checkpoint, cfg: DecoderConfig, quant: QuantConfig, work: Path, text_path: Path | None,
               sensitivity: bool, progress: Progress | None) -> Calibration:
    t0 = time.perf_counter()
    text_path = Path(text_path) if text_path is not None else DEFAULT_TEXT
    chunks = [c[0] for c in calibration_chunks(ckpt, text_path, IMPORTANCE_CHUNKS)]
    w = Weights(ckpt)
    w.split_fused(cfg)
    fwd = Forward(cfg, w, CTX)
    cal = Calibration(text_path.name, sum(len(c) for c in chunks))
    head = w.lm_head if w.lm_head is not None else w.get("embed_tokens.weight")
    err: dict[str, float] = {}
    hs = [fwd.embed(ids) for ids in chunks]
    streams: dict[str, np.ndarray] = {}  # group -> its sensitivity sequence's hidden state
    sens_ids = chunks[0][:SENSITIVITY_TOKENS]
    if sensitivity:
        streams = {unit_group(key, cfg.n_layers): hs[0][:len(sens_ids)]
                   for i in range(cfg.n_layers) for key in layer_units(i)}
        if w.lm_head is not None:  # an untied embedding table is a unit of its own
            embed = w.get("embed_tokens.weight")
            cal.packed[EMBED] = work / "embed.npz"
            err[EMBED], picked = 0.0, np.zeros((len(sens_ids), embed.shape[1]), np.float32)
            start = 0
            for x, deq, e in _search([embed], quant, None, cal.packed[EMBED]):
                err[EMBED] += float(e)
                hit = (sens_ids >= start) & (sens_ids < start + len(x))
                picked[hit] = deq[sens_ids[hit] - start]
                start += len(x)
            streams[EMBED] = fwd.embed(sens_ids, picked)
            cal.shapes[EMBED] = embed.shape[0], embed.shape[1]
    for i in range(cfg.n_layers):
        units = layer_units(i)
        tensors = {key: [w.get(tensor_name(i, r)) for r in roles] for key, roles in units.items()}
        rows = fwd.layer_weights(i)
        mats = {r: np.ascontiguousarray(m.T) for r, m in rows.items()}
        sums: dict[str, np.ndarray] = {}
        hs = [fwd.layer(i, h, mats, functools.partial(_accumulate, sums)) for h in hs]
        swapped: dict[str, np.ndarray] = {}  # role -> its 4-bit float weights, [in, out]
        for key, roles in units.items():
            imp = (sums[unit_key(i, SAME_INPUT.get(roles[0], roles[0]))] / cal.tokens).astype(np.float32)
            cal.shapes[key] = sum(t.shape[0] for t in tensors[key]), tensors[key][0].shape[1]
            for t in tensors[key]:
                cal.importance[t.name] = imp
            if sensitivity:
                cal.packed[key] = work / f"{key}.npz"
                err[key], deqs = _search_unit(tensors[key], quant, imp, cal.packed[key], [rows[r] for r in roles])
                swapped.update(zip(roles, deqs, strict=True))
        for grp in streams:
            roles = next((r for k, r in units.items() if unit_group(k, cfg.n_layers) == grp), ())
            streams[grp] = fwd.layer(i, streams[grp], {**mats, **{r: swapped[r] for r in roles}})
        del rows, mats, swapped
        if progress:
            progress("calibrate", i + 1, cfg.n_layers + 1)
    normed = [fwd.final(h) for h in hs]
    head_imp = (sum(np.einsum("ij,ij->j", x, x, dtype=np.float64) for x in normed) / cal.tokens).astype(np.float32)
    cal.importance[head.name] = head_imp
    cal.shapes[HEAD] = head.shape[0], head.shape[1]
    if sensitivity:
        ref = normed[0][:len(sens_ids)]
        final = {g: fwd.final(h) for g, h in streams.items()}
        kl = _OnlineKL(len(sens_ids), [*final, HEAD])
        cal.packed[HEAD] = work / "lm_head.npz"
        err[HEAD] = 0.0
        for x, deq, chunk_err in _search([head], quant, head_imp, cal.packed[HEAD], chunk_rows=HEAD_ROWS):
            err[HEAD] += float(chunk_err)
            xt = np.ascontiguousarray(x.T)
            kl.add(fwd.logits(ref, xt), {**{g: fwd.logits(h, xt) for g, h in final.items()},
                                         HEAD: fwd.logits(ref, np.ascontiguousarray(deq.T))})
        cal.groups = kl.result()
        for key, unit_err in err.items():
            grp = unit_group(key, cfg.n_layers)
            total = sum(v for k, v in err.items() if unit_group(k, cfg.n_layers) == grp)
            cal.sensitivity[key] = cal.groups[grp] * (unit_err / total if total > 0 else 0.0)
    if progress:
        progress("calibrate", cfg.n_layers + 1, cfg.n_layers + 1)
    cal.seconds = round(time.perf_counter() - t0, 1)
    return cal


def _accumulate(sums: dict[str, np.ndarray], key: str, x: np.ndarray) -> None:
    sums[key] = sums.get(key, 0) + np.einsum("ij,ij->j", x, x, dtype=np.float64)
