"""`edge-run serve` through HTTP vs the same model in-process vs llama-cpp-python's own server, on one GGUF.

    python -m tools.bench_serve [FILE.gguf] [--rounds 5] [--n-gen 128] [--threads N] [--out results/serve.json]
    python -m tools.bench_serve parallel ...      serve --parallel N vs llama-server (tools/bench_serve_parallel.py)

Columns, measured in interleaved order each round (in-process, edge-run HTTP, llama_cpp.server HTTP), every one
a streamed greedy chat completion of the same conversation (a different question each round, so no column gets
a warmer KV cache than another):

- decode tok/s: (tokens - 1) / (last token - first token); over HTTP a token is one SSE chunk with content;
- TTFT: request sent -> first content token (HTTP: first content chunk read by the client);
- follow-up-turn TTFT: turn 2 of a conversation (turn 1, its answer, a new question) with the KV prefix kept from
  turn 1 vs evaluated from scratch (in-process, prefix reuse on / off);
- RSS: the idle server after one request vs `edge-run run`'s peak.

llama_cpp.server needs `pip install 'llama-cpp-python[server]'` (fastapi, pydantic-settings, starlette-context);
without it that column is skipped with a note. Without FILE it converts the zoo's SmolLM2-135M to Q8_0.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from edge_run.core.fsutil import atomic_write_text, cache_dir
from edge_run.runtime.artifacts.formats import open_backend
from edge_run.runtime.backends import Backend, GenerationParams, LoadOptions
from edge_run.runtime.bench import machine_info
from tests.serve_util import free_port

QUESTIONS = ["What is the capital of France?", "Explain how a rainbow forms.", "Why is the sky blue?",
             "Describe the water cycle.", "What do bees do in winter?", "How does a bicycle stay upright?",
             "What is photosynthesis?", "Why do cats purr?", "How are mountains formed?", "What is a black hole?"]
SYSTEM = ("You are a helpful assistant. Answer in detail, with examples, in plain English, as a teacher would "
          "explain it to a curious student. ") * 3
FOLLOW_UP = "Now explain it again for a five-year-old."


def messages(i: int) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]


def in_process(backend: Backend, msgs: list[dict[str, str]], n_gen: int) -> dict[str, float]:
    t0 = time.perf_counter()
    tokens = backend.chat_prompt_messages(msgs)
    times: list[float] = []
    text = []
    for piece in backend.stream(tokens, GenerationParams(max_tokens=n_gen, temperature=0.0)):
        times.append(time.perf_counter())
        text.append(piece)
    r = backend.last_result
    assert r is not None
    return {"ttft_s": times[0] - t0 if times else float("nan"), "decode_tps": r.decode_tps,
            "tokens": r.completion_tokens, "text": "".join(text)}


def over_http(base: str, model: str, msgs: list[dict[str, str]], n_gen: int) -> dict[str, float]:
    body = {"model": model, "messages": msgs, "max_tokens": n_gen, "temperature": 0, "stream": True}
    times: list[float] = []
    with httpx.Client(timeout=600) as client:
        t0 = time.perf_counter()
        with client.stream("POST", f"{base}/v1/chat/completions", json=body) as res:
            res.raise_for_status()
            for line in res.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if any((c.get("delta") or {}).get("content") for c in chunk.get("choices", [])):
                    times.append(time.perf_counter())
    n = len(times)
    return {"ttft_s": times[0] - t0 if times else float("nan"),
            "decode_tps": (n - 1) / (times[-1] - times[0]) if n > 1 and times[-1] > times[0] else 0.0, "tokens": n}


def start(cmd: list[str], port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[:4]} exited: {proc.stderr.read().decode()[-1500:] if proc.stderr else ''}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"{cmd[:4]} did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def follow_up_ttft(path: Path, threads: int, ctx: int, rounds: int, n_gen: int) -> dict[str, Any]:
    """Turn 2 of a conversation: TTFT with the KV cache of turn 1 kept vs the whole prompt evaluated again."""
    out: dict[str, list[float]] = {"reuse": [], "no_reuse": []}
    prompt_tokens = []
    for reuse in (True, False) * rounds:
        with open_backend(path, LoadOptions(n_ctx=ctx, n_threads=threads, reuse_prefix=reuse)) as b:
            msgs = messages(0)
            first = in_process(b, msgs, n_gen)
            turn2 = [*msgs, {"role": "assistant", "content": str(first["text"])},
                     {"role": "user", "content": FOLLOW_UP}]
            tokens = b.chat_prompt_messages(turn2)
            for _ in b.stream(tokens, GenerationParams(max_tokens=1)):
                pass
            r = b.last_result
            out["reuse" if reuse else "no_reuse"].append(r.prefill_seconds if r else 0.0)
            prompt_tokens.append(len(tokens))
    med = {k: statistics.median(v) for k, v in out.items()}
    return {"prompt_tokens": max(prompt_tokens), "ttft_s_reuse": round(med["reuse"], 4),
            "ttft_s_no_reuse": round(med["no_reuse"], 4),
            "ratio": round(med["reuse"] / med["no_reuse"], 3) if med["no_reuse"] else None,
            "runs": {k: [round(x, 4) for x in v] for k, v in out.items()}}


def idle_rss_mib(pid: int) -> float:
    return round(psutil.Process(pid).memory_info().rss / 2**20, 1)


def run_peak_rss(path: Path, threads: int, env: dict[str, str]) -> float:
    res = subprocess.run([sys.executable, "-m", "edge_run.cli.main", "run", str(path), "-p", QUESTIONS[0],
                          "--chat", "-n", "32", "--json", "--threads", str(threads)], capture_output=True, text=True,
                         env=env, check=True)
    return float(json.loads(res.stdout)["peak_rss_mib"])


def default_file() -> Path:
    from edge_run.converters.gguf.convert import ConvertOptions, convert_to_gguf
    from tools.zoo import zoo_checkpoint

    out = cache_dir() / "bench-serve"
    path = out / "smollm2-135m.Q8_0.gguf"
    if not path.exists():
        convert_to_gguf(zoo_checkpoint("smollm2-135m"), out, ConvertOptions(quants="q8_0", name="smollm2-135m"))
    return path


def summary(rows: list[dict[str, float]]) -> dict[str, Any]:
    return {"ttft_ms": round(1000 * statistics.median(r["ttft_s"] for r in rows), 2),
            "decode_tps": round(statistics.median(r["decode_tps"] for r in rows), 2),
            "tokens": [int(r["tokens"]) for r in rows],
            "runs_ttft_ms": [round(1000 * r["ttft_s"], 2) for r in rows],
            "runs_decode_tps": [round(r["decode_tps"], 2) for r in rows]}


def ratios(cols: dict[str, Any]) -> dict[str, Any]:
    """Medians of the columns' medians, and medians of per-round pairs (same round = same load, same question)."""
    def paired(a: str, b: str, key: str, op: str) -> float | None:
        if a not in cols or b not in cols:
            return None
        pairs = zip(cols[a][key], cols[b][key], strict=True)
        values = [x / y if op == "ratio" else x - y for x, y in pairs if y]
        return round(statistics.median(values), 3) if values else None

    return {
        "http_decode_vs_in_process": paired("edge_run_http", "in_process", "runs_decode_tps", "ratio"),
        "http_ttft_overhead_ms": paired("edge_run_http", "in_process", "runs_ttft_ms", "diff"),
        "edge_run_vs_llama_cpp_server_decode": paired("edge_run_http", "llama_cpp_server_http", "runs_decode_tps",
                                                      "ratio"),
        "edge_run_vs_llama_cpp_server_ttft_ms": paired("edge_run_http", "llama_cpp_server_http", "runs_ttft_ms",
                                                       "diff"),
        "note": "medians over rounds of per-round ratios / differences",
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["parallel"]:  # serve --parallel N vs llama-server, --draft ngram vs plain
        from tools.bench_serve_parallel import main as parallel_main

        return parallel_main(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", nargs="?", type=Path)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n-gen", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--out", type=Path, default=Path("results/serve.json"))
    args = ap.parse_args(argv)
    path = args.file or default_file()
    env = {**os.environ}
    env.pop("EDGE_RUN_DEBUG", None)
    load_before = os.getloadavg()

    ours_port, theirs_port = free_port(), free_port()
    ours = start([sys.executable, "-m", "edge_run.cli.main", "serve", str(path), "--port", str(ours_port),
                  "--threads", str(args.threads), "--ctx", str(args.ctx)], ours_port, env)
    theirs = None
    note = None
    try:
        import llama_cpp.server  # noqa: F401

        theirs = start([sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--port", str(theirs_port),
                        "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads),
                        "--n_ctx", str(args.ctx), "--verbose", "false"], theirs_port, env)
    except (ImportError, RuntimeError) as e:
        note = f"llama_cpp.server column skipped: {e}"
    rows: dict[str, list[dict[str, float]]] = {"in_process": [], "edge_run_http": [], "llama_cpp_server_http": []}
    try:
        with open_backend(path, LoadOptions(n_ctx=args.ctx, n_threads=args.threads)) as backend:
            for i in range(args.rounds + 1):  # round 0 warms every column up and is not counted
                msgs = messages(i)
                got = {"in_process": in_process(backend, msgs, args.n_gen),
                       "edge_run_http": over_http(f"http://127.0.0.1:{ours_port}", path.name, msgs, args.n_gen)}
                if theirs is not None:
                    got["llama_cpp_server_http"] = over_http(f"http://127.0.0.1:{theirs_port}", path.name, msgs,
                                                             args.n_gen)
                if i:
                    for k, v in got.items():
                        rows[k].append(v)
                print(f"round {i}: " + ", ".join(f"{k} {v['decode_tps']:.1f} tok/s ttft {1000 * v['ttft_s']:.1f} ms"
                                                 for k, v in got.items()), file=sys.stderr)
        rss = {"edge_run_serve_idle": idle_rss_mib(ours.pid),
               "llama_cpp_server_idle": idle_rss_mib(theirs.pid) if theirs is not None else None}
    finally:
        stop(ours)
        if theirs is not None:
            stop(theirs)
    rss["edge_run_run_peak"] = run_peak_rss(path, args.threads, env)
    follow = follow_up_ttft(path, args.threads, args.ctx, max(3, args.rounds // 2), 64)
    result: dict[str, Any] = {
        "schema": "edge-run-bench-serve/1", "artifact": path.name, "threads": args.threads, "n_ctx": args.ctx,
        "n_gen": args.n_gen, "rounds": args.rounds,
        "columns": {k: summary(v) for k, v in rows.items() if v},
        "follow_up_turn": follow, "rss_mib": rss, "machine": machine_info(),
        "load_average": {"before": [round(x, 2) for x in load_before],
                         "after": [round(x, 2) for x in os.getloadavg()]},
        "note": "2-core machine shared with other jobs while measuring: compare columns (interleaved), "
                "not absolute numbers" + (f"; {note}" if note else ""),
    }
    result["ratios"] = ratios(result["columns"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n", force=True)
    print(json.dumps({k: result[k] for k in ("columns", "follow_up_turn", "rss_mib", "load_average")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
