"""Issue 9, the rows that are not a plain bad-input line: closed and broken output streams, odd encodings, a
read-only cache or artifact folder, memory limits the guard must see, integrity beyond the first use, and
measurements that must never be stored."""
# ruff: noqa: F811 - fixtures imported from test_bad_inputs are parameters here

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import CliResult
from .test_bad_inputs import tiny_artifact  # noqa: F401 - fixture


def _child(*args: str | bytes | Path, env: dict[str, str] | None = None, **kwargs: object) -> subprocess.Popen[bytes]:
    full = {k: v for k, v in os.environ.items() if k != "EDGE_RUN_DEBUG"}
    full.update(env or {})
    argv = [a if isinstance(a, bytes) else str(a) for a in args]
    return subprocess.Popen([sys.executable, "-m", "edge_run.cli.main", *argv], env=full,
                            **kwargs)  # type: ignore[call-overload]


@pytest.fixture
def art(tiny_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the tiny Q8_0 artifact and its manifest; the cache is private too."""
    monkeypatch.setenv("EDGE_RUN_CACHE", str(tmp_path / "cache"))
    d = tmp_path / "art"
    d.mkdir()
    for p in (tiny_artifact, tiny_artifact.with_name(tiny_artifact.name + ".manifest.json")):
        shutil.copy(p, d / p.name)
    return d / tiny_artifact.name


# ---------------------------------------------------------------------------------------------- streams


def test_closed_stdout_is_not_an_error(art: Path) -> None:
    proc = _child("run", art, "-p", "hello", "-n", "8", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                  pass_fds=(), close_fds=True, preexec_fn=lambda: os.close(1))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and err == b"", err


def test_reader_closing_the_pipe_is_a_normal_end(art: Path) -> None:
    """`run ... | head -c5`: the reader goes away; exit 0 or 141, nothing on stderr."""
    r, w = os.pipe()
    proc = _child("run", art, "-p", "hello", "-n", "64", stdout=w, stderr=subprocess.PIPE)
    os.close(w)
    os.read(r, 1)  # wait until the first text arrives, then hang up
    os.close(r)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode in (0, 141) and err == b"", (proc.returncode, err)


@pytest.mark.parametrize("env", [{"PYTHONIOENCODING": "ascii"}, {"LC_ALL": "C", "PYTHONCOERCECLOCALE": "0",
                                                                  "PYTHONUTF8": "0"}], ids=["ascii", "C-locale"])
def test_output_the_encoding_cannot_spell_is_escaped(env: dict[str, str], art: Path, tmp_path: Path) -> None:
    """Non-ASCII in what edge-run prints (here a folder name in `convert`'s output and in an error) under an
    ASCII-only stdout/stderr: escaped, never an internal error mid-stream."""
    odd = tmp_path / "m\u00fcde-\u6a21\u578b"
    odd.mkdir()
    shutil.copy(art, odd / art.name)
    ok = _child("inspect", odd / art.name, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = ok.communicate(timeout=300)
    assert ok.returncode == 0 and err == b"", err
    missing = _child("run", odd / "nope.gguf", "-p", "hi", env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = missing.communicate(timeout=300)
    assert missing.returncode == 3, err
    text = err.decode("ascii")  # the folder name, escaped: \\xfc as text (ascii) or \\udcc3 as raw bytes (C locale)
    assert text.startswith("error: ") and ("\\xfc" in text or "\\udcc3\\udcbc" in text), text


def test_non_utf8_bytes_on_the_command_line(art: Path) -> None:
    """-p with Latin-1 bytes, as a shell passes them: a usage error, not an encoding crash."""
    proc = _child("run", art, b"-p", b"caf\xe9 au lait", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    assert err.decode() == "error: the prompt is not UTF-8 text (character 3). pass UTF-8 text with -p or use " \
                           "--prompt-file\n"


def test_ctrl_c_in_a_command_that_writes_nothing(art: Path) -> None:
    """run / eval / bench write no files: an interrupt says only that it was interrupted."""
    proc = _child("eval", art, "--corpus", "wikitext-2-raw-test", "--ctx", "64", "--no-save", "--json",
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(3.0)  # past the imports, into tokenizing / scoring the corpus
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    lines = [ln for ln in err.decode().splitlines() if ln.startswith("error:")]
    assert proc.returncode == 130, err
    assert lines == ["error: interrupted by SIGINT"], err


def test_interrupt_hint_only_while_writing() -> None:
    from edge_run.core.errors import Interrupted
    from edge_run.core.fsutil import _on_signal, exclusive_folder

    with pytest.raises(Interrupted) as idle:
        _on_signal(signal.SIGINT, None)
    assert idle.value.one_line() == "interrupted by SIGINT"
    with exclusive_folder(Path(os.environ.get("TMPDIR", "/tmp"))), pytest.raises(Interrupted) as busy:
        _on_signal(signal.SIGTERM, None)
    assert busy.value.one_line() == "interrupted by SIGTERM. partial files were removed"


# ---------------------------------------------------------------------------------------------- read-only places


def test_unwritable_cache_is_skipped(art: Path, tmp_path: Path, cli: Callable[..., CliResult],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache that cannot be written (here: its path runs through a file, so even root cannot create it) costs
    the cache, not the command."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("EDGE_RUN_CACHE", str(blocker / "cache"))
    res = cli("run", art, "-p", "hello", "-n", "4", "--json")
    assert res.code == 0, res.stderr
    assert json.loads(res.stdout)["completion_tokens"] >= 1


def test_eval_prints_the_result_before_saying_the_manifest_is_read_only(
        art: Path, tmp_path: Path, cli: Callable[..., CliResult], monkeypatch: pytest.MonkeyPatch) -> None:
    """What a non-root user sees for a read-only artifact folder (root ignores permission bits, so os.access
    answers for the folder as it would for them)."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    real_access = os.access
    monkeypatch.setattr("edge_run.core.fsutil.os.access",
                        lambda p, mode, **kw: False if Path(p) == art.parent else real_access(p, mode, **kw))
    manifest_before = art.with_name(art.name + ".manifest.json").read_bytes()
    res = cli("eval", art, "--corpus", corpus, "--ctx", "64", "--chunks", "2", "--json")
    assert res.code == 4, res.stderr
    assert json.loads(res.stdout)["saved_to_manifest"] is False and json.loads(res.stdout)["bpb"] > 0
    (line,) = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert line.startswith("error: the result could not be stored in") and "--no-save" in line, line
    assert art.with_name(art.name + ".manifest.json").read_bytes() == manifest_before


# ---------------------------------------------------------------------------------------------- memory


def test_guard_honours_rlimit_as(tmp_path: Path) -> None:
    """Under `ulimit -v`, available memory is what the address-space limit leaves, not the machine's."""
    code = ("import resource, psutil, numpy\n"  # the guard maps numpy's libraries before it measures
            "from edge_run.runtime.estimate.gguf import available_memory_bytes\n"
            "vms = psutil.Process().memory_info().vms\n"
            "resource.setrlimit(resource.RLIMIT_AS, (vms + 200 * 2**20, resource.RLIM_INFINITY))\n"
            "print(available_memory_bytes() / 2**20)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert 150 < float(out.stdout) <= 200, out.stdout


def test_guard_honours_cgroup_memory_max(tiny_artifact: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """cgroup v2: the tightest memory.max - memory.current on the way from this process's group to the root."""
    from edge_run.runtime.estimate import gguf as estimate

    membership = tmp_path / "cgroup"
    membership.write_text("0::/user.slice/job.scope\n")
    root = tmp_path / "fs"
    (root / "user.slice" / "job.scope").mkdir(parents=True)
    for folder, limit, used in ((root, "max", 0), (root / "user.slice", str(300 * 2**20), 100 * 2**20),
                                (root / "user.slice" / "job.scope", "max", 50 * 2**20)):
        (folder / "memory.max").write_text(f"{limit}\n")
        (folder / "memory.current").write_text(f"{used}\n")
    assert estimate._cgroup_headroom(root, membership) == 200 * 2**20
    membership.write_text("0::/\n")
    assert estimate._cgroup_headroom(root, membership) == float("inf")
    monkeypatch.setattr(estimate, "_cgroup_headroom", lambda: 8 * 2**20)
    with pytest.raises(estimate.InsufficientMemoryError, match="but 8 MiB is available"):
        estimate.check_memory(tiny_artifact, 512)


def test_out_of_memory_is_a_resource_error(art: Path) -> None:
    """Loading under an address-space limit the model does not fit in: exit 4 (memory), not 3 (corrupt file)."""
    # what `run` has mapped when its memory guard reads the address space left (under a limit it imports numpy
    # first, as every backend will before the model loads)
    probe = ("import sys, psutil, numpy, edge_run.cli.main, edge_run.cli.run\n"
             "from edge_run.runtime.estimate.gguf import shape_from_gguf\n"
             "shape_from_gguf(sys.argv[1])\n"
             "print(psutil.Process().memory_info().vms)\n")
    vms = int(subprocess.run([sys.executable, "-c", probe, str(art)], capture_output=True, text=True, check=True,
                             timeout=120).stdout)
    limit = vms + 30 * 2**20  # enough to reach the guard; the tiny model needs about 55 MiB at ctx 512

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    proc = _child("run", art, "-p", "hello", "-n", "4", "--ctx", "512", stdout=subprocess.PIPE,
                  stderr=subprocess.PIPE, preexec_fn=cap)
    _, err = proc.communicate(timeout=300)
    text = err.decode()
    assert proc.returncode == 4, text
    assert text.startswith("error: tiny.Q8_0.gguf at ctx 512 (mmap) needs about") and "MiB is available" in text, text


def test_a_library_that_cannot_be_mapped_is_out_of_memory(monkeypatch: pytest.MonkeyPatch,
                                                          capfd: pytest.CaptureFixture[str]) -> None:
    """Under `ulimit -v`, a library imported on first use (numpy's BLAS) fails in dlopen: exit 4, one line."""
    from edge_run.cli import main as cli_main

    def no_room(only: str | None = None) -> None:
        raise ImportError("libscipy_openblas64_.so: failed to map segment from shared object")

    monkeypatch.setattr(cli_main, "build_app", no_room)
    assert cli_main.main(["run", "x.gguf"]) == 4
    err = capfd.readouterr().err
    assert err.startswith("error: out of memory.") and err.count("\n") == 1, err


def test_a_context_that_does_not_fit_is_a_memory_error(art: Path, cli: Callable[..., CliResult],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """With --force past the guard, llama.cpp loads the weights and then fails to allocate the context (what
    `ulimit -v` just above the weights' size gives): exit 4 about memory, not 3 about a corrupt file. llama.cpp's
    own failure is stood in for here; the ulimit window where it happens is a few MiB wide and machine-dependent."""
    import llama_cpp

    def no_room(*args: object, **kwargs: object) -> None:
        raise ValueError("Failed to create llama_context")

    monkeypatch.setattr(llama_cpp, "Llama", no_room)
    res = cli("run", art, "-p", "hello", "-n", "2", "--force")
    assert res.code == 4, res.stderr
    assert res.stderr.startswith("error: not enough memory for a 512-token context of tiny.Q8_0.gguf"), res.stderr


@pytest.mark.parametrize(("returncode", "stderr", "code"), [
    (1, "Traceback ...\nMemoryError", 4),
    (1, "OSError: libllama.so: failed to map segment from shared object", 4),
    (-6, "terminate called after throwing an instance of 'std::bad_alloc'", 4),
    (-9, "", 4),  # the OOM killer
    (-6, "GGML_ASSERT(id_to_token.size() == token_to_id.size()) failed", 3),
    (1, "gguf_init_from_file_impl: failed to read key-value pairs", 3),
], ids=["MemoryError", "mmap-of-a-library", "bad_alloc", "SIGKILL", "assert", "corrupt-header"])
def test_header_check_tells_memory_from_corruption(returncode: int, stderr: str, code: int) -> None:
    """The header-check child inherits the memory limit: running out of it is not a corrupt file."""
    from edge_run.runtime.backends.preflight import _failure

    assert _failure(Path("x.gguf"), returncode, stderr).exit_code == code


# ---------------------------------------------------------------------------------------------- integrity


def test_verify_rehashes_and_boot_id_keys_the_cache(art: Path, cli: Callable[..., CliResult],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Bit rot keeps size and mtime: the cached check misses it within a boot, `verify` and the first use after a
    reboot (a new boot id) catch it."""
    from edge_run.runtime.artifacts import integrity

    assert cli("verify", art).code == 0
    st = art.stat()
    data = bytearray(art.read_bytes())
    data[-1] ^= 0x01
    art.write_bytes(bytes(data))
    os.utime(art, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime: an SD card's silent flip
    assert integrity.verify_artifact(art) is not None  # cached within this boot
    res = cli("verify", art)
    assert res.code == 5 and "does not match its manifest" in res.stderr, res.stderr
    monkeypatch.setattr(integrity, "boot_id", lambda: "another-boot")
    with pytest.raises(integrity.IntegrityError):
        integrity.verify_artifact(art)


def test_onnx_integrity_covers_every_file(tiny_checkpoint: Callable[[str], Path], tmp_path: Path,
                                          cli: Callable[..., CliResult], monkeypatch: pytest.MonkeyPatch) -> None:
    """Editing a constant inside model.onnx (same size) is caught, not only changes to model.onnx.data."""
    from edge_run.converters.onnx.convert import OnnxOptions, convert_to_onnx

    monkeypatch.setenv("EDGE_RUN_CACHE", str(tmp_path / "cache"))
    (art,) = convert_to_onnx(tiny_checkpoint("llama"), tmp_path / "out", OnnxOptions(quant="int4", name="tiny"))
    assert cli("verify", art).code == 0
    graph = art / "model.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0x01
    graph.write_bytes(bytes(data))
    res = cli("run", art, "-p", "hello", "-n", "2")
    assert res.code == 5, res.stderr
    assert "model.onnx in tiny.int4" in res.stderr and "does not match its manifest" in res.stderr, res.stderr


# ---------------------------------------------------------------------------------------------- measurements


def test_a_corpus_named_like_the_builtin_is_not_stored_as_it(art: Path, tmp_path: Path,
                                                             cli: Callable[..., CliResult]) -> None:
    from edge_run.core.manifest import read_manifest

    fake = tmp_path / "wikitext-2-raw-test.txt"
    fake.write_text("not wikitext at all. " * 600)
    res = cli("eval", art, "--corpus", fake, "--ctx", "64", "--chunks", "2", "--json")
    assert res.code == 0, res.stderr
    quality = read_manifest(art).quality  # type: ignore[union-attr]
    assert "wikitext2" not in quality
    (key,) = quality
    assert key.startswith("wikitext-2-raw-test-") and quality[key]["corpus_sha256"].startswith(key.rsplit("-", 1)[1])


def test_a_non_finite_measurement_is_never_stored(art: Path, tmp_path: Path) -> None:
    from edge_run.core.errors import ArtifactError
    from edge_run.runtime.eval.perplexity import evaluate, load_corpus, save_quality

    corpus = tmp_path / "c.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    result = evaluate(art, load_corpus(corpus), ctx=64, chunks=2)
    result.acc.nll = float("nan")  # what NaN logits produce
    before = art.with_name(art.name + ".manifest.json").read_bytes()
    with pytest.raises(ArtifactError, match="non-finite"):
        save_quality(art, result)
    assert art.with_name(art.name + ".manifest.json").read_bytes() == before


def test_a_hand_edited_negative_bpb_never_wins(art: Path, tmp_path: Path, cli: Callable[..., CliResult]) -> None:
    from edge_run.core.manifest import update_manifest

    update_manifest(art, quality={"wikitext2": {"bpb": -100.0, "ppl": 1.0}})
    res = cli("pick", "--profile", "pi4-4gb", "--ctx", "512", "--models", art.parent, "--json")
    assert res.code == 0, res.stderr
    (row,) = json.loads(res.stdout)["candidates"]
    assert row["quality"]["bpb"] >= 0 and row["quality"]["measured"] is False
