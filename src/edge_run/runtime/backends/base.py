"""The interface every inference backend implements (GGUF via llama-cpp-python, ONNX via onnxruntime)."""

from __future__ import annotations

import abc
import codecs
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edge_run.core.errors import UsageError

if TYPE_CHECKING:  # numpy and psutil are imported where used: `edge-run run` starts before either is needed
    import numpy as np

    from edge_run.runtime.chat.prompt import ChatRender


def physical_cores() -> int:
    import psutil

    return psutil.cpu_count(logical=False) or psutil.cpu_count() or 1


@dataclass(frozen=True)
class LoadOptions:
    n_ctx: int = 2048
    n_threads: int = field(default_factory=physical_cores)
    n_batch: int = 512
    logits_all: bool = False  # keep logits of every position (eval needs them)
    seed: int = 0
    cache_type: str = "f16"  # KV cache element type: f32 | f16 | q8_0 | q4_0
    reuse_prefix: bool = True  # keep the KV cache between calls; evaluate only what follows the common prefix
    flash_attn: str = "auto"  # on | off | auto (llama.cpp's default, as llama-cli/-bench/-perplexity use it)
    n_gpu_layers: int = 0  # GGUF: layer slots offloaded to llama.cpp's non-CPU devices (a --cluster's RPC workers)
    tensor_split: tuple[float, ...] = ()  # GGUF: slots per such device, in llama.cpp's registry order
    mmap: str = "auto"  # GGUF use_mmap: on | off | auto (src/edge_run/runtime/estimate/load_mode.py)
    n_seq: int = 1  # GGUF: sequences sharing the context (serve --parallel), each with its own n_ctx of KV cache
    draft: str = ""  # GGUF: speculative decoding, "" (off) | "ngram" (prompt lookup; backends/speculative.py)


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # generate past end-of-generation tokens (benchmarks: always max_tokens tokens)


@dataclass
class GenerationResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    prefill_seconds: float
    decode_seconds: float
    finish_reason: str  # "stop" | "length" | "cancelled"
    cached_tokens: int = 0  # prompt tokens whose KV entries were reused from the previous call

    @property
    def prefill_tps(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds > 0 else 0.0

    @property
    def decode_tps(self) -> float:
        # the first generated token comes out of prefill; decode speed counts the rest
        n = max(self.completion_tokens - 1, 0)
        return n / self.decode_seconds if self.decode_seconds > 0 else 0.0


Cancel = Callable[[], bool]


class StopMatcher:
    """Holds back text that could be the start of a stop string; cuts the output before the first stop string
    (OpenAI semantics: the stop string itself is not returned)."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """The text that is safe to emit now, and whether a stop string was reached."""
        if not self.stops:
            return text, False
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending = self.pending[:min(hits)], ""
            return out, True
        keep = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.pending)), keep, -1):
                if self.pending.endswith(s[:n]):
                    keep = n
                    break
        cut = len(self.pending) - keep
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class Backend(abc.ABC):
    """One loaded model. Subclasses set ``n_ctx``, ``n_vocab``, ``load_seconds``."""

    n_ctx: int
    n_vocab: int
    load_seconds: float

    @abc.abstractmethod
    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        """Token ids of ``text``; ``add_special`` adds BOS (etc.) as the model's metadata says, but never
        a second BOS when ``text`` already starts with it (rendered chat templates often do). Special-token
        text such as ``<|im_start|>`` is parsed as the special token."""

    @abc.abstractmethod
    def detokenize(self, tokens: list[int]) -> str: ...

    @abc.abstractmethod
    def bos_token_id(self) -> int | None: ...

    def token_piece(self, token: int) -> bytes:
        """The bytes one token spells (eval counts bits per byte with it); override where detokenize is lossy."""
        return self.detokenize([token]).encode("utf-8")

    @abc.abstractmethod
    def eval_logits(self, tokens: list[int]) -> np.ndarray:
        """Reset the state, evaluate ``tokens`` from position 0, return float32 logits [len(tokens), n_vocab]."""

    def tokenize_plain(self, text: str) -> list[int]:
        """Token ids of ``text`` as plain text: no BOS, and special-token text such as ``<|im_start|>`` stays text."""
        raise NotImplementedError

    def is_eog(self, token: int) -> bool:
        """True for end-of-generation tokens (EOS, EOT, ...)."""
        raise NotImplementedError

    def token_stream(self, prompt_tokens: list[int], params: GenerationParams) -> Iterator[int]:
        """The backend's part of generation: evaluate the prompt, then yield one sampled token at a time
        (a token is evaluated only when the next one is asked for). Sets ``cached_tokens``."""
        raise NotImplementedError

    cached_tokens: int = 0
    last_result: GenerationResult | None = None

    def stream(self, prompt_tokens: list[int], params: GenerationParams,
               cancel: Cancel | None = None) -> Iterator[str]:
        """Yield text pieces as they are generated; afterwards ``last_result`` holds the counts and timings.

        The one generation loop of every backend: end-of-generation, max tokens (capped by the room left in the
        context), stop strings (not returned), multi-byte UTF-8 pieces split across tokens, and ``cancel``,
        polled before each token (a true result stops generation with finish_reason "cancelled")."""
        if not prompt_tokens:
            raise UsageError("the prompt is empty", "pass a non-empty prompt with -p")
        room = self.n_ctx - len(prompt_tokens)
        if room <= 0:
            raise UsageError(f"the prompt has {len(prompt_tokens)} tokens but the context holds {self.n_ctx}",
                             "shorten the prompt or raise --ctx")
        max_tokens = min(params.max_tokens, room)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = StopMatcher(params.stop)
        n_out, finish, stopped = 0, "length", False
        t_start = time.perf_counter()
        t_first = t_start
        self.cached_tokens = 0
        if cancel is not None and cancel():
            finish = "cancelled"
            tokens: Iterator[int] = iter(())
        else:
            tokens = self.token_stream(prompt_tokens, params)
        try:
            for token in tokens:
                if n_out == 0:
                    t_first = time.perf_counter()
                if self.is_eog(token) and not params.ignore_eos:
                    finish = "stop"
                    break
                n_out += 1
                text, stopped = stops.feed(decoder.decode(self.token_piece(token)))
                if text:
                    yield text
                if stopped:
                    finish = "stop"
                    break
                if n_out >= max_tokens:
                    break
                if cancel is not None and cancel():
                    finish = "cancelled"
                    break
        finally:
            close = getattr(tokens, "close", None)
            if close is not None:
                close()
        if not stopped:
            text, stopped = stops.feed(decoder.decode(b"", final=True))
            text += "" if stopped else stops.flush()
            if text:
                yield text
        t_end = time.perf_counter()
        if n_out == 0:
            t_first = t_end
        self.last_result = GenerationResult(
            text="", prompt_tokens=len(prompt_tokens), completion_tokens=n_out,
            prefill_seconds=t_first - t_start, decode_seconds=t_end - t_first, finish_reason=finish,
            cached_tokens=self.cached_tokens,
        )

    # -- chat templates -------------------------------------------------------------------------
    def chat_template(self) -> str | None:
        """The model's own chat template (jinja source), None when it has none."""
        raise NotImplementedError

    def template_tokens(self) -> dict[str, str]:
        """The special-token texts a template may use (bos_token, eos_token)."""
        return {}

    def render_messages(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """The chat template rendered (sandboxed) for ``messages``."""
        from edge_run.runtime.chat.template import render_chat

        return render_chat(self.chat_template(), messages, add_generation_prompt=add_generation_prompt,
                           **self.template_tokens())

    def chat_prompt(self, user_message: str) -> str:
        """Render the model's chat template (sandboxed) for one user turn, generation prompt added."""
        from edge_run.runtime.chat.template import user_turn

        return self.render_messages(user_turn(user_message))

    def is_control(self, token: int) -> bool:
        """True for a token that ``tokenize`` parses from its text but ``tokenize_plain`` never makes (control
        tokens such as ``<|im_start|>``): only the chat template's own text may hold one."""
        raise NotImplementedError

    def chat_render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> ChatRender:
        """The chat template rendered (sandboxed, bounded) for ``messages``, split into its own text and message
        text by structure (chat/prompt.py)."""
        from edge_run.runtime.chat.prompt import render_parts

        return render_parts(self.chat_template(), messages, add_generation_prompt=add_generation_prompt,
                            **self.template_tokens())

    def chat_prompt_messages(self, messages: list[dict[str, Any]]) -> list[int]:
        """Prompt token ids for a conversation (system / user / assistant turns, in order) in the model's own
        template, generation prompt added. Only the template's own special tokens become control tokens: text
        inside a message that spells one (``<|im_end|>``...) is tokenized as plain text. A plain function of its
        arguments: safe to call from any thread (the backend's tokenizer permitting)."""
        from edge_run.runtime.chat.prompt import prompt_tokens

        return prompt_tokens(self, self.chat_render(messages))

    def generate(self, prompt: str, params: GenerationParams, chat: bool = False,
                 cancel: Cancel | None = None) -> GenerationResult:
        text = self.chat_prompt(prompt) if chat else prompt
        tokens = self.tokenize(text, add_special=True)
        pieces = list(self.stream(tokens, params, cancel))
        assert self.last_result is not None
        self.last_result.text = "".join(pieces)
        return self.last_result

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
