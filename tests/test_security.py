"""Security: no unpickling, sandboxed chat templates, no network at all, and paths from manifests and checkpoint
indexes cannot leave their folder."""

from __future__ import annotations

import ast
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_run.converters.checkpoint import PICKLE_SUFFIXES
from edge_run.core.errors import ArtifactError, CheckpointError

from .conftest import CliResult

REPO = Path(__file__).resolve().parent.parent
PACKAGE_DIRS = ("src/edge_run/runtime", "src/edge_run/converters", "src/edge_run/profiles", "src/edge_run/cli")


class _Trap:
    """A pickle that, when loaded, creates ``marker``: proof that something unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------------------------------------- no unpickling


@pytest.mark.parametrize("suffix", PICKLE_SUFFIXES)
def test_pickled_checkpoints_are_refused_unopened(suffix: str, tiny_checkpoint: Callable[[str], Path], tmp_path: Path,
                                                  cli: Callable[..., CliResult]) -> None:
    ckpt = _copy(tiny_checkpoint("llama"), tmp_path / "ckpt")
    (ckpt / "model.safetensors").unlink()
    marker = tmp_path / "UNPICKLED"
    (ckpt / f"pytorch_model{suffix}").write_bytes(pickle.dumps(_Trap(marker)))
    res = cli("convert", ckpt, "--quant", "q8_0", "--out", tmp_path / "out")
    assert res.code == 3, res.stderr
    assert "never unpickles" in res.stderr and "safetensors" in res.stderr
    assert not marker.exists()


def test_safetensors_win_over_a_pickle_beside_them(tiny_checkpoint: Callable[[str], Path], tmp_path: Path,
                                                   cli: Callable[..., CliResult]) -> None:
    ckpt = _copy(tiny_checkpoint("llama"), tmp_path / "ckpt")
    marker = tmp_path / "UNPICKLED"
    (ckpt / "pytorch_model.bin").write_bytes(pickle.dumps(_Trap(marker)))
    res = cli("convert", ckpt, "--quant", "q8_0", "--out", tmp_path / "out")
    assert res.code == 0, res.stderr
    assert not marker.exists()


def _package_sources() -> list[Path]:
    return sorted(p for d in PACKAGE_DIRS for p in (REPO / d).rglob("*.py"))


def _calls_and_imports(path: Path) -> tuple[set[str], list[ast.Call]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    return imported, [n for n in ast.walk(tree) if isinstance(n, ast.Call)]


# The modules that may use sockets, each for one reason: `edge-run serve` binds its listener
# (test_server_only_listens_on_loopback) and reads the host's own names for its Host allowlist; the cluster talks
# only to the workers the user listed (--cluster) and `edge-run worker` binds its listener (loopback unless told).
LISTENERS = {
    "src/edge_run/runtime/serve/server.py": {"socket"},
    "src/edge_run/runtime/serve/guard.py": {"socket"},
    "src/edge_run/runtime/cluster/worker.py": {"socket"},
    "src/edge_run/runtime/cluster/links.py": {"socket"},
    "src/edge_run/runtime/cluster/host.py": {"socket"},
    "src/edge_run/runtime/cluster/probe.py": {"socket"},
}


def test_package_has_no_unpickling_or_network_code() -> None:
    """Belt and braces beside the runtime tests: nothing in the installed package imports a pickle loader or a
    network client, and no numpy load allows pickles."""
    banned = {"pickle", "dill", "cloudpickle", "joblib", "torch", "socket", "urllib", "http", "requests", "httpx",
              "aiohttp", "huggingface_hub", "ftplib", "smtplib"}
    for path in _package_sources():
        imported, calls = _calls_and_imports(path)
        allowed = LISTENERS.get(path.relative_to(REPO).as_posix(), set())
        assert not imported & banned - allowed, f"{path.relative_to(REPO)} imports {sorted(imported & banned)}"
        for call in calls:
            for kw in call.keywords:
                assert not (kw.arg == "allow_pickle" and isinstance(kw.value, ast.Constant) and kw.value.value), \
                    f"{path.relative_to(REPO)}:{call.lineno} allows pickles"


# ---------------------------------------------------------------------------------------------- chat templates

ESCAPES = {
    "class walk": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "globals via cycler": "{{ cycler.__init__.__globals__.os.popen('touch MARKER').read() }}",
    "mutate messages": "{% set x = messages.append({'role': 'system', 'content': 'pwned'}) %}ok",
    "huge range": "{% for i in range(10**9) %}{% endfor %}",
    "format string": "{{ '{0.__class__.__init__.__globals__}'.format(messages) }}",
}


@pytest.mark.parametrize("template", list(ESCAPES.values()), ids=list(ESCAPES))
def test_template_cannot_reach_python_internals(template: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_run.runtime.chat.template import render_chat

    monkeypatch.chdir(tmp_path)
    messages = [{"role": "user", "content": "hi"}]
    try:
        text = render_chat(template, messages)
    except ArtifactError as e:
        assert "chat template" in e.one_line()
    else:  # rendered harmlessly: nothing of Python's internals leaked into the text
        assert "class" not in text and "globals" not in text and "module" not in text, text
    assert messages == [{"role": "user", "content": "hi"}]
    assert list(tmp_path.iterdir()) == []


def test_run_chat_with_a_hostile_template(tiny_checkpoint: Callable[[str], Path], tmp_path: Path,
                                          cli: Callable[..., CliResult], monkeypatch: pytest.MonkeyPatch) -> None:
    """A converted model whose template tries to run a shell command: `run --chat` fails cleanly, nothing runs,
    and the same model still runs without --chat."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDGE_RUN_CACHE", str(tmp_path / "cache"))
    ckpt = _copy(tiny_checkpoint("llama"), tmp_path / "ckpt")
    cfg = json.loads((ckpt / "tokenizer_config.json").read_text())
    cfg["chat_template"] = ESCAPES["globals via cycler"]
    (ckpt / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert cli("convert", ckpt, "--quant", "q8_0", "--out", tmp_path / "out", "--name", "m").code == 0
    artifact = tmp_path / "out" / "m.Q8_0.gguf"
    res = cli("run", artifact, "-p", "hello", "-n", "2", "--chat")
    assert res.code == 3, res.stderr
    assert "the chat template tried an unsafe operation" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "MARKER").exists()
    assert cli("run", artifact, "-p", "hello", "-n", "2").code == 0


# ---------------------------------------------------------------------------------------------- paths


@pytest.mark.parametrize("name", ["../x.gguf", "../../etc/passwd", "/etc/passwd", "sub/m.gguf", "..", ".", "",
                                  "m.gguf\x00.txt"])
def test_manifest_cannot_name_a_file_outside_its_folder(name: str) -> None:
    from edge_run.core.manifest import Manifest

    d = {"format": "gguf", "artifact": name, "source": {}, "architecture": "LlamaForCausalLM", "arch": "llama",
         "parameter_count": 1, "quant": "Q8_0", "bits_per_weight": 8.5, "file_size": 1, "sha256": "0" * 64,
         "tokenizer": "gpt2", "context_length": 512}
    with pytest.raises(ArtifactError, match=r"own folder|not a plain file name"):
        Manifest.from_dict(d)


@pytest.mark.parametrize("shard", ["../../etc/passwd", "/etc/passwd", "../ckpt2/model.safetensors",
                                   "sub/model.safetensors"])
def test_shard_index_cannot_leave_the_checkpoint(shard: str, tiny_checkpoint: Callable[[str], Path],
                                                tmp_path: Path, cli: Callable[..., CliResult]) -> None:
    ckpt = _copy(tiny_checkpoint("llama"), tmp_path / "ckpt")
    (tmp_path / "ckpt2").mkdir()
    shutil.copy(ckpt / "model.safetensors", tmp_path / "ckpt2" / "model.safetensors")  # a real file out there
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"model.embed_tokens.weight": shard}}))
    with pytest.raises(CheckpointError, match="outside the checkpoint folder"):
        from edge_run.converters.checkpoint import open_checkpoint

        open_checkpoint(ckpt)
    res = cli("convert", ckpt, "--quant", "q8_0", "--out", tmp_path / "out")
    assert res.code == 3 and "outside the checkpoint folder" in res.stderr


# ---------------------------------------------------------------------------------------------- no network

SITECUSTOMIZE = '''
"""Installed by tests/test_security.py: any network use in this process is logged and refused."""
import os
import socket

_LOG = os.environ["EDGE_RUN_NET_LOG"]


def _refuse(what):
    def refused(*args, **kwargs):
        with open(_LOG, "a", encoding="utf-8") as log:
            log.write(f"{os.getpid()} {what} {args!r:.200}\\n")
        raise OSError(f"network access blocked by the test ({what})")
    return refused


for _name in ("socket", "create_connection", "getaddrinfo", "gethostbyname", "socketpair", "fromfd"):
    setattr(socket, _name, _refuse(_name))
'''


@pytest.fixture
def no_network_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose Python processes (and their children) cannot open a socket."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "net.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO), os.environ.get("PYTHONPATH", "")]),
           "EDGE_RUN_NET_LOG": str(log), "EDGE_RUN_CACHE": str(tmp_path / "cache"),
           "EDGE_RUN_PROFILES": str(tmp_path / "profiles")}
    env.pop("EDGE_RUN_DEBUG", None)
    # the trap works: a direct connection attempt is refused and logged
    probe = subprocess.run([sys.executable, "-c", "import socket; socket.create_connection(('127.0.0.1', 9))"],
                           env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "network access blocked" in probe.stderr
    assert "create_connection" in log.read_text()
    log.unlink()
    return env, log


def test_no_network_in_any_process(no_network_env: tuple[dict[str, str], Path], tiny_checkpoint: Callable[[str], Path],
                                   tmp_path: Path) -> None:
    """convert (with its quantizer child), inspect, run (with its header-check child), eval, bench, pick: all
    succeed while every process they start has sockets blocked, and none even tries."""
    env, log = no_network_env
    out, models = tmp_path / "out", tmp_path / "models"

    def edge_run(*args: str | Path) -> str:
        res = subprocess.run([sys.executable, "-m", "edge_run.cli.main", *map(str, args)], env=env,
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, f"{args[0]} failed without network: {res.stderr[-2000:]}"
        return res.stdout

    (artifact,) = json.loads(edge_run("convert", tiny_checkpoint("llama"), "--quant", "q8_0", "--out", out,
                                      "--name", "m", "--json"))
    edge_run("inspect", artifact)
    assert json.loads(edge_run("run", artifact, "-p", "hello", "-n", "4", "--json"))["completion_tokens"] >= 1
    edge_run("eval", artifact, "--corpus", "tinyshakespeare", "--ctx", "64", "--chunks", "2", "--json")
    edge_run("bench", artifact, "--repeats", "1", "--n-prompt", "32", "--n-gen", "4", "--json")
    shutil.copytree(out, models)
    edge_run("pick", "--profile", "pi4-4gb", "--models", models, "--ctx", "512", "--json")
    attempts = log.read_text() if log.exists() else ""
    assert attempts == "", f"network use attempted:\n{attempts}"


def test_no_network_in_process(tiny_checkpoint: Callable[[str], Path], tmp_path: Path, cli: Callable[..., CliResult],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The same with the sockets of this very process monkeypatched away (what the CLI imports in-process)."""
    attempts: list[str] = []

    def refuse(what: str) -> Callable[..., object]:
        def refused(*args: object, **kwargs: object) -> object:
            attempts.append(what)
            raise OSError(f"network access blocked by the test ({what})")
        return refused

    for name in ("socket", "create_connection", "getaddrinfo", "gethostbyname"):
        monkeypatch.setattr(socket, name, refuse(name))
    monkeypatch.setenv("EDGE_RUN_CACHE", str(tmp_path / "cache"))
    models = tmp_path / "models"
    res = cli("convert", tiny_checkpoint("llama"), "--quant", "q8_0", "--out", models, "--name", "m")
    assert res.code == 0, res.stderr
    artifact = models / "m.Q8_0.gguf"
    for args in (("run", artifact, "-p", "hello", "-n", "3"),
                 ("eval", artifact, "--corpus", "tinyshakespeare", "--ctx", "64", "--chunks", "1", "--no-save"),
                 ("pick", "--profile", "pi4-4gb", "--models", models, "--ctx", "512")):
        res = cli(*args)
        assert res.code == 0, f"{args[0]}: {res.stderr}"
    assert attempts == []
    with pytest.raises(OSError, match="blocked"):  # the trap was live all along
        socket.create_connection(("127.0.0.1", 9))


SERVER_SITECUSTOMIZE = '''
"""Installed by tests/test_security.py: sockets work, but every bind, listen and connection attempt is logged;
binding outside the loopback range and any outbound connection or name lookup are refused."""
import os
import socket

_LOG = os.environ["EDGE_RUN_NET_LOG"]
_INET = (socket.AF_INET, socket.AF_INET6)


def _log(line):
    with open(_LOG, "a", encoding="utf-8") as log:
        log.write(f"{line}\\n")


def _loopback(address):
    host = address[0] if isinstance(address, tuple) else str(address)
    return host == "::1" or host.startswith("127.")


class _Guarded(socket.socket):
    def bind(self, address):
        if self.family in _INET:
            _log(f"bind {address[0]}")
            if not _loopback(address):
                raise OSError("non-loopback bind blocked by the test")
        return super().bind(address)

    def listen(self, *args):
        if self.family in _INET:
            _log(f"listen {self.getsockname()[0]}")
        return super().listen(*args)

    def connect(self, address):
        if self.family in _INET:
            _log(f"connect {address!r}")
            raise OSError("outbound connection blocked by the test")
        return super().connect(address)

    def connect_ex(self, address):
        if self.family in _INET:
            _log(f"connect {address!r}")
            raise OSError("outbound connection blocked by the test")
        return super().connect_ex(address)

    def sendto(self, *args):
        _log(f"sendto {args[-1]!r}")
        raise OSError("datagrams blocked by the test")


def _refuse(what):
    def refused(*args, **kwargs):
        _log(f"{what} {args!r:.200}")
        raise OSError(f"network access blocked by the test ({what})")
    return refused


socket.socket = _Guarded
for _name in ("create_connection", "getaddrinfo", "gethostbyname", "gethostbyname_ex"):
    setattr(socket, _name, _refuse(_name))
'''


def test_server_only_listens_on_loopback(tiny_checkpoint: Callable[[str], Path], tmp_path: Path) -> None:
    """`edge-run serve` under a socket guard: it opens exactly one listener, on 127.0.0.1, answers a request
    made from outside the guarded process, and attempts no connection or name lookup of its own."""
    import httpx

    from edge_run.converters.gguf.convert import ConvertOptions, convert_to_gguf

    from .serve_util import start_server

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SERVER_SITECUSTOMIZE)
    log = tmp_path / "net.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO), os.environ.get("PYTHONPATH", "")]),
           "EDGE_RUN_NET_LOG": str(log), "EDGE_RUN_PROFILES": str(tmp_path / "profiles")}
    (artifact,) = convert_to_gguf(tiny_checkpoint("llama"), tmp_path / "m", ConvertOptions(quants="q8_0", name="m"))
    server = start_server(artifact, "--ctx", "128", env=env, cache=tmp_path / "cache")
    try:
        res = httpx.post(f"{server.base_url}/v1/completions", timeout=60,
                         json={"model": server.model_id, "prompt": "hello", "max_tokens": 3})
        assert res.status_code == 200, res.text
    finally:
        code, _, err = server.stop()
    assert code == 0, err
    events = log.read_text().splitlines()
    # one socket bound, on loopback (asyncio calls listen() on it again); no connect, lookup or datagram
    assert events.count("bind 127.0.0.1") == 1 and set(events) == {"bind 127.0.0.1", "listen 127.0.0.1"}, events
