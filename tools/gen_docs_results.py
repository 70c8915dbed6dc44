"""Each benchmark's latest table, generated from its results/*.json (see tools/gen_docs.py).

A block ``<!-- gen:results-NAME -->`` renders RESULTS[NAME]: the JSON file the benchmark writes and the function
that turns it into markdown. Where the tool that writes the JSON has its own renderer, that one is used
(``module:function``), so the docs show the table the tool prints.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tools.gen_docs_code import table

ROOT = Path(__file__).resolve().parent.parent
Doc = dict[str, Any]


def _f(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def tradeoff(doc: Doc) -> str:
    s = doc["settings"]
    chunks = ", ".join(f"{m} {c}" for m, c in s.get("chunks_by_model", {}).items()) or str(s.get("chunks"))
    head = (f"{s['corpus']}, ctx {s['ctx']}, chunks per model: {chunks}; `+imat`: importance matrix from "
            f"{s['imatrix_text']} ({s['imatrix_chunks']} chunks). Pareto: best BPB for its file size.\n\n")
    pareto = set(doc.get("pareto", []))
    rows = [[r["model"], r["label"], _f(r["file_mib"]), f"{r['bits_per_weight']:.2f}", f"{r['ppl']:.2f}",
             f"{r['bpb']:.4f}", f"{r['kld_vs_f16']:.3f}", "yes" if f"{r['model']} {r['label']}" in pareto else ""]
            for r in doc["rows"]]
    return head + table(["model", "quant", "MiB", "bits/weight", "PPL", "BPB", "KLD vs F16", "Pareto"], rows)


def pick_oracle(doc: Doc) -> str:
    def cell(s: Doc) -> tuple[str, str]:
        return f"{s['agree_pct']:g}% ({round(s['agree_pct'] * s['cases'] / 100)}/{s['cases']})", \
            f"{s['max_regret_pct']:g}%"

    rows = []
    for cache in ("f16", "auto"):
        groups = [("shipped profiles x ctx 512/2048/8192", doc[cache]["summary"]),
                  ("RAM sweep at ctx 2048", doc[cache]["sweep_summary"]),
                  *[(f"{m} alone, RAM sweep", s) for m, s in doc[cache]["alone_summary"].items()]]
        for cases, summary in groups:
            for knows, key in (("each model's Q8_0", "anchor"), ("every pairing (`--measure`)", "measured")):
                agree, regret = cell(summary[key])
                rows.append([f"`{cache}`", cases, knows, agree, regret])
    return (f"A pick within {doc['tie_bpb']:g} BPB of the measured-best pairing that fits counts as agreeing.\n\n"
            + table(["KV cache", "cases", "picker knows", "pick = oracle", "worst BPB regret"], rows))


def quant_loss_fit(doc: Doc) -> str:
    rows = []
    for model, r in sorted(doc["leave_one_model_out"].items()):
        s = r["summary"]
        bpb = "mae_bpb" in s
        unit = "BPB" if bpb else "nats/token"
        held = " (held out)" if model in doc["data"].get("held_out", []) else ""
        own = not bpb  # Llama-3-8B: the published deltas are its own data
        rows.append([model + held, f"{s['mae_bpb' if bpb else 'mae_nats']:.3f} {unit}",
                     f"{s['max_err_bpb' if bpb else 'max_err_nats']:.3f}",
                     "(its own data)" if own else f"{s['baseline_mae_bpb']:.3f}",
                     f"{s['order_agreement']:.0%}" + ("" if own else f" ({s['baseline_order_agreement']:.0%})")])
    im = doc["imatrix"]
    return (table(["model left out", "mean abs. error", "max", "Llama-3-8B deltas' mean error",
                   "quant-type order right (Llama-3 deltas)"], rows)
            + f"\nimatrix loss ratio (with / without): {im['ratio']:g} (every pair, held-out models included: "
              f"{im['ratio_all']:g}).\n")


def estimator(doc: Doc) -> str:
    rows = [[r["artifact"], str(r["ctx"]), _f(r["estimate_mib"]), _f(r["measured_peak_mib"]),
             f"{r['error_mib']:+.1f}", f"{r['error_pct']:+.1f}%", "yes" if r["within_goal"] else "no"]
            for r in doc["rows"]]
    return table(["artifact", "ctx", "estimate MiB", "measured peak MiB", "error MiB", "error", "within goal"], rows)


def estimator_onnx(doc: Doc) -> str:
    left_out = doc["fit"]["model_left_out_error_pct"]
    rows = [[r["artifact"], str(r["ctx"]), _f(r["estimate_mib"]), _f(r["measured_peak_mib"]),
             f"{r['error_pct']:+.1f}%", f"{left_out[i]:+.1f}%"] for i, r in enumerate(doc["rows"])]
    fit = doc["fit"]
    return (table(["artifact", "ctx", "estimate MiB", "measured peak MiB", "error", "model left out of the fit"],
                  rows)
            + f"\nFitted factors: {fit['prepacked_factor']:g} x the bytes MatMulNBits reads, "
              f"{fit['other_weights_factor']:g} x every other initializer's bytes.\n")


def arm_rss(doc: Doc) -> str:
    rows = [[f"{r['profile']} ({r['cpu']})", r["quant"], str(r["ctx"]), _f(r["measured_mib"]),
             _f(r["estimate_mib"]), _f(r["repacked_mib"]), f"{r['error_pct']:+.1f}%"] for r in doc["rows"]]
    return table(["profile (core)", "quant", "ctx", "measured MiB", "estimate MiB", "of which repacked",
                  "(estimate - measured) / measured"], rows)


def arm_check(doc: Doc) -> str:
    def answer(text: str) -> str:
        text = json.dumps(text, ensure_ascii=False)
        return text if len(text) <= 48 else text[:45] + "..."

    rows = [[r["cpu"], r.get("extra", {}).get("profile", ""), r["what"], r["artifact"], answer(r["answer"]),
             {True: "yes", False: "no", None: ""}[r["equal_x86"]], str(r["rc"]), "pass" if r["ok"] else "FAIL"]
            for r in doc["rows"]]
    head = (f"Prompt {json.dumps(doc['prompt'])}, {doc['n_tokens']} tokens, greedy; {len(doc['rows'])} rows, "
            f"{doc['failed']} failed; the leg took {doc['leg_seconds']} s.\n\n")
    return head + table(["cpu", "build", "step", "artifact", "answer", "= x86", "rc", "result"], rows)


def bench_convert(doc: Doc) -> str:
    rows = [[r["model"], f"{r['checkpoint_mib']:.0f} MiB", f"{r['artifact_mib']:.0f} MiB", f"{r['wall_s']:.1f} s",
             f"{r['peak_rss_tree_mib']:.0f} MiB", f"{r['peak_rss_over_checkpoint']:.2f}"] for r in doc["results"]]
    return (f"HF checkpoint -> F16 -> {doc['results'][0]['quant']}, {doc['cpus']} CPUs ({doc['machine']}).\n\n"
            + table(["model", "checkpoint", "artifact", "wall", "peak RSS (process tree)", "peak / checkpoint"],
                    rows))


def sampler(doc: Doc) -> str:
    rows = [[r["file"], str(r["n_vocab"]), str(r["rounds"]), f"{r['sample_us']['chain']:g}",
             f"{r['sample_us']['greedy_pick']:g}", f"{r['decode_ratio_greedy_pick_vs_chain']:g}",
             "yes" if r["same_tokens"] else "NO"] for r in doc["rows"]]
    return table(["file", "vocabulary", "rounds", "sampler chain us/token", "greedy pick us/token",
                  "decode tok/s ratio (greedy pick / chain)", "same tokens"], rows)


def onnx_genai(doc: Doc) -> str:
    rows = [[side, f"{s['decode_tok_s']:g}", f"{s['ttft_ms']:g}"] for side, s in doc["sides"].items()]
    return (f"{doc['artifact']}, {doc['threads']} threads, {doc['rounds']} rounds; {doc['method']}.\n\n"
            + table(["side", "decode tok/s (median)", "time to first token ms"], rows)
            + f"\nDecode ratio (edge-run / onnxruntime-genai): {doc['decode_ratio']:g}.\n")


def serve(doc: Doc) -> str:
    names = {"in_process": "in-process (`Backend.stream`)", "edge_run_http": "`edge-run serve` over HTTP",
             "llama_cpp_server_http": "`llama_cpp.server` over HTTP"}
    rows = [[names.get(k, k), f"{c['ttft_ms']:.0f}", f"{c['decode_tps']:.1f}"] for k, c in doc["columns"].items()]
    r, f, rss = doc["ratios"], doc["follow_up_turn"], doc["rss_mib"]
    return (f"{doc['artifact']}, {doc['threads']} thread(s), {doc['n_gen']} tokens per request, {doc['rounds']} "
            f"rounds; load average {doc['load_average']['before'][0]} before.\n\n"
            + table(["", "TTFT ms (median)", "decode tok/s (median)"], rows)
            + f"\nHTTP decode / in-process: {r['http_decode_vs_in_process']:g}; HTTP TTFT overhead "
              f"{r['http_ttft_overhead_ms']:+.0f} ms; vs `llama_cpp.server`: decode "
              f"{r['edge_run_vs_llama_cpp_server_decode']:g}, TTFT {r['edge_run_vs_llama_cpp_server_ttft_ms']:+.0f} "
              f"ms. Follow-up turn ({f['prompt_tokens']} tokens): TTFT {f['ttft_s_reuse'] * 1000:.0f} ms with prefix "
              f"reuse vs {f['ttft_s_no_reuse'] * 1000:.0f} ms without ({f['ratio']:g}x). RSS: idle server "
              f"{rss['edge_run_serve_idle']:.0f} MiB, `edge-run run` peak {rss['edge_run_run_peak']:.0f} MiB, "
              f"`llama_cpp.server` idle {rss['llama_cpp_server_idle']:.0f} MiB.\n")


FINDING = (("gemma3-270m", "Q4_K_M"), ("gemma3-270m", "F16"), ("smollm2-135m", "F16"), ("smollm2-135m", "Q8_0"),
           ("smollm2-135m", "Q4_K_M"))


def finding() -> str:
    """README's opening table: the larger model at ~4 bits against the smaller one at full precision."""
    doc = json.loads((ROOT / "results" / "tradeoff.json").read_text(encoding="utf-8"))
    by = {(r["model"], r["label"]): r for r in doc["rows"]}
    rows = [[m, q, f"{by[m, q]['file_mib']:.0f}", f"{by[m, q]['bits_per_weight']:.1f}", f"{by[m, q]['bpb']:.3f}"]
            for m, q in FINDING if (m, q) in by]
    return table(["model", "quant", "file MiB", "bits/weight", "bits per byte (lower is better)"], rows)


def _tool(ref: str) -> Callable[..., str]:
    module, name = ref.split(":")
    fn: Callable[..., str] = getattr(importlib.import_module(module), name)
    return fn


def pick_dimensions(doc: Doc) -> str:
    return _tool("tools.pick_dimensions:tables")(doc["rows"], doc["settings"]["chunks"]) + "\n"


def speed(doc: Doc) -> str:
    return _tool("tools.bench_vs_llama:markdown")(doc) + "\n"


def bench_onnx(doc: Doc) -> str:
    return _tool("tools.bench_onnx:markdown")(doc) + "\n"


# name -> (results file, renderer)
RESULTS: dict[str, tuple[str, Callable[[Doc], str]]] = {
    "tradeoff": ("tradeoff.json", tradeoff),
    "pick-oracle": ("pick_oracle.json", pick_oracle),
    "pick-dimensions": ("pick_dimensions.json", pick_dimensions),
    "quant-loss-fit": ("quant_loss_fit.json", quant_loss_fit),
    "estimator": ("estimator.json", estimator),
    "estimator-onnx": ("estimator_onnx.json", estimator_onnx),
    "arm-rss": ("arm_rss.json", arm_rss),
    "arm-check": ("arm_check.json", arm_check),
    "bench-convert": ("bench_convert.json", bench_convert),
    "speed": ("speed.json", speed),
    "speed-bench40": ("speed_bench40.json", speed),
    "sampler": ("sampler.json", sampler),
    "onnx-genai": ("onnx_genai.json", onnx_genai),
    "bench-onnx": ("bench_onnx.json", bench_onnx),
    "bench-onnx-gemma3": ("bench_onnx_gemma3.json", bench_onnx),
    "serve": ("serve.json", serve),
}


def _generator(file: str, render: Callable[[Doc], str]) -> Callable[[], str]:
    def generate() -> str:
        doc = json.loads((ROOT / "results" / file).read_text(encoding="utf-8"))
        return f"From [`results/{file}`](../../results/{file}).\n\n" + render(doc)

    return generate


GENERATORS: dict[str, Callable[[], str]] = {f"results-{name}": _generator(file, render)
                                            for name, (file, render) in RESULTS.items()}
GENERATORS["finding"] = finding
