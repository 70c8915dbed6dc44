"""`edge-run pick --measure` on a tiny checkpoint (real conversion and llama.cpp evaluation), the plan's
order and budget (and what a budget too small for any step says), one measure at a time per cache, and
`edge-run eval` feeding the quality store."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_run.profiles.devices import get_profile
from edge_run.runtime.eval.store import QualityStore
from edge_run.runtime.pick.measure import plan
from edge_run.runtime.pick.picker import Candidate, pick

from .conftest import CliResult
from .test_picker import FAMILY, QUANTS, synthetic


@pytest.fixture
def models(tiny_checkpoint: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDGE_RUN_CACHE", str(tmp_path / "cache"))
    shutil.copytree(tiny_checkpoint("llama"), tmp_path / "models" / "tiny")
    return tmp_path / "models"


def test_measure_fills_the_store_and_never_measures_twice(models: Path, cli: Callable[..., CliResult]) -> None:
    args = ("pick", "--profile", "pi-3b", "--models", models, "--ctx", "256")
    before = json.loads(cli(*args, "--json").stdout)
    assert all(c["quality"]["unmeasured"] for c in before["candidates"])
    assert before["measure_commands"] == [f"edge-run pick --profile pi-3b --models {models} --measure"]
    table = cli(*args).stdout
    assert f"measure the unmeasured: edge-run pick --profile pi-3b --models {models} --measure" in table
    assert "unmeasured (~" in table
    res = cli(*args, "--measure", "--chunks", "2", "--slice-chunks", "1")
    assert res.code == 0, res.stderr
    # anchor Q8_0 x2, then Q8_0 and the 7 other types x1; the imatrix ones (Q2_K..Q4_K_M) are predicted worse
    # than the plain F16 that fits, so they could not change the pick: not measured
    assert "measure: 9 steps, about" in res.stdout
    after = json.loads(cli(*args, "--json").stdout)
    assert after["measure_commands"] == [] and after["quality_store_notes"] == []
    assert not any(c["quality"]["unmeasured"] for c in after["candidates"])
    assert all(c["quality"]["measured"] for c in after["candidates"] if c["fits"] and not c["imatrix"])
    assert all(c["quality"]["bpb"] > after["pick"]["quality"]["bpb"] for c in after["candidates"] if c["imatrix"])
    assert after["pick"]["quality"]["measured"]
    entries = QualityStore.default().entries(_digest(models / "tiny"))
    assert sorted((s.key.quant, s.key.imatrix, s.key.chunks) for s in entries) == sorted(
        [("Q8_0", "", 2)] + [(q, "", 1) for q in ("F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q3_K_M", "Q2_K")])
    assert all(s.entry["ctx"] == 512 and s.entry["bpb"] > 0 for s in entries)
    again = cli(*args, "--measure", "--chunks", "2", "--slice-chunks", "1")
    assert again.code == 0 and "nothing to do" in again.stdout
    auto = json.loads(cli(*args, "--cache-type", "auto", "--json").stdout)  # 16-wide heads: no q8_0 KV cache
    assert len(auto["candidates"]) == len(after["candidates"]) and auto["pick"] == after["pick"]
    assert not list((models / "tiny").parent.glob("*.gguf"))  # converted into the cache, not into --models


def _digest(ckpt: Path) -> str:
    from edge_run.converters.checkpoint import open_checkpoint

    return open_checkpoint(ckpt).digest()


def test_measure_kv_cache_auto(tiny_checkpoint: Callable[[str], Path], tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch, cli: Callable[..., CliResult]) -> None:
    """--cache-type auto --measure measures the model's q8_0 KV cache on the slice beside its f16 cache."""
    monkeypatch.setenv("EDGE_RUN_CACHE", str(tmp_path / "cache"))
    shutil.copytree(tiny_checkpoint("qwen3"), tmp_path / "models" / "tiny")  # 32-wide heads: q8_0 blocks fit
    args = ("pick", "--profile", "pi-3b", "--models", tmp_path / "models", "--ctx", "256", "--cache-type", "auto")
    res = cli(*args, "--measure", "--chunks", "1", "--slice-chunks", "1")
    assert res.code == 0 and "tiny Q8_0 KV q8_0 x1" in res.stdout, res.stdout + res.stderr
    (kv,) = [s for s in QualityStore.default().entries(_digest(tmp_path / "models" / "tiny"))
             if s.key.cache_type == "q8_0"]
    assert (kv.key.quant, kv.key.chunks, kv.entry["cache_type"], kv.entry["flash_attn"]) == ("Q8_0", 1, "q8_0", True)
    data = json.loads(cli(*args, "--json").stdout)
    kv_rows = [c for c in data["candidates"] if c["cache_type"] == "q8_0"]
    assert len(kv_rows) == 8 + 3 and all("KV q8_0: measured" in c["quality"]["basis"] for c in kv_rows)
    assert data["pick"]["cache_type"] is None  # everything fits with an f16 cache: the f16 twin wins the tie
    # `edge-run eval --cache-type q8_0` feeds the store under its cache type, and leaves the manifest's f16 entry
    from edge_run.converters.gguf.convert import ConvertOptions, convert_to_gguf
    from edge_run.core.manifest import read_manifest

    (gguf,) = convert_to_gguf(tmp_path / "models" / "tiny", tmp_path, ConvertOptions(quants="q4_0", name="tiny"))
    f16 = json.loads(cli("eval", gguf, "--chunks", "1", "--json").stdout)
    q8 = json.loads(cli("eval", gguf, "--chunks", "1", "--cache-type", "q8_0", "--json").stdout)
    assert q8["cache_type"] == "q8_0" and q8["saved_to_manifest"] and "cache_type" not in f16
    runs = {s.key.cache_type: s.entry["bpb"] for s in QualityStore.default().entries(_digest(tmp_path / "models" /
                                                                                             "tiny"))
            if s.key.quant == "Q4_0"}
    assert runs == {"f16": f16["bpb"], "q8_0": q8["bpb"]}
    manifest = read_manifest(gguf)
    assert manifest is not None and manifest.quality["wikitext2"]["bpb"] == f16["bpb"]


def test_eval_feeds_the_store_and_pick_reads_it(models: Path, cli: Callable[..., CliResult]) -> None:
    from edge_run.converters.gguf.convert import ConvertOptions, convert_to_gguf

    (gguf,) = convert_to_gguf(models / "tiny", models, ConvertOptions(quants="q8_0", name="tiny"))
    res = cli("eval", gguf, "--ctx", "512", "--chunks", "1", "--json")
    assert res.code == 0, res.stderr
    bpb = json.loads(res.stdout)["bpb"]
    (stored,) = QualityStore.default().entries(_digest(models / "tiny"))
    assert stored.key.cache_type == "f16" and stored.entry["bpb"] == bpb
    assert (stored.key.quant, stored.key.chunks, stored.key.ctx) == ("Q8_0", 1, 512)
    shutil.move(str(gguf.with_name(gguf.name + ".manifest.json")), str(models.parent / "m.json"))
    gguf.unlink()  # only the checkpoint is left: its planned pairings still read the store
    data = json.loads(cli("pick", "--profile", "pi-3b", "--models", models, "--ctx", "256", "--json").stdout)
    q8 = next(c for c in data["candidates"] if c["quant"] == "Q8_0")
    assert q8["quality"]["measured"] and q8["quality"]["bpb"] == pytest.approx(bpb, abs=1e-4)


def _with_source(c: Candidate, digest: str) -> Candidate:
    return dataclasses.replace(c, digest=digest, checkpoint=Path("/nowhere"))


def test_plan_is_anchors_first_then_cheapest_pairings_within_the_budget(tmp_path: Path) -> None:
    cands = [_with_source(synthetic(*FAMILY[0], q), "small") for q in QUANTS] + \
            [_with_source(synthetic(*FAMILY[1], q), "mid") for q in QUANTS]
    result = pick(get_profile("pi5-8gb"), cands, ctx=512)
    store = QualityStore(tmp_path)
    full = plan(result, store, chunks=20, slice_chunks=4)
    kinds = [s.anchor for s in full.planned]
    assert kinds == sorted(kinds, reverse=True) and sum(kinds) == 2  # one anchor per model, first
    assert {s.quant for s in full.planned if s.anchor} == {"Q8_0"}
    pair_costs = [s.est_seconds for s in full.planned if not s.anchor]
    assert pair_costs == sorted(pair_costs)
    assert len(full.planned) == 2 + 2 * len(QUANTS) and not full.over_budget
    cheapest_anchor = min(s.est_seconds for s in full.planned if s.anchor)
    tight = plan(result, store, chunks=20, slice_chunks=4, budget_s=cheapest_anchor * 1.01)
    assert [s.anchor for s in tight.planned] == [True] and len(tight.over_budget) == len(full.planned) - 1
    assert tight.est_seconds <= cheapest_anchor * 1.01


def test_a_model_that_cannot_fit_is_measured_last(tmp_path: Path) -> None:
    cands = [_with_source(synthetic(*FAMILY[0], q), "small") for q in QUANTS] + \
            [_with_source(synthetic(*FAMILY[2], q), "big") for q in QUANTS]
    result = pick(get_profile("pi-zero-2w"), cands, ctx=2048)
    assert not any(r.fits for r in result.rows if r.candidate.digest == "big")
    steps = plan(result, QualityStore(tmp_path)).planned
    assert steps[0].anchor and steps[0].digest == "small"
    assert steps[-1].anchor and steps[-1].digest == "big"  # only explains the pick: last
    assert not any(s.digest == "big" and not s.anchor for s in steps)


def test_an_imatrix_pairing_is_measured_only_where_it_could_change_the_pick(tmp_path: Path) -> None:
    """It costs an F16 pass over the calibration text: planned where it is predicted better than every plain
    pairing of its model that fits (a Pi Zero 2 W, where 135M fits only at ~4 bits), not where F16 fits."""
    cands = [_with_source(synthetic(*FAMILY[0], q), "small") for q in QUANTS]
    cands += [dataclasses.replace(c, imatrix=True) for c in cands if c.quant in ("Q4_K_M", "Q2_K")]
    for profile, expect in (("pi-zero-2w", {"Q4_K_M"}), ("pi5-8gb", set())):
        result = pick(get_profile(profile), cands, ctx=2048)
        steps = plan(result, QualityStore(tmp_path)).planned
        assert {s.quant for s in steps if s.imatrix} == expect, profile
        assert all("+imat" in s.label for s in steps if s.imatrix)


def test_a_budget_below_the_cheapest_step_says_so(models: Path, cli: Callable[..., CliResult]) -> None:
    """It used to say "nothing to do, the store already has it" with nothing stored."""
    res = cli("pick", "--profile", "pi-3b", "--models", models, "--ctx", "256", "--measure", "--chunks", "100000",
              "--slice-chunks", "1", "--budget-seconds", "1")
    assert res.code == 0, res.stderr
    line = next(ln for ln in res.stdout.splitlines() if "too small" in ln)
    m = re.fullmatch(r"measure: --budget-seconds 1 is too small for the cheapest step \(tiny Q8_0 x100000, about "
                     r"(\d+) s\): nothing measured; pass --budget-seconds (\d+) or more", line)
    assert m is not None, line
    assert 1 < int(m.group(1)) <= int(m.group(2))
    assert "nothing to do" not in res.stdout
    assert QualityStore.default().entries(_digest(models / "tiny")) == []


def test_the_cheapest_step_left_out_can_run_alone(tmp_path: Path) -> None:
    cands = [_with_source(synthetic(*FAMILY[0], q), "small") for q in QUANTS]
    result = pick(get_profile("pi5-8gb"), cands, ctx=512)
    store = QualityStore(tmp_path)
    full = plan(result, store, chunks=20, slice_chunks=4)
    anchor = next(s for s in full.planned if s.anchor)
    cheapest_pairing = min((s for s in full.planned if not s.anchor), key=lambda s: s.est_seconds)
    assert cheapest_pairing.est_seconds < anchor.est_seconds  # a pairing is cheaper but means nothing alone
    none = plan(result, store, chunks=20, slice_chunks=4, budget_s=cheapest_pairing.est_seconds / 2)
    assert none.planned == [] and none.cheapest_left_out == anchor
    store.put(anchor.key(), {"bpb": 1.0})  # anchored: now the cheapest pairing runs alone
    anchored = plan(result, store, chunks=20, slice_chunks=4, budget_s=cheapest_pairing.est_seconds / 2)
    assert anchored.planned == [] and anchored.cheapest_left_out == cheapest_pairing
    assert plan(result, store, chunks=20, slice_chunks=4).cheapest_left_out is None


HOLD_THE_LOCK = """
import sys
from edge_run.runtime.pick.measure import measuring
with measuring():
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_second_measure_says_another_is_running(models: Path, cli: Callable[..., CliResult]) -> None:
    """It used to fail in the middle, converting, with "choose another --out" (pick has no --out)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_LOCK], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)  # another process measuring into the same cache (EDGE_RUN_CACHE is set)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        args = ("pick", "--profile", "pi-3b", "--models", models, "--ctx", "256")
        res = cli(*args, "--measure", "--chunks", "1", "--slice-chunks", "1")
        assert res.code == 4 and res.stderr.count("\n") == 1, res.stderr
        assert res.stderr.startswith("error: another `edge-run pick --measure` is measuring into ")
        assert "wait for it to finish, then run this again" in res.stderr and "--out" not in res.stderr
        assert cli(*args).code == 0  # a plain pick does not wait for it
        assert QualityStore.default().entries(_digest(models / "tiny")) == []
    finally:
        holder.communicate("", timeout=30)
    res = cli(*args, "--measure", "--chunks", "1", "--slice-chunks", "1")  # once it is done, this one runs
    assert res.code == 0 and "steps, about" in res.stdout, res.stderr


def test_an_unwritable_cache_says_so_not_out(models: Path, cli: Callable[..., CliResult],
                                              monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("", encoding="utf-8")
    monkeypatch.setenv("EDGE_RUN_CACHE", str(tmp_path / "file" / "cache"))  # under a file: never creatable
    res = cli("pick", "--profile", "pi-3b", "--models", models, "--ctx", "256", "--measure", "--chunks", "1")
    assert res.code == 4 and res.stderr.count("\n") == 1, res.stderr
    assert "set EDGE_RUN_CACHE to a writable folder" in res.stderr and "--out" not in res.stderr
