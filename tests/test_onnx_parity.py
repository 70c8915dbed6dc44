"""onnxruntime logits of converted tiny random checkpoints against transformers, per architecture.

* fp32 graph == transformers (tight), for a whole prompt and token by token through the KV cache.
* int4 / int8 graphs at accuracy level 1 (fp32 compute) == transformers running the *dequantized*
  weights (tight): the packing, zero points and graph are exact, only rounding differs.
* int8 at the default accuracy level (int8 activations) stays close to the float model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edge_run.converters.architectures import ARCHITECTURES
from edge_run.converters.onnx.convert import OnnxOptions, convert_to_onnx
from edge_run.converters.onnx.quantize import dequantize_rows, quantize_rows
from edge_run.runtime.artifacts.formats import open_backend
from edge_run.runtime.backends import GenerationParams, LoadOptions

from .test_logits_parity import PROMPTS

ARCH_KEYS = sorted({spec.key for spec in ARCHITECTURES.values()})
FP32_REL_TOL = 1e-4  # onnxruntime and torch both compute in f32; only summation order differs
OPTS = LoadOptions(n_ctx=256, n_threads=2)


def reference_logits(ckpt: Path, prompts: list[list[int]], weights: Callable[[str, np.ndarray], np.ndarray] | None
                     = None) -> list[np.ndarray]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    with torch.no_grad():
        if weights is not None:
            for name, p in model.named_parameters():
                if p.ndim == 2:
                    p.copy_(torch.from_numpy(weights(name, p.numpy())))
        return [model(torch.tensor([ids])).logits[0].numpy() for ids in prompts]


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("arch", ARCH_KEYS)
def test_fp32_graph_matches_transformers(arch: str, tiny_checkpoint: Callable[[str], Path], tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(arch)
    (art,) = convert_to_onnx(ckpt, tmp_path, OnnxOptions(quant="fp32", name=arch))
    refs = reference_logits(ckpt, PROMPTS)
    with open_backend(art, OPTS) as b:
        for ids, ref in zip(PROMPTS, refs, strict=True):
            got = b.eval_logits(ids)
            assert got.shape == ref.shape
            assert rel_err(got, ref) < FP32_REL_TOL, f"{arch}: {rel_err(got, ref):.3g}"
            np.testing.assert_array_equal(got.argmax(-1), ref.argmax(-1))
        # token by token through the in-place KV cache: prefill 20, then one token a step
        ids = PROMPTS[2]
        rows = [b._run(ids[:20], 0, last_only=False)[0]]
        rows += [b._run([t], 20 + k, last_only=True)[0].copy() for k, t in enumerate(ids[20:60])]  # buffer reused
        assert rel_err(np.concatenate(rows), refs[2][:60]) < FP32_REL_TOL


def _fake_quant(bits: int, block: int, symmetric: bool) -> Callable[[str, np.ndarray], np.ndarray]:
    def apply(name: str, w: np.ndarray) -> np.ndarray:
        packed, scales, zp = quantize_rows(w, bits, block, symmetric)
        return dequantize_rows(packed, scales, None if symmetric else zp, bits, w.shape[1], block)

    return apply


@pytest.mark.parametrize("arch,quant,block,symmetric", [
    ("llama", "int4-rtn", 32, True), ("qwen2", "int4-rtn", 16, False), ("gemma3", "int4-rtn", 32, False),
    ("qwen3", "int8", 32, True), ("mistral", "int8", 64, False),
])
def test_quantized_graph_is_exact_on_dequantized_weights(arch: str, quant: str, block: int, symmetric: bool,
                                                         tiny_checkpoint: Callable[[str], Path],
                                                         tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(arch)
    (art,) = convert_to_onnx(ckpt, tmp_path, OnnxOptions(quant=quant, block_size=block, symmetric=symmetric,
                                                         accuracy_level=1, name=arch))
    bits = 4 if quant.startswith("int4") else 8
    refs = reference_logits(ckpt, PROMPTS, _fake_quant(bits, block, symmetric))
    floats = reference_logits(ckpt, PROMPTS)
    with open_backend(art, OPTS) as b:
        for ids, ref, flt in zip(PROMPTS, refs, floats, strict=True):
            got = b.eval_logits(ids)
            assert rel_err(got, ref) < FP32_REL_TOL, f"{arch} {quant}: {rel_err(got, ref):.3g}"
            assert rel_err(got, flt) > 10 * FP32_REL_TOL  # the weights really are quantized


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_int8_with_int8_activations_stays_close(arch: str, tiny_checkpoint: Callable[[str], Path],
                                                tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(arch)
    (art,) = convert_to_onnx(ckpt, tmp_path, OnnxOptions(quant="int8", name=arch))
    refs = reference_logits(ckpt, PROMPTS)
    with open_backend(art, OPTS) as b:
        for ids, ref in zip(PROMPTS, refs, strict=True):
            got = b.eval_logits(ids)
            assert rel_err(got, ref) < 0.1
            assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.9


def test_generation_reuses_one_cache(tiny_checkpoint: Callable[[str], Path], tmp_path: Path) -> None:
    """Greedy generation equals argmax over full re-evaluation, and the cache buffers are made once."""
    (art,) = convert_to_onnx(tiny_checkpoint("qwen3"), tmp_path, OnnxOptions(quant="fp32", name="q"))
    with open_backend(art, OPTS) as b:
        prompt = PROMPTS[1][:12]
        text = "".join(b.stream(prompt, GenerationParams(max_tokens=10)))
        buffers = [id(v) for _, v in b._cache]
        assert b.last_result is not None and b.last_result.completion_tokens > 0
        tokens = list(prompt)
        for _ in range(b.last_result.completion_tokens):
            tokens.append(int(b.eval_logits(tokens)[-1].argmax()))
        assert b.detokenize(tokens[len(prompt):]) == text
        assert [id(v) for _, v in b._cache] == buffers
        assert len(b._cache) == 2 * 3  # one key and one value buffer per layer
