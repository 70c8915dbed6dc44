"""The bounded GGUF header reader (src/edge_run/runtime/gguf_header.py) against gguf-py's GGUFReader, the reference we
did not
write: every key-value and every tensor's type, shape, size and data offset are equal on synthetic files of every
value type and on the real zoo artifacts; skipped arrays keep their counts; corrupt headers are refused fast with
one ArtifactError line."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from edge_run.core.errors import ArtifactError
from edge_run.core.gguf_header import GGML_TYPES, SkippedArray, read_gguf_header


def reference(path: Path) -> tuple[dict[str, Any], list[tuple[Any, ...]], int]:
    """(key-values, tensors, data offset) as gguf-py reads them."""
    reader = gguf.GGUFReader(path)
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    tensors = [(t.name, t.tensor_type.name, tuple(int(x) for x in t.shape), int(t.n_elements), int(t.n_bytes),
                int(t.data_offset)) for t in reader.tensors]
    return fields, tensors, reader.data_offset


def assert_same_as_gguf_py(path: Path) -> None:
    fields, tensors, data_offset = reference(path)
    header = read_gguf_header(path, max_items=None)
    assert header.fields.keys() == fields.keys()
    for key, value in fields.items():
        got = header.fields[key]
        if got and isinstance(got, list) and isinstance(got[0], list):  # gguf-py flattens nested arrays
            got = [x for inner in got for x in inner]
        if isinstance(value, float):
            assert got == pytest.approx(value, rel=0, abs=0), key
        else:
            assert got == value, key
    assert header.data_offset == data_offset
    assert [(t.name, t.type_name, t.shape, t.n_elements, t.n_bytes, header.data_offset + t.offset)
            for t in header.tensors] == tensors


def write_gguf(path: Path, extra: Callable[[gguf.GGUFWriter], None] | None = None, n_vocab: int = 300) -> Path:
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(2)
    w.add_context_length(128)
    w.add_embedding_length(64)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.5)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"tok{i}é" for i in range(n_vocab)])
    w.add_token_scores([float(-i) for i in range(n_vocab)])
    w.add_token_types([1] * n_vocab)
    w.add_token_merges([f"t o{i}" for i in range(n_vocab // 2)])
    w.add_bos_token_id(1)
    w.add_add_bos_token(True)
    w.add_chat_template("{{ messages }}")
    for vtype, value in ((gguf.GGUFValueType.UINT8, 7), (gguf.GGUFValueType.INT8, -7), (gguf.GGUFValueType.UINT16, 700),
                         (gguf.GGUFValueType.INT16, -700), (gguf.GGUFValueType.INT32, -70000),
                         (gguf.GGUFValueType.UINT64, 2**40), (gguf.GGUFValueType.INT64, -(2**40)),
                         (gguf.GGUFValueType.FLOAT64, 0.1), (gguf.GGUFValueType.BOOL, False)):
        w.add_key_value(f"test.{vtype.name.lower()}", value, vtype)
    w.add_array("test.pattern", [True, False, True])
    w.add_array("test.floats", [0.5, -1.25])
    if extra:
        extra(w)
    w.add_tensor("token_embd.weight", np.ones((n_vocab, 64), dtype=np.float16))
    w.add_tensor("output_norm.weight", np.ones(64, dtype=np.float32))
    # a quantized tensor: Q8_0 rows of 64 = 2 blocks of 34 bytes
    w.add_tensor("blk.0.attn_q.weight", np.zeros((64, 68), dtype=np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("blk.0.ffn_up.weight", np.zeros((2, 4, 64), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_equal_to_gguf_py_on_every_value_type(tmp_path: Path) -> None:
    assert_same_as_gguf_py(write_gguf(tmp_path / "a.gguf"))


def test_custom_alignment_and_nested_arrays(tmp_path: Path) -> None:
    def extra(w: gguf.GGUFWriter) -> None:
        w.add_custom_alignment(64)
        w.add_array("test.nested", [[1, 2], [3]])
        w.add_array("test.strings", ["a", "", "ü"])

    path = write_gguf(tmp_path / "b.gguf", extra)
    assert_same_as_gguf_py(path)
    header = read_gguf_header(path)
    assert header.data_offset % 64 == 0 and header.fields["test.nested"] == [[1, 2], [3]]


def test_long_arrays_are_skipped_but_counted(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "v.gguf", n_vocab=5000)
    header = read_gguf_header(path)  # default: arrays over 4096 items skipped
    tokens = header.fields["tokenizer.ggml.tokens"]
    assert isinstance(tokens, SkippedArray) and tokens.count == 5000 and tokens.item_type == 8
    assert header.array_length("tokenizer.ggml.scores") == 5000
    assert header.fields["tokenizer.ggml.merges"] == [f"t o{i}" for i in range(2500)]  # short enough to decode
    assert header.fields["test.pattern"] == [True, False, True]
    skipped = read_gguf_header(path, max_items=None, skip_keys=frozenset({"tokenizer.ggml.merges"}))
    assert skipped.fields["tokenizer.ggml.merges"] == SkippedArray(8, 2500)
    assert skipped.fields["tokenizer.ggml.tokens"][4999] == "tok4999é"
    # whatever was skipped, the tensor table is the same
    assert header.tensors == skipped.tensors == read_gguf_header(path, max_items=0).tensors


def test_type_table_matches_gguf_py() -> None:
    for type_id, (name, block, size) in GGML_TYPES.items():
        t = gguf.GGMLQuantizationType(type_id)
        assert t.name == name and gguf.GGML_QUANT_SIZES[t] == (block, size)


def _patch(path: Path, at: int, fmt: str, value: int) -> None:
    data = bytearray(path.read_bytes())
    struct.pack_into(fmt, data, at, value)
    path.write_bytes(bytes(data))


def _key_offset(path: Path, key: str) -> int:
    """Byte offset of the u32 item type of array ``key`` (after its name)."""
    field = gguf.GGUFReader(path).fields[key]
    return field.offset + 8 + len(key) + 4


@pytest.mark.parametrize("case", ["tokens count", "scores count", "string length", "kv count", "tensor count",
                                  "tensor dims", "tensor type", "tensor offset", "magic", "version", "truncated",
                                  "empty", "duplicate key"])
def test_corrupt_headers_are_refused_fast(tmp_path: Path, case: str) -> None:
    path = write_gguf(tmp_path / "c.gguf")
    reader = gguf.GGUFReader(path)
    first_tensor = reader.tensors[0]
    if case == "tokens count":
        _patch(path, _key_offset(path, "tokenizer.ggml.tokens") + 4, "<Q", 2**42)
    elif case == "scores count":
        _patch(path, _key_offset(path, "tokenizer.ggml.scores") + 4, "<Q", 2**61)
    elif case == "string length":
        _patch(path, _key_offset(path, "tokenizer.ggml.tokens") + 12, "<Q", 2**63)
    elif case == "kv count":
        _patch(path, 16, "<Q", 2**64 - 1)
    elif case == "tensor count":
        _patch(path, 8, "<Q", 2**62)
    elif case in ("tensor dims", "tensor type", "tensor offset"):
        # tensor info: u64 name length, name, u32 n_dims, n_dims x u64, u32 type, u64 offset
        at = path.read_bytes().index(b"token_embd.weight") + len("token_embd.weight")  # tensor names only live there
        if case == "tensor dims":
            _patch(path, at + 4, "<Q", 2**60)
        elif case == "tensor type":
            _patch(path, at + 4 + 16, "<I", 99)
        else:
            _patch(path, at + 4 + 16 + 4, "<Q", 2**50)
    elif case == "magic":
        _patch(path, 0, "<I", 0x12345678)
    elif case == "version":
        _patch(path, 4, "<I", 9)
    elif case == "truncated":
        path.write_bytes(path.read_bytes()[:first_tensor.data_offset + 100])
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "duplicate key":  # two keys of the same length: rename one to the other
        path.write_bytes(path.read_bytes().replace(b"test.int32", b"test.int16", 1))
    t0 = time.perf_counter()
    with pytest.raises(ArtifactError) as info:
        read_gguf_header(path)
    assert time.perf_counter() - t0 < 2.0, "a corrupt count must fail at once"
    line = info.value.one_line()
    assert "\n" not in line and line.startswith("c.gguf is not a readable GGUF file (")
    if case in ("tokens count", "scores count", "string length", "kv count", "tensor count"):
        assert "runs past the end of the file" in line


@pytest.mark.zoo
@pytest.mark.parametrize("model,quant", [("smollm2-135m", "Q4_K_M"), ("smollm2-135m", "Q8_0"),
                                         ("gemma3-270m", "Q4_K_M")])
def test_equal_to_gguf_py_on_zoo_models(zoo_gguf_dir: Callable[[str, str], Path], model: str, quant: str) -> None:
    path = zoo_gguf_dir(model, quant)
    assert_same_as_gguf_py(path)
    t0 = time.perf_counter()
    header = read_gguf_header(path)
    elapsed = time.perf_counter() - t0
    n_vocab = header.array_length("tokenizer.ggml.tokens")
    assert n_vocab is not None and n_vocab > 40_000
    assert isinstance(header.fields["tokenizer.ggml.tokens"], SkippedArray)
    print(f"\n{path.name}: header with {n_vocab} tokens read in {elapsed * 1000:.0f} ms")
