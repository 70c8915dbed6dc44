"""Speed at real sizes: `edge-run bench` vs llama-bench on random-weight checkpoints of real shapes (tools/shapes.py;
SmolLM2-1.7B and Llama-3.1-8B by default), interleaved, and the profile speed model (tok/s ~ bandwidth / bytes read
per token, src/edge_run/runtime/estimate/speed.py) against both measurements on this machine.

    python -m tools.bench_size [--shapes smollm2-1.7b llama3.1-8b] [--quant Q4_K_M] [--rounds 5] [--threads N]
                               [--repeats 5] [--out results/bench_size.json] [--keep-checkpoints]

Each shape's GGUF is converted once by `edge-run convert` into ``<zoo>/shapes-gguf/<name>/`` (the full random-weight
checkpoint is built first and, unless --keep-checkpoints, removed after: 15 GB of BF16 at 8B). The bench rows are
tools/speed_rows.py's: pp512 / tg128, each side a separate process, alternating A B / B A per round, the ratio
edge-run / llama-bench as the median of each round's pair (goal >= 0.97). llama-bench is built from the source
llama-cpp-python vendors (tools/llama_tools.py).

The speed model is checked on a profile of this machine (`edge-run profiles detect`, with a longer bandwidth probe):
its decode tokens/s at tg128's mean position (64 tokens in the cache) against each tool's measured tg128, the error
= predicted / measured - 1; beside it the bandwidth the measurement implies (bytes per token x tokens/s) as a share
of the probe's. Timings of a shared machine vary with its load: the load average before and after is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from edge_run.core.fsutil import atomic_write_text, cache_dir

TG_POSITION = 64  # tg128 from an empty cache: positions 0..127
PROBE_SECONDS, PROBE_MIB = 3.0, 256


def artifact(name: str, quant: str, keep_checkpoint: bool) -> Path:
    """``<name>.<QUANT>.gguf`` of shape ``name``, converted once (cached)."""
    from tools.shapes import build, folder

    out = cache_dir() / "zoo" / "shapes-gguf" / name
    gguf = out / f"{name}.{quant.upper()}.gguf"
    if gguf.is_file():
        return gguf
    existed = folder(name).is_dir()
    ckpt = build(name)
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "edge_run.cli.main", "convert", str(ckpt), "--out", str(out), "-q",
                    quant.lower(), "--name", name], check=True)
    if not (keep_checkpoint or existed):
        shutil.rmtree(ckpt, ignore_errors=True)
    return gguf


def this_machine() -> Any:
    from edge_run.profiles.devices import detect, measure_bandwidth_gbs

    return replace(detect(), memory_bandwidth_gbs=measure_bandwidth_gbs(PROBE_SECONDS, PROBE_MIB))


def speed_check(gguf: Path, profile: Any, medians: dict[str, float]) -> dict[str, Any]:
    """The model's decode tokens/s for ``gguf`` on ``profile`` against the measured medians (``side`` -> tok/s)."""
    from edge_run.runtime.estimate.gguf import shape_from_gguf
    from edge_run.runtime.estimate.speed import BW_EFFICIENCY, decode_speed

    est = decode_speed(shape_from_gguf(gguf), profile, position=TG_POSITION)
    out: dict[str, Any] = {"predicted_tps": round(est.tokens_per_s, 2), "mib_per_token": round(est.bytes_per_token
                                                                                              / 2**20, 1),
                           "bound": est.bound, "model_bandwidth_share": BW_EFFICIENCY}
    for side, tps in medians.items():
        out[side] = {"measured_tps": tps, "error_pct": round(100 * (est.tokens_per_s / tps - 1), 1),
                     "bandwidth_share": round(est.bytes_per_token * tps / (profile.memory_bandwidth_gbs * 1e9), 3)}
    return out


def main(argv: list[str] | None = None) -> int:
    from tools.llama_tools import llama_tools
    from tools.shapes import SHAPES
    from tools.speed_rows import bench_row, compile_sources

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["smollm2-1.7b", "llama3.1-8b"], choices=list(SHAPES))
    ap.add_argument("--quant", default="Q4_K_M")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5, help="repetitions inside each process (llama-bench -r)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", type=Path, default=Path("results/bench_size.json"))
    ap.add_argument("--keep-checkpoints", action="store_true")
    args = ap.parse_args(argv)
    tools = llama_tools()
    compile_sources()
    ggufs = {name: artifact(name, args.quant, args.keep_checkpoints) for name in args.shapes}
    load_before = os.getloadavg()
    profile = this_machine()
    rows = []
    for name, gguf in ggufs.items():
        t0 = time.perf_counter()
        row = bench_row(tools, gguf, args.threads, args.rounds, f"{name} {args.quant}", args.repeats).to_dict()
        medians = {"edge_run": row["edge_run"]["decode_tps"], "llama_bench": row["reference_median"]["decode_tps"]}
        rows.append({"shape": name, "source": SHAPES[name].source, "file": gguf.name,
                     "file_mib": round(gguf.stat().st_size / 2**20, 1), **row,
                     "speed_model": speed_check(gguf, profile, medians),
                     "seconds": round(time.perf_counter() - t0, 1)})
    doc = {"threads": args.threads, "rounds": args.rounds, "repeats_per_process": args.repeats,
           "load_average_before": [round(x, 2) for x in load_before],
           "load_average_after": [round(x, 2) for x in os.getloadavg()],
           "profile": {"core_type": profile.core_type, "physical_cores": profile.physical_cores,
                       "simd": list(profile.simd), "memory_bandwidth_gbs": profile.memory_bandwidth_gbs,
                       "probe": f"{PROBE_MIB} MiB copy, best of {PROBE_SECONDS:g} s"},
           "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(doc, indent=2) + "\n", force=True)
    print(render(doc))
    return 0


def render(doc: dict[str, Any]) -> str:
    lines = [f"{'shape':14} {'pp512 x':>8} {'tg128 x':>8} {'edge tg':>8} {'llama tg':>8} {'model tg':>8} "
             f"{'err edge':>8} {'err llama':>9} {'bw share':>8}"]
    for r in doc["rows"]:
        m, ratio = r["speed_model"], r["ratio"]
        lines.append(f"{r['shape']:14} {ratio.get('prefill_tps', 0):>8.3f} {ratio.get('decode_tps', 0):>8.3f} "
                     f"{m['edge_run']['measured_tps']:>8.2f} {m['llama_bench']['measured_tps']:>8.2f} "
                     f"{m['predicted_tps']:>8.2f} {m['edge_run']['error_pct']:>+7.1f}% "
                     f"{m['llama_bench']['error_pct']:>+8.1f}% {m['llama_bench']['bandwidth_share']:>8.2f}")
    p = doc["profile"]
    lines.append(f"probe bandwidth {p['memory_bandwidth_gbs']} GB/s ({p['probe']}), {doc['threads']} threads, "
                 f"load average {doc['load_average_before'][0]} -> {doc['load_average_after'][0]}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
