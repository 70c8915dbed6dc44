"""The GGUF generation loop on llama.cpp's C API (llama-cpp-python's low-level bindings), as llama-cli runs it.

    prompt ──llama_batch_get_one(chunk of n_batch)──> llama_decode ... (output for the last position only)
    loop:  token = llama_sampler_sample(chain, ctx, -1)      # the chain reads the logits in C; it accepts the token
             (plain greedy: the first maximum of the logits row, read in place; see GreedyPick)
           yield token
           one[0] = token; llama_decode(ctx, one_batch)       # one preallocated 1-token batch, reused

Per token that is three foreign calls and no Python-side copy of the logits, batch or token history.
``llama_batch_get_one`` leaves positions to llama.cpp (the next position of sequence 0 in the KV cache), so
dropping the cache's tail with ``llama_memory_seq_rm`` is all a prefix reuse needs.

The sampler chain is the one llama-cpp-python's ``Llama.generate`` builds, link for link (same tokens for the
same seed): penalties over the last 64 tokens -> greedy when the temperature is 0, else top-k -> typical (1.0:
off) -> top-p -> min-p -> temperature -> a seeded draw. Plain greedy (temperature 0, no repeat penalty) skips the
chain: llama_sampler_sample first fills an n_vocab-entry candidate array (id, logit, p: 12 bytes a token id, 590 KB
at a 49k vocabulary: 40-85 us, 0.5-1.5% of a 135M model's decode step), then the greedy link keeps the first
maximum. GreedyPick takes that same first maximum with numpy's vectorised argmax on a view of llama.cpp's logits row.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from typing import Any, NoReturn, Protocol

import numpy as np

from edge_run.core.errors import ArtifactError
from edge_run.runtime.backends.base import GenerationParams
from edge_run.runtime.backends.speculative import MAX_DRAFT, DraftControl, NgramIndex, verify

PENALTY_LAST_N = 64  # llama-cpp-python's last_n_tokens_size
TYPICAL_P = 1.0


class Sampler(Protocol):
    def sample(self, ctx: Any, row: int = -1) -> int: ...
    def close(self) -> None: ...


def make_sampler(lc: Any, n_vocab: int, params: GenerationParams) -> Sampler:
    """GreedyPick where the chain would be greedy alone (its penalties link is off at 1.0), else the chain."""
    if params.temperature == 0.0 and params.repeat_penalty == 1.0:
        return GreedyPick(lc, n_vocab)
    return SamplerChain(lc, n_vocab, params)


class GreedyPick:
    """The token llama.cpp's greedy sampler picks (the first maximum: ties go to the lowest id), read from the
    context's last logits row in place. The row is a numpy view of llama.cpp's own buffer, made again whenever the
    buffer's address changes (llama.cpp reallocates it when a batch needs more output rows)."""

    def __init__(self, lc: Any, n_vocab: int) -> None:
        self._logits_ith = lc.llama_get_logits_ith
        self._row_type = ctypes.c_float * n_vocab
        self._address: int | None = None
        self._row: np.ndarray = np.empty(0, np.float32)

    def sample(self, ctx: Any, row: int = -1) -> int:
        """The first maximum of the logits of batch row ``row`` (-1: the last one with logits)."""
        address = ctypes.cast(self._logits_ith(ctx, row), ctypes.c_void_p).value
        if address != self._address:
            if not address:
                raise ArtifactError("llama.cpp returned no logits for the last token",
                                    "report this with EDGE_RUN_DEBUG=1's llama.cpp log")
            self._row = np.ctypeslib.as_array(self._row_type.from_address(address))
            self._address = address
        return int(self._row.argmax())

    def close(self) -> None:
        self._row, self._address = np.empty(0, np.float32), None


class SamplerChain:
    """A llama.cpp sampler chain for one generation; ``close`` frees it (and every sampler it owns)."""

    def __init__(self, lc: Any, n_vocab: int, params: GenerationParams) -> None:
        self._lc = lc
        self.chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        links = [lc.llama_sampler_init_penalties(n_vocab, PENALTY_LAST_N, params.repeat_penalty, 0.0, 0.0)]
        if params.temperature == 0.0:
            links.append(lc.llama_sampler_init_greedy())
        else:
            links += [lc.llama_sampler_init_top_k(params.top_k), lc.llama_sampler_init_typical(TYPICAL_P, 1),
                      lc.llama_sampler_init_top_p(params.top_p, 1), lc.llama_sampler_init_min_p(params.min_p, 1),
                      lc.llama_sampler_init_temp(params.temperature),
                      lc.llama_sampler_init_dist(params.seed & 0xFFFFFFFF)]
        for link in links:
            lc.llama_sampler_chain_add(self.chain, link)  # the chain owns it from here

    def sample(self, ctx: Any, row: int = -1) -> int:
        return int(self._lc.llama_sampler_sample(self.chain, ctx, row))

    def close(self) -> None:
        if self.chain is not None:
            self._lc.llama_sampler_free(self.chain)
            self.chain = None


class TokenBatch:
    """A llama_batch (llama_batch_init) of up to ``size`` tokens, each in one sequence, logits where asked."""

    def __init__(self, lc: Any, size: int) -> None:
        self._lc, self.size, self.n = lc, size, 0
        self.batch = lc.llama_batch_init(size, 0, 1)

    def add(self, token: int, pos: int, seq: int, logits: bool) -> int:
        """Append one token; its row in the batch."""
        b, i = self.batch, self.n
        b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, logits
        b.seq_id[i][0] = seq
        self.n = i + 1
        return i

    def decode(self, ctx: Any, what: str) -> None:
        self.batch.n_tokens = self.n
        rc = self._lc.llama_decode(ctx, self.batch)
        self.n = 0
        if rc != 0:
            _failed(rc, what)

    def close(self) -> None:
        if self.batch is not None:
            self._lc.llama_batch_free(self.batch)
            self.batch = None


class DecodeLoop:
    """Prefill and token-by-token decode on one llama.cpp context; remembers which tokens its KV cache holds.
    With ``draft`` ("ngram", backends/speculative.py) each step evaluates the sampled token and a draft of the
    tokens that may follow in one batch (``generate_drafted``)."""

    def __init__(self, lc: Any, ctx: Any, n_batch: int, n_vocab: int, n_ctx: int = 0, draft: str = "") -> None:
        self._lc, self._ctx, self._n_batch, self._n_vocab = lc, ctx, n_batch, n_vocab
        self._n_ctx, self.draft = n_ctx, draft
        self.drafted = self.accepted = 0  # draft tokens evaluated / kept, over the loop's life
        self._memory = lc.llama_get_memory(ctx)
        self._one = (lc.llama_token * 1)()
        self._one_batch = lc.llama_batch_get_one(self._one, 1)
        self.cached: list[int] = []  # the tokens whose keys and values are in the cache, in position order

    def held(self) -> list[int]:
        """The cached tokens, checked against the cache itself: a cache someone else cleared or refilled (an eval
        scorer on the same context) counts as empty."""
        if self._lc.llama_memory_seq_pos_max(self._memory, 0) + 1 != len(self.cached):
            self.forget(0)
        return self.cached

    def forget(self, keep: int = 0) -> None:
        """Drop every cached position from ``keep`` on."""
        self._lc.llama_memory_seq_rm(self._memory, 0, keep, -1)
        del self.cached[keep:]

    def _decode(self, batch: Any, what: str) -> None:
        rc = self._lc.llama_decode(self._ctx, batch)
        if rc != 0:
            _failed(rc, what)

    def prefill(self, tokens: list[int]) -> None:
        """Evaluate ``tokens`` after the cached ones, ``n_batch`` at a time; logits of the last one stay."""
        lc = self._lc
        array = (lc.llama_token * len(tokens))(*tokens)
        size = ctypes.sizeof(lc.llama_token)
        for i in range(0, len(tokens), self._n_batch):
            n = min(self._n_batch, len(tokens) - i)
            chunk = ctypes.cast(ctypes.byref(array, i * size), ctypes.POINTER(lc.llama_token))
            self._decode(lc.llama_batch_get_one(chunk, n), f"the prompt at token {len(self.cached) + i}")
        self.cached += tokens

    def generate(self, prompt: list[int], keep: int, params: GenerationParams) -> Iterator[int]:
        """Keep the first ``keep`` cached positions, evaluate the rest of ``prompt``, then yield sampled tokens;
        a token is evaluated only when the next one is asked for."""
        self.forget(keep)
        self.prefill(prompt[keep:])
        if self.draft:
            yield from self.generate_drafted(prompt, params)
            return
        sampler = make_sampler(self._lc, self._n_vocab, params)
        decode, one, batch, ctx, cached = self._lc.llama_decode, self._one, self._one_batch, self._ctx, self.cached
        try:
            while True:
                token = sampler.sample(ctx)
                yield token
                one[0] = token
                rc = decode(ctx, batch)
                if rc != 0:
                    _failed(rc, f"token {len(cached)}")
                cached.append(token)
        finally:
            sampler.close()


    def generate_drafted(self, prompt: list[int], params: GenerationParams) -> Iterator[int]:
        """Speculative decoding by prompt lookup after the prompt is evaluated: each step evaluates the last
        token and its draft in one batch; the rows are sampled in order and the drafts' KV entries past the
        first rejection are dropped. Yields exactly the tokens ``generate`` would (greedy)."""
        lc, ctx, seq_rm, memory, cached = self._lc, self._ctx, self._lc.llama_memory_seq_rm, self._memory, self.cached
        sampler = make_sampler(lc, self._n_vocab, params)
        index, control = NgramIndex(prompt), DraftControl()
        batch = TokenBatch(lc, min(self._n_batch, 1 + MAX_DRAFT))
        n_out = 0
        try:
            token = sampler.sample(ctx)
            while True:
                yield token
                n_out += 1
                index.append(token)
                room = min(batch.size - 1, params.max_tokens - n_out, (self._n_ctx or 1 << 30) - len(cached) - 2)
                drafts = index.draft(min(control.length(), room))
                pos = len(cached)
                rows = [batch.add(t, pos + i, 0, True) for i, t in enumerate([token, *drafts])]
                batch.decode(ctx, f"token {pos}")
                out = verify(lambda row: sampler.sample(ctx, row), rows, drafts)
                kept = len(out) - 1
                cached.append(token)
                cached += drafts[:kept]
                if kept < len(drafts):
                    seq_rm(memory, 0, len(cached), -1)
                control.update(len(drafts), kept)
                self.drafted, self.accepted = self.drafted + len(drafts), self.accepted + kept
                for t in out[:-1]:
                    yield t
                    n_out += 1
                    index.append(t)
                token = out[-1]
        finally:
            sampler.close()
            batch.close()


def _failed(rc: int, what: str) -> NoReturn:
    """llama_decode's non-zero result as an error: 1 = no room in the KV cache for the batch, < 0 = failure."""
    raise ArtifactError(f"llama.cpp failed to evaluate {what} (llama_decode returned {rc})",
                        "shorten the prompt or raise --ctx (1: the context is full); EDGE_RUN_DEBUG=1 shows "
                        "llama.cpp's log")
