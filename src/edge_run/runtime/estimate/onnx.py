"""Memory estimate of running an ONNX artifact folder with edge-run's onnxruntime backend on a CPU.

    peak RSS = runtime baseline (python, numpy, onnxruntime, tokenizers imported)      anonymous
             + tokenizer: the tokenizers library's tables and the backend's parsed       anonymous
               tokenizer.json (12x the file's size)
             + library code (interpreter, onnxruntime kernels touched by a run)          file-backed
             + weights: onnxruntime maps model.onnx.data; MatMulNBits prepacks its       file-backed (part)
               matrices into its own layout (1.40x their bytes, with the pages read),    + anonymous
               the rest (quantized embedding table, norms) costs 0.76x its bytes
             + KV cache: 2 x layers x kv_heads x head_size x n_ctx x 4 bytes (f32)      anonymous
               (genai_config.json; preallocated at the full context, resident as it fills)
             + compute scratch a prompt of up to 512 tokens leaves in onnxruntime's      anonymous
               arena (the backend runs a prompt in one call: a longer one costs more)

The constants below were measured with tools/validate_onnx_estimator.py (x86-64, CPython 3.11, onnxruntime
1.32) on the zoo's SmolLM2-135M, Gemma 3 270M and Qwen2.5-Coder-0.5B int4 artifacts, each context filled to the
end: the weight factors are a least-squares fit over the three, the rest measured directly. Errors (in the fit
and leaving each model out of it) are in results/estimator_onnx.json and the README.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from edge_run.core.errors import ArtifactError
from edge_run.core.formats import ONNX_GRAPH, payload_files
from edge_run.core.stamp_cache import StampCache, files_stamp
from edge_run.runtime.estimate.gguf import MIB, MemoryEstimate

RUNTIME_ANON_MIB = 24.7  # python + numpy + onnxruntime + tokenizers + edge_run imported, nothing loaded
LIBRARY_FILE_MIB = 55.7  # file-backed code pages once a prompt has run (26.7 of them before loading)
TOKENIZER_EXPANSION = 12.0  # anonymous bytes per byte of tokenizer.json (Rust tables + the parsed JSON)
PREPACKED_FACTOR = 1.40  # resident bytes per byte of a MatMulNBits initializer (its prepacked copy + mapped pages)
OTHER_WEIGHTS_FACTOR = 0.76  # resident bytes per byte of every other initializer (embedding table, norms)
WEIGHTS_FILE_FRACTION = 0.20  # of the graph's bytes, mapped pages that stay resident (the file-backed share)
SCRATCH_MIB_PER_512 = 32.0  # onnxruntime's arena after a 512-token prompt (scaled by the prompt length)
KV_BYTES = 4  # the backend's cache buffers are float32
TOKENIZER_FILE = "tokenizer.json"
GENAI_CONFIG = "genai_config.json"


@dataclass(frozen=True)
class OnnxFacts:
    n_layer: int
    n_head_kv: int
    head_size: int
    context_length: int
    graph_bytes: int  # model.onnx and its external data
    prepacked_bytes: int  # initializers MatMulNBits reads (onnxruntime prepacks them)
    tokenizer_bytes: int


@functools.lru_cache(maxsize=16)
def _facts(folder: str, stamp: tuple[tuple[str, int, int], ...]) -> OnnxFacts:
    path = Path(folder) / GENAI_CONFIG
    try:
        model = json.loads(path.read_text(encoding="utf-8"))["model"]
        dec = model["decoder"]
        dims = (int(dec["num_hidden_layers"]), int(dec["num_key_value_heads"]), int(dec["head_size"]),
                int(model.get("context_length") or 0))
    except FileNotFoundError as e:
        raise ArtifactError(f"the ONNX artifact lacks {GENAI_CONFIG}", "re-convert it with `edge-run convert`") from e
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise ArtifactError(f"{GENAI_CONFIG} is malformed ({e!r} missing or invalid)",
                            "re-convert the artifact") from e
    graph = sum(size for name, size, _ in stamp if name.endswith((".onnx", ".onnx.data")))
    tokenizer = sum(size for name, size, _ in stamp if name == TOKENIZER_FILE)
    return OnnxFacts(*dims, graph_bytes=graph, prepacked_bytes=_prepacked_bytes(Path(folder)),
                     tokenizer_bytes=tokenizer)


def _prepacked_bytes(folder: Path) -> int:
    """Bytes of the initializers a MatMulNBits node reads, from the graph alone (external data stays on disk)."""
    import onnx

    try:
        graph = onnx.load(str(folder / ONNX_GRAPH), load_external_data=False).graph
    except Exception as e:  # onnx raises DecodeError / OSError / ValueError for bad files
        raise ArtifactError(f"{ONNX_GRAPH} is not a readable ONNX model ({e})", "re-convert it") from e
    read = {name for node in graph.node if node.op_type == "MatMulNBits" for name in node.input}
    total = 0
    for t in graph.initializer:
        if t.name in read:
            ext = {e.key: e.value for e in t.external_data}
            total += int(ext.get("length", 0)) if ext else len(t.raw_data)
    return total


FACTS = StampCache("onnx-facts")  # folder + its payload files' stamps -> OnnxFacts: `run` parses no graph twice


def onnx_facts(artifact: Path) -> OnnxFacts:
    """Dimensions (genai_config.json) and byte counts (the payload files) of an ONNX artifact, read once per
    change of its files (in this process and, through FACTS, across processes)."""
    folder = Path(artifact) if Path(artifact).is_dir() else Path(artifact).parent
    files = payload_files(folder)
    cached = FACTS.get(folder, files)
    if isinstance(cached, dict):
        try:
            return OnnxFacts(**{f.name: int(cached[f.name]) for f in fields(OnnxFacts)})
        except (KeyError, TypeError, ValueError):
            pass  # a foreign or damaged entry: read the artifact
    facts = _facts(str(folder.resolve()), files_stamp(files))
    FACTS.put(folder, asdict(facts), files)
    return facts


def onnx_trained_context(artifact: Path) -> int | None:
    n = onnx_facts(artifact).context_length
    return n if n > 0 else None


def estimate_onnx(artifact: Path, n_ctx: int, n_prompt: int | None = None) -> MemoryEstimate:
    """Peak RSS of the ONNX backend at a context of ``n_ctx`` filled to the end, after a prompt of ``n_prompt``
    tokens (default: min(n_ctx, 512)) run in one call."""
    f = onnx_facts(artifact)
    ctx = min(n_ctx, f.context_length) if f.context_length else n_ctx  # the backend caps it so
    n_prompt = min(ctx, 512) if n_prompt is None else min(n_prompt, ctx)
    kv = 2 * f.n_layer * f.n_head_kv * f.head_size * ctx * KV_BYTES
    weights = PREPACKED_FACTOR * f.prepacked_bytes + OTHER_WEIGHTS_FACTOR * (f.graph_bytes - f.prepacked_bytes)
    return MemoryEstimate(
        baseline_mib=RUNTIME_ANON_MIB + TOKENIZER_EXPANSION * f.tokenizer_bytes / MIB,
        libraries_mib=LIBRARY_FILE_MIB,
        weights_file_mib=WEIGHTS_FILE_FRACTION * f.graph_bytes / MIB,
        weights_repacked_mib=weights / MIB - WEIGHTS_FILE_FRACTION * f.graph_bytes / MIB,
        kv_mib=kv / MIB,
        compute_mib=SCRATCH_MIB_PER_512 * n_prompt / 512,
        n_ctx=ctx, cache_type="f32")
