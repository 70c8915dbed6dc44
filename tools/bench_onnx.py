"""ONNX int4 vs GGUF Q4_0 / Q4_K_M of the same checkpoint: speed side by side, and quality on WikiText-2.

    checkpoint ──edge-run convert --format gguf──> Q4_0, Q4_K_M
               └─edge-run convert --format onnx──> int4 b32/b128 x sym/asym, fp32 (quality reference)

Speed: decode and prefill tokens/s through each backend (same threads, same prompt), repeated in
interleaved rounds so machine noise hits every artifact alike; medians and ratios to GGUF Q4_0.
Quality: perplexity and bits per byte with edge-run's eval library (llama.cpp's chunking: first
``--chunks`` chunks of ``--ctx`` tokens, second half of each scored).

    python -m tools.bench_onnx [--model smollm2-135m] [--chunks 40] [--out results/bench_onnx.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from edge_run.cli.main import main as edge_run
from edge_run.runtime.artifacts.formats import open_backend
from edge_run.runtime.backends import GenerationParams, LoadOptions
from edge_run.runtime.backends.base import physical_cores
from edge_run.runtime.eval.perplexity import evaluate, load_corpus
from tools.zoo import zoo_checkpoint

ONNX_VARIANTS: tuple[tuple[str, int, bool], ...] = (  # (scheme, block size, symmetric)
    ("int4", 32, True), ("int4", 32, False), ("int4", 128, True), ("int4", 128, False), ("int4h8", 32, False),
    ("mixed", 32, False), ("int8", 32, False), ("fp32", 32, True),
)
GGUF_QUANTS = ("Q4_0", "Q4_K_M")
SPEED_SET = ("onnx int4-b32-asym", "onnx int4-b32-sym", "onnx int4-b128-asym", "onnx int4h8-b32-asym",
             "onnx mixed-b32-asym", "gguf Q4_0", "gguf Q4_K_M")


def convert_all(ckpt: Path, work: Path, name: str) -> dict[str, Path]:
    arts: dict[str, Path] = {}
    for q in GGUF_QUANTS:
        path = work / f"{name}.{q}.gguf"
        if not path.exists():
            _cli("convert", ckpt, "--format", "gguf", "--quant", q.lower(), "--out", work, "--name", name, "--json")
        arts[f"gguf {q}"] = path
    for scheme, block, sym in ONNX_VARIANTS:
        label = "fp32" if scheme == "fp32" else f"{scheme}-b{block}-{'sym' if sym else 'asym'}"
        path = work / f"{name}.{label}"
        if not path.exists():
            _cli("convert", ckpt, "--format", "onnx", "--quant", scheme, "--block-size", str(block),
                 "--symmetric" if sym else "--asymmetric", "--out", work, "--name", name, "--json")
        arts[f"onnx {label}"] = path
    return arts


def _cli(*args: Any) -> None:
    code = edge_run([str(a) for a in args])
    if code != 0:
        raise SystemExit(f"edge-run {' '.join(map(str, args))} failed with exit code {code}")


def speed(arts: dict[str, Path], prompt: str, prompt_tokens: int, gen_tokens: int, rounds: int,
          threads: int) -> dict[str, Any]:
    """Interleaved rounds: every artifact is loaded once, then each round runs each of them once."""
    samples: dict[str, dict[str, list[float]]] = {k: {"prefill": [], "decode": []} for k in SPEED_SET}
    backends = {k: open_backend(arts[k], LoadOptions(n_ctx=prompt_tokens + gen_tokens + 16, n_threads=threads))
                for k in SPEED_SET}
    try:
        for _ in range(rounds):
            for key, b in backends.items():
                tokens = b.tokenize(prompt)[:prompt_tokens]
                list(b.stream(tokens, GenerationParams(max_tokens=gen_tokens)))
                res = b.last_result
                assert res is not None
                samples[key]["prefill"].append(res.prefill_tps)
                samples[key]["decode"].append(res.decode_tps)
                samples[key].setdefault("completion_tokens", []).append(res.completion_tokens)
    finally:
        for b in backends.values():
            b.close()
    table = {k: {"prefill_tps": round(statistics.median(v["prefill"]), 2),
                 "decode_tps": round(statistics.median(v["decode"]), 2),
                 "prefill_runs": [round(x, 1) for x in v["prefill"]], "decode_runs": [round(x, 1) for x in v["decode"]],
                 "completion_tokens": v["completion_tokens"]} for k, v in samples.items()}
    base = table["gguf Q4_0"]
    for row in table.values():
        row["decode_vs_gguf_q4_0"] = round(row["decode_tps"] / base["decode_tps"], 3)
        row["prefill_vs_gguf_q4_0"] = round(row["prefill_tps"] / base["prefill_tps"], 3)
    return table


def quality(arts: dict[str, Path], ctx: int, chunks: int) -> dict[str, Any]:
    corpus = load_corpus("wikitext-2-raw-test")
    out = {}
    for key, path in arts.items():
        t0 = time.perf_counter()
        r = evaluate(path, corpus, ctx=ctx, chunks=chunks)
        entry = r.quality_entry()
        out[key] = {"ppl": round(entry["ppl"], 4), "bpb": round(entry["bpb"], 5),
                    "tokens_scored": entry["tokens_scored"],
                    "bytes_scored": entry["bytes_scored"], "eval_seconds": round(time.perf_counter() - t0, 1),
                    "size_mib": round(_size(path) / 2**20, 2)}
        print(f"quality {key}: ppl {out[key]['ppl']} bpb {out[key]['bpb']}", file=sys.stderr)
    return out


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir()) if path.is_dir() else path.stat().st_size


def markdown(result: dict[str, Any]) -> str:
    lines = ["| artifact | decode tok/s | prefill tok/s | decode vs Q4_0 | prefill vs Q4_0 |", "|---|---|---|---|---|"]
    for k, r in result["speed"].items():
        lines.append(f"| {k} | {r['decode_tps']} | {r['prefill_tps']} | {r['decode_vs_gguf_q4_0']}x | "
                     f"{r['prefill_vs_gguf_q4_0']}x |")
    if result.get("quality"):
        lines += ["", "| artifact | size MiB | PPL | BPB |", "|---|---|---|---|"]
        for k, r in sorted(result["quality"].items(), key=lambda kv: kv[1]["ppl"]):
            lines.append(f"| {k} | {r['size_mib']} | {r['ppl']} | {r['bpb']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--work", type=Path, default=Path("results/tmp/bench_onnx"))
    ap.add_argument("--out", type=Path, default=Path("results/bench_onnx.json"))
    ap.add_argument("--threads", type=int, default=physical_cores())
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=40)
    ap.add_argument("--skip-quality", action="store_true")
    args = ap.parse_args(argv)

    import llama_cpp
    import onnxruntime

    args.work.mkdir(parents=True, exist_ok=True)
    ckpt = zoo_checkpoint(args.model)
    arts = convert_all(ckpt, args.work, args.model)
    text = load_corpus("wikitext-2-raw-test").text[20_000:40_000]
    result: dict[str, Any] = {
        "model": args.model, "threads": args.threads, "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "onnxruntime": onnxruntime.__version__, "llama_cpp_python": llama_cpp.__version__,
        "prompt_tokens": args.prompt_tokens, "gen_tokens": args.gen_tokens, "rounds": args.rounds,
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "speed": speed(arts, text, args.prompt_tokens, args.gen_tokens, args.rounds, args.threads),
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    if not args.skip_quality:
        result["quality_setup"] = {"corpus": "wikitext-2-raw-test", "ctx": args.ctx, "chunks": args.chunks}
        result["quality"] = quality(arts, args.ctx, args.chunks)
    result["markdown"] = markdown(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(result["markdown"])


if __name__ == "__main__":
    main()
