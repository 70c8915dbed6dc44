"""Speculative decoding by prompt lookup (``--draft ngram``): no second model.

    history = prompt + output so far          ... the cat sat on the mat . the cat | ?
    the last n tokens (n = 3, then 2)         ... "the cat" occurred before, followed by "sat on the mat"
    draft = what followed that occurrence     -> sat on the mat (up to ``DraftControl.length()`` tokens)

The target model evaluates [last token, draft...] in one batch with logits for every row; ``verify`` samples
each row in order and keeps drafts while they equal the sampled token, so the output is the target's own tokens:
greedy output is the plain greedy output token for token. A draft is a point mass, so at temperature > 0
"sample from the target, accept while equal" is the standard accept / resample rule (accept the draft with
probability p(d), else draw from p without d): the output distribution is unchanged (the seed's draws differ).

DraftControl adapts the draft length to acceptance: all accepted -> twice as long (up to MAX_DRAFT); a rejection
-> one more than was accepted. When the decayed acceptance rate falls below PAY_RATE, drafting stops for a
cool-down that doubles each time it happens again (re-probed after it): on open-ended text almost no drafts are
made and the cost is the n-gram lookup (a few dict operations a token).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from edge_run.core.errors import UsageError

DRAFT_KINDS = ("ngram",)
DRAFT_HELP = ("GGUF: speculative decoding, ngram (prompt lookup: drafts the tokens that followed the text's last "
              "words earlier on, checked in one batch; the output is unchanged)")
NGRAM_MAX, NGRAM_MIN = 3, 2  # n-gram lengths looked up, longest first
MAX_DRAFT, START_DRAFT = 16, 4
# a drafted token costs a row of a batched matrix product; on a memory-bound CPU a few rows cost a fraction of a
# decode step, so a draft pays when about a quarter of its tokens are kept
PAY_RATE = 0.25
RATE_DECAY = 0.8
COOL_DOWN, MAX_COOL_DOWN = 16, 512  # steps without drafting after a run of rejections


def check_draft(draft: str, format_name: str = "gguf") -> str:
    """``draft`` if it is a known kind and the artifact's format drafts (GGUF only), else UsageError."""
    if draft and draft not in DRAFT_KINDS:
        raise UsageError(f"unknown --draft {draft!r}", f"choose from {', '.join(DRAFT_KINDS)}")
    if draft and format_name != "gguf":
        raise UsageError(f"--draft {draft} needs a GGUF artifact (speculative decoding runs on llama.cpp)",
                         "drop --draft, or use a .gguf")
    return draft


class NgramIndex:
    """Every n-gram of the history (n = NGRAM_MIN..NGRAM_MAX) -> where its latest occurrence ends; per append,
    the previous occurrence of the n-gram the history now ends with."""

    def __init__(self, tokens: Sequence[int] = ()) -> None:
        self.tokens: list[int] = []
        self._seen: list[dict[tuple[int, ...], int]] = [{} for _ in range(NGRAM_MIN, NGRAM_MAX + 1)]
        self._prev: list[int | None] = [None] * len(self._seen)
        for t in tokens:
            self.append(t)

    def append(self, token: int) -> None:
        tokens = self.tokens
        tokens.append(token)
        end = len(tokens)
        for i, seen in enumerate(self._seen):
            n = NGRAM_MIN + i
            if end < n:
                self._prev[i] = None
                continue
            key = tuple(tokens[end - n:end])
            self._prev[i] = seen.get(key)
            seen[key] = end

    def draft(self, k: int) -> list[int]:
        """Up to ``k`` tokens that followed the previous occurrence of the longest n-gram the history ends with."""
        if k <= 0:
            return []
        for prev in reversed(self._prev):
            if prev is not None:
                return self.tokens[prev:prev + k]
        return []


class DraftControl:
    """The next draft's length from the acceptance so far (0: drafting is cooling down)."""

    def __init__(self) -> None:
        self.k = START_DRAFT
        self.rate = 1.0
        self.idle = 0  # steps left without drafting
        self.cool_down = COOL_DOWN
        self.drafted = self.accepted = 0

    def length(self) -> int:
        if self.idle > 0:
            self.idle -= 1
            return 0
        return self.k

    def update(self, drafted: int, accepted: int) -> None:
        if drafted == 0:
            return
        self.drafted += drafted
        self.accepted += accepted
        self.rate = RATE_DECAY * self.rate + (1 - RATE_DECAY) * accepted / drafted
        self.k = min(MAX_DRAFT, 2 * self.k) if accepted == drafted else max(1, accepted + 1)
        if self.rate < PAY_RATE:
            self.idle, self.cool_down = self.cool_down, min(MAX_COOL_DOWN, 2 * self.cool_down)
            self.rate, self.k = 1.0, START_DRAFT
        elif accepted == drafted:
            self.cool_down = COOL_DOWN


def verify(sample: Callable[[int], int], rows: Sequence[int], drafts: Sequence[int]) -> list[int]:
    """The target's tokens for one sequence: ``rows[j]`` is the batch row whose logits follow ``drafts[:j]``
    (len(rows) == len(drafts) + 1). Every draft kept is in the result, then the first token that differs (or,
    all kept, the token after the last draft)."""
    out = []
    for j, row in enumerate(rows):
        token = sample(row)
        out.append(token)
        if j == len(drafts) or token != drafts[j]:
            break
    return out
