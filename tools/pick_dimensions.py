"""Measured effects of the picker's other dimensions on the zoo models: the corpus, the KV cache type, the context.

    corpus    every plain quant type of each model on WikiText-2 and on Tiny Shakespeare (the same chunking, the
              first N chunks of 512 tokens): does the second corpus order the pairings as WikiText-2 does?
    kv        each model's Q8_0 with an f16 and a q8_0 KV cache (flash attention on for q8_0, as llama.cpp needs
              for a quantized V cache; the f16 run uses the backend's default, recorded per row), at ctx 512 and
              2048 on WikiText-2
    ctx       each model's Q8_0 on WikiText-2 at ctx 256 / 512 / 1024 / 2048, about the same number of tokens
              each (the second half of every chunk is scored, so a longer context conditions on more text)

Artifacts are converted once into <edge-run cache>/pick-dimensions/<model>/ from the zoo checkpoints. Every row
is written to the output as soon as it is measured; rows already there (same settings) are reused.

    python -m tools.pick_dimensions [--models smollm2-135m gemma3-270m] [--chunks 4] [--only corpus kv ctx]
        -> results/pick_dimensions.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path
from typing import Any

from edge_run.converters.gguf.convert import ConvertOptions, artifact_path, convert_to_gguf
from edge_run.converters.gguf.quant_types import QUANT_TYPES
from edge_run.core.fsutil import atomic_write_text, cache_dir
from edge_run.core.manifest import read_manifest
from edge_run.core.quants import PLANNED_QUANTS
from edge_run.runtime.eval.perplexity import evaluate, load_corpus
from tools.zoo import zoo_checkpoint

MODELS = ("smollm2-135m", "gemma3-270m")
CORPORA = ("wikitext-2-raw-test", "tinyshakespeare")
KV_TYPES = ("f16", "q8_0")
KV_CTXS = (512, 2048)
CTX_TOKENS = 4096  # tokens run per context length (chunks = CTX_TOKENS / ctx)
CTXS = (256, 512, 1024, 2048)
ANCHOR = "Q8_0"


def log(msg: str) -> None:
    print(f"[{_dt.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def artifacts(model: str, work: Path) -> dict[str, Path]:
    folder = work / model
    paths = {q: artifact_path(folder, model, QUANT_TYPES[q]) for q in PLANNED_QUANTS}
    missing = [q for q, p in paths.items() if not p.exists() or read_manifest(p) is None]
    if missing:
        log(f"{model}: converting {', '.join(missing)}")
        convert_to_gguf(zoo_checkpoint(model), folder,
                        ConvertOptions(quants=",".join(q.lower() for q in missing), name=model, force=True))
    return paths


def row_of(kind: str, model: str, quant: str, corpus: str, ctx: int, chunks: int, cache_type: str,
           path: Path, threads: int | None) -> dict[str, Any]:
    r = evaluate(path, load_corpus(corpus), ctx=ctx, chunks=chunks, threads=threads, cache_type=cache_type)
    e = r.quality_entry()
    return {"kind": kind, "model": model, "quant": quant, "corpus": corpus, "ctx": ctx, "chunks": e["chunks"],
            "cache_type": cache_type, "flash_attn": r.flash_attn, "bpb": e["bpb"], "ppl": e["ppl"],
            "ppl_stderr": e["ppl_stderr"], "tokens_scored": e["tokens_scored"], "bytes_scored": e["bytes_scored"],
            "eval_seconds": round(r.seconds, 1)}


def plan(models: list[str], chunks: int, only: set[str]) -> list[tuple[str, str, str, str, int, int, str]]:
    """(kind, model, quant, corpus, ctx, chunks, cache type) of every row, cheapest kinds first."""
    out = []
    for model in models:
        if "kv" in only:
            for ctx in KV_CTXS:
                n = max(1, CTX_TOKENS // ctx) if ctx > 512 else chunks
                out += [("kv", model, ANCHOR, CORPORA[0], ctx, n, t) for t in KV_TYPES]
        if "corpus" in only:
            out += [("corpus", model, q, c, 512, chunks, "f16") for c in CORPORA for q in PLANNED_QUANTS]
        if "ctx" in only:
            out += [("ctx", model, ANCHOR, CORPORA[0], ctx, max(1, CTX_TOKENS // ctx), "f16") for ctx in CTXS]
    unique: dict[tuple[Any, ...], tuple[str, str, str, str, int, int, str]] = {}
    for p in out:  # one run serves every kind that needs it (the f16 KV row at ctx 2048 is also a ctx row)
        unique.setdefault(p[1:], p)
    return list(unique.values())


def _id(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["model"], r["quant"], r["corpus"], r["ctx"], r["chunks"], r["cache_type"])


def kendall(a: list[float], b: list[float]) -> float:
    """Kendall's tau-a between two score lists (1 = the same order)."""
    n = len(a)
    s = sum((1 if (a[i] - a[j]) * (b[i] - b[j]) > 0 else -1 if (a[i] - a[j]) * (b[i] - b[j]) < 0 else 0)
            for i in range(n) for j in range(i + 1, n))
    return s / (n * (n - 1) / 2) if n > 1 else 1.0


def compare_corpora(rows: list[dict[str, Any]], tie: float, chunks: int) -> dict[str, Any]:
    """Order of every pairing (model x quant) by BPB on each corpus; pairs ordered differently, beyond ``tie``."""
    by = {(r["model"], r["quant"], r["corpus"]): r["bpb"] for r in rows
          if r["ctx"] == 512 and r["cache_type"] == "f16" and r["chunks"] == chunks}
    keys = sorted({(m, q) for m, q, _ in by if all((m, q, c) in by for c in CORPORA)})
    a = [by[(m, q, CORPORA[0])] for m, q in keys]
    b = [by[(m, q, CORPORA[1])] for m, q in keys]
    flips = []
    for i in range(len(keys)):
        for j in range(i + 1, len(keys)):
            if (a[i] - a[j]) * (b[i] - b[j]) < 0 and min(abs(a[i] - a[j]), abs(b[i] - b[j])) > tie:
                flips.append({"pair": [" ".join(keys[i]), " ".join(keys[j])],
                              CORPORA[0]: [a[i], a[j]], CORPORA[1]: [b[i], b[j]]})
    order = {c: [" ".join(k) for _, k in sorted(zip(v, keys, strict=True))] for c, v in ((CORPORA[0], a),
                                                                                         (CORPORA[1], b))}
    within = {}
    for model in sorted({m for m, _ in keys}):
        idx = [i for i, k in enumerate(keys) if k[0] == model]
        within[model] = round(kendall([a[i] for i in idx], [b[i] for i in idx]), 3)
    return {"pairings": len(keys), "kendall_tau": round(kendall(a, b), 3), "kendall_tau_within_model": within,
            "tie_bpb": tie, "flips_beyond_tie": flips, "order": order}


def tables(rows: list[dict[str, Any]], chunks: int) -> str:
    """The README's tables: both corpora per pairing, the KV cache effect, BPB by context."""
    by = {(r["model"], r["quant"], r["corpus"], r["ctx"], r["chunks"], r["cache_type"]): r for r in rows}
    models = list(dict.fromkeys(r["model"] for r in rows))
    out = ["| model | " + " | ".join(PLANNED_QUANTS) + " |", "|---|" + "---|" * len(PLANNED_QUANTS)]
    for m in models:
        for c in CORPORA:
            cells = [f"{by[(m, q, c, 512, chunks, 'f16')]['bpb']:.4f}" if (m, q, c, 512, chunks, "f16") in by else ""
                     for q in PLANNED_QUANTS]
            out.append(f"| {m} on {c} | " + " | ".join(cells) + " |")
    out += ["", "| model (Q8_0) | ctx x chunks | BPB, f16 KV | BPB, q8_0 KV | difference | eval s f16 / q8_0 |",
            "|---|---|---|---|---|---|"]
    for m in models:
        for r in [r for r in rows if r["model"] == m and r["cache_type"] == "q8_0"]:
            f = by.get((m, r["quant"], r["corpus"], r["ctx"], r["chunks"], "f16"))
            if f:
                out.append(f"| {m} | {r['ctx']} x {r['chunks']} | {f['bpb']:.4f} | {r['bpb']:.4f} | "
                           f"{r['bpb'] - f['bpb']:+.4f} | {f['eval_seconds']:.0f} / {r['eval_seconds']:.0f} |")
    out += ["", "| model (Q8_0 weights) | " + " | ".join(f"ctx {c}" for c in CTXS) + " |", "|---|" + "---|" * len(CTXS)]
    for m in models:
        cells = [f"{by[k]['bpb']:.4f}" if (k := (m, ANCHOR, CORPORA[0], c, max(1, CTX_TOKENS // c), "f16")) in by
                 else "" for c in CTXS]
        out.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def write(out: Path, settings: dict[str, Any], rows: list[dict[str, Any]], tie: float) -> None:
    doc = {"schema": "edge-run-pick-dimensions/1", "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
           "settings": settings, "rows": rows, "corpus_comparison": compare_corpora(rows, tie, settings["chunks"])}
    atomic_write_text(out, json.dumps(doc, indent=1) + "\n", force=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--chunks", type=int, default=4, help="chunks of 512 tokens per corpus / KV row")
    ap.add_argument("--only", nargs="+", default=["kv", "corpus", "ctx"], choices=["kv", "corpus", "ctx"])
    ap.add_argument("--tie", type=float, default=0.003, help="BPB differences below this are ties (noise)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--work", type=Path, default=cache_dir() / "pick-dimensions")
    ap.add_argument("--out", type=Path, default=Path("results/pick_dimensions.json"))
    ap.add_argument("--table", action="store_true", help="print the output JSON's README tables and exit")
    args = ap.parse_args(argv)
    if args.table:
        print(tables(json.loads(args.out.read_text(encoding="utf-8"))["rows"], args.chunks))
        return 0
    settings = {"chunks": args.chunks, "ctx_tokens": CTX_TOKENS}
    rows: list[dict[str, Any]] = []
    if args.out.exists():
        old = json.loads(args.out.read_text(encoding="utf-8"))
        if old.get("settings") == settings:
            rows = old["rows"]
    done = {_id(r) for r in rows}
    todo = [p for p in plan(args.models, args.chunks, set(args.only)) if p[1:] not in done]
    paths: dict[str, dict[str, Path]] = {}
    for kind, model, quant, corpus, ctx, chunks, cache_type in todo:
        if model not in paths:
            paths[model] = artifacts(model, args.work)
        log(f"{kind}: {model} {quant} {corpus} ctx {ctx} x{chunks} cache {cache_type}")
        row = row_of(kind, model, quant, corpus, ctx, chunks, cache_type, paths[model][quant], args.threads)
        log(f"  BPB {row['bpb']:.4f} PPL {row['ppl']:.3f} flash_attn {row['flash_attn']} ({row['eval_seconds']} s)")
        rows.append(row)
        write(args.out, settings, rows, args.tie)
    write(args.out, settings, rows, args.tie)
    print(json.dumps(compare_corpora(rows, args.tie, args.chunks), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
