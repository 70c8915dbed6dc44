"""`edge-run worker`: one board's share of a split model, served by llama.cpp's own RPC server.

Loopback without --allow (the default): llama.cpp's server listens on --host:--port itself, nothing in between.
With --allow (required for any other --host):

    hosts ──TCP──▶ front (--host:--port, Python)          checks the peer against --allow, one host at a time
                     │ relays bytes, unchanged
                     ▼
                 llama.cpp's RPC server (127.0.0.1:private port, ggml_backend_rpc_start_server over the CPU)

The RPC protocol has no authentication, so the front decides who gets through before a single byte reaches
llama.cpp: a peer outside --allow (loopback included: --allow lists every address that may connect) is closed
unanswered; a second host while one is served gets ``probe.BUSY_BANNER`` and is closed (llama.cpp would leave it
waiting in its backlog). Processes on the worker's own machine can still reach the private port.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from edge_run.core.errors import ClusterError, UsageError
from edge_run.runtime.cluster import native
from edge_run.runtime.cluster.probe import BUSY_BANNER

DEFAULT_PORT = 50052
BUSY_GRACE_S = 2.0  # a host reconnects right after closing: wait this long for its previous connection to end
START_TRIES = 3
RELAY_CHUNK = 1 << 20
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class WorkerOptions:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    threads: int = 1
    cache: str | None = None
    allow: tuple[IpNetwork, ...] = field(default_factory=tuple)


def parse_allow(values: Sequence[str]) -> tuple[IpNetwork, ...]:
    nets = []
    for value in values:
        try:
            nets.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError as e:
            raise UsageError(f"--allow {value!r} is not an address or network",
                             "write an address (10.0.0.5) or a CIDR network (10.0.0.0/24)") from e
    return tuple(nets)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def check_options(options: WorkerOptions) -> None:
    if not is_loopback(options.host) and not options.allow:
        raise UsageError(f"--host {options.host} exposes the worker, and llama.cpp's RPC protocol has no "
                         "authentication", "name the hosts that may connect: --allow 10.0.0.2 or --allow 10.0.0.0/24")
    if not 0 < options.port < 65536:
        raise UsageError(f"--port {options.port} is not a TCP port", "choose 1-65535")


def exposure_warning(options: WorkerOptions) -> str | None:
    """The one line a worker on a LAN address states (None on loopback)."""
    if is_loopback(options.host):
        return None
    nets = ", ".join(str(n) for n in options.allow)
    return (f"warning: {options.host}:{options.port} is open to {nets} without authentication (llama.cpp's RPC "
            "protocol has none): every host there can use this board's memory and CPU")


def allowed(peer: str, allow: Sequence[IpNetwork]) -> bool:
    try:
        addr = ipaddress.ip_address(peer.split("%")[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in allow)


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Copy bytes from ``src`` to ``dst`` until either closes; then shut both down, which ends the other pump."""
    view = memoryview(bytearray(RELAY_CHUNK))
    try:
        while n := src.recv_into(view):
            dst.sendall(view[:n])
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def _relay(a: socket.socket, b: socket.socket) -> None:
    """Both directions at once, one thread each (a request may be in flight while a reply is being read)."""
    back = threading.Thread(target=_pump, args=(b, a), daemon=True)
    back.start()
    _pump(a, b)
    back.join()


class Worker:
    """The front and llama.cpp's server; :meth:`serve` blocks until :meth:`stop` or a signal's exception."""

    def __init__(self, options: WorkerOptions, say: Callable[[str], None] | None = None) -> None:
        check_options(options)
        self.options = options
        self.say = say or (lambda line: None)
        self.runtime = native.load_rpc()
        self.private_port = 0
        self._listener: socket.socket | None = None
        self._active: socket.socket | None = None
        self._slot = threading.Condition()
        self._stopping = threading.Event()
        self._started = False

    @property
    def protocol(self) -> str:
        return self.runtime.build.protocol_text

    @property
    def fronted(self) -> bool:
        return bool(self.options.allow)

    def _start_llama_server(self, host: str, port: int) -> bool:
        """llama.cpp's server at host:port (a thread inside C for the process's life); False when it could not
        listen there."""
        thread = threading.Thread(target=native.start_server, name="llama-rpc-server", daemon=True,
                                  args=(f"{host}:{port}", self.options.threads, self.options.cache))
        thread.start()
        deadline = time.monotonic() + 30.0
        while thread.is_alive() and time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1.0):
                return True
            time.sleep(0.05)
        return False

    def _listen(self) -> socket.socket:
        host, port = self.options.host, self.options.port
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise UsageError(f"--host {host!r} is not an address of this machine", "use an IP address") from e
        family, _, _, _, addr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
            sock.listen(16)
        except OSError as e:
            sock.close()
            raise ClusterError(f"cannot listen on {host}:{port} ({e.strerror or e})",
                               "another worker or program uses the port: choose another --port") from e
        return sock

    def start(self) -> None:
        self._started = True
        if not self.fronted:
            self._listen().close()  # a taken port is a one-line error before llama.cpp tries it
            if not self._start_llama_server(self.options.host, self.options.port):
                raise ClusterError(f"llama.cpp's RPC server could not listen on {self.options.host}:"
                                   f"{self.options.port}", "choose another --port (EDGE_RUN_DEBUG=1 shows its log)")
            return
        self._listener = self._listen()
        for _ in range(START_TRIES):
            port = _free_loopback_port()
            if self._start_llama_server("127.0.0.1", port):
                self.private_port = port
                return
        raise ClusterError("llama.cpp's RPC server did not start", "rerun with EDGE_RUN_DEBUG=1 to see its log")

    def serve(self) -> None:
        """Accept hosts until :meth:`stop` (or a signal handler's exception in the calling thread)."""
        if not self._started:
            self.start()
        if self._listener is None:  # llama.cpp serves the port itself: wait for stop() or a signal
            while not self._stopping.wait(0.5):
                pass
            return
        self._listener.settimeout(0.5)  # the loop wakes to notice stop() and lets signal handlers run
        while not self._stopping.is_set():
            try:
                conn, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    break
                raise
            threading.Thread(target=self._handle, args=(conn, peer[0]), daemon=True).start()

    def _claim(self, conn: socket.socket) -> bool:
        with self._slot:
            self._slot.wait_for(lambda: self._active is None, timeout=BUSY_GRACE_S)
            if self._active is not None:
                return False
            self._active = conn
            return True

    def _handle(self, conn: socket.socket, peer: str) -> None:
        with contextlib.closing(conn):
            if not allowed(peer, self.options.allow):
                self.say(f"refused {peer}: not in --allow")
                return
            if not self._claim(conn):
                self.say(f"refused {peer}: busy serving another host")
                with contextlib.suppress(OSError):
                    conn.sendall(BUSY_BANNER)
                return
            try:
                with socket.create_connection(("127.0.0.1", self.private_port), timeout=5.0) as backend:
                    backend.settimeout(None)
                    for s in (conn, backend):
                        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    _relay(conn, backend)
            except OSError as e:
                self.say(f"could not reach llama.cpp's server for {peer} ({e.strerror or e})")
            finally:
                with self._slot:
                    self._active = None
                    self._slot.notify_all()

    def stop(self) -> None:
        self._stopping.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()


def silence_llama_stdout() -> int:
    """llama.cpp's server printf()s a line per connection; point fd 1 at /dev/null and return a duplicate of the
    real stdout for edge-run's own lines."""
    keep = os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)
    return keep
