"""GGUF backend over llama-cpp-python: mmap'd weights, llama.cpp sampling, streaming UTF-8 output."""

from __future__ import annotations

import codecs
import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from jinja2 import TemplateError

from ..chat import render_chat, user_turn
from ..errors import ArtifactError, UsageError
from ..preflight import check_gguf
from .base import Backend, GenerationParams, GenerationResult, LoadOptions

# KV cache type name -> ggml_type id (ggml.h enum ggml_type)
CACHE_TYPES: dict[str, int] = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 8}


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


class GGUFBackend(Backend):
    def __init__(self, path: Path, options: LoadOptions) -> None:
        import llama_cpp

        self._llama_cpp = llama_cpp
        if options.cache_type not in CACHE_TYPES:
            raise UsageError(f"unknown KV cache type {options.cache_type!r}", f"choose from {', '.join(CACHE_TYPES)}")
        cache_type = CACHE_TYPES[options.cache_type]
        check_gguf(path)  # a few corrupt files make llama.cpp abort the process: read the header in a child first
        t0 = time.perf_counter()
        try:
            with _quiet_stderr():
                self.llm = llama_cpp.Llama(
                    model_path=str(path), n_ctx=options.n_ctx, n_threads=options.n_threads,
                    n_threads_batch=options.n_threads, n_batch=options.n_batch, n_ubatch=options.n_batch,
                    logits_all=options.logits_all, use_mmap=True, seed=options.seed, verbose=False,
                    type_k=cache_type, type_v=cache_type,
                    # quantized V caches need flash attention in llama.cpp
                    flash_attn=options.cache_type in ("q8_0", "q4_0"),
                )
        except TemplateError as e:  # llama-cpp-python compiles the chat template while loading
            raise ArtifactError(f"the chat template in {path.name} is not valid jinja ({e})",
                                "fix chat_template in the checkpoint's tokenizer_config.json and re-convert") from e
        except (ValueError, RuntimeError) as e:
            raise ArtifactError(f"llama.cpp could not load {path.name} ({e})",
                                "the file is corrupt, truncated or of an unsupported architecture; "
                                "re-convert it (EDGE_RUN_DEBUG=1 shows llama.cpp's log)") from e
        self.load_seconds = time.perf_counter() - t0
        self.path = path
        self.options = options
        self.n_ctx = self.llm.n_ctx()
        self.n_vocab = self.llm.n_vocab()
        self.metadata: dict[str, str] = dict(self.llm.metadata)
        self._vocab = self.llm._model.vocab

    # -- tokens ---------------------------------------------------------------------------------
    def bos_token_id(self) -> int | None:
        bos = self.llm.token_bos()
        return bos if bos >= 0 else None

    def add_bos(self) -> bool:
        return bool(self._llama_cpp.llama_vocab_get_add_bos(self._vocab))

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        tokens = self.llm.tokenize(data, add_bos=add_special, special=True) if data else []
        if not data and add_special and self.add_bos() and self.bos_token_id() is not None:
            tokens = [self.bos_token_id()]
        bos = self.bos_token_id()
        if len(tokens) >= 2 and tokens[0] == bos and tokens[1] == bos:
            tokens = tokens[1:]
        return tokens

    def detokenize(self, tokens: list[int]) -> str:
        return self.llm.detokenize(tokens).decode("utf-8", errors="replace")

    def token_piece(self, token: int) -> bytes:
        return self.llm.detokenize([token])

    def is_eog(self, token: int) -> bool:
        return bool(self._llama_cpp.llama_vocab_is_eog(self._vocab, token))

    # -- evaluation -----------------------------------------------------------------------------
    def eval_logits(self, tokens: list[int]) -> np.ndarray:
        if not self.options.logits_all:
            raise UsageError("eval_logits needs a backend loaded with logits_all=True")
        if len(tokens) > self.n_ctx:
            raise UsageError(f"{len(tokens)} tokens do not fit the context of {self.n_ctx}")
        self.llm.reset()
        self.llm.eval(tokens)
        return np.array(self.llm.scores[: len(tokens)], dtype=np.float32)

    # -- generation -----------------------------------------------------------------------------
    def chat_prompt(self, user_message: str) -> str:
        template = self.metadata.get("tokenizer.chat_template")
        bos = self.bos_token_id()
        eos = self.llm.token_eos()
        return render_chat(template, user_turn(user_message),
                           bos_token=self.token_piece(bos).decode("utf-8", "replace") if bos is not None else "",
                           eos_token=self.token_piece(eos).decode("utf-8", "replace") if eos >= 0 else "")

    def stream(self, prompt_tokens: list[int], params: GenerationParams) -> Iterator[str]:
        if not prompt_tokens:
            raise UsageError("the prompt is empty", "pass a non-empty prompt with -p")
        room = self.n_ctx - len(prompt_tokens)
        if room <= 0:
            raise UsageError(f"the prompt has {len(prompt_tokens)} tokens but the context holds {self.n_ctx}",
                             "shorten the prompt or raise --ctx")
        max_tokens = min(params.max_tokens, room)
        self.llm.set_seed(params.seed)
        self.llm.reset()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        n_out, finish = 0, "length"
        t_start = time.perf_counter()
        t_first = t_start
        text_parts: list[str] = []
        stop = params.stop
        gen = self.llm.generate(
            prompt_tokens, temp=params.temperature, top_k=params.top_k, top_p=params.top_p,
            min_p=params.min_p, repeat_penalty=params.repeat_penalty, reset=True,
        )
        for token in gen:
            if n_out == 0:
                t_first = time.perf_counter()
            if self.is_eog(token):
                finish = "stop"
                break
            n_out += 1
            piece = decoder.decode(self.token_piece(token))
            if piece:
                text_parts.append(piece)
                yield piece
            if stop and any(s in "".join(text_parts[-8:]) for s in stop):
                finish = "stop"
                break
            if n_out >= max_tokens:
                break
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail
        t_end = time.perf_counter()
        self.last_result = GenerationResult(
            text="", prompt_tokens=len(prompt_tokens), completion_tokens=n_out,
            prefill_seconds=t_first - t_start, decode_seconds=t_end - t_first, finish_reason=finish,
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.llm.close()
