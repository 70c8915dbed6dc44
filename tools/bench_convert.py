"""Benchmark conversion: wall time and peak RSS of `edge-run convert` (HF -> F16 -> Q4_K_M) per zoo model.

Peak RSS is sampled every 20 ms over the whole process tree (the converter and its quantizer
child), and reported next to the checkpoint's size: streaming conversion must stay well below it.

    python -m tools.bench_convert [--models smollm2-135m gemma3-270m] [--out results/bench_convert.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from tools.zoo import zoo_checkpoint


def tree_rss(proc: psutil.Process) -> tuple[int, int]:
    """(total RSS of the tree, largest single-process RSS) in bytes."""
    procs = [proc]
    try:
        procs += proc.children(recursive=True)
    except psutil.NoSuchProcess:
        pass
    sizes = []
    for p in procs:
        try:
            sizes.append(p.memory_info().rss)
        except psutil.NoSuchProcess:
            continue
    return sum(sizes), max(sizes, default=0)


def measure(cmd: list[str]) -> dict[str, float]:
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ps = psutil.Process(child.pid)
    peak_total = peak_single = 0
    while child.poll() is None:
        total, single = tree_rss(ps)
        peak_total, peak_single = max(peak_total, total), max(peak_single, single)
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    if child.returncode != 0:
        raise SystemExit(f"convert failed: {child.stderr.read().decode()[-500:] if child.stderr else ''}")
    return {"wall_s": round(wall, 2), "peak_rss_tree_mib": round(peak_total / 2**20, 1),
            "peak_rss_process_mib": round(peak_single / 2**20, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    ap.add_argument("--quant", default="q4_k_m")
    ap.add_argument("--out", type=Path, default=Path("results/bench_convert.json"))
    args = ap.parse_args()
    rows = []
    for model in args.models:
        ckpt = zoo_checkpoint(model)
        size = sum(f.stat().st_size for f in ckpt.glob("*.safetensors"))
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "edge_run.cli.main", "convert", str(ckpt), "--quant", args.quant,
                   "--out", tmp, "--json"]
            stats = measure(cmd)
            out_size = sum(f.stat().st_size for f in Path(tmp).glob("*.gguf"))
        row = {"model": model, "quant": args.quant.upper(), "checkpoint_mib": round(size / 2**20, 1),
               "artifact_mib": round(out_size / 2**20, 1), **stats,
               "peak_rss_over_checkpoint": round(stats["peak_rss_tree_mib"] / (size / 2**20), 3)}
        rows.append(row)
        print(json.dumps(row))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": platform.machine(), "cpus": psutil.cpu_count(logical=False),
                                    "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
