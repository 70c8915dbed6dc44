"""The picker checked against an oracle: for every shipped profile x ctx {512, 2048, 8192}, the pick vs the
measured-best pairing that fits.

Pairings: every zoo model x every quant type measured in results/tradeoff.json (WikiText-2 at ctx 512: 40 chunks,
Qwen2.5-Coder-0.5B 12; each row's "chunks"),
the imatrix variants of Q4_K_M / Q3_K_M / Q2_K included, each with an f16 KV cache and (``--cache-type auto``)
with a q8_0 one, whose BPB is the f16 one's plus the model's measured KV effect (results/pick_dimensions.json,
tools/pick_dimensions.py: the paired difference on the same chunks at ctx 512; a model without one gets the
picker's default, src/edge_run/runtime/pick/prior.py KV_DELTA_BPB, listed in "kv_effect_assumed"). Memory: the estimator
(src/edge_run/runtime/estimate/gguf.py) on each model's shapes (public config values, types from
src/edge_run/runtime/estimate/quant_mix.py). The
oracle knows every measured BPB; the picker is run twice per cache mode:

    anchor    it knows each model's Q8_0 measurement only (what `pick --measure` gives it first); every other
              type is predicted from the pairing's tensor-type mix (src/edge_run/runtime/pick/quant_loss.py), an
              imatrix variant
              with the fitted imatrix ratio, a q8_0 KV cache with the zoo's mean effect
    measured  it knows every measurement (after `pick --measure` measured every pairing and the KV effect)

The same on a sweep of RAM sizes (a Pi Zero 2 W with 384..1152 MiB at ctx 2048), where the quant type decides,
and for each model alone on 384..2048 MiB ("alone": only that model's pairings compete, so every case checks the
quant type and imatrix choice within one model, the larger Qwen2.5-Coder-0.5B's too).
A case agrees when the pick is the oracle's pairing or within 0.001 BPB of it (the picker's tie); the regret
is the pick's measured BPB over the oracle's, in percent.

    python -m tools.pick_oracle [--tradeoff results/tradeoff.json] [--dimensions results/pick_dimensions.json]
                                [--out results/pick_oracle.json] [--table]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
from pathlib import Path
from typing import Any

from edge_run.core.errors import NothingFitsError
from edge_run.profiles.devices import get_profile, list_profiles
from edge_run.runtime.estimate.gguf import ModelShape, TensorInfo
from edge_run.runtime.estimate.quant_mix import tensor_bytes, tensor_type
from edge_run.runtime.pick.picker import Candidate, pick
from edge_run.runtime.pick.prior import KV_DELTA_BPB
from tools.quant_loss_fit import HPARAMS

CTXS = (512, 2048, 8192)
# a memory sweep where the quant type decides: a Pi Zero 2 W with 384..1152 MiB of RAM, ctx 2048
SWEEP_BASE, SWEEP_RAM, SWEEP_CTX = "pi-zero-2w", tuple(range(384, 1153, 16)), 2048
# each model alone (its quant type is all the pick decides) on a wider sweep: 384..2048 MiB, ctx 2048
ALONE_RAM = tuple(range(384, 2049, 32))
# name -> (trained context, sliding window, sliding layers): public config values
CONTEXT: dict[str, tuple[int, int, int]] = {"smollm2-135m": (8192, 0, 0), "gemma3-270m": (32768, 512, 15),
                                            "qwen2.5-coder-0.5b": (32768, 0, 0)}
ANCHOR = "Q8_0"
TIE_BPB = 0.001


def shape(model: str, quant: str) -> ModelShape:
    n_layer, d, ff, h, kv, hd, vocab, tied = HPARAMS[model]
    n_ctx, n_swa, n_swa_layers = CONTEXT[model]
    shapes = [("token_embd.weight", d, vocab)] + ([] if tied else [("output.weight", d, vocab)])
    for i in range(n_layer):
        shapes += [(f"blk.{i}.attn_q.weight", d, h * hd), (f"blk.{i}.attn_k.weight", d, kv * hd),
                   (f"blk.{i}.attn_v.weight", d, kv * hd), (f"blk.{i}.attn_output.weight", h * hd, d),
                   (f"blk.{i}.ffn_gate.weight", d, ff), (f"blk.{i}.ffn_up.weight", d, ff),
                   (f"blk.{i}.ffn_down.weight", ff, d), (f"blk.{i}.attn_norm.weight", d, 1),
                   (f"blk.{i}.ffn_norm.weight", d, 1)]
    infos = []
    for name, ne0, ne1 in shapes:
        t = "F32" if ne1 == 1 else tensor_type(quant, name, ne0, n_layer, not tied, h // kv)  # as estimate.py
        infos.append(TensorInfo(name, t, ne0, ne1, tensor_bytes(t, ne0 * ne1)))
    return ModelShape(n_layer, d, ff, h, kv, hd, hd, vocab, n_ctx, n_swa, n_swa_layers, tuple(infos))


def candidates(rows: list[dict[str, Any]], know_all: bool, kv: dict[str, float]) -> list[Candidate]:
    out = []
    for model in CONTEXT:
        mine = {(r["quant"], r["imatrix"]): r for r in rows if r["model"] == model}
        refs = tuple((q, _entry(r)) for (q, imat), r in mine.items() if know_all or (q, imat) == (ANCHOR, False))
        kv_deltas = (("q8_0", kv[model]),) if know_all and model in kv else ()
        for (q, imat), r in mine.items():
            out.append(Candidate(model, q, shape(model, q), r["parameter_count"], context_length=CONTEXT[model][0],
                                 references=refs, digest=model, imatrix=imat, kv_deltas=kv_deltas))
    return out


def _entry(r: dict[str, Any]) -> dict[str, Any]:
    return {"bpb": r["bpb"], "tokens_scored": r["tokens_scored"], "bytes_scored": r["bytes_scored"],
            "chunks": r["chunks"], "imatrix": r["imatrix"]}


def kv_effects(dimensions: dict[str, Any]) -> dict[str, float]:
    """model -> measured BPB with a q8_0 KV cache minus with f16 (same Q8_0 weights and chunks, ctx 512)."""
    runs = {(r["model"], r["cache_type"]): r["bpb"] for r in dimensions.get("rows", [])
            if r["kind"] == "kv" and r["ctx"] == 512 and r["quant"] == ANCHOR}
    return {m: runs[(m, "q8_0")] - runs[(m, "f16")] for m, t in runs if t == "f16" and (m, "q8_0") in runs}


def _name(c: Candidate) -> str:
    return f"{c.model} {c.quant}{'+imat' if c.imatrix else ''}{' KV ' + c.cache_type if c.cache_type else ''}"


def case(profile: Any, ctx: int, rows: list[dict[str, Any]], kv: dict[str, float],
         cache_type: str = "f16") -> dict[str, Any]:
    measured = {(r["model"], r["quant"], r["imatrix"]): r["bpb"] for r in rows}

    def truth(c: Candidate) -> float:  # a q8_0 KV cache: the f16 cache's BPB plus the model's measured effect
        # (a model without one: the picker's default, the zoo's mean; listed in the output's "kv_effect_assumed")
        effect = kv.get(c.model, KV_DELTA_BPB.get(c.cache_type or "", 0.0))
        return measured[(c.model, c.quant, c.imatrix)] + (effect if c.cache_type else 0.0)

    out: dict[str, Any] = {"profile": profile.name, "ctx": ctx}
    for mode, know_all in (("anchor", False), ("measured", True)):
        try:
            result = pick(profile, candidates(rows, know_all, kv), ctx=ctx, cache_type=cache_type)
        except NothingFitsError:
            out[mode] = None
            continue
        best = min((r for r in result.rows if r.fits), key=lambda r: truth(r.candidate))
        pick_bpb, best_bpb = truth(result.pick.candidate), truth(best.candidate)
        out["oracle"] = _name(best.candidate)
        out["oracle_bpb"] = round(best_bpb, 6)
        out[mode] = {"pick": _name(result.pick.candidate), "bpb": round(pick_bpb, 6),
                     "predicted_bpb": round(result.pick.quality.bpb, 4),
                     "agrees": pick_bpb - best_bpb <= TIE_BPB, "regret_pct": round(100 * (pick_bpb / best_bpb - 1), 3)}
    return out


def summary(cases: list[dict[str, Any]], mode: str) -> dict[str, Any]:
    done = [c[mode] for c in cases if c.get(mode)]
    return {"cases": len(done), "nothing_fits": sum(1 for c in cases if not c.get(mode)),
            "agree_pct": round(100 * sum(d["agrees"] for d in done) / max(len(done), 1), 1),
            "max_regret_pct": max((d["regret_pct"] for d in done), default=0.0)}


def table(cases: list[dict[str, Any]]) -> str:
    lines = ["| profile | ctx | oracle (BPB) | pick, Q8_0 measured only (BPB) | pick, all measured |",
             "|---|---|---|---|---|"]
    for c in cases:
        if not c.get("anchor"):
            lines.append(f"| {c['profile']} | {c['ctx']} | nothing fits | | |")
            continue
        a, m = c["anchor"], c["measured"]
        regret = "" if a["agrees"] else f", +{a['regret_pct']}%"
        lines.append(f"| {c['profile']} | {c['ctx']} | {c['oracle']} ({c['oracle_bpb']:.4f}) | {a['pick']} "
                     f"({a['bpb']:.4f}{regret}) | {m['pick']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tradeoff", type=Path, default=Path("results/tradeoff.json"))
    ap.add_argument("--dimensions", type=Path, default=Path("results/pick_dimensions.json"))
    ap.add_argument("--out", type=Path, default=Path("results/pick_oracle.json"))
    ap.add_argument("--table", action="store_true", help="print the markdown table")
    args = ap.parse_args(argv)
    tradeoff = json.loads(args.tradeoff.read_text(encoding="utf-8"))
    rows = [r for r in tradeoff["rows"] if r["model"] in CONTEXT]
    kv = kv_effects(json.loads(args.dimensions.read_text(encoding="utf-8"))) if args.dimensions.exists() else {}
    profiles = sorted(list_profiles(), key=lambda p: p.ram_mb)
    base = get_profile(SWEEP_BASE)
    rams = [dataclasses.replace(base, name=f"{SWEEP_BASE}@{ram}MB", ram_mb=ram) for ram in SWEEP_RAM]
    out: dict[str, Any] = {"schema": "edge-run-pick-oracle/2",
                           "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                           "tradeoff_settings": tradeoff.get("settings"), "tie_bpb": TIE_BPB,
                           "kv_q8_0_bpb_effect": {m: round(v, 6) for m, v in kv.items()},
                           "kv_effect_assumed": {m: KV_DELTA_BPB.get("q8_0", 0.0) for m in CONTEXT
                                                 if m not in kv and any(r["model"] == m for r in rows)}}
    for cache in ("f16", "auto"):
        cases = [case(p, ctx, rows, kv, cache) for p in profiles for ctx in CTXS]
        sweep = [case(p, SWEEP_CTX, rows, kv, cache) for p in rams]
        wide = [dataclasses.replace(base, name=f"{SWEEP_BASE}@{ram}MB", ram_mb=ram) for ram in ALONE_RAM]
        alone = {m: [case(p, SWEEP_CTX, [r for r in rows if r["model"] == m], kv, cache) for p in wide]
                 for m in CONTEXT if any(r["model"] == m for r in rows)}
        out[cache] = {"summary": {m: summary(cases, m) for m in ("anchor", "measured")},
                      "sweep_summary": {m: summary(sweep, m) for m in ("anchor", "measured")},
                      "alone_summary": {m: {k: summary(c, k) for k in ("anchor", "measured")}
                                        for m, c in alone.items()},
                      "cases": cases, "sweep": sweep, "alone": alone}
        print(cache, json.dumps({"profiles": out[cache]["summary"], "sweep": out[cache]["sweep_summary"]}))
        print(cache, "alone", json.dumps(out[cache]["alone_summary"]))
        if args.table:
            print(table(cases))
            print(table(sweep))
    args.out.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
