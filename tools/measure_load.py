"""`edge-run run`'s peak RSS, load time and first-token time in both load modes, against the memory estimate.

For every artifact x context x load mode (``--mmap on`` / ``off``), a fresh ``edge-run run ARTIFACT --json -n 1``
evaluates a prompt of about ``--prompt-tokens`` tokens (the built-in WikiText-2 sample) and reports its peak RSS
(ru_maxrss), load time and prefill speed; the first token comes out of the prefill, so first-token time = prompt
tokens / prefill tok/s. The estimate is made for the same context, prompt and mode: its peak RSS (memory needed
plus, with mmap, the repacked tensors' cold file pages) is compared with the measured one (goal: within 5%).
Each artifact is read once before its runs, so every load finds the file in the page cache (warm loads).
The machine's load average is recorded beside every row: the timings of a shared machine vary with it.

    python -m tools.measure_load ARTIFACT.gguf ... [--ctx 2048 8192] [--modes on off] [--out results/load_modes.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from edge_run.runtime.estimate.gguf import estimate_memory, host_simd, shape_from_gguf
from edge_run.runtime.estimate.load_mode import repacked_share, use_mmap

GOAL_REL = 0.05
CHARS_PER_TOKEN = 2.4  # tools/shapes.py's 512-token tokenizer on WikiText-2


def prompt_file(dest: Path, n_tokens: int) -> Path:
    from edge_run.runtime.eval.corpora import builtin_corpus_path

    text = builtin_corpus_path("wikitext-2-raw-test").read_text(encoding="utf-8")
    dest.write_text(text[2000: 2000 + int(n_tokens * CHARS_PER_TOKEN)], encoding="utf-8")
    return dest


def run_once(path: Path, ctx: int, mode: str, prompt: Path, threads: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "edge_run.cli.main", "run", str(path), "--prompt-file", str(prompt), "-n", "1",
           "--ctx", str(ctx), "--mmap", mode, "--threads", str(threads), "--json"]
    out = subprocess.run(["nice", "-n", "10", *cmd], capture_output=True, text=True, check=True)
    data: dict[str, Any] = json.loads(out.stdout[out.stdout.index("{"):])
    return data


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def measure(artifacts: list[Path], contexts: list[int], modes: list[str], n_prompt: int,
            threads: int) -> list[dict[str, Any]]:
    simd = host_simd()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        prompt = prompt_file(Path(tmp) / "prompt.txt", n_prompt)
        for path in artifacts:
            shape = shape_from_gguf(path)
            warm(path)
            for ctx in contexts:
                for mode in modes:
                    load_avg = os.getloadavg()[0]
                    got = run_once(path, ctx, mode, prompt, threads)
                    est = estimate_memory(shape, ctx, simd, n_prompt=got["prompt_tokens"], mmap=mode)
                    peak = got["peak_rss_mib"]
                    err = est.rss_mib - peak
                    rows.append({
                        "artifact": path.name, "file_mib": round(path.stat().st_size / 2**20, 1), "ctx": ctx,
                        "mmap": mode, "auto_would": "on" if use_mmap(shape, simd) else "off",
                        "repacked_share": round(repacked_share(shape, simd), 3),
                        "prompt_tokens": got["prompt_tokens"], "measured_peak_rss_mib": peak,
                        "estimate_rss_mib": round(est.rss_mib, 1), "estimate_needed_mib": round(est.total_mib, 1),
                        "estimate_cold_mib": round(est.weights_cold_mib, 1), "error_mib": round(err, 1),
                        "error_pct": round(100 * err / peak, 2), "within_goal": abs(err) <= GOAL_REL * peak,
                        "load_seconds": got["load_seconds"],
                        "first_token_seconds": round(got["prompt_tokens"] / got["prefill_tokens_per_s"], 3),
                        "load_average_1m": round(load_avg, 2), "threads": threads})
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifacts", nargs="+", type=Path)
    ap.add_argument("--ctx", nargs="+", type=int, default=[2048, 8192])
    ap.add_argument("--modes", nargs="+", default=["on", "off"], choices=["on", "off"])
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("results/load_modes.json"))
    args = ap.parse_args()
    rows = measure(args.artifacts, args.ctx, args.modes, args.prompt_tokens, args.threads)
    print(f"{'artifact':28} {'ctx':>5} {'mmap':>4} {'est MiB':>8} {'meas MiB':>9} {'err %':>6} {'load s':>7} "
          f"{'1st tok s':>9}")
    for r in rows:
        print(f"{r['artifact']:28} {r['ctx']:>5} {r['mmap']:>4} {r['estimate_rss_mib']:>8} "
              f"{r['measured_peak_rss_mib']:>9} {r['error_pct']:>6} {r['load_seconds']:>7} "
              f"{r['first_token_seconds']:>9}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.exists():  # rows of other artifacts measured before are kept; these replace their own
        old = json.loads(args.out.read_text())["rows"]
        mine = {(r["artifact"], r["ctx"], r["mmap"]) for r in rows}
        rows = [r for r in old if (r["artifact"], r["ctx"], r["mmap"]) not in mine] + rows
    args.out.write_text(json.dumps({"simd": list(host_simd()), "cpu_count": os.cpu_count(), "rows": rows},
                                   indent=2) + "\n")


if __name__ == "__main__":
    main()
