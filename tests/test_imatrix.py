"""Importance matrix: the activations read through the ggml eval callback equal transformers' own, it covers
every layer matrix, the quantizer uses it, and on the real SmolLM2 it lowers the KL divergence of low-bit types."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest

from edge_run.runtime.eval.imatrix import compute_imatrix, load_imatrix, save_imatrix, weight_name
from edge_run.runtime.eval.perplexity import evaluate, load_corpus

HF_TO_GGUF = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down"}


def layer_matrices(path: Path) -> dict[str, int]:
    """{name: ne[0]} of every 2-D weight inside the transformer blocks (the ones matrix products use)."""
    return {t.name: int(t.shape[0]) for t in gguf.GGUFReader(path).tensors
            if t.name.startswith("blk.") and len(t.shape) == 2}


def test_weight_name_strips_backend_decorations() -> None:
    assert weight_name(b"blk.3.ffn_up.weight") == "blk.3.ffn_up.weight"
    assert weight_name(b"CPU#blk.0.attn_k.weight#0") == "blk.0.attn_k.weight"


def test_imatrix_equals_transformers_activations(tiny_checkpoint: Callable[[str], Path], tmp_path: Path) -> None:
    """Mean squared inputs of every Linear, from a transformers forward pass with hooks, vs the callback's."""
    import torch
    from transformers import AutoModelForCausalLM

    from edge_run.converters.gguf.convert import ConvertOptions, convert_to_gguf
    from edge_run.runtime.artifacts.formats import open_backend
    from edge_run.runtime.backends import LoadOptions

    ckpt = tiny_checkpoint("llama")
    (f32,) = convert_to_gguf(ckpt, tmp_path, ConvertOptions(quants="f32", name="tiny"))
    text = load_corpus("tinyshakespeare").text[:8000]
    ctx, chunks = 32, 3
    imatrix, info = compute_imatrix(f32, text, ctx=ctx, max_chunks=chunks, threads=1)
    assert info["chunks"] == chunks and set(imatrix) == set(layer_matrices(f32))

    with open_backend(f32, LoadOptions(n_ctx=64)) as b:
        tokens = b.tokenize(text)
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    sums: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Callable:
        def pre(_mod: torch.nn.Module, args: tuple) -> None:
            x = args[0].reshape(-1, args[0].shape[-1]).double()
            sums[name] = sums.get(name, 0) + (x * x).sum(0)
        return pre

    for i, layer in enumerate(model.model.layers):
        for hf, short in HF_TO_GGUF.items():
            layer.get_submodule(hf).register_forward_pre_hook(hook(f"blk.{i}.{short}.weight"))
    with torch.no_grad():
        for k in range(chunks):
            chunk = tokens[k * ctx:(k + 1) * ctx]
            chunk[0] = tokens[0]  # BOS first, as the imatrix run does
            model(torch.tensor([chunk]))
    for name, arr in imatrix.items():
        expected = (sums[name] / (chunks * ctx)).numpy()
        np.testing.assert_allclose(arr, expected, rtol=2e-2, atol=2e-3 * expected.max(), err_msg=name)


def test_convert_with_imatrix_text(tiny_checkpoint: Callable[[str], Path], tmp_path: Path, cli: Callable) -> None:
    text = tmp_path / "calib.txt"
    text.write_text(load_corpus("tinyshakespeare").text[:30000], encoding="utf-8")
    ckpt = tiny_checkpoint("llama")
    r = cli("convert", ckpt, "--quant", "q4_k_m", "--out", tmp_path / "with", "--name", "tiny",
            "--imatrix-text", text, "--json")
    assert r.code == 0, r.stderr
    r = cli("convert", ckpt, "--quant", "q4_k_m", "--out", tmp_path / "without", "--name", "tiny", "--json")
    assert r.code == 0, r.stderr
    im = load_imatrix(tmp_path / "with" / "tiny.imatrix.npz")
    quantized = tmp_path / "with" / "tiny.Q4_K_M.gguf"
    mats = layer_matrices(quantized)
    assert set(im) == set(mats)  # every layer matrix that gets quantized has an importance vector
    for name, arr in im.items():
        assert arr.dtype == np.float32 and arr.shape == (mats[name],)
        assert np.isfinite(arr).all() and (arr > 0).all(), name
    # the quantizer used it: the same type, different bytes
    a = {t.name: t for t in gguf.GGUFReader(quantized).tensors}
    b = {t.name: t for t in gguf.GGUFReader(tmp_path / "without" / "tiny.Q4_K_M.gguf").tensors}
    changed = [n for n in mats if a[n].tensor_type == b[n].tensor_type and
               not np.array_equal(np.asarray(a[n].data), np.asarray(b[n].data))]
    assert len(changed) >= len(mats) // 2


def test_bad_imatrix_text_is_a_corpus_error(tiny_checkpoint: Callable[[str], Path], tmp_path: Path,
                                            cli: Callable) -> None:
    bad = tmp_path / "calib.bin"
    bad.write_bytes(b"\x00\xff" * 100)
    r = cli("convert", tiny_checkpoint("llama"), "--quant", "q4_k_m", "--out", tmp_path / "o",
            "--imatrix-text", bad)
    assert r.code == 3 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.zoo
def test_imatrix_lowers_kld_of_low_bit_types_on_smollm2(zoo_gguf_dir: Callable[[str, str], Path],
                                                        tmp_path: Path) -> None:
    from edge_run.converters.gguf.quant_types import QUANT_TYPES
    from edge_run.converters.gguf.quantize import quantize_gguf

    f16 = zoo_gguf_dir("smollm2-135m", "f16")
    # calibration on Shakespeare, evaluation on WikiText-2: the imatrix never sees the scored text
    imatrix, info = compute_imatrix(f16, load_corpus("tinyshakespeare").text, max_chunks=8)
    assert set(imatrix) == set(layer_matrices(f16))
    npz = save_imatrix(tmp_path / "smollm2.imatrix.npz", imatrix, info)
    wiki = load_corpus("wikitext-2-raw-test")
    store = tmp_path / "f16-logprobs"
    evaluate(f16, wiki, chunks=3, record_to=store)
    kld: dict[tuple[str, bool], float] = {}
    for q in ("Q3_K_M", "Q2_K"):
        for use in (False, True):
            out = tmp_path / f"{q}-{use}.gguf"
            quantize_gguf(f16, out, QUANT_TYPES[q], imatrix=npz if use else None)
            kld[(q, use)] = evaluate(out, wiki, chunks=3, parent_store=store).acc.mean_kld
    print("KLD vs F16 (without, with imatrix):", kld)
    for q in ("Q3_K_M", "Q2_K"):
        assert kld[(q, True)] < 0.9 * kld[(q, False)], (q, kld)
