"""`edge-run pick --measure`: measure what the ranking needs, cheapest first, into the quality store.

    1. anchors   each model (source checkpoint) with a pairing that fits, once: Q8_0 (an F16/Q8_0 artifact already
                 under --models, else converted into the cache) on the first N chunks (default 20) of
                 WikiText-2 at ctx 512. Q8_0 is within 0.0011 BPB of F16 on both zoo models
                 (results/tradeoff.json: SmolLM2 1.1226 vs 1.1215, Gemma3 1.0083 vs 1.0074) and reads half
                 the bytes, so it stands for the model's full-precision quality.
    2. pairings  each GGUF pairing that fits the profile, on the first k chunks (default 4), plus the
                 anchor's type on the same k chunks: the pairing's BPB is the anchor's plus the paired
                 difference (src/edge_run/runtime/pick/quality.py). Pairings run cheapest first (size x chunks).
                 An imatrix pairing costs an F16 pass over the calibration text (picker.IMATRIX_TEXT, in the
                 estimate): it is measured only where its prediction beats every plain pairing of the model
                 that fits (where it could change the pick); a pairing with a quantized
                 KV cache (--cache-type auto) is measured as the anchor's type with that cache on the same k
                 chunks (its difference to the f16 cache is the model's KV cache effect).

Every measurement goes into the quality store under (digest, quant, imatrix, corpus, ctx, chunks); a step
whose key is already there is not planned, so nothing is measured twice. With a budget, steps are
taken in order while the running estimate fits it (anchors first: without one a model stays unmeasured).
Models none of whose pairings fit get their anchor last: it only puts a measured number on why the
next model up would have been better.
The time estimate is FLOPs per chunk over a per-type throughput measured on a 2-core x86 machine.
One measurement runs at a time per cache: it holds a lock on its work folder (<cache>/measure) from planning to
the last step, and a second `pick --measure` fails at once saying so (ResourceError): what the first measures
goes into the store, so running the second afterwards measures only what is still missing.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from edge_run.core.errors import ResourceError
from edge_run.core.fsutil import cache_dir, exclusive_folder
from edge_run.runtime.eval.store import QualityStore, StoreKey
from edge_run.runtime.pick.picker import Candidate, PickResult
from edge_run.runtime.pick.quality import REFERENCE_CORPUS, REFERENCE_CTX, reference_corpus_sha256

ANCHOR_QUANTS = ("Q8_0", "F16")  # what stands for a model's full-precision quality, preferred first
# prefill throughput (FLOP/s, 2 x params x tokens) by type, measured: results/tradeoff.json eval_seconds
EVAL_FLOPS: dict[str, float] = {"F32": 6e9, "F16": 1.2e10, "BF16": 1.2e10, "Q8_0": 3.7e10}
EVAL_FLOPS_DEFAULT = 1.1e11  # k-quants and legacy 4/5-bit types
CONVERT_PARAMS_PER_S = 2e7  # F16 intermediate + one quantization, per parameter
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Step:
    model: str
    digest: str
    quant: str
    chunks: int
    candidate: Candidate  # an artifact to evaluate, or a planned pairing to convert first
    anchor: bool
    est_seconds: float
    imatrix: bool = False
    cache_type: str = "f16"

    @property
    def label(self) -> str:
        return (f"{self.model} {self.quant}{'+imat' if self.imatrix else ''}"
                + ("" if self.cache_type == "f16" else f" KV {self.cache_type}") + f" x{self.chunks}")

    def key(self, chunks: int | None = None) -> StoreKey:
        return StoreKey(self.digest, self.quant, "imatrix" if self.imatrix else "", reference_corpus_sha256(),
                        REFERENCE_CTX, self.chunks if chunks is None else chunks, self.cache_type)


@dataclass
class MeasureReport:
    planned: list[Step]
    over_budget: list[Step]
    done: list[tuple[Step, float, float]] = field(default_factory=list)  # (step, seconds, bpb)

    @property
    def est_seconds(self) -> float:
        return sum(s.est_seconds for s in self.planned)

    @property
    def cheapest_left_out(self) -> Step | None:
        """The cheapest step left out that could run on its own: an anchor, or a pairing of a model whose anchor
        is already stored (a pairing whose anchor was left out too would mean nothing alone)."""
        unanchored = {s.digest for s in self.over_budget if s.anchor}
        alone = [s for s in self.over_budget if s.anchor or s.digest not in unanchored]
        return min(alone, key=lambda s: s.est_seconds, default=None)


def work_folder(work_dir: Path | None = None) -> Path:
    """Where measuring converts what --models lacks (and what its lock is held on)."""
    return Path(work_dir) if work_dir is not None else cache_dir() / "measure"


@contextlib.contextmanager
def measuring(work_dir: Path | None = None) -> Iterator[Path]:
    """Hold the measure lock (re-entrant within a process); ResourceError at once when another process holds it."""
    work = work_folder(work_dir)
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(exclusive_folder(work))
    except ResourceError as e:
        if not isinstance(e.__cause__, BlockingIOError):  # not a lock held elsewhere: the cache is not writable
            raise ResourceError(e.message, "set EDGE_RUN_CACHE to a writable folder") from e
        raise ResourceError(f"another `edge-run pick --measure` is measuring into {work} right now",
                            "wait for it to finish, then run this again: it measures only what the first did not "
                            "store (`edge-run pick` without --measure works meanwhile)") from e
    with stack:
        yield work


def eval_seconds(n_params: int, quant: str, chunks: int) -> float:
    return chunks * 2.0 * n_params * REFERENCE_CTX / EVAL_FLOPS.get(quant.upper(), EVAL_FLOPS_DEFAULT)


def _cost(c: Candidate, quant: str, chunks: int, imatrix_paid: bool = False) -> float:
    convert = c.n_params / CONVERT_PARAMS_PER_S if c.planned else 0.0
    if c.planned and c.imatrix and not imatrix_paid:  # the F16 run over the calibration text (once per model)
        from edge_run.runtime.eval.imatrix import DEFAULT_MAX_CHUNKS

        convert += c.n_params / CONVERT_PARAMS_PER_S + eval_seconds(c.n_params, "F16", DEFAULT_MAX_CHUNKS)
    return eval_seconds(c.n_params, quant, chunks) + convert


def _has(store: QualityStore, digest: str, chunks: int) -> bool:
    sha = reference_corpus_sha256()
    return any(s.key.chunks == chunks and s.key.ctx == REFERENCE_CTX and s.key.corpus_sha256 == sha
               and s.key.cache_type == "f16" and not s.key.imatrix for s in store.entries(digest))


def plan(result: PickResult, store: QualityStore, chunks: int = 20, slice_chunks: int = 4,
         budget_s: float | None = None) -> MeasureReport:
    """The steps the ranking in ``result`` still needs, cheapest first within anchors and pairings."""
    by_model: dict[str, list[Candidate]] = {}
    for row in result.rows:
        c = row.candidate
        if c.format == "gguf" and c.digest and (c.path is not None or c.checkpoint is not None):
            by_model.setdefault(c.digest, []).append(c)
    anchors: list[Step] = []
    pairings: list[Step] = []
    fitting = {id(r.candidate) for r in result.rows if r.fits}
    best_plain: dict[str, float] = {}  # digest -> best BPB (measured or predicted) of a plain pairing that fits
    for r in result.rows:
        if r.fits and not r.candidate.imatrix and not r.candidate.cache_type:
            best_plain[r.candidate.digest] = min(r.quality.bpb, best_plain.get(r.candidate.digest, float("inf")))
    contending = {id(r.candidate) for r in result.rows
                  if r.candidate.imatrix and r.quality.bpb < best_plain.get(r.candidate.digest, float("inf"))}
    for digest, cands in by_model.items():
        order = {q: i for i, q in enumerate(ANCHOR_QUANTS)}
        plain = [c for c in cands if not c.imatrix and not c.cache_type] or cands
        ranked = sorted(plain, key=lambda c: (order.get(c.quant.upper(), len(order)), c.planned))
        base = ranked[0]
        if base.quant.upper() not in order:  # no F16/Q8_0 to anchor on: the most precise artifact there is
            base = min(plain, key=lambda c: -(c.shape.weight_bytes if c.shape else 0))
        if not _has(store, digest, chunks):
            anchors.append(Step(base.model, digest, base.quant.upper(), chunks, base, True,
                                _cost(base, base.quant, chunks)))
        todo = [c for c in cands if id(c) in fitting and not c.cache_type
                and (id(c) in contending if c.imatrix else c.quant.upper() != base.quant.upper())]
        kv = sorted({c.cache_type for c in cands if id(c) in fitting and c.cache_type not in ("", "f16")})
        if todo or kv:
            todo.append(base)
        steps = [Step(c.model, digest, c.quant.upper(), slice_chunks, c, False,
                      _cost(c, c.quant, slice_chunks, imatrix_paid=c.imatrix and any(t.imatrix for t in todo[:i])),
                      c.imatrix) for i, c in enumerate(todo)]
        steps += [Step(base.model, digest, base.quant.upper(), slice_chunks, base, False,
                       _cost(base, base.quant, slice_chunks), cache_type=t) for t in kv]
        pairings += [s for s in steps if store.get(s.key()) is None]
    # models with a pairing that fits decide the pick; the others only explain it (the "next model up" line)
    deciding = {d for d, cands in by_model.items() if any(id(c) in fitting for c in cands)}
    ordered = (sorted((a for a in anchors if a.digest in deciding), key=lambda s: s.est_seconds)
               + sorted(pairings, key=lambda s: s.est_seconds)
               + sorted((a for a in anchors if a.digest not in deciding), key=lambda s: s.est_seconds))
    planned, over = [], []
    total = 0.0
    unanchored: set[str] = set()  # models whose first step is over budget: their pairings would mean nothing
    for s in ordered:
        if s.digest in unanchored or (budget_s is not None and total + s.est_seconds > budget_s):
            over.append(s)
            if s.anchor:
                unanchored.add(s.digest)
            continue
        planned.append(s)
        total += s.est_seconds
    return MeasureReport(planned, over)


def run(report: MeasureReport, store: QualityStore, work_dir: Path | None = None, threads: int | None = None,
        progress: Progress | None = None) -> MeasureReport:
    """Run the planned steps; every result goes into ``store`` as soon as it is measured."""
    with measuring(work_dir) as work:
        return _run(report, store, work, threads, progress)


def _run(report: MeasureReport, store: QualityStore, work: Path, threads: int | None,
         progress: Progress | None) -> MeasureReport:
    from edge_run.runtime.eval.perplexity import evaluate, load_corpus

    corpus = load_corpus(REFERENCE_CORPUS)
    converted: dict[tuple[str, str, bool], Path] = {}
    steps = report.planned
    for i, step in enumerate(steps):
        if progress:
            progress("measure", i, len(steps))
        t0 = time.perf_counter()
        path = step.candidate.path
        if path is None:
            path = converted.get((step.digest, step.quant, step.imatrix))
            if path is None:
                path = _convert(step, steps[i:], work / step.digest[:16], converted)
        res = evaluate(path, corpus, ctx=REFERENCE_CTX, chunks=step.chunks, threads=threads,
                       progress=_relabel(progress, step.label), cache_type=step.cache_type)
        store.put(step.key(res.chunks), {**res.quality_entry(), "artifact": path.name})
        seconds = time.perf_counter() - t0
        report.done.append((step, seconds, res.bpb))
    if progress:
        progress("measure", len(steps), len(steps))
    return report


def _relabel(progress: Progress | None, label: str) -> Progress | None:
    if progress is None:
        return None
    return lambda _stage, done, total: progress(label, done, total)


def _convert(step: Step, rest: list[Step], folder: Path, converted: dict[tuple[str, str, bool], Path]) -> Path:
    """Convert every planned quant type of this model (plain, or with the importance matrix) still to come in
    one go (one F16 intermediate, one importance matrix); types already converted in ``folder`` are reused."""
    from edge_run.core.manifest import read_manifest
    from edge_run.core.planning import converter
    from edge_run.runtime.pick.picker import IMATRIX_SUFFIX

    name = step.model + (IMATRIX_SUFFIX if step.imatrix else "")
    want = sorted({s.quant for s in rest if s.digest == step.digest and s.candidate.path is None
                   and s.imatrix == step.imatrix})
    conv = converter()
    missing = []
    for q in want:
        p = conv.artifact_path(folder, name, q)
        if p.exists() and read_manifest(p) is not None:
            converted[(step.digest, q, step.imatrix)] = p
        else:
            missing.append(q)
    if missing:
        assert step.candidate.checkpoint is not None
        imatrix = None
        if step.imatrix:
            from edge_run.runtime.eval.corpora import builtin_corpus_path
            from edge_run.runtime.eval.imatrix import imatrix_for_checkpoint
            from edge_run.runtime.pick.picker import IMATRIX_TEXT

            imatrix = imatrix_for_checkpoint(step.candidate.checkpoint, builtin_corpus_path(IMATRIX_TEXT), folder,
                                             name=name, to_f16=conv.f16)
        paths = conv.convert(step.candidate.checkpoint, folder, missing, name, force=True, imatrix=imatrix)
        converted.update({(step.digest, q, step.imatrix): p for q, p in zip(missing, paths, strict=True)})
    return converted[(step.digest, step.quant, step.imatrix)]
