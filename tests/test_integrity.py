"""`run` verifies an artifact against its manifest: size always, sha256 on first use (cached); for an ONNX folder
only the files its manifest vouches for count (a .DS_Store or notes beside them change nothing)."""

from __future__ import annotations

import json
import os
import shutil
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


# ------------------------------------------------------- ONNX folders: only the files the manifest vouches for count

@pytest.fixture(scope="module")
def onnx_src(tiny_checkpoint: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edge_run.converters.onnx.convert import OnnxOptions, convert_to_onnx

    (art,) = convert_to_onnx(tiny_checkpoint("llama"), tmp_path_factory.mktemp("onnx"),
                             OnnxOptions(quant="int4", name="m"))
    return Path(art)


@pytest.fixture
def onnx_artifact(onnx_src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDGE_RUN_CACHE", str(tmp_path / "cache"))
    return Path(shutil.copytree(onnx_src, tmp_path / onnx_src.name))


EXTRAS: dict[str, bytes] = {".DS_Store": b"\x00\x00\x00\x01Bud1" + bytes(100), "notes.txt": b"converted on the Pi\n",
                            "m.tar.gz": bytes(5000)}


def test_extra_files_in_an_onnx_folder_change_nothing(onnx_artifact: Path, cli: Callable[..., CliResult]) -> None:
    for name, data in EXTRAS.items():
        (onnx_artifact / name).write_bytes(data)
    (onnx_artifact / "old-bundle").mkdir()
    res = cli("verify", onnx_artifact)
    assert res.code == 0 and res.stdout.startswith("ok "), res.stderr
    assert verify_artifact(onnx_artifact, full=False) is not None  # the size check alone, as on every load
    res = cli("run", onnx_artifact, "-p", "hello", "-n", "2", "--json")
    assert res.code == 0, res.stderr


@pytest.mark.parametrize(("change", "says"), [
    (lambda a: (a / "tokenizer.json").unlink(), "lacks tokenizer.json, which its manifest lists"),
    (lambda a: (a / "genai_config.json").write_text(
        (a / "genai_config.json").read_text(encoding="utf-8").replace("1", "2"), encoding="utf-8"),
     "genai_config.json in m.int4-b32-asym does not match its manifest"),  # same size, other bytes
    (lambda a: (a / "model.onnx").write_bytes((a / "model.onnx").read_bytes()[:-10]), "bytes but its manifest says"),
    (lambda a: _swap_for_fifo(a / "model.onnx.data"), "model.onnx.data in m.int4-b32-asym is not a regular file"),
])
def test_a_missing_or_changed_vouched_file_still_fails(change: Callable[[Path], object], says: str,
                                                        onnx_artifact: Path, cli: Callable[..., CliResult]) -> None:
    for name, data in EXTRAS.items():  # the extras must not mask anything
        (onnx_artifact / name).write_bytes(data)
    change(onnx_artifact)
    for argv in (("verify", onnx_artifact), ("run", onnx_artifact, "-p", "hello", "-n", "2")):
        res = cli(*argv)
        assert res.code == 5, (argv, res.stderr)
        assert says in res.stderr and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr


def test_a_manifest_that_lists_no_files_counts_the_folder(onnx_artifact: Path, cli: Callable[..., CliResult]) -> None:
    """Older ONNX manifests vouch for model.onnx.data alone: their size is the folder's, as when written."""
    mpath = onnx_artifact / "manifest.json"
    data = json.loads(mpath.read_text(encoding="utf-8"))
    del data["extra"]["files"]
    mpath.write_text(json.dumps(data), encoding="utf-8")
    assert cli("verify", onnx_artifact).code == 0
    (onnx_artifact / "model.onnx").write_bytes((onnx_artifact / "model.onnx").read_bytes() + b"\x00")
    res = cli("verify", onnx_artifact)
    assert res.code == 5 and "bytes but its manifest says" in res.stderr


def _swap_for_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)
