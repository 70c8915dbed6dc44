"""`edge-run run --json` and `edge-run inspect` on a converted tiny model, through the real CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from .conftest import CliResult


def test_run_json_reports_counts_and_speeds(tiny_gguf: Path, cli: Callable[..., CliResult]) -> None:
    res = cli("run", tiny_gguf, "-p", "The history of", "-n", "8", "--json", "--threads", "2")
    assert res.code == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["prompt_tokens"] > 1  # BOS + text
    assert 1 <= data["completion_tokens"] <= 8
    assert data["decode_tokens_per_s"] >= 0 and data["prefill_tokens_per_s"] > 0
    assert data["load_seconds"] > 0 and data["peak_rss_mib"] > 10
    assert data["threads"] == 2


def test_run_is_deterministic_when_greedy(tiny_gguf: Path, cli: Callable[..., CliResult]) -> None:
    a = json.loads(cli("run", tiny_gguf, "-p", "Once upon", "-n", "6", "--json").stdout)["text"]
    b = json.loads(cli("run", tiny_gguf, "-p", "Once upon", "-n", "6", "--json").stdout)["text"]
    assert a == b


def test_chat_uses_the_template(tiny_gguf: Path, cli: Callable[..., CliResult]) -> None:
    from edge_run.runtime.artifacts.formats import open_backend
    from edge_run.runtime.backends import LoadOptions

    with open_backend(tiny_gguf, LoadOptions(n_ctx=64)) as b:
        assert b.chat_prompt("hi") == "<s>user: hi\nassistant:"
    assert cli("run", tiny_gguf, "--chat", "-p", "hi", "-n", "3").code == 0


def test_inspect_shows_manifest_and_metadata(tiny_gguf: Path, cli: Callable[..., CliResult]) -> None:
    res = cli("inspect", tiny_gguf, "--json")
    assert res.code == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["format"] == "gguf"
    assert info["manifest"]["quant"] == "Q8_0"
    assert info["metadata"]["general.architecture"] == "llama"
    assert info["metadata"]["tokenizer.ggml.pre"] == "gpt-2"
    assert "Q8_0" in info["tensor_types"] and "F32" in info["tensor_types"]
    assert cli("inspect", tiny_gguf).code == 0
