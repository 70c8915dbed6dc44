"""Perplexity, bits per byte and KL divergence of an artifact on a text corpus, the way llama.cpp measures them.

Chunking (as llama.cpp's perplexity tool does it)::

    corpus ──tokenize once (BOS added if the model adds one)──> t0 t1 t2 ... tN
    chunk k = tokens[k*ctx : (k+1)*ctx]          non-overlapping, N // ctx chunks (``chunks`` caps it)
              first token replaced by BOS when the model adds BOS

    position:  0   1  ...  ctx/2-1 | ctx/2  ...  ctx-2 | ctx-1
               └── context only ───┘└─ logits scored ─┘
    logits at position j predict token j+1, so each chunk scores ctx - ctx/2 - 1 tokens
    (255 at ctx 512) and every scored token has at least ctx/2 tokens of context.

    PPL = exp(mean NLL over all scored tokens)
    BPB = (sum NLL in nats / ln 2) / bytes scored
    bytes scored = UTF-8 bytes of the scored target tokens' pieces (the text those tokens spell), so BPB
                   compares models with different tokenizers.

KL divergence (``parent``): at every scored position, KL(parent || model) over the next-token
distributions (parent tokens with log-probability at or below -16 are left out, as llama.cpp does),
averaged; top-1 agreement = share of positions where both argmaxes are the same token.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edge_run.core.errors import ArtifactError, CorpusError, ResourceError, UsageError
from edge_run.core.fsutil import read_regular_file
from edge_run.runtime.artifacts.formats import open_backend
from edge_run.runtime.backends import Backend, LoadOptions
from edge_run.runtime.eval.corpora import BUILTIN_CORPORA, builtin_corpus_path
from edge_run.runtime.eval.scoring import Accumulator, LogprobStore, LogprobWriter, kl_divergence, log_softmax, rows_nll

# progress(stage, done, total)
Progress = Callable[[str, int, int], None]
# logits of a chunk's scored positions (plan.first .. ctx-2): float32 [scored, n_vocab]
ScoredLogits = Callable[[list[int]], np.ndarray]

# Manifest quality keys for the built-in corpora; any other corpus is stored under its file stem.
QUALITY_KEYS: dict[str, str] = {"wikitext-2-raw-test": "wikitext2", "tinyshakespeare": "tinyshakespeare"}
DEFAULT_CORPUS = "wikitext-2-raw-test"
MAX_CORPUS_BYTES = 64 * 2**20  # 50x WikiText-2's test split; tokenizing it needs a few hundred MB


@dataclass(frozen=True)
class Corpus:
    name: str
    path: Path
    text: str
    sha256: str
    n_bytes: int

    @property
    def quality_key(self) -> str:
        """The built-in key ("wikitext2") only for the built-in corpus's exact bytes (by sha256): a file that merely
        has the built-in's name is keyed by its name and content hash, so it never poses as the built-in score
        the picker reads. Other files are keyed by their name (the entry records their sha256)."""
        if self.name not in QUALITY_KEYS:
            return self.name
        if self.sha256 == _builtin_sha256(self.name):
            return QUALITY_KEYS[self.name]
        return f"{self.name}-{self.sha256[:12]}"


@functools.cache
def _builtin_sha256(name: str) -> str:
    return hashlib.sha256(builtin_corpus_path(name).read_bytes()).hexdigest()


def load_corpus(spec: str | Path) -> Corpus:
    """A built-in corpus by name, or a UTF-8 text file by path; CorpusError with one line otherwise."""
    spec_s = str(spec)
    if spec_s in BUILTIN_CORPORA:
        path, name = builtin_corpus_path(spec_s), spec_s
    else:
        path, name = Path(spec_s), Path(spec_s).stem
    data = read_regular_file(path, "corpus", MAX_CORPUS_BYTES, CorpusError,  # no FIFO, folder or /dev/zero
                             f"pass a UTF-8 text file or a built-in corpus: {', '.join(BUILTIN_CORPORA)}")
    if not data.strip():
        raise CorpusError(f"corpus {spec_s} is empty", "pass a file with text in it")
    if b"\x00" in data:
        raise CorpusError(f"corpus {spec_s} is binary (it contains NUL bytes)", "pass a UTF-8 text file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(f"corpus {spec_s} is not UTF-8 text (invalid byte at offset {e.start})",
                          "convert it to UTF-8") from e
    return Corpus(name=name, path=path, text=text, sha256=hashlib.sha256(data).hexdigest(), n_bytes=len(data))


@dataclass(frozen=True)
class ChunkPlan:
    ctx: int
    chunks: int
    bos: int | None  # placed at position 0 of every chunk when the model adds BOS

    @property
    def first(self) -> int:
        return self.ctx // 2

    @property
    def scored_per_chunk(self) -> int:
        return self.ctx - self.first - 1

    def chunk_tokens(self, tokens: list[int], k: int) -> list[int]:
        chunk = list(tokens[k * self.ctx:(k + 1) * self.ctx])
        if self.bos is not None:
            chunk[0] = self.bos
        return chunk

    def targets(self, chunk: list[int]) -> list[int]:
        return chunk[self.first + 1:self.ctx]


def plan_chunks(tokens: list[int], ctx: int, max_chunks: int | None, bos: int | None, corpus: str) -> ChunkPlan:
    if ctx < 8:
        raise UsageError(f"--ctx {ctx} is too small", "use a context of at least 8 tokens (512 is usual)")
    if max_chunks is not None and max_chunks < 1:
        raise UsageError(f"--chunks {max_chunks} must be at least 1")
    available = len(tokens) // ctx
    if available < 1:
        raise CorpusError(f"corpus {corpus} has {len(tokens)} tokens, too few for one chunk of {ctx}",
                          "use a longer text or a smaller --ctx")
    n = available if max_chunks is None else min(max_chunks, available)
    add_bos = bos is not None and len(tokens) > 0 and tokens[0] == bos
    return ChunkPlan(ctx=ctx, chunks=n, bos=bos if add_bos else None)


class Reference(Protocol):
    """Where the parent's next-token distributions come from (a loaded model or a stored run)."""

    name: str

    def chunk(self, index: int, tokens: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(log-probs [scored, vocab], argmax [scored]) for chunk ``index``."""
        ...


class LiveReference:
    """The parent model loaded beside the evaluated one; each chunk is run through it on demand."""

    def __init__(self, backend: Backend, plan: ChunkPlan, name: str, rows: ScoredLogits | None = None) -> None:
        self.backend, self.plan, self.name = backend, plan, name
        self.rows = rows or backend_rows(backend, plan)

    def chunk(self, index: int, tokens: list[int]) -> tuple[np.ndarray, np.ndarray]:
        lp = log_softmax(self.rows(tokens))
        return lp, lp.argmax(axis=1)


class StoredReference:
    """A parent's log-probabilities written by an earlier :func:`evaluate` run (``record_to``)."""

    def __init__(self, folder: Path) -> None:
        self.store = LogprobStore(folder)
        self.name = str(self.store.info.get("parent", folder))

    def chunk(self, index: int, tokens: list[int]) -> tuple[np.ndarray, np.ndarray]:
        return self.store.chunk(index, tokens)


@dataclass
class EvalResult:
    artifact: str
    corpus: Corpus
    ctx: int
    chunks: int
    acc: Accumulator
    parent: str | None = None
    seconds: float = 0.0
    cache_type: str = "f16"  # KV cache element type the run used
    flash_attn: bool | None = None  # whether llama.cpp ran flash attention (None: not a llama.cpp backend)

    @property
    def ppl(self) -> float:
        return self.acc.ppl

    @property
    def bpb(self) -> float:
        return self.acc.bpb

    def quality_entry(self) -> dict[str, Any]:
        """The manifest's ``quality[<corpus>]`` record (schema in src/edge_run/runtime/manifest.py and the README)."""
        entry: dict[str, Any] = {
            "bpb": round(self.acc.bpb, 6), "ppl": round(self.acc.ppl, 4), "ppl_stderr": round(self.acc.ppl_stderr, 4),
            "ctx": self.ctx, "chunks": self.chunks, "corpus": self.corpus.name,
            "corpus_sha256": self.corpus.sha256, "tokens_scored": self.acc.count, "bytes_scored": self.acc.bytes,
        }
        if self.cache_type != "f16":
            entry["cache_type"] = self.cache_type
        if self.flash_attn is not None:
            entry["flash_attn"] = self.flash_attn
        if self.parent is not None:
            entry.update(kld_vs_parent=round(self.acc.mean_kld, 6), top1_agreement=round(self.acc.top1_agreement, 6),
                         parent=self.parent)
        return entry

    def to_json(self) -> dict[str, Any]:
        return {"artifact": self.artifact, "quality_key": self.corpus.quality_key, **self.quality_entry(),
                "mean_nll": round(self.acc.mean_nll, 6), "seconds": round(self.seconds, 2)}


class _PieceBytes:
    """UTF-8 byte length of each token's piece, cached per token id."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.cache: dict[int, int] = {}

    def __call__(self, tokens: list[int]) -> int:
        total = 0
        for t in tokens:
            n = self.cache.get(t)
            if n is None:
                n = self.cache[t] = len(self.backend.token_piece(t))
            total += n
        return total


def backend_rows(backend: Backend, plan: ChunkPlan) -> ScoredLogits:
    """Scored-position logits through the generic Backend.eval_logits (every position's logits; ONNX)."""
    return lambda chunk: backend.eval_logits(chunk)[plan.first:plan.ctx - 1]


def score(backend: Backend, tokens: list[int], plan: ChunkPlan, *, reference: Reference | None = None,
          record: LogprobWriter | None = None, progress: Progress | None = None, stage: str = "eval",
          rows: ScoredLogits | None = None) -> Accumulator:
    """Run every chunk of ``plan`` through ``backend`` and accumulate NLL / bytes (and KLD against ``reference``).

    ``rows`` gives a chunk's scored-position logits (default: ``backend.eval_logits``). Without a reference or a
    record only the NLL is needed and it is taken a few rows at a time (no [scored, n_vocab] temporaries)."""
    acc = Accumulator()
    piece_bytes = _PieceBytes(backend)
    rows = rows or backend_rows(backend, plan)
    if progress:
        progress(stage, 0, plan.chunks)
    for k in range(plan.chunks):
        chunk = plan.chunk_tokens(tokens, k)
        targets = np.asarray(plan.targets(chunk))
        logits = rows(chunk)
        if reference is None and record is None:
            acc.add_nll(rows_nll(logits, targets), piece_bytes(plan.targets(chunk)))
        else:
            lp = log_softmax(logits)
            acc.add_nll(rows_nll(lp, targets, normalized=True), piece_bytes(plan.targets(chunk)))
            if reference is not None:
                ref_lp, ref_top = reference.chunk(k, chunk)
                acc.add_kld(kl_divergence(ref_lp, lp), lp.argmax(axis=1) == ref_top)
            if record is not None:
                record.put(k, chunk, lp)
        if progress:
            progress(stage, k + 1, plan.chunks)
    return acc


class _Loaded:
    """A backend and where its chunks' scored logits come from: llama.cpp's output rows for a GGUF (only the
    scored positions are computed, src/edge_run/runtime/backends/gguf_scorer.py), every position's logits otherwise."""

    def __init__(self, path: Path, ctx: int, threads: int | None, batch: int, cache_type: str = "f16",
                 opener: Callable[[Path, LoadOptions], Backend] | None = None) -> None:
        from edge_run.runtime.artifacts.formats import row_for

        open_model = opener or open_backend
        self.scorer: Any = None
        self.cache_type = cache_type
        chunk_scorer = row_for(path).chunk_scorer  # the format's own scorer of a chunk's scored rows, if any
        if chunk_scorer is not None:
            self.backend = open_model(path, self._options(ctx, threads, batch, logits_all=False))
            self.scorer = chunk_scorer(self.backend)
            if self.scorer is not None:
                return
            self.backend.close()
        self.backend = open_model(path, self._options(ctx, threads, batch, logits_all=True))

    def _options(self, ctx: int, threads: int | None, batch: int, logits_all: bool) -> LoadOptions:
        extra: dict[str, Any] = {"n_threads": threads} if threads else {}
        return LoadOptions(n_ctx=ctx, n_batch=min(batch, ctx), logits_all=logits_all, cache_type=self.cache_type,
                           **extra)

    @property
    def flash_attn(self) -> bool | None:
        """Whether llama.cpp runs flash attention for this context (None: not llama.cpp)."""
        llm = getattr(self.backend, "llm", None)
        params = getattr(llm, "context_params", None)
        if params is None:
            return None
        fa = getattr(params, "flash_attn_type", None)
        if fa is None:
            return bool(params.flash_attn)
        return None if int(fa) < 0 else int(fa) > 0  # llama_flash_attn_type: -1 auto (llama.cpp decides), 0 off, 1 on

    def rows(self, plan: ChunkPlan) -> ScoredLogits:
        if self.scorer is None:
            return backend_rows(self.backend, plan)
        scorer = self.scorer
        return lambda chunk: scorer.rows(chunk, plan.first, plan.ctx - 1)

    def close(self) -> None:
        if self.scorer is not None:
            self.scorer.close()
        self.backend.close()

    def __enter__(self) -> _Loaded:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_trained_context(artifact: Path, ctx: int) -> None:
    """As `run` does: a context beyond what the model was trained for is a usage error (it also made the KV cache
    and the run time grow without bound: --ctx 100000 on a 512-token model ran for over 10 minutes)."""
    from edge_run.runtime.artifacts.formats import trained_context

    limit = trained_context(artifact)
    if limit and ctx > limit:
        raise UsageError(f"--ctx {ctx} is more than the {limit} tokens {artifact.name} was trained for",
                         f"pass --ctx {limit} or less")


def evaluate(artifact: Path, corpus: Corpus, *, ctx: int = 512, chunks: int | None = None,
             parent: Path | None = None, parent_store: Path | None = None, record_to: Path | None = None,
             threads: int | None = None, batch: int = 512, progress: Progress | None = None,
             cache_type: str = "f16", opener: Callable[[Path, LoadOptions], Backend] | None = None) -> EvalResult:
    """Evaluate ``artifact`` on ``corpus`` (``cache_type``: the KV cache element type, as `run --cache-type`).

    ``parent``: another artifact (e.g. the F16) to measure KL divergence against, loaded beside this one.
    ``parent_store``: instead, a parent run recorded earlier with ``record_to``.
    ``record_to``: write this model's scored log-probabilities there (a later run's ``parent_store``).
    ``opener``: how models are opened (default open_backend; `eval --cluster`: over the cluster's workers).
    """
    import time

    if parent is not None and parent_store is not None:
        raise UsageError("give either a parent artifact or a stored parent run, not both")
    _check_trained_context(Path(artifact), ctx)
    t0 = time.perf_counter()
    with _Loaded(artifact, ctx, threads, batch, cache_type, opener) as loaded:
        flash_attn = loaded.flash_attn
        backend = loaded.backend
        tokens = backend.tokenize(corpus.text, add_special=True)
        plan = plan_chunks(tokens, ctx, chunks, backend.bos_token_id(), corpus.name)
        reference: Reference | None = None
        parent_loaded: _Loaded | None = None
        parent_name: str | None = None
        try:
            if parent is not None:
                parent_loaded = _Loaded(parent, ctx, threads, batch)
                if parent_loaded.backend.n_vocab != backend.n_vocab:
                    raise UsageError(f"{parent.name} has a vocabulary of {parent_loaded.backend.n_vocab}, "
                                     f"{Path(artifact).name} of {backend.n_vocab}",
                                     "KL divergence needs a parent with the same tokenizer")
                reference = LiveReference(parent_loaded.backend, plan, Path(parent).name, parent_loaded.rows(plan))
                parent_name = Path(parent).name
            elif parent_store is not None:
                reference = StoredReference(parent_store)
                parent_name = reference.name
            writer = None
            if record_to is not None:
                writer = LogprobStore.create(record_to, plan.chunks, ctx, plan.scored_per_chunk, backend.n_vocab,
                                             Path(artifact).name)
            acc = score(backend, tokens, plan, reference=reference, record=writer, progress=progress,
                        rows=loaded.rows(plan))
            if writer is not None:
                writer.close()
        finally:
            if parent_loaded is not None:
                parent_loaded.close()
    return EvalResult(artifact=str(artifact), corpus=corpus, ctx=ctx, chunks=plan.chunks, acc=acc,
                      parent=parent_name, seconds=time.perf_counter() - t0, cache_type=cache_type,
                      flash_attn=flash_attn)


def save_quality(artifact: Path, result: EvalResult) -> bool:
    """Store the result in the artifact's manifest under ``quality[<corpus key>]``; False if it has none.
    A run with a quantized KV cache goes into the quality store only (the manifest's entry is the f16 cache's)."""
    from edge_run.core.manifest import read_manifest, update_manifest
    from edge_run.runtime.eval.store import record_eval

    if read_manifest(artifact) is None:
        return False
    if result.cache_type != "f16":
        return record_eval(artifact, result)
    entry = result.quality_entry()
    bad = sorted(k for k, v in entry.items() if isinstance(v, float) and not math.isfinite(v))
    if bad:  # never stored: a NaN would sort anywhere in the picker
        raise ArtifactError(f"{Path(artifact).name} gives non-finite {', '.join(bad)} on {result.corpus.name}, so the "
                            "result was not stored", "the weights are broken (NaN/Inf logits): re-convert the artifact")
    try:
        update_manifest(artifact, quality={result.corpus.quality_key: entry})
    except ResourceError as e:
        raise ResourceError(f"the result could not be stored in {Path(artifact).name}'s manifest ({e.message})",
                            "make the folder writable, or pass --no-save") from e
    from edge_run.runtime.eval.store import record_eval

    record_eval(artifact, result)  # and into the picker's quality store (src/edge_run/runtime/eval/store.py)
    return True
