"""How many slots `serve --parallel` runs: each holds its own ctx tokens of KV cache, so N slots are estimated as
one context of N x ctx cells (estimate/gguf.py, as llama.cpp sizes the unified cache) against the memory
available now. Without --parallel: the most that fit, up to DEFAULT_PARALLEL; an explicit N that does not fit is
refused with the largest that does. ONNX artifacts are served one request at a time (a FIFO queue)."""

from __future__ import annotations

from pathlib import Path

from edge_run.core.errors import InsufficientMemoryError, UsageError

DEFAULT_PARALLEL = 4
MAX_SEQUENCES = 256  # llama.cpp's LLAMA_MAX_SEQ (llama_max_parallel_sequences)


def _need_mib(artifact: Path, ctx: int, n: int, mmap: str) -> float:
    from edge_run.runtime.artifacts.formats import estimate_artifact
    from edge_run.runtime.estimate.load_mode import check_mode

    return estimate_artifact(artifact, ctx * n, mmap=check_mode(mmap)).total_mib


def largest_fitting(artifact: Path, ctx: int, available_mib: float, upper: int, mmap: str = "auto") -> int:
    """The largest N in 0..upper whose N x ctx estimate fits ``available_mib`` (the estimate grows with N)."""
    lo, hi = 0, upper
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _need_mib(artifact, ctx, mid, mmap) <= available_mib:
            lo = mid
        else:
            hi = mid - 1
    return lo


def choose_parallel(artifact: Path, ctx: int, requested: int | None, force: bool = False, mmap: str = "auto",
                    available_mib: float | None = None) -> int:
    """The slot count to load ``artifact`` with (see the module's docstring)."""
    from edge_run.runtime.artifacts.formats import row_for
    from edge_run.runtime.estimate.gguf import MIB, available_memory_bytes

    if requested is not None and requested < 1:
        raise UsageError(f"--parallel {requested} is not a slot count", "pass --parallel 1 or more")
    if requested is not None and requested > MAX_SEQUENCES:
        raise UsageError(f"--parallel {requested} is more than the {MAX_SEQUENCES} sequences llama.cpp can run "
                         "together", f"pass --parallel {MAX_SEQUENCES} or less")
    if row_for(Path(artifact)).name != "gguf":
        if requested is not None and requested > 1:
            raise UsageError(f"--parallel {requested} needs a GGUF artifact: ONNX artifacts are served one request "
                             "at a time", "drop --parallel, or serve a .gguf")
        return 1
    if force and requested is not None:
        return requested
    available = available_memory_bytes() / MIB if available_mib is None else available_mib
    if requested is None:
        return max(1, largest_fitting(artifact, ctx, available, DEFAULT_PARALLEL, mmap))
    need = _need_mib(artifact, ctx, requested, mmap)
    if need <= available:
        return requested
    most = largest_fitting(artifact, ctx, available, requested - 1, mmap)
    fix = f"pass --parallel {most} or less" if most else "lower --ctx or pick a smaller quant (edge-run pick)"
    raise InsufficientMemoryError(
        f"--parallel {requested} x ctx {ctx} of {Path(artifact).name} needs about {need:.0f} MiB but "
        f"{available:.0f} MiB is available; " + (f"at most {most} slots fit" if most else "not even one slot fits"),
        f"{fix}, or --force to load anyway")
