"""A multi-turn conversation kept within a model's context: the oldest turns are dropped when it fills."""

from __future__ import annotations

from edge_run.core.errors import UsageError
from edge_run.runtime.backends import Backend


class Conversation:
    def __init__(self, system: str | None = None) -> None:
        self.system = system
        self.turns: list[dict[str, str]] = []  # user / assistant, alternating, oldest first

    def messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns

    def reset(self) -> None:
        self.turns.clear()

    def add(self, role: str, content: str) -> None:
        self.turns.append({"role": role, "content": content})

    def prompt(self, backend: Backend, reserve: int) -> tuple[list[int], int]:
        """Prompt tokens for the conversation (its last turn is the user's) leaving ``reserve`` tokens for the
        answer; older user/assistant pairs are dropped until it fits. Returns (tokens, pairs dropped)."""
        dropped = 0
        while True:
            tokens = backend.chat_prompt_messages(self.messages())
            if len(tokens) + reserve <= backend.n_ctx or len(self.turns) <= 1:
                break
            del self.turns[:2]
            dropped += 1
        if len(tokens) >= backend.n_ctx:
            self.turns.pop()
            raise UsageError(f"the message needs {len(tokens)} tokens but the context holds {backend.n_ctx}",
                             "send a shorter message or raise --ctx")
        return tokens, dropped
