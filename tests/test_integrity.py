"""`run` verifies an artifact against its manifest: size always, sha256 on first use (cached)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from edge_run.converters.gguf.convert import ConvertOptions, convert_to_gguf
from edge_run.core.errors import IntegrityError
from edge_run.runtime.artifacts.integrity import verify_artifact

from .conftest import CliResult


@pytest.fixture
def artifact(tiny_checkpoint: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDGE_RUN_CACHE", str(tmp_path / "cache"))
    (path,) = convert_to_gguf(tiny_checkpoint("llama"), tmp_path / "out", ConvertOptions(quants="q8_0", name="m"))
    return path


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_first_use_hashes_then_caches(artifact: Path, tmp_path: Path) -> None:
    assert verify_artifact(artifact) is not None
    assert (tmp_path / "cache" / "verified.json").exists()
    _flip_last_byte(artifact)  # same size, new mtime: the cache entry no longer applies
    with pytest.raises(IntegrityError, match="does not match its manifest"):
        verify_artifact(artifact)


def test_run_refuses_corrupt_artifact(artifact: Path, cli: Callable[..., CliResult]) -> None:
    _flip_last_byte(artifact)
    res = cli("run", artifact, "-p", "hello", "-n", "2")
    assert res.code == 5
    assert res.stderr.count("\n") == 1 and "re-convert" in res.stderr and "Traceback" not in res.stderr


def test_run_refuses_truncated_artifact(artifact: Path, cli: Callable[..., CliResult]) -> None:
    data = artifact.read_bytes()
    artifact.write_bytes(data[:-100])
    res = cli("run", artifact, "-p", "hello", "-n", "2")
    assert res.code == 5 and "bytes but its manifest says" in res.stderr
