"""`edge-run eval` on a GGUF reads only the scored positions' logits from llama.cpp
(src/edge_run/runtime/backends/gguf_scorer.py):
the rows equal llama-cpp-python's logits_all output for the same positions, in one batch and split over several,
and evaluate() takes that path without ever asking the backend for every position's logits.

Both sides run the same decodes (same batch size, llama.cpp's default flash attention): flash attention's
result depends on how a chunk is split into batches (its F16 accumulation differs per kernel; on SmolLM2 a
64-token chunk in one batch vs three gives a mean KL of ~0.008 nats, as large as flash attention on vs off),
so the reference is logits_all over the same batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_run.runtime.artifacts.formats import open_backend
from edge_run.runtime.backends import LoadOptions
from edge_run.runtime.backends.gguf_scorer import LlamaChunkLogits
from edge_run.runtime.eval.perplexity import evaluate, load_corpus
from edge_run.runtime.eval.scoring import log_softmax, rows_nll, token_nll

CTX = 64


def _chunk(path: Path) -> list[int]:
    text = load_corpus("tinyshakespeare").text[:4000]
    with open_backend(path, LoadOptions(n_ctx=CTX)) as b:
        tokens = b.tokenize(text)
    assert len(tokens) > CTX
    return tokens[:CTX]


def _all_positions(path: Path, chunk: list[int], n_batch: int) -> np.ndarray:
    with open_backend(path, LoadOptions(n_ctx=CTX, n_batch=n_batch, logits_all=True, n_threads=1)) as b:
        return b.eval_logits(chunk)


@pytest.mark.parametrize("n_batch", [CTX, 24])  # one decode; three decodes with the scored rows split over two
def test_scored_rows_equal_logits_all(tiny_gguf: Path, n_batch: int) -> None:
    chunk = _chunk(tiny_gguf)
    full = _all_positions(tiny_gguf, chunk, n_batch)
    first, last = CTX // 2, CTX - 1
    with open_backend(tiny_gguf, LoadOptions(n_ctx=CTX, n_batch=n_batch, n_threads=1)) as b:
        scorer = LlamaChunkLogits.for_backend(b)
        assert scorer is not None
        try:
            for _ in range(2):  # the cache is cleared between chunks: a second run gives the same rows
                rows = np.array(scorer.rows(chunk, first, last))
                assert rows.shape == (last - first, b.n_vocab)
                np.testing.assert_allclose(rows, full[first:last], rtol=0, atol=1e-4)
        finally:
            scorer.close()


def test_rows_nll_equals_whole_array_nll() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (77, 1000)).astype(np.float32)
    targets = rng.integers(0, 1000, 77)
    whole = token_nll(log_softmax(logits), targets)
    assert np.array_equal(rows_nll(logits, targets, block=32), whole)
    assert np.array_equal(rows_nll(log_softmax(logits), targets, normalized=True), whole)


def test_evaluate_never_asks_for_every_positions_logits(tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    from edge_run.runtime.backends.gguf import GGUFBackend

    corpus = tmp_path / "c.txt"
    corpus.write_text(load_corpus("tinyshakespeare").text[:6000], encoding="utf-8")
    with monkeypatch.context() as m:  # the generic path: every position's logits through Backend.eval_logits
        m.setattr(LlamaChunkLogits, "for_backend", classmethod(lambda cls, backend: None))
        reference = evaluate(tiny_gguf, load_corpus(corpus), ctx=CTX, chunks=3, threads=1)

    def refuse(*_a: object, **_k: object) -> np.ndarray:
        raise AssertionError("eval asked for every position's logits")

    monkeypatch.setattr(GGUFBackend, "eval_logits", refuse)
    fast = evaluate(tiny_gguf, load_corpus(corpus), ctx=CTX, chunks=3, threads=1)
    assert fast.acc.count == reference.acc.count == 3 * (CTX - CTX // 2 - 1)
    assert fast.acc.nll == pytest.approx(reference.acc.nll, rel=1e-6) and fast.acc.bytes == reference.acc.bytes
