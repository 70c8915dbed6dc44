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
