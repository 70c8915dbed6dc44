"""The interface every inference backend implements (GGUF via llama-cpp-python, ONNX via onnxruntime)."""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import psutil


def physical_cores() -> int:
    return psutil.cpu_count(logical=False) or psutil.cpu_count() or 1


@dataclass(frozen=True)
class LoadOptions:
    n_ctx: int = 2048
    n_threads: int = field(default_factory=physical_cores)
    n_batch: int = 512
    logits_all: bool = False  # keep logits of every position (eval needs them)
    seed: int = 0
    cache_type: str = "f16"  # KV cache element type: f32 | f16 | q8_0 | q4_0


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


@dataclass
class GenerationResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    prefill_seconds: float
    decode_seconds: float
    finish_reason: str  # "stop" | "length"

    @property
    def prefill_tps(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds > 0 else 0.0

    @property
    def decode_tps(self) -> float:
        # the first generated token comes out of prefill; decode speed counts the rest
        n = max(self.completion_tokens - 1, 0)
        return n / self.decode_seconds if self.decode_seconds > 0 else 0.0


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

    @abc.abstractmethod
    def stream(self, prompt_tokens: list[int], params: GenerationParams) -> Iterator[str]:
        """Yield text pieces as they are generated; afterwards ``last_result`` holds the counts and timings."""

    @abc.abstractmethod
    def chat_prompt(self, user_message: str) -> str:
        """Render the model's chat template (sandboxed) for one user turn, generation prompt added."""

    last_result: GenerationResult | None = None

    def generate(self, prompt: str, params: GenerationParams, chat: bool = False) -> GenerationResult:
        text = self.chat_prompt(prompt) if chat else prompt
        tokens = self.tokenize(text, add_special=True)
        pieces = list(self.stream(tokens, params))
        assert self.last_result is not None
        self.last_result.text = "".join(pieces)
        return self.last_result

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
