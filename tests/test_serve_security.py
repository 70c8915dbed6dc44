"""`edge-run serve` against cross-site use, event-loop stalls, odd JSON and signals, over real HTTP.

A key-less loopback server on the tiny model (the default setup, the one a web page could reach) answers the
Host / Origin / Content-Type / JSON tables; a second tiny model whose chat template runs for minutes shows that
rendering never stalls /health and never keeps SIGTERM from ending the server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .serve_util import Server, start_server

CHAT = "/v1/chat/completions"
UI = "http://ui.example:3000"
MODEL = "tiny.Q8_0.gguf"
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def open_server(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """No key, loopback: what a page in the user's browser would attack."""
    server = start_server(tiny_gguf, "--ctx", "512", "--queue", "2", "--threads", "1", "--cors", UI,
                          "--allow-host", "mybox.lan", cache=tmp_path_factory.mktemp("cache"))
    yield server
    code, _, err = server.stop()
    assert code == 0, err
    assert "Traceback" not in err, err


def body(**over: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2, "temperature": 0,
            **over}


def request(server: Server, method: str, path: str, headers: dict[str, str] | None = None,
            content: bytes | None = None) -> httpx.Response:
    return httpx.request(method, server.base_url + path, headers=headers or {}, content=content, timeout=60)


def error_code(res: httpx.Response) -> str:
    code: str = res.json()["error"]["code"]
    return code


# ------------------------------------------------------------------------------------------- Host allowlist
HOSTS = [("127.0.0.1:{port}", 200), ("localhost:{port}", 200), ("LocalHost", 200), ("[::1]:{port}", 200),
         ("127.0.0.2:1", 200), ("app.localhost:{port}", 200), ("localhost.:{port}", 200), ("mybox.lan:{port}", 200),
         ("MYBOX.LAN", 200), ("evil.example:{port}", 403), ("evil.example", 403), ("127.0.0.1.nip.io:{port}", 403),
         ("mybox.lan.evil.example", 403), ("localhost.evil.example", 403), ("192.168.1.5:{port}", 403),
         ("localhost:80x", 403), ("[::1", 403), ("", 403), ("local host", 403)]


@pytest.mark.parametrize(("host", "status"), HOSTS, ids=[h for h, _ in HOSTS])
def test_host_allowlist(open_server: Server, host: str, status: int) -> None:
    """DNS rebinding: a page on evil.example re-pointed at 127.0.0.1 sends `Host: evil.example`."""
    for path in ("/v1/models", "/health"):
        res = request(open_server, "GET", path, {"Host": host.format(port=open_server.port)})
        assert res.status_code == status, (path, res.text)
        if status == 403:
            assert error_code(res) == "host_not_allowed" and "--allow-host" in res.json()["error"]["message"]


# ------------------------------------------------------------------------------------------ Content-Type
@pytest.mark.parametrize(("content_type", "status"), [
    (None, 415), ("text/plain", 415), ("text/plain;charset=UTF-8", 415), ("application/x-www-form-urlencoded", 415),
    ("multipart/form-data; boundary=x", 415), ("application/jsonx", 415), ("application/json", 200),
    ("Application/JSON; charset=utf-8", 200)])
def test_json_bodies_need_the_json_content_type(open_server: Server, content_type: str | None,
                                                status: int) -> None:
    """A browser sends text/plain or a form cross-site without asking (no preflight); it cannot send JSON so."""
    headers = {"Content-Type": content_type} if content_type else {}
    for path, payload in ((CHAT, body()), ("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 2})):
        res = request(open_server, "POST", path, headers, json.dumps(payload).encode())
        assert res.status_code == status, res.text
        if status == 415:
            assert error_code(res) == "unsupported_media_type"


# ----------------------------------------------------------------------------------------- Origin / CORS
def test_foreign_origins_are_refused(open_server: Server) -> None:
    s = open_server
    for origin in ("http://evil.example", "https://ui.example:3000", "http://ui.example:3001", "null",
                   f"http://localhost:{s.port + 1}"):
        res = request(s, "POST", CHAT, {**JSON, "Origin": origin}, json.dumps(body()).encode())
        assert res.status_code == 403 and error_code(res) == "origin_not_allowed", (origin, res.text)
        assert "access-control-allow-origin" not in res.headers
        # the "simple" request a page can send without a preflight: refused before it is read
        res = request(s, "POST", CHAT, {"Content-Type": "text/plain", "Origin": origin}, json.dumps(body()).encode())
        assert res.status_code == 403, res.text


def test_own_and_allowed_origins_work(open_server: Server) -> None:
    s = open_server
    own = request(s, "POST", CHAT, {**JSON, "Origin": s.base_url}, json.dumps(body()).encode())
    assert own.status_code == 200, own.text
    assert "access-control-allow-origin" not in own.headers
    allowed = request(s, "POST", CHAT, {**JSON, "Origin": UI}, json.dumps(body()).encode())
    assert allowed.status_code == 200, allowed.text
    assert allowed.headers["access-control-allow-origin"] == UI and "Origin" in allowed.headers["vary"]
    streamed = request(s, "POST", CHAT, {**JSON, "Origin": UI}, json.dumps(body(stream=True)).encode())
    assert streamed.status_code == 200 and streamed.headers["access-control-allow-origin"] == UI
    assert streamed.text.rstrip().endswith("data: [DONE]")
    refused = request(s, "GET", "/v1/models", {"Origin": UI, "Host": "evil.example"})
    assert refused.status_code == 403 and error_code(refused) == "host_not_allowed"


def test_preflight(open_server: Server) -> None:
    s = open_server
    ask = {"Origin": UI, "Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os"}
    res = request(s, "OPTIONS", CHAT, ask)
    assert res.status_code == 204, res.text
    assert res.headers["access-control-allow-origin"] == UI
    assert "POST" in res.headers["access-control-allow-methods"]
    assert res.headers["access-control-allow-headers"] == "authorization, content-type, x-stainless-os"
    assert int(res.headers["access-control-max-age"]) > 0
    evil = request(s, "OPTIONS", CHAT, {**ask, "Origin": "http://evil.example"})
    assert evil.status_code == 403 and error_code(evil) == "origin_not_allowed"
    assert "access-control-allow-origin" not in evil.headers
    plain = request(s, "OPTIONS", CHAT)
    assert plain.status_code == 405 and error_code(plain) == "method_not_allowed"


# ------------------------------------------------------------------------------------- valid-but-odd JSON
def chat_with(extra: str) -> bytes:
    """A valid request with ``extra`` spliced in as the raw JSON of one more field."""
    head = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    return (head[:-1] + ', "x": ' + extra + "}").encode()


ODD: list[tuple[str, bytes, int, str]] = [
    ("100k nested arrays", b"[" * 100_000 + b"]" * 100_000, 400, "invalid_json"),
    ("100k nested objects", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, 400, "invalid_json"),
    ("900 nested in a field", chat_with("[" * 900 + "]" * 900), 400, "invalid_json"),
    ("65 nested in a field", chat_with("[" * 65 + "]" * 65), 400, "invalid_json"),
    ("unclosed nesting", b"[" * 500_000, 400, "invalid_json"),
    ("lone surrogate in content", json.dumps(body(messages=[{"role": "user", "content": "a\ud800b"}])).encode(),
     400, "invalid_json"),
    ("lone low surrogate in model", b'{"model": "\\udc80", "messages": []}', 400, "invalid_json"),
    ("lone surrogate in a key", chat_with('{"\\ud83d": 1}'), 400, "invalid_json"),
    ("lone surrogate in a stop string", json.dumps(body(stop=["\udfff"])).encode(), 400, "invalid_json"),
    ("5000-digit max_tokens", json.dumps(body()).replace('"max_tokens": 2', '"max_tokens": ' + "9" * 5000).encode(),
     400, "invalid_json"),
    ("5000-digit int in a field", chat_with("-" + "1" * 5000), 400, "invalid_json"),
    ("NaN temperature", json.dumps(body(temperature=float("nan"))).encode(), 400, "invalid_json"),
    ("Infinity top_p", json.dumps(body(top_p=float("inf"))).encode(), 400, "invalid_json"),
    ("-Infinity in a field", chat_with("-Infinity"), 400, "invalid_json"),
    ("1e999 temperature", json.dumps(body()).replace('"temperature": 0', '"temperature": 1e999').encode(), 400,
     "invalid_type"),
    ("UTF-16 body", json.dumps(body()).encode("utf-16"), 400, "invalid_json"),
    ("UTF-8 BOM", b"\xef\xbb\xbf" + json.dumps(body()).encode(), 400, "invalid_json"),
    ("NUL in the body", b"{\x00}", 400, "invalid_json"),
    ("huge role object", json.dumps(body(messages=[{"role": {"r" * 10: ["x" * 1000] * 500}, "content": "x"}]))
     .encode(), 400, "invalid_value"),
    ("huge model name", json.dumps(body(model="m" * 500_000)).encode(), 404, "model_not_found"),
    ("31,000 empty messages", json.dumps(body(messages=[{"role": "user", "content": ""}] * 31_000)).encode(),
     400, "context_length_exceeded"),
]


@pytest.mark.parametrize(("name", "raw", "status", "code"), ODD, ids=[c[0] for c in ODD])
def test_odd_json_is_a_400_never_a_500(open_server: Server, name: str, raw: bytes, status: int, code: str) -> None:
    res = request(open_server, "POST", CHAT, JSON, raw)
    assert res.status_code == status, res.text[:500]
    assert error_code(res) == code, res.text[:500]
    assert len(res.content) < 1000, res.text[:500]  # an error never echoes a megabyte back


def test_odd_but_fine_json_is_answered(open_server: Server) -> None:
    pair = request(open_server, "POST", CHAT, JSON,
                   json.dumps(body(messages=[{"role": "user", "content": "\ud83d\ude00 ok"}])).encode())
    assert pair.status_code == 200, pair.text  # an escaped surrogate pair is one character
    twice = b'{"model": "nope", "model": "%s", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}'
    dup = request(open_server, "POST", CHAT, JSON, twice % MODEL.encode())
    assert dup.status_code == 200, dup.text  # duplicate keys: the last one counts, as everywhere in Python
    deep = request(open_server, "POST", CHAT, JSON, chat_with("[" * 60 + "]" * 60))
    assert deep.status_code == 200, deep.text


def test_body_over_the_limit_without_a_length(open_server: Server) -> None:
    """A chunked body (no Content-Length) is cut off at the limit too."""
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "x", "pad": "'
        for _ in range(64):
            yield b"x" * 65536

    with httpx.Client(timeout=60) as client:
        res = client.post(open_server.base_url + CHAT, headers=JSON, content=chunks())
    assert res.status_code == 413 and error_code(res) == "request_too_large"


def test_odd_authorization_headers_are_401(tiny_gguf: Path, tmp_path: Path) -> None:
    server = start_server(tiny_gguf, "--ctx", "128", "--threads", "1", api_key="k3y!~", cache=tmp_path)
    try:
        for header in (b"Bearer \xff\xfe\x80", b"Bearer k3y!~\xe9", b"Bearer " + b"k" * 10_000, b"\xff",
                       b"Bearer  k3y!~x", b"bearer"):
            res = httpx.get(server.base_url + "/v1/models", headers=[(b"Authorization", header)], timeout=30)
            assert res.status_code == 401 and error_code(res) == "invalid_api_key", (header[:20], res.text)
        ok = httpx.get(server.base_url + "/v1/models", headers={"Authorization": "Bearer k3y!~"}, timeout=30)
        assert ok.status_code == 200, ok.text
    finally:
        code, _, err = server.stop()
    assert code == 0 and "Traceback" not in err, err


@pytest.mark.parametrize("key", ["ключ", "tab\tkey", "with space", "é", "\x7f", "nul\x01"])
def test_api_key_must_be_printable_ascii(key: str, tmp_path: Path) -> None:
    for args, env in ((["--api-key", key], {}), ([], {"EDGE_RUN_API_KEY": key})):
        res = subprocess.run([sys.executable, "-m", "edge_run.cli.main", "serve", "nope.gguf", *args],
                             capture_output=True, text=True, timeout=120,
                             env={**os.environ, "EDGE_RUN_CACHE": str(tmp_path), **env})
        assert res.returncode == 2, res.stderr
        assert res.stderr.startswith("error: --api-key (or EDGE_RUN_API_KEY) must be printable ASCII")
        assert res.stderr.count("\n") == 1 and key not in res.stderr


def test_api_key_that_is_not_utf8(tmp_path: Path) -> None:
    env = {os.fsencode(k): os.fsencode(v) for k, v in os.environ.items()}
    env[b"EDGE_RUN_API_KEY"], env[b"EDGE_RUN_CACHE"] = b"k\xff\xfe", os.fsencode(tmp_path)
    res = subprocess.run([sys.executable, "-m", "edge_run.cli.main", "serve", "nope.gguf"], capture_output=True,
                         timeout=120, env=env)
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith(b"error: --api-key (or EDGE_RUN_API_KEY) must be printable ASCII")
    assert res.stderr.count(b"\n") == 1


@pytest.mark.parametrize(("flag", "value"), [("--cors", "evil.example"), ("--cors", "http://a b"),
                                             ("--allow-host", "http://mybox.lan"), ("--allow-host", "a b"),
                                             ("--allow-host", "mybox.lan:8080")])
def test_malformed_allow_host_and_cors_are_usage_errors(tiny_gguf: Path, flag: str, value: str,
                                                        tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "edge_run.cli.main", "serve", str(tiny_gguf), "--port", "0",
                          flag, value], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "EDGE_RUN_CACHE": str(tmp_path)})
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith(f"error: {flag} ") and res.stderr.count("\n") == 1, res.stderr


def test_bound_to_every_interface_with_a_key_any_host_is_served(tiny_gguf: Path, tmp_path: Path) -> None:
    """Reached from the network by whatever name the user's network gives it; the key protects it. Only
    loopback traffic is used here (the server listens on 0.0.0.0; the test connects to 127.0.0.1)."""
    server = start_server(tiny_gguf, "--host", "0.0.0.0", "--ctx", "128", "--threads", "1", api_key="k",
                          cache=tmp_path)
    try:
        res = httpx.get(server.base_url + "/v1/models", timeout=30,
                        headers={"Host": "whatever.example:1234", "Authorization": "Bearer k"})
        assert res.status_code == 200, res.text
    finally:
        code, _, err = server.stop()
    assert code == 0, err


# --------------------------------------------------------------------------- event loop, slow template, SIGTERM
class HealthProbe:
    """Polls /health from another thread; ``worst`` is the slowest answer (a failure counts as infinity)."""

    def __init__(self, server: Server, interval: float = 0.05) -> None:
        self.server, self.interval = server, interval
        self.worst, self.count = 0.0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                t0 = time.monotonic()
                try:
                    ok = client.get(self.server.base_url + "/health").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.worst = max(self.worst, time.monotonic() - t0 if ok else float("inf"))
                self.count += 1
                time.sleep(self.interval)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_health_stays_fast_while_big_requests_are_prepared(open_server: Server) -> None:
    """31,000 empty messages (refused by count) and 512 messages of 1,900 characters (~1 MB, rendered and
    tokenized in full, then refused for the context): /health answers within 1 s throughout."""
    empty = json.dumps(body(messages=[{"role": "user", "content": ""}] * 31_000)).encode()
    text = ("the quick brown fox jumps over the lazy dog " * 44)[:1900]
    heavy = json.dumps(body(messages=[{"role": "user", "content": text}] * 512)).encode()
    assert len(heavy) < 1 << 20 < len(heavy) * 1.1
    with HealthProbe(open_server) as probe:
        time.sleep(0.2)
        for raw in (empty, heavy, heavy):
            res = request(open_server, "POST", CHAT, JSON, raw)
            assert res.status_code == 400 and error_code(res) == "context_length_exceeded", res.text
        time.sleep(0.2)
    assert probe.count >= 5 and probe.worst < 1.0, (probe.count, probe.worst)


SLOW_TEMPLATE = ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
                 "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:")


@pytest.fixture(scope="module")
def slow_template_gguf(tiny_checkpoint: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a chat template that renders for hours."""
    from edge_run.converters.gguf.convert import ConvertOptions, convert_to_gguf

    src = tmp_path_factory.mktemp("slow-ckpt") / "slow"
    shutil.copytree(tiny_checkpoint("llama"), src)
    config = json.loads((src / "tokenizer_config.json").read_text())
    (src / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": SLOW_TEMPLATE}))
    (path,) = convert_to_gguf(src, tmp_path_factory.mktemp("slow-gguf"), ConvertOptions(quants="q8_0", name="slow"))
    return path


def post_in_background(server: Server, raw: bytes) -> tuple[threading.Thread, list[Any]]:
    results: list[Any] = []

    def go() -> None:
        try:
            results.append(request(server, "POST", CHAT, JSON, raw))
        except httpx.HTTPError as e:
            results.append(e)

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread, results


@pytest.mark.parametrize("signals", [1, 2])
def test_sigterm_ends_the_server_while_a_template_renders(slow_template_gguf: Path, tmp_path: Path,
                                                          signals: int) -> None:
    """While the template runs (until the renderer's own time bound, if any: a few seconds for this much text),
    /health answers within 1 s and other requests are still answered. A SIGTERM during the render ends the
    server cleanly without waiting for it (the rendering request gets 503); two end it at once."""
    server = start_server(slow_template_gguf, "--ctx", "128", "--threads", "1", cache=tmp_path)
    raw = json.dumps({**body(messages=[{"role": "user", "content": "x" * 900_000}]), "model": server.model_id})
    try:
        with HealthProbe(server) as probe:
            thread, results = post_in_background(server, raw.encode())
            time.sleep(0.5)
            bad = request(server, "POST", CHAT, JSON, b"[" * 100_000)
            assert bad.status_code == 400
            thread.join(3.0)
        assert probe.count >= 10 and probe.worst < 1.0, (probe.count, probe.worst)
        thread, results = post_in_background(server, raw.encode())
        time.sleep(0.5)
        assert not results, results  # still rendering
        t0 = time.monotonic()
        for _ in range(signals):
            server.proc.send_signal(signal.SIGTERM)
            time.sleep(0.05)
        code, out, err = server.wait(timeout=20)
        took = time.monotonic() - t0
    finally:
        server.stop(signal.SIGKILL)
    assert took < (5 if signals == 1 else 2), took
    assert "Traceback" not in err, err
    if signals == 1:
        assert code == 0 and "stopped" in out, (code, err)
        thread.join(10)
        res = results[0]
        assert isinstance(res, httpx.HTTPError) or (res.status_code == 503 and error_code(res) == "shutting_down")
    else:
        assert code in (0, -signal.SIGTERM), (code, err)
