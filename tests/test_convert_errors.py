"""Bad input to `edge-run convert` gets a one-line error, a non-zero exit, no traceback, no partial file."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import CliResult
from .failure_util import assert_clean_failure


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _truncate_weights(ckpt: Path) -> None:
    f = ckpt / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])


def _unknown_arch(ckpt: Path) -> None:
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["architectures"] = ["FancyNewForCausalLM"]
    (ckpt / "config.json").write_text(json.dumps(cfg))


def _drop_tokenizer(ckpt: Path) -> None:
    (ckpt / "tokenizer.json").unlink()


CASES: list[tuple[str, Callable[[Path], None] | None, int, str]] = [
    ("truncated-safetensors", _truncate_weights, 3, "truncated"),
    ("unknown-architecture", _unknown_arch, 3, "LlamaForCausalLM"),
    ("missing-tokenizer", _drop_tokenizer, 3, "tokenizer"),
]


@pytest.mark.parametrize("name,breaker,code,needle", CASES, ids=[c[0] for c in CASES])
def test_bad_checkpoint(name: str, breaker: Callable[[Path], None], code: int, needle: str,
                        tiny_checkpoint: Callable[[str], Path], tmp_path: Path, cli: Callable[..., CliResult]) -> None:
    ckpt = _copy(tiny_checkpoint("llama"), tmp_path / "ckpt")
    breaker(ckpt)
    out = tmp_path / "out"
    res = cli("convert", ckpt, "--quant", "q8_0", "--out", out)
    assert_clean_failure(res, code, needle)
    assert not out.exists() or list(out.iterdir()) == []


def test_missing_directory(tmp_path: Path, cli: Callable[..., CliResult]) -> None:
    res = cli("convert", tmp_path / "nope", "--out", tmp_path / "out")
    assert_clean_failure(res, 3, "does not exist")


def test_unwritable_out(tiny_checkpoint: Callable[[str], Path], tmp_path: Path, cli: Callable[..., CliResult]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    res = cli("convert", tiny_checkpoint("llama"), "--quant", "q8_0", "--out", blocker / "out")
    assert_clean_failure(res, 4, "out")
    assert blocker.read_text() == "not a folder"


def test_existing_artifact_is_kept_without_force(tiny_checkpoint: Callable[[str], Path], tmp_path: Path,
                                                 cli: Callable[..., CliResult]) -> None:
    ckpt = tiny_checkpoint("llama")
    assert cli("convert", ckpt, "--quant", "q8_0", "--out", tmp_path, "--name", "m").code == 0
    artifact = tmp_path / "m.Q8_0.gguf"
    before = artifact.read_bytes()
    res = cli("convert", ckpt, "--quant", "q8_0", "--out", tmp_path, "--name", "m")
    assert_clean_failure(res, 4, "--force")
    assert artifact.read_bytes() == before
    assert cli("convert", ckpt, "--quant", "q8_0", "--out", tmp_path, "--name", "m", "--force").code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.Q8_0.gguf", "m.Q8_0.gguf.manifest.json"]


def test_unknown_quant_type(tiny_checkpoint: Callable[[str], Path], tmp_path: Path,
                            cli: Callable[..., CliResult]) -> None:
    res = cli("convert", tiny_checkpoint("llama"), "--quant", "q3_z", "--out", tmp_path / "out")
    assert_clean_failure(res, 2, "Q4_K_M")
