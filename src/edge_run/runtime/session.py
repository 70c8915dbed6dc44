"""The load sequence every command that opens a model goes through, written once:

    verify integrity (artifact vs its manifest)
      -> resolve the context (default capped at the trained context; more than trained is a usage error)
      -> memory guard (the estimate must fit the memory available now, unless forced; it fixes the load mode)
      -> open the backend for the artifact's format

`run`, `chat` and `serve` use :func:`open_session`; `bench` and `eval`, which choose their own context,
use :func:`verify` alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edge_run.core.errors import UsageError
from edge_run.runtime.artifacts.formats import open_backend
from edge_run.runtime.backends import Backend, LoadOptions
from edge_run.runtime.backends.base import physical_cores

if TYPE_CHECKING:
    from edge_run.core.manifest import Manifest
    from edge_run.runtime.estimate.gguf import MemoryEstimate

DEFAULT_CTX = 2048
RESOLVED_MODE = {"mmap": "on", "no-mmap": "off"}  # an estimate's load mode -> LoadOptions.mmap
# the checks import their modules when called: `edge-run --help` and the commands that load nothing stay fast


@dataclass(frozen=True)
class SessionOptions:
    ctx: int | None = None  # None: DEFAULT_CTX capped at the trained context
    threads: int | None = None  # None: physical cores
    force: bool = False  # load even when the memory estimate exceeds available memory
    seed: int = 0
    n_batch: int = 512
    cache_type: str = "f16"
    flash_attn: str = "auto"  # GGUF: auto | on | off (LoadOptions.flash_attn)
    mmap: str = "auto"  # GGUF: auto | on | off (LoadOptions.mmap)
    parallel: int = 1  # GGUF: sequences of ctx tokens each (serve --parallel); the guard counts all their KV cache
    draft: str = ""  # GGUF: speculative decoding (LoadOptions.draft)


def verify(artifact: Path) -> Manifest | None:
    """Integrity: the artifact must match its manifest (IntegrityError otherwise); None without a manifest."""
    from edge_run.runtime.artifacts.integrity import verify_artifact

    return verify_artifact(Path(artifact))


def resolve_context(artifact: Path, ctx: int | None, default: int = DEFAULT_CTX) -> int:
    """``ctx``, or ``default`` capped at the model's trained context; more than the model supports is an error."""
    from edge_run.runtime.artifacts.formats import trained_context

    limit = trained_context(Path(artifact))
    if ctx is None:
        return min(default, limit) if limit else default
    if limit and ctx > limit:
        raise UsageError(f"--ctx {ctx} is more than the {limit} tokens {Path(artifact).name} was trained for",
                         f"pass --ctx {limit} or less")
    return ctx


def memory_guard(artifact: Path, ctx: int, force: bool = False, mmap: str = "auto") -> MemoryEstimate:
    """The estimate at ``ctx`` loaded with ``mmap``; InsufficientMemoryError when it exceeds the memory available
    now (unless forced)."""
    from edge_run.runtime.artifacts.formats import estimate_artifact
    from edge_run.runtime.estimate.gguf import refuse_if_short
    from edge_run.runtime.estimate.load_mode import check_mode

    est = estimate_artifact(Path(artifact), ctx, mmap=check_mode(mmap))
    return est if force else refuse_if_short(est, Path(artifact).name)


def prepare(artifact: Path, options: SessionOptions) -> LoadOptions:
    """Every check before loading, in order; the LoadOptions to open the artifact with."""
    verify(artifact)
    if options.draft:
        from edge_run.runtime.artifacts.formats import row_for
        from edge_run.runtime.backends.speculative import check_draft

        check_draft(options.draft, row_for(Path(artifact)).name)
    ctx = resolve_context(artifact, options.ctx)
    est = memory_guard(artifact, ctx * options.parallel, options.force, options.mmap)
    return LoadOptions(n_ctx=ctx, n_threads=options.threads or physical_cores(), n_batch=options.n_batch,
                       seed=options.seed, cache_type=options.cache_type, flash_attn=options.flash_attn,
                       n_seq=options.parallel, draft=options.draft,
                       mmap=RESOLVED_MODE.get(est.load_mode, options.mmap))  # the mode the estimate was made for


def open_session(artifact: Path, options: SessionOptions | None = None) -> Backend:
    """Verify, resolve the context, guard memory, then open the backend (use it as a context manager)."""
    load = prepare(artifact, options or SessionOptions())
    return open_backend(Path(artifact), load)
