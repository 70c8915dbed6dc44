"""The GGUF backend's own generation loop (runtime/backends/llama_loop.py) against llama-cpp-python's high-level
``Llama.generate``, which builds the same llama.cpp sampler chain: the same tokens, greedy and seeded, for a prompt
longer than one batch, and with the KV cache of a shared prefix reused."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from edge_run.runtime.backends import GenerationParams, LoadOptions, open_backend
from edge_run.runtime.backends.gguf import GGUFBackend

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
    from edge_run.runtime.eval_llama import LlamaChunkLogits

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
