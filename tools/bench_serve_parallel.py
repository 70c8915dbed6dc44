"""`edge-run serve --parallel N` vs llama.cpp's `llama-server --parallel N`, and --draft ngram vs plain decoding.

    python -m tools.bench_serve parallel [FILE.gguf] [--clients 1,2,4,8] [--rounds 3] [--n-gen 64] [--threads 2]
                                         [--ctx 512] [--spec-prompts 20] [--out results/serve_parallel.json]

Batching: for each N in --clients, both servers run with N slots of --ctx tokens each (llama-server: -np N,
-c N x ctx, --kv-unified as edge-run's cache, the same GGUF and threads); llama-server is built from the source
llama-cpp-python vendors and linked to its libraries (tools/llama_server.py). Each round sends N concurrent
streamed greedy chat requests (a different question per client and round) to one server, then to the other
(the order alternates by round). Per round and server: aggregate tok/s = completion tokens of all N / (last
token - requests sent), and every client's time to first token; reported as medians over rounds, TTFT p50 / p95
over all clients, and the per-round ratio edge-run / llama-server.

Speculative decoding: in one process, greedy decoding of --spec-prompts input-grounded prompts (summarise,
rewrite, answer with a quote, over WikiText-2 test passages) and as many open-ended chat prompts, each once
with --draft ngram and once without, interleaved; outputs compared token for token, decode tok/s ratio
(median of per-prompt ratios) and draft acceptance reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from edge_run.core.fsutil import atomic_write_text, cache_dir
from tests.serve_util import free_port
from tools.bench_serve import QUESTIONS, start, stop

OPEN_PROMPTS = ["Write a short story about a lighthouse keeper.", "Describe your ideal weekend.",
                "Give me three ideas for a birthday party.", "Why do people enjoy music?",
                "Write a poem about autumn leaves.", "What makes a good friend?", "Invent a new board game.",
                "Describe a city in the year 2200.", "What would you pack for a trip to the mountains?",
                "Tell me about a day in the life of a cat."]
TASKS = ["Summarise the following passage in two sentences.\n\n{p}",
         "Rewrite the following passage in simpler English, keeping every fact.\n\n{p}",
         "Quote the sentence of the passage that names the most important fact, then explain it.\n\n{p}"]


def default_file() -> Path:
    from edge_run.converters.gguf.convert import ConvertOptions, convert_to_gguf
    from tools.zoo import zoo_checkpoint

    out = cache_dir() / "bench-serve"
    path = out / "smollm2-135m.Q4_K_M.gguf"
    if not path.exists():
        convert_to_gguf(zoo_checkpoint("smollm2-135m"), out, ConvertOptions(quants="q4_k_m", name="smollm2-135m"))
    return path


def one_request(base: str, model: str, question: str, n_gen: int) -> dict[str, float]:
    body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": n_gen,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    first, last, tokens = None, None, 0
    t0 = time.perf_counter()
    with httpx.Client(timeout=900) as client, client.stream("POST", f"{base}/v1/chat/completions", json=body) as res:
        res.raise_for_status()
        for line in res.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = int(chunk["usage"]["completion_tokens"])
            if any((c.get("delta") or {}).get("content") for c in chunk.get("choices", [])):
                last = time.perf_counter()
                first = first or last
    return {"sent": t0, "ttft_s": (first or t0) - t0, "last": last or t0, "tokens": tokens}


def one_round(base: str, model: str, n: int, round_: int, n_gen: int) -> dict[str, Any]:
    questions = [QUESTIONS[(round_ * n + i) % len(QUESTIONS)] for i in range(n)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        rows = list(pool.map(lambda q: one_request(base, model, q, n_gen), questions))
    end = max(r["last"] for r in rows)
    total = sum(r["tokens"] for r in rows)
    return {"aggregate_tps": total / (end - t0) if end > t0 else 0.0, "tokens": total,
            "ttft_s": [r["ttft_s"] for r in rows]}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def batching(path: Path, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    from tools.llama_server import llama_server

    server_bin = llama_server()
    out: dict[str, Any] = {}
    for n in args.clients:
        ours_port, theirs_port = free_port(), free_port()
        ours = start([sys.executable, "-m", "edge_run.cli.main", "serve", str(path), "--port", str(ours_port),
                      "--threads", str(args.threads), "--ctx", str(args.ctx), "--parallel", str(n),
                      "--queue", str(n)], ours_port, env)
        theirs = None
        try:
            theirs = start([str(server_bin), "-m", str(path), "--port", str(theirs_port), "-t", str(args.threads),
                            "-tb", str(args.threads), "-c", str(n * args.ctx), "-np", str(n), "--kv-unified",
                            "-b", "512", "-ub", "512", "--no-warmup", "--cache-ram", "0"], theirs_port, env)
            bases = {"edge_run": f"http://127.0.0.1:{ours_port}", "llama_server": f"http://127.0.0.1:{theirs_port}"}
            rows: dict[str, list[dict[str, Any]]] = {k: [] for k in bases}
            for r in range(args.rounds + 1):  # round 0 warms both up and is not counted
                order = list(bases) if r % 2 else list(reversed(bases))
                got = {k: one_round(bases[k], path.name, n, r, args.n_gen) for k in order}
                print(f"N={n} round {r}: " + ", ".join(f"{k} {v['aggregate_tps']:.1f} tok/s" for k, v in got.items()),
                      file=sys.stderr)
                if r:
                    for k, v in got.items():
                        rows[k].append(v)
        finally:
            stop(ours)
            if theirs is not None:
                stop(theirs)
        out[str(n)] = {k: {"aggregate_tps": round(statistics.median(v["aggregate_tps"] for v in vs), 2),
                           "runs_aggregate_tps": [round(v["aggregate_tps"], 2) for v in vs],
                           "tokens": [v["tokens"] for v in vs],
                           "ttft_ms_p50": round(1000 * pct([t for v in vs for t in v["ttft_s"]], 0.5), 1),
                           "ttft_ms_p95": round(1000 * pct([t for v in vs for t in v["ttft_s"]], 0.95), 1)}
                       for k, vs in rows.items()}
        pairs = zip(rows["edge_run"], rows["llama_server"], strict=True)
        out[str(n)]["ratio_edge_run_vs_llama_server"] = round(statistics.median(
            a["aggregate_tps"] / b["aggregate_tps"] for a, b in pairs if b["aggregate_tps"]), 3)
    return out


def passages(k: int) -> list[str]:
    from edge_run.runtime.eval.corpora import builtin_corpus_path

    paras = [p.strip() for p in builtin_corpus_path("wikitext-2-raw-test").read_text().split("\n")]
    good = [p for p in paras if 400 <= len(p) <= 900 and not p.startswith("=")]
    step = max(1, len(good) // k)
    return good[::step][:k]


def speculative(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    from edge_run.runtime.artifacts.formats import open_backend
    from edge_run.runtime.backends import GenerationParams, LoadOptions

    grounded = [TASKS[i % len(TASKS)].format(p=p) for i, p in enumerate(passages(args.spec_prompts))]
    sets = {"input_grounded": grounded, "open_chat": (OPEN_PROMPTS * 4)[:args.spec_prompts]}
    params = GenerationParams(max_tokens=args.n_gen * 2)
    backends = {d: open_backend(path, LoadOptions(n_ctx=2048, n_threads=args.threads, draft=d))
                for d in ("", "ngram")}
    out: dict[str, Any] = {}
    try:
        for name, prompts in sets.items():
            ratios, same, plain_tps, spec_tps = [], 0, [], []
            d0, a0 = backends["ngram"].draft_counts()  # type: ignore[attr-defined]
            for i, prompt in enumerate(prompts):
                got = {}
                for d in (("", "ngram") if i % 2 else ("ngram", "")):
                    b = backends[d]
                    tokens = b.chat_prompt_messages([{"role": "user", "content": prompt}])
                    text = "".join(b.stream(tokens, params))
                    assert b.last_result is not None
                    got[d] = (text, b.last_result.decode_tps)
                same += got[""][0] == got["ngram"][0]
                plain_tps.append(got[""][1])
                spec_tps.append(got["ngram"][1])
                if got[""][1]:
                    ratios.append(got["ngram"][1] / got[""][1])
            d1, a1 = backends["ngram"].draft_counts()  # type: ignore[attr-defined]
            out[name] = {"prompts": len(prompts), "identical_outputs": same,
                         "decode_tps_plain": round(statistics.median(plain_tps), 2),
                         "decode_tps_ngram": round(statistics.median(spec_tps), 2),
                         "speedup_median_of_ratios": round(statistics.median(ratios), 3) if ratios else None,
                         "draft_tokens": d1 - d0, "draft_accepted": a1 - a0,
                         "acceptance": round((a1 - a0) / (d1 - d0), 3) if d1 > d0 else None}
            print(f"speculative {name}: {out[name]}", file=sys.stderr)
    finally:
        for b in backends.values():
            b.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", nargs="?", type=Path)
    ap.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n-gen", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--spec-prompts", type=int, default=20)
    ap.add_argument("--skip", choices=["batching", "speculative"], action="append", default=[])
    ap.add_argument("--out", type=Path, default=Path("results/serve_parallel.json"))
    args = ap.parse_args(argv)
    path = args.file or default_file()
    env = {**os.environ}
    env.pop("EDGE_RUN_DEBUG", None)
    from edge_run.runtime.bench import machine_info

    load_before = os.getloadavg()
    result: dict[str, Any] = {"schema": "edge-run-bench-serve-parallel/1", "artifact": path.name,
                              "threads": args.threads, "ctx_per_slot": args.ctx, "n_gen": args.n_gen,
                              "rounds": args.rounds, "machine": machine_info()}
    if "batching" not in args.skip:
        result["batching"] = batching(path, args, env)
    if "speculative" not in args.skip:
        result["speculative"] = speculative(path, args)
    result["load_average"] = {"before": [round(x, 2) for x in load_before],
                              "after": [round(x, 2) for x in os.getloadavg()]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n", force=True)
    print(json.dumps({k: v for k, v in result.items() if k in ("batching", "speculative")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

