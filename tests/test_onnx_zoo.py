"""The ONNX path on the real zoo models: generation, quality against the fp32 graph, onnxruntime-genai
opening our artifact, and streaming conversion memory."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_run.runtime.artifacts.formats import open_backend
from edge_run.runtime.backends import GenerationParams, LoadOptions
from edge_run.runtime.eval.perplexity import evaluate, load_corpus

from .conftest import CliResult

pytestmark = pytest.mark.zoo


def test_smollm2_int4_knows_paris(zoo_onnx_dir: Callable[[str, str], Path], cli: Callable[..., CliResult]) -> None:
    res = cli("run", zoo_onnx_dir("smollm2-135m", "int4"), "-p", "The capital of France is", "-n", "16", "--json")
    assert res.code == 0, res.stderr
    out = json.loads(res.stdout)
    assert "Paris" in out["text"], out["text"]
    assert out["decode_tokens_per_s"] > 0


def test_gemma3_int4_generates_coherent_text(zoo_onnx_dir: Callable[[str, str], Path]) -> None:
    with open_backend(zoo_onnx_dir("gemma3-270m", "int4"), LoadOptions(n_ctx=256)) as b:
        fact = b.generate("The Eiffel Tower is located in", GenerationParams(max_tokens=16)).text
        assert "Paris" in fact, fact
        text = b.generate("The history of the Roman Empire", GenerationParams(max_tokens=48)).text
    words = re.findall(r"[A-Za-z']+", text)
    assert len(words) >= 20, text
    assert sum(c.isascii() for c in text) / len(text) > 0.95, text
    assert Counter(w.lower() for w in words).most_common(1)[0][1] <= len(words) // 3, text  # no "the the the"


def test_smollm2_int4_tracks_the_fp32_graph(zoo_onnx_dir: Callable[[str, str], Path]) -> None:
    """On real text the int4 model mostly predicts what the float model predicts."""
    corpus = load_corpus("wikitext-2-raw-test")
    r = evaluate(zoo_onnx_dir("smollm2-135m", "int4"), corpus, ctx=512, chunks=2,
                 parent=zoo_onnx_dir("smollm2-135m", "fp32"))
    q = r.quality_entry()
    ref = evaluate(zoo_onnx_dir("smollm2-135m", "fp32"), corpus, ctx=512, chunks=2).quality_entry()
    assert q["top1_agreement"] > 0.6 and q["kld_vs_parent"] < 0.6, q
    assert ref["ppl"] < q["ppl"] < 1.6 * ref["ppl"], (q, ref)
    assert 15 < ref["ppl"] < 30  # SmolLM2-135M on WikiText-2 at ctx 512


def test_onnxruntime_genai_generates_from_our_artifact(zoo_onnx_dir: Callable[[str, str], Path]) -> None:
    """onnxruntime-genai reads our genai_config.json, binds our I/O names and generates what we do."""
    import onnxruntime_genai as og

    art = zoo_onnx_dir("smollm2-135m", "int4")
    with open_backend(art, LoadOptions(n_ctx=128)) as b:
        prompt = b.tokenize("The capital of France is")
        ours = "".join(b.stream(prompt, GenerationParams(max_tokens=12)))
        assert b.last_result is not None
        n_ours = b.last_result.completion_tokens  # 12, or fewer where the model ends its answer
        stopped = b.last_result.finish_reason == "stop"
    model = og.Model(str(art))
    tokenizer = og.Tokenizer(model)
    assert [int(t) for t in tokenizer.encode("The capital of France is")] == prompt
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + 12, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(prompt)
    tokens: list[int] = []
    while not gen.is_done():
        gen.generate_next_token()
        tokens.append(int(gen.get_next_tokens()[0]))
    # genai stops at the same end-of-text token (and lists it), or after the same 12 tokens
    assert len(tokens) == (n_ours + 1 if stopped and n_ours < 12 else n_ours), (tokens, n_ours)
    assert tokenizer.decode(tokens) == ours
    assert "Paris" in ours


# VmHWM is this process's own peak (ru_maxrss would carry over the forking pytest's peak across exec)
PEAK_RSS_SCRIPT = """
import re, sys
from pathlib import Path
from edge_run.converters.onnx.convert import OnnxOptions, convert_to_onnx
convert_to_onnx(Path(sys.argv[1]), Path(sys.argv[2]), OnnxOptions(quant="int4"))
print(int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024)
"""


def test_conversion_streams(tmp_path: Path) -> None:
    """Peak RSS of a whole conversion process stays well below the checkpoint's size."""
    from tools.zoo import zoo_checkpoint

    ckpt = zoo_checkpoint("smollm2-135m")
    done = subprocess.run([sys.executable, "-c", PEAK_RSS_SCRIPT, str(ckpt), str(tmp_path)], check=True,
                          capture_output=True, text=True)
    peak = int(done.stdout.split()[-1])
    ckpt_bytes = sum(p.stat().st_size for p in ckpt.glob("*.safetensors"))
    assert peak < 0.5 * ckpt_bytes, (peak, ckpt_bytes)
