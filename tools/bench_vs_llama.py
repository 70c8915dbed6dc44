"""edge-run's GGUF runtime vs plain llama-cpp-python ``Llama`` on the same file, threads and prompts.

Both sides go through the same measurement (runtime/bench.py: load, warm-up, pp512 prefill, tg128 greedy
decode), with the same sampling settings, in interleaved order (A B, B A, A B ...) so drifting machine
load hits both alike. The ratio is edge-run / plain for tokens/s (>= 0.97 is the goal: the wrapper may
cost at most 3 %).

    python -m tools.bench_vs_llama [FILE.gguf ...] [--repeats 5] [--threads N] [--out results/bench_vs_llama.json]

Without files it converts the zoo models to Q4_K_M and Q8_0 (cached under <edge-run cache>/bench-vs-llama).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from edge_run.runtime.backends import GenerationParams
from edge_run.runtime.backends.gguf import _quiet_stderr
from edge_run.runtime.bench import (
    BackendRunner,
    BenchConfig,
    GenTiming,
    RepeatResult,
    machine_info,
    measure_once,
    prompt_text,
    summarize,
)
from edge_run.runtime.fsutil import atomic_write_text, cache_dir

GOAL = 0.97
DEFAULT_MODELS = ("smollm2-135m", "gemma3-270m")
DEFAULT_QUANTS = "q4_k_m,q8_0"


class PlainRunner:
    """llama_cpp.Llama used directly, as a user of llama-cpp-python would."""

    def __init__(self, path: Path, config: BenchConfig) -> None:
        import llama_cpp

        self._llama_cpp = llama_cpp
        t0 = time.perf_counter()
        with _quiet_stderr():
            self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=config.n_ctx, n_threads=config.n_threads,
                                       n_threads_batch=config.n_threads, n_batch=config.n_batch, verbose=False)
        self.load_seconds = time.perf_counter() - t0
        self.params = GenerationParams()  # the same sampler settings edge-run uses

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)

    def generate(self, tokens: list[int], n: int) -> GenTiming:
        p = self.params
        vocab = self.llm._model.vocab
        t0 = time.perf_counter()
        t_first, count = t0, 0
        self.llm.reset()
        for tok in self.llm.generate(tokens, temp=0.0, top_k=p.top_k, top_p=p.top_p, min_p=p.min_p,
                                     repeat_penalty=p.repeat_penalty, reset=True):
            if count == 0:
                t_first = time.perf_counter()
            if self._llama_cpp.llama_vocab_is_eog(vocab, tok):
                break
            count += 1
            if count >= n:
                break
        return GenTiming(len(tokens), count, t_first - t0, time.perf_counter() - t_first)

    def close(self) -> None:
        self.llm.close()


def compare(path: Path, config: BenchConfig, text: str) -> dict[str, Any]:
    runs: dict[str, list[RepeatResult]] = {"edge_run": [], "plain": []}
    makers = {"edge_run": lambda: BackendRunner(path, config), "plain": lambda: PlainRunner(path, config)}
    for i in range(config.repeats):
        order = ("edge_run", "plain") if i % 2 == 0 else ("plain", "edge_run")
        for side in order:
            runs[side].append(measure_once(makers[side], config, text))
    sides = {side: summarize(r, config) for side, r in runs.items()}

    def ratio(metric: str) -> float:
        a = statistics.median(x for x in sides["edge_run"][metric]["tokens_per_s"]["runs"])
        b = statistics.median(x for x in sides["plain"][metric]["tokens_per_s"]["runs"])
        return round(a / b, 4) if b else float("nan")

    ratios = {"prefill": ratio("prefill"), "decode": ratio("decode")}
    return {"file": path.name, "file_size": path.stat().st_size, **sides, "ratio_edge_run_over_plain": ratios,
            "meets_goal": all(v >= GOAL for v in ratios.values())}


def default_files() -> list[Path]:
    from edge_run.converters.gguf.convert import ConvertOptions, convert_to_gguf
    from edge_run.converters.gguf.quant_types import parse_quant_list
    from tools.zoo import zoo_checkpoint

    out = cache_dir() / "bench-vs-llama"
    files: list[Path] = []
    for model in DEFAULT_MODELS:
        want = [out / f"{model}.{q.name}.gguf" for q in parse_quant_list(DEFAULT_QUANTS)]
        if not all(p.exists() for p in want):
            convert_to_gguf(zoo_checkpoint(model), out, ConvertOptions(quants=DEFAULT_QUANTS, name=model, force=True))
        files += want
    return files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", type=Path)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("results/bench_vs_llama.json"))
    args = ap.parse_args(argv)
    config = BenchConfig(repeats=args.repeats, threads=args.threads)
    files = args.files or default_files()
    text = prompt_text()
    results = []
    for f in files:
        r = compare(f, config, text)
        results.append(r)
        rr = r["ratio_edge_run_over_plain"]
        print(f"{f.name}: prefill {r['edge_run']['prefill']['tokens_per_s']['median']:.1f} vs "
              f"{r['plain']['prefill']['tokens_per_s']['median']:.1f} tok/s (ratio {rr['prefill']:.3f}); decode "
              f"{r['edge_run']['decode']['tokens_per_s']['median']:.1f} vs "
              f"{r['plain']['decode']['tokens_per_s']['median']:.1f} tok/s (ratio {rr['decode']:.3f})",
              file=sys.stderr, flush=True)
    doc = {"schema": "edge-run-bench-vs-llama/1", "goal_ratio": GOAL, "threads": config.n_threads,
           "repeats": config.repeats, "n_prompt": config.n_prompt, "n_gen": config.n_gen,
           "machine": machine_info(), "results": results,
           "all_meet_goal": all(r["meets_goal"] for r in results)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(doc, indent=2) + "\n", force=True)
    print(json.dumps({r["file"]: r["ratio_edge_run_over_plain"] for r in results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
