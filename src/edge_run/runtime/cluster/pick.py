"""`pick` for a cluster: the best (model, quant) pairing the nodes can serve together, on one board when it fits one.

For each candidate: the nodes on which it fits alone (the single-board picker's memory estimate, each node's
budget) -> it runs there, unsplit. Otherwise the layer plan over every node (plan.py: weights + KV share +
compute buffer + the worker's baseline, each within its budget). The pick is the best-quality pairing that runs
either way; the answer says why, with the best single-board pairing beside a split one.

Predicted speed of a split: llama.cpp runs the nodes' layers one after the other for each token (measured here:
two 1-thread workers 0.54x of one 2-thread process, issue 27), so the nodes' compute times add up:

    t_token = sum over nodes (its share of the weight bytes x that board's time per token for the whole model)
              + per worker: one round trip (the host's blocking read of its output) + the hidden state in and out
              + the logits (n_vocab f32) back from the last node, over the link's bandwidth
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from edge_run.core.errors import InsufficientMemoryError, NothingFitsError, UsageError
from edge_run.runtime.cluster.plan import ClusterPlan, plan_cluster
from edge_run.runtime.cluster.spec import ClusterSpec, Node
from edge_run.runtime.estimate.gguf import ModelShape
from edge_run.runtime.estimate.speed import PER_TOKEN_OVERHEAD_S, decode_speed
from edge_run.runtime.pick.types import Candidate

# 1 GbE: ~117 MB/s of TCP payload; a LAN round trip between two boards of ~0.3 ms (override with measured values:
# `edge-run cluster check` prints the RTT)
DEFAULT_BANDWIDTH_MBS = 110.0
DEFAULT_RTT_MS = 0.3


@dataclass(frozen=True)
class Link:
    bandwidth_mbs: float = DEFAULT_BANDWIDTH_MBS
    rtt_ms: float = DEFAULT_RTT_MS


@dataclass(frozen=True)
class ClusterRow:
    candidate: Candidate
    bpb: float
    quality_label: str
    rank: tuple[Any, ...]  # the single-board picker's quality order
    single: str  # the node it fits alone ("" = none)
    single_tps: float
    plan: ClusterPlan | None  # the split, when it fits no single node but the cluster
    split_tps: float
    reason: str  # why it runs nowhere ("" = it runs)

    @property
    def runs(self) -> bool:
        return not self.reason

    @property
    def tps(self) -> float:
        return self.single_tps if self.single else self.split_tps

    def to_dict(self) -> dict[str, Any]:
        return {**self.candidate.to_dict(), "bpb": round(self.bpb, 4), "quality": self.quality_label,
                "runs_on": self.single or ("split" if self.plan else None), "tokens_per_s": round(self.tps, 2),
                "split": self.plan.to_dict() if self.plan else None, "why_not": self.reason or None}


@dataclass(frozen=True)
class ClusterPick:
    spec: ClusterSpec
    ctx: int
    rows: tuple[ClusterRow, ...]  # best quality first
    pick: ClusterRow
    best_single: ClusterRow | None
    why: str

    def to_dict(self) -> dict[str, Any]:
        return {"cluster": self.spec.origin, "ctx": self.ctx, "pick": self.pick.to_dict(),
                "best_single_board": self.best_single.to_dict() if self.best_single else None, "why": self.why,
                "candidates": [r.to_dict() for r in self.rows]}


def split_speed(plan: ClusterPlan, shape: ModelShape, link: Link, position: int = 512,
                cache_type: str = "f16") -> float:
    """Predicted decode tokens/s of ``plan`` (module docstring)."""
    total = sum(s.weight_mib for s in plan.shares if s.count) or 1.0
    t = PER_TOKEN_OVERHEAD_S
    workers = [s for s in plan.shares if s.count and not s.node.is_host]
    for s in plan.shares:
        if s.count and s.node.profile is not None:
            whole = 1.0 / decode_speed(shape, s.node.profile, position, cache_type).tokens_per_s - PER_TOKEN_OVERHEAD_S
            t += whole * s.weight_mib / total
    bandwidth = link.bandwidth_mbs * 1e6
    t += len(workers) * (link.rtt_ms / 1000.0 + 2 * 4 * shape.n_embd / bandwidth)
    t += 4 * shape.n_vocab / bandwidth if workers else 0.0
    return 1.0 / t


def with_headroom(spec: ClusterSpec) -> ClusterSpec:
    """Each node's budget less the single-board picker's headroom (its fraction of the node's own budget, so a
    budget set in the cluster file keeps its proportion)."""
    from edge_run.runtime.pick.picker import HEADROOM_FRACTION, HEADROOM_MIN_MIB

    def less(n: Node) -> Node:
        if n.profile is None:
            return n
        return replace(n, memory_mb=n.memory_mb - max(HEADROOM_MIN_MIB, HEADROOM_FRACTION * n.memory_mb))

    return replace(spec, nodes=tuple(less(n) for n in spec.nodes))


def evaluate(c: Candidate, spec: ClusterSpec, ctx: int, link: Link, cache_type: str = "f16") -> ClusterRow:
    from edge_run.runtime.pick.picker import evaluate as evaluate_single

    boards = [n for n in spec.nodes if n.profile is not None]
    singles = [(n, evaluate_single(c, n.profile, ctx, cache_type=cache_type, budget=n.memory_mb))
               for n in boards if n.profile is not None]
    quality = singles[0][1]
    fit = sorted(((n, r) for n, r in singles if r.fits), key=lambda nr: -nr[1].tps)
    row = ClusterRow(c, quality.quality.bpb, quality.quality.label, quality.rank_key(), "", 0.0, None, 0.0, "")
    if fit:
        return replace(row, single=fit[0][0].label, single_tps=fit[0][1].tps)
    if c.shape is None:
        return replace(row, reason=f"no layer split for {c.format} artifacts")
    try:
        plan = plan_cluster(spec, c.shape, ctx, cache_type)
    except (InsufficientMemoryError, UsageError) as e:
        return replace(row, reason=e.message)
    return replace(row, plan=plan, split_tps=split_speed(plan, c.shape, link, min(ctx, 512), cache_type))


def _layers(plan: ClusterPlan) -> str:
    shares = [s for s in plan.shares if s.count]
    return "/".join(str(s.count) for s in shares) + " layers over " + ", ".join(s.node.label for s in shares)


def pick_cluster(spec: ClusterSpec, candidates: list[Candidate], ctx: int = 2048, link: Link | None = None,
                 cache_type: str = "f16") -> ClusterPick:
    """The best-quality pairing the cluster runs; NothingFitsError when none runs anywhere."""
    if not candidates:
        raise UsageError("no candidates to pick from", "pass --models DIR holding artifacts or checkpoints")
    link = link or Link()
    budgeted = with_headroom(spec)
    rows = sorted((evaluate(c, budgeted, ctx, link, cache_type) for c in candidates), key=lambda r: r.rank)
    running = [r for r in rows if r.runs]
    if not running:
        smallest = min(rows, key=lambda r: r.candidate.shape.weight_bytes if r.candidate.shape else float("inf"))
        raise NothingFitsError(f"nothing fits the cluster {spec.origin} at --ctx {ctx}: even "
                               f"{smallest.candidate.label}: {smallest.reason}", "add a node or lower --ctx")
    choice = running[0]
    single = next((r for r in running if r.single), None)
    if choice.plan is None:
        why = (f"{choice.candidate.label} fits one board ({choice.single}): ~{choice.single_tps:.1f} tok/s "
               "unsplit; a split would only add the network")
    else:
        need = sum(s.need_mib for s in choice.plan.shares) / 1024
        alt = (f"the best single-board pairing is {single.candidate.label} ({single.single}) at "
               f"~{single.single_tps:.1f} tok/s and BPB {single.quality_label}" if single else
               "no pairing fits a single board")
        why = (f"{choice.candidate.label} needs {need:.1f} GiB: split {_layers(choice.plan)}, predicted "
               f"~{choice.split_tps:.1f} tok/s; {alt}")
    return ClusterPick(spec, ctx, tuple(rows), choice, single, why)
