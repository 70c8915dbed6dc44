"""`edge-run chat`: an interactive multi-turn chat in the terminal, answers streamed as they are generated."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any

import typer

from edge_run.core.errors import ArtifactError, EdgeRunError
from edge_run.runtime.backends import Backend, GenerationParams
from edge_run.runtime.chat.conversation import Conversation

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
) -> None:
    """Chat with a model in the terminal."""
    from edge_run.runtime.session import SessionOptions, open_session, resolve_artifact

    path, _ = resolve_artifact(artifact, profile, models, ctx)
    params = GenerationParams(max_tokens=max_tokens or 1 << 30, temperature=temperature, top_p=top_p, seed=seed)
    with open_session(path, SessionOptions(ctx=ctx, threads=threads, force=force, seed=seed)) as backend:
        if not backend.chat_template():
            raise ArtifactError(f"{path.name} has no chat template",
                                "use `edge-run run` for plain completion, or convert a checkpoint that has one")
        say(f"edge-run chat: {path.name} (ctx {backend.n_ctx}). {HELP}")
        _loop(backend, Conversation(system), params)


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _read_line() -> str | None:
    """One line from the user; None on Ctrl-D. Ctrl-C at the prompt only says how to leave."""
    while True:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            return input(PROMPT)
        except EOFError:
            say("")
            return None
        except KeyboardInterrupt:
            say("\n(Ctrl-D or /exit leaves)")


def _loop(backend: Backend, conversation: Conversation, params: GenerationParams) -> None:
    reserve = min(256, backend.n_ctx // 4)
    while (line := _read_line()) is not None:
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit", "/bye"):
            return
        if text == "/reset":
            conversation.reset()
            say("(conversation cleared)")
            continue
        if text.startswith("/system"):
            conversation.system = text[len("/system"):].strip() or None
            conversation.reset()
            say("(system prompt set; conversation cleared)" if conversation.system else "(system prompt removed)")
            continue
        if text.startswith("/"):
            say(f"(unknown command {text.split()[0]}) {HELP}")
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
