"""Check the memory estimator against measured peak RSS.

For every artifact x context, a fresh process loads the artifact with llama-cpp-python, evaluates a
prompt of one full batch (512 tokens, or ctx - 16 when smaller) and reports its peak RSS (VmHWM) and
the anonymous / file-backed split (/proc/self/smaps_rollup). Goal: |error| <= 5% or <= 16 MiB.

    python -m tools.validate_estimator [ARTIFACT.gguf ...] [--ctx 512 2048 8192] [--out results/estimator.json]

Without artifacts, the zoo models are converted (Q8_0, Q4_K_M, F16) into a temp folder first.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from edge_run.runtime.estimate.gguf import estimate_memory, host_simd, shape_from_gguf
from tools.rss_probe import run_probe

_PROBE = r"""
import numpy, llama_cpp, edge_run.runtime.backends
base = rollup()
path, ctx, n_prompt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
llm = llama_cpp.Llama(path, n_ctx=ctx, n_threads=2, n_batch=512, n_ubatch=512, flash_attn=sys.argv[5] == "on",
                      verbose=False)
text = open(sys.argv[4], encoding='utf-8').read()[:20000]
tokens = llm.tokenize(text.encode())[:n_prompt]
llm.eval(tokens)
report(base)
"""

GOAL_REL, GOAL_ABS_MIB = 0.05, 16.0


def measure(path: Path, ctx: int, n_prompt: int, flash_attn: bool = True) -> dict[str, float]:
    """Peak RSS of a fresh process; flash attention on as edge-run loads GGUFs (llama.cpp's default)."""
    from edge_run.runtime.eval.corpora import builtin_corpus_path

    return run_probe(_PROBE, str(path), str(ctx), str(n_prompt), str(builtin_corpus_path("wikitext-2-raw-test")),
                     "on" if flash_attn else "off")


def validate(artifacts: list[Path], contexts: list[int]) -> list[dict]:
    simd = host_simd()
    rows = []
    for path in artifacts:
        shape = shape_from_gguf(path)
        for ctx in contexts:
            n_prompt = min(512, ctx - 16)
            est = estimate_memory(shape, ctx, simd, n_prompt=n_prompt, mmap="on")  # the probe loads with mmap
            got = measure(path, ctx, n_prompt)
            err = est.rss_mib - got["peak_mib"]
            rows.append({
                "artifact": path.name, "ctx": ctx, "estimate_mib": round(est.rss_mib, 1),
                "measured_peak_mib": round(got["peak_mib"], 1), "error_mib": round(err, 1),
                "error_pct": round(100 * err / got["peak_mib"], 2),
                "estimate_anon_mib": round(est.anon_mib, 1), "measured_anon_mib": round(got["anon_mib"], 1),
                "estimate_file_mib": round(est.file_mib + est.weights_cold_mib, 1),
                "measured_file_mib": round(got["file_mib"], 1),
                "measured_baseline_anon_mib": round(got["baseline_anon_mib"], 1),
                "measured_baseline_file_mib": round(got["baseline_file_mib"], 1),
                "within_goal": abs(err) <= max(GOAL_REL * got["peak_mib"], GOAL_ABS_MIB),
            })
    return rows


def zoo_artifacts(out: Path) -> list[Path]:
    from edge_run.converters.gguf.convert import ConvertOptions, convert_to_gguf
    from tools.zoo import zoo_checkpoint

    paths: list[Path] = []
    for model in ("smollm2-135m", "gemma3-270m"):
        paths += convert_to_gguf(zoo_checkpoint(model), out, ConvertOptions(quants="f16,q8_0,q4_k_m,q4_0", name=model))
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifacts", nargs="*", type=Path)
    ap.add_argument("--ctx", nargs="+", type=int, default=[512, 2048, 8192])
    ap.add_argument("--out", type=Path, default=Path("results/estimator.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = args.artifacts or zoo_artifacts(Path(tmp))
        rows = validate(artifacts, args.ctx)
    print(f"{'artifact':34} {'ctx':>5} {'est MiB':>8} {'meas MiB':>9} {'err %':>6}  goal")
    for r in rows:
        print(f"{r['artifact']:34} {r['ctx']:>5} {r['estimate_mib']:>8} {r['measured_peak_mib']:>9} "
              f"{r['error_pct']:>6}  {'ok' if r['within_goal'] else 'MISS'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"simd": list(host_simd()), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
