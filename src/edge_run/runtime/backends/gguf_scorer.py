"""Scored-position logits straight from llama.cpp, for `edge-run eval` on a GGUF artifact.

Perplexity scores only the second half of each chunk, so only those positions need logits. llama.cpp
computes the output projection (n_embd x n_vocab, the largest matrix of a small model) only for the
batch positions whose ``logits`` flag is set, and keeps their rows in one buffer::

    chunk:        pos 0 ........ first-1 | first ............ ctx-2 | ctx-1
    batch.logits:   0 ..........   0     |   1   ............   1   |   0
    llama_get_logits(ctx) -> float32 [ctx - 1 - first, n_vocab]  (row i = position first + i)

The rows are read in place through a numpy view (no copy of the [ctx, n_vocab] array that
llama-cpp-python's ``logits_all`` keeps, a second one for numpy, and the log-softmax temporaries): with a
150k vocabulary that is ~300 MiB per copy at ctx 512. When the chunk is longer than the context's batch,
each batch's scored rows are copied into one [scored, n_vocab] array.

It drives the context of the backend's own llama-cpp-python ``Llama`` (one model, one KV cache).
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from edge_run.core.errors import ArtifactError, ResourceError


class LlamaChunkLogits:
    """``rows(tokens, first, last)``: logits of positions first..last-1 of ``tokens`` run from an empty cache."""

    def __init__(self, llm: Any) -> None:
        import llama_cpp

        self._lc = llama_cpp
        self.llm = llm
        self.ctx = llm.ctx
        self.n_vocab = int(llm.n_vocab())
        self.n_batch = int(llama_cpp.llama_n_batch(self.ctx))
        self.n_ctx = int(llama_cpp.llama_n_ctx(self.ctx))
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._out: np.ndarray | None = None

    @classmethod
    def for_backend(cls, backend: Any) -> LlamaChunkLogits | None:
        """A scorer on ``backend``'s llama-cpp-python context, or None when it has none (ONNX)."""
        llm = getattr(backend, "llm", None)
        if llm is None or not hasattr(llm, "ctx") or not hasattr(llm, "n_vocab"):
            return None
        drop = getattr(backend, "drop_cache", None)
        if drop is not None:
            drop()  # generation's record of the cache is void once the scorer fills it
        return cls(llm)

    def rows(self, tokens: list[int], first: int, last: int) -> np.ndarray:
        """float32 [last - first, n_vocab]; valid until the next call (it may be a view of llama.cpp's buffer)."""
        lc = self._lc
        n = len(tokens)
        if n > self.n_ctx:
            raise ResourceError(f"{n} tokens do not fit the context of {self.n_ctx}")
        lc.llama_memory_clear(lc.llama_get_memory(self.ctx), True)
        n_rows = last - first
        result: np.ndarray | None = None
        done = 0
        for start in range(0, n, self.n_batch):  # every token is decoded, as llama.cpp's perplexity tool does
            end = min(n, start + self.n_batch)
            n_out = self._fill(tokens, start, end, first, last)
            rc = lc.llama_decode(self.ctx, self.batch)
            if rc != 0:
                raise ArtifactError(f"llama.cpp failed to evaluate a chunk (llama_decode returned {rc})")
            if not n_out:
                continue
            ptr = ctypes.cast(lc.llama_get_logits(self.ctx), ctypes.POINTER(ctypes.c_float))
            view = np.ctypeslib.as_array(ptr, shape=(n_out, self.n_vocab))
            if n_out == n_rows and end == n:  # all scored rows from the last decode: read them in place
                result = view
                done = n_rows
                continue
            if self._out is None or self._out.shape[0] != n_rows:
                self._out = np.empty((n_rows, self.n_vocab), dtype=np.float32)
            self._out[done:done + n_out] = view
            done += n_out
            result = self._out
        self.llm.reset()  # the Llama's own token bookkeeping: nothing of ours is reused
        if result is None or done != n_rows:
            raise ArtifactError(f"llama.cpp returned logits for {done} of {n_rows} positions")
        return result

    def _fill(self, tokens: list[int], start: int, end: int, first: int, last: int) -> int:
        b = self.batch
        n_out = 0
        for i in range(end - start):
            pos = start + i
            b.token[i] = tokens[pos]
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            want = first <= pos < last
            b.logits[i] = want
            n_out += want
        b.n_tokens = end - start
        return n_out

    def close(self) -> None:
        if self.batch is not None:
            self._lc.llama_batch_free(self.batch)
            self.batch = None
