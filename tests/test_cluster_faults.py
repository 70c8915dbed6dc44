"""Cluster faults (issue 27): a stalled worker, serve outliving a lost worker, busy workers, nodes refused up front.
Loopback workers only (127.0.0.1)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_run.core.errors import ClusterError
from tests.test_cluster import WorkerProc, free_port, rpc_library, workers  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow


def _spec(*ws: WorkerProc) -> str:
    return ",".join(f"pi4-4gb@{w.endpoint}" for w in ws)


@contextlib.contextmanager
def _continued(w: WorkerProc) -> Iterator[None]:
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(w.proc.pid, signal.SIGCONT)


@pytest.mark.zoo
def test_a_worker_stalled_mid_generation_ends_run_within_seconds(
        zoo_gguf_dir: Callable[[str, str], Path], workers: Callable[..., WorkerProc]) -> None:  # noqa: F811
    model = zoo_gguf_dir("smollm2-135m", "Q8_0")
    a, b = workers(), workers()
    run = subprocess.Popen([sys.executable, "-m", "edge_run.cli.main", "run", str(model), "-p", "1, 2, 3, 4, 5,",
                            "-n", "1500", "--ctx", "2048", "--threads", "1", "--cluster", _spec(a, b)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env={**os.environ, "EDGE_RUN_CLUSTER_STALL_S": "2"})
    assert run.stdout is not None
    with _continued(b):
        assert run.stdout.read(8)  # generating
        os.kill(b.proc.pid, signal.SIGSTOP)  # accepts (the kernel does), answers nothing
        t0 = time.monotonic()
        code = run.wait(60)
        err = run.stderr.read().decode() if run.stderr else ""
    assert code == ClusterError.exit_code, err
    assert time.monotonic() - t0 < 8.0
    assert f"error: the worker at {b.endpoint} stopped answering (nothing for " in err, err
    assert "Traceback" not in err and err.count("error:") == 1


def _post(url: str, body: dict[str, Any], timeout: float = 120) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url + "/v1/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _health(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/health", timeout=10) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


@pytest.mark.zoo
def test_serve_answers_503_for_a_lost_worker_and_reconnects_when_it_returns(
        zoo_gguf_dir: Callable[[str, str], Path], workers: Callable[..., WorkerProc]) -> None:  # noqa: F811
    model = zoo_gguf_dir("smollm2-135m", "Q8_0")
    a, b = workers(), workers()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve = subprocess.Popen([sys.executable, "-m", "edge_run.cli.main", "serve", str(model), "--port", str(port),
                              "--ctx", "2048", "--threads", "1", "--cluster", _spec(a, b)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert serve.stdout is not None and "edge-run serve:" in serve.stdout.readline()
        short = {"model": model.name, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}
        code, first = _post(url, short)
        assert code == 200 and _health(url)["cluster"]["status"] == "ok"
        b_port = b.port
        killer = threading.Timer(1.0, b.proc.kill)  # mid-generation
        killer.start()
        code, body = _post(url, {**short, "prompt": "1, 2, 3, 4, 5,", "max_tokens": 1500})
        killer.join()
        assert code == 503, body
        assert f"the worker at {b.endpoint} is gone" in body["error"]["message"]
        health = _wait_health(url, lambda h: not h["cluster"]["nodes"][1]["ok"])
        assert health["status"] == "degraded" and b.endpoint in health["cluster"]["lost"]
        assert health["cluster"]["nodes"][0]["ok"] and "cannot connect" in health["cluster"]["nodes"][1]["error"]
        code, body = _post(url, short)  # still down: the re-check says so at once
        assert code == 503 and "cannot connect to the worker at" in body["error"]["message"]
        back = WorkerProc(port=b_port)
        try:
            code, again = _post(url, short)
            assert code == 200, again
            assert again["choices"][0]["text"] == first["choices"][0]["text"]
            health = _health(url)
            assert health["status"] == "ok" and health["cluster"]["reloads"] == 1
        finally:
            back.stop()
    finally:
        serve.terminate()
        # Known defect (closing note, issue 27): after a lost worker the server does not always end on SIGTERM
        # (llama.cpp's parked threads); this test is about the 503 and the reconnect, so it cleans up by force.
        try:
            serve.wait(60)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait(10)


def _wait_health(url: str, ok: Callable[[dict[str, Any]], bool], within: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        h = _health(url)
        if ok(h) or time.monotonic() > deadline:
            return h
        time.sleep(0.3)


# ---------------------------------------------------------------------------------------------- refused up front


@pytest.mark.parametrize(("spec", "words"), [
    ("pi4-4gb@127.0.0.1:50070,pi4-4gb@localhost:50070", "127.0.0.1:50070 and localhost:50070 are the same worker"),
    ("pi4-4gb@10.9.8.7:50052", "10.9.8.7:50052 is this machine, the host, listed as its own worker"),
])
def test_one_worker_twice_or_the_host_as_its_own_worker_is_refused_before_connecting(
        cli: Callable[..., Any], tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch, spec: str, words: str) -> None:
    from edge_run.core.errors import UsageError
    from edge_run.runtime.cluster import host
    from edge_run.runtime.cluster.spec import parse_inline

    monkeypatch.setattr(host, "own_addresses", lambda: {"10.9.8.7"})  # this machine's LAN address, say
    with pytest.raises(UsageError, match=words.replace(".", r"\.").replace("(", r"\(")):
        host.check_distinct(parse_inline(spec))
    if "localhost" in spec:  # the CLI says it in one line, exit 2, nothing connected
        r = cli("run", str(tiny_gguf), "-p", "hi", "-n", "2", "--cluster", spec)
        assert r.code == 2 and words in r.stderr and r.stderr.count("\n") == 1, r.stderr


@pytest.mark.zoo
def test_a_second_host_on_a_busy_worker_gets_a_clear_error(
        zoo_gguf_dir: Callable[[str, str], Path], workers: Callable[..., WorkerProc]) -> None:  # noqa: F811
    model = zoo_gguf_dir("smollm2-135m", "Q8_0")
    a = workers()
    run = subprocess.Popen([sys.executable, "-m", "edge_run.cli.main", "run", str(model), "-p", "1, 2, 3, 4, 5,",
                            "-n", "1500", "--ctx", "2048", "--threads", "1", "--cluster", _spec(a)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert run.stdout is not None and run.stdout.read(8)  # the first host is generating
        t0 = time.monotonic()
        second = subprocess.run([sys.executable, "-m", "edge_run.cli.main", "run", str(model), "-p", "hi", "-n", "2",
                                 "--cluster", _spec(a)], capture_output=True, text=True, timeout=60)
        assert second.returncode == ClusterError.exit_code and time.monotonic() - t0 < 30
        assert "serving another host" in second.stderr and second.stderr.count("\n") == 1, second.stderr
    finally:
        run.kill()
        run.wait()
