"""`edge-run run`'s peak RSS, load time and first-token time in both load modes, against the memory estimate.

For every artifact x context x load mode (``--mmap on`` / ``off``), a fresh ``edge-run run ARTIFACT --json -n 1``
evaluates a prompt of about ``--prompt-tokens`` tokens (the built-in WikiText-2 sample) and reports its peak RSS
(ru_maxrss), load time and prefill speed; the first token comes out of the prefill, so first-token time = prompt
tokens / prefill tok/s. The estimate is made for the same context, prompt and mode: its peak RSS (memory needed
plus, with mmap, the repacked tensors' cold file pages) is compared with the measured one (goal: within 5%).
Each artifact is read once before its runs, so every load finds the file in the page cache (warm loads).
The machine's load average is recorded beside every row: the timings of a shared machine vary with it.

    python -m tools.measure_load ARTIFACT.gguf ... [--ctx 2048 8192] [--modes on off] [--out results/load_modes.json]

``--convert CHECKPOINT --quants q4_k_m`` measures `edge-run convert` instead (wall time and peak RSS from GNU
time: the largest process of the tree, the converter and llama.cpp's quantizer running in it); ``--time-log LOG``
records a conversion already run under ``/usr/bin/time -v`` from its log. Rows go to the file's ``convert`` list.
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


def parse_time_log(text: str) -> dict[str, Any]:
    """Wall seconds, peak RSS and the command of a ``/usr/bin/time -v`` report."""
    fields = dict(line.strip().rsplit(": ", 1) for line in text.splitlines() if line.startswith("\t") and ": " in line)
    wall = [float(x) for x in fields["Elapsed (wall clock) time (h:mm:ss or m:ss)"].split(":")]
    seconds = sum(x * 60 ** i for i, x in enumerate(reversed(wall)))
    return {"command": fields["Command being timed"].strip('"'), "wall_seconds": round(seconds, 1),
            "peak_rss_mib": round(int(fields["Maximum resident set size (kbytes)"]) / 1024, 1),
            "exit_status": int(fields["Exit status"])}


def convert_once(checkpoint: Path, quants: str, out: Path, name: str) -> dict[str, Any]:
    load_avg = os.getloadavg()[0]
    cmd = ["/usr/bin/time", "-v", "nice", "-n", "10", sys.executable, "-m", "edge_run.cli.main", "convert",
           str(checkpoint), "--out", str(out), "-q", quants, "--name", name]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    row = {**parse_time_log(done.stderr), "load_average_1m": round(load_avg, 2)}
    if done.returncode != 0:
        raise SystemExit(f"convert failed ({done.returncode}): {done.stderr[-1500:]}")
    return row


def _convert_row(run: dict[str, Any], name: str, quants: str, out: Path) -> dict[str, Any]:
    files = {q: out / f"{name}.{q.upper()}.gguf" for q in quants.split(",")}
    sizes = {q.upper(): round(f.stat().st_size / 2**20, 1) for q, f in files.items() if f.is_file()}
    return {"checkpoint": name, "quants": quants.upper(), **run, **({"file_mib": sizes} if sizes else {})}


def _save(out: Path, rows: list[dict[str, Any]], converts: list[dict[str, Any]]) -> None:
    doc: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    if rows:  # rows of other artifacts measured before are kept; these replace their own
        mine = {(r["artifact"], r["ctx"], r["mmap"]) for r in rows}
        rows = [r for r in doc.get("rows", []) if (r["artifact"], r["ctx"], r["mmap"]) not in mine] + rows
    if converts:
        mine_c = {(r["checkpoint"], r["quants"]) for r in converts}
        converts = [r for r in doc.get("convert", []) if (r["checkpoint"], r["quants"]) not in mine_c] + converts
    doc.update(simd=list(host_simd()), cpu_count=os.cpu_count(), rows=rows or doc.get("rows", []),
               convert=converts or doc.get("convert", []))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifacts", nargs="*", type=Path)
    ap.add_argument("--ctx", nargs="+", type=int, default=[2048, 8192])
    ap.add_argument("--modes", nargs="+", default=["on", "off"], choices=["on", "off"])
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--convert", type=Path, metavar="CHECKPOINT", help="measure `edge-run convert` of it")
    ap.add_argument("--quants", default="q4_k_m", help="--convert / --time-log: the quant list converted")
    ap.add_argument("--convert-out", type=Path, help="--convert / --time-log: the output folder")
    ap.add_argument("--name", help="--convert / --time-log: the artifact base name (default: the checkpoint's)")
    ap.add_argument("--time-log", type=Path, help="record a conversion run under /usr/bin/time -v from its log")
    ap.add_argument("--load-average", type=float, help="--time-log: the 1-minute load average when it started")
    ap.add_argument("--out", type=Path, default=Path("results/load_modes.json"))
    args = ap.parse_args()
    converts = []
    if args.convert or args.time_log:
        name = args.name or (args.convert.resolve().name if args.convert else "")
        out = args.convert_out or Path(tempfile.mkdtemp())
        run = {**parse_time_log(args.time_log.read_text()), "load_average_1m": args.load_average} if args.time_log \
            else convert_once(args.convert, args.quants, out, name)
        converts.append(_convert_row(run, name, args.quants, out))
        print(json.dumps(converts[-1]))
    rows = measure(args.artifacts, args.ctx, args.modes, args.prompt_tokens, args.threads) if args.artifacts else []
    if rows:
        print(f"{'artifact':28} {'ctx':>5} {'mmap':>4} {'est MiB':>8} {'meas MiB':>9} {'err %':>6} {'load s':>7} "
              f"{'1st tok s':>9}")
    for r in rows:
        print(f"{r['artifact']:28} {r['ctx']:>5} {r['mmap']:>4} {r['estimate_rss_mib']:>8} "
              f"{r['measured_peak_rss_mib']:>9} {r['error_pct']:>6} {r['load_seconds']:>7} "
              f"{r['first_token_seconds']:>9}")
    _save(args.out, rows, converts)


if __name__ == "__main__":
    main()
