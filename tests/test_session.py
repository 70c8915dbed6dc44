"""The load sequence (src/edge_run/runtime/session.py): every command that opens an artifact checks its integrity first;
the context is resolved against the trained context; the memory guard runs before loading."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from edge_run.core.errors import InsufficientMemoryError, IntegrityError, UsageError
from edge_run.runtime.session import DEFAULT_CTX, SessionOptions, open_session, resolve_context, verify

from .conftest import CliResult


@pytest.fixture(scope="module")
def tiny_gguf(tiny_checkpoint: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edge_run.converters.gguf.convert import ConvertOptions, convert_to_gguf

    out = tmp_path_factory.mktemp("session-gguf")
    (path,) = convert_to_gguf(tiny_checkpoint("llama"), out, ConvertOptions(quants="q8_0", name="tiny"))
    return Path(path)


@pytest.fixture
def corrupted(tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy whose last byte is flipped: same size, different sha256."""
    monkeypatch.setenv("EDGE_RUN_CACHE", str(tmp_path / "cache"))
    copy = tmp_path / tiny_gguf.name
    data = bytearray(tiny_gguf.read_bytes())
    data[-1] ^= 0xFF
    copy.write_bytes(bytes(data))
    manifest = tiny_gguf.parent / f"{tiny_gguf.name}.manifest.json"
    (tmp_path / manifest.name).write_bytes(manifest.read_bytes())
    return copy


@pytest.mark.parametrize("command", [("bench", "--repeats", "1", "--n-prompt", "8", "--n-gen", "2"),
                                     ("eval", "--corpus", "tinyshakespeare", "--ctx", "64", "--chunks", "1"),
                                     ("run", "-p", "hi", "-n", "2"),
                                     ("serve", "--port", "0"),
                                     ("chat",)])
def test_every_loading_command_verifies_integrity(corrupted: Path, cli: Callable[..., CliResult],
                                                  command: tuple[str, ...]) -> None:
    res = cli(command[0], corrupted, *command[1:])
    assert res.code == 5, res.stderr
    assert res.stderr.startswith("error: tiny.Q8_0.gguf does not match its manifest (sha256 "), res.stderr


def test_verify_and_open(tiny_gguf: Path, corrupted: Path) -> None:
    assert verify(tiny_gguf) is not None
    with pytest.raises(IntegrityError):
        verify(corrupted)
    with open_session(tiny_gguf, SessionOptions(threads=1)) as backend:
        assert backend.n_ctx == min(DEFAULT_CTX, 512)  # the tiny model was trained for 512 tokens


def test_context_is_checked_against_the_trained_context(tiny_gguf: Path) -> None:
    assert resolve_context(tiny_gguf, None) == 512
    assert resolve_context(tiny_gguf, 128) == 128
    with pytest.raises(UsageError, match="more than the 512 tokens"):
        resolve_context(tiny_gguf, 1024)


def test_memory_guard_runs_before_loading(tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import psutil

    class Tiny:
        available = 1 << 20  # 1 MiB free

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Tiny)
    with pytest.raises(InsufficientMemoryError):
        open_session(tiny_gguf, SessionOptions(threads=1))
    with open_session(tiny_gguf, SessionOptions(threads=1, force=True)) as backend:
        assert backend.n_ctx == 512
