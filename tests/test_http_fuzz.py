"""Property-based fuzz (hypothesis) of `edge-run serve`'s HTTP API over real HTTP on 127.0.0.1.

Each example is one request: a method, a path, Host / Origin / Content-Type / Authorization and other headers,
and a body (JSON text built from parts that include nesting, lone surrogates, 5,000-digit integers, NaN,
duplicate keys, chat-shaped objects with odd fields, or raw bytes). Properties: never a 5xx other than 503,
every error is OpenAI's JSON error shape, and over the whole run /health (polled from another thread)
answers within 1 s, the server's RSS stays bounded and its stderr never shows a traceback. Examples are
derandomized; EDGE_RUN_FUZZ_SCALE=10 runs ten times as many.
"""

from __future__ import annotations

import json
import os
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .serve_util import Server, start_server
from .test_serve_security import UI, HealthProbe

SCALE = float(os.environ.get("EDGE_RUN_FUZZ_SCALE", "1"))
EXAMPLES = int(400 * SCALE)
MODEL = "tiny.Q8_0.gguf"
RSS_GROWTH_MIB = 256  # a 1 MiB body parses into tens of MiB of Python objects; far less than this stays


class Run:
    """The live server, one keep-alive client, and what the examples saw."""

    def __init__(self, server: Server, client: httpx.Client) -> None:
        self.server, self.client = server, client
        self.sent = 0
        self.statuses: dict[int, int] = {}


@pytest.fixture(scope="module")
def run(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    server = start_server(tiny_gguf, "--ctx", "256", "--queue", "2", "--threads", "1", "--cors", UI,
                          "--allow-host", "mybox.lan", cache=tmp_path_factory.mktemp("cache"))
    with httpx.Client(timeout=30) as client:
        yield Run(server, client)
    code, _, err = server.stop()
    assert code == 0, err
    assert "Traceback" not in err, err


# -------------------------------------------------------------------------------------------- JSON text
def obj(items: list[tuple[str, str]]) -> str:
    """A JSON object from (key, JSON text) pairs: keys may repeat."""
    return "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in items) + "}"


def arr(items: list[str]) -> str:
    return "[" + ",".join(items) + "]"


ODD_SCALARS = ["null", "true", "false", "NaN", "Infinity", "-Infinity", "1e999", "-1e999", "9" * 5000,
               "-" + "1" * 4301, "-0", "1.5e-400", "0.0", '"\\ud800"', '"a\\udfffb"', '"\\ud83d\\ude00"', '"\\u0000"',
               '"<|im_start|>system"', '"</s>"', json.dumps("x" * 3000), '""', '" "']
scalars = st.one_of(st.sampled_from(ODD_SCALARS), st.integers().map(str), st.floats().map(json.dumps),
                    st.text(max_size=20).map(json.dumps))
values = st.recursive(scalars, lambda kids: st.one_of(
    st.lists(kids, max_size=5).map(arr), st.lists(st.tuples(st.text(max_size=8), kids), max_size=5).map(obj)),
    max_leaves=20)
deep = st.tuples(st.integers(1, 300_000), st.sampled_from(["[", '{"a":'])).map(
    lambda t: t[1] * t[0] + ("1" if t[1] != "[" else "") + ("]" if t[1] == "[" else "}") * t[0])
ROLES = ["system", "user", "assistant", "developer", "tool", "wizard", ""]
message = st.one_of(values, st.builds(
    lambda role, content, extra: obj([("role", role), ("content", content), *extra]),
    st.one_of(st.sampled_from(ROLES).map(json.dumps), values),
    st.one_of(st.text(max_size=30).map(json.dumps), st.sampled_from(ODD_SCALARS), values,
              st.lists(st.builds(lambda t: obj([("type", '"text"'), ("text", t)]), st.text(max_size=10).map(
                  json.dumps)), max_size=2).map(arr)),
    st.lists(st.tuples(st.sampled_from(["name", "role", "content", "tool_calls"]), values), max_size=2)))
FIELDS = ["stream", "temperature", "top_p", "stop", "seed", "n", "logprobs", "stream_options", "echo",
          "max_completion_tokens", "model", "tools", "response_format", "user"]
common = st.tuples(st.one_of(st.just(json.dumps(MODEL)), values),
                   st.one_of(st.sampled_from(["1", "2", "3", "0", "-1"]), values),
                   st.lists(st.tuples(st.sampled_from(FIELDS), st.one_of(st.sampled_from(["true", "false"]), values)),
                            max_size=3))
chat = st.builds(lambda c, msgs: obj([("model", c[0]), ("messages", msgs), ("max_tokens", c[1]), *c[2]]),
                 common, st.one_of(st.lists(message, max_size=4).map(arr), values))
completion = st.builds(lambda c, prompt: obj([("model", c[0]), ("prompt", prompt), ("max_tokens", c[1]), *c[2]]),
                       common, st.one_of(st.text(max_size=30).map(json.dumps), values))
# requests the server should answer 200 to, with odd-but-valid parts: escaped pairs, duplicate keys,
# unknown fields holding anything
text = st.one_of(st.text(max_size=30).map(json.dumps), st.sampled_from(['"\\ud83d\\ude00"', '"\\u00e9\\n"',
                                                                      '"<|im_start|>system"', '"</s>"']))
valid_chat = st.builds(
    lambda msgs, n, extra, dup: obj([*(("model", '"x"') for _ in range(dup)), ("model", json.dumps(MODEL)),
                                     ("messages", arr(msgs)), ("max_tokens", str(n)), ("temperature", "0"),
                                     *extra]),
    st.lists(st.builds(lambda r, c: obj([("role", json.dumps(r)), ("content", c)]),
                       st.sampled_from(ROLES[:4]), text), min_size=1, max_size=3),
    st.integers(1, 3), st.lists(st.tuples(st.sampled_from(["user", "metadata", "x"]), values), max_size=2),
    st.integers(0, 1))
bodies = st.one_of(st.none(), valid_chat.map(str.encode), valid_chat.map(str.encode), chat.map(str.encode),
                   completion.map(str.encode), values.map(str.encode),
                   deep.map(str.encode), st.binary(max_size=200))

# ----------------------------------------------------------------------------------- requests, headers
METHODS = ["POST"] * 12 + ["GET", "GET", "PUT", "DELETE", "OPTIONS", "PATCH", "HEAD", "TRACE", "FOO"]
PATHS = ["/v1/chat/completions"] * 8 + ["/v1/completions"] * 4 + [
    "/health", "/v1/models", f"/v1/models/{MODEL}", "/v1/models/x%2F..%2F", "/", "/v1", "/v1/chat/completions/",
    "//v1/models", "/v1/embeddings", "/v1/../health", "/%ff%fe", "/v1/models/%00"]
SEGMENT = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@"
paths = st.one_of(*[st.sampled_from(PATHS)] * 6, st.lists(st.text(SEGMENT, max_size=10), min_size=1, max_size=4).map(
    lambda parts: "/" + "/".join(parts)))
VALUE_CHARS = "".join(chr(c) for c in range(0x20, 0x7F)) + "\t\xe9\xff\x80"
header_text = st.text(VALUE_CHARS, max_size=40)
HOSTS = ["127.0.0.1:{port}"] * 30 + ["localhost:{port}", "[::1]:{port}", "mybox.lan", "evil.example", "",
         "127.0.0.1.evil.example", "localhost:x", "[::1", "a b"]
ORIGINS = [None] * 30 + ["{own}", UI, "http://evil.example", "null", "", "https://ui.example:3000", "file://"]
TYPES = ["application/json"] * 30 + ["application/json; charset=utf-8", None, "text/plain",
         "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "", "application/json;;;"]
RESERVED = {"host", "content-length", "transfer-encoding", "connection", "expect", "upgrade", "te", "trailer",
            "keep-alive", "content-type", "origin", "authorization"}
extra_headers = st.dictionaries(
    st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,15}", fullmatch=True).filter(lambda n: n.lower() not in RESERVED),
    header_text, max_size=3)
wild = st.fixed_dictionaries({
    "method": st.sampled_from(METHODS), "path": paths, "body": bodies,
    "host": st.one_of(*[st.sampled_from(HOSTS)] * 10, header_text),
    "origin": st.one_of(*[st.sampled_from(ORIGINS)] * 10, header_text),
    "type": st.one_of(*[st.sampled_from(TYPES)] * 10, header_text),
    "auth": st.one_of(st.none(), st.none(), header_text), "extra": extra_headers})
# well-formed up to the body: the body fuzz reaches the parser, the template and generation
plain = st.fixed_dictionaries({
    "method": st.just("POST"), "path": st.sampled_from(["/v1/chat/completions", "/v1/completions"]),
    "body": bodies, "host": st.just("127.0.0.1:{port}"), "origin": st.none(), "type": st.just("application/json"),
    "auth": st.none(), "extra": st.just({})})
requests = st.one_of(plain, plain, wild)


def send(run: Run, req: dict[str, Any]) -> httpx.Response | None:
    """The request over HTTP; None when httpx itself refuses to send it (a header or URL it cannot encode)."""
    port, own = run.server.port, run.server.base_url
    headers: list[tuple[bytes, bytes]] = [(b"Host", req["host"].replace("{port}", str(port)).encode("latin-1"))]
    for name, value in (("Origin", req["origin"]), ("Content-Type", req["type"]), ("Authorization", req["auth"]),
                        *req["extra"].items()):
        if value is not None:
            headers.append((name.encode(), value.replace("{own}", own).encode("latin-1")))
    try:
        return run.client.request(req["method"], own + req["path"], headers=headers, content=req["body"])
    except (httpx.LocalProtocolError, httpx.InvalidURL, httpx.UnsupportedProtocol):
        return None


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(req=requests)
def fuzz_one(run: Run, req: dict[str, Any]) -> None:
    res = send(run, req)
    if res is None:
        return
    run.sent += 1
    run.statuses[res.status_code] = run.statuses.get(res.status_code, 0) + 1
    assert res.status_code < 500 or res.status_code == 503, (req, res.status_code, res.text[:300])
    if res.status_code >= 400 and req["method"] != "HEAD":
        error = res.json()["error"]
        assert isinstance(error["code"], str) and isinstance(error["message"], str), res.text[:300]
        assert "Traceback" not in res.text


def test_http_api_fuzz(run: Run) -> None:
    proc = psutil.Process(run.server.proc.pid)
    rss_before = proc.memory_info().rss
    with HealthProbe(run.server) as probe:
        fuzz_one(run)
    rss_after = proc.memory_info().rss
    assert run.sent >= EXAMPLES * 0.8, (run.sent, run.statuses)
    assert probe.count >= 20 and probe.worst < 1.0, (probe.count, probe.worst)
    assert (rss_after - rss_before) / 2**20 < RSS_GROWTH_MIB, (rss_before, rss_after)
    assert run.server.health()["status"] == "ok"
    # the fuzz reached past the guards: requests were served, and each refusal class was seen
    for status in (200, 400, 403, 404, 405, 415):
        assert run.statuses.get(status, 0) > 0, run.statuses
