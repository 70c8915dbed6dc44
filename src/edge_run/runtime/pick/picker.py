"""The picker: the best (model x quant type x context) pairing that fits a device profile.

    candidates (local artifacts with manifests + planned pairings: local checkpoints x quant types, Q2_K..Q4_K_M
                also with an importance matrix; --cache-type auto: each also with a q8_0 KV cache)
        │  memory estimate per format (ESTIMATORS: each format row's estimator,
        src/edge_run/runtime/artifacts/formats.py)
        │  quality (src/edge_run/runtime/pick/prior.py: measured BPB, else predicted and marked *)
        │  decode speed (src/edge_run/runtime/estimate/speed.py)
        ▼
    rows: fits? (anonymous memory and mmap'd weights within budget, trained context, --min-tps), why not;
          --min-ctx: a row that fits only at a shorter context is evaluated at the longest one that fits
        ▼
    pick = best quality among the rows that fit (ties: measured, f16 KV cache, full context, faster, smaller);
           for a chat (--for chat): the best instruction-tuned row that fits, else unknown, else base (CHAT_ORDER)
    binding constraint = why the best-quality row that lost was rejected     (src/edge_run/runtime/pick/explain.py)
    counterfactuals    = q8_0 KV cache savings, how much more the next model up needs, ...

    budget = profile RAM - OS reserve - headroom (max(64 MiB, 5% of RAM))

Library only: nothing printed. src/edge_run/cli/pick.py renders a PickResult.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edge_run.core.errors import (
    ArtifactError,
    CheckpointError,
    InputError,
    NothingFitsError,
    UnsupportedArchitectureError,
    UsageError,
)
from edge_run.core.gguf_header import GGML_TYPES
from edge_run.core.manifest import Manifest, read_manifest
from edge_run.core.planning import checkpoint_plan, converter
from edge_run.core.quants import BY_NAME as QUANT_NAMES
from edge_run.core.quants import KV_CACHE_TYPES, PLANNED_QUANTS
from edge_run.core.tuning import BASE, INSTRUCT, UNKNOWN, Tuning, first_known, of_checkpoint, of_gguf, recorded
from edge_run.profiles.devices import DeviceProfile
from edge_run.runtime.artifacts import formats as format_rows
from edge_run.runtime.estimate.gguf import CACHE_BYTES, MemoryEstimate, shape_from_checkpoint, shape_from_gguf
from edge_run.runtime.estimate.speed import decode_speed
from edge_run.runtime.eval.store import QualityStore
from edge_run.runtime.pick.explain import chat_note, explain, nothing_fits
from edge_run.runtime.pick.prior import CORPUS_KEY, usable
from edge_run.runtime.pick.quality import candidate_quality, store_kv_deltas, store_references
from edge_run.runtime.pick.types import Candidate, Row

# Quant types a local checkpoint is offered at (planned pairings), most to least precise: PLANNED_QUANTS,
# the `planned` column of src/edge_run/core/quants.py; and with an importance matrix (measured to help these most:
# results/tradeoff.json, SmolLM2 Q2_K PPL 33.5 -> 28.9), computed on IMATRIX_TEXT when the pairing is converted.
IMATRIX_QUANTS = ("Q4_K_M", "Q3_K_M", "Q2_K")
IMATRIX_TEXT = "tinyshakespeare"  # a built-in calibration text that is not the evaluation text (WikiText-2)
IMATRIX_SUFFIX = "-imat"  # <model>-imat.<QUANT>.gguf: beside the plain artifact of the same type
# --cache-type auto: each pairing also with these KV cache types (a quantized V cache runs with flash attention)
KV_DIMENSION = ("q8_0",)
HEADROOM_FRACTION = 0.05
HEADROOM_MIN_MIB = 64.0
CTX_STEP = 256  # llama.cpp pads the KV cache to 256 cells: fitted contexts are multiples of it
MAX_CTX_SEARCH = 131072
# what a pick is for: text (continue a prompt: quality alone ranks) or chat (`chat`, `serve`, `run --chat`)
PURPOSES = ("text", "chat")
# a chat pick's order among the pairings that fit, before quality: a base model continues the text of a chat
# turn instead of answering it (Gemma 3 270M base repeats the prompt; SmolLM2-135M-Instruct answers)
CHAT_ORDER = {INSTRUCT: 0, UNKNOWN: 1, BASE: 2}


# ------------------------------------------------------------------------------------- estimators

# format -> estimate(candidate, n_ctx, profile, cache_type): a view of every format's row
# (src/edge_run/runtime/artifacts/formats.py)
Estimator = Callable[[Candidate, int, DeviceProfile, str], MemoryEstimate]


class _RowEstimators(Mapping[str, Estimator]):
    def __getitem__(self, fmt: str) -> Estimator:
        est = format_rows.ROWS[fmt].estimate
        return lambda c, n_ctx, profile, cache: est(c.path, c.shape, n_ctx, tuple(profile.simd), cache)

    def __iter__(self) -> Iterator[str]:
        return iter(format_rows.ROWS)

    def __len__(self) -> int:
        return len(format_rows.ROWS)


ESTIMATORS: Mapping[str, Estimator] = _RowEstimators()


# ------------------------------------------------------------------------------------- candidates

def _model_name(path: Path, manifest: Manifest) -> str:
    name = path.name
    for suffix in (f".{manifest.quant}.gguf", ".gguf", f".{manifest.quant}"):
        if name.lower().endswith(suffix.lower()):
            return name[: -len(suffix)]
    return name


def _is_checkpoint(d: Path) -> bool:
    return (d / "config.json").is_file() and (
        any(d.glob("*.safetensors")) or (d / "model.safetensors.index.json").is_file())


def _scan(models_dir: Path) -> tuple[list[tuple[Path, Manifest]], list[Path], list[Path]]:
    """(artifacts with a manifest, checkpoint folders, GGUF files without a manifest) under ``models_dir``."""
    artifacts: list[tuple[Path, Manifest]] = []
    checkpoints: list[Path] = []
    orphans: list[Path] = []
    seen: set[tuple[int, int]] = set()  # (device, inode) of every folder walked: a symlink loop is walked once
    for root, dirs, files in os.walk(models_dir, followlinks=True):  # checkpoints are often symlinked in
        d = Path(root)
        try:
            st = os.stat(d)
        except OSError:
            dirs.clear()
            continue
        if (st.st_dev, st.st_ino) in seen:
            dirs.clear()
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs.sort()
        if "manifest.json" in files:  # an ONNX artifact folder
            m = read_manifest(d)
            if m is not None:
                artifacts.append((d, m))
            dirs.clear()
            continue
        if _is_checkpoint(d):
            checkpoints.append(d)
        for f in sorted(files):
            if f.endswith(".gguf") and (d / f).is_file():  # regular files only: a FIFO would block the read
                m = read_manifest(d / f)
                if m is None:
                    orphans.append(d / f)
                elif m.format == "gguf":
                    artifacts.append((d / f, m))
    return artifacts, checkpoints, orphans


def _orphan_candidate(path: Path) -> Candidate | None:
    """A GGUF made elsewhere (llama.cpp, a download) that `run` accepts: a candidate from its own metadata,
    marked as having no manifest (quality unmeasured, quant from the file name). None if it is unreadable."""
    try:
        shape = shape_from_gguf(path)
    except InputError:
        return None
    stem = path.name[: -len(".gguf")]
    model, _, quant = stem.rpartition(".")
    if not model or quant.upper() not in QUANT_NAMES:
        model, quant = stem, "?"
    return Candidate(model, quant.upper(), shape, sum(t.ne0 * t.ne1 for t in shape.tensors), path=path,
                     has_manifest=False, tuning=_artifact_tuning(path, None))


def gather_candidates(models_dir: Path, quants: Iterable[str] = PLANNED_QUANTS,
                      store: QualityStore | None = None,
                      imatrix_quants: Iterable[str] = IMATRIX_QUANTS) -> list[Candidate]:
    """Every local artifact with a manifest under ``models_dir``, plus each local checkpoint at each of
    ``quants`` not converted yet. Measured qualities of one source checkpoint (manifests and the quality
    store) travel with all its pairings so unmeasured ones are predicted from them."""
    store = QualityStore.default() if store is None else store
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        raise InputError(f"models folder {models_dir} does not exist",
                         "pass --models DIR holding converted artifacts or Hugging Face checkpoints")
    artifacts, checkpoints, orphans = _scan(models_dir)
    refs: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for path, m in artifacts:
        entry = (m.quality or {}).get(CORPUS_KEY)
        if usable(entry):
            imat = bool(m.extra.get("imatrix")) if isinstance(m.extra, dict) else False
            refs.setdefault(m.source.get("digest", str(path)), []).append((m.quant, {**entry, "imatrix": imat}))
    merged: dict[str, tuple[tuple[str, dict[str, Any]], ...]] = {}

    def refs_for(digest: str) -> tuple[tuple[str, dict[str, Any]], ...]:
        if digest not in merged:
            merged[digest] = tuple(refs.get(digest, ())) + store_references(store, digest)
        return merged[digest]

    out: list[Candidate] = []
    have: set[tuple[str, str, bool]] = set()
    for path, m in artifacts:
        digest = m.source.get("digest", str(path))
        imatrix = bool(m.extra.get("imatrix")) if isinstance(m.extra, dict) else False
        have.add((digest, m.quant.upper(), imatrix))
        name = _model_name(path, m)
        tuning = _artifact_tuning(path, m)
        out.append(Candidate(
            model=name.removesuffix(IMATRIX_SUFFIX) if imatrix else name, quant=m.quant,
            shape=shape_from_gguf(path) if m.format == "gguf" else None,
            n_params=m.parameter_count, format=m.format, path=path,
            checkpoint=Path(m.source["path"]) if m.source.get("path") else None,
            context_length=m.context_length, references=refs_for(digest), digest=digest, imatrix=imatrix,
            kv_deltas=store_kv_deltas(store, digest), tuning=tuning))
    plans = [(q.upper(), False) for q in quants] + [(q.upper(), True) for q in imatrix_quants]
    for ckpt_dir in checkpoints:
        out.extend(_planned(ckpt_dir, plans, have, refs_for, store))
    out.extend(c for c in map(_orphan_candidate, orphans) if c is not None)
    return out


def _planned(ckpt_dir: Path, plans: list[tuple[str, bool]], have: set[tuple[str, str, bool]],
             refs_for: Callable[[str], tuple[tuple[str, dict[str, Any]], ...]], store: QualityStore) -> list[Candidate]:
    try:
        plan = checkpoint_plan(ckpt_dir)
    except UnsupportedArchitectureError:
        raise  # a readable checkpoint edge-run cannot convert: say so rather than rank without it
    except CheckpointError:
        return []  # not convertible: nothing to plan (`edge-run convert` says why)
    digest = plan.digest
    ctx = int(plan.text_config.get("max_position_embeddings") or 0)
    n_params = plan.parameter_count
    references = refs_for(digest)
    kv_deltas = store_kv_deltas(store, digest)
    shapes = {q: shape_from_checkpoint(ckpt_dir, q) for q in dict.fromkeys(q for q, _ in plans)}
    tuning = first_known(lambda: of_checkpoint(ckpt_dir))
    return [Candidate(model=plan.name, quant=q, shape=shapes[q], n_params=n_params, checkpoint=ckpt_dir,
                      context_length=ctx, references=references, digest=digest, imatrix=imatrix, kv_deltas=kv_deltas,
                      tuning=tuning)
            for q, imatrix in plans if (digest, q, imatrix) not in have]


def _artifact_tuning(path: Path, m: Manifest | None) -> Tuning:
    """What the manifest recorded at convert time, else what the source checkpoint's or the artifact's own files
    say (a GGUF's metadata; an ONNX folder's tokenizer files)."""
    source = Path(m.source["path"]) if m is not None and isinstance(m.source.get("path"), str) else None
    return first_known(
        lambda: recorded(m.extra) if m is not None else None,
        lambda: of_checkpoint(source) if source is not None and source.is_dir() else None,
        lambda: of_checkpoint(path) if path.is_dir() else of_gguf(path))


def candidate_for_artifact(path: Path) -> Candidate:
    """One artifact as a candidate (``run ARTIFACT --profile NAME`` checks that it fits)."""
    path = Path(path)
    m = read_manifest(path)
    if path.is_dir():
        if m is None:
            raise ArtifactError(f"{path} has no manifest.json", "convert it with `edge-run convert`")
        return Candidate(path.name, m.quant, None, m.parameter_count, format=m.format, path=path,
                         context_length=m.context_length, tuning=_artifact_tuning(path, m))
    if not path.is_file():
        raise ArtifactError(f"artifact {path} does not exist", "pass an existing .gguf file")
    shape = shape_from_gguf(path)
    if m is None:
        return Candidate(path.stem, "?", shape, sum(t.ne0 * t.ne1 for t in shape.tensors), path=path,
                         tuning=_artifact_tuning(path, None))
    entry = (m.quality or {}).get(CORPUS_KEY)
    refs = ((m.quant, entry),) if isinstance(entry, dict) and "bpb" in entry else ()
    return Candidate(_model_name(path, m), m.quant, shape, m.parameter_count, path=path,
                     context_length=m.context_length, references=refs, tuning=_artifact_tuning(path, m))


# ------------------------------------------------------------------------------------------ picking

@dataclass(frozen=True)
class PickResult:
    profile: DeviceProfile
    budget_mib: float
    ctx: int
    min_tps: float
    cache_type: str
    rows: tuple[Row, ...]  # best quality first
    pick: Row
    binding: str  # what stops a better pick, one sentence
    counterfactuals: tuple[str, ...]
    purpose: str = "text"  # one of PURPOSES
    note: str = ""  # for a chat: why the pick is not the best fit by quality, or that it is not chat-tuned

    def to_dict(self) -> dict[str, Any]:
        return {"profile": self.profile.name, "budget_mib": round(self.budget_mib, 1), "ctx": self.ctx,
                "min_tps": self.min_tps, "cache_type": self.cache_type, "for": self.purpose,
                "pick": self.pick.to_dict(), "pick_note": self.note or None,
                "binding_constraint": self.binding, "counterfactuals": list(self.counterfactuals),
                "candidates": [r.to_dict() for r in self.rows]}


def budget_mib(profile: DeviceProfile, headroom_mib: float | None = None) -> float:
    if headroom_mib is None:
        headroom_mib = max(HEADROOM_MIN_MIB, HEADROOM_FRACTION * profile.ram_mb)
    return profile.ram_mb - profile.os_reserved_mb - headroom_mib


def _estimate(c: Candidate, n_ctx: int, profile: DeviceProfile, cache_type: str) -> MemoryEstimate | None:
    fn = ESTIMATORS.get(c.format)
    return fn(c, n_ctx, profile, c.cache_type or cache_type) if fn is not None else None


def _memory_reason(est: MemoryEstimate, budget: float) -> tuple[str, str] | None:
    if est.anon_mib > budget:
        return "memory", f"needs {est.total_mib:.0f} MiB > budget {budget:.0f}"
    if est.total_mib > budget:
        return "page-cache", (f"mmap'd weights ({est.file_mib:.0f} MiB) do not fit the {budget - est.anon_mib:.0f} "
                              "MiB of page cache left (re-read from storage every token)")
    return None


def _fits(c: Candidate, n_ctx: int, profile: DeviceProfile, cache_type: str, budget: float) -> bool:
    est = _estimate(c, n_ctx, profile, cache_type)
    return est is not None and _memory_reason(est, budget) is None


def largest_ctx(c: Candidate, profile: DeviceProfile, cache_type: str, budget: float, floor: int = CTX_STEP) -> int:
    """The largest context (the trained one, or a multiple of 256) >= ``floor`` that fits; 0 if none."""
    top = c.trained_ctx or MAX_CTX_SEARCH
    if _fits(c, top, profile, cache_type, budget):
        return top
    lo, hi, best = -(-floor // CTX_STEP), (top - 1) // CTX_STEP, 0
    while lo <= hi:
        mid = (lo + hi) // 2
        if _fits(c, mid * CTX_STEP, profile, cache_type, budget):
            best, lo = mid * CTX_STEP, mid + 1
        else:
            hi = mid - 1
    return best


def evaluate(c: Candidate, profile: DeviceProfile, ctx: int, min_tps: float = 0.0, cache_type: str = "f16",
             budget: float | None = None) -> Row:
    """One candidate against the profile at ``ctx``: memory, quality, speed, and why it is rejected."""
    budget = budget_mib(profile) if budget is None else budget
    quality = candidate_quality(c)
    if c.format not in ESTIMATORS:
        return Row(c, None, quality, 0.0, 0, f"no memory estimator for {c.format} artifacts yet", ("format",))
    est = _estimate(c, ctx, profile, cache_type)
    assert est is not None
    tps = decode_speed(c.shape, profile, position=min(ctx, 512), cache_type=c.cache_type or cache_type).tokens_per_s \
        if c.shape is not None else 0.0
    max_ctx = largest_ctx(c, profile, cache_type, budget, floor=min(ctx, CTX_STEP))
    reasons: list[tuple[str, str]] = []
    if c.trained_ctx and ctx > c.trained_ctx:
        reasons.append(("context", f"ctx {ctx} > trained context {c.trained_ctx}"))
    mem = _memory_reason(est, budget)
    if mem is not None:
        reasons.append(mem)
    if min_tps and tps < min_tps:
        reasons.append(("speed", f"~{tps:.1f} tok/s < --min-tps {min_tps:g}"))
    return Row(c, est, quality, tps, max_ctx, "; ".join(r for _, r in reasons), tuple(k for k, _ in reasons))


def pick(profile: DeviceProfile, candidates: list[Candidate], ctx: int = 2048, min_tps: float = 0.0,
         cache_type: str = "f16", headroom_mib: float | None = None, min_ctx: int | None = None,
         purpose: str = "text") -> PickResult:
    """The best-quality candidate that fits; NothingFitsError names the smallest pairing and its need.

    ``cache_type`` "auto": every pairing with an f16 KV cache and with each of KV_DIMENSION (ranked below its
    f16 twin at equal quality, so a quantized cache is only picked where it makes a better pairing fit).
    ``min_ctx`` < ``ctx``: a pairing that fits only at a shorter context is ranked at the longest one that fits
    down to ``min_ctx`` (the user allows trading context for quality; by default the context is a requirement).
    ``purpose`` "chat": the best instruction-tuned pairing that fits (CHAT_ORDER), with a note when the best fit
    by quality is not tuned."""
    if purpose not in PURPOSES:
        raise UsageError(f"--for {purpose!r} is not a purpose", f"choose from: {', '.join(PURPOSES)}")
    if ctx < 16:
        raise UsageError(f"--ctx {ctx} is too small", "pass a context of at least 16 tokens")
    if cache_type != "auto" and cache_type not in CACHE_BYTES:
        raise UsageError(f"unknown KV cache type {cache_type!r}", f"choose from: auto, {', '.join(CACHE_BYTES)}")
    if min_ctx is not None and not 16 <= min_ctx <= ctx:
        raise UsageError(f"--min-ctx {min_ctx} is not between 16 and --ctx {ctx}", "pass a smaller --min-ctx")
    requested = cache_type
    if cache_type == "auto":
        cache_type = "f16"
        candidates = [*candidates, *(replace(c, cache_type=t) for c in candidates for t in KV_DIMENSION
                                     if c.format in ESTIMATORS and not c.cache_type and _kv_ok(c, t))]
    if not candidates:
        raise InputError("no candidates to pick from", "pass --models DIR holding converted artifacts (with "
                         "manifests) or Hugging Face checkpoints")
    budget = budget_mib(profile, headroom_mib)
    if budget <= 0:
        raise NothingFitsError(f"profile {profile.name} leaves no memory for a model ({profile.ram_mb} MB RAM, "
                               f"{profile.os_reserved_mb} MB reserved for the OS)",
                               "lower os_reserved_mb in the profile")
    rows = [evaluate(c, profile, ctx, min_tps, cache_type, budget) for c in candidates]
    if min_ctx is not None and min_ctx < ctx:
        rows = [_shorter(r, profile, min_ctx, min_tps, cache_type, budget) for r in rows]
    rows.sort(key=Row.rank_key)
    fitting = [r for r in rows if r.fits]
    if not fitting:
        raise nothing_fits(profile, rows, budget, ctx, min_tps)
    best = fitting[0]
    choice, note, pool = best, "", rows
    if purpose == "chat":
        choice = min(fitting, key=lambda r: CHAT_ORDER[r.candidate.tuning.kind])  # the first of the most tuned
        note = chat_note(rows, best, choice)
        # what stops a better pick among the pairings at least as chat-ready as the choice
        pool = [r for r in rows if CHAT_ORDER[r.candidate.tuning.kind] <= CHAT_ORDER[choice.candidate.tuning.kind]]
    binding, counter = explain(profile, pool, choice, budget, ctx, min_tps, cache_type, _estimate, _fits,
                               kv_auto=requested == "auto")
    return PickResult(profile, budget, ctx, min_tps, requested, tuple(rows), choice, binding, tuple(counter),
                      purpose, note)


def _kv_ok(c: Candidate, cache_type: str) -> bool:
    """llama.cpp makes a quantized KV cache only when each head's K and V rows hold whole blocks of its type."""
    _, block, _ = GGML_TYPES[KV_CACHE_TYPES[cache_type].ggml_type]
    return c.shape is not None and c.shape.head_dim_k % block == 0 and c.shape.head_dim_v % block == 0


def _shorter(r: Row, profile: DeviceProfile, min_ctx: int, min_tps: float, cache_type: str, budget: float) -> Row:
    """``r`` again at the longest context >= ``min_ctx`` that fits, when memory alone rejects it."""
    if r.fits or not set(r.constraints) <= {"memory", "page-cache"} or r.max_ctx < min_ctx:
        return r
    return replace(evaluate(r.candidate, profile, r.max_ctx, min_tps, cache_type, budget), ctx=r.max_ctx)


# ------------------------------------------------------------------------------------------ run --profile

def resolve_for_run(profile_name: str, models: Path | None, artifact: Path | None,
                    ctx: int, purpose: str = "text") -> tuple[Path, dict[str, Any]]:
    """What `edge-run run --profile NAME` loads: the pick under ``models`` for ``purpose`` (converted first when
    it is a planned pairing), or ``artifact`` once it is checked to fit the profile. ``info["note"]``: the chat
    pick's note (src/edge_run/runtime/pick/explain.py chat_note), "" when there is nothing to say."""
    from edge_run.profiles.devices import get_profile

    profile = get_profile(profile_name)
    if artifact is not None:
        candidates = [candidate_for_artifact(artifact)]
    elif models is not None:
        candidates = gather_candidates(models)
    else:
        raise UsageError("--profile needs --models DIR (or an artifact to check)",
                         "pass --models with converted artifacts or checkpoints")
    result = pick(profile, candidates, ctx, purpose=purpose)
    chosen = result.pick.candidate
    path = chosen.path if chosen.path is not None else convert_planned(chosen)
    info = {"profile": profile.name, "model": chosen.model, "quant": chosen.quant, "converted": chosen.planned,
            "estimate_mib": round(result.pick.estimate.total_mib, 1) if result.pick.estimate else None,
            "budget_mib": round(result.budget_mib, 1), "binding_constraint": result.binding, "for": purpose,
            "tuning": chosen.tuning.kind, "note": result.note}
    return path, info


def convert_planned(c: Candidate, out_dir: Path | None = None) -> Path:
    """Convert a planned pairing beside its checkpoint: ``<models>/<model>.<QUANT>.gguf`` (with an importance
    matrix measured on IMATRIX_TEXT first: ``<model>-imat.<QUANT>.gguf``)."""
    if c.checkpoint is None:
        raise UsageError(f"{c.label} has no checkpoint to convert from")
    out = Path(out_dir) if out_dir is not None else c.checkpoint.parent
    conv = converter()
    if not c.imatrix:
        return Path(conv.convert(c.checkpoint, out, [c.quant], c.model)[0])
    from edge_run.runtime.eval.corpora import builtin_corpus_path
    from edge_run.runtime.eval.imatrix import imatrix_for_checkpoint

    name = c.model + IMATRIX_SUFFIX
    imatrix = imatrix_for_checkpoint(c.checkpoint, builtin_corpus_path(IMATRIX_TEXT), out, name=name,
                                     to_f16=conv.f16)
    return Path(conv.convert(c.checkpoint, out, [c.quant], name, imatrix=imatrix)[0])
