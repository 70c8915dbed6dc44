"""Quality of a picker candidate: measured entries from manifests and the quality store, the pairing's
loss predicted from its tensor-type mix, and the command that measures a model that is unmeasured.

Store entries of one checkpoint on WikiText-2 (ctx 512) are combined around an *anchor*, the entry with
the most chunks (`pick --measure` makes it: the model's quality on N chunks). A pairing measured on a
shorter slice of k chunks is placed by its paired difference with the anchor's quant type on the same
k chunks: bpb = anchor(N) + (pairing(k) - anchor_quant(k)). The difference of two models on the same
text varies far less than either value, so a short slice ranks pairings of one model reliably.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edge_run.runtime.eval.store import QualityStore, Stored
from edge_run.runtime.pick import published
from edge_run.runtime.pick.prior import KV_DELTA_BPB, PUBLISHED, Quality, predict, usable

if TYPE_CHECKING:
    from edge_run.runtime.pick.types import Candidate

REFERENCE_CTX = 512
REFERENCE_CORPUS = "wikitext-2-raw-test"


@functools.lru_cache(maxsize=1)
def reference_corpus_sha256() -> str:
    from edge_run.runtime.eval.corpora import builtin_corpus_path

    return hashlib.sha256(builtin_corpus_path(REFERENCE_CORPUS).read_bytes()).hexdigest()


def store_references(store: QualityStore, digest: str) -> tuple[tuple[str, dict[str, Any]], ...]:
    """(quant, entry) for each (quant type, imatrix) of one checkpoint measured on the reference corpus."""
    sha = reference_corpus_sha256()
    found = [s for s in store.entries(digest) if s.key.corpus_sha256 == sha and s.key.ctx == REFERENCE_CTX
             and s.key.cache_type == "f16"]
    if not found:
        return ()
    by_variant: dict[tuple[str, str], dict[int, Stored]] = {}
    for s in found:
        by_variant.setdefault((s.key.quant.upper(), s.key.imatrix), {})[s.key.chunks] = s
    anchor_variant = max(by_variant, key=lambda v: (max(by_variant[v]), v[1] == ""))
    anchor_runs = by_variant[anchor_variant]
    anchor = anchor_runs[max(anchor_runs)]
    out = []
    for (quant, imatrix), runs in sorted(by_variant.items()):
        best = runs[max(runs)]
        entry = {**best.entry, "imatrix": bool(imatrix)}
        same_slice = anchor_runs.get(best.key.chunks)
        if best.key.chunks < anchor.key.chunks and same_slice is not None:
            entry["bpb"] = anchor.entry["bpb"] + best.entry["bpb"] - same_slice.entry["bpb"]
            entry["basis"] = (f"measured: {anchor.key.quant} on {anchor.key.chunks} chunks + the difference "
                              f"on {best.key.chunks}")
        if usable(entry):
            out.append((quant, entry))
    return tuple(out)


def store_kv_deltas(store: QualityStore, digest: str) -> tuple[tuple[str, float], ...]:
    """(KV cache type, BPB with it minus BPB with f16) of one checkpoint: the paired difference of runs on the
    same weights, text and chunks (the largest such pair per cache type)."""
    sha = reference_corpus_sha256()
    runs = {(s.key.quant, s.key.imatrix, s.key.chunks, s.key.cache_type): s.entry["bpb"] for s in store.entries(digest)
            if s.key.corpus_sha256 == sha and s.key.ctx == REFERENCE_CTX}
    best: dict[str, tuple[int, float]] = {}
    for (quant, imatrix, chunks, cache), bpb in runs.items():
        f16 = runs.get((quant, imatrix, chunks, "f16"))
        if cache != "f16" and f16 is not None and chunks >= best.get(cache, (0, 0.0))[0]:
            best[cache] = (chunks, bpb - f16)
    return tuple(sorted((cache, delta) for cache, (_, delta) in best.items()))


def candidate_quality(c: Candidate) -> Quality:
    """The pairing's BPB with its weights (src/edge_run/runtime/pick/prior.py predict) plus, for a quantized KV cache,
    the
    model's measured change with that cache (else the zoo's, predicted); never below the f16 cache's value:
    the measured changes are within noise, and a cache that loses nothing cannot gain."""
    from edge_run.runtime.pick.quant_loss import predicted_loss

    loss = None
    if c.shape is not None and c.shape.tensors:
        shape = c.shape

        def loss(q: str) -> float:
            return predicted_loss(shape, None if q.upper() == c.quant.upper() else q)
    q = predict(c.quant, c.n_params, list(c.references), loss=loss, imatrix=c.imatrix)
    if q.unmeasured:
        q = published_quality(c, loss) or q
    if not c.cache_type or c.cache_type == "f16":
        return q
    measured = dict(c.kv_deltas).get(c.cache_type)
    delta = max(0.0, measured if measured is not None else KV_DELTA_BPB.get(c.cache_type, 0.0))
    how = "measured" if measured is not None else "predicted"
    return Quality(q.bpb + delta, q.measured and measured is not None,
                   f"{q.basis}; KV {c.cache_type}: {how} {delta:+.4f}")


def published_quality(c: Candidate, loss: Callable[[str], float] | None = None) -> Quality | None:
    """The pairing's quality from the published figures of the model it is (src/edge_run/runtime/pick/published.py):
    the figure of its own quant type, else predicted from the closest published one as from a measured one; None
    when its model has none."""
    if c.shape is None:
        return None
    model = published.match(published.local_names(c.model, c.checkpoint, c.path), c.shape.n_layer, c.shape.n_embd,
                            c.shape.n_vocab)
    if model is None:
        return None
    refs = published.references(model)
    q = predict(c.quant, c.n_params, refs, loss=loss, imatrix=c.imatrix)
    sources = "; ".join(dict.fromkeys(str(e["source"]) for _, e in refs))
    if q.measured:  # the model's own figure at this quant type
        ppl = next(e["ppl"] for r, e in refs if r.upper() == c.quant.upper() and e["imatrix"] == c.imatrix)
        return Quality(q.bpb, False, f"{PUBLISHED}: {model.name} {q.basis.split()[-1]}, PPL {ppl:g} ({sources})")
    how = q.basis.replace("measured", "published")
    return Quality(q.bpb, False, f"{PUBLISHED}: {how} of {model.name} ({sources})")


def measure_command(c: Candidate, profile: str, models: str = "models") -> str:
    """What measures this candidate's model (an artifact: eval it; a checkpoint: pick --measure)."""
    if c.path is not None and not c.has_manifest:
        return f"{c.path.name} has no manifest to key a measurement by: convert its checkpoint with `edge-run convert`"
    if c.path is not None and c.format == "gguf":
        return f"edge-run eval {c.path} --chunks 20"
    return f"edge-run pick --profile {profile} --models {models} --measure"
