"""Activation statistics for the calibrated int4 schemes, measured with onnxruntime on an int8 graph of
the same checkpoint (no torch; int8 is within 0.4% of float32 perplexity at a quarter of its memory):

    calibration text (Tiny Shakespeare by default: never the evaluation text, WikiText-2)
      ─► the checkpoint's tokenizer ─► chunks of CTX tokens, the tokenizer's own prefix (BOS) first
      ─► int8 graph (builder.py, scheme int8, symmetric, the int4 block size, fp32 compute) in a work
         folder, with every MatMul's input as an extra graph output, and every matrix's codes and scales
         also graph inputs (initializers a run may override)
      ─► importance[tensor] = Σ x² / tokens over the input columns of the MatMul the tensor is part of
      ─► sensitivity[unit]  = mean KL(p_int8 ‖ p) over SENSITIVITY_TOKENS positions, p the model with
                              only that unit (one stored matrix) at its 4-bit search result: the price of
                              4 bits instead of 8, what a budget mix decides (mix.py)

A 4-bit block s * (q - z), q, z in 0..15, is exactly an 8-bit symmetric block of the same size: codes
q - z + 128, scale s. The work folder holds the int8 weights and every unit's packed 4-bit result
(reused by the builder: the search runs once per matrix); the caller removes it. Runs over the
calibration chunks are sequential and hold one chunk's activations; a sensitivity run holds one
dequantized matrix.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from edge_run.converters.checkpoint import Checkpoint
from edge_run.converters.onnx.builder import DecoderBuilder, Unit, Weights, past_name
from edge_run.converters.onnx.graph import Graph, save_model
from edge_run.converters.onnx.hparams import DecoderConfig
from edge_run.converters.onnx.quantize import SCHEMES, QuantConfig, row_chunks
from edge_run.converters.onnx.search import search_rows
from edge_run.core.errors import CorpusError

Progress = Callable[[str, int, int], None]
# the corpus the eval package ships (read by path: converters do not import runtime)
DEFAULT_TEXT = Path(__file__).resolve().parents[2] / "runtime" / "eval" / "data" / "tinyshakespeare.txt"
CTX = 512
IMPORTANCE_CHUNKS = 16  # 8k tokens
SENSITIVITY_TOKENS = 256
CHARS_PER_CHUNK = 8 * CTX  # generous: tokens are ~4 characters of English
MODEL, DATA = "calibration.onnx", "calibration.onnx.data"


@dataclass
class Calibration:
    text: str  # file name of the calibration text
    tokens: int  # tokens the importance is averaged over
    importance: dict[str, np.ndarray] = field(default_factory=dict)  # checkpoint tensor name -> [K]
    sensitivity: dict[str, float] = field(default_factory=dict)  # unit key -> KL (nats per token)
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


def _session(ckpt: Checkpoint, cfg: DecoderConfig, block: int,
             work: Path) -> tuple[ort.InferenceSession, dict[str, Unit]]:
    with open(work / DATA, "wb") as data:
        g = Graph(data, DATA)
        builder = DecoderBuilder(g, cfg, Weights(ckpt), QuantConfig(SCHEMES["int8"], block, True, 1))
        builder.build()
    model = g.model("calibration", {})
    inputs = sorted({u.input for u in builder.units.values() if u.input is not None})
    model.graph.output.extend(helper.make_tensor_value_info(x, TensorProto.FLOAT, None) for x in inputs)
    types = {t.name: (t.data_type, list(t.dims)) for t in model.graph.initializer}
    model.graph.input.extend(helper.make_tensor_value_info(name, *types[name]) for u in builder.units.values()
                             for name in (f"{u.key}.weight_Q8", f"{u.key}.weight_scales"))
    save_model(model, work / MODEL)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(work / MODEL), so, providers=["CPUExecutionProvider"]), builder.units


def _feeds(cfg: DecoderConfig, ids: np.ndarray) -> dict[str, np.ndarray]:
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    empty = np.zeros((1, cfg.n_kv_heads, 0, cfg.head_dim), np.float32)
    for i in range(cfg.n_layers):
        feeds[past_name(i, "key")] = feeds[past_name(i, "value")] = empty
    return feeds


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _kl_per_position(logp_ref: np.ndarray, logits: np.ndarray, rows: int = 16) -> np.ndarray:
    """KL(p_ref || softmax(logits)) of each position, ``rows`` positions at a time (temporaries stay small;
    every value is a per-row reduction, so the result does not depend on ``rows``)."""
    out = [(np.exp(lr) * (lr - _log_softmax(lg))).sum(axis=-1)
           for lr, lg in ((logp_ref[a:a + rows], logits[a:a + rows]) for a in range(0, len(logp_ref), rows))]
    return np.concatenate(out)


def _as_int8(packed: np.ndarray, zp: np.ndarray | None, kb: int) -> np.ndarray:
    """4-bit codes [n, kb, block/2] (+ packed zero points, None: 8) -> the same values as symmetric 8-bit
    codes [n, kb, block] (zero point 128)."""
    codes = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(packed.shape[0], kb, -1).astype(np.int16)
    z = (np.stack([zp & 0x0F, zp >> 4], axis=-1).reshape(zp.shape[0], -1)[:, :kb].astype(np.int16)
         if zp is not None else np.full((packed.shape[0], kb), 8, np.int16))
    return (codes - z[:, :, None] + 128).astype(np.uint8)


def _quantized_weight(unit: Unit, quant: QuantConfig, importance: np.ndarray | None,
                      save: Path) -> tuple[np.ndarray, np.ndarray]:
    """The unit's 4-bit search result as int8 codes and scales of the calibration graph; the packed result
    is saved to ``save`` (.npz of B, scales, zp) for the artifact's builder to reuse."""
    k = unit.tensors[0].shape[1]
    block, symmetric = quant.layout(4, k)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for t in unit.tensors:
        for a, b in row_chunks(t.shape[0], k):
            parts.append(search_rows(t.read_rows(a, b), 4, block, symmetric, importance))
    packed, scales, zp = (np.concatenate([p[i] for p in parts]) for i in range(3))
    np.savez(save, packed, scales, zp)
    return _as_int8(packed, None if symmetric else zp, scales.shape[1]), scales


def calibrate(ckpt: Checkpoint, cfg: DecoderConfig, quant: QuantConfig, work: Path, text_path: Path | None = None,
              sensitivity: bool = True, progress: Progress | None = None) -> Calibration:
    """Importance of every matrix's input columns, and (``sensitivity``) each unit's 4-bit KL divergence."""
    t0 = time.perf_counter()
    text_path = Path(text_path) if text_path is not None else DEFAULT_TEXT
    chunks = calibration_chunks(ckpt, text_path, IMPORTANCE_CHUNKS)
    sess, units = _session(ckpt, cfg, quant.block_size, work)
    inputs = sorted({u.input for u in units.values() if u.input is not None})
    sums: dict[str, np.ndarray] = {}
    tokens = 0
    for c, ids in enumerate(chunks):
        outs = sess.run(inputs, _feeds(cfg, ids))
        for name, x in zip(inputs, outs, strict=True):
            x = x.reshape(-1, x.shape[-1]).astype(np.float64)
            sums[name] = sums.get(name, 0) + np.einsum("ij,ij->j", x, x)
        tokens += ids.shape[1]
        if progress:
            progress("calibrate", c + 1, len(chunks))
    cal = Calibration(text_path.name, tokens)
    for u in units.values():
        cal.shapes[u.key] = (sum(t.shape[0] for t in u.tensors), u.tensors[0].shape[1])
        if u.input is not None:
            for t in u.tensors:
                cal.importance[t.name] = (sums[u.input] / tokens).astype(np.float32)
    if sensitivity:
        ids = chunks[0][:, :SENSITIVITY_TOKENS]
        feeds = _feeds(cfg, ids)
        (ref,) = sess.run(["logits"], feeds)
        logp_ref = np.concatenate([_log_softmax(ref[0, a:a + 16]) for a in range(0, ref.shape[1], 16)])
        del ref
        keys = sorted(units)
        for j, key in enumerate(keys):
            u = units[key]
            cal.packed[key] = work / f"packed{j}.npz"
            codes, scales = _quantized_weight(u, quant, cal.importance.get(u.tensors[0].name), cal.packed[key])
            (logits,) = sess.run(["logits"], {**feeds, f"{key}.weight_Q8": codes, f"{key}.weight_scales": scales})
            del codes, scales
            cal.sensitivity[key] = float(_kl_per_position(logp_ref, logits[0]).mean())
            del logits
            if progress:
                progress("sensitivity", j + 1, len(keys))
    cal.seconds = round(time.perf_counter() - t0, 1)
    return cal
