"""The artifact-format registry: one row per format (src/edge_run/core/formats.py +
src/edge_run/runtime/artifacts/formats.py).

The proof that adding a format is its module plus one row: a third format, "ggbin" (a folder holding a
renamed GGUF, weights.bin), is defined in this file alone: its two rows, its backend (the GGUF backend on
the renamed file) and its converter entry. Registered at test time, it converts, is detected, sized,
verified, inspected, estimated, picked, run and evaluated through the ordinary commands, none of which
knows its name. The ONNX rows are checked on the tiny ONNX artifact.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_run.core import formats
from edge_run.core.errors import ArtifactError, InsufficientMemoryError, UsageError
from edge_run.core.formats import ArtifactFormat, ConvertRequest, folder_payload
from edge_run.core.manifest import Manifest, read_manifest, write_manifest
from edge_run.runtime.artifacts import formats as format_rows
from edge_run.runtime.backends.base import Backend, LoadOptions
from edge_run.runtime.estimate.gguf import MIB, MemoryEstimate, ModelShape

from .conftest import CliResult

# ------------------------------------------------------------------ the hypothetical format, whole

WEIGHTS = "weights.bin"


def _inner(path: Path) -> Path:
    return Path(path) / WEIGHTS


def _detect(path: Path, head: bytes) -> bool:
    return path.is_dir() and _inner(path).is_file()


def _hashed(path: Path, manifest: Manifest) -> dict[Path, str]:
    return {_inner(path): manifest.sha256}


def convert_request(checkpoint: Path, out_dir: Path, request: ConvertRequest,
                    progress: Callable[[str, int, int], None] | None = None) -> list[Path]:
    """`edge-run convert --format ggbin`: the GGUF converter, its file renamed into a folder."""
    from edge_run.converters.gguf.convert import ConvertOptions, convert_to_gguf

    made = []
    for gguf in convert_to_gguf(checkpoint, out_dir, ConvertOptions(quants=request.quant or "q8_0",
                                                                   name=request.name, force=request.force)):
        m = read_manifest(gguf)
        assert m is not None
        folder = gguf.with_suffix(".ggbin")
        folder.mkdir()
        gguf.rename(_inner(folder))
        gguf.with_name(gguf.name + ".manifest.json").unlink()
        m.format, m.artifact = "ggbin", WEIGHTS
        write_manifest(folder, m)
        made.append(folder)
    return made


def _open(path: Path, options: LoadOptions) -> Backend:
    from edge_run.runtime.backends.gguf import GGUFBackend

    return GGUFBackend(_inner(path), options)


def _estimate(path: Path | None, shape: ModelShape | None, n_ctx: int, simd: tuple[str, ...],
              cache_type: str) -> MemoryEstimate:
    assert path is not None
    return format_rows.ROWS["gguf"].estimate(_inner(path), shape, n_ctx, simd, cache_type)


def _inspect(path: Path, with_tensors: bool) -> dict[str, Any]:
    from edge_run.runtime.artifacts.gguf_info import gguf_summary

    return gguf_summary(_inner(path), with_tensors)


GGBIN = ArtifactFormat(name="ggbin", noun="a ggbin folder", accepts="a ggbin folder", detect=_detect,
                       payload=folder_payload, hashed=_hashed, converter=f"{__name__}:convert_request")
GGBIN_ROW = format_rows.FormatRow(
    name="ggbin", open=_open, estimate=_estimate, inspect=_inspect,
    trained_context=lambda path: format_rows.ROWS["gguf"].trained_context(_inner(path)),
    chunk_scorer=format_rows.ROWS["gguf"].chunk_scorer)


@pytest.fixture
def ggbin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The two rows, registered for one test (monkeypatch removes them after it)."""
    monkeypatch.setitem(formats.FORMATS, "ggbin", GGBIN)
    monkeypatch.setitem(format_rows.ROWS, "ggbin", GGBIN_ROW)
    yield


# ---------------------------------------------------------------------------------------- tests

def test_every_format_has_both_halves() -> None:
    assert list(formats.FORMATS) == list(format_rows.ROWS) == ["gguf", "onnx"]
    with pytest.raises(ValueError, match="no row in src/edge_run/core"):
        format_rows.register_row(GGBIN_ROW)  # a runtime row needs its bottom row first
    with pytest.raises(ValueError, match="registered twice"):
        formats.register_format(formats.GGUF)


def test_unknown_formats_name_the_known_ones(tmp_path: Path, cli: Callable[..., CliResult]) -> None:
    with pytest.raises(UsageError) as e:
        formats.get_format("tflite")
    assert e.value.hint == "choose --format gguf or --format onnx"
    junk = tmp_path / "x.bin"
    junk.write_bytes(b"PK\x03\x04 not a model")
    with pytest.raises(ArtifactError, match="neither a GGUF file nor an ONNX artifact") as e2:
        formats.detect_format(junk)
    assert e2.value.hint == "pass a .gguf file or an ONNX artifact folder"
    with pytest.raises(ArtifactError, match="does not exist"):
        format_rows.row_for(tmp_path / "nope.gguf")
    res = cli("convert", tmp_path, "--format", "tflite", "--out", tmp_path / "out")
    assert res.code == 2 and "choose --format gguf or --format onnx" in res.stderr


def test_detection_never_opens_a_fifo(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    with pytest.raises(ArtifactError, match="neither"):  # would block forever if it read the magic
        formats.detect_format(fifo)


def test_gguf_row_sizes_and_hashes_the_file(tiny_gguf: Path) -> None:
    m = read_manifest(tiny_gguf)
    assert m is not None
    assert formats.payload_files(tiny_gguf) == [tiny_gguf]
    assert formats.artifact_size(tiny_gguf) == m.file_size == tiny_gguf.stat().st_size
    assert formats.hashed_files(tiny_gguf, m) == {tiny_gguf: m.sha256}


def test_a_third_format_is_two_rows(ggbin: None, tiny_checkpoint: Callable[[str], Path], tmp_path: Path,
                                    cli: Callable[..., CliResult]) -> None:
    """convert -> detect -> size -> verify -> inspect -> estimate -> pick -> run -> eval, through the
    ordinary commands, with the format defined only in this file."""
    res = cli("convert", tiny_checkpoint("llama"), "--format", "ggbin", "--quant", "q8_0", "--out", tmp_path,
              "--name", "m", "--json")
    assert res.code == 0, res.stderr
    (art,) = [Path(p) for p in json.loads(res.stdout)]
    assert art.is_dir() and sorted(p.name for p in art.iterdir()) == ["manifest.json", WEIGHTS]

    assert formats.artifact_format(art) == "ggbin"
    m = read_manifest(art)
    assert m is not None and m.format == "ggbin"
    assert formats.artifact_size(art) == m.file_size == _inner(art).stat().st_size

    assert cli("verify", art).code == 0
    info = cli("inspect", art, "--json")
    assert info.code == 0, info.stderr
    data = json.loads(info.stdout)
    assert data["format"] == "ggbin" and data["metadata"]["general.architecture"] == "llama"
    assert data["tensor_types"]

    est = format_rows.estimate_artifact(art, 512)
    assert est.total_mib == format_rows.estimate_artifact(_inner(art), 512).total_mib > 0
    with pytest.raises(InsufficientMemoryError, match="needs about"):
        format_rows.check_memory(art, 512, available_mib=1)

    from edge_run.profiles.devices import get_profile
    from edge_run.runtime.pick.picker import candidate_for_artifact, pick

    result = pick(get_profile("pi4-4gb"), [candidate_for_artifact(art)], ctx=512)
    assert result.pick.fits and result.pick.candidate.format == "ggbin" and result.pick.estimate is not None

    run = cli("run", art, "-p", "The history of", "-n", "4", "--ctx", "128", "--json")
    assert run.code == 0, run.stderr
    assert json.loads(run.stdout)["completion_tokens"] > 0
    ev = cli("eval", art, "--ctx", "64", "--chunks", "1", "--no-save", "--json")
    assert ev.code == 0, ev.stderr
    assert json.loads(ev.stdout)["ppl"] > 1

    broken = shutil.copytree(art, tmp_path / "broken.ggbin")
    data_bytes = bytearray(_inner(broken).read_bytes())
    data_bytes[-1] ^= 0xFF
    _inner(broken).write_bytes(bytes(data_bytes))
    bad = cli("verify", broken)
    assert bad.code == 5 and "does not match its manifest" in bad.stderr


@pytest.fixture(scope="module")
def onnx_art(tiny_checkpoint: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edge_run.converters.onnx.convert import OnnxOptions, convert_to_onnx

    (art,) = convert_to_onnx(tiny_checkpoint("qwen2"), tmp_path_factory.mktemp("onnx"),
                             OnnxOptions(quant="int4", name="q"))
    return Path(art)


def test_onnx_rows_estimate_and_pick(onnx_art: Path) -> None:
    """The ONNX estimator reads its dimensions from genai_config.json and its bytes from the payload; the picker
    ranks an ONNX artifact a user passes, and the memory guard applies to it."""
    import onnx
    from onnx import numpy_helper

    from edge_run.profiles.devices import get_profile
    from edge_run.runtime.estimate import onnx as estimate_onnx
    from edge_run.runtime.pick.picker import candidate_for_artifact, pick

    art = onnx_art
    m = read_manifest(art)
    assert m is not None
    assert formats.artifact_format(art) == "onnx"
    assert formats.artifact_size(art) == m.file_size
    assert set(formats.hashed_files(art, m)) == set(formats.payload_files(art))
    dec = json.loads((art / "genai_config.json").read_text())["model"]["decoder"]
    est = format_rows.estimate_artifact(art, 256)
    kv = 2 * dec["num_hidden_layers"] * dec["num_key_value_heads"] * dec["head_size"] * 256 * 4
    assert est.kv_mib == pytest.approx(kv / MIB)
    graph = sum(p.stat().st_size for p in art.iterdir() if p.name.startswith("model.onnx"))
    model = onnx.load(str(art / "model.onnx"))  # with its weights: every MatMulNBits input as an array
    packed = {i for n in model.graph.node if n.op_type == "MatMulNBits" for i in n.input}
    prepacked = sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer if t.name in packed)
    assert 0 < prepacked < graph
    assert est.weights_file_mib + est.weights_repacked_mib == pytest.approx(
        (estimate_onnx.PREPACKED_FACTOR * prepacked + estimate_onnx.OTHER_WEIGHTS_FACTOR * (graph - prepacked)) / MIB,
        rel=1e-3)  # model.onnx's own bytes (names, attributes) count as "other"
    tokenizer = (art / "tokenizer.json").stat().st_size
    assert est.baseline_mib == pytest.approx(estimate_onnx.RUNTIME_ANON_MIB
                                             + estimate_onnx.TOKENIZER_EXPANSION * tokenizer / MIB)
    assert format_rows.estimate_artifact(art, 512).kv_mib == pytest.approx(2 * est.kv_mib)
    with pytest.raises(InsufficientMemoryError):
        format_rows.check_memory(art, 256, available_mib=10)

    result = pick(get_profile("pi4-4gb"), [candidate_for_artifact(art)], ctx=256)
    assert result.pick.fits and result.pick.estimate is not None
    assert result.pick.estimate.total_mib == pytest.approx(est.total_mib)
    assert format_rows.trained_context(art) == m.context_length


def test_bundle_copies_each_format_by_its_payload(tiny_gguf: Path, onnx_art: Path, tmp_path: Path) -> None:
    from edge_run.runtime.bundle.payload import copy_artifact

    for art in (tiny_gguf, onnx_art):
        models = tmp_path / art.name / "models"
        models.parent.mkdir()
        copy_artifact(art, read_manifest(art), models)
        copied = models / art.name
        m = read_manifest(copied)
        assert m is not None and "path" not in m.source
        assert formats.artifact_size(copied) == m.file_size
        assert {p.name for p in formats.payload_files(copied)} == {p.name for p in formats.payload_files(art)}
