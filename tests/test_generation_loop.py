"""The one generation loop (Backend.stream) every backend shares: UTF-8 split across tokens, stop strings cut
before they are returned (also when they span tokens), end of generation, max tokens, the room left in the
context, and cancellation polled before each token."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from edge_run.core.errors import UsageError
from edge_run.runtime.backends.base import Backend, GenerationParams, StopMatcher

EOS = 0


class ScriptedBackend(Backend):
    """Emits a fixed sequence of byte pieces, one token each, then EOS; counts the tokens it was asked for."""

    def __init__(self, pieces: list[bytes], n_ctx: int = 64) -> None:
        self.pieces = {i + 1: p for i, p in enumerate(pieces)}
        self.n_ctx, self.n_vocab, self.load_seconds = n_ctx, len(pieces) + 1, 0.0
        self.asked = 0

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return [1] * len(text)

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.token_piece(t) for t in tokens).decode("utf-8", "replace")

    def token_piece(self, token: int) -> bytes:
        return self.pieces.get(token, b"")

    def bos_token_id(self) -> int | None:
        return None

    def eval_logits(self, tokens: list[int]) -> np.ndarray:
        raise NotImplementedError

    def is_eog(self, token: int) -> bool:
        return token == EOS

    def token_stream(self, prompt_tokens: list[int], params: GenerationParams) -> Iterator[int]:
        for token in [*self.pieces, EOS]:
            self.asked += 1
            yield token


CAFE = [b"caf", b"\xc3", b"\xa9", b" ", b"\xe2\x82", b"\xac", b"5", b" STOP", b"!", b" more"]


def run(backend: Backend, **kw: object) -> tuple[list[str], str]:
    pieces = list(backend.stream([1, 1], GenerationParams(**kw)))  # type: ignore[arg-type]
    assert backend.last_result is not None
    return pieces, backend.last_result.finish_reason


def test_multibyte_characters_split_across_tokens_come_out_whole() -> None:
    pieces, finish = run(ScriptedBackend(CAFE), max_tokens=100)
    assert "".join(pieces) == "café €5 STOP! more" and finish == "stop"
    assert "\ufffd" not in "".join(pieces) and all(pieces)


def test_stop_string_spanning_tokens_is_cut_and_not_returned() -> None:
    b = ScriptedBackend(CAFE)
    pieces, finish = run(b, max_tokens=100, stop=("TOP!",))
    assert "".join(pieces) == "café €5 S" and finish == "stop"
    assert b.asked == 9  # generation stopped at the token that completed the stop string


def test_stop_strings_first_match_wins_and_held_back_text_is_released() -> None:
    assert "".join(run(ScriptedBackend(CAFE), max_tokens=100, stop=("more", "€"))[0]) == "café "
    # a prefix of a stop string that never completes is returned in the end
    assert "".join(run(ScriptedBackend(CAFE), max_tokens=100, stop=("morez",))[0]) == "café €5 STOP! more"


def test_max_tokens_and_context_room() -> None:
    pieces, finish = run(ScriptedBackend(CAFE), max_tokens=4)
    assert "".join(pieces) == "café " and finish == "length"
    b = ScriptedBackend(CAFE, n_ctx=5)  # 2 prompt tokens: room for 3
    assert "".join(run(b, max_tokens=100)[0]) == "café"
    with pytest.raises(UsageError, match="context holds"):
        list(ScriptedBackend(CAFE, n_ctx=2).stream([1, 1], GenerationParams()))


def test_cancel_stops_within_one_token() -> None:
    b = ScriptedBackend(CAFE)
    seen: list[str] = []
    for piece in b.stream([1, 1], GenerationParams(max_tokens=100), cancel=lambda: len(seen) >= 2):
        seen.append(piece)
    assert b.last_result is not None and b.last_result.finish_reason == "cancelled"
    assert b.asked == 3 and "".join(seen) == "café"  # "caf", then "é" from two byte tokens; not one token more
    b2 = ScriptedBackend(CAFE)
    assert list(b2.stream([1, 1], GenerationParams(), cancel=lambda: True)) == [] and b2.asked == 0


def test_stop_matcher_holds_back_only_possible_prefixes() -> None:
    m = StopMatcher(["</s>", "END"])
    assert m.feed("hello <") == ("hello ", False)
    assert m.feed("/") == ("", False)
    assert m.feed("x") == ("</x", False)
    assert m.feed(" EN") == (" ", False)
    assert m.feed("D tail") == ("", True)


class EosInTheMiddle(ScriptedBackend):
    def token_stream(self, prompt_tokens: list[int], params: GenerationParams) -> Iterator[int]:
        yield from (1, EOS, 2, EOS)


def test_ignore_eos_generates_past_end_of_generation() -> None:
    """What `bench` decodes with, as llama-bench's tg never stops: the end-of-generation token counts and is passed."""
    b = EosInTheMiddle([b"a", b"b"])
    assert run(b, max_tokens=3, ignore_eos=True) == (["a", "b"], "length")
    assert b.last_result is not None and b.last_result.completion_tokens == 3
    assert run(EosInTheMiddle([b"a", b"b"]), max_tokens=3) == (["a"], "stop")
