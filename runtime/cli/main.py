"""Entry point: builds the typer app from the command modules and maps errors to exit codes once.

Each command module exposes ``register(app: typer.Typer) -> None``. A new command group is one
row in ``COMMAND_MODULES``.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer
from rich.console import Console

from ..errors import EdgeRunError
from ..fsutil import install_signal_handlers

COMMAND_MODULES: tuple[str, ...] = (
    "convert",
    "run",
    "inspect",
    "profiles",
    "pick",
    "eval",
    "bench",
    "bundle",
)

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="edge-run",
        help="Offline edge inference: convert, pick, run, evaluate.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__package__}.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"{__package__}.{name}":
                continue  # command group not built yet
            raise
        module.register(app)
    return app


def debug_enabled() -> bool:
    return os.environ.get("EDGE_RUN_DEBUG", "") not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    install_signal_handlers()
    app = build_app()
    try:
        app(args=argv, standalone_mode=False)
    except EdgeRunError as e:
        if debug_enabled():
            raise
        err_console.print(f"error: {e.one_line()}", markup=False)
        return e.exit_code
    except KeyboardInterrupt:
        err_console.print("error: interrupted", markup=False)
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
                err_console.print(f"error: {message.rstrip('.')}. See `edge-run --help`", markup=False)
            return 2
        if isinstance(e, (click.exceptions.Abort, typer.Abort)):
            err_console.print("error: aborted", markup=False)
            return 130
        if debug_enabled():
            raise
        err_console.print(
            f"error: internal error ({type(e).__name__}: {' '.join(str(e).split())}); "
            "rerun with EDGE_RUN_DEBUG=1 for a traceback and report it",
            markup=False,
        )
        return 1
    return 0


def entry() -> None:  # pragma: no cover - console script shim
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
