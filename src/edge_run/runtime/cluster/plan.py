"""Which node holds which layers: llama.cpp's layer split (``n_gpu_layers`` + ``tensor_split``) made explicit.

llama.cpp numbers n_layer + 1 slots (the repeating layers, then the output layer). The first
``n_layer + 1 - n_gpu_layers`` stay on the host's CPU with the token embeddings (always on the CPU); the rest go to
the RPC devices in registry order, ``tensor_split[d]`` slots each (llama-model.cpp: a slot's device is the first
whose cumulative share exceeds the slot's index, so whole slot counts map exactly). Each layer's KV cache lives
on its layer's device.

Slots are dealt in proportion to each node's memory budget (largest remainder, at least one per node); every node
must then hold its weights + KV share (+ on a worker, its compute buffer and the worker's own baseline) within
its budget.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from edge_run.core.errors import InsufficientMemoryError, UsageError
from edge_run.runtime.cluster.spec import ClusterSpec, Node
from edge_run.runtime.estimate.gguf import ModelShape, compute_bytes, kv_bytes

MIB = float(1 << 20)
WORKER_BASELINE_MIB = 55.0  # a worker before any tensor arrives: Python, llama_cpp, ggml (VmRSS here, x86-64)
LAYER_TENSOR = re.compile(r"^blk\.(\d+)\.")
OUTPUT_TENSORS = ("output.weight", "output_norm.weight", "output_norm.bias", "output.bias")


@dataclass(frozen=True)
class NodeShare:
    node: Node
    first: int  # first slot (layer index; n_layer = the output layer)
    count: int  # slots held
    weight_mib: float
    kv_mib: float
    other_mib: float  # host: token embeddings; worker: compute buffer + the worker's baseline

    @property
    def need_mib(self) -> float:
        return self.weight_mib + self.kv_mib + self.other_mib

    def to_dict(self, n_layer: int) -> dict[str, Any]:
        last = self.first + self.count - 1
        return {"node": self.node.label, "profile": self.node.name, "endpoint": self.node.endpoint,
                "layers": self.count - (1 if self.count and last == n_layer else 0),
                "output_layer": bool(self.count and last == n_layer),
                "slots": [self.first, last] if self.count else [], "weight_mib": round(self.weight_mib, 1),
                "kv_mib": round(self.kv_mib, 1), "other_mib": round(self.other_mib, 1),
                "need_mib": round(self.need_mib, 1), "budget_mib": round(self.node.memory_mb, 1)}


@dataclass(frozen=True)
class ClusterPlan:
    shares: tuple[NodeShare, ...]  # host first (count 0 when it keeps no layer), then the workers in spec order
    n_layer: int
    n_ctx: int

    @property
    def n_gpu_layers(self) -> int:
        """Slots offloaded to the workers (llama.cpp's n_gpu_layers)."""
        return sum(s.count for s in self.shares if not s.node.is_host)

    def tensor_split(self, endpoints: list[str]) -> list[float]:
        """One entry per RPC device in llama.cpp's registry order: its slot count (0 for a worker not in this plan)."""
        counts = {s.node.endpoint: float(s.count) for s in self.shares if s.node.endpoint}
        return [counts.get(e, 0.0) for e in endpoints]

    def to_dict(self) -> list[dict[str, Any]]:
        return [s.to_dict(self.n_layer) for s in self.shares]


def slot_weights(shape: ModelShape) -> tuple[list[float], float]:
    """Bytes per slot (n_layer layers + the output layer) and the bytes that stay on the host (token embeddings)."""
    per = [0.0] * (shape.n_layer + 1)
    host = 0.0
    has_output = any(t.name == "output.weight" for t in shape.tensors)
    for t in shape.tensors:
        m = LAYER_TENSOR.match(t.name)
        if m and int(m.group(1)) < shape.n_layer:
            per[int(m.group(1))] += t.n_bytes
        elif t.name in OUTPUT_TENSORS:
            per[shape.n_layer] += t.n_bytes
        else:
            host += t.n_bytes
            if t.name == "token_embd.weight" and not has_output:  # tied: llama.cpp loads a copy as the output
                per[shape.n_layer] += t.n_bytes
    return per, host


def deal(budgets: list[float], slots: int) -> list[int]:
    """``slots`` dealt in proportion to ``budgets``, largest remainder first, at least one each."""
    if len(budgets) > slots:
        raise UsageError(f"{len(budgets)} nodes but the model has only {slots} layers (with the output layer)",
                         "use fewer nodes")
    total = sum(budgets)
    exact = [slots * b / total for b in budgets]
    counts = [max(1, int(x)) for x in exact]
    while sum(counts) > slots:  # the floor of one took slots from the big nodes
        i = max(range(len(counts)), key=lambda k: (counts[k] - exact[k], counts[k]))
        counts[i] -= 1
    order = sorted(range(len(budgets)), key=lambda k: exact[k] - counts[k], reverse=True)
    for i in order[: slots - sum(counts)]:
        counts[i] += 1
    return counts


def plan_cluster(spec: ClusterSpec, shape: ModelShape, n_ctx: int, cache_type: str = "f16",
                 counts: list[int] | None = None, n_batch: int = 512) -> ClusterPlan:
    """The split of ``shape`` over ``spec``'s nodes (``counts`` slots each, default dealt by budget), compute
    buffers sized for ``n_batch``-token batches (what the host loads with: LoadOptions.n_batch is llama.cpp's
    n_batch and n_ubatch); InsufficientMemoryError naming the first node whose share does not fit its budget."""
    per_slot, host_bytes = slot_weights(shape)
    slots = shape.n_layer + 1
    nodes = [n for n in spec.nodes if n.takes_layers]
    counts = counts if counts is not None else deal([n.memory_mb for n in nodes], slots)
    kv_layer = kv_bytes(shape, n_ctx, cache_type) / max(shape.n_layer, 1)
    compute = compute_bytes(shape, n_ctx, min(n_ctx, n_batch))
    shares: list[NodeShare] = []
    if not spec.nodes[0].takes_layers:
        shares.append(NodeShare(spec.nodes[0], 0, 0, 0.0, 0.0, host_bytes / MIB))
    first = 0
    for node, count in zip(nodes, counts, strict=True):
        held = range(first, first + count)
        weights = sum(per_slot[i] for i in held)
        kv = kv_layer * sum(1 for i in held if i < shape.n_layer)
        other = host_bytes if node.is_host else compute + WORKER_BASELINE_MIB * MIB
        shares.append(NodeShare(node, first, count, weights / MIB, kv / MIB, other / MIB))
        first += count
    plan = ClusterPlan(tuple(shares), shape.n_layer, n_ctx)
    for s in plan.shares:
        if s.node.memory_mb and s.need_mib > s.node.memory_mb:
            raise InsufficientMemoryError(
                f"{s.node.label} would need {s.need_mib:.0f} MiB for its {s.count} layers at --ctx {n_ctx} "
                f"(budget {s.node.memory_mb:.0f} MiB)", "add a node, lower --ctx, or pick a smaller quant")
    return plan
