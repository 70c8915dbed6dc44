"""`edge-run serve` on the real SmolLM2-135M (GGUF and ONNX), driven by the official `openai` client.

One server per model and module, one request at a time (--parallel 1: the FIFO; batching is
tests/test_batching.py); a second GGUF server with a queue of one for the queue / disconnect / SIGTERM cases.
Greedy decoding throughout, so outputs are comparable between requests."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from .serve_util import Server, start_server, wait_until

pytestmark = pytest.mark.zoo

# "Name the capital of France." because greedy SmolLM2-135M answers it with every token's top-1 logit at least 0.97
# ahead of the runner-up, with flash attention on (llama.cpp's default) and off alike. "What is the capital of
# France?" starts its answer on a near-tie ("The" 0.04 ahead of "L" without flash attention, behind it with):
# flash attention's F16 accumulation moves logits by ~0.2-0.3, so that answer depended on summation order.
FRANCE = [{"role": "user", "content": "Name the capital of France."}]
ONNX_FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
LONG = [{"role": "user", "content": "Count from 1 to 500, separated by commas."}]


@pytest.fixture(scope="module")
def gguf_path(zoo_gguf_dir: Callable[[str, str], Path]) -> Path:
    return zoo_gguf_dir("smollm2-135m", "q8_0")


@pytest.fixture(scope="module")
def gguf_server(gguf_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(gguf_path, "--ctx", "1024", "--queue", "8", "--threads", "1", "--parallel", "1",
                          cache=tmp_path_factory.mktemp("cache"))
    yield server
    code, _, err = server.stop()
    assert code == 0 and "Traceback" not in err, err


@pytest.fixture(scope="module")
def onnx_server(zoo_onnx_dir: Callable[[str, str], Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(zoo_onnx_dir("smollm2-135m", "int4"), "--ctx", "512", "--threads", "1",
                          cache=tmp_path_factory.mktemp("cache"))
    yield server
    code, _, err = server.stop()
    assert code == 0 and "Traceback" not in err, err


def chat(server: Server, messages: list[dict[str, str]], **kw: Any) -> Any:
    return server.client().chat.completions.create(model=server.model_id, messages=messages, temperature=0,
                                                   **{"max_tokens": 40, **kw})


def chat_stream(server: Server, messages: list[dict[str, str]], **kw: Any) -> tuple[str, str | None, Any]:
    stream = server.client().chat.completions.create(
        model=server.model_id, messages=messages, temperature=0, stream=True,
        stream_options={"include_usage": True}, **{"max_tokens": 40, **kw})
    text, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    return "".join(text), finish, usage


# -------------------------------------------------------------------------------------------------- GGUF
def test_models_lists_the_one_model(gguf_server: Server) -> None:
    models = gguf_server.client().models.list()
    assert [m.id for m in models.data] == [gguf_server.model_id]
    assert gguf_server.client().models.retrieve(gguf_server.model_id).id == gguf_server.model_id


def test_chat_answers_paris_streamed_and_not(gguf_server: Server) -> None:
    res = chat(gguf_server, FRANCE)
    text = res.choices[0].message.content
    assert "Paris" in text, text
    assert res.choices[0].message.role == "assistant"
    assert res.usage.prompt_tokens > 10 and res.usage.completion_tokens >= 1
    assert res.usage.total_tokens == res.usage.prompt_tokens + res.usage.completion_tokens
    streamed, finish, usage = chat_stream(gguf_server, FRANCE)
    assert streamed == text
    assert finish == res.choices[0].finish_reason
    assert usage.completion_tokens == res.usage.completion_tokens and usage.prompt_tokens == res.usage.prompt_tokens


def test_completions_endpoint(gguf_server: Server) -> None:
    client = gguf_server.client()
    res = client.completions.create(model=gguf_server.model_id, prompt="The capital of France is", max_tokens=8,
                                    temperature=0)
    assert "Paris" in res.choices[0].text, res.choices[0].text
    pieces = [c.choices[0].text for c in client.completions.create(
        model=gguf_server.model_id, prompt="The capital of France is", max_tokens=8, temperature=0, stream=True)
        if c.choices]
    assert "".join(pieces) == res.choices[0].text


def test_multi_turn_reuses_the_kv_prefix(gguf_server: Server) -> None:
    first = chat(gguf_server, FRANCE).choices[0].message.content
    follow = [*FRANCE, {"role": "assistant", "content": first},
              {"role": "user", "content": "What is the capital of Germany?"}]
    res = chat(gguf_server, follow)
    assert "Berlin" in res.choices[0].message.content, res.choices[0].message.content
    # the first turn's prompt and answer are still in the KV cache: only the new turn is evaluated
    cached = res.usage.prompt_tokens_details.cached_tokens
    assert cached > res.usage.prompt_tokens // 2, res.usage


def test_stop_sequences(gguf_server: Server) -> None:
    full = chat(gguf_server, LONG, max_tokens=30).choices[0].message.content
    assert len(full) > 12, full
    stop = full[6:9]
    cut = chat(gguf_server, LONG, max_tokens=30, stop=[stop, "never-seen"])
    assert cut.choices[0].message.content == full[:full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed, finish, _ = chat_stream(gguf_server, LONG, max_tokens=30, stop=stop)
    assert streamed == full[:full.index(stop)] and finish == "stop"


def test_eight_concurrent_clients_match_their_solo_runs(gguf_server: Server) -> None:
    countries = ["France", "Germany", "Italy", "Spain", "Japan", "Egypt", "Canada", "Peru"]
    convs = [[{"role": "user", "content": f"What is the capital of {c}?"}] for c in countries]
    alone = [chat(gguf_server, m, max_tokens=16).choices[0].message.content for m in convs]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda m: chat(gguf_server, m, max_tokens=16).choices[0].message.content, convs))
    assert together == alone
    assert gguf_server.health()["queue_depth"] == 0


# ------------------------------------------------------------------------------- queue, disconnect, SIGTERM
@pytest.fixture
def busy_server(gguf_path: Path, tmp_path: Path) -> Iterator[Server]:
    server = start_server(gguf_path, "--ctx", "1024", "--queue", "1", "--threads", "1", "--parallel", "1",
                          cache=tmp_path / "cache")
    yield server
    server.stop(signal.SIGKILL)


def open_stream(server: Server, client: httpx.Client, messages: list[dict[str, str]],
                max_tokens: int = 900) -> httpx.Response:
    body = {"model": server.model_id, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
            "stream": True}
    res = client.send(client.build_request("POST", server.base_url + "/v1/chat/completions", json=body),
                      stream=True)
    assert res.status_code == 200
    return res


def test_queue_full_disconnect_and_sigterm(busy_server: Server) -> None:
    """One stream generates and one waits (--queue 1): a third request gets 503 + Retry-After. Dropping the
    waiting client frees its place at once; dropping the generating one stops generation. A SIGTERM during a
    stream ends that stream cleanly and the server exits 0."""
    s = busy_server
    with httpx.Client(timeout=120) as c1, httpx.Client(timeout=120) as c2:
        first = open_stream(s, c1, LONG)
        lines = first.iter_lines()
        assert next(line for line in lines if '"content"' in line and '"content": ""' not in line)
        second = open_stream(s, c2, FRANCE)
        assert wait_until(lambda: s.health()["queue_depth"] == 1), s.health()
        full = httpx.post(s.base_url + "/v1/chat/completions", json={
            "model": s.model_id, "messages": FRANCE, "max_tokens": 4}, timeout=60)
        assert full.status_code == 503 and full.json()["error"]["code"] == "queue_full"
        assert int(full.headers["Retry-After"]) >= 1
        second.close()  # the waiting client leaves: its place is free again
        assert wait_until(lambda: s.health()["queue_depth"] == 0), s.health()
        assert s.health()["generating"]
        first.close()  # the generating client leaves: generation stops (within one token)
        assert wait_until(lambda: not s.health()["generating"], timeout=10), s.health()
    # a disconnected non-streamed request is cancelled too (LONG answers in ~120 tokens: ~1 s at 115 tok/s, 2 cores)
    t0 = time.monotonic()
    with pytest.raises(httpx.TimeoutException):
        httpx.post(s.base_url + "/v1/chat/completions", timeout=0.5, json={
            "model": s.model_id, "messages": LONG, "max_tokens": 900, "temperature": 0})
    assert wait_until(lambda: not s.health()["generating"], timeout=10), s.health()
    assert time.monotonic() - t0 < 11
    # SIGTERM during a stream: the stream ends with [DONE], the process exits 0 without a traceback
    events: list[str] = []
    with httpx.Client(timeout=120) as c3:
        stream = open_stream(s, c3, LONG)
        lines = stream.iter_lines()
        events.append(next(line for line in lines if '"content"' in line and '"content": ""' not in line))
        killer = threading.Timer(0.2, s.proc.send_signal, args=(signal.SIGTERM,))
        killer.start()
        events.extend(line for line in lines if line)
        killer.join()
    assert events[-1] == "data: [DONE]", events[-3:]
    assert any('"finish_reason": "length"' in e for e in events)
    code, out, err = s.wait(timeout=30)
    assert code == 0, err
    assert "Traceback" not in err and "stopped" in out


# -------------------------------------------------------------------------------------------------- ONNX
def test_onnx_chat_answers_paris(onnx_server: Server) -> None:
    res = chat(onnx_server, ONNX_FRANCE)
    text = res.choices[0].message.content
    assert "Paris" in text, text
    streamed, finish, usage = chat_stream(onnx_server, ONNX_FRANCE)
    assert streamed == text and finish == res.choices[0].finish_reason
    assert usage.completion_tokens == res.usage.completion_tokens
