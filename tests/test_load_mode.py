"""The load mode: llama.cpp's repack rules (src/edge_run/runtime/estimate/load_mode.py) against what llama.cpp
does with real files on this machine, the auto decision per device, and the commands that use it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_run.core.errors import UsageError
from edge_run.runtime.estimate.gguf import ModelShape, TensorInfo, estimate_memory, host_simd, shape_from_gguf
from edge_run.runtime.estimate.load_mode import (
    REPACK_RULES,
    is_repacked,
    repack_rule,
    repacked_file_bytes,
    tied_output_bytes,
    use_mmap,
)
from edge_run.runtime.estimate.quant_mix import tensor_bytes

from .conftest import CliResult

AVX2, AVX512 = ("avx", "avx2", "fma"), ("avx", "avx2", "avx512", "fma")
PI4, PI5, I8MM = ("neon",), ("dotprod", "neon"), ("dotprod", "i8mm", "neon")


def test_rules_follow_llamacpps_preference() -> None:
    assert len({(r.ggml_type, r.feature) for r in REPACK_RULES}) == len(REPACK_RULES)
    assert repack_rule("Q4_0", 4096, AVX2).layout == "q4_0_8x8_q8_0"  # type: ignore[union-attr]
    assert repack_rule("Q4_0", 4, AVX2) is None  # the x86 layout interleaves 8 rows
    assert repack_rule("Q4_0", 4, PI5).layout == "q4_0_4x4_q8_0"  # type: ignore[union-attr]
    assert repack_rule("Q4_0", 4096, I8MM).layout == "q4_0_4x8_q8_0"  # type: ignore[union-attr]
    assert repack_rule("Q8_0", 4096, AVX512) is None and repack_rule("Q8_0", 4096, PI5) is not None
    assert repack_rule("Q2_K", 4096, AVX2) is None and repack_rule("Q2_K", 4096, AVX512) is not None
    assert repack_rule("Q6_K", 4096, AVX512) is None and repack_rule("Q6_K", 4096, PI5) is not None
    assert all(repack_rule(r.ggml_type, 4096, PI4) is None for r in REPACK_RULES)  # plain NEON: nothing


def _shape(matrix: str, embd: str = "Q6_K", tied: bool = False, rows: int = 2048) -> ModelShape:
    def t(name: str, typ: str, ne0: int, ne1: int) -> TensorInfo:
        return TensorInfo(name, typ, ne0, ne1, tensor_bytes(typ, ne0 * ne1))

    tensors = [t("token_embd.weight", embd, 2048, 32000), t("output_norm.weight", "F32", 2048, 1)]
    tensors += [t(f"blk.{i}.ffn_up.weight", matrix, 2048, rows) for i in range(32)]
    if not tied:
        tensors.append(t("output.weight", "Q6_K", 2048, 32000))
    return ModelShape(n_layer=32, n_embd=2048, n_ff=rows, n_head=16, n_head_kv=4, head_dim_k=128, head_dim_v=128,
                      n_vocab=32000, n_ctx_train=8192, n_swa=0, n_swa_layers=0, tensors=tuple(tensors))


def test_auto_mode_per_device() -> None:
    q4, q8 = _shape("Q4_0", rows=8192), _shape("Q8_0", rows=8192)
    assert not use_mmap(q4, AVX2) and use_mmap(q4, PI4)  # x86 repacks Q4_0; a Pi 4 build repacks nothing
    assert use_mmap(q8, AVX2) and not use_mmap(q8, PI5)  # Q8_0 is repacked on dotprod only
    assert use_mmap(_shape("Q4_0", rows=256), AVX2)  # repacked, but most bytes are the embeddings and the head
    assert use_mmap(q4, AVX2, "on") and not use_mmap(q4, PI4, "off")
    with pytest.raises(UsageError, match="mmap mode"):
        use_mmap(q4, AVX2, "sometimes")


def test_the_estimate_models_both_loads() -> None:
    shape = _shape("Q4_0", rows=8192)
    rep = repacked_file_bytes(shape, AVX2) / 2**20
    on, off = (estimate_memory(shape, 2048, AVX2, mmap=m) for m in ("on", "off"))
    assert (on.load_mode, off.load_mode) == ("mmap", "no-mmap")
    assert on.weights_repacked_mib == off.weights_repacked_mib == pytest.approx(rep)
    assert on.weights_cold_mib == pytest.approx(rep) and off.weights_cold_mib == 0
    assert off.weights_file_mib == 0 and off.weights_read_mib == pytest.approx(shape.weight_bytes / 2**20 - rep)
    assert on.total_mib == pytest.approx(off.total_mib)  # one copy needed either way ...
    assert on.rss_mib - off.rss_mib == pytest.approx(rep)  # ... but mmap's RSS also shows the cold file pages
    assert estimate_memory(shape, 2048, AVX2).load_mode == "no-mmap"
    assert estimate_memory(shape, 2048, PI4).rss_mib == estimate_memory(shape, 2048, PI4).total_mib


def test_a_tied_head_is_repacked_from_the_embeddings() -> None:
    tied = _shape("Q4_0", embd="Q4_0", tied=True)
    emb = tied.tensors[0].n_bytes
    assert not is_repacked(tied.tensors[0], AVX2)  # the embeddings are gathered, never multiplied ...
    assert tied_output_bytes(tied, AVX2) == emb  # ... but the head that shares them is
    assert tied_output_bytes(_shape("Q4_0", embd="Q4_0"), AVX2) == 0
    est = estimate_memory(tied, 2048, AVX2, mmap="on")
    assert est.weights_repacked_mib * 2**20 == repacked_file_bytes(tied, AVX2) + emb


# ------------------------------------------------------------------------------- against llama.cpp itself

SMALL = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu", rms_norm_eps=1e-5,
             hidden_size=256, intermediate_size=768, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=1024, max_position_embeddings=2048, rope_theta=10000.0)
_PROBE = r"""
import sys, llama_cpp
llama_cpp.Llama(sys.argv[1], n_ctx=256, n_threads=1, use_mmap=sys.argv[2] == "on", verbose=True)
"""


def llama_cpp_repacks(path: Path, mmap: str = "on") -> tuple[dict[str, str], float]:
    """llama.cpp's own account of a load: {tensor: layout} from its repack log lines, CPU_REPACK buffer MiB."""
    out = subprocess.run([sys.executable, "-c", _PROBE, str(path), mmap], capture_output=True, text=True,
                         check=True).stderr
    layouts = dict(re.findall(r"repack tensor (\S+) with (\S+)", out))
    size = re.search(r"CPU_REPACK model buffer size =\s*([\d.]+) MiB", out)
    return layouts, float(size.group(1)) if size else 0.0


@pytest.fixture(scope="module")
def small_ggufs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, bool], Path]:
    """A small random-weight llama (256-wide rows: every k-quant applies) in several types, tied and untied."""
    from edge_run.converters.gguf.convert import ConvertOptions, convert_to_gguf
    from tools.shapes import Shape, build

    root = tmp_path_factory.mktemp("small-shapes")
    made = {}
    for tied in (False, True):
        ckpt = build(Shape(f"small-{tied}", "test", {**SMALL, "tie_word_embeddings": tied}), root=root)
        paths = convert_to_gguf(ckpt, root / "gguf", ConvertOptions(quants="q4_0,q4_k_m,q8_0,q2_k,iq4_nl",
                                                                     name=f"small-{tied}"))
        made.update({(quant_of(p), tied): p for p in paths})
    return made


def quant_of(path: Path) -> str:
    return path.name.split(".")[-2].upper()


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["Q4_0", "Q4_K_M", "Q8_0", "Q2_K", "IQ4_NL"])
@pytest.mark.parametrize("tied", [False, True])
def test_the_rules_predict_what_llama_cpp_repacks_here(quant: str, tied: bool,
                                                       small_ggufs: dict[tuple[str, bool], Path]) -> None:
    """Per tensor: the ones llama.cpp repacks on this machine, with the layout the table names; and the size of
    its CPU_REPACK buffer (a tied head's duplicate included)."""
    path = small_ggufs[quant, tied]
    shape, simd = shape_from_gguf(path), host_simd()
    layouts, buffer_mib = llama_cpp_repacks(path)
    want = {t.name: r.layout for t in shape.tensors
            if t.name != "token_embd.weight" and (r := repack_rule(t.type, t.ne1, simd)) is not None}
    got = {n: v for n, v in layouts.items() if n != "token_embd.weight"}
    assert {n: v.split("_q8")[0] for n, v in got.items()} == {n: v.split("_q8")[0] for n, v in want.items()}
    dup = tied_output_bytes(shape, simd)
    assert ("token_embd.weight" in layouts) == (dup > 0)
    assert buffer_mib == pytest.approx((repacked_file_bytes(shape, simd) + dup) / 2**20, abs=0.006)
    if "avx2" in simd and quant in ("Q4_0", "Q4_K_M"):
        assert want  # this machine exercises the rules, not only their absence


@pytest.mark.slow
def test_no_mmap_repacks_the_same(small_ggufs: dict[tuple[str, bool], Path]) -> None:
    path = small_ggufs["Q4_0", False]
    assert llama_cpp_repacks(path, "off") == llama_cpp_repacks(path, "on")


# ----------------------------------------------------------------------------------------- the commands

def test_run_loads_in_the_mode_asked(tiny_gguf: Path, cli: Callable[..., CliResult]) -> None:
    modes = {}
    for mode in ("on", "off", "auto"):
        r = cli("run", tiny_gguf, "-p", "hello", "-n", "2", "--mmap", mode, "--json")
        assert r.code == 0, r.stderr
        modes[mode] = json.loads(r.stdout)["memory"]
    assert (modes["on"]["load_mode"], modes["off"]["load_mode"]) == ("mmap", "no-mmap")
    auto = "mmap" if use_mmap(shape_from_gguf(tiny_gguf), host_simd()) else "no-mmap"
    assert modes["auto"]["load_mode"] == auto
    assert modes["off"]["weights_file_mib"] == 0 and modes["off"]["weights_read_mib"] > 0
    bad = cli("run", tiny_gguf, "-p", "hello", "--mmap", "maybe")
    assert bad.code == 2 and "mmap mode" in bad.stderr


@pytest.mark.slow
def test_pick_fits_an_8b_q4_k_m_on_a_pi5(tmp_path: Path, cli: Callable[..., CliResult]) -> None:
    """The issue's case: an 8B Q4_K_M needs one copy of its weights on a Pi 5 (dotprod repacks Q4_K / Q6_K, so it
    loads without mmap) as on a Pi 4 (nothing repacked, mmap): it fits both 8 GB boards, with the same need."""
    from tools.shapes import build

    models = tmp_path / "models"
    models.mkdir()
    (models / "llama3.1-8b").symlink_to(build("llama3.1-8b", header_only=True), target_is_directory=True)
    rows = {}
    for profile in ("pi5-8gb", "pi4-8gb"):
        r = cli("pick", "--profile", profile, "--models", models, "--json")
        assert r.code == 0, r.stderr
        (row,) = [c for c in json.loads(r.stdout)["candidates"] if c["quant"] == "Q4_K_M" and not c["imatrix"]]
        rows[profile] = row
        assert row["fits"], row
    assert (rows["pi5-8gb"]["memory"]["load_mode"], rows["pi4-8gb"]["memory"]["load_mode"]) == ("no-mmap", "mmap")
    assert rows["pi5-8gb"]["memory"]["total_mib"] == pytest.approx(rows["pi4-8gb"]["memory"]["total_mib"], rel=0.01)
    assert rows["pi5-8gb"]["memory"]["total_mib"] < 5500  # 4.6 GiB of weights, KV, scratch: not 2 copies
