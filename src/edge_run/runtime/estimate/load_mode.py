"""Which weights llama.cpp's CPU backend repacks for a CPU, and the load mode that follows from it.

llama.cpp (as vendored by llama-cpp-python 0.3.36) places every weight a matrix multiplication reads in its
CPU_REPACK buffer type when ``ggml_repack_get_optimal_repack_type`` (ggml/src/ggml-cpu/repack.cpp) has an
interleaved layout for the tensor's type on this build: one row of REPACK_RULES each. The row count (``ne[1]``)
must be a multiple of the layout's interleave; the token embedding is gathered (GET_ROWS), never multiplied, so
it stays where it is. The features are the build's (``ggml_cpu_has_avx2()`` etc. are compile-time): a native x86
build has the host's, an arm64 bundle the baseline it was cross-built for (a plain armv8-a build repacks nothing).

With mmap (llama-model-loader.cpp, load_all_data) a repacked tensor is read from the mapped file once and copied
into anonymous memory, while its file pages stay mapped (the mapping is populated with MAP_POPULATE): RSS then
shows both copies, though llama.cpp never reads the mapped ones again and the kernel may drop them. Without mmap
every weight is read into anonymous memory once (repacked ones through a per-tensor staging buffer). So where
most weight bytes are repacked, loading without mmap holds one copy; where few are, mmap keeps the page cache
shared and the start fast.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_run.core.errors import UsageError
from edge_run.runtime.estimate.shape import ModelShape, TensorInfo


@dataclass(frozen=True)
class RepackRule:
    ggml_type: str
    feature: str  # the profile / host SIMD feature (src/edge_run/profiles/host.py's names)
    row_multiple: int  # ne[1] must be a multiple of it
    layout: str  # llama.cpp's tensor_traits instance


# In llama.cpp's order of preference per type: the first row whose feature the CPU has and whose row multiple
# divides ne[1] is the layout. x86 rows first (an arm64 CPU has none of their features), then i8mm, then dotprod.
REPACK_RULES: tuple[RepackRule, ...] = (
    RepackRule("Q4_0", "avx2", 8, "q4_0_8x8_q8_0"),
    RepackRule("Q4_K", "avx2", 8, "q4_K_8x8_q8_K"),
    RepackRule("IQ4_NL", "avx2", 8, "iq4_nl_8x8_q8_0"),
    RepackRule("MXFP4", "avx2", 8, "mxfp4_8x8_q8_0"),
    RepackRule("Q2_K", "avx512", 8, "q2_K_8x8_q8_K"),
    RepackRule("Q4_0", "i8mm", 4, "q4_0_4x8_q8_0"),
    RepackRule("Q4_K", "i8mm", 8, "q4_K_8x8_q8_K"),
    RepackRule("Q5_K", "i8mm", 8, "q5_K_8x8_q8_K"),
    RepackRule("Q6_K", "i8mm", 8, "q6_K_8x8_q8_K"),
    RepackRule("Q8_0", "i8mm", 4, "q8_0_4x8_q8_0"),
    RepackRule("Q4_0", "dotprod", 4, "q4_0_4x4_q8_0"),
    RepackRule("Q4_K", "dotprod", 8, "q4_K_8x4_q8_K"),
    RepackRule("Q5_K", "dotprod", 8, "q5_K_8x4_q8_K"),
    RepackRule("Q6_K", "dotprod", 8, "q6_K_8x4_q8_K"),
    RepackRule("IQ4_NL", "dotprod", 4, "iq4_nl_4x4_q8_0"),
    RepackRule("MXFP4", "dotprod", 4, "mxfp4_4x4_q8_0"),
    RepackRule("Q8_0", "dotprod", 4, "q8_0_4x4_q8_0"),
)
NOT_MULTIPLIED = frozenset({"token_embd.weight"})
# auto: load without mmap when at least this share of the weight bytes is repacked
NO_MMAP_SHARE = 0.5
MMAP_MODES: dict[str, bool | None] = {"auto": None, "on": True, "off": False}
LOAD_MODE_NAMES: dict[bool, str] = {True: "mmap", False: "no-mmap"}


def repack_rule(ggml_type: str, rows: int, simd: tuple[str, ...]) -> RepackRule | None:
    """The layout llama.cpp repacks a multiplied weight of ``ggml_type`` with ``rows`` rows into, or None."""
    return next((r for r in REPACK_RULES
                 if r.ggml_type == ggml_type and r.feature in simd and rows % r.row_multiple == 0), None)


def is_repacked(t: TensorInfo, simd: tuple[str, ...]) -> bool:
    return t.name not in NOT_MULTIPLIED and repack_rule(t.type, t.ne1, simd) is not None


def tied_output_bytes(shape: ModelShape, simd: tuple[str, ...]) -> int:
    """A model without output.weight multiplies by its token embeddings; llama.cpp loads that duplicate into the
    output layer's buffer, which repacks it like any weight (measured on the dotprod build: tools/arm_check.py).
    The duplicate is read from the embedding's file pages, so it adds anonymous memory but no file pages."""
    if any(t.name == "output.weight" for t in shape.tensors):
        return 0
    emb = next((t for t in shape.tensors if t.name == "token_embd.weight"), None)
    return emb.n_bytes if emb is not None and repack_rule(emb.type, emb.ne1, simd) else 0


def repacked_file_bytes(shape: ModelShape, simd: tuple[str, ...]) -> int:
    """Bytes of the file's tensors that llama.cpp repacks (their file pages are read once, at load)."""
    return sum(t.n_bytes for t in shape.tensors if is_repacked(t, simd))


def repacked_share(shape: ModelShape, simd: tuple[str, ...]) -> float:
    return repacked_file_bytes(shape, simd) / shape.weight_bytes if shape.weight_bytes else 0.0


def check_mode(mode: str) -> str:
    if mode not in MMAP_MODES:
        raise UsageError(f"unknown mmap mode {mode!r}", f"choose from {', '.join(MMAP_MODES)}")
    return mode


def use_mmap(shape: ModelShape, simd: tuple[str, ...], mode: str = "auto") -> bool:
    """``mode`` on / off as asked; auto: mmap unless llama.cpp repacks NO_MMAP_SHARE or more of the weights."""
    forced = MMAP_MODES[check_mode(mode)]
    return forced if forced is not None else repacked_share(shape, simd) < NO_MMAP_SHARE
