"""Honest ranking: a model with nothing measured never outranks a measured one on a guess from its
parameter count; within a measured model the quant loss comes from the real tensor-type mix."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from edge_run.core.errors import NothingFitsError
from edge_run.profiles.devices import get_profile, list_profiles
from edge_run.runtime.pick.picker import Candidate, pick
from edge_run.runtime.pick.quant_loss import COST, GAMMA, OUTPUT_WEIGHT, mix_of, predicted_loss
from tools.quant_loss_fit import tensors

from .test_picker import FAMILY, QUANTS, synthetic

ROOT = Path(__file__).resolve().parents[1]
# SmolLM2-135M Q8_0 as measured in results/tradeoff.json (40 chunks of WikiText-2)
SMOL_Q8 = {"bpb": 1.122611, "tokens_scored": 10200, "bytes_scored": 41432, "chunks": 40}


def with_refs(c: Candidate, refs: tuple) -> Candidate:
    return dataclasses.replace(c, references=refs)


SMALL_MEASURED = [with_refs(synthetic(*FAMILY[0], q), (("Q8_0", SMOL_Q8),)) for q in QUANTS]
LARGE_UNMEASURED = [synthetic(*FAMILY[3], q) for q in QUANTS]  # a 3B model, nothing measured

# profile -> the pick at ctx 2048 when a measured 135M model competes with an unmeasured 3B one: always the
# measured model (the 3B model's ~0.7 BPB is a guess from its size); F16 where it fits (its mix-predicted loss
# over the measured Q8_0 is 0.0005 BPB); Q4_K_M on the Pi Zero 2 W.
GOLDEN_MEASURED: dict[str, tuple[str, str]] = {p.name: ("s135m", "F16") for p in list_profiles()}
GOLDEN_MEASURED["pi-zero-2w"] = ("s135m", "Q4_K_M")  # 256 of 298 MiB: Q8_0 does not fit


@pytest.mark.parametrize("profile", sorted(GOLDEN_MEASURED))
def test_a_measured_small_model_beats_an_unmeasured_large_one(profile: str) -> None:
    result = pick(get_profile(profile), SMALL_MEASURED + LARGE_UNMEASURED, ctx=2048)
    chosen = result.pick.candidate
    assert (chosen.model, chosen.quant) == GOLDEN_MEASURED[profile]
    assert not result.pick.quality.unmeasured
    large = [r for r in result.rows if r.candidate.model == "l3b"]
    assert all(r.quality.unmeasured and r.quality.label.startswith("unmeasured") for r in large)
    # the guess is better on paper, yet every unmeasured row ranks below every measured one
    assert min(r.quality.bpb for r in large) < result.pick.quality.bpb
    first_unmeasured = min(i for i, r in enumerate(result.rows) if r.quality.unmeasured)
    assert all(r.quality.unmeasured for r in result.rows[first_unmeasured:])
    assert result.to_dict()["pick"]["quality"]["unmeasured"] is False


def test_an_unmeasured_model_is_still_picked_when_no_measured_one_fits() -> None:
    big_measured = [with_refs(synthetic(*FAMILY[4], q), (("Q8_0", {**SMOL_Q8, "bpb": 0.8}),)) for q in QUANTS]
    small_unmeasured = [synthetic(*FAMILY[0], q) for q in QUANTS]
    result = pick(get_profile("pi-zero-2w"), big_measured + small_unmeasured, ctx=2048)
    assert result.pick.candidate.model == "s135m" and result.pick.quality.unmeasured
    assert result.binding.startswith("memory: l8b")


def test_nothing_fits_because_of_the_context_names_the_context_limit() -> None:
    short = [dataclasses.replace(synthetic(*FAMILY[0], q), context_length=1024) for q in QUANTS]
    with pytest.raises(NothingFitsError) as e:
        pick(get_profile("pi5-16gb"), short, ctx=4096)
    msg = e.value.one_line()
    assert "the context, not memory, is the limit" in msg and "trained for at most 1024 tokens" in msg
    assert "lower --ctx to 1024" in msg and "MiB more" not in msg


def test_nothing_fits_for_memory_still_says_how_much_more() -> None:
    short = [dataclasses.replace(synthetic(*FAMILY[4], q), context_length=1024) for q in QUANTS]
    with pytest.raises(NothingFitsError, match=r"needs \d+ MiB \(needs \d+ MiB more"):
        pick(get_profile("pi-zero-2w"), short, ctx=4096)


# ---------------------------------------------------------------------------------------- quant loss

def test_runtime_costs_are_the_fitted_ones() -> None:
    fit = json.loads((ROOT / "results" / "quant_loss_fit.json").read_text(encoding="utf-8"))["fit"]
    assert GAMMA == fit["gamma"] and OUTPUT_WEIGHT == fit["output_weight"]
    assert {t: c for t, c in COST.items() if t not in ("F32", "F16", "BF16")} == fit["cost"]


def test_the_fit_is_reproducible_and_beats_the_llama3_baseline(tmp_path: Path) -> None:
    from tools.quant_loss_fit import main

    out = tmp_path / "fit.json"
    assert main(["--tradeoff", str(ROOT / "results" / "tradeoff.json"), "--out", str(out)]) == 0
    got = json.loads(out.read_text(encoding="utf-8"))
    committed = json.loads((ROOT / "results" / "quant_loss_fit.json").read_text(encoding="utf-8"))
    assert got["fit"] == committed["fit"] and got["fit_all"] == committed["fit_all"]
    for model in ("smollm2-135m", "gemma3-270m"):  # predicted without ever seeing the model
        s = got["leave_one_model_out"][model]["summary"]
        assert s["mae_bpb"] < s["baseline_mae_bpb"] and s["order_agreement"] > s["baseline_order_agreement"]
        assert "qwen2.5-coder-0.5b" not in s["fit_on"]  # held out of every fit but "fit_all"
        assert "qwen2.5-coder-0.5b" in got["leave_one_model_out_all"][model]["fit_on"]  # reported pooled too
    # the held-out model is predicted by the shipped costs themselves (its leave-one-out fit is "fit")
    held = got["leave_one_model_out"]["qwen2.5-coder-0.5b"]["summary"]
    assert got["data"]["held_out"] == ["qwen2.5-coder-0.5b"] and held["rows"] >= 6
    assert (held["gamma"], held["output_weight"]) == (got["fit"]["gamma"], got["fit"]["output_weight"])


def test_the_prediction_uses_the_real_fallback_mix() -> None:
    # 576-wide rows are not a multiple of 256: llama.cpp stores Q5_K as Q5_1 and Q4_K as Q5_0, so on
    # SmolLM2 "Q5_K_M" is mostly Q5_1 (measured PPL 25.96, worse than Q4_K_M's 24.88: results/tradeoff.json)
    q5, q4 = mix_of(tensors("smollm2-135m", "Q5_K_M")), mix_of(tensors("smollm2-135m", "Q4_K_M"))
    assert q5.shares["Q5_1"] > 0.5 and q4.shares["Q5_0"] > 0.5
    wide = mix_of(tensors("llama3-8b", "Q5_K_M"))  # 4096-wide rows keep their k-quants
    assert "Q5_1" not in wide.shares and wide.shares["Q5_K"] > 0.5
    c = with_refs(synthetic(*FAMILY[0], "Q8_0"), (("Q8_0", SMOL_Q8),))
    assert c.shape is not None
    losses = [predicted_loss(c.shape, q) for q in ("F16", "Q8_0", "Q6_K", "Q4_K_M", "Q3_K_M", "Q2_K")]
    assert losses == sorted(losses) and losses[0] == 0.0
    rows = {r.candidate.quant: r for r in pick(get_profile("pi5-16gb"), [
        with_refs(synthetic(*FAMILY[0], q), (("Q8_0", SMOL_Q8),)) for q in ("Q8_0", "Q4_K_M", "Q2_K")],
        ctx=512).rows}
    assert rows["Q2_K"].quality.bpb > rows["Q4_K_M"].quality.bpb > rows["Q8_0"].quality.bpb == SMOL_Q8["bpb"]
    assert "tensor-type mix" in rows["Q4_K_M"].quality.basis


def test_non_finite_or_negative_measurements_are_never_used() -> None:
    for bad in (math.nan, math.inf, -1.0):
        c = with_refs(synthetic(*FAMILY[0], "Q8_0"), (("Q8_0", {**SMOL_Q8, "bpb": bad}),))
        row = pick(get_profile("pi5-16gb"), [c], ctx=512).pick
        assert row.quality.unmeasured and math.isfinite(row.quality.bpb)


def test_the_oracle_agrees_with_the_pick(tmp_path: Path) -> None:
    """Every shipped profile x ctx {512, 2048, 8192} over the zoo's measured pairings, imatrix variants included,
    with an f16 KV cache and with --cache-type auto (tools/pick_oracle.py): knowing each model's Q8_0 only, the
    pick is the measured-best pairing that fits in >= 95% of cases and never more than 1% BPB worse; after
    `pick --measure` it agrees in every case (within the picker's 0.001 BPB tie: 0.1%). Each model alone on a RAM
    sweep: the same for SmolLM2 and Gemma3; Qwen2.5-Coder-0.5B agrees after `--measure`, its misses from the Q8_0
    alone are the ones explained in the README."""
    from tools.pick_oracle import main

    out = tmp_path / "oracle.json"
    assert main(["--tradeoff", str(ROOT / "results" / "tradeoff.json"), "--dimensions",
                 str(ROOT / "results" / "pick_dimensions.json"), "--out", str(out)]) == 0
    data = json.loads(out.read_text(encoding="utf-8"))
    for cache in ("f16", "auto"):
        summary, sweep = data[cache]["summary"], data[cache]["sweep_summary"]
        assert summary["anchor"]["cases"] >= 30 and sweep["anchor"]["cases"] >= 40
        for s in (summary, sweep):
            assert s["anchor"]["agree_pct"] >= 95.0 and s["anchor"]["max_regret_pct"] <= 1.0
            assert s["measured"]["agree_pct"] == 100.0 and s["measured"]["max_regret_pct"] < 0.1
        # each model alone: the quant type / imatrix choice within one model, the 0.5B qwen2 model's included
        alone = data[cache]["alone_summary"]
        assert set(alone) == {"smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b"}
        for model, s in alone.items():
            assert s["anchor"]["cases"] >= 20
            assert s["measured"]["agree_pct"] == 100.0 and s["measured"]["max_regret_pct"] < 0.1
            if model != "qwen2.5-coder-0.5b":
                assert s["anchor"]["agree_pct"] >= 95.0 and s["anchor"]["max_regret_pct"] <= 1.0
        # Qwen2.5-Coder-0.5B from its Q8_0 alone misses the goal (README): every miss is a pick whose quality
        # prediction is off in a way the data shows, never memory (the oracle's pairings are the ones that fit):
        # an imatrix variant (the shipped ratio 0.55 predicts a gain; on qwen the imatrix costs BPB), or a miss of
        # the oracle's Q5_K_M by < 0.15% (it scores 0.0012 BPB below F16 on 12 chunks: below their resolution)
        for c in data[cache]["alone"]["qwen2.5-coder-0.5b"]:
            a = c.get("anchor")
            if a and not a["agrees"]:
                assert "+imat" in a["pick"] or (c["oracle"].startswith("qwen2.5-coder-0.5b Q5_K_M")
                                                and a["regret_pct"] < 0.15), (c["profile"], a)
    picks = {c["anchor"]["pick"] for c in data["f16"]["cases"] + data["f16"]["sweep"] if c.get("anchor")}
    assert any("+imat" in p for p in picks)  # the imatrix variants take part
    assert any("KV q8_0" in c["measured"]["pick"] for c in data["auto"]["cases"] + data["auto"]["sweep"]
               if c.get("measured"))  # and a q8_0 KV cache where it makes a better pairing fit
