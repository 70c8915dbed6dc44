"""Run the app under uvicorn on a socket bound here (so a busy port is one clear error, and --port 0 works).

Shutdown (SIGTERM / SIGINT): uvicorn stops accepting; before that our hook closes the worker, so the running
generation stops at its next token and its stream ends with a final chunk and ``[DONE]``; waiting requests and
requests still being prepared (a chat template that takes its time) get 503 at once; uvicorn then waits for the
open responses (all ending within one token) and returns. The signal always ends the process: from the first
one on, a second SIGTERM / SIGINT is left to the kernel (the default action: the process ends, whatever Python
is doing), and so is SIGALRM, armed for STOP_DEADLINE_S: a shutdown that hangs ends there.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import signal
import socket
from collections.abc import Callable
from typing import Any

import uvicorn

from edge_run.core.errors import ResourceError, UsageError
from edge_run.runtime.serve.app import SHUTDOWN_GRACE_S, ServerState, build_app

STOP_DEADLINE_S = 30  # uvicorn waits up to 2 x SHUTDOWN_GRACE_S for responses, then the threads' joins
EXIT_SIGNALS = (signal.SIGINT, signal.SIGTERM)
PREPARE_JOIN_S = 2.0  # tokenizing a 1 MiB body takes well under that; a template that runs longer is abandoned

LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def startup_lines(host: str, url: str, model_id: str, n_ctx: int, queue: int, api_key: str | None,
                  slots: int = 1) -> list[str]:
    """What `edge-run serve` says once it listens: one warning line when it is reachable from the network
    without a key, then where it serves."""
    lines = []
    if not is_loopback(host) and api_key is None:
        lines.append(f"warning: listening on {host} without --api-key: anyone on the network can use the model")
    parallel = f"{slots} slots of ctx {n_ctx}" if slots > 1 else f"ctx {n_ctx}"
    lines.append(f"edge-run serve: {model_id} on {url}/v1 ({parallel}, queue {queue}"
                 f"{', API key required' if api_key else ''}); Ctrl-C stops")
    return lines


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (numeric addresses or localhost only: no name lookups)."""
    address = "127.0.0.1" if host == "localhost" else host
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    except ValueError as e:
        raise UsageError(f"--host {host!r} is not an IP address", "pass an address such as 127.0.0.1 or 0.0.0.0") \
            from e
    if not 0 <= port <= 65535:
        raise UsageError(f"--port {port} is out of range", "pass a port between 1 and 65535 (0: any free port)")
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        what = {errno.EADDRINUSE: "the port is in use", errno.EACCES: "permission denied",
                errno.EADDRNOTAVAIL: "the address is not on this machine"}.get(e.errno or 0, e.strerror)
        raise ResourceError(f"cannot listen on {host}:{port} ({what})",
                            "choose another --port or --host, or stop the program using it") from e
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None], on_ready: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit, self._on_ready = on_exit, on_ready

    def handle_exit(self, sig: int, frame: Any) -> None:
        for other in EXIT_SIGNALS:  # the next one is not for Python to handle: it ends the process
            signal.signal(other, signal.SIG_DFL)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(STOP_DEADLINE_S)
        self._on_exit()
        super().handle_exit(sig, frame)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._on_ready()


def run_server(state: ServerState, sock: socket.socket, on_ready: Callable[[], None]) -> None:
    """Serve until SIGTERM / SIGINT; returns normally after a clean shutdown."""
    config = uvicorn.Config(build_app(state), log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=int(SHUTDOWN_GRACE_S * 2), server_header=False)
    server = _Server(config, on_exit=state.close, on_ready=on_ready)
    # uvicorn re-raises the signal it caught once it has shut down; with the signals ignored until then, that
    # re-raise is a no-op and the process exits 0 (edge-run's own handlers would turn it into exit 130)
    saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (*EXIT_SIGNALS, signal.SIGALRM)}
    state.worker.start()
    try:
        asyncio.run(server.serve(sockets=[sock]))
    finally:
        state.close()
        state.worker.join(timeout=SHUTDOWN_GRACE_S)
        state.preparer.join(timeout=PREPARE_JOIN_S)  # a thread still tokenizing uses the model
        signal.alarm(0)
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        sock.close()
