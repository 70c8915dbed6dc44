"""`edge-run worker`: serve this board's memory and CPU to a --cluster host through llama.cpp's RPC server."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from edge_run.core.errors import Interrupted
from edge_run.runtime.backends.base import physical_cores


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def worker(
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (a LAN address needs --allow)"),
    port: int = typer.Option(50052, "--port", help="TCP port"),
    threads: int = typer.Option(None, "--threads", "-t", min=1, max=512, help="default: this board's cores"),
    cache: Path = typer.Option(None, "--cache", help="llama.cpp's RPC tensor cache folder (faster reloads)"),
    allow: list[str] = typer.Option(None, "--allow", help="address or CIDR network that may connect (repeatable); "
                                                           "loopback always may"),
) -> None:
    """Serve llama.cpp's RPC backend for `run --cluster` hosts until SIGTERM / Ctrl-C."""
    from edge_run.core import __version__
    from edge_run.runtime.cluster import build, native
    from edge_run.runtime.cluster import worker as lib

    options = lib.WorkerOptions(host=host, port=port, threads=threads or physical_cores(),
                                cache=str(cache) if cache else None, allow=lib.parse_allow(allow or []))
    lib.check_options(options)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    if native.bundled_rpc_library() is None and build.cached_rpc_library() is None:
        sys.stderr.write("building llama.cpp's RPC library for this llama-cpp-python (once, about half a minute)\n")
    if not os.environ.get("EDGE_RUN_DEBUG"):  # llama.cpp's server prints a line per connection to fd 1
        sys.stdout.flush()
        sys.stdout = open(lib.silence_llama_stdout(), "w", encoding="utf-8", errors="backslashreplace",
                          closefd=True)
    server = lib.Worker(options, say=_say)
    try:
        server.start()
        warning = lib.exposure_warning(options)
        if warning:
            sys.stderr.write(warning + "\n")
        _say(f"edge-run {__version__} worker, llama.cpp RPC protocol {server.protocol} (ggml "
             f"{server.runtime.build.ggml_version}): {options.threads} threads, listening on {host}:{port}")
        server.serve()
    except (Interrupted, KeyboardInterrupt):  # SIGTERM / Ctrl-C, at any point after the start
        server.stop()
        _say("worker stopped")
    sys.stderr.flush()
    os._exit(0)  # llama.cpp's server thread is inside C's accept(): nothing to join or tear down


def register(app: typer.Typer) -> None:
    app.command("worker")(worker)
