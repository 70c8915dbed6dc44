"""Check the ONNX memory estimator (src/edge_run/runtime/estimate/onnx.py) against measured peak RSS.

For every artifact x context, a fresh process opens the artifact with edge-run's ONNX backend, runs a prompt of
min(512, ctx - 16) tokens in one call, then decodes until the context is full (the KV cache buffers are
preallocated at the full context and become resident as they are written), and reports its peak RSS (VmHWM)
and the anonymous / file-backed split (/proc/self/smaps_rollup). Goal, as for GGUF: |error| <= 5% or <= 16 MiB.

    python -m tools.validate_onnx_estimator [ARTIFACT_DIR ...] [--ctx 512 1024 2048] [--out results/estimator_onnx.json]

Without artifacts, the zoo's SmolLM2-135M, Gemma 3 270M and Qwen2.5-Coder-0.5B are converted to int4 into a temp
folder first (Qwen2.5 is built into the zoo on first use: `python -m tools.zoo build qwen2.5-coder-0.5b`). The
result also refits the two weight factors and reports each row's error with its model left out of the fit.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from edge_run.runtime.artifacts.formats import estimate_artifact
from edge_run.runtime.estimate.gguf import MIB
from edge_run.runtime.estimate.onnx import onnx_facts
from tools.rss_probe import run_probe

_PROBE = r"""
import itertools
import numpy, onnxruntime, tokenizers
from edge_run.runtime.backends import GenerationParams, LoadOptions
from edge_run.runtime.artifacts.formats import open_backend
path, ctx, n_prompt, corpus = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
base = rollup()
b = open_backend(path, LoadOptions(n_ctx=ctx, n_threads=2))
tokens = b.tokenize(open(corpus, encoding='utf-8').read()[:200000])[:n_prompt]
stream = b.token_stream(tokens, GenerationParams(max_tokens=ctx))  # greedy, never stops at EOS
for _ in itertools.islice(stream, b.n_ctx - n_prompt - 1):
    pass
report(base)
"""

GOAL_REL, GOAL_ABS_MIB = 0.05, 16.0


def measure(path: Path, ctx: int, n_prompt: int) -> dict[str, float]:
    from edge_run.runtime.eval.corpora import builtin_corpus_path

    return run_probe(_PROBE, str(path), str(ctx), str(n_prompt), str(builtin_corpus_path("wikitext-2-raw-test")))


def validate(artifacts: list[Path], contexts: list[int]) -> list[dict[str, Any]]:
    rows = []
    for path in artifacts:
        for ctx in contexts:
            n_prompt = min(512, ctx - 16)
            est = estimate_artifact(path, ctx)
            got = measure(path, ctx, n_prompt)
            err = est.total_mib - got["peak_mib"]
            rows.append({
                "artifact": path.name, "ctx": ctx, "prompt_tokens": n_prompt, "estimate_mib": round(est.total_mib, 1),
                "measured_peak_mib": round(got["peak_mib"], 1), "error_mib": round(err, 1),
                "error_pct": round(100 * err / got["peak_mib"], 2),
                "estimate_anon_mib": round(est.anon_mib, 1), "measured_anon_mib": round(got["anon_mib"], 1),
                "estimate_file_mib": round(est.file_mib, 1), "measured_file_mib": round(got["file_mib"], 1),
                "within_goal": abs(err) <= max(GOAL_REL * got["peak_mib"], GOAL_ABS_MIB),
                **features(path, ctx),
            })
            print(f"{path.name:34} {ctx:>5} est {est.total_mib:7.1f} meas {got['peak_mib']:7.1f} "
                  f"err {100 * err / got['peak_mib']:+6.2f}%", file=sys.stderr)
    return rows


def features(path: Path, ctx: int) -> dict[str, float]:
    """What the estimate is made of, per row: the fit below needs it, and so does anyone re-fitting from the JSON."""
    f = onnx_facts(path)
    est = estimate_artifact(path, ctx)
    return {"prepacked_mib": round(f.prepacked_bytes / MIB, 3),
            "other_weights_mib": round((f.graph_bytes - f.prepacked_bytes) / MIB, 3),
            "tokenizer_mib": round(f.tokenizer_bytes / MIB, 3),
            "rest_of_estimate_mib": round(est.total_mib - est.weights_file_mib - est.weights_repacked_mib, 3)}


def fit(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Least squares of the two weight factors (PREPACKED_FACTOR, OTHER_WEIGHTS_FACTOR) over every row, and
    the error of each row when its model is left out of the fit: how well the factors carry to a new model."""
    import numpy as np

    x = np.array([[r["prepacked_mib"], r["other_weights_mib"]] for r in rows])
    y = np.array([r["measured_peak_mib"] - r["rest_of_estimate_mib"] for r in rows])
    peak = np.array([r["measured_peak_mib"] for r in rows])
    factors = np.linalg.lstsq(x, y, rcond=None)[0]
    held_out = np.zeros(len(rows))
    for model in {r["artifact"] for r in rows}:
        out = np.array([r["artifact"] == model for r in rows])
        held_out[out] = x[out] @ np.linalg.lstsq(x[~out], y[~out], rcond=None)[0] - y[out]
    return {"prepacked_factor": round(float(factors[0]), 3), "other_weights_factor": round(float(factors[1]), 3),
            "in_fit_error_pct": [round(float(e), 2) for e in 100 * (x @ factors - y) / peak],
            "model_left_out_error_pct": [round(float(e), 2) for e in 100 * held_out / peak]}


def zoo_artifacts(out: Path) -> list[Path]:
    from edge_run.converters.onnx.convert import OnnxOptions, convert_to_onnx
    from tools.zoo import zoo_checkpoint

    paths: list[Path] = []
    for model in ("smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b"):
        paths += convert_to_onnx(zoo_checkpoint(model), out, OnnxOptions(quant="int4", name=model))
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("artifacts", nargs="*", type=Path)
    ap.add_argument("--ctx", nargs="+", type=int, default=[512, 1024, 2048])
    ap.add_argument("--out", type=Path, default=Path("results/estimator_onnx.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = args.artifacts or zoo_artifacts(Path(tmp))
        rows = validate(artifacts, args.ctx)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"rows": rows, "fit": fit(rows)}
    print(json.dumps(result["fit"]), file=sys.stderr)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
