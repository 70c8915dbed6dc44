"""The GGUF backend's own generation loop (src/edge_run/runtime/backends/llama_loop.py) against llama-cpp-python's
high-level
``Llama.generate``, which builds the same llama.cpp sampler chain: the same tokens, greedy and seeded, for a prompt
longer than one batch, and with the KV cache of a shared prefix reused; plain greedy's in-place argmax against the
chain's greedy link."""

from __future__ import annotations

import ctypes
import itertools
from collections.abc import Generator
from pathlib import Path

import numpy as np
import pytest

from edge_run.core.errors import ArtifactError
from edge_run.runtime.artifacts.formats import open_backend
from edge_run.runtime.backends import GenerationParams, LoadOptions
from edge_run.runtime.backends.gguf import GGUFBackend
from edge_run.runtime.backends.llama_loop import GreedyPick, SamplerChain, make_sampler

CTX, BATCH = 256, 32
TEXT = "The quick brown fox jumps over the lazy dog, and then it runs back home again. " * 6

PARAMS = [
    GenerationParams(max_tokens=24, temperature=0.0),
    GenerationParams(max_tokens=24, temperature=0.0, repeat_penalty=1.3),
    GenerationParams(max_tokens=24, temperature=0.9, top_k=20, top_p=0.9, min_p=0.02, seed=7),
    GenerationParams(max_tokens=24, temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.1, seed=123),
]


def _reference(path: Path, prompt: list[int], params: GenerationParams) -> list[int]:
    import llama_cpp

    from edge_run.runtime.backends.gguf import _quiet_stderr

    with _quiet_stderr():
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=CTX, n_batch=BATCH, n_ubatch=BATCH, n_threads=2,
                              n_threads_batch=2, flash_attn=True, seed=params.seed, verbose=False)
    try:
        llm.set_seed(params.seed)
        stream = llm.generate(prompt, temp=params.temperature, top_k=params.top_k, top_p=params.top_p,
                              min_p=params.min_p, repeat_penalty=params.repeat_penalty, reset=True)
        return list(itertools.islice(stream, params.max_tokens))
    finally:
        llm.close()


def _ours(backend: GGUFBackend, prompt: list[int], params: GenerationParams) -> list[int]:
    return list(itertools.islice(backend.token_stream(prompt, params), params.max_tokens))


@pytest.fixture(scope="module")
def backend(tiny_gguf: Path) -> GGUFBackend:
    b = open_backend(tiny_gguf, LoadOptions(n_ctx=CTX, n_batch=BATCH, n_threads=2))
    assert isinstance(b, GGUFBackend)
    yield b  # type: ignore[misc]
    b.close()


@pytest.mark.parametrize("params", PARAMS, ids=["greedy", "greedy-penalty", "seeded", "seeded-hot"])
def test_same_tokens_as_llama_generate(backend: GGUFBackend, tiny_gguf: Path, params: GenerationParams) -> None:
    prompt = backend.tokenize(TEXT)[:100]  # four batches of 32 and a partial one
    assert len(prompt) == 100
    ours = _ours(backend, prompt, params)
    assert backend.cached_tokens == 0 or backend.options.reuse_prefix
    assert len(ours) == params.max_tokens
    assert ours == _reference(tiny_gguf, prompt, params)


def test_prefix_reuse_gives_what_a_fresh_context_gives(tiny_gguf: Path) -> None:
    params = GenerationParams(max_tokens=12, temperature=0.0)
    with open_backend(tiny_gguf, LoadOptions(n_ctx=CTX, n_batch=BATCH, n_threads=2, reuse_prefix=True)) as b:
        tokens = b.tokenize(TEXT)
        first = _ours(b, tokens[:60], params)  # type: ignore[arg-type]
        assert b.cached_tokens == 0
        second = _ours(b, tokens[:60] + first[:5] + tokens[70:80], params)  # type: ignore[arg-type]
        assert b.cached_tokens == 65  # the first prompt and the five generated tokens that were evaluated
        again = _ours(b, tokens[:60] + first[:5] + tokens[70:80], params)  # type: ignore[arg-type]
        assert b.cached_tokens == 74  # all but the last prompt token, which is evaluated for fresh logits
        assert again == second
    with open_backend(tiny_gguf, LoadOptions(n_ctx=CTX, n_batch=BATCH, n_threads=2)) as fresh:
        assert _ours(fresh, tokens[:60] + first[:5] + tokens[70:80], params) == second  # type: ignore[arg-type]


def test_a_cache_cleared_by_the_eval_scorer_is_not_trusted(tiny_gguf: Path) -> None:
    """eval's scorer clears the context's KV cache directly; the loop must notice and evaluate the whole prompt."""
    from edge_run.runtime.backends.gguf_scorer import LlamaChunkLogits

    params = GenerationParams(max_tokens=8, temperature=0.0)
    with open_backend(tiny_gguf, LoadOptions(n_ctx=CTX, n_batch=BATCH, n_threads=2, reuse_prefix=True)) as b:
        tokens = b.tokenize(TEXT)[:40]
        before = _ours(b, tokens, params)  # type: ignore[arg-type]
        scorer = LlamaChunkLogits.for_backend(b)
        assert scorer is not None
        scorer.rows(tokens[:20][::-1], 0, 20)  # other tokens in the cache now, then cleared by llm.reset()
        scorer.close()
        assert _ours(b, tokens, params) == before  # type: ignore[arg-type]
        assert b.cached_tokens == 0  # the scorer's tokens are not mistaken for the prompt's prefix


def test_stream_text_is_the_detokenized_tokens(backend: GGUFBackend) -> None:
    prompt = backend.tokenize(TEXT)[:30]
    params = GenerationParams(max_tokens=16, temperature=0.0)
    tokens = _ours(backend, prompt, params)
    text = "".join(backend.stream(prompt, params))
    r = backend.last_result
    assert r is not None and r.completion_tokens + (r.finish_reason == "stop") >= 1
    eog = next((i for i, t in enumerate(tokens) if backend.is_eog(t)), len(tokens))
    assert text == backend.detokenize(tokens[:eog])


class _FakeLogits:
    """llama_get_logits_ith over numpy rows: the row handed out can be swapped, as llama.cpp's buffer moves when a
    batch needs more output rows."""

    def __init__(self, row: np.ndarray) -> None:
        self.row = row

    def llama_get_logits_ith(self, ctx: object, i: int) -> object:
        assert i == -1
        if self.row.size == 0:
            return ctypes.POINTER(ctypes.c_float)()  # NULL
        return self.row.ctypes.data_as(ctypes.POINTER(ctypes.c_float))


def test_greedy_pick_takes_the_first_maximum_and_follows_a_moved_buffer() -> None:
    row = np.zeros(50_000, np.float32)
    row[[7, 123, 49_999]] = 3.5  # a three-way tie: llama.cpp's greedy link keeps the lowest id
    fake = _FakeLogits(row)
    pick = GreedyPick(fake, row.size)
    assert pick.sample(None) == 7
    row[7] = -1.0  # written in place: the next token's logits land in the same buffer
    assert pick.sample(None) == 123
    moved = np.full(row.size, -2.0, np.float32)
    moved[40_000] = np.float32(np.finfo(np.float32).max)
    fake.row = moved  # a new buffer at another address
    assert pick.sample(None) == 40_000
    fake.row = np.empty(0, np.float32)
    with pytest.raises(ArtifactError, match="no logits"):
        pick.sample(None)
    pick.close()


@pytest.mark.parametrize(("params", "kind"), [
    (GenerationParams(temperature=0.0), GreedyPick),
    (GenerationParams(temperature=0.0, repeat_penalty=1.1), SamplerChain),
    (GenerationParams(temperature=0.7), SamplerChain),
])
def test_only_plain_greedy_skips_the_chain(backend: GGUFBackend, params: GenerationParams, kind: type) -> None:
    import llama_cpp

    sampler = make_sampler(llama_cpp, backend.n_vocab, params)
    try:
        assert isinstance(sampler, kind)
    finally:
        sampler.close()


def test_greedy_pick_agrees_with_the_chain_token_by_token(backend: GGUFBackend) -> None:
    """Both samplers on the same logits rows of a 64-token greedy run: the same token at every step."""
    import llama_cpp

    chain = SamplerChain(llama_cpp, backend.n_vocab, GenerationParams(temperature=0.0))
    pick = GreedyPick(llama_cpp, backend.n_vocab)
    ctx = backend.llm.ctx
    try:
        stream = backend.token_stream(backend.tokenize(TEXT)[:20], GenerationParams(max_tokens=64, temperature=0.0))
        assert isinstance(stream, Generator)
        for token in itertools.islice(stream, 64):  # each token was picked from the row both samplers read now
            assert chain.sample(ctx) == pick.sample(ctx) == token
        stream.close()
    finally:
        chain.close()
        pick.close()
