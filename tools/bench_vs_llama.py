"""Issue 13's speed table: every edge-run command next to llama.cpp's own tool on the same files and threads.

    python -m tools.bench_vs_llama [--rounds 3] [--bench-rounds N] [--threads N] [--out results/speed.json]
                                                                                             # the whole table
    python -m tools.bench_vs_llama --table results/speed.json                                # print it again
    python -m tools.bench_vs_llama --plain [FILE.gguf ...]     # edge-run's runtime vs plain llama_cpp.Llama only
                                                               # (files given: --plain implied)

Rows (tools/speed_rows.py; each side a separate process, alternating A B / B A per round):
  bench calibration        llama-bench                   vs llama-bench          (SmolLM2 Q8_0: the method's noise)
  bench pp512 / tg128      `edge-run bench`              vs llama-bench          (SmolLM2 F16/Q8_0/Q4_K_M/Q4_0,
                                                                                  0.5B Q4_K_M)
  run, whole process       `edge-run run -n 8`           vs a 6-line llama-cpp-python script
  eval, wall + peak RSS    `edge-run eval --chunks N`    vs llama-perplexity     (SmolLM2 Q4_K_M x20, 0.5B Q4_K_M x8)
  convert, wall + peak RSS `edge-run convert -q q4_k_m`  vs convert_hf_to_gguf.py + llama-quantize
  pick, cold / warm        `edge-run pick` over 3 model folders (3 GGUFs + 2 checkpoints)

llama.cpp's tools are built from the source llama-cpp-python vendors (tools/llama_tools.py); models come from the
zoo (tools/zoo.py; the 0.5B model is BENCH_ZOO's qwen2.5-coder-0.5b). The load average before and after is
recorded: numbers from a machine shared with other jobs are ratios of interleaved runs, not absolutes. A row's
ratio is the median over rounds of edge-run / reference within the round (its two runs are adjacent in time);
the ratio of the two sides' medians is kept beside it.

``--plain``: edge-run's runtime vs plain llama-cpp-python ``Llama`` in one process (src/edge_run/runtime/bench.py's
measurement for both), ratio edge-run / plain (>= 0.97 is the goal).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from edge_run.core.fsutil import atomic_write_text, cache_dir
from edge_run.runtime.backends import GenerationParams
from edge_run.runtime.backends.gguf import FLASH_ATTN, _quiet_stderr
from edge_run.runtime.bench import (
    BackendRunner,
    BenchConfig,
    GenTiming,
    Measurements,
    machine_info,
    measure,
    prompt_text,
    summarize,
)

GOAL = 0.97
DEFAULT_MODELS = ("smollm2-135m", "gemma3-270m")
DEFAULT_QUANTS = "q4_k_m,q8_0"
BIG_MODEL = "qwen2.5-coder-0.5b"  # the 150k-vocabulary model of the table (tools/zoo.py BENCH_ZOO)


class PlainRunner:
    """llama_cpp.Llama used directly, as a user of llama-cpp-python would."""

    def __init__(self, path: Path, config: BenchConfig) -> None:
        import llama_cpp

        t0 = time.perf_counter()
        with _quiet_stderr():
            self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=config.n_ctx, n_threads=config.n_threads,
                                       n_threads_batch=config.n_threads, n_batch=config.n_batch, verbose=False,
                                       flash_attn=FLASH_ATTN[config.flash_attn])  # as edge-run loads it
        self.load_seconds = time.perf_counter() - t0
        self.params = GenerationParams()  # the same sampler settings edge-run uses

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)

    def generate(self, tokens: list[int], n: int) -> GenTiming:
        p = self.params
        t0 = time.perf_counter()
        t_first, count = t0, 0
        self.llm.reset()
        for _ in self.llm.generate(tokens, temp=0.0, top_k=p.top_k, top_p=p.top_p, min_p=p.min_p,
                                     repeat_penalty=p.repeat_penalty, reset=True):
            if count == 0:
                t_first = time.perf_counter()
            count += 1  # end-of-generation tokens too, as edge-run's runner (BackendRunner) counts them
            if count >= n:
                break
        return GenTiming(len(tokens), count, t_first - t0, time.perf_counter() - t_first)

    def close(self) -> None:
        self.llm.close()


def compare(path: Path, config: BenchConfig, text: str) -> dict[str, Any]:
    """One side loaded at a time (an idle pool of the other cannot take a core): each repetition loads each side
    and runs bench.measure on it once, the sides in alternating order."""
    makers = {"edge_run": lambda: BackendRunner(path, config), "plain": lambda: PlainRunner(path, config)}
    runs = {side: Measurements([], [], [], []) for side in makers}
    once = replace(config, repeats=1)
    for i in range(config.repeats):
        for side in (("edge_run", "plain") if i % 2 == 0 else ("plain", "edge_run")):
            runner = makers[side]()
            try:
                m = measure(runner, once, text)
            finally:
                runner.close()
            for field in fields(Measurements):
                getattr(runs[side], field.name).extend(getattr(m, field.name))
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


def plain_main(args: argparse.Namespace) -> int:
    config = BenchConfig(repeats=args.rounds, threads=args.threads)
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
    out = args.out or Path("results/bench_vs_llama.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(doc, indent=2) + "\n", force=True)
    print(json.dumps({r["file"]: r["ratio_edge_run_over_plain"] for r in results}, indent=2))
    return 0


def _zoo_files(model: str, quants: str) -> dict[str, Path]:
    """{QUANT: file} converted by edge-run from the zoo checkpoint (cached under <cache>/bench-vs-llama)."""
    from edge_run.converters.gguf.convert import ConvertOptions, convert_to_gguf
    from edge_run.converters.gguf.quant_types import parse_quant_list
    from tools.zoo import zoo_checkpoint

    out = cache_dir() / "bench-vs-llama"
    want = {q.name: out / f"{model}.{q.name}.gguf" for q in parse_quant_list(quants)}
    missing = [q for q, p in want.items() if not p.exists()]
    if missing:
        convert_to_gguf(zoo_checkpoint(model), out, ConvertOptions(quants=",".join(missing), name=model, force=True))
    return want


def table_main(args: argparse.Namespace) -> int:
    from edge_run.runtime.backends.base import physical_cores
    from edge_run.runtime.eval.corpora import builtin_corpus_path
    from tools import speed_rows as rows
    from tools.llama_tools import installed_version, llama_tools
    from tools.zoo import zoo_checkpoint

    threads = args.threads or physical_cores()
    rows.compile_sources()  # every row's edge-run process imports compiled modules, as an installed wheel does
    needs_tools = not args.only or any(not o.startswith(("run", "pick")) for o in args.only)
    tools = llama_tools() if needs_tools else None
    small = _zoo_files("smollm2-135m", "f16,q8_0,q4_k_m,q4_0")
    big = _zoo_files(BIG_MODEL, "q4_k_m")
    corpus = builtin_corpus_path("wikitext-2-raw-test")
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    n = args.rounds
    nb = args.bench_rounds or n
    reps = args.bench_repeats or rows.BENCH_REPEATS
    todo: list[tuple[str, Any]] = [("bench calibration", lambda: rows.calibration_row(
        tools, small["Q8_0"], threads, nb, "SmolLM2-135M Q8_0", reps))]
    for quant, f in small.items():
        todo.append((f"bench {quant}", lambda f=f, q=quant: rows.bench_row(tools, f, threads, nb, f"SmolLM2-135M {q}",
                                                                          reps)))
    todo.append(("bench big", lambda: rows.bench_row(tools, big["Q4_K_M"], threads, nb, "Qwen2.5-0.5B Q4_K_M", reps)))
    todo.append(("run", lambda: rows.run_row(small["Q4_K_M"], threads, nb, "SmolLM2-135M Q4_K_M")))
    todo.append(("eval small", lambda: rows.eval_row(tools, small["Q4_K_M"], corpus, 20, threads, n,
                                                     "SmolLM2-135M Q4_K_M")))
    todo.append(("eval big", lambda: rows.eval_row(tools, big["Q4_K_M"], corpus, 8, threads, n,
                                                   "Qwen2.5-0.5B Q4_K_M (151k vocabulary)")))
    todo.append(("convert small", lambda: rows.convert_row(tools, zoo_checkpoint("smollm2-135m"), threads, n,
                                                           "SmolLM2-135M")))
    todo.append(("convert big", lambda: rows.convert_row(tools, zoo_checkpoint(BIG_MODEL), threads, n,
                                                         "Qwen2.5-0.5B (fp32)")))
    models = rows.models_folder(cache_dir() / "bench-models",
                                {"smollm2-135m": zoo_checkpoint("smollm2-135m"),
                                 "gemma3-270m": zoo_checkpoint("gemma3-270m")},
                                [small["Q8_0"], small["Q4_K_M"], big["Q4_K_M"]])
    todo.append(("pick", lambda: rows.pick_row(models, n)))
    out = args.out or Path("results/speed.json")
    # --only updates those rows of an existing table (each row records the load average it ran under)
    results = json.loads(out.read_text())["rows"] if args.only and out.exists() else []
    for name, make in todo:
        if args.only and not any(name.startswith(o) for o in args.only):
            continue
        print(f"[{time.perf_counter() - t0:6.0f} s] {name} ...", file=sys.stderr, flush=True)
        load = os.getloadavg()[0]
        try:
            row = make().to_dict()
        except SystemExit as e:  # a failed command: the other rows are still worth having
            print(f"{name} failed: {e}", file=sys.stderr, flush=True)
            continue
        row["load_average"] = [round(load, 2), round(os.getloadavg()[0], 2)]
        results = [r for r in results if r["row"] != row["row"]] + [row]
    doc = {"schema": "edge-run-speed/1", "threads": threads, "rounds": n, "llama_cpp_python": installed_version(),
           "flash_attn": "auto on both sides (edge-run's and llama.cpp's tools' default; on for the CPU backend)",
           "machine": machine_info(), "load_average_before": [round(x, 2) for x in load_before],
           "load_average_after": [round(x, 2) for x in os.getloadavg()],
           "seconds": round(time.perf_counter() - t0, 1), "rows": results}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(doc, indent=2) + "\n", force=True)
    print(markdown(doc))
    return 0


def _fmt(d: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in d.items())


def markdown(doc: dict[str, Any]) -> str:
    lines = [f"threads {doc['threads']}; rows run at different times (`--only`) keep their own rounds and load "
             f"average; the latest run: load average {doc['load_average_before'][0]} -> "
             f"{doc['load_average_after'][0]}", "",
             "| row | edge-run (median) | reference (median) | ratio (median of paired rounds) [95% bootstrap] "
             "| goal | rounds | load avg |",
             "|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        ref = f"{r['reference']}: {_fmt(r['reference_median'])}" if r["reference_median"] else r["reference"]
        load = "-".join(str(x) for x in r.get("load_average", []))
        ci = r.get("ratio_ci95", {})
        ratio = ", ".join(f"{k} {v:g}" + (f" [{ci[k][0]:g}-{ci[k][1]:g}]" if k in ci else "")
                          for k, v in r["ratio"].items())
        lines.append(f"| {r['row']} | {_fmt(r['edge_run'])} | {ref} | {ratio} | {r['goal']} | "
                     f"{len(r['runs']['edge_run'])} | {load} |")
    return "\n".join(lines + pooled_bench(doc["rows"]))


def pooled_bench(rows: list[dict[str, Any]], below: float = 0.97) -> list[str]:
    """The bench rows' rounds taken together, beside the calibration row: the median paired ratio with its
    bootstrap interval, and how often a single round reads under ``below`` on each side. Where llama-bench
    against itself falls under the goal as often as edge-run does, a row under it is the machine, not edge-run."""
    from tools.speed_rows import Row

    bench = [r for r in rows if r["row"].startswith("bench pp")]
    calibration = next((r for r in rows if r["row"].startswith("bench calibration")), None)
    if not bench or calibration is None:
        return []
    pooled = Row("pooled", edge_run=[x for r in bench for x in r["runs"]["edge_run"]],
                 reference=[x for r in bench for x in r["runs"]["reference"]])
    ratio, ci = pooled.paired_ratios(), pooled.ratio_intervals()
    together = {"runs": {"edge_run": pooled.edge_run, "reference": pooled.reference}}

    def share(r: dict[str, Any], k: str) -> str:
        pairs = list(zip(r["runs"]["edge_run"], r["runs"]["reference"], strict=False))
        return f"{sum(e[k] / ref[k] < below for e, ref in pairs) / len(pairs):.0%}"

    parts = [f"{k} {v:g} [{ci[k][0]:g}-{ci[k][1]:g}] (single rounds under {below:g}: {share(together, k)}; "
             f"calibration's: {share(calibration, k)})" for k, v in ratio.items()]
    return ["", f"bench rows pooled ({len(bench)} rows x their rounds): " + ", ".join(parts)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", type=Path, help="GGUF files: compare them with --plain's method only")
    ap.add_argument("--plain", action="store_true", help="only edge-run's runtime vs plain llama_cpp.Llama")
    ap.add_argument("--rounds", "--repeats", type=int, default=3, help="interleaved rounds per row")
    ap.add_argument("--bench-rounds", type=int, default=None,
                    help="rounds of the bench and run rows (default --rounds): short rows whose ratios sit within a "
                         "few percent of their goals, where one round of a 2-core machine moves +-10%%")
    ap.add_argument("--bench-repeats", type=int, default=None,
                    help="repetitions inside each bench process, both tools (default tools/speed_rows.BENCH_REPEATS: "
                         "5, llama-bench's -r)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--only", nargs="*", help="row name prefixes to run (bench, run, eval, convert, pick)")
    ap.add_argument("--table", type=Path, help="print the markdown table of a results JSON and exit")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.table:
        print(markdown(json.loads(args.table.read_text())))
        return 0
    return plain_main(args) if args.plain or args.files else table_main(args)


if __name__ == "__main__":
    sys.exit(main())
