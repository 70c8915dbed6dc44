"""Which node holds which layers: llama.cpp's layer split (``n_gpu_layers`` + ``tensor_split``) made explicit.

llama.cpp numbers n_layer + 1 slots (the repeating layers, then the output layer). The first
``n_layer + 1 - n_gpu_layers`` stay on the host's CPU with the token embeddings (always on the CPU); the rest go to
the RPC devices in registry order, ``tensor_split[d]`` slots each (llama-model.cpp: a slot's device is the first
whose cumulative share exceeds the slot's index, so whole slot counts map exactly). Each layer's KV cache lives
on its layer's device.

Slots are dealt in proportion to each node's memory budget (largest remainder, at least one per node); every node
must then hold its peak within its budget. Per node (tools/bench_cluster_memory.py checks each against the peak
RSS of loopback workers and the host, results/cluster_memory.json):

    worker, running   baseline (the estimator's runtime + libraries + WORKER_EXTRA_MIB: llama.cpp's RPC server)
                      + its layers' weights (as stored: the RPC server never repacks) + their KV cache (cleared,
                      so touched, at load) + the compute scratch a full batch touches (:func:`touched_compute`)
    worker, loading   baseline + the weights already set + twice the tensor being set (the server receives each
                      tensor whole into a message buffer, then copies it in); the output layer arrives first, so
                      the node holding it peaks here when the output matrix is large (tied embeddings)
    host              baseline + vocabulary + the token embeddings (+ its own layers) + one tensor's copy while
                      it is sent + HOST_LOAD_*: the loader's own transient; the rest of the file is mapped and read
                      once while it is sent (MAP_POPULATE): in the peak RSS, but reclaimable (``cold_mib``)

llama.cpp reserves more than a batch touches (a compute buffer for n_ubatch outputs: on the node with the output
layer, n_ubatch x n_vocab floats it never writes for a generation): virtual, not resident, so not budgeted.
"""


from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from edge_run.core.errors import InsufficientMemoryError, UsageError
from edge_run.runtime.cluster.spec import ClusterSpec, Node
from edge_run.runtime.estimate.gguf import (
    LIBRARY_FILE_MIB,
    VOCAB_BYTES_PER_TOKEN,
    ModelShape,
    host_simd,
    kv_bytes,
    runtime_anon_mib,
)

MIB = float(1 << 20)
# Fitted by tools/bench_cluster_memory.py (x86-64, CPython 3.11; SmolLM2 and Gemma3 at Q8_0 and Q4_K_M over 2 and 3
# loopback workers, ctx 2048 / 4096): an idle `edge-run worker` holds 50.7 MiB, 6.7 above the estimator's runtime
# + libraries (llama.cpp's RPC library, the server's threads)
WORKER_EXTRA_MIB = 6.7
# what a worker's run adds beside the activations touched_compute counts (the CPU backend's work buffer, the
# graph messages, the compute thread): 4.0-6.1 MiB measured
WORKER_COMPUTE_FIXED_MIB = 5.5
# the host's load, beside the tensor copy it sends: the loader's transient (18.5-19.3 MiB SmolLM2, 27.9-28.8 MiB
# Gemma3: 16.7 MiB + 46.5 B per vocabulary token)
HOST_LOAD_FIXED_MIB = 16.7
HOST_LOAD_VOCAB_BYTES = 46.5
GGUF_VOCAB_BYTES = 30.0  # a GGUF's metadata per vocabulary token (strings, scores, types): 25-36 B measured
LAYER_TENSOR = re.compile(r"^blk\.(\d+)\.")
OUTPUT_TENSORS = ("output.weight", "output_norm.weight", "output_norm.bias", "output.bias")


@dataclass(frozen=True)
class NodeShare:
    node: Node
    first: int  # first slot (layer index; n_layer = the output layer)
    count: int  # slots held
    weight_mib: float  # held in memory (the host: the token embeddings too)
    kv_mib: float
    baseline_mib: float  # the process before any tensor: runtime, libraries (the host: + vocabulary)
    compute_mib: float  # scratch a full batch touches
    load_mib: float  # the whole node at its load's peak (cold pages aside)
    cold_mib: float = 0.0  # the host: file pages read once while sent (reclaimable)

    @property
    def other_mib(self) -> float:
        return self.baseline_mib + self.compute_mib

    @property
    def run_mib(self) -> float:
        return self.weight_mib + self.kv_mib + self.other_mib

    @property
    def need_mib(self) -> float:
        """What the node must hold at its peak (budgeted)."""
        return max(self.run_mib, self.load_mib)

    @property
    def peak_rss_mib(self) -> float:
        """Its predicted peak RSS: the need plus the reclaimable file pages."""
        return self.need_mib + self.cold_mib

    def to_dict(self, n_layer: int) -> dict[str, Any]:
        last = self.first + self.count - 1
        return {"node": self.node.label, "profile": self.node.name, "endpoint": self.node.endpoint,
                "layers": self.count - (1 if self.count and last == n_layer else 0),
                "output_layer": bool(self.count and last == n_layer),
                "slots": [self.first, last] if self.count else [], "weight_mib": round(self.weight_mib, 1),
                "kv_mib": round(self.kv_mib, 1), "other_mib": round(self.other_mib, 1),
                "baseline_mib": round(self.baseline_mib, 1), "compute_mib": round(self.compute_mib, 1),
                "load_mib": round(self.load_mib, 1), "cold_mib": round(self.cold_mib, 1),
                "need_mib": round(self.need_mib, 1), "peak_rss_mib": round(self.peak_rss_mib, 1),
                "budget_mib": round(self.node.memory_mb, 1)}


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


def slot_tensors(shape: ModelShape) -> list[list[int]]:
    """Each slot's tensor sizes in llama.cpp's load order (the output layer's tied copy of the embeddings too)."""
    per: list[list[int]] = [[] for _ in range(shape.n_layer + 1)]
    has_output = any(t.name == "output.weight" for t in shape.tensors)
    for t in shape.tensors:
        m = LAYER_TENSOR.match(t.name)
        if m and int(m.group(1)) < shape.n_layer:
            per[int(m.group(1))].append(t.n_bytes)
        elif t.name in OUTPUT_TENSORS or (t.name == "token_embd.weight" and not has_output):
            per[shape.n_layer].append(t.n_bytes)
    return per


def load_peak_bytes(tensors: list[list[int]], held: range, n_layer: int) -> float:
    """The most a worker holds while its tensors arrive: the ones already set + twice the one being set. llama.cpp
    creates (and loads) the output layer's tensors before the repeating layers'."""
    order = ([n_layer] if n_layer in held else []) + [i for i in held if i < n_layer]
    done, peak = 0.0, 0.0
    for slot in order:
        for n in tensors[slot]:
            peak = max(peak, done + 2 * n)
            done += n
    return peak


def touched_compute(shape: ModelShape, n_ubatch: int) -> float:
    """Scratch a batch of ``n_ubatch`` tokens touches on a node running layers: the residual stream and the
    normed input (2 x n_embd), the feed-forward's gate, up and product (3 x n_ff) and the attention's queries, as
    f32 per token (the graph allocator reuses the rest). Measured touched pages: 12.4 + 4.7 MiB of SmolLM2's, 16.5
    + 6.1 of Gemma3's at 512 tokens; llama.cpp reserves more (compute_bytes), most of it never written."""
    return 4.0 * n_ubatch * (2 * shape.n_embd + 3 * shape.n_ff + shape.n_head * shape.head_dim_k)


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


def _simd(node: Node) -> tuple[str, ...]:
    return node.profile.simd if node.profile is not None else host_simd()


def plan_cluster(spec: ClusterSpec, shape: ModelShape, n_ctx: int, cache_type: str = "f16",
                 counts: list[int] | None = None, n_batch: int = 512, n_outputs: int = 1,
                 file_bytes: float | None = None) -> ClusterPlan:
    """The split of ``shape`` over ``spec``'s nodes (``counts`` slots each, default dealt by budget), compute
    scratch for ``n_batch``-token batches (what the host loads with: LoadOptions.n_batch is llama.cpp's n_batch and
    n_ubatch) with ``n_outputs`` rows of logits each (eval: every token's); ``file_bytes``: the GGUF's size (else
    estimated). InsufficientMemoryError naming the first node whose need does not fit its budget."""
    per_slot, host_bytes = slot_weights(shape)
    tensors = slot_tensors(shape)
    slots = shape.n_layer + 1
    nodes = [n for n in spec.nodes if n.takes_layers]
    counts = counts if counts is not None else deal([n.memory_mb for n in nodes], slots)
    kv_layer = kv_bytes(shape, n_ctx, cache_type) / max(shape.n_layer, 1)
    n_ub = min(n_ctx, n_batch)
    activations = touched_compute(shape, n_ub)
    logits = 4.0 * shape.n_vocab * min(n_outputs, n_ub)
    held_by = {node.endpoint: range(first, first + count)
               for node, count, first in zip(nodes, counts, [sum(counts[:i]) for i in range(len(counts))], strict=True)}
    sent = max((n for node in nodes if not node.is_host for i in held_by[node.endpoint] for n in tensors[i]), default=0)
    file_total = file_bytes if file_bytes is not None else shape.weight_bytes + GGUF_VOCAB_BYTES * shape.n_vocab
    shares: list[NodeShare] = []
    for node in spec.nodes:
        held = held_by.get(node.endpoint, range(0))
        weights = sum(per_slot[i] for i in held)
        kv = kv_layer * sum(1 for i in held if i < shape.n_layer)
        runtime = runtime_anon_mib(_simd(node)) * MIB + LIBRARY_FILE_MIB * MIB
        scratch = (activations if held else 0.0) + (logits if shape.n_layer in held else 0.0)
        if node.is_host:
            weights += host_bytes
            base = runtime + shape.n_vocab * VOCAB_BYTES_PER_TOKEN
            compute = (activations if held else 0.0) + 4.0 * n_ub * shape.n_embd + logits  # embeddings; logits back
            load = (base + weights + sent + HOST_LOAD_FIXED_MIB * MIB + HOST_LOAD_VOCAB_BYTES * shape.n_vocab
                    if sent else 0.0)
            cold = max(0.0, file_total - weights) if sent else 0.0
        else:
            base = runtime + WORKER_EXTRA_MIB * MIB
            compute = scratch + WORKER_COMPUTE_FIXED_MIB * MIB
            load, cold = base + load_peak_bytes(tensors, held, shape.n_layer), 0.0
        shares.append(NodeShare(node, held.start if held else 0, len(held), weights / MIB, kv / MIB, base / MIB,
                                compute / MIB, load / MIB, cold / MIB))
    plan = ClusterPlan(tuple(shares), shape.n_layer, n_ctx)
    for s in plan.shares:
        if s.node.memory_mb and s.need_mib > s.node.memory_mb:
            raise InsufficientMemoryError(
                f"{s.node.label} would need {s.need_mib:.0f} MiB for its {s.count} layers at --ctx {n_ctx} "
                f"(budget {s.node.memory_mb:.0f} MiB)", "add a node, lower --ctx, or pick a smaller quant")
    return plan
