"""Decode speed estimate (tokens/s) of a pairing on a device profile, for ranking ties and --min-tps.

Generating one token reads every weight matrix once plus the filled part of the KV cache, and does
about 2 multiply-adds per weight. On CPUs the memory side usually binds; small in-order cores
(Cortex-A53) can be compute-bound instead. So:

    t_token = max(bytes_read / (bandwidth * BW_EFFICIENCY),
                  2 * matmul_weights / (cores * clock * int8_macs_per_cycle * 2 * COMPUTE_EFFICIENCY))
              + PER_TOKEN_OVERHEAD_S

An estimate to order candidates and screen --min-tps, not a benchmark: `edge-run bench` measures.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_run.profiles.devices import DeviceProfile
from edge_run.runtime.estimate.gguf import CACHE_BYTES, ModelShape

# Fraction of the profile's sustained (copy-probe) bandwidth that llama.cpp's decode streams weights at.
# Basis: llama.cpp issue #34 (slaren, 13900K + DDR5-6400): 7B Q4_0 (3.56 GiB) at 18.3 tok/s = 70 GB/s,
# against ~80 GB/s that such a system sustains in copy benchmarks.
BW_EFFICIENCY = 0.85
# Fraction of the int8 multiply-add peak llama.cpp's quantized mat-vec kernels reach (dequantize,
# scale, horizontal sums). An assumption, kept low on purpose: it only binds for slow in-order cores.
COMPUTE_EFFICIENCY = 0.25
# Per-token work outside the matrices (graph build, sampling over the vocabulary, Python).
PER_TOKEN_OVERHEAD_S = 0.0008


@dataclass(frozen=True)
class CoreType:
    clock_ghz: float
    int8_macs_per_cycle: int  # per core, with the SIMD the profile names
    source: str


# core_type (as profiles spell it) -> clock and int8 multiply-add throughput per core.
# Clocks are the vendors' published figures (sources per row). MACs/cycle are approximate: the number of
# 128-bit (x86: 256-bit) SIMD pipes times the int8 lanes one multiply-accumulate instruction handles
# (16 with Armv8.2 SDOT / x86 VPMADDUBSW-style kernels, 8 for the widening NEON multiply-adds older Arm
# cores must use). Only their ratio to the memory bound matters here.
CORE_TYPES: dict[str, CoreType] = {
    # Pi Zero 2 W: A53 @ 1.0 GHz; Pi 3B: A53 @ 1.2 GHz (Raspberry Pi product briefs); narrow in-order NEON.
    "cortex-a53": CoreType(1.1, 8, "Raspberry Pi Zero 2 W and 3B product briefs"),
    # Pi 4: A72 @ 1.5 GHz (1.8 GHz on later boards); two NEON pipes, no dot product.
    "cortex-a72": CoreType(1.5, 16, "Raspberry Pi 4 Model B product brief"),
    # Pi 5: A76 @ 2.4 GHz; two NEON pipes with SDOT.
    "cortex-a76": CoreType(2.4, 32, "Raspberry Pi 5 product brief"),
    # Jetson Orin Nano 8 GB: 6x A78AE @ 1.5 GHz; two NEON pipes with SDOT.
    "cortex-a78ae": CoreType(1.5, 32, "NVIDIA Jetson Orin Nano series data sheet"),
    # M1 performance cores: 3.2 GHz, four NEON pipes with SDOT.
    "apple-m1": CoreType(3.2, 64, "Apple M1 press materials / AnandTech M1 review (2020)"),
    # AVX2 laptop cores: ~3 GHz all-core, two 256-bit integer multiply-add ports.
    "x86-64-v3": CoreType(3.0, 64, "Intel 64 and IA-32 Architectures Optimization Reference Manual"),
}


@dataclass(frozen=True)
class SpeedEstimate:
    tokens_per_s: float
    bytes_per_token: float
    bound: str  # "memory" | "compute" | "memory (no CPU data)"

    def to_dict(self) -> dict[str, float | str]:
        return {"tokens_per_s": round(self.tokens_per_s, 1), "mib_per_token": round(self.bytes_per_token / 2**20, 2),
                "bound": self.bound}


def _matmul_bytes(shape: ModelShape) -> tuple[float, float]:
    """(bytes, weights) of the tensors a decode step multiplies by: every 2-D tensor except the token
    embedding, which is gathered one row at a time unless it doubles as the output (tied)."""
    tied = not any(t.name == "output.weight" for t in shape.tensors)
    n_bytes = n_weights = 0.0
    for t in shape.tensors:
        if t.ne1 <= 1 or (t.name == "token_embd.weight" and not tied):
            continue
        n_bytes += t.n_bytes
        n_weights += t.ne0 * t.ne1
    return n_bytes, n_weights


def kv_read_bytes(shape: ModelShape, position: int, cache_type: str) -> float:
    per_cell = shape.n_head_kv * (shape.head_dim_k + shape.head_dim_v) * CACHE_BYTES[cache_type]
    n_full = shape.n_layer - shape.n_swa_layers
    swa = min(position, shape.n_swa) if shape.n_swa else position
    return per_cell * (n_full * position + shape.n_swa_layers * swa)


def decode_speed(shape: ModelShape, profile: DeviceProfile, position: int = 512,
                 cache_type: str = "f16") -> SpeedEstimate:
    """Tokens/s of generating at ``position`` (tokens already in the cache)."""
    weight_bytes, n_weights = _matmul_bytes(shape)
    read = weight_bytes + kv_read_bytes(shape, position, cache_type)
    t_mem = read / (profile.memory_bandwidth_gbs * 1e9 * BW_EFFICIENCY)
    core = CORE_TYPES.get(profile.core_type)
    if core is None:
        return SpeedEstimate(1.0 / (t_mem + PER_TOKEN_OVERHEAD_S), read, "memory (no CPU data)")
    macs_per_s = profile.physical_cores * core.clock_ghz * 1e9 * core.int8_macs_per_cycle * COMPUTE_EFFICIENCY
    attn_macs = 2 * shape.n_layer * shape.n_head * shape.head_dim_k * position
    t_cpu = (n_weights + attn_macs) / macs_per_s
    bound = "memory" if t_mem >= t_cpu else "compute"
    return SpeedEstimate(1.0 / (max(t_mem, t_cpu) + PER_TOKEN_OVERHEAD_S), read, bound)
