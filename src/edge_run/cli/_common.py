"""Small helpers shared by the command modules (console, progress bars, JSON output, models left to the exit).

``console`` and ``err_console`` are made on first use (PEP 562 module ``__getattr__``): rich costs ~50 ms to import,
which `edge-run run` (plain text or JSON on stdout) never needs."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    console: Console
    err_console: Console

_consoles: dict[str, Any] = {}
# set by the process entry (main.entry): the process ends as soon as the command returns, without tearing the
# interpreter down; in-process callers of main() (tests, embedding) leave it False and every model is closed
process_ends_after_command = False
_left_to_exit: list[Any] = []


@contextmanager
def closed_or_left_to_exit(resource: Any) -> Iterator[Any]:
    """``resource`` (a backend) for a command's body, then closed, unless the process ends right after the
    command: then it stays open and the kernel reclaims it at exit. Freeing a model in llama.cpp takes its
    destructors and munmaps (SmolLM2-135M: ~20 ms here, several times that on a Pi core) for memory the
    process's exit frees anyway."""
    try:
        yield resource
    finally:
        if process_ends_after_command:
            _left_to_exit.append(resource)  # referenced until the end: no finalizer frees it in between
        else:
            resource.close()


def _make_console(name: str) -> Any:
    from rich.console import Console

    if name == "console":
        out = Console(highlight=False)
        if not out.is_terminal:  # piped output: don't squeeze tables into 80 columns
            out.width = 160
        return out
    return Console(stderr=True, highlight=False)


def __getattr__(name: str) -> Any:
    if name in ("console", "err_console"):
        if name not in _consoles:
            _consoles[name] = _make_console(name)
        return _consoles[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


@contextmanager
def progress_bars(enabled: bool = True) -> Iterator[Callable[[str, int, int], None]]:
    """Yield a ``progress(stage, done, total)`` callback drawing one bar per stage on stderr."""
    if not enabled:
        yield lambda stage, done, total: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bars = Progress(TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=__getattr__("err_console"), transient=False)
    tasks: dict[str, Any] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bars.add_task(stage, total=total)
        bars.update(tasks[stage], completed=done, total=total)

    with bars:
        yield update
