"""The ONNX artifact folder: genai_config.json and graph I/O against onnxruntime-genai's format, the
manifest against the files, one external data file, the CLI (convert / run / inspect) and its errors."""

from __future__ import annotations

import errno
import itertools
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

from edge_run.converters.checkpoint import open_checkpoint
from edge_run.converters.onnx import graph as graph_module
from edge_run.converters.onnx.convert import OnnxOptions, convert_to_onnx
from edge_run.core.errors import ArtifactError
from edge_run.core.fsutil import TEMP_PREFIX, sha256_file
from edge_run.core.manifest import read_manifest
from edge_run.runtime.artifacts.formats import open_backend
from edge_run.runtime.backends import GenerationParams, LoadOptions

from .conftest import CliResult
from .failure_util import assert_clean_failure
from .test_convert_errors import CASES, _copy

# onnxruntime-genai's decoder config keys and the types it parses them as
GENAI_MODEL_KEYS = {"bos_token_id": int, "context_length": int, "decoder": dict, "eos_token_id": (int, list),
                    "pad_token_id": int, "type": str, "vocab_size": int}
GENAI_DECODER_KEYS = {"filename": str, "head_size": int, "hidden_size": int, "inputs": dict, "outputs": dict,
                      "num_attention_heads": int, "num_hidden_layers": int, "num_key_value_heads": int,
                      "session_options": dict}
GENAI_SEARCH_KEYS = {"do_sample": bool, "max_length": int, "num_beams": int, "past_present_share_buffer": bool,
                     "temperature": float, "top_k": int, "top_p": float}


@pytest.fixture(scope="module")
def artifacts(tiny_checkpoint: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("onnx-artifacts")
    made = {}
    for arch, quant, sym in (("qwen2", "int4", False), ("gemma3", "mixed", True)):
        (made[arch],) = convert_to_onnx(tiny_checkpoint(arch), out, OnnxOptions(quant=quant, symmetric=sym, name=arch))
    return made


def _graph(art: Path) -> onnx.ModelProto:
    return onnx.load(str(art / "model.onnx"), load_external_data=False)


def _dims(vi: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]


@pytest.mark.parametrize("arch", ["qwen2", "gemma3"])
def test_genai_config_matches_format_and_graph(arch: str, artifacts: dict[str, Path],
                                               tiny_checkpoint: Callable[[str], Path]) -> None:
    art = artifacts[arch]
    cfg = json.loads((art / "genai_config.json").read_text())
    model, search = cfg["model"], cfg["search"]
    for keys, section in ((GENAI_MODEL_KEYS, model), (GENAI_DECODER_KEYS, model["decoder"]),
                          (GENAI_SEARCH_KEYS, search)):
        for key, kind in keys.items():
            assert isinstance(section[key], kind), key
    dec = model["decoder"]
    assert (art / dec["filename"]).is_file()
    hf = json.loads((tiny_checkpoint(arch) / "config.json").read_text())
    assert dec["num_hidden_layers"] == hf["num_hidden_layers"]
    assert dec["num_key_value_heads"] == hf["num_key_value_heads"]
    assert dec["hidden_size"] == hf["hidden_size"]
    assert model["vocab_size"] == hf["vocab_size"]
    assert model["type"] == {"qwen2": "qwen2", "gemma3": "gemma3_text"}[arch]

    g = _graph(art).graph
    inputs = {i.name: _dims(i) for i in g.input}
    outputs = {o.name: _dims(o) for o in g.output}
    n, kv, d = dec["num_hidden_layers"], dec["num_key_value_heads"], dec["head_size"]
    io = dec["inputs"]
    assert io["input_ids"] in inputs and io["attention_mask"] in inputs
    assert dec["outputs"]["logits"] in outputs
    assert outputs["logits"] == ["batch_size", "logits_length", model["vocab_size"]]
    for layer in range(n):
        for side, past_key, present_key in (("key", "past_key_names", "present_key_names"),
                                            ("value", "past_value_names", "present_value_names")):
            past, present = io[past_key] % layer, dec["outputs"][present_key] % layer
            assert past == f"past_key_values.{layer}.{side}" and present == f"present.{layer}.{side}"
            assert inputs[past] == ["batch_size", kv, "past_sequence_length", d]
            assert outputs[present] == ["batch_size", kv, "total_sequence_length", d]
    assert set(inputs) == {"input_ids", "attention_mask", "logits_to_keep"} | {
        f"past_key_values.{i}.{s}" for i in range(n) for s in ("key", "value")}
    # the one extra input is optional: an initializer supplies its default (every position)
    assert "logits_to_keep" in {t.name for t in _graph(art).graph.initializer}
    # nodes are named by their place in the model
    names = {node.name for node in g.node}
    assert "/model/layers.0/attn/GroupQueryAttention" in names
    assert any(re.fullmatch(r"/model/layers\.\d+/mlp/down_proj/MatMul", x) for x in names)
    # end-of-generation ids are real special tokens of the tokenizer
    tok = json.loads((art / "tokenizer.json").read_text())
    specials = {a["id"] for a in tok["added_tokens"]}
    eos = model["eos_token_id"]
    assert set(eos if isinstance(eos, list) else [eos]) <= specials


@pytest.mark.parametrize("arch", ["qwen2", "gemma3"])
def test_manifest_describes_the_folder(arch: str, artifacts: dict[str, Path],
                                       tiny_checkpoint: Callable[[str], Path]) -> None:
    art = artifacts[arch]
    m = read_manifest(art)
    assert m is not None
    ckpt = open_checkpoint(tiny_checkpoint(arch))
    assert (m.format, m.artifact, m.arch, m.architecture) == ("onnx", "model.onnx", arch, ckpt.architecture)
    assert m.sha256 == sha256_file(art / "model.onnx.data")
    assert m.file_size == sum(p.stat().st_size for p in art.iterdir() if p.name != "manifest.json")
    assert m.parameter_count == ckpt.parameter_count()
    assert m.tokenizer == "gpt2" and m.context_length == ckpt.config["max_position_embeddings"]
    assert m.quant == {"qwen2": "int4-b32-asym", "gemma3": "mixed-b32-sym"}[arch]
    assert m.source["digest"] == ckpt.digest()
    # bits per weight = the weight initializers' bytes over the parameter count
    g = _graph(art).graph
    weight_bytes = sum(int(e.value) for t in g.initializer for e in t.external_data
                       if e.key == "length" and not t.name.startswith(("cos_cache", "sin_cache")))
    assert m.bits_per_weight == pytest.approx(8 * weight_bytes / m.parameter_count, rel=1e-3)
    assert 4 < m.bits_per_weight < 9
    bits = m.extra["linear_bits"]
    assert set(bits) == {"int4", "int8"}  # int4: the measured sensitivity mix gives some matrices 8 bits


def test_weights_live_in_one_external_file(artifacts: dict[str, Path]) -> None:
    art = artifacts["qwen2"]
    g = _graph(art).graph
    size = (art / "model.onnx.data").stat().st_size
    spans = []
    for t in g.initializer:
        ext = {e.key: e.value for e in t.external_data}
        if t.data_location == onnx.TensorProto.EXTERNAL:
            assert ext["location"] == "model.onnx.data"
            spans.append((int(ext["offset"]), int(ext["offset"]) + int(ext["length"])))
        else:
            assert t.name.startswith(("/model/constants/", "logits_to_keep")) and len(t.raw_data) < 1024
    spans.sort()
    assert spans[-1][1] <= size
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))  # no overlap
    assert sorted(p.name for p in art.iterdir()) == sorted([
        "generation_config.json", "genai_config.json", "manifest.json", "model.onnx", "model.onnx.data",
        "tokenizer.json", "tokenizer_config.json"])


def test_cli_convert_run_inspect(tiny_checkpoint: Callable[[str], Path], tmp_path: Path,
                                 cli: Callable[..., CliResult]) -> None:
    res = cli("convert", tiny_checkpoint("llama"), "--format", "onnx", "--quant", "int4,int8", "--block-size", "16",
              "--out", tmp_path, "--name", "m", "--json")
    assert res.code == 0, res.stderr
    paths = [Path(p) for p in json.loads(res.stdout)]
    assert [p.name for p in paths] == ["m.int4-b16-asym", "m.int8-b16-asym"]
    run = cli("run", paths[0], "-p", "The history of", "-n", "8", "--json")
    assert run.code == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["prompt_tokens"] > 0 and 0 < out["completion_tokens"] <= 8
    assert out["decode_tokens_per_s"] > 0 and out["prefill_tokens_per_s"] > 0
    chat = cli("run", paths[0], "-p", "hello", "--chat", "-n", "4", "--temp", "0.8", "--seed", "3", "--json")
    assert chat.code == 0, chat.stderr
    info = cli("inspect", paths[1], "--json")
    assert info.code == 0, info.stderr
    data = json.loads(info.stdout)
    assert data["format"] == "onnx" and data["manifest"]["quant"] == "int8-b16-asym"
    assert data["metadata"]["quantized_ops"] == {"MatMulNBits int8 block 16": 3 * 5 + 1,
                                                 "GatherBlockQuantized int8 block 16": 1}


def test_sampling_is_seeded(artifacts: dict[str, Path]) -> None:
    with open_backend(artifacts["qwen2"], LoadOptions(n_ctx=128, n_threads=2)) as b:
        prompt = b.tokenize("The history of the", add_special=False)
        runs = [b.generate("The history of the", GenerationParams(max_tokens=12, temperature=1.0, top_k=0,
                                                                   top_p=1.0, min_p=0.0, seed=s)).text
                for s in (1, 1, 2)]
        assert runs[0] == runs[1]
        assert runs[0] != runs[2]
        assert b.tokenize("<s>" + "The history of the", add_special=False) == [0, *prompt]


ONNX_CASES = [*CASES, ("bad-block-size", None, 2, "block size"), ("unknown-quant", None, 2, "int4")]


@pytest.mark.parametrize("name,breaker,code,needle", ONNX_CASES, ids=[c[0] for c in ONNX_CASES])
def test_bad_input_fails_cleanly(name: str, breaker: Callable[[Path], None] | None, code: int, needle: str,
                                 tiny_checkpoint: Callable[[str], Path], tmp_path: Path,
                                 cli: Callable[..., CliResult]) -> None:
    ckpt = _copy(tiny_checkpoint("llama"), tmp_path / "ckpt")
    if breaker is not None:
        breaker(ckpt)
    args = {"bad-block-size": ["--block-size", "48"], "unknown-quant": ["--quant", "int3"]}.get(name, [])
    out = tmp_path / "out"
    res = cli("convert", ckpt, "--format", "onnx", "--out", out, *args)
    assert_clean_failure(res, code, needle)
    assert not out.exists() or list(out.iterdir()) == []


def test_disk_full_midway_leaves_nothing(tiny_checkpoint: Callable[[str], Path], tmp_path: Path,
                                         cli: Callable[..., CliResult], monkeypatch: pytest.MonkeyPatch) -> None:
    real = graph_module.Graph.initializer_chunks
    calls = {"n": 0}

    def failing(self: graph_module.Graph, *a: object, **k: object) -> str:
        calls["n"] += 1
        if calls["n"] == 12:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **k)

    monkeypatch.setattr(graph_module.Graph, "initializer_chunks", failing)
    out = tmp_path / "out"
    res = cli("convert", tiny_checkpoint("llama"), "--format", "onnx", "--out", out)
    # the progress bar had started; the error is still one line and the last one
    assert res.code == 4 and "Traceback" not in res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "disk full" in errors[0] and res.stderr.strip().endswith(errors[0])
    assert calls["n"] == 12
    assert list(out.iterdir()) == []


def test_existing_artifact_needs_force(tiny_checkpoint: Callable[[str], Path], tmp_path: Path,
                                       cli: Callable[..., CliResult]) -> None:
    ckpt = tiny_checkpoint("qwen3")
    args = ("convert", ckpt, "--format", "onnx", "--out", tmp_path, "--name", "m")
    assert cli(*args).code == 0
    art = tmp_path / "m.int4-b32-asym"
    before = sha256_file(art / "model.onnx.data")
    (art / "model.onnx.data").write_bytes(b"tampered")
    assert_clean_failure(cli(*args), 4, "--force")
    assert (art / "model.onnx.data").read_bytes() == b"tampered"
    assert cli(*args, "--force").code == 0
    assert sha256_file(art / "model.onnx.data") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.int4-b32-asym"]
    assert not any(p.name.startswith(TEMP_PREFIX) for p in tmp_path.iterdir())


def test_broken_artifact_fails_to_load_cleanly(artifacts: dict[str, Path], tmp_path: Path) -> None:
    art = shutil.copytree(artifacts["qwen2"], tmp_path / "a")
    data = (art / "model.onnx.data").read_bytes()
    (art / "model.onnx.data").write_bytes(data[: len(data) // 3])
    with pytest.raises(ArtifactError, match="onnxruntime could not load"):
        open_backend(art, LoadOptions(n_ctx=64))
    (art / "genai_config.json").unlink()
    with pytest.raises(ArtifactError, match=r"genai_config\.json"):
        open_backend(art, LoadOptions(n_ctx=64))


def test_eval_logits_bounds(artifacts: dict[str, Path]) -> None:
    with open_backend(artifacts["gemma3"], LoadOptions(n_ctx=64, n_threads=2)) as b:
        logits = b.eval_logits(list(range(3, 40)))
        assert logits.shape == (37, b.n_vocab) and logits.dtype == np.float32 and np.isfinite(logits).all()
        with pytest.raises(Exception, match="context"):
            b.eval_logits(list(range(3, 80)))


def test_buffers_onnxruntime_reads_in_place_are_cache_line_aligned() -> None:
    from edge_run.runtime.backends.onnx import CACHE_LINE, aligned_zeros

    for shape in [(1, 3, 17, 64), (1, 1, 49152), (5,)]:
        a = aligned_zeros(shape)
        assert a.ctypes.data % CACHE_LINE == 0 and a.shape == shape and a.flags.c_contiguous and not a.any()
        a[...] = 1.0  # writable, and its memory stays alive through the view
        assert float(a.sum()) == float(np.prod(shape))
