"""tools/tradeoff_study.py keeps measured rows across runs with other chunk counts or bench settings."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from tools.tradeoff_study import kept_rows, markdown_table, merged_settings

ROOT = Path(__file__).resolve().parents[1]
SHARED = {"corpus": "wikitext-2-raw-test", "corpus_sha256": "abc", "ctx": 512, "imatrix_text": "tinyshakespeare",
          "imatrix_chunks": 64}
BENCH = {"repeats": 3, "n_prompt": 512, "n_gen": 128}
SPEED = {"decode_tok_s": 90.0, "decode_spread_pct": 1.0, "prefill_tok_s": 900.0, "prefill_spread_pct": 2.0,
         "peak_rss_mib": 300.0, "bench_threads": 2}


def row(model: str, label: str, chunks: int, speed: bool) -> dict[str, Any]:
    r: dict[str, Any] = {"model": model, "quant": label, "imatrix": False, "label": label, "file_size": 100,
                         "file_mib": 0.1, "bits_per_weight": 8.0, "ppl": 20.0, "bpb": 1.1, "kld_vs_f16": 0.01,
                         "top1_vs_f16": 0.95, "chunks": chunks}
    return {**r, **SPEED} if speed else r


def old_doc() -> dict[str, Any]:
    return {"settings": {**SHARED, "chunks": 40, "bench": BENCH},
            "rows": [row(m, q, 40, True) for m in ("smollm2-135m", "gemma3-270m") for q in ("F16", "Q8_0")]}


def test_a_no_bench_run_of_another_model_keeps_the_old_rows_and_their_speed() -> None:
    run = {**SHARED, "chunks": 12, "bench": None}
    old = old_doc()
    rows = kept_rows(copy.deepcopy(old), run, ["qwen2.5-coder-0.5b"], rebench=False)
    assert rows == old["rows"]  # quality and speed columns untouched
    rows.append(row("qwen2.5-coder-0.5b", "F16", 12, False))
    s = merged_settings(run, old["settings"], ["qwen2.5-coder-0.5b"], rows)
    assert s["chunks"] == "per model"
    assert s["chunks_by_model"] == {"smollm2-135m": 40, "gemma3-270m": 40, "qwen2.5-coder-0.5b": 12}
    assert s["bench"] == BENCH  # the settings of the rows that have speed columns
    table = markdown_table(rows).splitlines()
    assert table[2].endswith("| 90 |  |") and table[-1].endswith("| - |  |")
    assert "| qwen2.5-coder-0.5b | F16 | 12 |" in table[-1]


def test_the_rerun_model_with_another_chunk_count_is_measured_again() -> None:
    run = {**SHARED, "chunks": 20, "bench": None}
    rows = kept_rows(old_doc(), run, ["gemma3-270m"], rebench=False)
    assert {r["model"] for r in rows} == {"smollm2-135m"}
    same = kept_rows(old_doc(), {**SHARED, "chunks": 40, "bench": None}, ["gemma3-270m"], rebench=False)
    assert len(same) == 4  # the same count: reused


def test_other_bench_settings_drop_only_the_speed_columns() -> None:
    run = {**SHARED, "chunks": 40, "bench": {**BENCH, "repeats": 5}}
    rows = kept_rows(old_doc(), run, ["qwen2.5-coder-0.5b"], rebench=False)
    assert len(rows) == 4 and all("decode_tok_s" not in r and r["ppl"] == 20.0 for r in rows)
    assert merged_settings(run, old_doc()["settings"], ["qwen2.5-coder-0.5b"], rows)["bench"] is None


def test_other_corpus_or_ctx_keeps_nothing() -> None:
    for change in ({"ctx": 1024}, {"corpus_sha256": "def"}, {"imatrix_chunks": 32}):
        assert kept_rows(old_doc(), {**SHARED, **change, "chunks": 40, "bench": None}, [], rebench=False) == []


def test_the_committed_study_records_each_models_chunks() -> None:
    doc = json.loads((ROOT / "results" / "tradeoff.json").read_text(encoding="utf-8"))
    by_model = doc["settings"]["chunks_by_model"]
    assert set(by_model) == {r["model"] for r in doc["rows"]}
    for r in doc["rows"]:
        assert r["chunks"] == by_model[r["model"]], (r["model"], r["label"])
