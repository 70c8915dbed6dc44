"""src/edge_run/core/stamp_cache.py: facts cached per file identity (path, size, mtime), and the GGUF shape cache that
lets
`run`'s memory guard skip the header read (src/edge_run/runtime/estimate/gguf.py)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_run.core.errors import ArtifactError
from edge_run.core.stamp_cache import StampCache
from edge_run.runtime.estimate import gguf as estimate


def test_value_lives_while_the_file_is_unchanged(tmp_path: Path) -> None:
    f = tmp_path / "a.bin"
    f.write_bytes(b"12345")
    cache = StampCache("t")
    assert cache.get(f) is None
    cache.put(f, {"n": 5})
    assert cache.get(f) == {"n": 5}
    f.write_bytes(b"123456")  # another size
    assert cache.get(f) is None
    cache.put(f, {"n": 6})
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # same size, rewritten later
    assert cache.get(f) is None


def test_corrupt_or_read_only_cache_counts_as_empty(tmp_path: Path) -> None:
    f = tmp_path / "a.bin"
    f.write_bytes(b"x")
    cache = StampCache("t")
    cache.path.parent.mkdir(parents=True, exist_ok=True)
    for junk in ("{not json", "[1, 2]", "nan", '{"' + str(f.resolve()) + '": 7}', "[" * 100_000):
        cache.path.write_text(junk)
        assert cache.get(f) is None
    cache.path.unlink()
    cache.path.mkdir()  # unwritable whoever runs the test (root ignores a read-only folder's mode)
    cache.put(f, 1)  # nothing raised, nothing stored
    assert cache.get(f) is None


def test_a_path_that_cannot_be_looked_at_is_a_miss(tmp_path: Path) -> None:
    cache = StampCache("t")
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    for bad in (tmp_path / "missing.gguf", loop):
        assert cache.get(bad) is None
        cache.put(bad, 1)  # nothing raised, nothing stored
    with pytest.raises(ArtifactError, match="not a readable GGUF file"):
        estimate.shape_from_gguf(tmp_path / "missing.gguf")  # the header read reports it, as before


def test_oldest_entries_go_first(tmp_path: Path) -> None:
    cache = StampCache("t", max_entries=3)
    files = []
    for i in range(5):
        f = tmp_path / f"{i}.bin"
        f.write_bytes(b"x" * i)
        cache.put(f, i)
        files.append(f)
    assert [cache.get(f) for f in files] == [None, None, 2, 3, 4]


def test_gguf_shape_is_read_once(tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / tiny_gguf.name
    f.write_bytes(tiny_gguf.read_bytes())
    first = estimate.shape_from_gguf(f)

    def no_header(path: Path) -> None:
        raise AssertionError("the header was read again")

    monkeypatch.setattr(estimate, "read_gguf_header", no_header)
    assert estimate.shape_from_gguf(f) == first
    with open(f, "ab") as fh:  # a changed file is read again
        fh.write(b"\0" * 32)
    with pytest.raises(AssertionError, match="read again"):
        estimate.shape_from_gguf(f)


def test_a_damaged_shape_entry_is_ignored(tiny_gguf: Path, tmp_path: Path) -> None:
    f = tmp_path / tiny_gguf.name
    f.write_bytes(tiny_gguf.read_bytes())
    first = estimate.shape_from_gguf(f)
    estimate.SHAPES.put(f, {"n_layer": "many", "tensors": [["x", "F16", 1]]})
    assert estimate.shape_from_gguf(f) == first


def test_a_fact_about_several_files_lives_while_each_is_unchanged(tmp_path: Path) -> None:
    files = [tmp_path / "a.onnx", tmp_path / "a.onnx.data"]
    for f in files:
        f.write_bytes(b"x")
    cache = StampCache("t")
    cache.put(tmp_path, {"n": 1}, files)
    assert cache.get(tmp_path, files) == {"n": 1}
    assert cache.get(tmp_path) is None  # the folder's own stamp is another key's
    files[1].write_bytes(b"xy")  # one payload file rewritten: the fact is stale
    assert cache.get(tmp_path, files) is None
    assert cache.get(tmp_path, [*files, tmp_path / "gone"]) is None


def test_onnx_facts_are_read_once_across_processes(tiny_checkpoint: Callable[[str], Path], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_run.converters.onnx.convert import OnnxOptions, convert_to_onnx
    from edge_run.runtime.estimate import onnx as estimate_onnx

    (art,) = convert_to_onnx(tiny_checkpoint("llama"), tmp_path, OnnxOptions(quant="int4", name="t"))
    first = estimate_onnx.onnx_facts(art)
    estimate_onnx._facts.cache_clear()  # what a new process starts with

    def no_graph(folder: Path) -> int:
        raise AssertionError("the graph was parsed again")

    monkeypatch.setattr(estimate_onnx, "_prepacked_bytes", no_graph)
    assert estimate_onnx.onnx_facts(art) == first
    estimate_onnx.FACTS.put(Path(art), {"n_layer": "x"}, estimate_onnx.payload_files(Path(art)))  # damaged entry
    estimate_onnx._facts.cache_clear()
    with pytest.raises(AssertionError, match="parsed again"):
        estimate_onnx.onnx_facts(art)
