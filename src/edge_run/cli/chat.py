"""`edge-run chat`: an interactive multi-turn chat in the terminal, answers streamed as they are generated.

Lines are read as bytes (src/edge_run/cli/_line_reader.py: a paste of any length, nothing dropped); a line that
is not text in the terminal's encoding, or is too long for any context, is refused with one line and the
conversation goes on.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from edge_run.cli._cluster_open import CLUSTER_HELP
from edge_run.cli._line_reader import LineReader
from edge_run.core.errors import ArtifactError, EdgeRunError, UsageError
from edge_run.runtime.backends import Backend, GenerationParams
from edge_run.runtime.backends.speculative import DRAFT_HELP
from edge_run.runtime.conversation import Conversation
from edge_run.runtime.prompt import MAX_PROMPT_BYTES, check_prompt_size

HELP = "/reset clears the conversation, /system TEXT sets the system prompt, /exit leaves; " \
       "Ctrl-C stops an answer, Ctrl-D leaves"
PROMPT = ">>> "


def chat_command(
    artifact: Path = typer.Argument(None, help=".gguf file or ONNX artifact folder (omit with --profile)"),
    profile: str = typer.Option(None, "--profile", help="chat with the best artifact for this device profile"),
    models: Path = typer.Option(None, "--models", help="with --profile: folder of artifacts/checkpoints"),
    system: str = typer.Option(None, "--system", help="system prompt"),
    ctx: int = typer.Option(None, "--ctx", "-c", min=16, help="context length (default 2048 or the trained one)"),
    max_tokens: int = typer.Option(None, "--max-tokens", "-n", min=1, help="tokens per answer at most"),
    temperature: float = typer.Option(0.0, "--temp", min=0.0, max=2.0, help="0 = greedy"),
    top_p: float = typer.Option(0.95, "--top-p", min=0.0, max=1.0),
    seed: int = typer.Option(0, "--seed"),
    threads: int = typer.Option(None, "--threads", "-t", min=1, help="default: physical cores"),
    force: bool = typer.Option(False, "--force", help="load even if the memory estimate exceeds available memory"),
    cluster: str = typer.Option(None, "--cluster", help=CLUSTER_HELP),
    draft: str = typer.Option(None, "--draft", help=DRAFT_HELP),
) -> None:
    """Chat with a model in the terminal."""
    from edge_run.cli._cluster_open import open_model
    from edge_run.runtime.pick.resolve import resolve_artifact
    from edge_run.runtime.session import DEFAULT_CTX, SessionOptions

    if system is not None:
        system = checked_text(system, "--system", sys.getfilesystemencoding(), "pass {} text")
    path, pick_info = resolve_artifact(artifact, profile, models, ctx or DEFAULT_CTX)
    if pick_info and pick_info.get("note"):  # the best fit for the profile is not instruction-tuned
        print(f"note: {pick_info['note']}", file=sys.stderr, flush=True)
    params = GenerationParams(max_tokens=max_tokens or 1 << 30, temperature=temperature, top_p=top_p, seed=seed)
    model, _ = open_model(path, SessionOptions(ctx=ctx, threads=threads, force=force, seed=seed,
                                                    draft=draft or ""), cluster)
    with model as backend:
        if not backend.chat_template():
            raise ArtifactError(f"{path.name} has no chat template",
                                "use `edge-run run` for plain completion, or convert a checkpoint that has one")
        say(f"edge-run chat: {path.name} (ctx {backend.n_ctx}). {HELP}")
        _loop(backend, Conversation(system), params)


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def checked_text(text: str, what: str, encoding: str, hint: str) -> str:
    """``text`` if it is text and not too long; UsageError otherwise. Bytes that were not text in ``encoding``
    (argv, or a line read with errors="surrogateescape") arrive as lone surrogates."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        name = encoding.upper().replace("UTF8", "UTF-8")
        raise UsageError(f"{what} is not {name} text (character {e.start + 1})", hint.format(name)) from e
    check_prompt_size(text, what)
    return text


def _read_line(reader: LineReader) -> str | None:
    """One line from the user; None at the end of the input (Ctrl-D). Ctrl-C at the prompt only says how to
    leave; a line that is not text, or too long, is refused with one line and another is read."""
    while True:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            line = reader.read(PROMPT)
        except KeyboardInterrupt:
            say("\n(Ctrl-D or /exit leaves)")
            continue
        if line is None:
            say("")
            return None
        try:
            if line.too_long:
                raise UsageError(f"the line is larger than {MAX_PROMPT_BYTES // 2**20} MiB",
                                 "it was not sent: no model's context holds that much text")
            return checked_text(line.text, "the line", reader.encoding, "it was not sent: type it again")
        except UsageError as e:
            say(f"error: {e.one_line()}")


@dataclass(frozen=True)
class SlashCommand:
    run: Callable[[Conversation, str], bool]  # (conversation, the text after the command) -> leave the chat
    takes_text: bool = False


def _leave(conversation: Conversation, text: str) -> bool:
    return True


def _reset(conversation: Conversation, text: str) -> bool:
    conversation.reset()
    say("(conversation cleared)")
    return False


def _system(conversation: Conversation, text: str) -> bool:
    conversation.system = text or None
    conversation.reset()
    say("(system prompt set; conversation cleared)" if conversation.system else "(system prompt removed)")
    return False


# a command is its exact name, then whitespace and its text (if it takes one) or the end of the line
COMMANDS: dict[str, SlashCommand] = {
    "/exit": SlashCommand(_leave), "/quit": SlashCommand(_leave), "/bye": SlashCommand(_leave),
    "/reset": SlashCommand(_reset), "/system": SlashCommand(_system, takes_text=True),
}


def _command(conversation: Conversation, text: str) -> bool:
    """Run the slash command in ``text``; True when it leaves the chat."""
    parts = text.split(None, 1)
    name, rest = parts[0], parts[1].strip() if len(parts) > 1 else ""
    command = COMMANDS.get(name)
    if command is None:
        say(f"(unknown command {name}) {HELP}")
        return False
    if rest and not command.takes_text:
        say(f"({name} takes no text) {HELP}")
        return False
    return command.run(conversation, rest)


def _loop(backend: Backend, conversation: Conversation, params: GenerationParams) -> None:
    reserve = min(256, backend.n_ctx // 4)
    with LineReader(MAX_PROMPT_BYTES) as reader:
        _converse(backend, conversation, params, reader, reserve)


def _converse(backend: Backend, conversation: Conversation, params: GenerationParams, reader: LineReader,
              reserve: int) -> None:
    while (line := _read_line(reader)) is not None:
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            if _command(conversation, text):
                return
            continue
        conversation.add("user", line)
        try:
            tokens, dropped = conversation.prompt(backend, reserve)
        except EdgeRunError as e:
            say(f"error: {e.one_line()}")
            continue
        if dropped:
            say(f"(context full: dropped the oldest {dropped} turn{'s' if dropped > 1 else ''})")
        conversation.add("assistant", _answer(backend, tokens, params))


def _answer(backend: Backend, tokens: list[int], params: GenerationParams) -> str:
    """Stream one answer; Ctrl-C stops it at the next token and keeps what was said."""
    stop = threading.Event()

    def on_sigint(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_sigint)
    parts: list[str] = []
    for piece in backend.stream(tokens, params, cancel=stop.is_set):
        parts.append(piece)
        sys.stdout.write(piece)
        sys.stdout.flush()
    say(" [stopped]" if stop.is_set() else "")
    return "".join(parts)


def register(app: typer.Typer) -> None:
    app.command("chat")(chat_command)
