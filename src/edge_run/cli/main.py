"""Entry point: builds the typer app from the command modules and maps errors to exit codes once.

Each command module exposes ``register(app: typer.Typer) -> None``. A new command group is one
row in ``COMMAND_MODULES``.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import sys
from typing import NoReturn

import typer

from edge_run.cli import _common
from edge_run.core import planning
from edge_run.core.errors import EdgeRunError, ResourceError
from edge_run.core.fsutil import install_signal_handlers

COMMAND_MODULES: tuple[str, ...] = (
    "convert",
    "run",
    "inspect",
    "profiles",
    "pick",
    "eval",
    "bench",
    "bundle",
    "verify",
    "serve",
    "chat",
    "worker",
    "cluster",
)



def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("edge-run")
        except PackageNotFoundError:  # run from a source tree that was never installed
            number = "unknown (not installed)"
        print(f"edge-run {number}")
        raise typer.Exit()


def _root(
    show_version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                      help="Print edge-run's version and exit."),
) -> None:
    """The options before the command."""


def _say(line: str) -> None:
    """One line on stderr (errors): plain text, so nothing heavier than the standard library is imported."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def invoked_command(argv: list[str] | None) -> str | None:
    """The command module named on the command line, if any (the first argument that is not an option)."""
    args = sys.argv[1:] if argv is None else argv
    first = next((a for a in args if not a.startswith("-")), None)
    return first if first in COMMAND_MODULES else None


def build_app(only: str | None = None) -> typer.Typer:
    """The CLI with every command, or with ``only`` that one: a command imports its own libraries, so running
    one never pays for importing all the others (seconds on a Raspberry Pi)."""
    app = typer.Typer(
        name="edge-run",
        help="Offline edge inference: convert, pick, run, evaluate.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    # the callback also keeps a single registered command a sub-command (typer would run it without its name)
    app.callback()(_root)

    planning.use(planning.GGUF_CONVERTER)  # the command layer composes runtime and converters (imported if used)
    # a missing or mistyped command module is a bug: it fails loudly
    for name in (only,) if only is not None else COMMAND_MODULES:
        module = importlib.import_module(f"{__package__}.{name}")
        register = getattr(module, "register", None)
        if not callable(register):
            raise ImportError(f"command module {module.__name__} has no register(app) function")
        register(app)
    return app


def debug_enabled() -> bool:
    return os.environ.get("EDGE_RUN_DEBUG", "") not in ("", "0")


# Libraries whose log warnings speak to their own developers, not to an edge-run user (EDGE_RUN_DEBUG=1 shows
# them): gguf-py's SpecialVocab warns about tokenizer.json's pair template ("Unknown separator token '<bos>' in
# TemplateProcessing<pair>", Gemma 3), which only matters for encoding sentence pairs; edge-run never does.
QUIET_LOGGERS: tuple[str, ...] = ("gguf",)


def _quiet_library_logs() -> None:
    """Without a handler, Python's logging prints a library's warnings on stderr (its last-resort handler)."""
    if debug_enabled():
        return
    import logging

    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


OUT_OF_MEMORY = (b"error: out of memory. free memory, raise the memory limit (ulimit -v, the container's "
                 b"memory.max) or pick a smaller artifact\n")


def _no_memory_to_load(e: ImportError) -> bool:
    """dlopen's ENOMEM, as an extension module's import reports it under `ulimit -v`."""
    text = str(e)
    return "failed to map segment" in text or "Cannot allocate memory" in text


EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader went away


def _usable_std_streams() -> None:
    """A closed stdout/stderr (`run ... >&-`) becomes /dev/null, and text the terminal's encoding cannot spell
    (PYTHONIOENCODING=ascii, LC_ALL=C) is escaped instead of failing in the middle of the output."""
    for fd, name in ((1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_WRONLY)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            setattr(sys, name, open(fd, "w", closefd=False))
        stream = getattr(sys, name)
        if isinstance(stream, io.TextIOWrapper) and stream.errors == "strict":
            stream.reconfigure(errors="backslashreplace")


def _stdout_to_devnull() -> None:
    """Point fd 1 at /dev/null, so that no later flush (the interpreter's last) fails again and prints to stderr."""
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)


def _reader_went_away() -> int:
    """stdout's reader closed the pipe (`| head`): a normal end."""
    _stdout_to_devnull()
    return EXIT_BROKEN_PIPE


def _output_lost() -> int:
    """stdout could not take the output (a full disk): a resource error."""
    _stdout_to_devnull()
    return ResourceError.exit_code


def main(argv: list[str] | None = None) -> int:
    install_signal_handlers()
    _usable_std_streams()
    _quiet_library_logs()
    try:
        app = build_app(invoked_command(argv))
        app(args=argv, standalone_mode=False)
    except BrokenPipeError:
        return _reader_went_away()
    except SystemExit as e:  # click turns EPIPE into exit(1) itself
        if isinstance(e.__context__, BrokenPipeError):
            return _reader_went_away()
        raise
    except EdgeRunError as e:
        if debug_enabled():
            raise
        _say(f"error: {e.one_line()}")
        return e.exit_code
    except MemoryError:  # written without rich: formatting needs memory too
        os.write(2, OUT_OF_MEMORY)
        return 4
    except KeyboardInterrupt:
        _say("error: interrupted")
        return 130
    except Exception as e:  # click usage errors and genuine bugs
        import click
        from typer.exceptions import TyperException

        # typer >= 0.20 ships its own copy of click: its exceptions are not click's classes
        if isinstance(e, (click.exceptions.Exit, typer.Exit)):
            return e.exit_code
        if isinstance(e, (click.ClickException, TyperException)) and hasattr(e, "format_message"):
            if debug_enabled():
                raise
            message = " ".join(e.format_message().split())
            if message:  # empty after no_args_is_help has printed the help
                _say(f"error: {message.rstrip('.')}. See `edge-run --help`")
            return 2
        if isinstance(e, (click.exceptions.Abort, typer.Abort)):
            _say("error: aborted")
            return 130
        if isinstance(e, ImportError) and _no_memory_to_load(e) and not debug_enabled():
            os.write(2, OUT_OF_MEMORY)  # a library imported on first use found no address space to map into
            return 4
        if debug_enabled():
            raise
        _say(f"error: internal error ({type(e).__name__}: {' '.join(str(e).split())}); "
             "rerun with EDGE_RUN_DEBUG=1 for a traceback and report it")
        return 1
    return 0


def end_process(code: int) -> NoReturn:
    """Exit with ``code`` as soon as the command's output is out, skipping the interpreter's teardown.

    When main() returns, every file edge-run wrote is closed and in place; the teardown left is freeing memory
    the kernel reclaims anyway: the model (llama.cpp's destructors; see _common.closed_or_left_to_exit), numpy's
    BLAS threads, thousands of module objects. That is ~50 ms of a ~0.45 s `edge-run run` here. What must still
    happen does: Python's stdout and stderr are flushed (a reader that went away: exit 141, as main()), atexit
    handlers run, and C stdio buffers are flushed. With a Python thread other than the main one still running
    (its work may be unfinished), the normal exit joins it instead."""
    import atexit
    import threading

    try:
        sys.stdout.flush()
    except BrokenPipeError:
        code = _reader_went_away()
    except OSError as e:  # `> file` on a full disk: the last buffered output could not be written
        _say(f"error: could not write the output ({e.strerror or e}). free space, or write it elsewhere")
        code = _output_lost()
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
    if threading.active_count() > 1:
        sys.exit(code)
    atexit._run_exitfuncs()
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None).fflush(None)  # C stdio (a library's printf) as exit() would
    os._exit(code)


def entry() -> NoReturn:
    """The process entry (the `edge-run` console script, `python -m edge_run.cli.main`)."""
    _common.process_ends_after_command = True
    end_process(main())


if __name__ == "__main__":  # pragma: no cover
    entry()
