"""What a new user meets first: `edge-run --help` names the serve extra intact, `edge-run --version` answers, and a
library's log warning (gguf-py's tokenizer heuristics) does not reach the terminal during a conversion."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import pytest

from .conftest import CliResult


def _edge_run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_run.cli.main", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **env})


@pytest.mark.parametrize("argv", [["--help"], ["serve", "--help"]])
def test_help_names_the_serve_extra_intact(argv: list[str]) -> None:
    """Rich markup read `[serve]` as a style tag and printed `pip install 'edge-run'`."""
    res = _edge_run(*argv, TERMINAL_WIDTH="200", COLUMNS="200")
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stdout.replace("│", " ").split())
    assert "pip install 'edge-run[serve]'" in text


def test_version() -> None:
    res = _edge_run("--version")
    assert (res.returncode, res.stderr) == (0, "")
    assert res.stdout == f"edge-run {version('edge-run')}\n"


def _pair_template_checkpoint(src: Path, dest: Path) -> Path:
    """The tiny checkpoint with Gemma 3's kind of post-processor: `<s> A <s> B` for sentence pairs."""
    shutil.copytree(src, dest)
    tok = json.loads((dest / "tokenizer.json").read_text(encoding="utf-8"))

    def special(type_id: int) -> dict[str, object]:
        return {"SpecialToken": {"id": "<s>", "type_id": type_id}}

    tok["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [special(0), {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [special(0), {"Sequence": {"id": "A", "type_id": 0}}, special(1),
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}},
    }
    (dest / "tokenizer.json").write_text(json.dumps(tok), encoding="utf-8")
    return dest


def test_tokenizer_heuristics_warning_stays_quiet(tiny_checkpoint: Callable[[str], Path], tmp_path: Path,
                                                  cli: Callable[..., CliResult],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    import gguf

    ckpt = _pair_template_checkpoint(tiny_checkpoint("llama"), tmp_path / "ckpt")
    with caplog.at_level(logging.WARNING, logger="gguf"):  # the library does warn on this checkpoint ...
        gguf.SpecialVocab(ckpt, n_vocab=384)
    assert "Unknown separator token '<s>'" in caplog.text
    res = cli("convert", ckpt, "--quant", "q8_0", "--out", tmp_path / "out")  # ... and the user never sees it
    assert res.code == 0, res.stderr
    assert "Unknown separator" not in res.stderr
    child = _edge_run("convert", str(ckpt), "--quant", "q8_0", "--out", str(tmp_path / "out2"))
    assert child.returncode == 0, child.stderr
    assert "Unknown separator" not in child.stderr
    debug = _edge_run("convert", str(ckpt), "--quant", "q8_0", "--out", str(tmp_path / "out3"), EDGE_RUN_DEBUG="1")
    assert "Unknown separator token '<s>'" in debug.stderr  # EDGE_RUN_DEBUG=1 shows what libraries say
