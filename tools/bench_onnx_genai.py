"""edge-run's ONNX backend vs onnxruntime-genai on the same artifact: decode and prompt speed, interleaved.

    python -m tools.bench_onnx_genai [--model smollm2-135m] [--rounds 5] [--threads N] [--out results/onnx_genai.json]

The artifact is the zoo checkpoint converted by `edge-run convert --format onnx --quant int4` (cached under
edge-run's cache folder). onnxruntime-genai opens it through its genai_config.json, in a copy whose session
options carry the same intra-op thread count as edge-run's backend. Both sides decode greedily from the same
prompt tokens for a fixed number of tokens (end-of-sequence is not allowed to stop either). Each round runs
each side in a process of its own (warm-up, then --repeats timed generations), in alternating order: in one
shared process the two onnxruntime copies (the Python binding's and genai's libonnxruntime) and their thread
pools slowed edge-run's side by ~6% (0.936x), while in separate processes the two were within 1%. Decode speed
is (n - 1) / (time of the last token - time of the first): the first token carries the prompt, reported apart
as time to first token.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_run.converters.onnx.convert import OnnxOptions, convert_to_onnx
from edge_run.core.fsutil import atomic_write_text, cache_dir
from edge_run.runtime.artifacts.formats import open_backend
from edge_run.runtime.backends import GenerationParams, LoadOptions
from edge_run.runtime.backends.base import physical_cores
from edge_run.runtime.bench import machine_info, prompt_text
from tools.zoo import zoo_checkpoint

Timing = tuple[float, float]  # (time to first token, decode tokens/s)
SIDES = ("edge-run", "onnxruntime-genai")


def artifact(model: str) -> Path:
    work = cache_dir() / "bench-onnx-genai" / model
    made = sorted(work.glob("*/model.onnx"))  # converted by an earlier run (conversions are atomic)
    if made:
        return made[0].parent
    (path,) = convert_to_onnx(zoo_checkpoint(model), work, OnnxOptions(quant="int4", name=model))
    return Path(path)


def genai_copy(art: Path, threads: int, dest: Path) -> Path:
    """The artifact's files linked into ``dest``, with genai_config.json's session options set to ``threads``."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in art.iterdir():
        if f.name != "genai_config.json" and not (dest / f.name).exists():
            os.symlink(f.resolve(), dest / f.name)
    cfg = json.loads((art / "genai_config.json").read_text())
    cfg["model"]["decoder"]["session_options"]["intra_op_num_threads"] = threads
    (dest / "genai_config.json").write_text(json.dumps(cfg, indent=2))
    return dest


def timed(tokens: Any) -> Timing:
    t0 = time.perf_counter()
    stamps = [time.perf_counter() for _ in tokens]
    return stamps[0] - t0, (len(stamps) - 1) / (stamps[-1] - stamps[0])


def edge_run_side(art: Path, threads: int, ctx: int) -> tuple[Callable[[list[int], int], Timing], Any]:
    backend = open_backend(art, LoadOptions(n_ctx=ctx, n_threads=threads))

    def run(prompt: list[int], n: int) -> Timing:
        return timed(itertools.islice(backend.token_stream(prompt, GenerationParams(max_tokens=n)), n))

    return run, backend


def genai_side(folder: Path) -> Callable[[list[int], int], Timing]:
    import onnxruntime_genai as og

    model = og.Model(str(folder))

    def run(prompt: list[int], n: int) -> Timing:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(prompt) + n, min_length=len(prompt) + n, do_sample=False)
        gen = og.Generator(model, params)

        def tokens() -> Any:
            gen.append_tokens(prompt)
            while not gen.is_done():
                gen.generate_next_token()
                yield int(gen.get_next_tokens()[0])

        return timed(tokens())

    return run


def child(args: argparse.Namespace) -> int:
    """One side in a process of its own: load, warm up, ``--repeats`` timed generations; JSON on stdout."""
    prompt = [int(t) for t in args.prompt.split(",")]
    if args.child == "edge-run":
        run, _backend = edge_run_side(args.art, args.threads, len(prompt) + args.gen_tokens + 16)  # kept open
    else:
        run = genai_side(args.art)
    run(prompt, 8)  # warm-up, not recorded
    print(json.dumps([run(prompt, args.gen_tokens) for _ in range(args.repeats)]))
    return 0


def spawn(side: str, art: Path, prompt: list[int], args: argparse.Namespace) -> list[Timing]:
    cmd = [sys.executable, "-m", "tools.bench_onnx_genai", "--child", side, "--art", str(art), "--prompt",
           ",".join(map(str, prompt)), "--threads", str(args.threads), "--gen-tokens", str(args.gen_tokens),
           "--repeats", str(args.repeats)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return [(float(a), float(b)) for a, b in json.loads(out.strip().splitlines()[-1])]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench_onnx_genai", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3, help="timed generations per process")
    ap.add_argument("--threads", type=int, default=physical_cores())
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--out", type=Path, default=Path("results/onnx_genai.json"))
    ap.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    ap.add_argument("--art", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--prompt", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    from tokenizers import Tokenizer

    load_before = os.getloadavg()
    art = artifact(args.model)
    prompt = list(Tokenizer.from_file(str(art / "tokenizer.json")).encode(prompt_text()).ids[: args.prompt_tokens])
    scratch = cache_dir() / "bench-onnx-genai" / f"genai-{os.getpid()}"
    folders = {"edge-run": art, "onnxruntime-genai": genai_copy(art, args.threads, scratch)}
    runs: dict[str, list[list[Timing]]] = {name: [] for name in SIDES}
    try:
        for r in range(args.rounds):
            for name in (SIDES if r % 2 == 0 else SIDES[::-1]):
                runs[name].append(spawn(name, folders[name], prompt, args))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    per_round = {name: [statistics.median(t for _, t in rnd) for rnd in v] for name, v in runs.items()}
    paired = statistics.median(a / b for a, b in zip(per_round["edge-run"], per_round["onnxruntime-genai"],
                                                     strict=True))
    summary = {name: {"decode_tok_s": round(statistics.median(per_round[name]), 2),
                      "ttft_ms": round(1000 * statistics.median(f for rnd in v for f, _ in rnd), 2),
                      "decode_per_round": [round(t, 2) for t in per_round[name]]} for name, v in runs.items()}
    ratio_of_medians = statistics.median(per_round["edge-run"]) / statistics.median(per_round["onnxruntime-genai"])
    result = {"model": args.model, "artifact": "int4 (edge-run convert --format onnx --quant int4)",
              "threads": args.threads, "rounds": args.rounds, "repeats_per_process": args.repeats,
              "prompt_tokens": len(prompt), "gen_tokens": args.gen_tokens,
              "method": "each side in its own process per round (alternating order), warm-up then repeats; "
                        "the ratio is the median over rounds of the within-round ratio of per-process medians",
              "machine": machine_info(), "load_average_before": load_before, "load_average_after": os.getloadavg(),
              "sides": summary, "decode_ratio": round(paired, 3), "ratio_of_medians": round(ratio_of_medians, 3),
              "goal": "decode ratio >= 1.0"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n", force=True)
    for name, s in summary.items():
        print(f"{name:18} decode {s['decode_tok_s']:7.1f} tok/s   first token {s['ttft_ms']:6.1f} ms")
    print(f"decode ratio edge-run / onnxruntime-genai: {paired:.3f} (goal >= 1.0)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
