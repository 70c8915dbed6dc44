"""llama.cpp logits of converted tiny random checkpoints equal transformers' logits, per architecture."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edge_run.converters.architectures import ARCHITECTURES
from edge_run.converters.gguf.convert import ConvertOptions, convert_to_gguf
from edge_run.runtime.artifacts.formats import open_backend
from edge_run.runtime.backends import LoadOptions

ARCH_KEYS = sorted({spec.key for spec in ARCHITECTURES.values()})
PROMPTS = [  # token ids: a short one, one longer than gemma3-tiny's sliding window (8), one near ctx
    list(range(3, 9)),
    [int(x) for x in np.random.RandomState(0).randint(3, 380, size=40)],
    [int(x) for x in np.random.RandomState(1).randint(3, 380, size=120)],
]
# llama.cpp evaluates SiLU/GELU through fp16 tables on CPU, so even F32 weights differ from torch
# by ~1e-3 relative; anything structural (rope order, norm offset, missing bias) is orders larger.
F32_REL_TOL = 5e-3
F16_REL_TOL = 1e-2


def reference_logits(ckpt: Path, ids: list[int]) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def assert_top1_matches(got: np.ndarray, ref: np.ndarray, tol: float) -> None:
    """Top-1 must agree wherever the reference's top-2 margin exceeds the numeric tolerance."""
    top2 = np.sort(ref, axis=-1)[:, -2:]
    decisive = (top2[:, 1] - top2[:, 0]) > 2 * tol
    assert decisive.mean() > 0.8
    np.testing.assert_array_equal(got.argmax(-1)[decisive], ref.argmax(-1)[decisive])


@pytest.mark.parametrize("arch", ARCH_KEYS)
def test_llama_cpp_logits_match_transformers(arch: str, tiny_checkpoint: Callable[[str], Path],
                                             tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(arch)
    # not name=arch: llama.cpp sets token attributes by general.name ("phi3" -> expects <unk>, <|endoftext|>)
    f32, f16 = convert_to_gguf(ckpt, tmp_path, ConvertOptions(quants="f32,f16", name="tiny"))
    for path, rel_tol in ((f32, F32_REL_TOL), (f16, F16_REL_TOL)):
        with open_backend(path, LoadOptions(n_ctx=256, n_threads=2, logits_all=True, cache_type="f32")) as b:
            for ids in PROMPTS:
                ref = reference_logits(ckpt, ids)
                got = b.eval_logits(ids)
                tol = rel_tol * float(np.abs(ref).max())
                assert got.shape == ref.shape
                err = float(np.abs(got - ref).max())
                assert err < tol, f"{arch} {path.name}: max abs diff {err:.4g} >= {tol:.4g}"
                assert_top1_matches(got, ref, err)


def test_bf16_and_sharded_checkpoints(tiny_checkpoint: Callable[[str], Path], tmp_path: Path) -> None:
    """A bf16, sharded (index.json) copy converts without torch and matches transformers on it."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    src = tiny_checkpoint("qwen2")
    bf16 = tmp_path / "bf16"
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
    model.save_pretrained(bf16, safe_serialization=True, max_shard_size="100KB")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / f, bf16 / f)
    assert (bf16 / "model.safetensors.index.json").exists()
    assert len(list(bf16.glob("*.safetensors"))) > 1
    (f32,) = convert_to_gguf(bf16, tmp_path / "out", ConvertOptions(quants="f32", name="bf16"))
    ids = PROMPTS[1]
    ref = reference_logits(bf16, ids)  # transformers upcasts the bf16 weights exactly
    with open_backend(f32, LoadOptions(n_ctx=256, n_threads=2, logits_all=True, cache_type="f32")) as b:
        got = b.eval_logits(ids)
    err = float(np.abs(got - ref).max())
    assert err < F32_REL_TOL * float(np.abs(ref).max())
    assert_top1_matches(got, ref, err)
