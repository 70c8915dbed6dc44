"""Golden picks for the picker's added dimensions on the synthetic family of tests/test_picker.py: imatrix
variants (Q2_K..Q4_K_M), a q8_0 KV cache (`--cache-type auto`) and context traded for quality (`--min-ctx`)."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_run.core.errors import NothingFitsError
from edge_run.profiles.devices import get_profile, list_profiles
from edge_run.runtime.pick.picker import Candidate, pick
from edge_run.runtime.pick.quality import candidate_quality

from .test_picker import CANDIDATES, FAMILY, GOLDEN, synthetic

IMATRIX = [dataclasses.replace(synthetic(*f, q), imatrix=True) for f in FAMILY for q in ("Q4_K_M", "Q2_K")]

# profile -> pick at ctx 2048 with imatrix variants offered: where the plain golden pick is Q4_K_M or Q2_K, its
# imatrix twin (same memory, about half the loss); and where a larger model's Q2_K+imat now beats what fitted
GOLDEN_IMATRIX: dict[str, str] = {
    "pi-zero-2w": "s135m Q4_K_M+imat", "pi-3b": "s360m Q8_0", "pi4-2gb": "s1.7b Q2_K+imat",
    "pi4-4gb": "l8b Q2_K+imat", "pi4-8gb": "l8b Q4_K_M+imat", "pi5-4gb": "l3b Q4_K_M+imat",
    "pi5-8gb": "l8b Q4_K_M+imat", "pi5-16gb": "l8b Q8_0", "jetson-orin-nano-8gb": "l8b Q4_K_M+imat",
    "laptop-x86-8gb": "l8b Q2_K+imat", "laptop-x86-16gb": "l8b Q8_0", "macbook-m1-8gb": "l8b Q2_K+imat",
}
# (profile, ctx) -> pick with --cache-type auto where it differs from the f16 pick (elsewhere it is the same)
GOLDEN_KV: dict[tuple[str, int], tuple[str, str]] = {
    ("pi-zero-2w", 2048): ("s135m Q4_K_M", "s135m Q8_0 KV q8_0"),
    ("pi4-2gb", 2048): ("s1.7b Q2_K", "s1.7b Q4_K_M KV q8_0"),  # q8_0 KV lets 4-bit weights fit instead of 2-bit
    ("pi-3b", 8192): ("s360m Q4_K_M", "s360m Q8_0 KV q8_0"),  # more bits fit with the smaller cache
    ("macbook-m1-8gb", 8192): ("l3b Q4_K_M", "l3b Q8_0 KV q8_0"),
}


def name(c: Candidate) -> str:
    return c.label.removesuffix(" (planned)")


def test_every_shipped_profile_has_an_imatrix_golden() -> None:
    assert sorted(GOLDEN_IMATRIX) == sorted(p.name for p in list_profiles())


@pytest.mark.parametrize("profile", sorted(GOLDEN_IMATRIX))
def test_golden_pick_with_imatrix_variants(profile: str) -> None:
    result = pick(get_profile(profile), CANDIDATES + IMATRIX, ctx=2048)
    assert name(result.pick.candidate) == GOLDEN_IMATRIX[profile]
    plain = GOLDEN[profile]
    if plain[1] in ("Q4_K_M", "Q2_K") and result.pick.candidate.model == plain[0]:
        assert result.pick.candidate.quant == plain[1] and result.pick.candidate.imatrix
    # an imatrix variant needs exactly its plain twin's memory and is predicted better
    for r in result.rows:
        if r.candidate.imatrix:
            twin = next(t for t in result.rows if t.candidate == dataclasses.replace(r.candidate, imatrix=False))
            assert r.estimate is not None and twin.estimate is not None
            assert r.estimate.total_mib == twin.estimate.total_mib and r.quality.bpb < twin.quality.bpb


@pytest.mark.parametrize("profile", sorted(p.name for p in list_profiles()))
@pytest.mark.parametrize("ctx", [2048, 8192])
def test_kv_cache_auto_only_where_it_makes_a_better_pairing_fit(profile: str, ctx: int) -> None:
    if profile == "pi-zero-2w" and ctx == 8192:  # with an f16 cache nothing fits (s135m Q2_K needs 380 MiB);
        with pytest.raises(NothingFitsError, match="s135m Q2_K"):  # with a q8_0 one it does (296 of 298 MiB)
            pick(get_profile(profile), CANDIDATES, ctx=ctx)
        auto = pick(get_profile(profile), CANDIDATES, ctx=ctx, cache_type="auto")
        assert name(auto.pick.candidate) == "s135m Q2_K KV q8_0"
        return
    plain = pick(get_profile(profile), CANDIDATES, ctx=ctx)
    auto = pick(get_profile(profile), CANDIDATES, ctx=ctx, cache_type="auto")
    got = (name(plain.pick.candidate), name(auto.pick.candidate))
    assert got == GOLDEN_KV.get((profile, ctx), (got[0], got[0]))
    assert auto.pick.quality.bpb <= plain.pick.quality.bpb
    if auto.pick.candidate.cache_type:  # picked with q8_0 KV: its f16 twin does not fit
        twin = next(r for r in auto.rows if r.candidate == dataclasses.replace(auto.pick.candidate, cache_type=""))
        assert not twin.fits and set(twin.constraints) <= {"memory", "page-cache"}
        assert auto.pick.estimate is not None and twin.estimate is not None
        assert auto.pick.estimate.kv_mib == pytest.approx(twin.estimate.kv_mib * 34 / 64, rel=0.01)  # q8_0: 34 B / 32


def test_a_quantized_kv_cache_never_ranks_above_its_f16_twin() -> None:
    c = dataclasses.replace(CANDIDATES[1], references=(("Q8_0", {"bpb": 1.0, "chunks": 4}),))
    f16 = candidate_quality(c)
    gain = candidate_quality(dataclasses.replace(c, cache_type="q8_0", kv_deltas=(("q8_0", -0.01),)))
    loss = candidate_quality(dataclasses.replace(c, cache_type="q8_0", kv_deltas=(("q8_0", 0.02),)))
    assert gain.bpb == f16.bpb and gain.measured  # a measured gain is noise: clamped at the f16 value
    assert loss.bpb == pytest.approx(f16.bpb + 0.02) and "KV q8_0: measured +0.0200" in loss.basis


def test_min_ctx_trades_context_for_quality_only_when_asked() -> None:
    fixed = pick(get_profile("pi-3b"), CANDIDATES, ctx=8192)
    traded = pick(get_profile("pi-3b"), CANDIDATES, ctx=8192, min_ctx=2048)
    assert name(fixed.pick.candidate) == "s360m Q4_K_M" and not fixed.pick.ctx
    assert name(traded.pick.candidate) == "s360m Q8_0" and 2048 <= traded.pick.ctx < 8192
    assert traded.pick.ctx == traded.pick.max_ctx and traded.pick.quality.bpb < fixed.pick.quality.bpb
    # without --min-ctx the picker says what the next context step down would allow
    assert any(line.startswith("at ctx 4096, s360m") and "--min-ctx 4096" in line for line in fixed.counterfactuals)


def test_min_ctx_is_checked() -> None:
    from edge_run.core.errors import UsageError

    with pytest.raises(UsageError, match="--min-ctx 4096 is not between 16 and --ctx 2048"):
        pick(get_profile("pi-3b"), CANDIDATES, ctx=2048, min_ctx=4096)


@pytest.mark.slow
def test_a_planned_imatrix_pairing_converts_beside_the_plain_one(tiny_checkpoint: Callable[[str], Path],
                                                                 tmp_path: Path) -> None:
    """`run --profile` converts an imatrix pick with its importance matrix into <model>-imat.<QUANT>.gguf; the
    next scan lists it as that artifact (imatrix, same model name), not as a planned pairing again."""
    from edge_run.core.manifest import read_manifest
    from edge_run.runtime.eval.store import QualityStore
    from edge_run.runtime.pick.picker import convert_planned, gather_candidates

    shutil.copytree(tiny_checkpoint("qwen3"), tmp_path / "models" / "tiny")
    store = QualityStore(tmp_path / "store")
    planned = next(c for c in gather_candidates(tmp_path / "models", store=store) if c.imatrix and c.quant == "Q4_K_M")
    path = convert_planned(planned)
    assert path == tmp_path / "models" / "tiny-imat.Q4_K_M.gguf"
    m = read_manifest(path)
    assert m is not None and m.extra["imatrix"] and (tmp_path / "models" / "tiny-imat.imatrix.npz").is_file()
    again = gather_candidates(tmp_path / "models", store=store)
    q4 = [c for c in again if c.quant.upper() == "Q4_K_M"]
    assert sorted((c.model, c.imatrix, c.planned) for c in q4) == [("tiny", False, True), ("tiny", True, False)]
