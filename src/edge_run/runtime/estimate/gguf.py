"""Memory estimate of running a pairing with llama.cpp (through llama-cpp-python) on a CPU.

    memory needed = runtime baseline (python, numpy, llama.cpp libraries)         anonymous
                  + vocabulary tables (~120 B per token)                        anonymous
                  + library code                                                file-backed
                  + weights, by load mode (src/edge_run/runtime/estimate/load_mode.py):
                      mmap:    weights llama.cpp reads from the mapping          file-backed, read every token
                               + copies of the weights it repacks for the SIMD   anonymous
                      no-mmap: every weight (repacked ones in their layout)      anonymous
                  + KV cache: layers x kv_heads x (k_dim + v_dim) x ctx x bytes  anonymous
                  + compute scratch touched by a prompt batch                    anonymous
    peak RSS      = memory needed + (mmap) the repacked tensors' file pages: mapped and read once at load, never
                    again, so the kernel may drop them (reclaimable; RSS shows them where nothing presses)

`run`'s memory guard, `pick` and `run --json` budget the memory needed; tools/validate_estimator.py checks the
peak RSS against measured runs. KV context is padded to 256 cells as llama.cpp pads it. llama-cpp-python keeps
full-size caches for sliding-window layers (``swa_full``); with ``swa_full=False`` those layers hold
n_swa + n_ubatch cells. Weights are exact for a GGUF (its tensor table) and predicted for a planned pairing from
the checkpoint's tensor shapes and src/edge_run/runtime/estimate/quant_mix.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, astuple, dataclass, fields
from pathlib import Path
from typing import Any

import psutil

from edge_run.core.errors import ArtifactError, InsufficientMemoryError
from edge_run.core.gguf_header import GGUFHeader, read_gguf_header
from edge_run.core.planning import checkpoint_plan
from edge_run.core.quants import KV_CACHE_TYPES
from edge_run.core.stamp_cache import StampCache
from edge_run.runtime.estimate.load_mode import LOAD_MODE_NAMES, repacked_file_bytes, tied_output_bytes, use_mmap
from edge_run.runtime.estimate.quant_mix import tensor_bytes, tensor_type
from edge_run.runtime.estimate.shape import ModelShape, TensorInfo

MIB = 2**20
KV_PAD = 256
# Measured by tools/validate_estimator.py (x86-64, CPython 3.11): a process that has imported numpy,
# llama_cpp and edge_run holds ~22 MiB anonymous; the interpreter and llama.cpp/ggml libraries map
# ~22 MiB of file-backed pages once a model runs.
RUNTIME_ANON_MIB = 22.0
LIBRARY_FILE_MIB = 22.0
# arm64 (a profile or host whose SIMD lists neon): CPython 3.13 as on Raspberry Pi OS, with numpy, llama_cpp and
# edge_run imported as `edge-run run` imports them, holds ~19 MiB more anonymous memory than the x86 figure above.
# Measured by tools/arm_check inside the emulated Pi runs (guest pages only): every row of results/arm_rss.json
# was 16 MiB under the estimate made with the previous figure (35 MiB, when the run path still imported rich,
# pydantic and gguf-py), whatever the quant type, build (armv8-a / dotprod) or context.
ARM64_RUNTIME_EXTRA_MIB = 19.0
# llama.cpp's vocabulary tables (token strings, scores, attributes, text->id map, piece cache) per token
VOCAB_BYTES_PER_TOKEN = 120
# With flash attention the graph holds no [n_kv, n_ubatch, n_head] score matrix; the allocator's peak then falls
# on other nodes. 0.45 of the scores term, fitted on results/estimator.json's 24 x86 rows (flash attention on:
# SmolLM2 and Gemma3, F16..Q4_0, ctx 512..8192), leaves every row within 4 MiB (1.8%).
FLASH_ATTN_SCORES = 0.45
# general.architecture -> the sliding-window period llama.cpp assumes when a GGUF stores no per-layer pattern
# (llama-hparams set_swa_pattern(n): layers il % n < n - 1 are local, every n-th is global). edge-run's own
# files store the pattern; these rows are for files converted elsewhere. One row per architecture.
DEFAULT_SWA_PERIOD: dict[str, int] = {
    "gemma3": 6,
}
CACHE_BYTES: dict[str, float] = {name: q.kv_bytes_per_element for name, q in KV_CACHE_TYPES.items()}
@dataclass(frozen=True)
class MemoryEstimate:
    baseline_mib: float  # runtime anonymous memory + vocabulary tables
    libraries_mib: float  # file-backed code pages
    weights_file_mib: float  # weights read from the mapped file every token (0 without mmap)
    weights_repacked_mib: float  # anonymous copies of the weights llama.cpp repacks
    kv_mib: float
    compute_mib: float
    n_ctx: int
    cache_type: str
    weights_read_mib: float = 0.0  # without mmap: the weights not repacked, read into anonymous memory
    weights_cold_mib: float = 0.0  # with mmap: the repacked tensors' file pages (read once; reclaimable)
    load_mode: str = ""  # GGUF: mmap | no-mmap; "" for a format without load modes

    @property
    def anon_mib(self) -> float:
        return self.baseline_mib + self.weights_repacked_mib + self.weights_read_mib + self.kv_mib + self.compute_mib

    @property
    def weights_mib(self) -> float:
        """Weight memory needed: mapped pages read every token, repacked copies, weights read without mmap."""
        return self.weights_file_mib + self.weights_repacked_mib + self.weights_read_mib

    @property
    def file_mib(self) -> float:
        """File-backed pages the run keeps reading (code, mapped weights): they must stay in memory."""
        return self.libraries_mib + self.weights_file_mib

    @property
    def total_mib(self) -> float:
        """The memory the device needs: anonymous memory and the file pages read every token."""
        return self.anon_mib + self.file_mib

    @property
    def rss_mib(self) -> float:
        """Peak RSS where nothing presses on memory: what is needed plus the cold mapped pages."""
        return self.total_mib + self.weights_cold_mib

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(anon_mib=round(self.anon_mib, 1), file_mib=round(self.file_mib, 1),
                 total_mib=round(self.total_mib, 1), rss_mib=round(self.rss_mib, 1))
        return d


def pad(n: int, to: int = KV_PAD) -> int:
    return (n + to - 1) // to * to


SHAPES = StampCache("gguf-shapes")  # path, size, mtime -> ModelShape as JSON: `run` reads no header twice


def shape_from_gguf(path: Path) -> ModelShape:
    """The shape of a GGUF file from its header's hyper-parameters and tensor table (the vocabulary is only counted)."""
    cached = _shape_from_json(SHAPES.get(path))
    if cached is not None:
        return cached
    header = read_gguf_header(path)
    try:
        shape = _shape_from_header(header, Path(path).name)
    except (TypeError, ValueError, ZeroDivisionError, IndexError, AttributeError) as e:  # missing / mistyped keys
        raise ArtifactError(f"{Path(path).name} has missing or invalid hyper-parameters ({e})", "re-convert it") from e
    SHAPES.put(path, {**asdict(shape), "tensors": [list(astuple(t)) for t in shape.tensors]})
    return shape


def _shape_from_json(value: Any) -> ModelShape | None:
    """A cached shape, or None for anything that is not one (a foreign or damaged cache entry)."""
    if not isinstance(value, dict):
        return None
    try:
        tensors = tuple(TensorInfo(str(n), str(t), int(a), int(b), int(c)) for n, t, a, b, c in value["tensors"])
        numbers = {f.name: int(value[f.name]) for f in fields(ModelShape) if f.name != "tensors"}
    except (KeyError, TypeError, ValueError):
        return None
    return ModelShape(**numbers, tensors=tensors)


def _shape_from_header(header: GGUFHeader, name: str) -> ModelShape:
    f: Any = header.fields  # values of any GGUF type; wrong ones raise and are reported by the caller
    arch = f.get("general.architecture")
    if not arch or not isinstance(arch, str):
        raise ArtifactError(f"{name} has no general.architecture", "re-convert it")
    n_embd = int(f.get(f"{arch}.embedding_length"))
    n_head = int(f.get(f"{arch}.attention.head_count"))
    head_dim = n_embd // n_head
    pattern = f.get(f"{arch}.attention.sliding_window_pattern")
    n_layer = int(f.get(f"{arch}.block_count"))
    n_swa = int(f.get(f"{arch}.attention.sliding_window", 0) or 0)
    if isinstance(pattern, list):
        n_swa_layers = sum(bool(x) for x in pattern)
    elif n_swa and arch in DEFAULT_SWA_PERIOD:  # a file from elsewhere: llama.cpp's own default pattern
        n_swa_layers = n_layer - n_layer // DEFAULT_SWA_PERIOD[arch]
    else:
        n_swa_layers = 0
    tensors = tuple(
        TensorInfo(t.name, t.type_name, int(t.shape[0]), t.n_elements // max(int(t.shape[0]), 1), t.n_bytes)
        for t in header.tensors)
    return ModelShape(
        n_layer=n_layer, n_embd=n_embd, n_ff=int(f.get(f"{arch}.feed_forward_length")), n_head=n_head,
        n_head_kv=int(f.get(f"{arch}.attention.head_count_kv", n_head)),
        head_dim_k=int(f.get(f"{arch}.attention.key_length", head_dim)),
        head_dim_v=int(f.get(f"{arch}.attention.value_length", head_dim)),
        n_vocab=header.array_length("tokenizer.ggml.tokens") or 0,
        n_ctx_train=int(f.get(f"{arch}.context_length", 0)),
        n_swa=n_swa if n_swa_layers else 0, n_swa_layers=n_swa_layers, tensors=tensors)


def shape_from_checkpoint(checkpoint: Path, quant: str) -> ModelShape:
    """The shape a checkpoint would have once converted to ``quant`` (safetensors headers only)."""
    # the converter plugged into src/edge_run/core/planning.py reads the headers
    planned = checkpoint_plan(checkpoint)
    cfg, plan = planned.text_config, planned.tensors
    n_layer = int(cfg["num_hidden_layers"])
    has_output = any(p.gguf_name == "output.weight" for p in plan)
    n_gqa = int(cfg["num_attention_heads"]) // int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"])
    infos = []
    for p in plan:
        ne0 = p.shape[-1]
        n = p.n_elements
        t = "F32" if len(p.shape) < 2 else tensor_type(quant, p.gguf_name, ne0, n_layer, has_output, n_gqa)
        infos.append(TensorInfo(p.gguf_name, t, ne0, n // ne0, tensor_bytes(t, n)))
    layer_types = cfg.get("layer_types") or []
    n_swa_layers = sum(t == "sliding_attention" for t in layer_types) if cfg.get("sliding_window") else 0
    hd = planned.head_dim
    return ModelShape(
        n_layer=n_layer, n_embd=int(cfg["hidden_size"]), n_ff=int(cfg["intermediate_size"]),
        n_head=int(cfg["num_attention_heads"]),
        n_head_kv=int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"]),
        head_dim_k=hd, head_dim_v=hd, n_vocab=int(cfg["vocab_size"]),
        n_ctx_train=int(cfg.get("max_position_embeddings", 0)), n_swa=int(cfg.get("sliding_window") or 0),
        n_swa_layers=n_swa_layers, tensors=tuple(infos))


def kv_bytes(shape: ModelShape, n_ctx: int, cache_type: str, swa_full: bool = True, n_ubatch: int = 512) -> float:
    per_cell = shape.n_head_kv * (shape.head_dim_k + shape.head_dim_v) * CACHE_BYTES[cache_type]
    cells = pad(n_ctx)
    swa_cells = cells if swa_full or not shape.n_swa else min(cells, pad(shape.n_swa + n_ubatch))
    n_full = shape.n_layer - shape.n_swa_layers
    return per_cell * (n_full * cells + shape.n_swa_layers * swa_cells)


def compute_bytes(shape: ModelShape, n_ctx: int, n_prompt: int, n_ubatch: int = 512,
                  flash_attn: bool = True) -> float:
    """Scratch a prompt batch touches: per token of the batch, the residual stream and norms, the
    projections (q, k, v, attention out), the MLP's gate/up/act, and the attention scores against
    the cache; plus one row of logits. Models with sliding-window layers keep a second attention
    mask over the whole context (f16). Flash attention (llama.cpp's default, and edge-run's) never
    materializes the scores: what remains of that term is FLASH_ATTN_SCORES of it."""
    n_ub = max(1, min(n_prompt, n_ubatch))
    n_kv = pad(n_prompt)
    scores = 2 * shape.n_head * n_kv * (FLASH_ATTN_SCORES if flash_attn else 1.0)
    per_token = (8 * shape.n_embd + 3 * shape.n_ff
                 + 4 * (shape.n_head + 2 * shape.n_head_kv) * shape.head_dim_k
                 + scores)
    swa_mask = 2.0 * n_ub * pad(n_ctx) if shape.n_swa_layers else 0.0
    return 4.0 * (n_ub * per_token + shape.n_vocab) + swa_mask


def runtime_anon_mib(simd: tuple[str, ...]) -> float:
    """Anonymous memory of the Python process before any model is loaded, per CPU family."""
    return RUNTIME_ANON_MIB + (ARM64_RUNTIME_EXTRA_MIB if "neon" in simd else 0.0)


def estimate_memory(shape: ModelShape, n_ctx: int, simd: tuple[str, ...], cache_type: str = "f16",
                    n_prompt: int | None = None, swa_full: bool = True, flash_attn: bool = True,
                    mmap: str = "auto") -> MemoryEstimate:
    """Memory for a context of ``n_ctx`` and a prompt of ``n_prompt`` tokens (default: a full batch), loaded
    with ``mmap`` (auto | on | off; auto: load_mode.use_mmap's choice for ``simd``)."""
    n_prompt = min(n_ctx, 512) if n_prompt is None else n_prompt
    in_file = repacked_file_bytes(shape, simd)
    copies = in_file + tied_output_bytes(shape, simd)
    mapped = use_mmap(shape, simd, mmap)
    rest = shape.weight_bytes - in_file
    return MemoryEstimate(
        baseline_mib=runtime_anon_mib(simd) + shape.n_vocab * VOCAB_BYTES_PER_TOKEN / MIB,
        libraries_mib=LIBRARY_FILE_MIB,
        weights_file_mib=rest / MIB if mapped else 0.0,
        weights_repacked_mib=copies / MIB,
        kv_mib=kv_bytes(shape, n_ctx, cache_type, swa_full) / MIB,
        compute_mib=compute_bytes(shape, n_ctx, n_prompt, flash_attn=flash_attn) / MIB,
        n_ctx=n_ctx, cache_type=cache_type,
        weights_read_mib=0.0 if mapped else rest / MIB,
        weights_cold_mib=in_file / MIB if mapped else 0.0,
        load_mode=LOAD_MODE_NAMES[mapped])


def gguf_use_mmap(path: Path, mode: str) -> bool:
    """Whether to load the GGUF at ``path`` with mmap on this machine (``mode``: auto | on | off)."""
    return use_mmap(shape_from_gguf(path), host_simd(), mode)


def host_simd() -> tuple[str, ...]:
    from edge_run.profiles.host import (
        host_features,  # arm64: the kernel's hwcaps (right under qemu-user too)
    )

    return host_features()


def _cgroup_headroom(root: Path = Path("/sys/fs/cgroup"), membership: Path = Path("/proc/self/cgroup")) -> float:
    """memory.max - memory.current of this process's cgroup v2 and its ancestors (the tightest), inf if none."""
    try:
        line = next(ln for ln in membership.read_text().splitlines() if ln.startswith("0::"))
    except (OSError, StopIteration):
        return math.inf
    group, best = root / line[3:].strip().lstrip("/"), math.inf
    while True:
        try:
            limit = (group / "memory.max").read_text().strip()
            if limit != "max":
                best = min(best, int(limit) - int((group / "memory.current").read_text().strip()))
        except (OSError, ValueError):
            pass
        if group == root or root not in group.parents:
            return best
        group = group.parent


def available_memory_bytes() -> float:
    """What this process can still allocate: the least of the system's available memory, its cgroup's headroom
    (containers, systemd slices) and, under ``ulimit -v``, the address space left (RLIMIT_AS minus the
    process's current virtual size; mmapped weights count against it too)."""
    import resource

    avail = float(psutil.virtual_memory().available)
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        # every backend imports numpy before its model loads (llama-cpp-python, onnxruntime), and numpy's BLAS maps
        # tens of MiB of address space: map it now, so the space left is what the model can actually have
        import numpy  # noqa: F401

        avail = min(avail, soft - psutil.Process().memory_info().vms)
    return max(0.0, min(avail, _cgroup_headroom()))


def check_memory(artifact: Path, n_ctx: int, available_mib: float | None = None,
                 shape_of: Callable[[Path], ModelShape] = shape_from_gguf, mmap: str = "auto") -> MemoryEstimate:
    """Refuse (InsufficientMemoryError) to load a GGUF whose llama.cpp estimate exceeds available memory (any
    format: src/edge_run/runtime/format_rows.check_memory)."""
    artifact = Path(artifact)
    est = estimate_memory(shape_of(artifact), n_ctx, host_simd(), mmap=mmap)
    return refuse_if_short(est, artifact.name, available_mib)


def refuse_if_short(est: MemoryEstimate, name: str, available_mib: float | None = None) -> MemoryEstimate:
    """``est``, or InsufficientMemoryError when it exceeds the memory available now."""
    if available_mib is None:
        available_mib = available_memory_bytes() / MIB
    if est.total_mib > available_mib:
        raise InsufficientMemoryError(
            f"{name} at ctx {est.n_ctx} ({est.load_mode}) needs about {est.total_mib:.0f} MiB but "
            f"{available_mib:.0f} MiB is available",
            "lower --ctx, pick a smaller quant (edge-run pick), or pass --force to load anyway")
    return est
