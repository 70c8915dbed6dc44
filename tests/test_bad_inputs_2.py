"""Bad input, round 2 (issue 9): what an adversarial pass found beyond tests/test_bad_inputs.py.

Same contract and the same harness as the first table (one `error:` line, the documented exit code, the scratch
folder byte-for-byte unchanged): each row of CASES breaks one thing and names the command line that must fail.
Inputs that would hang (a FIFO) or eat memory if the fix regressed run in a subprocess with a timeout and an
address-space limit (tests at the end of this file).
"""
# ruff: noqa: F811 - fixtures imported from test_bad_inputs are parameters here

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from safetensors.numpy import load_file, save_file

from .conftest import CliResult
from .test_bad_inputs import (  # noqa: F401 - fixtures are used by name
    Case,
    World,
    _bad_profile,
    _broken,
    _c,
    _edit_json,
    _flip_last_byte,
    _profile_toml,
    _run,
    fails_cleanly,
    tiny_artifact,
    world,
)


def _cfg(**changes: object) -> Callable[[Path], None]:
    return lambda c: _edit_json(c / "config.json", lambda d: d.update(changes))


def _tok(change: Callable[[dict], None]) -> Callable[[Path], None]:
    return lambda c: _edit_json(c / "tokenizer.json", change)


def _poison(value: float, name: str = "model.layers.1.mlp.down_proj.weight") -> Callable[[Path], None]:
    """Put one NaN / Inf into a weight of the checkpoint."""
    def change(c: Path) -> None:
        tensors = load_file(c / "model.safetensors")
        tensors[name] = tensors[name].copy()
        tensors[name].flat[7] = value
        save_file(tensors, c / "model.safetensors")
    return change


def _convert(ckpt_change: Callable[[Path], object], *args: str) -> Callable[[World], list[str | Path]]:
    """convert with explicit arguments (no default --quant)."""
    def make(w: World) -> list[str | Path]:
        ckpt = w.ckpt()
        ckpt_change(ckpt)
        return ["convert", ckpt, "--out", w.root / "out", *args]
    return make


def _manifest_text(edit: Callable[[str], str]) -> Callable[[Path], None]:
    def change(artifact: Path) -> None:
        m = artifact.with_name(artifact.name + ".manifest.json")
        m.write_text(edit(m.read_text(encoding="utf-8")), encoding="utf-8")
    return change


def _bundle(artifact: Callable[[World], Path], *args: str,
            out: Callable[[World], Path] | None = None) -> Callable[[World], list[str | Path]]:
    """bundle for a Pi 4 (the tiny model fits) into ``out`` (default ROOT/b)."""
    return lambda w: ["bundle", artifact(w), "--profile", "pi4-4gb", "--out", out(w) if out else w.root / "b", *args]


def _renamed(folder: Path, name: str) -> Path:
    return folder.rename(folder.with_name(name))


def _deep_toml(depth: int = 5000) -> str:
    return _profile_toml() + "deep = " + "[" * depth + "]" * depth + "\n"


CASES: list[Case] = [
    # -- convert: sizes and hyper-parameters in config.json, checked before anything is allocated
    Case("vocab_size of 10^12", "convert", _c(_cfg(vocab_size=10**12)), 3, "invalid 'vocab_size'",
         "no real model is this large"),
    Case("num_hidden_layers does not match the weights", "convert", _c(_cfg(num_hidden_layers=40)), 3,
         "the weights have 3 layers but config.json says num_hidden_layers=40", "does not belong to these weights"),
    Case("hidden_size does not match the embedding", "convert", _c(_cfg(hidden_size=128, head_dim=16)), 3,
         "embedding has 64 columns but config.json says hidden_size=128", "does not belong"),
    Case("rms_norm_eps negative", "convert", _c(_cfg(rms_norm_eps=-1)), 3, "invalid 'rms_norm_eps': -1",
         "between 0 and 1"),
    Case("rope_theta not a number", "convert", _c(_cfg(rope_theta="abc")), 3, "invalid 'rope_theta': 'abc'",
         "fix config.json"),
    Case("attention heads do not divide the width", "convert",
         _c(lambda c: _edit_json(c / "config.json", lambda d: (
             d.pop("head_dim", None), d.update(num_attention_heads=3, num_key_value_heads=3)))),
         3, "does not divide hidden_size 64", "fix config.json"),
    Case("attention heads do not match the weights", "convert", _c(_cfg(num_attention_heads=8, num_key_value_heads=2)),
         3, "q_proj.weight has 64 rows but config.json's num_attention_heads x head_dim gives 128", "fix config.json"),
    Case("kv heads do not divide the heads", "convert", _c(_cfg(num_key_value_heads=3)), 3,
         "does not divide num_attention_heads 4", "fix config.json"),
    Case("linear rope scaling without a factor", "convert", _c(_cfg(rope_scaling={"rope_type": "linear"})), 3,
         "invalid 'rope_scaling.factor': None", "fix config.json"),
    Case("llama3 rope with low == high frequency factor", "convert",
         _c(_cfg(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 2.0, "high_freq_factor": 2.0,
                               "original_max_position_embeddings": 256})), 3,
         "invalid 'rope_scaling.high_freq_factor': 2.0 (it must be larger than low_freq_factor 2)", "fix config.json"),
    Case("text_config not an object", "convert", _c(_cfg(text_config="abc")), 3, "invalid 'text_config': 'abc'",
         "fix config.json"),
    Case("rms_norm_eps null", "convert", _c(_cfg(rms_norm_eps=None)), 3, "invalid 'rms_norm_eps': None",
         "give a value or leave the key out"),
    Case("bos_token_id negative", "convert", _c(_cfg(bos_token_id=-1)), 3, "invalid 'bos_token_id': -1",
         "token ids must be integers from 0 to 383"),
    # -- convert: tokenizer.json oddities
    Case("tokenizer vocab is a list", "convert", _c(_tok(lambda t: t["model"].update(vocab=[["a", 0]]))), 3,
         "BPE vocab is not a map", "re-download"),
    Case("tokenizer added_tokens is null", "convert", _c(_tok(lambda t: t.update(added_tokens=None))), 3,
         "added_tokens is not a list", "re-download"),
    Case("tokenizer added token id is a string", "convert",
         _c(_tok(lambda t: t["added_tokens"][0].update(id="abc"))), 3, "added token with id 'abc'", "re-download"),
    Case("tokenizer added token id is negative", "convert",
         _c(_tok(lambda t: t["added_tokens"][0].update(id=-5))), 3, "added token with id -5", "re-download"),
    # -- convert: NaN / Inf weights are refused with the tensor's name, for every output (found while streaming:
    #    --json keeps the progress bars off stderr)
    Case("NaN weight, F16", "convert", _convert(_poison(math.nan), "--quant", "f16", "--json"), 3,
         "'model.layers.1.mlp.down_proj.weight' holds a non-finite value (nan", "re-download"),
    Case("Inf weight, Q8_0", "convert", _convert(_poison(math.inf), "--quant", "q8_0", "--json"), 3,
         "'model.layers.1.mlp.down_proj.weight' holds a non-finite value (inf", "re-download"),
    Case("NaN weight, ONNX int4", "convert",
         _convert(_poison(math.nan), "--format", "onnx", "--quant", "int4", "--json"), 3,
         "'model.layers.1.mlp.down_proj.weight' holds a non-finite value (nan", "re-download"),
    Case("weight beyond float16's range", "convert", _convert(_poison(1e6), "--quant", "f16", "--json"), 3,
         "beyond float16's range", "--intermediate bf16"),
    # -- convert: --name is a plain file name
    Case("--name with ..", "convert", _c(lambda c: None, "--name", "../escaped"), 2, "is not a plain file name",
         "without '/'"),
    Case("--name absolute", "convert", lambda w: ["convert", w.ckpt(), "--quant", "q8_0", "--out", w.root / "out",
                                                  "--name", str(w.root / "elsewhere")], 2, "not a plain file name", ""),
    Case("--name hidden", "convert", _c(lambda c: None, "--name", ".hidden"), 2, "not a plain file name", "e.g."),
    Case("convert --threads 1000000 (the quantizer aborted)", "convert", _c(lambda c: None, "--threads", "1000000"),
         2, "Invalid value for '--threads'", "edge-run --help"),
    # -- run: options and prompts
    Case("--top-p above 1", "run", _run(lambda w: w.artifact(), "-p", "hi", "--top-p", "2"), 2,
         "Invalid value for '--top-p'", "edge-run --help"),
    Case("--top-k negative", "run", _run(lambda w: w.artifact(), "-p", "hi", "--top-k", "-5"), 2,
         "Invalid value for '--top-k'", "edge-run --help"),
    Case("--threads negative", "run", _run(lambda w: w.artifact(), "-p", "hi", "--threads", "-4"), 2,
         "Invalid value for '--threads'", "edge-run --help"),
    Case("--threads above llama.cpp's 512 (segfaulted)", "run",
         _run(lambda w: w.artifact(), "-p", "hi", "--threads", "1000000"), 2, "Invalid value for '--threads'",
         "edge-run --help"),
    Case("bench --threads 0", "bench", lambda w: ["bench", w.artifact(), "--threads", "0"], 2,
         "Invalid value for '--threads'", "edge-run --help"),
    Case("eval --threads -1", "eval", lambda w: ["eval", w.artifact(), "--threads", "-1"], 2,
         "Invalid value for '--threads'", "edge-run --help"),
    Case("non-UTF-8 bytes in -p", "run", _run(lambda w: w.artifact(), "-p", "caf\udce9"), 2,
         "the prompt is not UTF-8 text", "pass UTF-8 text"),
    Case("--prompt-file is a folder", "run", lambda w: ["run", w.artifact(), "--prompt-file", w.root], 2,
         "is a folder", "pass a regular file"),
    Case("--prompt-file /dev/zero", "run", lambda w: ["run", w.artifact(), "--prompt-file", "/dev/zero"], 2,
         "/dev/zero is a device", "pass a regular file"),
    Case("--prompt-file over 8 MiB", "run",
         lambda w: ["run", w.artifact(), "--prompt-file", w.write("big.txt", "word " * (2 * 2**20))], 2,
         "larger than 8 MiB", "at most 8 MiB"),
    Case("artifact is /dev/zero", "run", _run(lambda w: Path("/dev/zero")), 3, "is a device",
         "pass a .gguf file"),
    Case("manifest with a NaN", "run",
         _run(lambda w: _broken(w.artifact(), _manifest_text(lambda t: t.replace('"bits_per_weight": ',
                                                                                  '"bits_per_weight": NaN, "x": ')))),
         3, "holds a non-finite number (NaN)", "re-create it"),
    # -- inspect / verify: integrity
    Case("inspect an artifact that does not match its manifest", "inspect",
         lambda w: ["inspect", _broken(w.artifact(), _flip_last_byte)], 5, "does not match its manifest",
         "re-convert"),
    Case("verify an artifact that does not match its manifest", "verify",
         lambda w: ["verify", _broken(w.artifact(), _flip_last_byte)], 5, "does not match its manifest",
         "re-convert"),
    Case("verify an artifact without a manifest", "verify",
         lambda w: ["verify", _broken(w.artifact(), lambda a: w.manifest().unlink())], 3, "has no manifest",
         "edge-run convert"),
    # -- eval
    Case("corpus /dev/zero", "eval", lambda w: ["eval", w.artifact(), "--corpus", "/dev/zero"], 3, "is a device",
         "pass a regular file"),
    Case("eval --ctx above the trained context", "eval",
         lambda w: ["eval", w.artifact(), "--ctx", "100000", "--chunks", "1"], 2,
         "--ctx 100000 is more than the 512 tokens", "pass --ctx 512 or less"),
    Case("corpus is a folder", "eval", lambda w: ["eval", w.artifact(), "--corpus", w.root], 3, "is a folder",
         "pass a regular file"),
    # -- profiles and pick
    Case("profile memory bandwidth nan", "pick",
         lambda w: ["pick", "--profile", w.write("board.toml", _profile_toml(memory_bandwidth_gbs=None)
                                                 + "memory_bandwidth_gbs = nan\n"), "--models", w.models()], 3,
         "memory_bandwidth_gbs must be positive, got nan", "see the shipped profiles"),
    Case("profile nested 5000 deep", "pick",
         lambda w: ["pick", "--profile", w.write("board.toml", _deep_toml()), "--models", w.models()], 3,
         "nests tables or arrays too deeply", "one flat table"),
    Case("profile is /dev/zero", "pick", lambda w: ["pick", "--profile", "/dev/zero", "--models", w.models()], 3,
         "is a device", "pass a regular file"),
    Case("unknown KV cache type", "pick",
         lambda w: ["pick", "--profile", "pi4-4gb", "--models", w.models(), "--cache-type", "q3_z"], 2,
         "unknown KV cache type 'q3_z'", "choose from: auto, f32, f16"),
    # -- bundle (issue 24): the artifact is verified first; --out never over an input; --force only over a bundle
    Case("bundle a bit-flipped GGUF", "bundle", _bundle(lambda w: _broken(w.artifact(), _flip_last_byte)), 5,
         "does not match its manifest", "re-convert"),
    Case("bundle --out is the artifact", "bundle", _bundle(lambda w: w.artifact(), out=lambda w: w.artifact()), 2,
         "is the input", "new folder"),
    Case("bundle --out holds the artifact, --force", "bundle",
         _bundle(lambda w: w.artifact(), "--force", out=lambda w: w.root), 2, "holds the input", "new folder"),
    Case("bundle --out inside --models, --force", "bundle",
         lambda w: ["bundle", "--models", w.models(), "--profile", "pi4-4gb", "--out", w.models() / "b", "--force"],
         2, "is inside the input", "outside the artifact"),
    Case("bundle --out .", "bundle", _bundle(lambda w: w.artifact(), "--force", out=lambda w: Path(".")), 2,
         "names no new folder", "e.g. --out deploy/pi4"),
    Case("bundle --out /", "bundle", _bundle(lambda w: w.artifact(), "--force", out=lambda w: Path("/")), 2,
         "names no new folder", "e.g. --out deploy/pi4"),
    Case("bundle --out ''", "bundle", lambda w: ["bundle", w.artifact(), "--profile", "pi4-4gb", "--out", ""], 2,
         "names no new folder", "e.g. --out deploy/pi4"),
    Case("bundle --out /proc/x", "bundle", _bundle(lambda w: w.artifact(), out=lambda w: Path("/proc/x")), 4,
         "cannot write", "writable folder"),
    Case("bundle --force over a folder that is not a bundle", "bundle",
         _bundle(lambda w: w.artifact(), "--force", out=lambda w: w.write("mine/notes.txt", "mine").parent), 4,
         "is not a bundle edge-run wrote (it has no readable SHA256SUMS)", "only ever replaces a previous bundle"),
    Case("bundle --force beside a .tar.gz that is not a bundle's", "bundle",
         _bundle(lambda w: w.artifact(), "--force", out=lambda w: w.write("b.tar.gz", b"mine").with_name("b")), 4,
         "b.tar.gz already exists and is not a bundle edge-run wrote", "only ever replaces a previous bundle"),
    # -- names that reach install.sh, the systemd unit and README.txt are checked where they enter (issue 24)
    Case("--name with $( )", "convert", _c(lambda c: None, "--name", "m$(touch pwned)"), 2, "contains '$'",
         "letters, digits"),
    Case("--name with a quote", "convert", _c(lambda c: None, "--name", "it's"), 2, "contains \"'\"",
         "letters, digits"),
    Case("--name with a newline", "convert", _c(lambda c: None, "--name", "m\nExecStartPre=+touch pwned"), 2,
         "contains a newline", "letters, digits"),
    Case("--name with %", "convert", _c(lambda c: None, "--name", "m%h"), 2, "contains '%'", "letters, digits"),
    Case("--name with a space", "convert", _c(lambda c: None, "--name", "my model"), 2, "contains a space",
         "letters, digits"),
    Case("--name not UTF-8", "convert", _c(lambda c: None, "--name", "caf\udce9"), 2,
         "contains bytes that are not UTF-8", "letters, digits"),
    Case("--name of 101 characters", "convert", _c(lambda c: None, "--name", "m" * 101), 2,
         "is 101 characters long", "at most 100 characters"),
    Case("--name starting with -", "convert", _c(lambda c: None, "--name=-rf"), 2, "starts with '-'",
         "letters, digits"),
    Case("checkpoint folder's name with a space", "convert",
         lambda w: ["convert", _renamed(w.ckpt(), "my model"), "--quant", "q8_0", "--out", w.root / "out"], 2,
         "the checkpoint folder's name 'my model' contains a space", "--name"),
    Case("profile name with $( )", "pick", _bad_profile(name="pi$(touch pwned)"), 3, "name 'pi$(touch pwned)' contains",
         'e.g. name = "pi4-4gb"'),
    Case("profile name with a newline", "pick", _bad_profile(name="pi\nExecStartPre=+touch pwned"), 3,
         "contains a newline", "letters, digits"),
    Case("profile description with a terminal escape", "pick", _bad_profile(description="x\u001b[2J"), 3,
         "description 'x\\x1b[2J' contains the control character U+001B", "one line of plain text"),
    # -- chat, verify, pick --measure (issue 24, class 8)
    Case("chat --system not UTF-8", "chat", lambda w: ["chat", w.artifact(), "--system", "caf\udce9"], 2,
         "--system is not UTF-8 text (character 4)", "pass UTF-8 text"),
    Case("verify an ONNX folder lacking a file its manifest lists", "verify",
         lambda w: ["verify", _onnx_without(w, "tokenizer.json")], 5, "lacks tokenizer.json, which its manifest lists",
         "re-convert"),
    Case("pick --measure with the cache under a file", "pick", lambda w: _measure_with_cache_under_a_file(w), 4,
         "cannot create output folder", "set EDGE_RUN_CACHE to a writable folder"),
    # -- serve (issue 24, classes 3 and 5)
    Case("serve --api-key not ASCII", "serve", lambda w: ["serve", w.artifact(), "--api-key", "ключ"], 2,
         "--api-key (or EDGE_RUN_API_KEY) must be printable ASCII without spaces", "letters, digits and punctuation"),
    Case("serve --api-key not UTF-8", "serve", lambda w: ["serve", w.artifact(), "--api-key", "k\udcff"], 2,
         "must be printable ASCII without spaces", "letters, digits and punctuation"),
    Case("serve --api-key with a space", "serve", lambda w: ["serve", w.artifact(), "--api-key", "my key"], 2,
         "must be printable ASCII without spaces", "letters, digits and punctuation"),
    Case("serve --cors not an origin", "serve",
         lambda w: ["serve", w.artifact(), "--port", "0", "--cors", "evil.example"], 2,
         "--cors 'evil.example' is not an origin", "scheme://host[:port]"),
    Case("serve --allow-host with a scheme", "serve",
         lambda w: ["serve", w.artifact(), "--port", "0", "--allow-host", "http://box.lan"], 2,
         "--allow-host 'http://box.lan' is not a host name", "no scheme, no port"),
]


def _onnx_without(w: World, name: str) -> Path:
    """The tiny checkpoint as an ONNX folder (with a .DS_Store beside its files), less ``name``."""
    from edge_run.converters.onnx.convert import OnnxOptions, convert_to_onnx

    (art,) = convert_to_onnx(w.ckpt(), w.root / "onnx", OnnxOptions(quant="int4", name="m"))
    (Path(art) / ".DS_Store").write_bytes(bytes(64))
    (Path(art) / name).unlink()
    return Path(art)


def _measure_with_cache_under_a_file(w: World) -> list[str | Path]:
    under = w.write("not-a-folder", "") / "cache"
    w.patches.append(lambda mp: mp.setenv("EDGE_RUN_CACHE", str(under)))
    return ["pick", "--profile", "pi4-4gb", "--models", w.models(), "--ctx", "512", "--measure", "--chunks", "1"]


def test_the_second_table_covers_every_command() -> None:
    commands = {c.command.split()[0] for c in CASES}
    assert commands >= {"convert", "run", "inspect", "verify", "eval", "pick", "bundle"}
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_2(case: Case, world: World, cli: Callable[..., CliResult], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(world.root)
    fails_cleanly(case, world, cli, monkeypatch)


# ---------------------------------------------------------------------------------------------- in a child


def _cli_child(*args: str | Path, limit_bytes: int | None = None, timeout: float = 120,
               env: dict[str, str] | None = None, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """`edge-run ARGS` in a child process, optionally under an address-space limit, with a timeout."""
    def preexec() -> None:
        if limit_bytes is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    full_env = {k: v for k, v in os.environ.items() if k != "EDGE_RUN_DEBUG"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "edge_run.cli.main", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, preexec_fn=preexec, env=full_env,  # type: ignore[call-overload]
                          **kwargs)


def _one_error(res: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    assert res.returncode == code, (res.returncode, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


HUGE = {"vocab_size": 10**12, "hidden_size": 10**12, "intermediate_size": 10**12, "num_hidden_layers": 10**12,
        "num_attention_heads": 10**12}
CHILD_LIMIT = 3 * 2**30  # far more than the interpreter with numpy needs, far less than a 10^12-entry list


@pytest.mark.parametrize("key", sorted(HUGE))
def test_huge_size_fails_fast_in_a_memory_limited_child(key: str, tiny_checkpoint: Callable[[str], Path],
                                                        tmp_path: Path) -> None:
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint("llama"), ckpt)
    _edit_json(ckpt / "config.json", lambda d: d.update({key: HUGE[key]}))
    res = _cli_child("convert", ckpt, "--quant", "q8_0", "--out", tmp_path / "out", limit_bytes=CHILD_LIMIT,
                     env={"EDGE_RUN_CACHE": str(tmp_path / "cache")})
    _one_error(res, 3, f"'{key}'", "fix config.json")
    assert not any((tmp_path / "out").rglob("*")) if (tmp_path / "out").exists() else True


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _fifo_checkpoint(d: Path) -> Path:
    """A checkpoint folder whose model.safetensors is a FIFO (config and tokenizer are real)."""
    import shutil

    ckpt = d / "ckpt"
    ckpt.mkdir()
    for f in (d / "ckpt-src").iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, ckpt / f.name)
    _fifo(ckpt / "model.safetensors")
    return ckpt


FIFO_CASES: dict[str, tuple[Callable[[Path, Path], list[str | Path]], int, str]] = {
    "run a FIFO named x.gguf": (lambda d, art: ["run", _fifo(d / "x.gguf"), "-p", "hi"], 3, "is a FIFO"),
    "inspect a FIFO": (lambda d, art: ["inspect", _fifo(d / "x.gguf")], 3, "is a FIFO"),
    "bench a FIFO": (lambda d, art: ["bench", _fifo(d / "x.gguf")], 3, "is a FIFO"),
    "--prompt-file a FIFO": (lambda d, art: ["run", art, "--prompt-file", _fifo(d / "p.txt")], 2, "is a FIFO"),
    "corpus a FIFO": (lambda d, art: ["eval", art, "--corpus", _fifo(d / "c.txt")], 3, "is a FIFO"),
    "model.safetensors a FIFO": (lambda d, art: ["convert", _fifo_checkpoint(d), "--out", d / "out"], 3,
                                 "has no *.safetensors weights"),
    "FIFO in the profiles folder": (lambda d, art: ["profiles", "show", "board"], 3, "is a FIFO"),
    "bundle a FIFO named x.gguf": (lambda d, art: ["bundle", _fifo(d / "x.gguf"), "--profile", "pi4-4gb", "--out",
                                                   d / "b"], 3, "is a FIFO"),
    "FIFO x.gguf in --models": (lambda d, art: ["pick", "--profile", "pi4-4gb", "--ctx", "512", "--models",
                                                d / "models"], 0, ""),
    "FIFO quality store entry": (lambda d, art: ["pick", "--profile", "pi4-4gb", "--ctx", "512", "--models",
                                                 _store_fifo(d, art) / "models"], 0, ""),
}


def _store_fifo(d: Path, art: Path) -> Path:
    """A FIFO under an entry's name in the quality store of ``art``'s checkpoint (the child's cache is d/cache)."""
    from edge_run.core.manifest import read_manifest
    from edge_run.runtime.eval.store import QualityStore, StoreKey

    manifest = read_manifest(art)
    assert manifest is not None
    entry = QualityStore(d / "cache" / "quality" / "v1").put(StoreKey(manifest.source["digest"], "Q8_0", "", "x",
                                                                      512, 20), {"bpb": 1.0})
    entry.unlink()
    _fifo(entry)
    return d


@pytest.mark.parametrize("name", list(FIFO_CASES))
def test_fifos_never_block(name: str, tiny_artifact: Path, tmp_path: Path,
                           tiny_checkpoint: Callable[[str], Path]) -> None:
    """A FIFO where a file belongs is refused at once (reading it would wait forever for a writer)."""
    import shutil

    shutil.copytree(tiny_checkpoint("llama"), tmp_path / "ckpt-src")

    profiles = tmp_path / "profiles"
    profiles.mkdir()
    _fifo(profiles / "board.toml")
    models = tmp_path / "models"
    models.mkdir()
    for p in (tiny_artifact, tiny_artifact.with_name(tiny_artifact.name + ".manifest.json")):
        shutil.copy(p, models / p.name)
    _fifo(models / "stuck.gguf")
    make, code, fragment = FIFO_CASES[name]
    argv = make(tmp_path, tiny_artifact)
    res = _cli_child(*argv, timeout=60, env={"EDGE_RUN_CACHE": str(tmp_path / "cache"),
                                             "EDGE_RUN_PROFILES": str(profiles)})
    if code == 0:
        assert res.returncode == 0, res.stderr
        assert "stuck" not in res.stdout
    else:
        _one_error(res, code, fragment, "pass a")


def test_symlink_loops_in_models_are_walked_once(world: World, cli: Callable[..., CliResult]) -> None:
    models = world.models()
    (models / "loop").symlink_to(models, target_is_directory=True)
    (models / "sub").mkdir()
    (models / "sub" / "back").symlink_to(models, target_is_directory=True)
    res = cli("pick", "--profile", "pi4-4gb", "--ctx", "512", "--models", models, "--json")
    assert res.code == 0, res.stderr
    rows = json.loads(res.stdout)["candidates"]
    paths = [r["path"] for r in rows if r["path"]]
    assert len(paths) == len(set(os.path.realpath(p) for p in paths)) == 1, paths


def test_gguf_without_manifest_is_a_candidate(world: World, cli: Callable[..., CliResult]) -> None:
    models = world.models()
    for m in models.glob("*.manifest.json"):
        m.unlink()
    res = cli("pick", "--profile", "pi4-4gb", "--ctx", "512", "--models", models, "--json")
    assert res.code == 0, res.stderr
    (row,) = json.loads(res.stdout)["candidates"]
    assert row["manifest"] is False and row["quant"] == "Q8_0" and row["path"].endswith("tiny.Q8_0.gguf")
    assert row["quality"]["unmeasured"] is True
