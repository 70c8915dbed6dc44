"""Greedy decoding's two samplers side by side, in one process on one context: llama.cpp's sampler chain
(penalties off -> greedy, through ``llama_sampler_sample``) and GreedyPick (numpy's argmax on llama.cpp's logits
row in place; src/edge_run/runtime/backends/llama_loop.py).

    per-token cost: the same logits row sampled K times by each, alternating blocks    -> us per token
    decode:         tg128 (a 1-token prompt, 128 tokens, end-of-text ignored) with each, alternating -> tok/s

Both stay inside one process on the same warm context, so nothing differs between the two sides but the sampler.
The per-token cost is tight (a block of 2,000 samplings); a 128-token decode still moves +-20% from round to round
on a 2-core VM, too much to show a 1% change. Every decode round also checks that both give the same tokens.

    python -m tools.bench_sampler [FILE.gguf ...] [--rounds 15] [--out results/sampler.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

from edge_run.core.fsutil import atomic_write_text
from edge_run.runtime.artifacts.formats import open_backend
from edge_run.runtime.backends import GenerationParams, LoadOptions, llama_loop
from edge_run.runtime.backends.base import physical_cores
from edge_run.runtime.backends.gguf import GGUFBackend
from tools.bench_vs_llama import machine_info

SAMPLES_PER_BLOCK = 2000
N_GEN = 128


SAMPLERS: dict[str, Any] = {  # make_sampler's signature: (lc, n_vocab, params) -> a sampler
    "chain": llama_loop.SamplerChain,
    "greedy_pick": lambda lc, n_vocab, params: llama_loop.GreedyPick(lc, n_vocab),
}


def per_token_us(backend: GGUFBackend, make: Any) -> float:
    """One block of SAMPLES_PER_BLOCK samplings of the context's current logits row: microseconds each."""
    import llama_cpp

    sampler = make(llama_cpp, backend.n_vocab, GenerationParams(temperature=0.0))
    ctx = backend.llm.ctx
    try:
        t0 = time.perf_counter()
        for _ in range(SAMPLES_PER_BLOCK):
            sampler.sample(ctx)
        return (time.perf_counter() - t0) / SAMPLES_PER_BLOCK * 1e6
    finally:
        sampler.close()


def decode(backend: GGUFBackend, bos: list[int], make: Any) -> tuple[float, list[int]]:
    """tg128 from an empty cache with the sampler ``make`` builds; tokens/s and the tokens."""
    params = GenerationParams(max_tokens=N_GEN, temperature=0.0, ignore_eos=True)
    original = llama_loop.make_sampler
    llama_loop.make_sampler = make  # the loop looks it up at each generation
    try:
        backend.drop_cache()
        stream = backend.token_stream(bos, params)
        assert isinstance(stream, Generator)
        first = next(stream)  # the 1-token prompt is evaluated here, untimed, as llama-bench's tg does
        t0 = time.perf_counter()
        tokens = [first] + [next(stream) for _ in range(N_GEN - 1)]
        dt = time.perf_counter() - t0
        stream.close()
    finally:
        llama_loop.make_sampler = original
    return (N_GEN - 1) / dt, tokens


def measure(path: Path, rounds: int, threads: int) -> dict[str, Any]:
    with open_backend(path, LoadOptions(n_ctx=N_GEN + 8, n_threads=threads, reuse_prefix=False)) as b:
        assert isinstance(b, GGUFBackend)
        bos = b.tokenize("")[:1] or b.tokenize("The")[:1]
        decode(b, bos, llama_loop.make_sampler)  # warm-up: buffers, pages
        us: dict[str, list[float]] = {k: [] for k in SAMPLERS}
        tps: dict[str, list[float]] = {k: [] for k in SAMPLERS}
        for r in range(rounds):
            order = list(SAMPLERS) if r % 2 == 0 else list(reversed(SAMPLERS))
            got: dict[str, list[int]] = {}
            for name in order:
                rate, got[name] = decode(b, bos, SAMPLERS[name])
                tps[name].append(rate)
                us[name].append(per_token_us(b, SAMPLERS[name]))
            if got["chain"] != got["greedy_pick"]:
                raise SystemExit(f"{path.name}: the samplers disagree in round {r}")
        n_vocab = b.n_vocab
    ratio = [g / c for g, c in zip(tps["greedy_pick"], tps["chain"], strict=True)]
    return {"file": path.name, "n_vocab": n_vocab, "rounds": rounds,
            "sample_us": {k: round(statistics.median(v), 2) for k, v in us.items()},
            "decode_tps": {k: round(statistics.median(v), 2) for k, v in tps.items()},
            "decode_ratio_greedy_pick_vs_chain": round(statistics.median(ratio), 4),
            "decode_ratio_range": [round(min(ratio), 4), round(max(ratio), 4)],
            "same_tokens": True, "runs": {"sample_us": us, "decode_tps": tps}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", type=Path)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("results/sampler.json"))
    args = ap.parse_args(argv)
    files = args.files
    if not files:
        from tools.bench_vs_llama import BIG_MODEL, _zoo_files

        files = [*_zoo_files("smollm2-135m", "q8_0,q4_0").values(), _zoo_files(BIG_MODEL, "q4_k_m")["Q4_K_M"]]
    threads = args.threads or physical_cores()
    rows = []
    for f in files:
        print(f"{f.name} ...", file=sys.stderr, flush=True)
        rows.append(measure(f, args.rounds, threads))
        r = rows[-1]
        print(f"  sample {r['sample_us']} us, decode {r['decode_tps']} tok/s, ratio "
              f"{r['decode_ratio_greedy_pick_vs_chain']} {r['decode_ratio_range']}", file=sys.stderr, flush=True)
    doc = {"schema": "edge-run-sampler/1", "threads": threads, "n_gen": N_GEN,
           "samples_per_block": SAMPLES_PER_BLOCK, "machine": machine_info(), "rows": rows}
    atomic_write_text(args.out, json.dumps(doc, indent=2) + "\n", force=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
