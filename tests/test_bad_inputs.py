"""Bad input to every command: a one-line error that says what is wrong and what to do, the documented exit
code (2 usage / 3 input / 4 resource / 5 integrity), no traceback unless EDGE_RUN_DEBUG=1, and nothing
written, truncated or overwritten on disk.

Each row of CASES breaks one thing in a scratch folder and names the command line that must fail. The
scratch folder is snapshotted (every file's size, mtime and digest) right before the command runs and
compared afterwards, so a partial artifact, a leftover temp file or a modified input fails the row.
Disk-full cases need a size-limited file system and run in a subprocess (test_disk_full below).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .conftest import CliResult
from .failure_util import assert_clean_failure, snapshot

# ---------------------------------------------------------------------------------------------- the world


@dataclass
class World:
    """A scratch folder with fresh copies of a tiny checkpoint and a converted tiny artifact."""

    root: Path
    checkpoint_src: Path
    artifact_src: Path
    patches: list[Callable[[pytest.MonkeyPatch], None]] = field(default_factory=list)

    def ckpt(self) -> Path:
        dest = self.root / "ckpt"
        if not dest.exists():
            shutil.copytree(self.checkpoint_src, dest)
        return dest

    def artifact(self) -> Path:
        dest = self.root / self.artifact_src.name
        if not dest.exists():
            shutil.copy(self.artifact_src, dest)
            shutil.copy(self.artifact_src.with_name(self.artifact_src.name + ".manifest.json"),
                        dest.with_name(dest.name + ".manifest.json"))
        return dest

    def manifest(self) -> Path:
        return self.artifact().with_name(self.artifact().name + ".manifest.json")

    def write(self, name: str, data: str | bytes) -> Path:
        p = self.root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            p.write_text(data, encoding="utf-8")
        else:
            p.write_bytes(data)
        return p

    def models(self) -> Path:
        """A --models folder holding the tiny artifact and its manifest."""
        d = self.root / "models"
        d.mkdir(exist_ok=True)
        for src in (self.artifact_src, self.artifact_src.with_name(self.artifact_src.name + ".manifest.json")):
            shutil.copy(src, d / src.name)
        return d


# ---------------------------------------------------------------------------------------------- breakers


def _rewrite_safetensors_header(path: Path, change: Callable[[dict], None]) -> None:
    """Edit the JSON header of a safetensors file (offsets are relative to the data, so its length may change)."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    change(header)
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])


def _first_tensor(header: dict) -> dict:
    return header[next(k for k in header if k != "__metadata__")]


def _edit_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data), encoding="utf-8")


def _shard(ckpt: Path) -> None:
    """Split model.safetensors into two shards plus model.safetensors.index.json, as the hub stores big models."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(ckpt / "model.safetensors")
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    weight_map = {}
    for shard, members in shards.items():
        save_file({k: tensors[k] for k in members}, ckpt / shard)
        weight_map.update(dict.fromkeys(members, shard))
    (ckpt / "model.safetensors").unlink()
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _gguf_u64(path: Path, offset: int, value: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset:offset + 8] = struct.pack("<Q", value)
    path.write_bytes(bytes(data))


def duplicate_token(path: Path) -> None:
    """Overwrite token 4's text with token 3's (both one byte): a structurally valid GGUF whose vocabulary
    makes llama.cpp abort (GGML_ASSERT in llama_vocab::load)."""
    import gguf

    reader = gguf.GGUFReader(path)
    tokens = reader.fields["tokenizer.ggml.tokens"]
    starts, pos = [], tokens.offset
    for part in tokens.parts:
        starts.append(pos)
        pos += part.nbytes
    a, b = tokens.data[3], tokens.data[4]
    assert tokens.parts[a].nbytes == tokens.parts[b].nbytes
    first = bytes(tokens.parts[a])
    del reader
    data = bytearray(path.read_bytes())
    data[starts[b]:starts[b] + len(first)] = first
    path.write_bytes(bytes(data))


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _orphan(w: World) -> Path:
    """The tiny artifact without its manifest (as a GGUF from elsewhere would come)."""
    a = w.artifact()
    w.manifest().unlink()
    return a


def _profile_toml(**override: object) -> str:
    p: dict[str, object] = {"name": "tiny-board", "description": "a test board", "ram_mb": 2048,
                            "os_reserved_mb": 200, "arch": "arm64", "core_type": "cortex-a53", "physical_cores": 4,
                            "simd": ["neon"], "memory_bandwidth_gbs": 2.0}
    p.update(override)
    return "\n".join(f"{k} = {json.dumps(v)}" for k, v in p.items() if v is not None) + "\n"


def _low_memory(mp: pytest.MonkeyPatch) -> None:
    """Pretend this machine has 16 MiB available: less than any model needs."""
    import psutil

    real = psutil.virtual_memory()
    fake = real._replace(available=16 * 2**20)
    mp.setattr("edge_run.runtime.estimate.gguf.psutil.virtual_memory", lambda: fake)


# ---------------------------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    id: str
    command: str  # for the README table
    make: Callable[[World], list[str | Path]]  # breaks something, returns the argv that must fail
    code: int
    what: str  # the message says what is wrong ...
    todo: str  # ... and what to do


def _c(ckpt_change: Callable[[Path], object], *extra: str) -> Callable[[World], list[str | Path]]:
    def make(w: World) -> list[str | Path]:
        ckpt = w.ckpt()
        ckpt_change(ckpt)
        return ["convert", ckpt, "--quant", "q8_0", "--out", w.root / "out", *extra]
    return make


def _st(change: Callable[[dict], None]) -> Callable[[Path], None]:
    return lambda ckpt: _rewrite_safetensors_header(ckpt / "model.safetensors", change)


def _run(prepare: Callable[[World], Path], *args: str) -> Callable[[World], list[str | Path]]:
    return lambda w: ["run", prepare(w), "-n", "2", *(args or ("-p", "hello"))]


def _with_patch(patch: Callable[[pytest.MonkeyPatch], None],
                make: Callable[[World], list[str | Path]]) -> Callable[[World], list[str | Path]]:
    def wrapped(w: World) -> list[str | Path]:
        w.patches.append(patch)
        return make(w)
    return wrapped


def _bad_profile(**override: object) -> Callable[[World], list[str | Path]]:
    return lambda w: ["pick", "--profile", w.write("board.toml", _profile_toml(**override)), "--models", w.models()]


def _broken(path: Path, *changes: Callable[[Path], object]) -> Path:
    """``path`` after applying each change to it."""
    for change in changes:
        change(path)
    return path


def _manifest_edit(change: Callable[[dict], None]) -> Callable[[Path], None]:
    return lambda artifact: _edit_json(artifact.with_name(artifact.name + ".manifest.json"), change)


def _truncate(p: Path, keep: int | None = None) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2 if keep is None else keep])


CASES: list[Case] = [
    # -- convert: the checkpoint
    Case("missing checkpoint folder", "convert",
         lambda w: ["convert", w.root / "nope", "--out", w.root / "out"], 3, "does not exist", "pass a Hugging Face"),
    Case("empty safetensors", "convert", _c(lambda c: (c / "model.safetensors").write_bytes(b"")), 3,
         "truncated (0 bytes", "re-download"),
    Case("truncated safetensors", "convert", _c(lambda c: _truncate(c / "model.safetensors")), 3,
         "truncated", "re-download"),
    Case("safetensors header length past the file", "convert",
         _c(lambda c: _gguf_u64(c / "model.safetensors", 0, 2**40)), 3, "invalid safetensors header length",
         "re-download"),
    Case("safetensors header not JSON", "convert",
         _c(lambda c: (c / "model.safetensors").write_bytes(struct.pack("<Q", 6) + b"{oops}" + bytes(64))), 3,
         "corrupt safetensors header", "re-download"),
    Case("tensor offsets past the end", "convert",
         _c(_st(lambda h: _first_tensor(h).update(data_offsets=[10**9, 10**9 + 4]))), 3,
         "lies past the end of the file", "re-download"),
    Case("dtype does not match the bytes", "convert", _c(_st(lambda h: _first_tensor(h).update(dtype="F16"))), 3,
         "dtype F16 and shape", "re-download"),
    Case("integer tensor where weights belong", "convert", _c(_st(lambda h: _first_tensor(h).update(dtype="I32"))),
         3, "expected floating point", "unquantized"),
    Case("sharded checkpoint with a missing shard", "convert",
         _c(lambda c: (_shard(c), (c / "model-00002-of-00002.safetensors").unlink())), 3,
         "model-00002-of-00002.safetensors listed in model.safetensors.index.json are missing",
         "download the complete checkpoint"),
    Case("a layer lacks a weight", "convert",
         _c(_st(lambda h: h.pop("model.layers.1.mlp.up_proj.weight"))), 3, "layer 1 lacks ffn_up.weight",
         "re-download"),
    Case("config.json not JSON", "convert", _c(lambda c: (c / "config.json").write_text('{"architectures": [')), 3,
         "config.json is not valid JSON", "fix or re-download"),
    Case("unknown architecture", "convert",
         _c(lambda c: _edit_json(c / "config.json", lambda d: d.update(architectures=["FancyNewForCausalLM"]))), 3,
         "'FancyNewForCausalLM' is not supported", "supports: Gemma3ForCausalLM, LlamaForCausalLM"),
    Case("config.json lacks a hyper-parameter", "convert",
         _c(lambda c: _edit_json(c / "config.json", lambda d: d.pop("num_attention_heads"))), 3,
         "lacks 'num_attention_heads'", "config is incomplete"),
    Case("tokenizer missing", "convert", _c(lambda c: (c / "tokenizer.json").unlink()), 3, "has no tokenizer",
         "copy the model's tokenizer files"),
    Case("tokenizer larger than vocab_size", "convert",
         _c(lambda c: _edit_json(c / "config.json", lambda d: d.update(vocab_size=100))), 3,
         "config.json says vocab_size=100", "does not belong to these weights"),
    Case("vocab_size larger than the embedding", "convert",
         _c(lambda c: _edit_json(c / "config.json", lambda d: d.update(vocab_size=1000))), 3,
         "embedding has 384 rows but config.json says vocab_size=1000", "does not belong to these weights"),
    Case("pickled weights only", "convert",
         _c(lambda c: ((c / "model.safetensors").unlink(), (c / "pytorch_model.bin").write_bytes(b"PK\x03\x04"))),
         3, "never unpickles", "convert them to safetensors"),
    # -- convert: options and the output
    Case("unknown quant type", "convert", _c(lambda c: None, "--quant", "q3_z"), 2, "q3_z", "Q4_K_M"),
    Case("unknown format", "convert", _c(lambda c: None, "--format", "tflite"), 2, "unknown format 'tflite'",
         "choose --format gguf"),
    Case("no --out", "convert", lambda w: ["convert", w.ckpt()], 2, "Missing option '--out'", "edge-run --help"),
    Case("output folder under a file", "convert",
         lambda w: ["convert", w.ckpt(), "--quant", "q8_0", "--out", w.write("a-file", "x") / "out"], 4,
         "cannot create output folder", "choose a writable --out"),
    Case("artifact exists, no --force", "convert",
         lambda w: ["convert", w.ckpt(), "--quant", "q8_0", "--out", w.root, "--name",
                    w.artifact().name.split(".")[0]], 4, "already exists", "pass --force"),
    Case("--force re-convert from a broken checkpoint", "convert",
         lambda w: ["convert", _broken(w.ckpt(), lambda c: _truncate(c / "model.safetensors")), "--quant", "q8_0",
                    "--out", w.root, "--name", w.artifact().name.split(".")[0], "--force"], 3, "truncated",
         "re-download"),
    # -- run
    Case("artifact missing", "run", _run(lambda w: w.root / "nope.gguf"), 3, "does not exist",
         "pass the path of a .gguf file"),
    Case("not a GGUF file", "run", _run(lambda w: w.write("notes.gguf", "hello")), 3,
         "neither a GGUF file nor an ONNX artifact", "pass a .gguf file"),
    Case("GGUF truncated (no manifest)", "run", _run(lambda w: _broken(_orphan(w), lambda a: _truncate(a, 5000))), 3,
         "llama.cpp cannot read", "re-convert"),
    Case("GGUF absurd tensor count", "run", _run(lambda w: _broken(_orphan(w), lambda a: _gguf_u64(a, 8, 2**62))), 3,
         "number of tensors is 4611686018427387904", "re-convert"),
    Case("GGUF absurd key-value count", "run",
         _run(lambda w: _broken(_orphan(w), lambda a: _gguf_u64(a, 16, 2**62))), 3,
         "number of key value pairs is 4611686018427387904", "re-convert"),
    Case("GGUF vocabulary that aborts llama.cpp", "run", _run(lambda w: _broken(_orphan(w), duplicate_token)),
         3, "llama.cpp aborts reading", "re-convert"),
    Case("artifact sha256 differs from its manifest", "run", _run(lambda w: _broken(w.artifact(), _flip_last_byte)),
         5, "does not match its manifest", "re-convert"),
    Case("artifact shorter than its manifest says", "run",
         _run(lambda w: _broken(w.artifact(), lambda a: _truncate(a, a.stat().st_size - 100))), 5,
         "bytes but its manifest says", "re-convert"),
    Case("manifest not JSON", "run", _run(lambda w: _broken(w.artifact(), lambda a: w.manifest().write_text("{"))), 3,
         "is not valid JSON", "re-create it with `edge-run convert`"),
    Case("manifest field of the wrong type", "run",
         _run(lambda w: _broken(w.artifact(), _manifest_edit(lambda d: d.update(file_size="big")))), 3,
         "wrong type: file_size", "re-create it"),
    Case("--ctx above the trained context", "run", _run(lambda w: w.artifact(), "-p", "hi", "--ctx", "1024"), 2,
         "--ctx 1024 is more than the 512 tokens", "pass --ctx 512 or less"),
    Case("empty prompt", "run", _run(lambda w: w.artifact(), "-p", "  \n"), 2, "the prompt is empty",
         "pass a non-empty prompt"),
    Case("non-UTF-8 prompt file", "run",
         _run(lambda w: w.artifact(), "--prompt-file", str(Path("PROMPT"))), 2, "is not UTF-8 text (byte 1)",
         "convert it to UTF-8"),
    Case("estimate above available memory", "run",
         _with_patch(_low_memory, _run(lambda w: w.artifact())), 4, "available", "pass --force"),
    Case("--ctx not a number", "run", _run(lambda w: w.artifact(), "-p", "hi", "--ctx", "lots"), 2,
         "Invalid value for '--ctx'", "edge-run --help"),
    # -- inspect
    Case("inspect a truncated GGUF", "inspect",
         lambda w: ["inspect", _broken(_orphan(w), lambda a: _truncate(a, 3000))], 3,
         "is not a readable GGUF file", "re-convert"),
    Case("inspect a GGUF with a corrupted header", "inspect",
         lambda w: ["inspect", _broken(_orphan(w), lambda a: _gguf_u64(a, 16, 2**64 - 1))], 3,
         "is not a readable GGUF file", "re-convert"),
    Case("inspect a manifest naming ../x", "inspect",
         lambda w: ["inspect", _broken(w.artifact(), _manifest_edit(lambda d: d.update(artifact="../x")))],
         3, "not a plain file name", "own folder"),
    # -- eval
    Case("corpus missing", "eval", lambda w: ["eval", w.artifact(), "--corpus", w.root / "nope.txt"], 3,
         "does not exist", "pass a UTF-8 text file"),
    Case("corpus not UTF-8", "eval", lambda w: ["eval", w.artifact(), "--corpus", w.write("c.txt", b"ok \xff\xfe")], 3,
         "is not UTF-8 text", "convert it to UTF-8"),
    Case("corpus empty", "eval", lambda w: ["eval", w.artifact(), "--corpus", w.write("e.txt", " \n")], 3,
         "is empty", "pass a file with text"),
    Case("eval --ctx too small", "eval", lambda w: ["eval", w.artifact(), "--ctx", "4", "--chunks", "1"], 2,
         "--ctx 4 is too small", "at least 8 tokens"),
    # -- bench
    Case("bench a missing artifact", "bench", lambda w: ["bench", w.root / "nope.gguf"], 3, "does not exist",
         "pass the path of a .gguf file"),
    Case("bench --repeats 0", "bench", lambda w: ["bench", w.artifact(), "--repeats", "0"], 2,
         "--repeats must be at least 1", ""),
    # -- profiles and pick
    Case("profile TOML syntax error", "pick",
         lambda w: ["pick", "--profile", w.write("board.toml", "name = 'x\nram_mb = "), "--models", w.models()], 3,
         "is not valid TOML", "fix the syntax"),
    Case("profile lacks a field", "pick", _bad_profile(ram_mb=None), 3, "missing field 'ram_mb'",
         "see the shipped profiles"),
    Case("profile with negative RAM", "pick", _bad_profile(ram_mb=-512), 3, "ram_mb must be positive",
         "see the shipped profiles"),
    Case("profile with an unknown key", "pick", _bad_profile(gpu="mali"), 3, "unknown key(s) gpu", "allowed keys"),
    Case("unknown profile name", "profiles show", lambda w: ["profiles", "show", "pi9-1tb"], 3,
         "no profile named 'pi9-1tb'", "choose from"),
    Case("budget too small for every pairing", "pick", _bad_profile(ram_mb=128, os_reserved_mb=40), 4,
         "nothing fits tiny-board", "add a smaller model"),
    Case("pick --models folder missing", "pick",
         lambda w: ["pick", "--profile", "pi4-4gb", "--models", w.root / "nothing-here"], 3, "does not exist", ""),
]


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_artifact(tiny_gguf: Path) -> Path:
    return tiny_gguf  # conftest's shared tiny Q8_0 (world copies it)


@pytest.fixture
def world(tmp_path: Path, tiny_checkpoint: Callable[[str], Path], tiny_artifact: Path,
          monkeypatch: pytest.MonkeyPatch) -> World:
    monkeypatch.setenv("EDGE_RUN_CACHE", str(tmp_path / "cache"))  # outside the snapshot
    monkeypatch.setenv("EDGE_RUN_PROFILES", str(tmp_path / "no-user-profiles"))
    root = tmp_path / "world"
    root.mkdir()
    return World(root, tiny_checkpoint("llama"), tiny_artifact)


# ---------------------------------------------------------------------------------------------- the tests


def test_the_table_is_big_enough() -> None:
    assert len(CASES) >= 20
    commands = {c.command.split()[0] for c in CASES}
    assert commands >= {"convert", "run", "inspect", "eval", "bench", "pick", "profiles"}
    assert {c.code for c in CASES} == {2, 3, 4, 5}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, world: World, cli: Callable[..., CliResult], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(world.root)
    (world.root / "PROMPT").write_bytes(b"h\xe9llo in latin-1\n")
    fails_cleanly(case, world, cli, monkeypatch)


def fails_cleanly(case: Case, world: World, cli: Callable[..., CliResult], monkeypatch: pytest.MonkeyPatch) -> None:
    """Run one table row: the exit code and message it names, and not a byte changed under the world's root."""
    argv = case.make(world)
    for patch in world.patches:
        patch(monkeypatch)
    before = snapshot(world.root)
    res = cli(*argv)
    assert_clean_failure(res, case.code, case.what, case.todo)
    after = snapshot(world.root)
    assert after == before, f"files changed on disk: {sorted(set(after.items()) ^ set(before.items()))}"


def test_memory_guard_force_loads_anyway(world: World, cli: Callable[..., CliResult],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The refusal above is only a guard: --force loads and runs the same artifact in the same low budget."""
    _low_memory(monkeypatch)
    res = cli("run", world.artifact(), "-p", "hello", "-n", "3", "--force", "--json")
    assert res.code == 0, res.stderr
    assert json.loads(res.stdout)["completion_tokens"] >= 1


def _cli_subprocess(*args: str | Path, debug: bool = False, **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "EDGE_RUN_DEBUG"}
    if debug:
        env["EDGE_RUN_DEBUG"] = "1"
    return subprocess.run([sys.executable, "-m", "edge_run.cli.main", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=300, **kwargs)  # type: ignore[call-overload]


def test_traceback_only_with_debug(tmp_path: Path) -> None:
    plain = _cli_subprocess("convert", tmp_path / "nope", "--out", tmp_path / "out")
    assert plain.returncode == 3 and "Traceback" not in plain.stderr
    assert plain.stderr.strip().startswith("error: checkpoint folder")
    debug = _cli_subprocess("convert", tmp_path / "nope", "--out", tmp_path / "out", debug=True)
    assert debug.returncode != 0
    assert "Traceback (most recent call last)" in debug.stderr and "CheckpointError" in debug.stderr


# ---------------------------------------------------------------------------------------------- disk full

# The tiny checkpoint's F16 intermediate is ~330 KB and its Q8_0 ~180 KB: a 64 KiB file system fills up while the
# intermediate is written, a 420 KiB one while llama.cpp's quantizer writes Q8_0.
TMPFS_BYTES = {"conversion": 64 * 1024, "quantization": 420 * 1024}
# Without the right to mount, a file-size limit (EFBIG) stands in; it cannot tell the stages apart, so both
# stop while the intermediate is written.
RLIMIT_BYTES = 100 * 1024
EXPECTED = {"conversion": "could not write all of llama.F16.gguf: the disk is full",
            "quantization": "disk full while quantizing to Q8_0"}


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Callable[[int], tuple[Path, Callable[[], None] | None]]]:
    """``make(bytes)`` -> (folder, preexec): a folder on a tmpfs of that size when this machine lets us mount one
    (root, as in CI), else a plain folder and a preexec_fn that puts a file-size limit on the child."""
    mounts: list[Path] = []

    def make(size: int) -> tuple[Path, Callable[[], None] | None]:
        mnt = tmp_path / f"fs{len(mounts)}"
        mnt.mkdir()
        mounted = shutil.which("mount") is not None and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True).returncode == 0
        if mounted:
            mounts.append(mnt)
            return mnt, None
        return mnt, lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (RLIMIT_BYTES, RLIMIT_BYTES))

    yield make
    for m in mounts:
        subprocess.run(["umount", str(m)], check=False)


@pytest.mark.parametrize("stage", list(TMPFS_BYTES))
def test_disk_full(stage: str, small_fs: Callable[[int], tuple[Path, Callable[[], None] | None]],
                   tiny_checkpoint: Callable[[str], Path]) -> None:
    folder, preexec = small_fs(TMPFS_BYTES[stage])
    res = _cli_subprocess("convert", tiny_checkpoint("llama"), "--quant", "q8_0", "--out", folder / "out", "--json",
                          preexec_fn=preexec)
    assert res.returncode == 4, res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in res.stderr, res.stderr
    if preexec is None:
        assert EXPECTED[stage] in errors[0] and "free some space" in errors[0], errors[0]
    else:
        assert "llama.F16.gguf" in errors[0] and "--out" in errors[0], errors[0]
    assert [p for p in folder.rglob("*") if p.is_file()] == [], "a partial file was left behind"
