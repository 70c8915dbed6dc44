"""Chat prompts in which control tokens come only from the template's own text, never from a message.

The template is rendered for the messages as they are, and once more with each message text replaced by a marker
that no input holds: a random run of private-use characters around the text's number, between two pads of
whitespace. That render is split at the markers, so the template's own text and the place of every message text are
known by structure, never by searching the rendered text for a message. Template text is tokenized with special-token
parsing, message text as plain text.

A template that changes message text is followed: a pad that is gone says the text was stripped on that side
(``|trim``); any other change (a cut, ``.split('</think>')[-1]``) is read from two more renders, each with every
other message marked, so that the changed text lies between two markers. The parts are exact when together they
spell the ordinary render. When they do not (the template's output depends on message text in some other way) the
marked render's structure is kept and message text stays plain: the prompt then differs a little from the template's
text, never in where a control token comes from.
"""

from __future__ import annotations

import re
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from itertools import pairwise
from typing import Any, Protocol

from edge_run.core.errors import ArtifactError, UsageError
from edge_run.runtime.chat.template import input_size, render_bounded

PAD = " \n"  # whitespace that str.strip() removes: whether it survives says how the template stripped the text
NONCE_LENGTH = 12
PRIVATE_USE = (0xF0000, 0xFFFFD)  # supplementary private use area A: 65,534 characters no tokenizer assigns
MARK_SIZE = 2 * len(PAD) + 2 * NONCE_LENGTH + 9  # characters a marker takes at most
ROLE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")
CUT = ("the chat template cuts or rewrites message text, so its own text cannot be told apart from the messages'",
       "run without --chat, or use a template that prints each message's text whole")


@dataclass(frozen=True)
class Mark:
    """Where the template printed message text number ``text``; ``left`` / ``right``: the pad on that side is
    still there (the template did not strip the text on that side)."""

    text: int
    left: bool
    right: bool


Item = str | Mark


@dataclass(frozen=True)
class ChatRender:
    parts: tuple[tuple[str, bool], ...]  # (text, whether it is message text), in order, none empty
    text: str  # the template's ordinary render
    exact: bool  # the parts spell ``text``


def message_slots(messages: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """(message number, key) of every non-empty text of the messages: every value but the role, which must be a
    plain word (templates branch on it and print it as their own text)."""
    slots: list[tuple[int, str]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise UsageError(f"message {i} is not an object with a role and a content")
        role = m.get("role")
        if not isinstance(role, str) or not ROLE.fullmatch(role):
            raise UsageError(f"message {i} has the role {str(role)[:40]!r}", "use system, user or assistant")
        for key, value in m.items():
            if key == "role" or value is None or value == "":
                continue
            if not isinstance(value, str):
                raise UsageError(f"the {key} of message {i} is not text")
            slots.append((i, key))
    return slots


def _nonce() -> str:
    low, high = PRIVATE_USE
    return "".join(chr(low + secrets.randbelow(high - low)) for _ in range(NONCE_LENGTH))


class Markers:
    """The markers of one render: ``open`` and ``close`` hold characters absent from the template's own text, and
    no message holds either, so neither the template nor a message can spell a marker."""

    def __init__(self, own_text: str, texts: list[str]) -> None:
        for _ in range(8):
            self.open, self.close = _nonce(), _nonce()
            self.chars = frozenset(self.open + self.close)
            if self.chars.isdisjoint(own_text) and not any(self.open in t or self.close in t for t in texts):
                break
        else:  # pragma: no cover - 8 collisions of 24 random characters out of 65,534
            raise UsageError("the messages hold the private-use characters edge-run marks message text with")
        self.pattern = re.compile(f"({re.escape(PAD)})?{re.escape(self.open)}([0-9]{{1,9}})"
                                  f"{re.escape(self.close)}({re.escape(PAD)})?")

    def mark(self, k: int) -> str:
        return f"{PAD}{self.open}{k}{self.close}{PAD}"

    def parse(self, text: str, count: int, whole: bool) -> list[Item]:
        """``text`` split into template text and marks; ``whole``: every marker must be whole (the render holds no
        message text, so a stray marker character is one the template cut)."""
        items: list[Item] = []
        at = 0
        for m in self.pattern.finditer(text):
            if m.start() > at:
                items.append(text[at:m.start()])
            k = int(m.group(2))
            if k >= count:
                raise ArtifactError(*CUT)
            items.append(Mark(k, m.group(1) is not None, m.group(3) is not None))
            at = m.end()
        if at < len(text):
            items.append(text[at:])
        if whole and any(isinstance(x, str) and not self.chars.isdisjoint(x) for x in items):
            raise ArtifactError(*CUT)
        return items


def _guess(text: str, mark: Mark) -> str:
    """The message text as the template printed it, by the pads that survived."""
    text = text if mark.left else text.lstrip()
    return text if mark.right else text.rstrip()


def _spelled(items: list[Item], texts: dict[int, str]) -> str:
    return "".join(x if isinstance(x, str) else texts[at] for at, x in enumerate(items))


def _groups(items: list[Item]) -> list[set[int]]:
    """Texts printed once, in two groups that alternate in print order: with one group printed as it is and the
    other marked, each printed text of the first lies between two marks."""
    order = [x.text for x in items if isinstance(x, Mark)]
    once = {k for k, n in Counter(order).items() if n == 1}
    return [{k for k in order[start::2] if k in once} for start in (0, 1)]


def _read_back(items: list[Item], printed: dict[int, str], other: list[Item], group: set[int]) -> None:
    """Into ``printed``: each text of ``group`` as the template printed it in ``other`` (the render in which the
    texts of ``group`` were themselves and the rest marked), read between the two marks around it."""
    kept = [at for at, x in enumerate(items) if isinstance(x, Mark) and x.text not in group]
    marks = [at for at, x in enumerate(other) if isinstance(x, Mark)]
    if [items[at] for at in kept] != [other[at] for at in marks]:
        return  # the marked texts are not where they were: the printed ones cannot be placed
    for (p0, p1), (r0, r1) in zip(pairwise([-1, *kept, len(items)]), pairwise([-1, *marks, len(other)]), strict=True):
        inner = [at for at in range(p0 + 1, p1) if isinstance(items[at], Mark)]
        if len(inner) != 1:
            continue
        at = inner[0]
        before = items[at - 1] if at - 1 > p0 else ""
        after = items[at + 1] if at + 1 < p1 else ""
        assert isinstance(before, str) and isinstance(after, str)
        got = "".join(x for x in other[r0 + 1:r1] if isinstance(x, str))
        if len(got) >= len(before) + len(after) and got.startswith(before) and got.endswith(after):
            printed[at] = got[len(before):len(got) - len(after)]


def _shown(texts: list[str], markers: Markers, group: set[int], k: int) -> str:
    return texts[k] if k in group else markers.mark(k)


def render_parts(template: str | None, messages: list[dict[str, Any]], bos_token: str = "", eos_token: str = "",
                 add_generation_prompt: bool = True) -> ChatRender:
    """The template rendered for ``messages``, split into its own text and message text (module docstring).
    Thread-safe; bounded in time and size (bounds.py), the bounds shared by all its renders."""
    from edge_run.runtime.chat.bounds import Limits

    slots = message_slots(messages)
    texts = [messages[i][key] for i, key in slots]
    limits = Limits.for_input(input_size(messages) + MARK_SIZE * len(slots), len(messages))
    deadline = time.monotonic() + limits.seconds
    variables = {"bos_token": bos_token, "eos_token": eos_token, "add_generation_prompt": add_generation_prompt}

    def render(value: Callable[[int], str] | None) -> str:
        """The render with text k of the messages replaced by ``value(k)``; None: the messages as they are."""
        shown = messages
        if value is not None:
            shown = [dict(m) for m in messages]
            for k, (i, key) in enumerate(slots):
                shown[i][key] = value(k)
        return render_bounded(template, {**variables, "messages": shown}, limits, deadline)

    text = render(None)
    if not slots:
        return ChatRender(((text, False),) if text else (), text, True)
    assert template is not None  # the render above raised otherwise
    markers = Markers("".join([template, bos_token, eos_token, *(m["role"] for m in messages)]), texts)
    items = markers.parse(render(markers.mark), len(texts), whole=True)
    printed = {at: _guess(texts[x.text], x) for at, x in enumerate(items) if isinstance(x, Mark)}
    if _spelled(items, printed) != text:
        for group in _groups(items):
            if group:
                other = render(partial(_shown, texts, markers, group))
                _read_back(items, printed, markers.parse(other, len(texts), whole=False), group)
    parts = tuple((x, False) if isinstance(x, str) else (printed[at], True) for at, x in enumerate(items))
    return ChatRender(tuple(p for p in parts if p[0]), text, _spelled(items, printed) == text)


class Tokenizer(Protocol):
    def tokenize(self, text: str, add_special: bool = True) -> list[int]: ...

    def tokenize_plain(self, text: str) -> list[int]: ...

    def is_control(self, token: int) -> bool: ...


def prompt_tokens(tok: Tokenizer, render: ChatRender) -> list[int]:
    """Token ids of a chat render: template text with special-token parsing, message text plain, BOS (if the model
    wants one) at the start. When the render is exact, no message spells a control token and tokenizing the render
    whole gives exactly the template's control tokens, the whole tokenization is used: the same ids as llama.cpp's
    and transformers' own chat path."""
    head = [] if render.parts and not render.parts[0][1] else tok.tokenize("", add_special=True)
    own = {n: tok.tokenize(text, add_special=n == 0) for n, (text, is_message) in enumerate(render.parts)
           if not is_message}
    if len(own) < len(render.parts) and render.exact and not any(
            is_message and any(map(tok.is_control, tok.tokenize(text, add_special=False)))
            for text, is_message in render.parts):
        whole = tok.tokenize(render.text, add_special=True)
        controls = [t for t in whole if tok.is_control(t)]
        if controls == [t for ids in (head, *own.values()) for t in ids if tok.is_control(t)]:
            return whole
    tokens = head
    for n, (text, _) in enumerate(render.parts):
        tokens += own[n] if n in own else tok.tokenize_plain(text)
    return tokens
