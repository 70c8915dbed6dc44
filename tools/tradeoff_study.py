"""The size-vs-bits trade-off study: every zoo model x every quant type, measured on this machine.

For each model (SmolLM2-135M, Gemma3-270M, Qwen2.5-Coder-0.5B) the checkpoint is converted by edge-run to
F16, Q8_0, Q6_K, Q5_K_M, Q4_K_M, Q4_0, Q3_K_M, Q2_K, plus Q4_K_M / Q3_K_M / Q2_K quantized with an importance matrix
(measured on a calibration text that is not the evaluation text: Tiny Shakespeare by default). Each
artifact gets: file size, real bits per weight, PPL and BPB on WikiText-2 (ctx 512; the first 40 chunks,
or all with --full), KL divergence and top-1 agreement vs the F16 of the same model, decode and prefill
tokens/s (src/edge_run/runtime/bench.py, median of repeated runs).

    work dir (default <edge-run cache>/tradeoff)/<model>/
        plain/    <model>.<QUANT>.gguf + manifests
        imatrix/  <model>.imatrix.npz, <model>.<QUANT>.gguf (quantized with it)
        f16-logprobs-<chunks>x<ctx>/   the F16's log-probs, the reference for every KL divergence

Output: results/tradeoff.json (rows + Pareto set) and results/tradeoff.png (BPB vs file size, frontier
marked). Rows already in the output JSON with the same corpus, ctx and imatrix settings are kept; a model's
rows are reused when its chunk count is the one asked for (--redo to measure again). The chunk count is
recorded per model (settings "chunks_by_model"; each row's "chunks"), so one model may be scored on fewer
chunks than the others. Rows measured with --no-bench have no speed columns (the table shows "-"); a run
that benches with other settings than the output's keeps the old rows' quality and drops their speed columns.

    python -m tools.tradeoff_study [--models smollm2-135m gemma3-270m qwen2.5-coder-0.5b] [--full] [--no-bench]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_run.converters.gguf.convert import ConvertOptions, artifact_path, convert_to_gguf
from edge_run.converters.gguf.entry import f16_gguf
from edge_run.converters.gguf.quant_types import QUANT_TYPES
from edge_run.core import __version__
from edge_run.core.fsutil import atomic_write_text, cache_dir
from edge_run.core.manifest import read_manifest
from edge_run.core.quants import PLANNED_QUANTS
from edge_run.runtime.bench import BenchConfig, bench, machine_info
from edge_run.runtime.eval.imatrix import imatrix_for_checkpoint
from edge_run.runtime.eval.perplexity import evaluate, load_corpus
from tools.zoo import zoo_checkpoint

MODELS = ("smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b")
PLAIN = PLANNED_QUANTS
WITH_IMATRIX = ("Q4_K_M", "Q3_K_M", "Q2_K")
QUICK_CHUNKS = 40
SPEED_KEYS = ("decode_tok_s", "decode_spread_pct", "prefill_tok_s", "prefill_spread_pct", "peak_rss_mib",
              "bench_threads")


@dataclass(frozen=True)
class Variant:
    quant: str
    imatrix: bool

    @property
    def label(self) -> str:
        return f"{self.quant}+imat" if self.imatrix else self.quant


VARIANTS = tuple(Variant(q, False) for q in PLAIN) + tuple(Variant(q, True) for q in WITH_IMATRIX)


def log(msg: str) -> None:
    print(f"[{_dt.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def build_artifacts(model: str, work: Path, imatrix_text: str, imatrix_chunks: int) -> dict[Variant, Path]:
    ckpt = zoo_checkpoint(model)
    plain, imdir = work / model / "plain", work / model / "imatrix"
    paths: dict[Variant, Path] = {}
    for folder, variants, imatrix in ((plain, [v for v in VARIANTS if not v.imatrix], None),
                                      (imdir, [v for v in VARIANTS if v.imatrix], imdir / f"{model}.imatrix.npz")):
        targets = {v: artifact_path(folder, model, QUANT_TYPES[v.quant]) for v in variants}
        missing = [v for v, p in targets.items() if not p.exists() or read_manifest(p) is None]
        if imatrix is not None and missing and not imatrix.exists():
            log(f"{model}: importance matrix on {imatrix_text} ({imatrix_chunks} chunks)")
            folder.mkdir(parents=True, exist_ok=True)
            imatrix_for_checkpoint(ckpt, Path(load_corpus(imatrix_text).path), folder, name=model,
                                   max_chunks=imatrix_chunks, to_f16=f16_gguf)
        if missing:
            quants = ",".join(v.quant.lower() for v in missing)
            log(f"{model}: converting {quants}{' with imatrix' if imatrix else ''}")
            convert_to_gguf(ckpt, folder, ConvertOptions(quants=quants, name=model, force=True, imatrix=imatrix))
        paths.update(targets)
    return paths


def speed_columns(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    b = bench(path, BenchConfig(repeats=args.bench_repeats, threads=args.threads))
    return {"decode_tok_s": b["decode"]["tokens_per_s"]["median"],
            "decode_spread_pct": b["decode"]["tokens_per_s"]["spread_pct"],
            "prefill_tok_s": b["prefill"]["tokens_per_s"]["median"],
            "prefill_spread_pct": b["prefill"]["tokens_per_s"]["spread_pct"],
            "peak_rss_mib": b["peak_rss_mib"], "bench_threads": b["threads"]}


def rebench(args: argparse.Namespace, settings: dict[str, Any], rows: list[dict[str, Any]],
            old: dict[str, Any] | None) -> int:
    for row in rows:
        variant = Variant(row["quant"], row["imatrix"])
        folder = args.work / row["model"] / ("imatrix" if variant.imatrix else "plain")
        log(f"{row['model']} {variant.label}: bench")
        row.update(speed_columns(artifact_path(folder, row["model"], QUANT_TYPES[variant.quant]), args))
        write(args.out, settings, rows, old, [])
    return 0


def measure(model: str, variant: Variant, path: Path, f16: Path, store: Path | None, args: argparse.Namespace,
            corpus: Any) -> dict[str, Any]:
    m = read_manifest(path)
    assert m is not None
    reference = variant == Variant("F16", False)
    kw: dict[str, Any] = {"ctx": args.ctx, "chunks": args.chunks, "threads": args.threads}
    if reference:
        result = evaluate(path, corpus, record_to=store, **kw)
    elif store is not None:
        result = evaluate(path, corpus, parent_store=store, **kw)
    else:
        result = evaluate(path, corpus, parent=f16, **kw)
    e = result.quality_entry()
    row: dict[str, Any] = {
        "model": model, "quant": variant.quant, "imatrix": variant.imatrix, "label": variant.label,
        "file_size": m.file_size, "file_mib": round(m.file_size / 2**20, 2), "parameter_count": m.parameter_count,
        "bits_per_weight": m.bits_per_weight, "ppl": e["ppl"], "ppl_stderr": e["ppl_stderr"], "bpb": e["bpb"],
        "kld_vs_f16": 0.0 if reference else e["kld_vs_parent"], "top1_vs_f16": 1.0 if reference else
        e["top1_agreement"], "tokens_scored": e["tokens_scored"], "bytes_scored": e["bytes_scored"],
        "chunks": e["chunks"], "eval_seconds": round(result.seconds, 1),
    }
    if not args.no_bench:
        row.update(speed_columns(path, args))
    return row


def _complete(store: Path) -> bool:
    info = store / "info.json"
    return info.exists() and bool(json.loads(info.read_text(encoding="utf-8")).get("complete"))


def pareto(rows: list[dict[str, Any]], x: str = "file_size", y: str = "bpb") -> list[dict[str, Any]]:
    """Rows no other row beats on both ``x`` and ``y`` (smaller is better for both), sorted by ``x``."""
    front: list[dict[str, Any]] = []
    for r in sorted(rows, key=lambda r: (r[x], r[y])):
        if not front or r[y] < front[-1][y]:
            front.append(r)
    return front


def plot(rows: list[dict[str, Any]], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 6.5), dpi=120)
    colors = {"smollm2-135m": "tab:blue", "gemma3-270m": "tab:orange", "qwen2.5-coder-0.5b": "tab:green"}
    for model in dict.fromkeys(r["model"] for r in rows):
        for imat, marker in ((False, "o"), (True, "^")):
            pts = [r for r in rows if r["model"] == model and r["imatrix"] == imat]
            if pts:
                ax.scatter([r["file_mib"] for r in pts], [r["bpb"] for r in pts], marker=marker, s=46,
                           color=colors.get(model, "gray"), label=f"{model}{' + imatrix' if imat else ''}",
                           zorder=3)
            for r in pts:
                ax.annotate(r["label"], (r["file_mib"], r["bpb"]), textcoords="offset points", xytext=(5, 4),
                            fontsize=7)
    front = pareto(rows)
    ax.step([r["file_mib"] for r in front], [r["bpb"] for r in front], where="post", color="black", lw=1.2,
            ls="--", label="Pareto frontier", zorder=2)
    ax.scatter([r["file_mib"] for r in front], [r["bpb"] for r in front], s=150, facecolors="none",
               edgecolors="black", zorder=4)
    ax.set_xscale("log")
    ax.set_xlabel("memory: model file size (MiB, log scale; weights are mmap'd, so this is their resident size)")
    ax.set_ylabel("bits per byte on WikiText-2 (lower is better)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = ("| model | quant | chunks | MiB | bpw | PPL | BPB | KLD vs F16 | top-1 vs F16 | decode tok/s | Pareto |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|:-:|")
    lines = [head]
    for r in rows:
        speed = f"{r['decode_tok_s']:.0f}" if r.get("decode_tok_s") else "-"
        lines.append(f"| {r['model']} | {r['label']} | {r.get('chunks', '-')} | {r['file_mib']:.1f} | "
                     f"{r['bits_per_weight']:.2f} | {r['ppl']:.2f} | {r['bpb']:.4f} | {r['kld_vs_f16']:.4f} | "
                     f"{100 * r['top1_vs_f16']:.1f}% | "
                     f"{speed} | {'yes' if r.get('pareto') else ''} |")
    return "\n".join(lines)


def settings_of(args: argparse.Namespace, corpus: Any) -> dict[str, Any]:
    return {"corpus": corpus.name, "corpus_sha256": corpus.sha256, "ctx": args.ctx,
            "chunks": args.chunks if args.chunks is not None else "all", "imatrix_text": args.imatrix_text,
            "imatrix_chunks": args.imatrix_chunks, "bench": None if args.no_bench else
            {"repeats": args.bench_repeats, "n_prompt": 512, "n_gen": 128}}


PER_RUN = ("chunks", "chunks_by_model", "bench")  # settings that may differ between the rows of one output


def merged_settings(settings: dict[str, Any], old: dict[str, Any] | None, run_models: list[str],
                    rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The output's settings: the shared ones, each present model's chunk count (this run's for the models it
    measures, the old output's for the rest), "chunks" when every model has the same count, else "per model";
    "bench" is the settings of the rows that have speed columns (None when no row has them)."""
    old_by_model: dict[str, Any] = {}
    if old is not None:
        old_by_model = {m: old.get("chunks_by_model", {}).get(m, old.get("chunks")) for m in MODELS}
    present = [m for m in MODELS if any(r["model"] == m for r in rows)]
    by_model = {m: settings["chunks"] if m in run_models else old_by_model.get(m, settings["chunks"]) for m in present}
    counts = set(by_model.values())
    benched = any(r.get("decode_tok_s") is not None for r in rows)
    bench = settings["bench"] if settings["bench"] is not None else (old or {}).get("bench")
    return {**{k: v for k, v in settings.items() if k not in PER_RUN},
            "chunks": counts.pop() if len(counts) == 1 else "per model", "chunks_by_model": by_model,
            "bench": bench if benched else None}


def kept_rows(old: dict[str, Any], settings: dict[str, Any], run_models: list[str],
              rebench: bool) -> list[dict[str, Any]]:
    """The old output's rows that stay: all of them when corpus, ctx and imatrix settings match (none otherwise),
    less the rows of a model of this run whose chunk count differs from the one asked for; speed columns from
    other bench settings than this run's are dropped (a --no-bench run keeps them)."""
    shared = {k: v for k, v in settings.items() if k not in PER_RUN}
    if {k: v for k, v in old.get("settings", {}).items() if k not in PER_RUN} != shared:
        return []
    by_model = {m: old["settings"].get("chunks_by_model", {}).get(m, old["settings"].get("chunks")) for m in MODELS}
    rows = [r for r in old["rows"] if r["model"] not in run_models or by_model[r["model"]] == settings["chunks"]]
    if not rebench and settings["bench"] is not None and old["settings"].get("bench") != settings["bench"]:
        for r in rows:
            for k in SPEED_KEYS:
                r.pop(k, None)
    return rows


def write(out: Path, settings: dict[str, Any], rows: list[dict[str, Any]], old: dict[str, Any] | None = None,
          run_models: list[str] | None = None) -> None:
    settings = merged_settings(settings, old, list(MODELS) if run_models is None else run_models, rows)
    front = {(r["model"], r["label"]) for r in pareto(rows)}
    for r in rows:
        r["pareto"] = (r["model"], r["label"]) in front
    doc = {"schema": "edge-run-tradeoff/1", "tool_version": __version__,
           "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
           "settings": settings, "machine": machine_info(), "rows": rows,
           "pareto": [f"{r['model']} {r['label']}" for r in pareto(rows)]}
    atomic_write_text(out, json.dumps(doc, indent=2) + "\n", force=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--full", action="store_true", help="score the whole corpus (default: the first 40 chunks)")
    ap.add_argument("--chunks", type=int, default=QUICK_CHUNKS, help="chunks scored in the quick run")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--corpus", default="wikitext-2-raw-test")
    ap.add_argument("--imatrix-text", default="tinyshakespeare", help="calibration text (built-in name or file)")
    ap.add_argument("--imatrix-chunks", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--bench-repeats", type=int, default=3)
    ap.add_argument("--no-bench", action="store_true")
    ap.add_argument("--work", type=Path, default=cache_dir() / "tradeoff")
    ap.add_argument("--out", type=Path, default=Path("results/tradeoff.json"))
    ap.add_argument("--plot", type=Path, default=Path("results/tradeoff.png"))
    ap.add_argument("--redo", action="store_true", help="measure again even if the output JSON has the row")
    ap.add_argument("--table", action="store_true", help="print the output JSON as a markdown table and exit")
    ap.add_argument("--rebench", action="store_true",
                    help="only re-measure the speed columns of the rows in the output JSON (e.g. on a quieter machine)")
    args = ap.parse_args(argv)
    if args.full:
        args.chunks = None
    corpus = load_corpus(args.corpus)
    settings = settings_of(args, corpus)
    rows: list[dict[str, Any]] = []
    old: dict[str, Any] | None = None
    if args.out.exists() and not args.redo:
        doc = json.loads(args.out.read_text(encoding="utf-8"))
        rows = kept_rows(doc, settings, args.models, args.rebench)
        old = doc["settings"] if rows else None
    if args.table:
        print(markdown_table(json.loads(args.out.read_text(encoding="utf-8"))["rows"]))
        return 0
    if args.rebench:
        return rebench(args, settings, rows, old)
    done = {(r["model"], r["label"]) for r in rows}
    for model in args.models:
        paths = build_artifacts(model, args.work, args.imatrix_text, args.imatrix_chunks)
        f16 = paths[Variant("F16", False)]
        # the quick run stores the F16's log-probs once (gemma3: ~5 GiB); the full corpus would need ~75 GiB,
        # so --full runs the F16 live beside each variant instead
        store = None if args.full else args.work / model / f"f16-logprobs-{args.chunks}x{args.ctx}"
        store_ok = store is not None and _complete(store)
        for variant in VARIANTS:
            reference = variant == Variant("F16", False)
            rebuild_store = reference and store is not None and not store_ok
            if (model, variant.label) in done and not rebuild_store:
                continue
            log(f"{model} {variant.label}: eval{' + bench' if not args.no_bench else ''}")
            row = measure(model, variant, paths[variant], f16, store, args, corpus)
            rows = [r for r in rows if (r["model"], r["label"]) != (model, variant.label)] + [row]
            store_ok = store_ok or rebuild_store
            log(f"  PPL {row['ppl']:.3f}  BPB {row['bpb']:.4f}  KLD {row['kld_vs_f16']:.4f}  "
                f"{row.get('decode_tok_s', float('nan')):.1f} tok/s")
            write(args.out, settings, rows, old, args.models)
    order = {(m, v.label): i for i, (m, v) in enumerate((m, v) for m in MODELS for v in VARIANTS)}
    rows.sort(key=lambda r: order.get((r["model"], r["label"]), 999))
    write(args.out, settings, rows, old, args.models)
    chunks = json.loads(args.out.read_text(encoding="utf-8"))["settings"]["chunks_by_model"]
    counts = ", ".join(f"{m} {c}" for m, c in chunks.items()) if len(set(chunks.values())) > 1 else \
        str(next(iter(chunks.values()), settings["chunks"]))
    plot(rows, args.plot, f"WikiText-2, ctx {args.ctx}, chunks: {counts}\nbits per byte vs memory "
                          f"(edge-run GGUF, llama.cpp CPU)")
    log(f"wrote {args.out} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
