"""`edge-run bench` and tools/bench_vs_llama.py: the JSON they print/write (schema, not speed: speeds are
benchmarks, reported in results/, never asserted against a threshold in tests)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge_run.runtime.bench import BenchConfig

STATS_KEYS = {"median", "min", "max", "spread_pct", "runs"}


def check_stats(s: dict[str, Any], repeats: int) -> None:
    assert STATS_KEYS <= set(s)
    assert len(s["runs"]) == repeats and all(v > 0 for v in s["runs"])
    assert s["min"] <= s["median"] <= s["max"]
    assert s["spread_pct"] >= 0


def check_summary(d: dict[str, Any], repeats: int, n_prompt: int, n_gen: int) -> None:
    """One load per bench (llama-bench's order: every repetition runs on the same loaded model)."""
    assert d["repeats"] == repeats and d["threads"] >= 1 and d["n_ctx"] >= n_prompt
    assert d["prefill"]["n_tokens"] == n_prompt
    check_stats(d["prefill"]["tokens_per_s"], repeats)
    assert d["decode"]["n_tokens"] == n_gen and d["decode"]["generated"] == [n_gen] * repeats  # as llama-bench:
    # generation does not stop at end-of-text
    check_stats(d["decode"]["tokens_per_s"], repeats)
    check_stats(d["ttft_s"], repeats)
    assert d["ttft_s"]["prompt_tokens"] == BenchConfig().ttft_prompt
    check_stats(d["load_s"], 1)


def test_bench_json_schema(tiny_gguf: Path, cli: Callable) -> None:
    r = cli("bench", tiny_gguf, "--json", "--repeats", "2", "--n-prompt", "64", "--n-gen", "8", "--threads", "1")
    assert r.code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["schema"] == "edge-run-bench/1"
    assert d["artifact"] == tiny_gguf.name and d["quant"] == "Q8_0" and d["format"] == "gguf"
    assert d["file_size"] == tiny_gguf.stat().st_size
    assert d["threads"] == 1
    check_summary(d, 2, 64, 8)
    assert d["peak_rss_mib"] > 0
    assert {"cpu", "physical_cores", "logical_cores", "ram_gib"} <= set(d["machine"])


def test_bench_bad_input(tiny_gguf: Path, tmp_path: Path, cli: Callable) -> None:
    r = cli("bench", tmp_path / "nope.gguf")
    assert r.code == 3 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = cli("bench", tiny_gguf, "--repeats", "0")
    assert r.code == 2 and "Traceback" not in r.stderr


@pytest.mark.slow  # the first run on a machine compiles llama.cpp's own tools (minutes on 2 cores)
def test_bench_vs_llama_reports_ratios(tiny_gguf: Path, tmp_path: Path) -> None:
    from tools.bench_vs_llama import main

    out = tmp_path / "vs.json"
    assert main([str(tiny_gguf), "--repeats", "1", "--threads", "1", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["schema"] == "edge-run-bench-vs-llama/1" and doc["goal_ratio"] == 0.97
    (res,) = doc["results"]
    for side in ("edge_run", "plain"):
        check_summary(res[side], 1, 512, 128)
    # both sides ran the same greedy generation on the same file, so they produced the same token count
    assert res["edge_run"]["decode"]["generated"] == res["plain"]["decode"]["generated"]
    ratios = res["ratio_edge_run_over_plain"]
    assert set(ratios) == {"prefill", "decode"} and all(v > 0 for v in ratios.values())
    assert res["meets_goal"] == all(v >= 0.97 for v in ratios.values())


@pytest.mark.parametrize("mode,enabled", [("auto", True), ("on", True), ("off", False)])
def test_flash_attention_modes(tiny_gguf: Path, mode: str, enabled: bool) -> None:
    """auto (the default, as llama.cpp's tools) enables flash attention on the CPU; off disables it."""
    import llama_cpp

    from edge_run.runtime.artifacts.formats import open_backend
    from edge_run.runtime.backends import LoadOptions

    with open_backend(tiny_gguf, LoadOptions(n_ctx=64, n_threads=1, flash_attn=mode)) as b:
        want = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if enabled else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        assert b.llm.context_params.flash_attn_type == want  # type: ignore[attr-defined]


def test_quantized_kv_cache_refuses_flash_attention_off(tiny_gguf: Path, cli: Callable) -> None:
    from edge_run.core.errors import UsageError
    from edge_run.runtime.artifacts.formats import open_backend
    from edge_run.runtime.backends import LoadOptions

    with pytest.raises(UsageError, match="needs flash attention"):
        open_backend(tiny_gguf, LoadOptions(n_ctx=64, n_threads=1, cache_type="q8_0", flash_attn="off"))
    r = cli("run", tiny_gguf, "-p", "hi", "-n", "2", "-t", "1", "--flash-attn", "sometimes")
    assert r.code == 2 and r.stderr.startswith("error: unknown flash attention mode"), r.stderr


def test_bench_evaluates_every_prompt_token(tiny_gguf: Path) -> None:
    """The warm-up runs the very prompt the prefill then times: with prefix reuse on, the timed prefill would
    evaluate one token and report the speed of 64."""
    from edge_run.runtime.bench import BackendRunner

    runner = BackendRunner(tiny_gguf, BenchConfig(n_prompt=64, n_gen=4, threads=1))
    try:
        tokens = runner.tokenize("The quick brown fox jumps over the lazy dog. " * 8)[:64]
        runner.generate(tokens, 2)
        timing = runner.generate(tokens, 1)
        assert timing.prompt_tokens == 64
        assert runner.backend.last_result is not None and runner.backend.last_result.cached_tokens == 0
    finally:
        runner.close()


def test_speed_table_ratio_and_bootstrap_interval() -> None:
    """A row's ratio is the median of per-round ratios; its 95% bootstrap interval holds that median, is ordered,
    and collapses to a point when every round gives the same ratio."""
    from tools.speed_rows import Row

    row = Row("r", edge_run=[{"tps": v} for v in (90.0, 100.0, 99.0, 120.0, 95.0)],
              reference=[{"tps": 100.0}] * 5)
    d = row.to_dict()
    assert d["ratio"] == {"tps": 0.99}
    lo, hi = d["ratio_ci95"]["tps"]
    assert 0.9 <= lo <= 0.99 <= hi <= 1.2 and lo < hi
    refs = (1.0, 3.0, 5.0)
    same = Row("s", edge_run=[{"tps": 2.0 * v} for v in refs], reference=[{"tps": v} for v in refs])
    assert same.to_dict()["ratio_ci95"] == {"tps": [2.0, 2.0]}


def test_pooled_bench_line_sets_the_rows_beside_the_calibration() -> None:
    """The bench rows' rounds pooled into one paired median, and the share of single rounds under 0.97 on each
    side; no calibration row, no pooled line."""
    from tools.bench_vs_llama import pooled_bench

    def row(name: str, ratios: list[float]) -> dict:
        return {"row": name, "runs": {"edge_run": [{"tps": r} for r in ratios], "reference": [{"tps": 1.0}] * 4}}

    rows = [row("bench calibration: x", [1.0, 0.96, 1.0, 1.0]), row("bench pp512/tg128 a", [0.9, 0.95, 1.0, 1.0]),
            row("bench pp512/tg128 b", [0.98, 0.99, 1.0, 1.1]), row("eval c", [0.1, 0.1, 0.1, 0.1])]
    line = pooled_bench(rows)[-1]
    assert line.startswith("bench rows pooled (2 rows x their rounds): tps 0.995 [")
    assert "single rounds under 0.97: 25%; calibration's: 25%" in line  # 2 of the 8 pooled rounds, 1 of 4
    assert pooled_bench([r for r in rows if "calibration" not in r["row"]]) == []


def test_bench_runs_each_test_back_to_back_after_its_warm_up() -> None:
    """llama-bench's order on one loaded model: prefill warm-up, R prefills, R time-to-first-token prompts,
    decode warm-up, R decodes."""
    from edge_run.runtime.bench import GenTiming, measure

    class Recorder:
        load_seconds = 0.5

        def __init__(self) -> None:
            self.calls: list[tuple[int, int]] = []

        def tokenize(self, text: str) -> list[int]:
            return list(range(600))

        def generate(self, tokens: list[int], n: int) -> GenTiming:
            self.calls.append((len(tokens), n))
            return GenTiming(len(tokens), n, 0.01, 0.01 * n)

        def close(self) -> None:
            raise AssertionError("measure leaves closing to its caller")

    runner = Recorder()
    seen: list[tuple[int, int]] = []
    m = measure(runner, BenchConfig(n_prompt=512, n_gen=16, repeats=3), "text",
                progress=lambda stage, done, total: seen.append((done, total)))
    assert runner.calls == [(512, 2), *[(512, 1)] * 3, *[(32, 1)] * 3, (1, 2), *[(1, 16)] * 3]
    assert m.load_s == [0.5] and len(m.prefill) == len(m.ttft) == len(m.decode) == 3
    assert seen == [(i, 11) for i in range(1, 12)]
