"""ONNX int4 schemes against GGUF Q4_K_M on one checkpoint: WikiText-2 perplexity, file size, time to
quantize (results/onnx_quant.json). Calibration reads Tiny Shakespeare; WikiText-2 is only evaluated.

    checkpoint ──edge-run convert --format onnx --quant S──> one artifact per scheme S (timed one by one)
               └─edge-run convert --format gguf --quant q4_k_m
    each ──edge-run's eval library (llama.cpp's chunking: first --chunks chunks of --ctx tokens)──> PPL, BPB

    python -m tools.bench_onnx_quant [--model smollm2-135m] [--chunks 40] [--out results/onnx_quant.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import onnxruntime

from edge_run.cli.main import main as edge_run
from edge_run.converters.onnx.quantize import SCHEMES
from edge_run.runtime.eval.perplexity import evaluate, load_corpus
from tools.zoo import zoo_checkpoint

ONNX_SCHEMES = ("int4-rtn", "int4-search", "int4-cal", "int4")
GGUF_QUANTS = ("Q4_K_M",)


def _cli(*args: Any) -> None:
    code = edge_run([str(a) for a in args])
    if code != 0:
        raise SystemExit(f"edge-run {' '.join(map(str, args))} failed with exit code {code}")


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir()) if path.is_dir() else path.stat().st_size


def convert_all(ckpt: Path, work: Path, name: str, schemes: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    arts: dict[str, dict[str, Any]] = {}
    for q in GGUF_QUANTS:
        path = work / f"{name}.{q}.gguf"
        t0 = time.perf_counter()
        if not path.exists():
            _cli("convert", ckpt, "--format", "gguf", "--quant", q.lower(), "--out", work, "--name", name, "--json")
        arts[f"gguf {q}"] = {"path": path, "convert_seconds": round(time.perf_counter() - t0, 1)}
    for s in schemes:
        path = work / f"{name}.{s}-b32-asym"
        t0 = time.perf_counter()
        _cli("convert", ckpt, "--format", "onnx", "--quant", s, "--out", work, "--name", name, "--force", "--json")
        arts[f"onnx {s}"] = {"path": path, "convert_seconds": round(time.perf_counter() - t0, 1)}
    return arts


def quality(arts: dict[str, dict[str, Any]], ctx: int, chunks: int) -> dict[str, Any]:
    corpus = load_corpus("wikitext-2-raw-test")
    out = {}
    for key, a in arts.items():
        path = a["path"]
        t0 = time.perf_counter()
        entry = evaluate(path, corpus, ctx=ctx, chunks=chunks).quality_entry()
        row = {"ppl": round(entry["ppl"], 4), "bpb": round(entry["bpb"], 5), "tokens_scored": entry["tokens_scored"],
               "size_mib": round(_size(path) / 2**20, 2), "convert_seconds": a["convert_seconds"],
               "eval_seconds": round(time.perf_counter() - t0, 1), "load_1min": round(os.getloadavg()[0], 1)}
        if path.is_dir():
            extra = json.loads((path / "manifest.json").read_text(encoding="utf-8"))["extra"]
            row["linear_bits"] = extra["linear_bits"]
            if "calibration" in extra:
                row["calibration_seconds"] = extra["calibration"]["seconds"]
                row["int8_units"] = len(extra["calibration"]["int8"])
            row["description"] = SCHEMES[key.split()[1]].description
        out[key] = row
        print(f"{key}: ppl {row['ppl']} size {row['size_mib']} MiB", file=sys.stderr)
    return out


def markdown(rows: dict[str, Any]) -> str:
    lines = ["| artifact | size MiB | PPL | BPB | convert s |", "|---|---|---|---|---|"]
    for k, r in sorted(rows.items(), key=lambda kv: kv[1]["ppl"]):
        lines.append(f"| {k} | {r['size_mib']} | {r['ppl']} | {r['bpb']} | {r['convert_seconds']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--chunks", type=int, default=40)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--schemes", default=",".join(ONNX_SCHEMES))
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_onnx_quant"))
    ap.add_argument("--out", type=Path, default=Path("results/onnx_quant.json"))
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    arts = convert_all(zoo_checkpoint(args.model), args.work, args.model, tuple(args.schemes.split(",")))
    rows = quality(arts, args.ctx, args.chunks)
    result = {"model": args.model, "corpus": "wikitext-2-raw-test", "calibration_text": "tinyshakespeare.txt",
              "ctx": args.ctx, "chunks": args.chunks, "platform": platform.platform(), "cpus": os.cpu_count(),
              "onnxruntime": onnxruntime.__version__, "load_avg_start": [round(x, 1) for x in load_start],
              "load_avg_end": [round(x, 1) for x in os.getloadavg()],
              "note": "shared 2-core machine: convert/eval seconds include other engineers' load (load_1min per row)",
              "quality": rows, "markdown": markdown(rows)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(result["markdown"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
