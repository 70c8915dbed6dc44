"""Continuous batching (serve --parallel N, runtime/backends/batch.py) on the real SmolLM2-135M and Gemma3-270M
(sliding-window attention): each of 8 requests decoded together returns the tokens it returns alone; chunked
prefill; cancellation; a storm of vanishing clients leaves no slot taken; --parallel refusals."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge_run.core.errors import InsufficientMemoryError, UsageError
from edge_run.runtime.artifacts.formats import open_backend
from edge_run.runtime.backends import GenerationParams, LoadOptions
from edge_run.runtime.backends.batch import BatchEngine, SlotRequest
from edge_run.runtime.serve.capacity import MAX_SEQUENCES, choose_parallel

from .serve_util import REPO, Server, start_server, wait_until

COUNTRIES = ["France", "Germany", "Italy", "Spain", "Japan", "Egypt", "Canada", "Peru"]
PROMPTS = [f"The capital of {c} is" for c in COUNTRIES]


class Collect:
    """One request's events: token ids, text, the result."""

    def __init__(self, cancel_after: int | None = None) -> None:
        self.tokens: list[int] = []
        self.text: list[str] = []
        self.result: Any = None
        self.cancel_after = cancel_after

    def emit(self, kind: str, value: Any) -> None:
        if kind == "token":
            self.tokens.append(value)
        elif kind == "text":
            self.text.append(value)
        else:
            self.result = (kind, value)

    def cancelled(self) -> bool:
        return self.cancel_after is not None and len(self.tokens) >= self.cancel_after


def run_engine(engine: BatchEngine, prompts: list[list[int]], params: GenerationParams,
               collectors: list[Collect] | None = None, stagger: int = 0) -> list[Collect]:
    """Admit every prompt (``stagger`` steps apart, the rest joining mid-flight) and step until all end."""
    collectors = collectors or [Collect() for _ in prompts]
    queue = list(zip(prompts, collectors, strict=True))
    steps = 0
    while queue or engine.active:
        if queue and engine.free() and (stagger == 0 or steps % stagger == 0):
            tokens, c = queue.pop(0)
            engine.admit(SlotRequest(tokens, params, c.emit, c.cancelled))
            if stagger == 0:
                continue
        engine.step()
        steps += 1
    return collectors


def solo_tokens(path: Path, prompts: list[list[int]], params: GenerationParams) -> list[list[int]]:
    """Today's one-sequence loop (serve --parallel 1, run): the reference."""
    out = []
    with open_backend(path, LoadOptions(n_ctx=1024, n_threads=2)) as b:
        for prompt in prompts:
            tokens: list[int] = []
            for t in b.token_stream(prompt, params):
                if (b.is_eog(t) and not params.ignore_eos) or len(tokens) >= params.max_tokens:
                    break
                tokens.append(t)
            out.append(tokens)
    return out


def assert_equal_but_near_ties(path: Path, prompts: list[list[int]], got: list[list[int]],
                               reference: list[list[int]], tie: float = 0.25) -> None:
    """Requests that joined a running batch: their prompt rows shared a batch with other slots' tokens, so llama.cpp's
    kernels may sum in another order (blocks of rows vs a single row). Every sequence equals the reference up to
    its first difference, and there the reference's two tokens were within ``tie`` logits of each other."""
    with open_backend(path, LoadOptions(n_ctx=1024, n_threads=2, logits_all=True)) as b:
        for prompt, mine, ref in zip(prompts, got, reference, strict=True):
            if mine == ref:
                continue
            i = next(i for i, (x, y) in enumerate(zip(mine, ref, strict=False)) if x != y)
            row = b.eval_logits(prompt + ref[:i])[-1]
            assert abs(float(row[ref[i]] - row[mine[i]])) < tie, (i, mine, ref)


@pytest.fixture(scope="module", params=["smollm2-135m", "gemma3-270m"])
def zoo_model(request: pytest.FixtureRequest, zoo_gguf_dir: Callable[[str, str], Path]) -> Path:
    return zoo_gguf_dir(request.param, "q8_0")


@pytest.mark.zoo
def test_eight_batched_requests_return_their_solo_tokens(zoo_model: Path) -> None:
    params = GenerationParams(max_tokens=16)
    with open_backend(zoo_model, LoadOptions(n_ctx=512, n_threads=2, n_seq=8)) as b:
        prompts = [b.tokenize(p) for p in PROMPTS]
        engine = BatchEngine(b)
        joined = run_engine(engine, prompts, params, stagger=3)  # each arriving while the others decode
        engine.close()
        engine = BatchEngine(b)
        together = run_engine(engine, prompts, params)
        alone = [run_engine(engine, [p], params)[0] for p in prompts]
        engine.close()
    reference = solo_tokens(zoo_model, prompts, params)
    assert [c.tokens for c in alone] == reference
    assert [c.tokens for c in together] == reference
    assert_equal_but_near_ties(zoo_model, prompts, [c.tokens for c in joined], reference)
    assert all(c.result[0] == "done" for c in together + joined + alone)
    assert ["".join(c.text) for c in together] == ["".join(c.text) for c in alone]
    assert all(c.result[1].cached_tokens == len(p) - 1 for c, p in zip(alone, prompts, strict=True))  # slot kept


@pytest.mark.zoo
def test_long_prompt_is_prefilled_in_chunks_while_others_decode(zoo_gguf_dir: Callable[[str, str], Path]) -> None:
    path = zoo_gguf_dir("smollm2-135m", "q8_0")
    params = GenerationParams(max_tokens=12, ignore_eos=True)
    with open_backend(path, LoadOptions(n_ctx=1024, n_threads=2, n_seq=2, n_batch=64)) as b:
        short = b.tokenize(PROMPTS[0])
        long = b.tokenize(" ".join(f"item {i}," for i in range(150)))
        assert len(long) > 4 * 64
        engine = BatchEngine(b)
        first, second = Collect(), Collect()
        engine.admit(SlotRequest(short, params, first.emit, first.cancelled))
        engine.step()
        engine.admit(SlotRequest(long, params, second.emit, second.cancelled))
        tokens_during_prefill = []
        while engine.slots[1].pending or engine.slots[0].pending:
            before = len(first.tokens)
            engine.step()
            tokens_during_prefill.append(len(first.tokens) - before)
        while engine.active:
            engine.step()
        engine.close()
    assert len(tokens_during_prefill) >= 4 and all(n == 1 for n in tokens_during_prefill[:4]), tokens_during_prefill
    assert_equal_but_near_ties(path, [short, long], [first.tokens, second.tokens],
                               solo_tokens(path, [short, long], params))


@pytest.mark.zoo
def test_cancelled_and_stopped_slots_are_free_again(zoo_gguf_dir: Callable[[str, str], Path]) -> None:
    path = zoo_gguf_dir("smollm2-135m", "q8_0")
    with open_backend(path, LoadOptions(n_ctx=512, n_threads=2, n_seq=3)) as b:
        engine = BatchEngine(b)
        prompts = [b.tokenize(p) for p in PROMPTS[:3]]
        cancelled = Collect(cancel_after=2)
        whole = run_engine(engine, [prompts[0]], GenerationParams(max_tokens=20, ignore_eos=True))[0]
        text = "".join(whole.text)
        stop = text[len(text) // 2:len(text) // 2 + 3]
        got = run_engine(engine, prompts, GenerationParams(max_tokens=20, ignore_eos=True, stop=(stop,)),
                         [Collect(), cancelled, Collect()])
        assert engine.active == 0 and engine.free() == 3
        engine.close()
    assert got[0].result[1].finish_reason == "stop" and "".join(got[0].text) == text[:text.index(stop)]
    assert cancelled.result[1].finish_reason == "cancelled" and len(cancelled.tokens) == 2
    assert got[2].result[1].finish_reason in ("length", "stop")


# ------------------------------------------------------------------------------------------------ server
@pytest.fixture(scope="module")
def parallel_server(zoo_gguf_dir: Callable[[str, str], Path], tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[Server]:
    server = start_server(zoo_gguf_dir("smollm2-135m", "q8_0"), "--ctx", "512", "--parallel", "4", "--queue", "48",
                          "--threads", "2", cache=tmp_path_factory.mktemp("cache"))
    yield server
    code, _, err = server.stop()
    assert code == 0 and "Traceback" not in err, err


def metrics(server: Server) -> dict[str, float]:
    with urllib.request.urlopen(f"{server.base_url}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


@pytest.mark.zoo
def test_server_batches_and_reports_metrics(parallel_server: Server) -> None:
    s = parallel_server

    def ask(prompt: str) -> str:
        res = httpx.post(s.base_url + "/v1/completions", timeout=300, json={
            "model": s.model_id, "prompt": prompt, "max_tokens": 12, "temperature": 0})
        assert res.status_code == 200, res.text
        return str(res.json()["choices"][0]["text"])

    alone = [ask(p) for p in PROMPTS]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(ask, PROMPTS))
    # Requests that join mid-flight change the batch's rows, and llama.cpp sums a multi-row batch in another order
    # than a single row: a near-tie later in an answer can flip (the logit-gap rule is checked in
    # test_eight_batched_requests_return_their_solo_tokens). Over HTTP: every answer's first line is its solo one,
    # and most answers are identical to the end.
    assert [t.split("\n")[0] for t in together] == [a.split("\n")[0] for a in alone]
    assert sum(t == a for t, a in zip(together, alone, strict=True)) >= len(PROMPTS) // 2, (together, alone)
    assert s.health()["slots"] == {"active": 0, "total": 4}
    m = metrics(s)
    assert m['edge_run_requests_total{status="ok"}'] >= 16
    assert m["edge_run_slots_total"] == 4 and m["edge_run_slots_active"] == 0 and m["edge_run_queue_depth"] == 0
    assert m["edge_run_tokens_generated_total"] >= 16
    assert m["edge_run_time_to_first_token_seconds_count"] >= 16
    itl = "edge_run_inter_token_latency_seconds"
    assert m[itl + '_bucket{le="+Inf"}'] == m[itl + "_count"] > 0


@pytest.mark.zoo
def test_cancel_storm_leaves_no_slot_taken(parallel_server: Server) -> None:
    """120 clients open streams and vanish: before a byte, after the first event, or after a few tokens."""
    s = parallel_server
    body = {"model": s.model_id, "prompt": "Once upon a time", "max_tokens": 400, "temperature": 0, "stream": True}

    def vanish(i: int) -> None:
        try:
            with httpx.Client(timeout=60) as c, c.stream("POST", s.base_url + "/v1/completions", json=body) as res:
                for n, _ in enumerate(res.iter_lines()):
                    if n >= i % 3:
                        return
        except httpx.HTTPError:
            pass

    before = metrics(s)
    t0 = time.monotonic()
    threads = [threading.Thread(target=vanish, args=(i,)) for i in range(120)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert wait_until(lambda: metrics(s)["edge_run_slots_active"] == 0, timeout=60), metrics(s)
    assert time.monotonic() - t0 < 180
    m = metrics(s)
    assert m["edge_run_queue_depth"] == 0
    ended = {k: m[k] - before[k] for k in m if k.startswith("edge_run_requests_total")}
    assert ended['edge_run_requests_total{status="cancelled"}'] + ended['edge_run_requests_total{status="rejected"}'] \
        == sum(ended.values()) == 120, ended  # every client's request counted once, none failed
    res = httpx.post(s.base_url + "/v1/completions", timeout=120, json={
        "model": s.model_id, "prompt": PROMPTS[0], "max_tokens": 4, "temperature": 0})
    assert res.status_code == 200 and res.json()["choices"][0]["text"]


# ----------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(("value", "words"), [("0", "is not a slot count"), ("-3", "is not a slot count"),
                                              ("10000", f"more than the {MAX_SEQUENCES} sequences")])
def test_parallel_out_of_range_is_one_line_exit_2(tiny_gguf: Path, tmp_path: Path, value: str, words: str) -> None:
    res = subprocess.run([sys.executable, "-m", "edge_run.cli.main", "serve", str(tiny_gguf), "--port", "0",
                          "--parallel", value], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.returncode == 2, res.stderr
    assert words in res.stderr and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) <= 2


def test_parallel_that_does_not_fit_names_the_largest_that_does(tiny_gguf: Path) -> None:
    from edge_run.runtime.artifacts.formats import estimate_artifact

    three = estimate_artifact(tiny_gguf, 2048 * 3).total_mib
    with pytest.raises(InsufficientMemoryError, match="at most 3 slots fit") as err:
        choose_parallel(tiny_gguf, 2048, 200, available_mib=three + 0.01)
    assert "--parallel 3" in (err.value.hint or "")
    assert choose_parallel(tiny_gguf, 2048, None, available_mib=three + 0.01) == 3
    assert choose_parallel(tiny_gguf, 2048, None, available_mib=1e9) == 4
    assert choose_parallel(tiny_gguf, 2048, 200, force=True, available_mib=1.0) == 200
    with pytest.raises(InsufficientMemoryError, match="not even one slot"):
        choose_parallel(tiny_gguf, 2048, 2, available_mib=1.0)


def test_parallel_on_onnx_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "m-onnx"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"\0")
    (folder / "genai_config.json").write_text(json.dumps({}))
    with pytest.raises(UsageError):
        choose_parallel(folder, 512, 2)
