"""Continuous batching on one GGUF context: N slots, one llama.cpp sequence id each, one llama_decode per step.

    step:  for each generating slot    its last sampled token (+ its draft, --draft ngram), logits on every row
           then prefilling slots       the next chunk of their prompt, up to n_batch tokens in the whole batch,
                                       logits only on a prompt's last token
           llama_decode(ctx, batch)    one call; with a unified KV cache, one micro-batch
           per slot                    sample its rows (its own sampler chain, or the greedy fast path), verify the
                                       draft, then EOG / stop strings / max tokens / cancel, as Backend.stream does

Greedy tokens equal a request's tokens decoded alone (rows of a batch are computed independently); where
a reused prefix's KV cells lie after cells written later (the unified cache fills freed cells first), attention
sums them in another order, and a near-tie may then tip the other way, as in llama-server.

A request admitted between two steps joins at the next one; a long prompt is evaluated a chunk a step, so the
other slots keep producing a token every step meanwhile. A slot keeps its sequence's KV cache after its request
ends: the next request goes to the free slot whose cached tokens share the longest prefix with its prompt (the
least recently used one on a tie) and evaluates only the rest. The engine is driven by one thread
(serve/slots.py); ``admit`` and ``step`` must not run concurrently.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from edge_run.core.errors import EdgeRunError, UsageError
from edge_run.runtime.backends.base import GenerationParams, GenerationResult, StopMatcher
from edge_run.runtime.backends.llama_loop import Sampler, TokenBatch, make_sampler
from edge_run.runtime.backends.speculative import DraftControl, NgramIndex, verify

if TYPE_CHECKING:
    from edge_run.runtime.backends.gguf import GGUFBackend

Emit = Callable[[str, Any], None]  # ("text", str) | ("token", int) | ("done", GenerationResult) | ("error", exc)


@dataclass
class SlotRequest:
    tokens: list[int]
    params: GenerationParams
    emit: Emit
    cancelled: Callable[[], bool]


@dataclass
class Slot:
    seq: int
    cached: list[int] = field(default_factory=list)  # the tokens whose KV entries sequence ``seq`` holds
    last_used: float = 0.0
    request: SlotRequest | None = None
    pending: list[int] = field(default_factory=list)  # prompt tokens still to evaluate
    token: int | None = None  # sampled, not yet evaluated
    sampler: Sampler | None = None
    index: NgramIndex | None = None
    control: DraftControl | None = None
    decoder: Any = None
    stops: StopMatcher | None = None
    n_out: int = 0
    max_tokens: int = 0
    reused: int = 0
    t_start: float = 0.0
    t_first: float = 0.0


class BatchEngine:
    def __init__(self, backend: GGUFBackend) -> None:
        self.backend = backend
        self._lc = backend._llama_cpp
        self._ctx = backend.llm.ctx
        self._memory = self._lc.llama_get_memory(self._ctx)
        self._lc.llama_memory_clear(self._memory, True)  # the slots start empty
        self.n_batch = backend.llm.n_batch
        self.draft = backend.options.draft
        self.slots = [Slot(seq) for seq in range(backend.n_seq)]
        self._batch = TokenBatch(self._lc, self.n_batch)
        self.drafted = self.accepted = 0  # draft tokens evaluated / kept
        self.tokens = 0  # tokens generated

    # -- slots ----------------------------------------------------------------------------------------
    @property
    def active(self) -> int:
        return sum(s.request is not None for s in self.slots)

    def free(self) -> int:
        return len(self.slots) - self.active

    def _choose(self, tokens: list[int]) -> Slot:
        def shared(slot: Slot) -> int:
            n = 0
            for a, b in zip(slot.cached, tokens, strict=False):
                if a != b:
                    break
                n += 1
            return n

        free = [s for s in self.slots if s.request is None]
        if not self.backend.options.reuse_prefix:
            return min(free, key=lambda s: s.last_used)
        return max(free, key=lambda s: (shared(s), -s.last_used))

    def admit(self, request: SlotRequest) -> None:
        """Put ``request`` in a free slot (the caller checks ``free()``); a request that cannot run gets its error."""
        prompt, params = request.tokens, request.params
        n_ctx = self.backend.n_ctx
        if not prompt:
            request.emit("error", UsageError("the prompt is empty", "pass a non-empty prompt"))
            return
        if len(prompt) >= n_ctx:
            request.emit("error", UsageError(f"the prompt has {len(prompt)} tokens but the context holds {n_ctx}",
                                             "shorten the prompt or raise --ctx"))
            return
        slot = self._choose(prompt)
        keep = 0
        if self.backend.options.reuse_prefix:
            for a, b in zip(slot.cached, prompt, strict=False):
                if a != b:
                    break
                keep += 1
            keep = min(keep, len(prompt) - 1)  # the last prompt token is always evaluated (fresh logits)
        self._lc.llama_memory_seq_rm(self._memory, slot.seq, keep, -1)
        del slot.cached[keep:]
        slot.request, slot.pending, slot.token, slot.reused = request, prompt[keep:], None, keep
        slot.sampler = make_sampler(self._lc, self.backend.n_vocab, params)
        slot.index = NgramIndex(prompt) if self.draft else None
        slot.control = DraftControl() if self.draft else None
        slot.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        slot.stops = StopMatcher(params.stop)
        slot.n_out, slot.max_tokens = 0, min(params.max_tokens, n_ctx - len(prompt))
        slot.t_start = slot.t_first = time.perf_counter()

    # -- one step -------------------------------------------------------------------------------------
    def step(self) -> None:
        """Cancelled slots end; then one batch: every generating slot's token (and draft), prompt chunks."""
        for slot in self.slots:
            if slot.request is not None and slot.request.cancelled():
                self._finish(slot, "cancelled")
        batch, budget = self._batch, self.n_batch
        decoding: list[tuple[Slot, list[int], list[int]]] = []  # slot, its rows, its draft
        generating = [s for s in self.slots if s.request is not None and s.token is not None]
        for n, slot in enumerate(generating):
            assert slot.token is not None
            share = budget - (len(generating) - n - 1)  # every later slot keeps a row
            drafts = self._draft(slot, share - 1)
            pos = len(slot.cached)
            rows = [batch.add(t, pos + i, slot.seq, True) for i, t in enumerate([slot.token, *drafts])]
            budget -= len(rows)
            decoding.append((slot, rows, drafts))
        prefilling: list[tuple[Slot, list[int], int | None]] = []  # slot, its chunk, the last row's index
        for slot in sorted((s for s in self.slots if s.request is not None and s.pending), key=lambda s: s.t_start):
            if budget <= 0:
                break
            chunk = slot.pending[:budget]
            last = len(chunk) == len(slot.pending)
            pos = len(slot.cached)
            rows = [batch.add(t, pos + i, slot.seq, last and i == len(chunk) - 1) for i, t in enumerate(chunk)]
            budget -= len(chunk)
            prefilling.append((slot, chunk, rows[-1] if last else None))
        if not decoding and not prefilling:
            return
        try:
            batch.decode(self._ctx, f"a batch of {self.n_batch - budget} tokens")
        except EdgeRunError as e:
            for slot in [d[0] for d in decoding] + [p[0] for p in prefilling]:
                self._fail(slot, e)
            return
        for slot, chunk, row in prefilling:
            slot.cached += chunk
            del slot.pending[:len(chunk)]
            if row is not None:
                self._take(slot, [self._sample(slot, row)])
        for slot, rows, drafts in decoding:
            out = verify(partial(self._sample, slot), rows, drafts)
            kept = len(out) - 1
            assert slot.token is not None
            slot.cached.append(slot.token)
            slot.cached += drafts[:kept]
            if kept < len(drafts):
                self._lc.llama_memory_seq_rm(self._memory, slot.seq, len(slot.cached), -1)
            if slot.control is not None:
                slot.control.update(len(drafts), kept)
            self.drafted, self.accepted = self.drafted + len(drafts), self.accepted + kept
            self._take(slot, out)

    def _sample(self, slot: Slot, row: int) -> int:
        assert slot.sampler is not None
        return slot.sampler.sample(self._ctx, row)

    def _draft(self, slot: Slot, room: int) -> list[int]:
        if slot.index is None or slot.control is None:
            return []
        left = min(room, slot.max_tokens - slot.n_out - 1, self.backend.n_ctx - len(slot.cached) - 2)
        return slot.index.draft(min(slot.control.length(), left))

    def _take(self, slot: Slot, tokens: list[int]) -> None:
        """The slot's new tokens, in order, through Backend.stream's rules; the last one is evaluated next step."""
        request = slot.request
        assert request is not None and slot.decoder is not None and slot.stops is not None
        for token in tokens:
            if slot.n_out == 0:
                slot.t_first = time.perf_counter()
            if self.backend.is_eog(token) and not request.params.ignore_eos:
                self._finish(slot, "stop")
                return
            slot.n_out += 1
            self.tokens += 1
            request.emit("token", token)
            text, stopped = slot.stops.feed(slot.decoder.decode(self.backend.token_piece(token)))
            if text:
                request.emit("text", text)
            if stopped:
                self._finish(slot, "stop", stopped=True)
                return
            if slot.n_out >= slot.max_tokens:
                self._finish(slot, "length")
                return
            if slot.index is not None:
                slot.index.append(token)
        slot.token = tokens[-1]

    def _release(self, slot: Slot) -> SlotRequest:
        request = slot.request
        assert request is not None
        if slot.sampler is not None:
            slot.sampler.close()
        slot.request, slot.sampler, slot.index, slot.control, slot.token = None, None, None, None, None
        slot.pending = []
        slot.last_used = time.perf_counter()
        return request

    def _finish(self, slot: Slot, reason: str, stopped: bool = False) -> None:
        assert slot.decoder is not None and slot.stops is not None and slot.request is not None
        if not stopped:
            text, stopped = slot.stops.feed(slot.decoder.decode(b"", final=True))
            text += "" if stopped else slot.stops.flush()
            if text:
                slot.request.emit("text", text)
        t_end = time.perf_counter()
        t_first = slot.t_first if slot.n_out else t_end
        prompt = slot.request.tokens
        result = GenerationResult(text="", prompt_tokens=len(prompt), completion_tokens=slot.n_out,
                                  prefill_seconds=t_first - slot.t_start, decode_seconds=t_end - t_first,
                                  finish_reason=reason, cached_tokens=slot.reused)
        self._release(slot).emit("done", result)

    def fail_all(self, error: Exception) -> None:
        """Every running request gets ``error`` (a bug in a step must not leave slots taken)."""
        for slot in self.slots:
            if slot.request is not None:
                self._fail(slot, error)

    def _fail(self, slot: Slot, error: Exception) -> None:
        """A failed decode: the slot's request gets the error and its sequence is emptied."""
        self._lc.llama_memory_seq_rm(self._memory, slot.seq, 0, -1)
        slot.cached = []
        self._release(slot).emit("error", error)

    def close(self) -> None:
        """End every request (cancelled) and free the batch."""
        for slot in self.slots:
            if slot.request is not None:
                self._finish(slot, "cancelled")
        self._batch.close()
