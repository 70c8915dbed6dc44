"""GGUF backend over llama-cpp-python: mmap'd weights, llama.cpp sampling, streaming UTF-8 output."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from jinja2 import TemplateError

from edge_run.core.errors import ArtifactError, InsufficientMemoryError, UsageError
from edge_run.core.quants import KV_CACHE_TYPES
from edge_run.runtime.backends.base import Backend, GenerationParams, LoadOptions
from edge_run.runtime.backends.llama_loop import DecodeLoop
from edge_run.runtime.backends.preflight import check_gguf
from edge_run.runtime.estimate.gguf import gguf_use_mmap

if TYPE_CHECKING:
    from edge_run.runtime.backends.threadpool import Threadpool

# KV cache type name -> ggml_type id (ggml.h enum ggml_type)
# src/edge_run/core/quants.py
CACHE_TYPES: dict[str, int] = {name: int(q.ggml_type) for name, q in KV_CACHE_TYPES.items()}
# --flash-attn -> llama-cpp-python's flash_attn flag. llama.cpp's "auto" enables flash attention when the device of
# every layer supports it, which the CPU backend always does; llama-cpp-python 0.3.36 passes only on or off.
FLASH_ATTN: dict[str, bool] = {"auto": True, "on": True, "off": False}
# llama.cpp refuses a quantized V cache without flash attention
NEEDS_FLASH_ATTN: frozenset[str] = frozenset({"q8_0", "q4_0"})


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """llama.cpp logs to fd 2 from C; silence it unless EDGE_RUN_DEBUG is set."""
    if os.environ.get("EDGE_RUN_DEBUG", "") not in ("", "0"):
        yield
        return
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@contextlib.contextmanager
def _sequences(llama_cpp: Any, n_seq: int) -> Iterator[None]:
    """llama-cpp-python's Llama takes no n_seq_max: it reads its context parameters from
    llama_context_default_params, called once while the Llama is made. For n_seq > 1 that call returns them with
    n_seq_max = n_seq and one unified KV cache (kv_unified: any mix of sequences decodes as one micro-batch; split
    caches decode only consecutive sequence ids together), sized n_seq x n_ctx cells as llama-server sizes it."""
    if n_seq == 1:
        yield
        return
    module = llama_cpp.llama_cpp
    default = module.llama_context_default_params

    def params() -> Any:
        p = default()
        p.n_seq_max, p.kv_unified = n_seq, True
        return p

    module.llama_context_default_params = params
    try:
        yield
    finally:
        module.llama_context_default_params = default


def _attach_pool(llm: Any, n_threads: int) -> Threadpool | None:
    """One set of ggml workers for every graph of the context, as llama-bench and llama-cli attach; without it
    (None: ggml could not start one) ggml starts and joins threads for each graph."""
    from edge_run.runtime.backends.threadpool import Threadpool

    try:
        return Threadpool(llm.ctx, n_threads)
    except (RuntimeError, OSError, AttributeError):
        return None


class GGUFBackend(Backend):
    def __init__(self, path: Path, options: LoadOptions) -> None:
        import llama_cpp

        self._llama_cpp = llama_cpp
        if options.cache_type not in CACHE_TYPES:
            raise UsageError(f"unknown KV cache type {options.cache_type!r}", f"choose from {', '.join(CACHE_TYPES)}")
        cache_type = CACHE_TYPES[options.cache_type]
        if options.flash_attn not in FLASH_ATTN:
            raise UsageError(f"unknown flash attention mode {options.flash_attn!r}",
                             f"choose from {', '.join(FLASH_ATTN)}")
        if not FLASH_ATTN[options.flash_attn] and options.cache_type in NEEDS_FLASH_ATTN:
            raise UsageError(f"a {options.cache_type} KV cache needs flash attention",
                             "drop --flash-attn off, or use an f16 KV cache")
        check_gguf(path)  # a few corrupt files make llama.cpp abort the process: read the header in a child first
        use_mmap = gguf_use_mmap(path, options.mmap)  # auto: mmap unless llama.cpp repacks most weights
        t0 = time.perf_counter()
        try:
            with _quiet_stderr(), _sequences(llama_cpp, options.n_seq):
                self.llm = llama_cpp.Llama(
                    model_path=str(path), n_ctx=options.n_ctx * options.n_seq, n_threads=options.n_threads,
                    n_threads_batch=options.n_threads, n_batch=options.n_batch, n_ubatch=options.n_batch,
                    logits_all=options.logits_all, use_mmap=use_mmap, seed=options.seed, verbose=False,
                    type_k=cache_type, type_v=cache_type,
                    flash_attn=FLASH_ATTN[options.flash_attn], n_gpu_layers=options.n_gpu_layers,
                    tensor_split=list(options.tensor_split) or None,
                )
        except TemplateError as e:  # llama-cpp-python compiles the chat template while loading
            raise ArtifactError(f"the chat template in {path.name} is not valid jinja ({e})",
                                "fix chat_template in the checkpoint's tokenizer_config.json and re-convert") from e
        except (ValueError, RuntimeError) as e:
            if "llama_context" in str(e):  # the weights loaded (the header check passed): the KV cache did not fit
                raise InsufficientMemoryError(
                    f"not enough memory for a {options.n_ctx}-token context of {path.name} ({e})",
                    "lower --ctx, free memory or raise the memory limit (ulimit -v, the container's memory.max)") from e
            raise ArtifactError(f"llama.cpp could not load {path.name} ({e})",
                                "the file is corrupt, truncated or of an unsupported architecture; "
                                "re-convert it (EDGE_RUN_DEBUG=1 shows llama.cpp's log)") from e
        self._pool = _attach_pool(self.llm, options.n_threads)
        self.load_seconds = time.perf_counter() - t0
        self.path = path
        self.options = options
        self.n_ctx = self.llm.n_ctx() if options.n_seq == 1 else options.n_ctx  # per sequence (serve's slots)
        self.n_seq = options.n_seq
        self.n_vocab = self.llm.n_vocab()
        self.metadata: dict[str, str] = dict(self.llm.metadata)
        self._vocab = self.llm._model.vocab
        self._pieces: dict[int, bytes] = {}
        self._loop = DecodeLoop(llama_cpp, self.llm.ctx, self.llm.n_batch, self.n_vocab, self.n_ctx, options.draft)

    # -- tokens ---------------------------------------------------------------------------------
    def bos_token_id(self) -> int | None:
        bos = self.llm.token_bos()
        return bos if bos >= 0 else None

    def add_bos(self) -> bool:
        return bool(self._llama_cpp.llama_vocab_get_add_bos(self._vocab))

    def _tokenize(self, data: bytes, add_bos: bool, special: bool) -> list[int]:
        """llama_tokenize once, into a buffer of len(data) + 2 tokens (llama.cpp's common_tokenize bound: no token
        is shorter than a byte). llama-cpp-python's tokenize first tries a buffer of n_ctx_train tokens and, for a
        longer text (eval's whole corpus), tokenizes it all a second time."""
        lc = self._llama_cpp
        cap = len(data) + 2
        buf = (lc.llama_token * cap)()
        n = lc.llama_tokenize(self._vocab, data, len(data), buf, cap, add_bos, special)
        if n < 0:
            raise ArtifactError(f"llama.cpp could not tokenize {len(data)} bytes (it needs {-n} tokens)")
        return buf[:n]

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        tokens = self._tokenize(data, add_bos=add_special, special=True) if data else []
        if not data and add_special and self.add_bos() and self.bos_token_id() is not None:
            tokens = [self.bos_token_id()]
        bos = self.bos_token_id()
        if len(tokens) >= 2 and tokens[0] == bos and tokens[1] == bos:
            tokens = tokens[1:]
        return tokens

    def detokenize(self, tokens: list[int]) -> str:
        return self.llm.detokenize(tokens).decode("utf-8", errors="replace")

    def tokenize_plain(self, text: str) -> list[int]:
        data = text.encode("utf-8")
        return self._tokenize(data, add_bos=False, special=False) if data else []

    def token_piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self.llm.detokenize([token])
        return piece

    def is_eog(self, token: int) -> bool:
        return bool(self._llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def is_control(self, token: int) -> bool:
        """The tokens llama_tokenize parses only with parse_special: control and unknown (llama-vocab.cpp)."""
        lc = self._llama_cpp
        parsed_only_special = lc.LLAMA_TOKEN_ATTR_CONTROL | lc.LLAMA_TOKEN_ATTR_UNKNOWN
        return bool(lc.llama_vocab_get_attr(self._vocab, token) & parsed_only_special)

    # -- evaluation -----------------------------------------------------------------------------
    def eval_logits(self, tokens: list[int]) -> np.ndarray:
        if not self.options.logits_all:
            raise UsageError("eval_logits needs a backend loaded with logits_all=True")
        if len(tokens) > self.n_ctx:
            raise UsageError(f"{len(tokens)} tokens do not fit the context of {self.n_ctx}")
        self.drop_cache()
        self.llm.reset()
        self.llm.eval(tokens)
        return np.array(self.llm.scores[: len(tokens)], dtype=np.float32)

    # -- generation -----------------------------------------------------------------------------
    def chat_template(self) -> str | None:
        return self.metadata.get("tokenizer.chat_template")

    def template_tokens(self) -> dict[str, str]:
        bos, eos = self.bos_token_id(), self.llm.token_eos()
        return {"bos_token": self.token_piece(bos).decode("utf-8", "replace") if bos is not None else "",
                "eos_token": self.token_piece(eos).decode("utf-8", "replace") if eos >= 0 else ""}

    def drop_cache(self) -> None:
        """Empty the KV cache; whoever evaluates on this context outside generation (eval's scorer) calls it first."""
        self._loop.forget(0)

    def cached_prefix(self, prompt_tokens: list[int]) -> int:
        """How many leading prompt tokens are already in the KV cache from the previous call."""
        if not self.options.reuse_prefix:
            return 0
        n = 0
        for a, b in zip(self._loop.held(), prompt_tokens, strict=False):
            if a != b:
                break
            n += 1
        return min(n, len(prompt_tokens) - 1)  # the last prompt token is always evaluated (fresh logits)

    def token_stream(self, prompt_tokens: list[int], params: GenerationParams) -> Iterator[int]:
        """llama.cpp's own loop (llama_loop.py): the sampler chain reads the logits in C (plain greedy reads them in
        place), none are copied to Python.
        It keeps the KV cache of the common prefix with the previous call and evaluates only the rest."""
        self.cached_tokens = self.cached_prefix(prompt_tokens)
        return self._loop.generate(prompt_tokens, self.cached_tokens, params)

    def draft_counts(self) -> tuple[int, int]:
        """Draft tokens evaluated and kept by speculative decoding (--draft) over this backend's life."""
        return self._loop.drafted, self._loop.accepted

    def close(self) -> None:
        if self._pool is not None:
            with contextlib.suppress(Exception):
                self._pool.close()  # detached before the context is freed
        with contextlib.suppress(Exception):
            self.llm.close()
