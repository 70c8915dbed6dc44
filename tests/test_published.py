"""The published prior (src/edge_run/runtime/pick/published.py): the table's integrity, its conversion to bits per
byte, the token counts behind that conversion, and the picker using it only for a model it can tell is the
published one and that nothing measured here describes."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_run.core.quants import BY_NAME
from edge_run.runtime.eval.store import QualityStore
from edge_run.runtime.pick import published
from edge_run.runtime.pick.picker import gather_candidates
from edge_run.runtime.pick.quality import candidate_quality
from edge_run.runtime.pick.types import Candidate

from .conftest import CliResult

L3 = "meta-llama/Meta-Llama-3-8B"
# Meta-Llama-3-8B's config.json (the shape published.MODELS matches on, plus what the converter needs)
L3_CONFIG = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu", rms_norm_eps=1e-5,
                 attention_bias=False, mlp_bias=False, hidden_size=4096, intermediate_size=14336,
                 num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                 max_position_embeddings=8192, rope_theta=500000.0, tie_word_embeddings=False)


def test_every_row_is_cited_and_known() -> None:
    seen = set()
    for p in published.PUBLISHED:
        assert p.model in published.MODELS and p.source in published.SOURCES
        assert published.MODELS[p.model].tokenizer in published.TOKENIZERS
        assert p.quant in BY_NAME, p.quant
        assert (p.model, p.quant, p.imatrix) not in seen
        seen.add((p.model, p.quant, p.imatrix))
        assert 1 < p.ppl < 100
    assert all("http" in s for s in published.SOURCES.values())


def test_perplexity_becomes_bits_per_byte() -> None:
    f16 = next(p for p in published.PUBLISHED if p.model == L3 and p.quant == "F16")
    assert f16.bpb == pytest.approx(math.log2(6.233160) * 289_077 / 1_290_590)
    assert f16.bpb == pytest.approx(0.5913, abs=1e-4)
    rows = {(p.quant, p.imatrix): p.bpb for p in published.PUBLISHED if p.model == L3}
    assert rows[("F16", False)] < rows[("Q8_0", False)] < rows[("Q4_K_M", False)] < rows[("Q2_K", False)]
    assert rows[("Q4_K_M", True)] < rows[("Q4_K_M", False)]  # the importance matrix row is its own


def _vocab_files(tmp_path: Path) -> Path:
    """llama.cpp's vocabulary files from the installed llama-cpp-python's sdist (the tools cache's unpacked copy,
    else the sdist itself, fetched from PyPI)."""
    from edge_run.core.fsutil import cache_dir
    from tools.llama_tools import installed_version

    version = installed_version()
    models = cache_dir() / "llama-tools" / version / "src" / "vendor" / "llama.cpp" / "models"
    if models.is_dir():
        return models
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                    f"llama-cpp-python=={version}", "-d", str(tmp_path)], check=True, capture_output=True)
    (archive,) = tmp_path.glob("llama_cpp_python-*.tar.gz")
    with tarfile.open(archive) as tar:
        for m in tar.getmembers():
            if "/vendor/llama.cpp/models/ggml-vocab-" in m.name and m.name.endswith(".gguf"):
                m.name = Path(m.name).name
                tar.extract(m, tmp_path / "models", filter="data")
    return tmp_path / "models"


@pytest.mark.slow
def test_token_counts_are_llamacpps(tmp_path: Path) -> None:
    """Each tokenizer's count of wiki.test.raw, recounted with llama.cpp's own vocabulary files."""
    from llama_cpp import Llama

    from edge_run.runtime.eval.corpora import builtin_corpus_path

    text = builtin_corpus_path("wikitext-2-raw-test").read_bytes()
    assert len(text) == published.WIKITEXT2_TEST_BYTES
    models = _vocab_files(tmp_path)
    for name, vocab in (("llama3", "llama-bpe"), ("llama2", "llama-spm"), ("qwen2", "qwen2")):
        llm = Llama(model_path=str(models / f"ggml-vocab-{vocab}.gguf"), vocab_only=True, verbose=False)
        assert len(llm.tokenize(text, add_bos=True, special=False)) == published.TOKENIZERS[name][0], name


@pytest.fixture(scope="module")
def l3_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A header-only checkpoint of Meta-Llama-3-8B's shape (sparse: no disk used)."""
    from tools.shapes import Shape, build

    root = tmp_path_factory.mktemp("shapes")
    return build(Shape("l3", L3, L3_CONFIG), header_only=True, root=root)


def _named(src: Path, dest: Path) -> Path:
    """``src`` under another folder name (its files linked: the sparse weights are never copied)."""
    dest.mkdir(parents=True)
    for f in src.iterdir():
        (dest / f.name).symlink_to(f)
    return dest


def _quality(models: Path, quant: str, imatrix: bool = False) -> Candidate:
    cands = gather_candidates(models, store=QualityStore(models.parent / "store"))
    return next(c for c in cands if c.quant == quant and c.imatrix == imatrix)


@pytest.mark.slow
def test_the_picker_uses_the_published_figure(tmp_path: Path, l3_checkpoint: Path) -> None:
    models = tmp_path / "models"
    _named(l3_checkpoint, models / "Meta-Llama-3-8B")
    figures = {(p.quant, p.imatrix): p for p in published.PUBLISHED if p.model == L3}
    for quant, imatrix in (("Q4_K_M", False), ("Q8_0", False), ("Q4_K_M", True), ("Q2_K", True)):
        q = candidate_quality(_quality(models, quant, imatrix))
        assert q.published and not q.measured and not q.unmeasured
        assert q.bpb == pytest.approx(figures[(quant, imatrix)].bpb)
        assert q.label == f"{q.bpb:.3f} published" and "llama.cpp tools/perplexity/README.md" in q.basis
        assert f"PPL {figures[(quant, imatrix)].ppl:g}" in q.basis


@pytest.mark.slow
def test_a_quant_type_without_a_figure_is_predicted_from_the_published_ones(tmp_path: Path,
                                                                            l3_checkpoint: Path) -> None:
    """Llama-2-7b has no published F16 figure: it is predicted from the closest published one, and marked so."""
    cfg = {**L3_CONFIG, "intermediate_size": 11008, "num_key_value_heads": 32, "vocab_size": 32000,
           "max_position_embeddings": 4096, "rope_theta": 10000.0}
    from tools.shapes import Shape, build

    models = tmp_path / "models"
    _named(build(Shape("l2", "meta-llama/Llama-2-7b-hf", cfg), header_only=True, root=tmp_path / "s"),
           models / "Llama-2-7b-hf")
    q8 = candidate_quality(_quality(models, "Q8_0"))
    f16 = candidate_quality(_quality(models, "F16"))
    assert q8.published and "predicted" not in q8.basis
    assert f16.published and "predicted from published Q8_0" in f16.basis and f16.label.endswith("* published")
    assert f16.bpb < q8.bpb


@pytest.mark.slow
def test_only_the_published_model_gets_its_figures(tmp_path: Path, l3_checkpoint: Path) -> None:
    # another model of the same shape (a fine-tune), the right name on another shape: nothing published
    instruct = _named(l3_checkpoint, tmp_path / "a" / "models" / "Meta-Llama-3-8B-Instruct")
    assert candidate_quality(_quality(instruct.parent, "Q4_K_M")).unmeasured
    cfg = {**L3_CONFIG, "num_hidden_layers": 2}
    from tools.shapes import Shape, build

    small = _named(build(Shape("x", L3, cfg), header_only=True, root=tmp_path / "s"),
                   tmp_path / "b" / "models" / "Meta-Llama-3-8B")
    assert candidate_quality(_quality(small.parent, "Q4_K_M")).unmeasured
    # the Hugging Face cache's layout names the repo above a snapshot folder
    hub = tmp_path / "c" / "models"
    snap = _named(l3_checkpoint, hub / "models--meta-llama--Meta-Llama-3-8B" / "snapshots" / "0a1b")
    assert candidate_quality(_quality(hub, "Q4_K_M")).published
    assert snap.name == "0a1b"


@pytest.mark.slow
def test_a_measurement_of_the_model_itself_wins(tmp_path: Path, l3_checkpoint: Path) -> None:
    models = tmp_path / "models"
    _named(l3_checkpoint, models / "Meta-Llama-3-8B")
    c = _quality(models, "Q4_K_M")
    mine = {"bpb": 0.7, "tokens_scored": 1000, "bytes_scored": 4400, "chunks": 10}
    from dataclasses import replace

    q = candidate_quality(replace(c, references=(("Q4_K_M", mine),)))
    assert q.measured and not q.published and q.bpb == 0.7


@pytest.mark.slow
def test_pick_labels_published_quality(tmp_path: Path, l3_checkpoint: Path, cli: Callable[..., CliResult]) -> None:
    models = tmp_path / "models"
    _named(l3_checkpoint, models / "Meta-Llama-3-8B")
    r = cli("pick", "--profile", "pi5-8gb", "--models", models, "--json")
    assert r.code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["pick"]["quality"]["published"] and not out["pick"]["quality"]["measured"]
    assert all(c["quality"]["published"] for c in out["candidates"])
    shown = cli("pick", "--profile", "pi5-8gb", "--models", models)
    assert shown.code == 0 and "published" in shown.stdout
