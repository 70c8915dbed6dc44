"""Memory estimate of running an ONNX artifact folder with edge-run's onnxruntime backend on a CPU.

    peak RSS = runtime baseline (python, numpy, onnxruntime, tokenizers imported)      anonymous
             + tokenizer: the tokenizers library's tables and the backend's parsed       anonymous
               tokenizer.json (~10x the file's size)
             + library code (interpreter, onnxruntime kernels touched by a run)          file-backed
             + weights: onnxruntime maps model.onnx.data; MatMulNBits prepacks every      file-backed (part)
               quantized matrix into its own layout (an anonymous copy) and the pages     + anonymous
               of what it does not repack stay mapped: 1.45x the graph's bytes
             + KV cache: 2 x layers x kv_heads x head_size x n_ctx x 4 bytes (f32)      anonymous
               (genai_config.json; preallocated at the full context, resident as it fills)
             + compute scratch a prompt of up to 512 tokens leaves in onnxruntime's      anonymous
               arena (the backend runs a prompt in one call)

Every constant below was measured with tools/validate_estimator.py on the zoo's SmolLM2-135M and Gemma 3
270M int4 artifacts (x86-64, CPython 3.11, onnxruntime 1.32), each context filled to the end; the result is
in results/estimator_onnx.json and the README.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from edge_run.core.formats import payload_files

from .errors import ArtifactError
from .estimate import MIB, MemoryEstimate

RUNTIME_ANON_MIB = 24.7  # python + numpy + onnxruntime + tokenizers + edge_run imported, nothing loaded
LIBRARY_FILE_MIB = 55.7  # file-backed code pages once a prompt has run (26.7 of them before loading)
TOKENIZER_EXPANSION = 10.4  # anonymous bytes per byte of tokenizer.json (Rust tables + the parsed JSON)
WEIGHTS_FILE_FRACTION = 0.20  # mapped pages of model.onnx(.data) that stay resident, per graph byte
WEIGHTS_ANON_FACTOR = 1.25  # prepacked MatMulNBits copies and initializers read into memory, per graph byte
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
    tokenizer_bytes: int


def _stamp(folder: Path) -> tuple[tuple[str, int, int], ...]:
    return tuple((p.name, (st := p.stat()).st_size, st.st_mtime_ns) for p in payload_files(folder))


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
    return OnnxFacts(*dims, graph_bytes=graph, tokenizer_bytes=tokenizer)


def onnx_facts(artifact: Path) -> OnnxFacts:
    """Dimensions (genai_config.json) and byte counts (the payload files) of an ONNX artifact, read once per
    change of its files."""
    folder = Path(artifact) if Path(artifact).is_dir() else Path(artifact).parent
    return _facts(str(folder.resolve()), _stamp(folder))


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
    return MemoryEstimate(
        baseline_mib=RUNTIME_ANON_MIB + TOKENIZER_EXPANSION * f.tokenizer_bytes / MIB,
        libraries_mib=LIBRARY_FILE_MIB,
        weights_file_mib=WEIGHTS_FILE_FRACTION * f.graph_bytes / MIB,
        weights_repacked_mib=WEIGHTS_ANON_FACTOR * f.graph_bytes / MIB,
        kv_mib=kv / MIB,
        compute_mib=SCRATCH_MIB_PER_512 * n_prompt / 512,
        n_ctx=ctx, cache_type="f32")
