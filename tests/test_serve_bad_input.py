"""`edge-run serve` refuses bad requests with OpenAI-style error JSON and the right status, and keeps serving.

One live server (a tiny converted model, an API key, a queue of one) answers every row of the table; after each
row /health must still be green and a valid request must still work at the end."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .serve_util import Server, start_server

KEY = "sekret-key"
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def tiny_server(tiny_checkpoint: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from edge_run.converters.gguf.convert import ConvertOptions, convert_to_gguf

    out = tmp_path_factory.mktemp("serve-tiny")
    (path,) = convert_to_gguf(tiny_checkpoint("llama"), out, ConvertOptions(quants="q8_0", name="tiny"))
    server = start_server(path, "--ctx", "256", "--queue", "1", "--threads", "1", api_key=KEY,
                          cache=out / "cache")
    yield server
    code, _, err = server.stop()
    assert code == 0, err
    assert "Traceback" not in err, err


def ok_body(**over: Any) -> dict[str, Any]:
    return {"model": "tiny.Q8_0.gguf", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4,
            "temperature": 0, **over}


def without(key: str) -> dict[str, Any]:
    body = ok_body()
    body.pop(key)
    return body


AUTH = {"Authorization": f"Bearer {KEY}"}
# (name, method, path, headers, body (dict -> JSON, bytes -> raw), status, error code)
CASES: list[tuple[str, str, str, dict[str, str], Any, int, str]] = [
    ("invalid JSON", "POST", CHAT, AUTH, b'{"model": "tiny.Q8_0.gguf", "messages": [', 400, "invalid_json"),
    ("not UTF-8", "POST", CHAT, AUTH, b"\xff\xfe{}", 400, "invalid_json"),
    ("body is a list", "POST", CHAT, AUTH, [1, 2], 400, "invalid_json"),
    ("model missing", "POST", CHAT, AUTH, without("model"), 400, "missing_required_parameter"),
    ("model not a string", "POST", CHAT, AUTH, ok_body(model=7), 400, "invalid_type"),
    ("unknown model", "POST", CHAT, AUTH, ok_body(model="gpt-9"), 404, "model_not_found"),
    ("messages missing", "POST", CHAT, AUTH, without("messages"), 400, "missing_required_parameter"),
    ("messages empty", "POST", CHAT, AUTH, ok_body(messages=[]), 400, "invalid_value"),
    ("messages not a list", "POST", CHAT, AUTH, ok_body(messages="hello"), 400, "invalid_type"),
    ("message not an object", "POST", CHAT, AUTH, ok_body(messages=["hello"]), 400, "invalid_type"),
    ("unknown role", "POST", CHAT, AUTH, ok_body(messages=[{"role": "wizard", "content": "x"}]), 400,
     "invalid_value"),
    ("content a number", "POST", CHAT, AUTH, ok_body(messages=[{"role": "user", "content": 5}]), 400,
     "invalid_type"),
    ("image content part", "POST", CHAT, AUTH,
     ok_body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]), 400,
     "unsupported_value"),
    ("max_tokens negative", "POST", CHAT, AUTH, ok_body(max_tokens=-5), 400, "invalid_value"),
    ("max_tokens a string", "POST", CHAT, AUTH, ok_body(max_tokens="10"), 400, "invalid_type"),
    ("max_tokens absurd", "POST", CHAT, AUTH, ok_body(max_tokens=10**12), 400, "context_length_exceeded"),
    ("prompt over the context", "POST", CHAT, AUTH,
     ok_body(messages=[{"role": "user", "content": "hello world " * 400}]), 400, "context_length_exceeded"),
    ("temperature negative", "POST", CHAT, AUTH, ok_body(temperature=-1), 400, "invalid_value"),
    ("temperature absurd", "POST", CHAT, AUTH, ok_body(temperature=1e9), 400, "invalid_value"),
    ("temperature a string", "POST", CHAT, AUTH, ok_body(temperature="hot"), 400, "invalid_type"),
    ("top_p above 1", "POST", CHAT, AUTH, ok_body(top_p=2), 400, "invalid_value"),
    ("top_p negative", "POST", CHAT, AUTH, ok_body(top_p=-0.5), 400, "invalid_value"),
    ("stop not strings", "POST", CHAT, AUTH, ok_body(stop=[1, 2]), 400, "invalid_type"),
    ("five stop strings", "POST", CHAT, AUTH, ok_body(stop=["a", "b", "c", "d", "e"]), 400, "invalid_value"),
    ("seed a float", "POST", CHAT, AUTH, ok_body(seed=1.5), 400, "invalid_type"),
    ("stream not a bool", "POST", CHAT, AUTH, ok_body(stream="yes"), 400, "invalid_type"),
    ("n above 1", "POST", CHAT, AUTH, ok_body(n=3), 400, "unsupported_value"),
    ("completion without prompt", "POST", "/v1/completions", AUTH, {"model": "tiny.Q8_0.gguf"}, 400,
     "missing_required_parameter"),
    ("completion prompt a number", "POST", "/v1/completions", AUTH, {"model": "tiny.Q8_0.gguf", "prompt": 3}, 400,
     "invalid_type"),
    ("body over the size limit", "POST", CHAT, AUTH, b"{" + b" " * (1 << 21) + b"}", 413, "request_too_large"),
    ("wrong method", "GET", CHAT, AUTH, None, 405, "method_not_allowed"),
    ("unknown path", "GET", "/v1/engines", AUTH, None, 404, "not_found"),
    ("missing API key", "POST", CHAT, {}, ok_body(), 401, "invalid_api_key"),
    ("wrong API key", "POST", CHAT, {"Authorization": "Bearer nope"}, ok_body(), 401, "invalid_api_key"),
    ("API key without Bearer", "GET", "/v1/models", {"Authorization": KEY}, None, 401, "invalid_api_key"),
]


def send(server: Server, method: str, path: str, headers: dict[str, str], body: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    hdrs = {**headers, **({"Content-Type": "application/json"} if content is not None else {})}
    return httpx.request(method, server.base_url + path, headers=hdrs, content=content, timeout=60)


@pytest.mark.parametrize(("name", "method", "path", "headers", "body", "status", "code"), CASES,
                         ids=[c[0] for c in CASES])
def test_bad_request_gets_an_openai_error(tiny_server: Server, name: str, method: str, path: str,
                                         headers: dict[str, str], body: Any, status: int, code: str) -> None:
    res = send(tiny_server, method, path, headers, body)
    assert res.status_code == status, res.text
    error = res.json()["error"]
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"] and isinstance(error["type"], str)
    health = tiny_server.health()
    assert health["status"] == "ok" and health["model_loaded"], health


def test_table_is_big_enough() -> None:
    assert len(CASES) >= 20


def test_valid_requests_still_work(tiny_server: Server) -> None:
    res = send(tiny_server, "POST", CHAT, AUTH, ok_body())
    assert res.status_code == 200, res.text
    assert res.json()["choices"][0]["finish_reason"] in ("stop", "length")
    assert send(tiny_server, "GET", "/v1/models", AUTH, None).json()["data"][0]["id"] == "tiny.Q8_0.gguf"


def test_health_needs_no_key_and_reports_memory(tiny_server: Server) -> None:
    health = tiny_server.health()
    assert health["rss_mib"] > 10 and health["n_ctx"] == 256 and health["queue_depth"] == 0


def test_busy_port_is_one_line_and_exit_4(tiny_server: Server, tmp_path: Path) -> None:
    """A port already in use fails before the model is loaded: one line, resource error."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "edge_run.cli.main", "serve", "nope.gguf", "--port",
                          str(tiny_server.port)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "EDGE_RUN_CACHE": str(tmp_path)})
    assert res.returncode == 4, res.stderr
    assert res.stderr == f"error: cannot listen on 127.0.0.1:{tiny_server.port} (the port is in use). choose another " \
        "--port or --host, or stop the program using it\n", res.stderr


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("::1", True), ("localhost", True),
                                                ("127.5.0.1", True), ("0.0.0.0", False), ("192.168.1.4", False)])
def test_loopback_detection(host: str, loopback: bool) -> None:
    from edge_run.runtime.serve.server import is_loopback

    assert is_loopback(host) is loopback


def test_missing_serve_extra_is_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = ("import sys; sys.modules['sse_starlette'] = None\n"
            "from edge_run.cli.main import main\nsys.exit(main(['serve', 'x.gguf']))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "EDGE_RUN_CACHE": str(tmp_path)})
    assert res.returncode == 2
    assert res.stderr == "error: edge-run serve needs the serve extra (sse_starlette is not installed). " \
        "pip install 'edge-run[serve]'\n"


def test_startup_warns_once_when_reachable_without_a_key() -> None:
    from edge_run.runtime.serve.server import startup_lines

    open_ = startup_lines("0.0.0.0", "http://0.0.0.0:8080", "m.gguf", 2048, 16, None)
    assert len(open_) == 2 and open_[0].startswith("warning: listening on 0.0.0.0 without --api-key")
    assert not startup_lines("0.0.0.0", "http://0.0.0.0:8080", "m.gguf", 2048, 16, "k")[0].startswith("warning")
    assert startup_lines("127.0.0.1", "http://127.0.0.1:8080", "m.gguf", 2048, 16, None) == [
        "edge-run serve: m.gguf on http://127.0.0.1:8080/v1 (ctx 2048, queue 16); Ctrl-C stops"]
