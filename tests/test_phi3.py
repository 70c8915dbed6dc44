"""Phi-3 (fused qkv_proj / gate_up_proj, longrope) beyond the per-architecture parity tests, which run it on
the short rope factors: the long factors in llama.cpp and onnxruntime against transformers, the GGUF layout
llama.cpp's phi3 graph reads, and the planned-pairing type mix of a fused attn_qkv."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest

from edge_run.converters.gguf.convert import ConvertOptions, convert_to_gguf
from edge_run.converters.onnx.convert import OnnxOptions, convert_to_onnx
from edge_run.converters.onnx.quantize import SCHEMES, dequantize_rows, quantize_rows
from edge_run.runtime.artifacts.formats import open_backend
from edge_run.runtime.backends import LoadOptions
from edge_run.runtime.estimate.gguf import shape_from_checkpoint, shape_from_gguf

from .test_logits_parity import F32_REL_TOL, PROMPTS, assert_top1_matches, reference_logits
from .test_onnx_parity import FP32_REL_TOL, rel_err
from .test_onnx_parity import reference_logits as reference_batch


def test_gguf_layout_is_llama_cpp_phi3(tiny_checkpoint: Callable[[str], Path], tmp_path: Path) -> None:
    """Fused tensors stay fused (attn_qkv, ffn_up = gate | up), longrope travels as rope_factors_long/short
    plus the attention factor and the original context, as llama.cpp's converter writes them."""
    (f32,) = convert_to_gguf(tiny_checkpoint("phi3-long"), tmp_path, ConvertOptions(quants="f32", name="p"))
    r = gguf.GGUFReader(f32)
    shapes = {t.name: tuple(int(d) for d in reversed(t.shape)) for t in r.tensors}
    assert shapes["blk.0.attn_qkv.weight"] == (64 + 2 * 32, 64)  # q 4x16 | k 2x16 | v 2x16
    assert shapes["blk.0.ffn_up.weight"] == (2 * 128, 64)
    assert not any(".attn_q." in n or ".ffn_gate." in n for n in shapes)
    long = next(t for t in r.tensors if t.name == "rope_factors_long.weight")
    short = next(t for t in r.tensors if t.name == "rope_factors_short.weight")
    np.testing.assert_allclose(long.data, [1.5 + 0.9 * i for i in range(8)], rtol=1e-6)
    np.testing.assert_allclose(short.data, [1.0 + 0.15 * i for i in range(8)], rtol=1e-6)
    fields = {f.name: f.contents() for f in r.fields.values() if f.name.startswith("phi3.")}
    assert fields["phi3.rope.scaling.original_context_length"] == 64
    assert fields["phi3.rope.scaling.attn_factor"] == pytest.approx(np.sqrt(1 + np.log(512 / 64) / np.log(64)))
    assert fields["phi3.attention.sliding_window"] == 0


def test_llama_cpp_long_factors_match_transformers(tiny_checkpoint: Callable[[str], Path], tmp_path: Path) -> None:
    """A context above the original one makes llama.cpp use the long factors; transformers uses them for a
    sequence longer than the original context (64), so the 120-token prompt compares like for like."""
    ckpt = tiny_checkpoint("phi3-long")
    (f32,) = convert_to_gguf(ckpt, tmp_path, ConvertOptions(quants="f32", name="p"))
    ids = PROMPTS[2]
    ref = reference_logits(ckpt, ids)
    with open_backend(f32, LoadOptions(n_ctx=256, n_threads=2, logits_all=True, cache_type="f32")) as b:
        got = b.eval_logits(ids)
    err = float(np.abs(got - ref).max())
    assert err < F32_REL_TOL * float(np.abs(ref).max()), err
    assert_top1_matches(got, ref, err)
    # the short factors give clearly different logits: the long ones are really in use
    (short,) = convert_to_gguf(tiny_checkpoint("phi3"), tmp_path / "s", ConvertOptions(quants="f32", name="p"))
    with open_backend(short, LoadOptions(n_ctx=256, n_threads=2, logits_all=True, cache_type="f32")) as b:
        other = b.eval_logits(ids)
    assert float(np.abs(other - ref).max()) > 10 * err


def test_onnx_switches_to_long_factors_past_the_original_context(tiny_checkpoint: Callable[[str], Path],
                                                                 tmp_path: Path) -> None:
    """The graph's If picks the long cos/sin caches once the sequence is longer than 64 tokens: prompts of
    6 and 40 tokens stay on the short factors, 120 tokens switch, all equal to transformers."""
    ckpt = tiny_checkpoint("phi3-long")
    (art,) = convert_to_onnx(ckpt, tmp_path, OnnxOptions(quant="fp32", name="p"))
    refs = reference_batch(ckpt, PROMPTS)
    with open_backend(art, LoadOptions(n_ctx=256, n_threads=2)) as b:
        for ids, ref in zip(PROMPTS, refs, strict=True):
            got = b.eval_logits(ids)
            assert rel_err(got, ref) < FP32_REL_TOL, (len(ids), rel_err(got, ref))


def test_onnx_mixed_bits_split_the_fused_projections(tiny_checkpoint: Callable[[str], Path],
                                                     tmp_path: Path) -> None:
    """The ``mixed`` scheme gives the last layer's attn_v and ffn_down int8 and the rest int4: that layer's
    fused qkv_proj is read as three row ranges and quantized apart, the others' as one packed matrix. At
    accuracy level 1 the graph equals transformers running the same per-part quantized weights."""
    ckpt = tiny_checkpoint("phi3")
    (art,) = convert_to_onnx(ckpt, tmp_path, OnnxOptions(quant="mixed", block_size=32, symmetric=False,
                                                         accuracy_level=1, name="p"))
    scheme = SCHEMES["mixed"]
    parts = {"qkv_proj": (("attn_q", 64), ("attn_k", 32), ("attn_v", 32)),
             "gate_up_proj": (("ffn_gate", 128), ("ffn_up", 128))}
    roles = {"o_proj": "attn_o", "down_proj": "ffn_down", "lm_head": "lm_head", "embed_tokens": "embed"}

    def fake_quant(name: str, w: np.ndarray) -> np.ndarray:
        layer = int(name.split(".")[2]) if ".layers." in name else -1
        kind = name.split(".")[-2]
        split = parts[kind] if kind in parts else ((roles[kind], w.shape[0]),)
        out, start = [], 0
        for role, rows in split:
            bits = scheme.bits(role, layer, 3)
            assert bits is not None
            packed, scales, zp = quantize_rows(w[start:start + rows], bits, 32, False)
            out.append(dequantize_rows(packed, scales, zp, bits, w.shape[1], 32))
            start += rows
        return np.concatenate(out)

    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["extra"]["linear_bits"]["int8"] >= 3  # lm_head, layer 2's v_proj and down_proj
    refs = reference_batch(ckpt, PROMPTS, fake_quant)
    floats = reference_batch(ckpt, PROMPTS)
    with open_backend(art, LoadOptions(n_ctx=256, n_threads=2)) as b:
        for ids, ref, flt in zip(PROMPTS, refs, floats, strict=True):
            got = b.eval_logits(ids)
            assert rel_err(got, ref) < FP32_REL_TOL, rel_err(got, ref)
            assert rel_err(got, flt) > 10 * FP32_REL_TOL


@pytest.mark.parametrize("quant", ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_K_S", "Q4_0", "Q3_K_L", "Q3_K_M", "Q2_K"])
def test_planned_types_match_llama_cpp_for_fused_attn_qkv(quant: str, tiny_checkpoint: Callable[[str], Path],
                                                          tmp_path: Path) -> None:
    """llama.cpp's quantizer treats a fused attn_qkv like attn_v (its layer rule per file type); the
    planned-pairing prediction names every tensor's type as the quantizer made it, for every mix rule."""
    ckpt = tiny_checkpoint("phi3-wide")
    (path,) = convert_to_gguf(ckpt, tmp_path, ConvertOptions(quants=quant, name="w"))
    real = {t.name: t.type for t in shape_from_gguf(path).tensors}
    planned = {t.name: t.type for t in shape_from_checkpoint(ckpt, quant).tensors}
    assert planned == real
    if quant == "Q4_K_M":  # 3 layers: only layer 2 is a more-bits layer
        assert (real["blk.1.attn_qkv.weight"], real["blk.2.attn_qkv.weight"]) == ("Q4_K", "Q6_K")
