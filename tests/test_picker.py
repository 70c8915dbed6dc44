"""Golden, table-driven picks on every shipped profile over a fixed synthetic candidate set."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from edge_run.core.errors import NothingFitsError, UsageError
from edge_run.core.tuning import BASE, INSTRUCT, UNKNOWN, Tuning
from edge_run.profiles.devices import get_profile, list_profiles
from edge_run.runtime.estimate.gguf import ModelShape, TensorInfo
from edge_run.runtime.estimate.quant_mix import tensor_bytes, tensor_type
from edge_run.runtime.pick.picker import Candidate, pick

from .conftest import CliResult

# (name, layers, n_embd, n_ff, heads, kv heads, vocab): SmolLM2 135M / 360M / 1.7B, Llama-3.2-3B, Llama-3.1-8B
FAMILY = [
    ("s135m", 30, 576, 1536, 9, 3, 49152), ("s360m", 32, 960, 2560, 15, 5, 49152),
    ("s1.7b", 24, 2048, 8192, 32, 32, 49152), ("l3b", 28, 3072, 8192, 24, 8, 128256),
    ("l8b", 32, 4096, 14336, 32, 8, 128256),
]
QUANTS = ("F16", "Q8_0", "Q4_K_M", "Q2_K")


def synthetic(name: str, n_layer: int, d: int, ff: int, h: int, kv: int, vocab: int, quant: str) -> Candidate:
    hd = d // h
    shapes = [("token_embd.weight", d, vocab), ("output.weight", d, vocab)]
    for i in range(n_layer):
        shapes += [(f"blk.{i}.attn_q.weight", d, d), (f"blk.{i}.attn_k.weight", d, kv * hd),
                   (f"blk.{i}.attn_v.weight", d, kv * hd), (f"blk.{i}.attn_output.weight", d, d),
                   (f"blk.{i}.ffn_gate.weight", d, ff), (f"blk.{i}.ffn_up.weight", d, ff),
                   (f"blk.{i}.ffn_down.weight", ff, d)]
    infos = []
    for tname, ne0, ne1 in shapes:
        t = tensor_type(quant, tname, ne0, n_layer, has_output=True)
        infos.append(TensorInfo(tname, t, ne0, ne1, tensor_bytes(t, ne0 * ne1)))
    shape = ModelShape(n_layer, d, ff, h, kv, hd, hd, vocab, 8192, 0, 0, tuple(infos))
    return Candidate(name, quant, shape, sum(i.ne0 * i.ne1 for i in infos))


CANDIDATES = [synthetic(*f, q) for f in FAMILY for q in QUANTS]

# profile -> (model, quant) picked at ctx 2048 (larger devices get larger models at ~4 bits). Repacked weights
# need one copy (no-mmap on dotprod / i8mm boards: src/edge_run/runtime/estimate/load_mode.py), so a Pi 5 holds
# what a Pi 4 of the same memory holds.
GOLDEN: dict[str, tuple[str, str]] = {
    "pi-zero-2w": ("s135m", "Q4_K_M"),  # 265 of 298 MiB
    "pi-3b": ("s360m", "Q8_0"),  # 619 of 760 MiB
    "pi4-2gb": ("s1.7b", "Q2_K"),  # 1282 of 1646 MiB: the bigger model even at 2-3 bits
    "pi4-4gb": ("l3b", "Q4_K_M"),  # 2589 of 3591 MiB
    "pi4-8gb": ("l8b", "Q4_K_M"),  # 5243 of 7482 MiB
    "pi5-4gb": ("l3b", "Q4_K_M"),  # 2589 of 3541 MiB, no-mmap
    "pi5-8gb": ("l8b", "Q4_K_M"),  # 5243 of 7432 MiB, no-mmap (issue 26: was refused with two copies counted)
    "pi5-16gb": ("l8b", "Q8_0"),  # 8696 of 15215 MiB, no-mmap
    "jetson-orin-nano-8gb": ("l8b", "Q4_K_M"),  # 5243 of 6582 MiB, no-mmap
    "laptop-x86-8gb": ("l3b", "Q8_0"),  # 4095 of 4782 MiB
    "laptop-x86-16gb": ("l8b", "Q8_0"),  # 8677 of 11565 MiB
    "macbook-m1-8gb": ("l3b", "Q8_0"),  # 4114 of 4782 MiB, no-mmap
}


def test_every_shipped_profile_has_a_golden_pick() -> None:
    assert sorted(GOLDEN) == sorted(p.name for p in list_profiles())


@pytest.mark.parametrize("profile", sorted(GOLDEN))
def test_golden_pick(profile: str) -> None:
    result = pick(get_profile(profile), CANDIDATES, ctx=2048)
    chosen = result.pick.candidate
    assert (chosen.model, chosen.quant) == GOLDEN[profile]
    assert result.pick.fits and result.pick.estimate.total_mib <= result.budget_mib
    # nothing that fits has better quality
    assert all(not r.fits or r.quality.bpb >= result.pick.quality.bpb for r in result.rows)


def test_min_tps_trades_quality_for_speed() -> None:
    slow = pick(get_profile("pi5-8gb"), CANDIDATES, ctx=2048)
    fast = pick(get_profile("pi5-8gb"), CANDIDATES, ctx=2048, min_tps=5.0)
    assert fast.pick.tps >= 5.0 > slow.pick.tps
    assert fast.binding.startswith("speed")


def test_nothing_fits_names_the_smallest_pairing() -> None:
    tiny = [c for c in CANDIDATES if c.model == "l8b"]
    with pytest.raises(NothingFitsError, match=r"l8b Q2_K \(planned\), needs \d+ MiB \(needs"):
        pick(get_profile("pi-zero-2w"), tiny, ctx=2048)


def test_pick_cli_end_to_end(tiny_checkpoint: Callable[[str], Path], tmp_path: Path,
                             cli: Callable[..., CliResult]) -> None:
    import json
    import shutil

    shutil.copytree(tiny_checkpoint("llama"), tmp_path / "tiny")
    res = cli("pick", "--profile", "pi-3b", "--models", tmp_path, "--ctx", "256", "--json",
              "--plot", tmp_path / "p.png")
    assert res.code == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["pick"]["planned"] and data["pick"]["fits"]
    assert len(data["candidates"]) == 8 + 3 and (tmp_path / "p.png").stat().st_size > 1000  # + Q2_K..Q4_K_M imatrix
    assert sorted(c["quant"] for c in data["candidates"] if c["imatrix"]) == ["Q2_K", "Q3_K_M", "Q4_K_M"]
    res = cli("run", "--profile", "pi-3b", "--models", tmp_path, "--ctx", "256", "-p", "The", "-n", "3", "--json")
    assert res.code == 0, res.stderr
    assert json.loads(res.stdout)["pick"]["quant"] == data["pick"]["quant"]


# ------------------------------------------------------------------------------------------ a pick for chat

def tuned(kinds: dict[str, str]) -> list[Candidate]:
    """CANDIDATES with each model's tuning (model -> instruct | base; others unknown)."""
    return [replace(c, tuning=Tuning(kinds.get(c.model, UNKNOWN), "test")) for c in CANDIDATES]


def test_a_chat_pick_prefers_an_instruction_tuned_model_and_says_why() -> None:
    cands = tuned({"l3b": BASE, "l8b": BASE, "s135m": INSTRUCT, "s360m": INSTRUCT, "s1.7b": INSTRUCT})
    text = pick(get_profile("pi4-4gb"), cands, ctx=2048)
    chat = pick(get_profile("pi4-4gb"), cands, ctx=2048, purpose="chat")
    assert (text.pick.candidate.model, text.pick.candidate.quant) == GOLDEN["pi4-4gb"] and text.note == ""
    # the best instruction-tuned pairing that fits: the same ranking, restricted to tuned models
    best_tuned = next(r for r in chat.rows if r.fits and r.candidate.tuning.kind == INSTRUCT)
    assert chat.pick is best_tuned and chat.pick.candidate.model == "s1.7b"
    assert chat.note == ("the best fit, l3b Q4_K_M (planned), is a base model (no chat tuning); for chat, picked "
                         f"{best_tuned.candidate.label}")
    assert chat.to_dict()["for"] == "chat" and chat.to_dict()["pick"]["tuning"] == INSTRUCT
    # the binding constraint and counterfactuals speak of the tuned pairings only (the base ones fit anyway)
    assert chat.binding == "none: the best-quality candidate fits"
    assert chat.counterfactuals and not any("l3b" in c or "l8b" in c for c in chat.counterfactuals)


def test_a_chat_pick_keeps_a_base_model_when_no_tuned_one_fits_and_says_so() -> None:
    cands = tuned({"s135m": BASE, "s360m": INSTRUCT, "s1.7b": INSTRUCT, "l3b": INSTRUCT, "l8b": INSTRUCT})
    chat = pick(get_profile("pi-zero-2w"), cands, ctx=2048, purpose="chat")
    assert (chat.pick.candidate.model, chat.pick.candidate.quant) == GOLDEN["pi-zero-2w"]
    smallest = next(r for r in chat.rows if r.candidate.label == "s360m Q2_K (planned)")
    assert not smallest.fits
    assert chat.note == ("the pick, s135m Q4_K_M (planned), is a base model (no chat tuning); no instruction-tuned "
                         f"candidate fits (the smallest, s360m Q2_K (planned): {smallest.reason})")
    none_tuned = pick(get_profile("pi-zero-2w"), tuned({"s135m": BASE}), ctx=2048, purpose="chat")
    assert none_tuned.pick.candidate.model == "s135m" and "no candidate is instruction-tuned" in none_tuned.note


def test_a_chat_pick_takes_an_unknown_model_before_a_base_one_and_nothing_changes_for_tuned_best() -> None:
    cands = tuned({"l3b": BASE, "s1.7b": UNKNOWN})
    chat = pick(get_profile("pi4-4gb"), [c for c in cands if c.model in ("l3b", "s1.7b")], ctx=2048, purpose="chat")
    assert chat.pick.candidate.model == "s1.7b"
    assert chat.note.startswith("the best fit, l3b Q4_K_M (planned), is a base model (no chat tuning); for chat, "
                                f"picked {chat.pick.candidate.label}, not known to be instruction-tuned, and no "
                                "candidate is instruction-tuned")
    all_tuned = pick(get_profile("pi4-4gb"), tuned(dict.fromkeys([f[0] for f in FAMILY], INSTRUCT)), ctx=2048,
                     purpose="chat")
    assert (all_tuned.pick.candidate.model, all_tuned.pick.candidate.quant) == GOLDEN["pi4-4gb"]
    assert all_tuned.note == ""


def test_an_unknown_purpose_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--for 'poem'"):
        pick(get_profile("pi4-4gb"), CANDIDATES, ctx=2048, purpose="poem")
