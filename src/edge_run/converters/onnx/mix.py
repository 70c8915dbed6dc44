"""Sensitivity-driven bit mix under a size budget: which stored matrices (units) of a budget scheme get 8
bits instead of 4.

    extra[u] = bytes(u at 8 bits, the scheme's wide layout) - bytes(u at 4 bits)
    gain[u]  = sensitivity[u] / extra[u]         KL from 4 bits, per byte it costs to avoid
    units in order of gain (ties: by key) go to 8 bits while
        Σ bytes <= budget_bpw / 8 * Σ elements of every unit

Greedy knapsack on measured, per-unit sensitivities (assumed additive); deterministic for given inputs.
"""

from __future__ import annotations

from collections.abc import Mapping

from edge_run.converters.onnx.quantize import PackedShape, QuantConfig


def packed_bytes(quant: QuantConfig, bits: int, n: int, k: int) -> int:
    """Bytes of B + scales (f32) + zero points of an [n, k] matrix at ``bits``."""
    block, symmetric = quant.layout(bits, k)
    s = PackedShape(n, k, bits, block)
    return n * s.k_blocks * (s.blob + 4) + (0 if symmetric else n * s.zp_cols)


def plan_mix(quant: QuantConfig, shapes: Mapping[str, tuple[int, int]], sensitivity: Mapping[str, float],
             budget_bpw: float) -> dict[str, int]:
    """Unit key -> bits (4 or 8) for every unit in ``shapes``."""
    narrow = {u: packed_bytes(quant, 4, n, k) for u, (n, k) in shapes.items()}
    extra = {u: packed_bytes(quant, 8, n, k) - narrow[u] for u, (n, k) in shapes.items()}
    budget = budget_bpw / 8 * sum(n * k for n, k in shapes.values())
    used = sum(narrow.values())
    plan = dict.fromkeys(shapes, 4)
    for u in sorted(shapes, key=lambda u: (-sensitivity.get(u, 0.0) / max(extra[u], 1), u)):
        if sensitivity.get(u, 0.0) > 0 and used + extra[u] <= budget:
            plan[u] = 8
            used += extra[u]
    return plan
