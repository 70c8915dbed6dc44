"""Memory estimator: exact weights and KV maths on tiny synthetic GGUFs; planned sizes vs real files;
estimate vs measured RSS for the real SmolLM2 artifacts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest

from edge_run.core.errors import InsufficientMemoryError
from edge_run.runtime.estimate.gguf import (
    MIB,
    check_memory,
    estimate_memory,
    kv_bytes,
    shape_from_checkpoint,
    shape_from_gguf,
)


def write_synthetic_gguf(path: Path, n_layer: int = 2, d: int = 64, swa: int = 0, pattern: bool = True) -> Path:
    w = gguf.GGUFWriter(path, "gemma3" if swa else "llama")
    arch = "gemma3" if swa else "llama"
    w.add_block_count(n_layer)
    w.add_embedding_length(d)
    w.add_feed_forward_length(4 * d)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_context_length(4096)
    if swa:
        w.add_sliding_window(swa)
        if pattern:
            w.add_sliding_window_pattern([True] * (n_layer - 1) + [False])
    w.add_token_list([f"t{i}".encode() for i in range(100)])
    w.add_tensor("token_embd.weight", np.zeros((100, d), np.float16))
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_q.weight", np.zeros((d, d), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert arch
    return path


def test_weights_are_exact(tmp_path: Path) -> None:
    shape = shape_from_gguf(write_synthetic_gguf(tmp_path / "a.gguf"))
    assert shape.weight_bytes == 100 * 64 * 2 + 2 * 64 * 64 * 4
    assert (shape.n_layer, shape.n_head_kv, shape.head_dim_k, shape.n_vocab) == (2, 2, 16, 100)


def test_kv_cache_is_padded_and_scales_with_type(tmp_path: Path) -> None:
    shape = shape_from_gguf(write_synthetic_gguf(tmp_path / "a.gguf"))
    # 2 layers x 2 kv heads x (16 + 16) x 256 cells (300 padded to 512? no: 256-cell padding) x 2 bytes
    assert kv_bytes(shape, 256, "f16") == 2 * 2 * 32 * 256 * 2
    assert kv_bytes(shape, 300, "f16") == 2 * 2 * 32 * 512 * 2
    assert kv_bytes(shape, 512, "q8_0") == pytest.approx(kv_bytes(shape, 512, "f16") * 34 / 64)


def test_sliding_window_layers(tmp_path: Path) -> None:
    shape = shape_from_gguf(write_synthetic_gguf(tmp_path / "s.gguf", n_layer=6, swa=128))
    assert shape.n_swa_layers == 5 and shape.n_swa == 128
    full = kv_bytes(shape, 8192, "f16", swa_full=True)
    capped = kv_bytes(shape, 8192, "f16", swa_full=False)
    per_layer = 2 * 32 * 2
    assert full == 6 * per_layer * 8192
    assert capped == per_layer * (8192 + 5 * 768)  # n_swa + n_ubatch, padded to 256


@pytest.mark.parametrize("n_layer,n_global", [(6, 1), (11, 1), (12, 2), (18, 3)])
def test_a_gemma3_file_without_a_pattern_gets_llama_cpps_default(tmp_path: Path, n_layer: int,
                                                                  n_global: int) -> None:
    """llama.cpp makes every 6th gemma3 layer global when the file stores no pattern (layers 5, 11, 17, ...)."""
    shape = shape_from_gguf(write_synthetic_gguf(tmp_path / "s.gguf", n_layer=n_layer, swa=128, pattern=False))
    assert (shape.n_swa_layers, shape.n_swa) == (n_layer - n_global, 128)


def test_repack_depends_on_simd(tmp_path: Path, tiny_checkpoint: Callable[[str], Path]) -> None:
    shape = shape_from_checkpoint(tiny_checkpoint("llama"), "Q4_0")
    assert estimate_memory(shape, 256, ("avx2",)).weights_repacked_mib > 0
    assert estimate_memory(shape, 256, ("neon",)).weights_repacked_mib == 0


def test_memory_guard(tmp_path: Path) -> None:
    path = write_synthetic_gguf(tmp_path / "a.gguf")
    with pytest.raises(InsufficientMemoryError, match="needs about") as e:
        check_memory(path, 512, available_mib=10)
    assert "--force" in e.value.one_line()
    assert check_memory(path, 512, available_mib=10_000) is not None


@pytest.mark.parametrize("simd", [("avx2",), ("neon",), ("dotprod", "neon")])
def test_both_load_modes_need_one_copy_of_the_weights(simd: tuple[str, ...],
                                                      tiny_checkpoint: Callable[[str], Path]) -> None:
    """mmap: mapped weights + repacked copies (their file pages cold); no-mmap: every weight anonymous. The same
    memory is needed; only mmap's RSS also shows the cold pages. The guard budgets the need, in the mode asked."""
    shape = shape_from_checkpoint(tiny_checkpoint("llama"), "Q4_0")
    on, off = (estimate_memory(shape, 512, simd, mmap=m) for m in ("on", "off"))
    weights = shape.weight_bytes / MIB
    assert on.weights_file_mib + on.weights_cold_mib == pytest.approx(weights)
    assert off.weights_read_mib + off.weights_cold_mib + off.weights_file_mib + off.weights_repacked_mib \
        >= weights - 1e-9
    assert on.total_mib == pytest.approx(off.total_mib)
    assert off.anon_mib - on.anon_mib == pytest.approx(on.weights_file_mib)
    assert on.rss_mib == pytest.approx(on.total_mib + on.weights_cold_mib) and off.rss_mib == off.total_mib
    assert (on.weights_cold_mib > 0) == ("neon" not in simd or "dotprod" in simd)


def test_memory_guard_names_the_load_mode(tmp_path: Path) -> None:
    path = write_synthetic_gguf(tmp_path / "a.gguf")
    for mode, name in (("on", "mmap"), ("off", "no-mmap")):
        with pytest.raises(InsufficientMemoryError, match=f"\\({name}\\) needs about"):
            check_memory(path, 512, available_mib=10, mmap=mode)


@pytest.mark.zoo
@pytest.mark.parametrize("quant", ["Q8_0", "Q4_K_M", "Q4_0"])
def test_planned_size_matches_the_real_file(quant: str, zoo_gguf_dir: Callable[[str, str], Path]) -> None:
    from tools.zoo import zoo_checkpoint

    real = shape_from_gguf(zoo_gguf_dir("smollm2-135m", quant))
    planned = shape_from_checkpoint(zoo_checkpoint("smollm2-135m"), quant)
    assert planned.weight_bytes == pytest.approx(real.weight_bytes, rel=0.02)
    assert {t.name: t.type for t in planned.tensors} == {t.name: t.type for t in real.tensors}


@pytest.mark.zoo
def test_estimate_matches_measured_rss(zoo_gguf_dir: Callable[[str, str], Path]) -> None:
    """The estimator's goal on real artifacts: within 5% (or 16 MiB) of measured peak RSS."""
    from tools.validate_estimator import validate

    rows = validate([zoo_gguf_dir("smollm2-135m", "Q8_0"), zoo_gguf_dir("smollm2-135m", "Q4_K_M")], [512, 4096])
    for r in rows:
        assert r["within_goal"], r
    assert MIB == 2**20
