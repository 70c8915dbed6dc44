"""Property-based fuzzing (hypothesis) of every parser edge-run feeds untrusted bytes to: the safetensors
header reader, manifest parsing, device-profile parsing and GGUF header reading (inspect and the memory
estimate). Property: each either succeeds or raises one of edge-run's own errors (EdgeRunError), never
anything else. Examples are derandomized so CI is reproducible; EDGE_RUN_FUZZ_SCALE=10 runs ten times
as many (try it after touching a parser).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_run.core.errors import EdgeRunError

SCALE = float(os.environ.get("EDGE_RUN_FUZZ_SCALE", "1"))
FUZZ = settings(max_examples=int(1000 * SCALE), deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
# every test below asserts at least this many examples really ran
MIN_RUN = int(900 * SCALE)


class Counter:
    def __init__(self) -> None:
        self.n = 0
        self.edge_run_errors = 0

    def case(self, *parsers: Callable[[], Any]) -> None:
        """One input fed to each parser: success and EdgeRunError are the accepted outcomes; any other exception
        fails the test."""
        self.n += 1
        for parse in parsers:
            try:
                parse()
            except EdgeRunError as e:
                self.edge_run_errors += 1
                assert e.one_line() and "\n" not in e.one_line()


    def done(self, what: str) -> None:
        print(f"\nfuzz {what}: {self.n} cases, {self.edge_run_errors} edge-run errors raised, no other exception")
        assert self.n >= MIN_RUN, f"only {self.n} cases ran"


@pytest.fixture
def counter() -> Counter:
    return Counter()


# JSON values of any shape, small enough to keep examples fast
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)

# ---------------------------------------------------------------------------------------------- safetensors

DTYPES = ["F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL", "F32", "F16", "F8_E4M3", "Q4", ""]
ITEMSIZE = {"F64": 8, "F32": 4, "I64": 8, "I32": 4, "F16": 2, "BF16": 2, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


@st.composite
def safetensors_files(draw: st.DrawFn) -> bytes:
    """Mostly well-formed headers with one or more defects drawn in, plus raw garbage."""
    kind = draw(st.sampled_from(["structured", "structured", "structured", "raw", "length"]))
    if kind == "raw":
        return draw(st.binary(max_size=200))
    header: dict[str, Any] = {}
    offset = 0
    for i in range(draw(st.integers(0, 4))):
        dtype = draw(st.sampled_from(DTYPES))
        dims = st.integers(0, 6) if draw(st.integers(0, 3)) else st.integers(-2, 6) | st.integers(2**31, 2**64)
        shape = draw(st.lists(dims, max_size=3))
        n = int(np.prod([max(d, 0) for d in shape])) if shape else 1
        size = n * ITEMSIZE.get(dtype, 1) + draw(st.sampled_from([0] * 8 + [1, -1]))
        begin = offset + draw(st.sampled_from([0] * 8 + [1, -3, 2**40]))
        entry: dict[str, Any] = {"dtype": dtype, "shape": shape, "data_offsets": [begin, begin + size]}
        if draw(st.integers(0, 9)) == 0:
            entry = draw(st.dictionaries(st.sampled_from(["dtype", "shape", "data_offsets", "x"]), json_values))
        header[draw(st.text(min_size=1, max_size=6)) + str(i)] = entry
        offset = begin + max(size, 0)
    if draw(st.booleans()):
        header["__metadata__"] = draw(json_values)
    raw = json.dumps(header).encode()
    if draw(st.integers(0, 5)) == 0:
        raw = raw[: draw(st.integers(0, len(raw)))] + draw(st.binary(max_size=4))
    data = draw(st.binary(max_size=64)) if draw(st.integers(0, 3)) == 0 else bytes(max(offset, 0) % 4096)
    length = len(raw)
    if kind == "length":
        length = draw(st.sampled_from([0, 1, len(raw) - 1, len(raw) + 1, 2**63, 2**64 - 1, 100 * 2**20 + 1]))
    return struct.pack("<Q", length % 2**64) + raw + data


def test_fuzz_safetensors_header(tmp_path: Path, counter: Counter) -> None:
    from edge_run.converters.checkpoint import read_safetensors_index

    path = tmp_path / "model.safetensors"

    @FUZZ
    @given(safetensors_files())
    def check(blob: bytes) -> None:
        path.write_bytes(blob)

        def parse() -> None:
            for t in read_safetensors_index(path):
                assert 0 <= t.offset and t.offset + t.nbytes <= len(blob)
                t.numpy()  # every tensor it accepts can really be mapped

        counter.case(parse)

    check()
    counter.done("safetensors header")


def test_deeply_nested_headers_are_input_errors(tmp_path: Path) -> None:
    """JSON nested deeper than Python's recursion limit must be a clean error too (json raises RecursionError)."""
    from edge_run.converters.checkpoint import read_safetensors_index
    from edge_run.core.manifest import read_manifest

    deep = b"[" * 100_000 + b"]" * 100_000
    st_file = tmp_path / "model.safetensors"
    st_file.write_bytes(struct.pack("<Q", len(deep)) + deep)
    with pytest.raises(EdgeRunError):
        read_safetensors_index(st_file)
    artifact = tmp_path / "m.gguf"
    artifact.write_bytes(b"GGUF")
    (tmp_path / "m.gguf.manifest.json").write_bytes(deep)
    with pytest.raises(EdgeRunError):
        read_manifest(artifact)


# ---------------------------------------------------------------------------------------------- manifests

def _valid_manifest() -> dict[str, Any]:
    return {"format": "gguf", "artifact": "m.Q4_K_M.gguf", "source": {"path": "/x", "digest": "ab"},
            "architecture": "LlamaForCausalLM", "arch": "llama", "parameter_count": 100, "quant": "Q4_K_M",
            "bits_per_weight": 4.8, "file_size": 1000, "sha256": "00" * 32, "tokenizer": "gpt2",
            "context_length": 2048, "quality": {}, "extra": {}, "tool_version": "0.1.0", "schema": 1,
            "created": "2025-01-01T00:00:00+00:00"}


@st.composite
def manifests(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    m = _valid_manifest()
    for key in draw(st.lists(st.sampled_from([*m, "unknown"]), max_size=4)):
        action = draw(st.sampled_from(["drop", "replace", "replace"]))
        if action == "drop":
            m.pop(key, None)
        else:
            m[key] = draw(json_values | st.sampled_from(["../x", "a/b.gguf", "..", ".", "", "/etc/passwd",
                                                        "m.gguf\x00", "C:\\x.gguf"]))
    return m


def test_fuzz_manifest_parsing(tmp_path: Path, counter: Counter) -> None:
    from edge_run.core.manifest import FIELD_TYPES, Manifest, read_manifest

    artifact = tmp_path / "m.Q4_K_M.gguf"
    artifact.write_bytes(b"GGUF")
    manifest_file = tmp_path / "m.Q4_K_M.gguf.manifest.json"

    @FUZZ
    @given(manifests(), st.sampled_from(["json", "json", "json", "bytes"]), st.binary(max_size=40))
    def check(data: Any, how: str, junk: bytes) -> None:
        manifest_file.write_bytes(json.dumps(data).encode() if how == "json" else junk)

        def parse() -> None:
            m = read_manifest(artifact)
            assert m is not None
            # an accepted manifest names a file in its own folder and round-trips through JSON
            assert (tmp_path / m.artifact).parent == tmp_path and m.artifact not in ("", ".", "..")
            assert Manifest.from_dict(json.loads(m.to_json())) == m
            assert all(isinstance(getattr(m, k), t) for k, t in FIELD_TYPES.items())

        counter.case(parse)

    check()
    counter.done("manifest")


# ---------------------------------------------------------------------------------------------- profiles

def _valid_profile() -> dict[str, Any]:
    return {"name": "pi4-4gb", "description": "Raspberry Pi 4", "ram_mb": 4096, "os_reserved_mb": 400,
            "arch": "arm64", "core_type": "Cortex-A72", "physical_cores": 4, "simd": ["neon"],
            "memory_bandwidth_gbs": 4.0, "storage": "sd"}


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v) if v == v and abs(v) != float("inf") else "nan"
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


@st.composite
def profile_texts(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.text(max_size=80))
    p: dict[str, Any] = _valid_profile()
    for key in draw(st.lists(st.sampled_from([*p, "gpu", "ram"]), max_size=4)):
        if draw(st.booleans()):
            p.pop(key, None)
        else:
            p[key] = draw(st.integers(-2**40, 2**70) | st.floats() | st.text(max_size=6) | st.booleans()
                          | st.lists(st.text(max_size=6) | st.integers(), max_size=3))
    text = "\n".join(f"{k} = {_toml_value(v)}" for k, v in p.items())
    if draw(st.integers(0, 9)) == 0:
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.text(max_size=5)) + text[cut:]
    return text


def test_fuzz_profile_parsing(tmp_path: Path, counter: Counter) -> None:
    from edge_run.profiles.devices import load_profile_file

    path = tmp_path / "device.toml"

    @FUZZ
    @given(profile_texts(), st.booleans(), st.binary(max_size=20))
    def check(text: str, as_text: bool, junk: bytes) -> None:
        path.write_bytes(text.encode("utf-8", "surrogatepass") if as_text else junk + text.encode("utf-8", "replace"))

        def parse() -> None:
            p = load_profile_file(path)
            assert p.ram_mb > 0 and 0 <= p.os_reserved_mb < p.ram_mb and p.physical_cores > 0
            assert p.available_mb > 0 and p.memory_bandwidth_gbs > 0

        counter.case(parse)

    check()
    counter.done("device profile")


# ---------------------------------------------------------------------------------------------- GGUF headers

@pytest.fixture(scope="module")
def small_gguf(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, int]:
    """A small but complete llama GGUF (hyper-parameters, a 6-token vocabulary, two tensors) and where its data
    starts."""
    import gguf

    path = tmp_path_factory.mktemp("gguf") / "small.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["a", "b", "c", "ab", "<s>", "</s>"])
    w.add_token_types([1, 1, 1, 1, 3, 3])
    w.add_token_merges(["a b"])
    w.add_bos_token_id(4)
    w.add_tensor("token_embd.weight", np.ones((6, 8), dtype=np.float32))
    w.add_tensor("output_norm.weight", np.ones(8, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    blob = path.read_bytes()
    return blob, gguf.GGUFReader(path).data_offset


@st.composite
def gguf_mutations(draw: st.DrawFn, blob: bytes, header_end: int) -> bytes:
    data = bytearray(blob)
    kind = draw(st.sampled_from(["bytes", "bytes", "bytes", "u64", "truncate", "garbage"]))
    if kind == "bytes":  # overwrite a few header bytes
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(4, header_end - 1))] = draw(st.integers(0, 255))
    elif kind == "u64":  # an absurd count or length somewhere in the header (tensor / kv counts at 8 and 16)
        pos = draw(st.sampled_from([8, 16]) | st.integers(4, header_end - 8))
        data[pos:pos + 8] = struct.pack("<Q", draw(st.sampled_from([0, 1, 2**31, 2**32 - 1, 2**62, 2**64 - 1])
                                                   | st.integers(0, 2**64 - 1)))
    elif kind == "truncate":
        del data[draw(st.integers(0, len(data) - 1)):]
    else:
        data[4:] = draw(st.binary(max_size=300))
    return bytes(data)


def test_fuzz_gguf_header(small_gguf: tuple[bytes, int], tmp_path: Path, counter: Counter) -> None:
    """`edge-run inspect`'s reader and the memory estimate `run` makes before loading."""
    from edge_run.runtime.artifacts.inspection import describe_artifact

    try:
        from edge_run.runtime.estimate.gguf import shape_from_gguf
    except ImportError:  # the estimator is issue 3's; until it lands only inspect is fuzzed
        shape_from_gguf = None
    blob, header_end = small_gguf
    path = tmp_path / "fuzz.gguf"

    @FUZZ
    @given(gguf_mutations(blob, header_end))
    def check(data: bytes) -> None:
        path.write_bytes(data)
        parsers = [lambda: describe_artifact(path, with_tensors=True)]
        if shape_from_gguf is not None:
            parsers.append(lambda: shape_from_gguf(path))
        counter.case(*parsers)

    check()
    counter.done("GGUF header")


def test_gguf_array_count_past_the_end_fails_fast(small_gguf: tuple[bytes, int], tmp_path: Path) -> None:
    """Found by this fuzzer at 10x scale: an array whose count points past the end of the file made gguf-py's
    reader append empty views until the machine ran out of memory (23 GB). It must fail at once; the check runs
    in a child with a 3 GiB address-space limit so a regression fails here instead of taking CI down."""
    import subprocess
    import sys

    import gguf

    blob, _ = small_gguf
    path = tmp_path / "count.gguf"
    path.write_bytes(blob)
    field = gguf.GGUFReader(path).fields["tokenizer.ggml.token_type"]
    count_at = field.offset + sum(int(p.nbytes) for p in field.parts[:4])  # name length, name, type, item type
    data = bytearray(blob)
    data[count_at:count_at + 8] = struct.pack("<Q", 2**42)
    path.write_bytes(bytes(data))
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
            "from edge_run.core.errors import ArtifactError\n"
            "from edge_run.runtime.artifacts.inspection import describe_artifact\n"
            "from edge_run.runtime.estimate.gguf import shape_from_gguf\n"
            "for fn in (describe_artifact, shape_from_gguf):\n"
            "    try:\n        fn(sys.argv[1])\n    except ArtifactError as e:\n        print(e.one_line())\n")
    res = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("runs past the end of the file") == 2, res.stdout
