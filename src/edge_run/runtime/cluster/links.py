"""The host's TCP connections to its workers, seen from outside llama.cpp: who is silent, who hung up, cut them.

llama.cpp's RPC client (ggml-rpc.cpp) reads a worker's reply with a blocking recv() and no timeout, on one
dispatcher thread per worker: a worker that accepts and then says nothing (SIGSTOP, a hung board, a cable pulled
while the peer's kernel keeps the connection) leaves the host waiting forever. This module finds those sockets in
the process's own table (psutil: fd, peer address, state) and reads the kernel's view of each (TCP_INFO):

    a request pending    the host sent after the worker last sent (last_data_sent < last_data_recv, ms ago),
                         or bytes wait in the send queue (the worker stopped reading)
    stalled              pending, and nothing went either way for ``stall_s``
    hung up              CLOSE_WAIT: the worker closed its end (it died or restarted while the host was idle)

Cutting a connection (shutdown(2) on llama.cpp's own fd, which it keeps owning) wakes its blocked recv()/send()
with an error, and llama.cpp then takes its own failure path (GGML_ABORT -> native.on_rpc_abort): a stall ends
the way a lost worker does. The :class:`Watchdog` does this on a thread of its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import struct
import termios
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from edge_run.runtime.cluster.probe import split_endpoint

DEFAULT_STALL_S = 30.0  # no byte either way for this long while a reply is due: the worker is stalled
STALL_ENV = "EDGE_RUN_CLUSTER_STALL_S"
TICK_S = 0.25
# struct tcp_info (linux/tcp.h): 8 bytes of u8 fields, then u32 rto, ato, snd_mss, rcv_mss, unacked, sacked, lost,
# retrans, fackets, last_data_sent, last_ack_sent, last_data_recv, last_ack_recv
TCP_INFO_LAST_DATA = struct.Struct("<I4xI")  # last_data_sent (offset 44), last_data_recv (offset 52), in ms
TCP_INFO_OFFSET = 44
TCP_INFO_SIZE = 104


def stall_seconds() -> float:
    """The stall timeout: EDGE_RUN_CLUSTER_STALL_S or DEFAULT_STALL_S (a worker's longest legitimate silence is
    one graph of n_ubatch tokens through its layers)."""
    try:
        value = float(os.environ.get(STALL_ENV, DEFAULT_STALL_S))
    except ValueError:
        return DEFAULT_STALL_S
    return value if value > 0 else DEFAULT_STALL_S


@dataclass(frozen=True)
class Link:
    endpoint: str  # the worker, as the cluster spec names it
    fd: int
    hung_up: bool  # CLOSE_WAIT: the worker closed its end


@dataclass(frozen=True)
class LinkState:
    pending: bool
    idle_ms: int  # since anything was sent or received


def resolve(endpoints: Iterable[str]) -> dict[tuple[str, int], str]:
    """(ip, port) -> endpoint, for matching the process's sockets against the workers (names resolved once)."""
    peers: dict[tuple[str, int], str] = {}
    for endpoint in endpoints:
        host, port = split_endpoint(endpoint)
        with contextlib.suppress(OSError):
            for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
                peers[(str(info[4][0]), port)] = endpoint
    return peers


def links(peers: dict[tuple[str, int], str]) -> list[Link]:
    """This process's open TCP connections to the workers (llama.cpp's and any others)."""
    import psutil

    found = []
    for c in psutil.Process().net_connections(kind="tcp"):
        if c.fd < 0 or not c.raddr:
            continue
        ip = c.raddr.ip.removeprefix("::ffff:")
        endpoint = peers.get((ip, c.raddr.port))
        if endpoint is not None and c.status in (psutil.CONN_ESTABLISHED, psutil.CONN_CLOSE_WAIT):
            found.append(Link(endpoint, c.fd, c.status == psutil.CONN_CLOSE_WAIT))
    return found


def _borrow(fd: int) -> socket.socket:
    return socket.socket(fileno=fd)  # detach() before it is dropped: the fd stays llama.cpp's


def state(fd: int) -> LinkState | None:
    """The kernel's view of one connection (None when the fd is gone or not TCP any more)."""
    try:
        s = _borrow(fd)
    except OSError:
        return None
    try:
        raw = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_SIZE)
        queued = struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    except OSError:
        return None
    finally:
        s.detach()
    sent, received = TCP_INFO_LAST_DATA.unpack_from(raw, TCP_INFO_OFFSET)
    return LinkState(pending=sent < received or queued > 0, idle_ms=min(sent, received))


def cut(fd: int) -> None:
    """shutdown(2) a connection llama.cpp owns: its blocked recv()/send() fails and its own error path runs."""
    with contextlib.suppress(OSError):
        s = _borrow(fd)
        try:
            s.shutdown(socket.SHUT_RDWR)
        finally:
            s.detach()


def cut_all(peers: dict[tuple[str, int], str], endpoint: str | None = None) -> int:
    """Cut every connection to ``endpoint`` (None: to every worker); how many were cut."""
    chosen = [link for link in links(peers) if endpoint is None or link.endpoint == endpoint]
    for link in chosen:
        cut(link.fd)
    return len(chosen)


class Watchdog:
    """While :meth:`watching` (a load or a generation; ``always``: at all times), a connection with a reply due
    and no byte either way for ``stall_s`` is reported to ``on_stall(endpoint, seconds)`` and cut; at any time,
    a connection the worker hung up is reported to ``on_hang_up(endpoint)`` (once per endpoint until :meth:`reset`)."""

    def __init__(self, endpoints: Iterable[str], stall_s: float, on_stall: Callable[[str, float], None],
                 on_hang_up: Callable[[str], None] | None = None, always: bool = False) -> None:
        self.always = always
        self.peers = resolve(endpoints)
        self.stall_s = stall_s
        self.on_stall, self.on_hang_up = on_stall, on_hang_up
        self._busy = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._told: set[str] = set()
        self._thread = threading.Thread(target=self._loop, name="edge-run-cluster-watchdog", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        with self._lock:
            self._busy += 1
        try:
            yield
        finally:
            with self._lock:
                self._busy -= 1

    def reset(self) -> None:
        self._told.clear()

    def stop(self) -> None:
        self._stop.set()

    def check(self) -> None:
        """One look at every connection (the thread calls this every TICK_S)."""
        for link in links(self.peers):
            if link.endpoint in self._told:
                continue
            if link.hung_up:
                if self.on_hang_up is not None:
                    self._told.add(link.endpoint)
                    self.on_hang_up(link.endpoint)
                continue
            if not (self._busy or self.always):
                continue
            now = state(link.fd)
            if now is not None and now.pending and now.idle_ms >= self.stall_s * 1000:
                self._told.add(link.endpoint)
                self.on_stall(link.endpoint, now.idle_ms / 1000)
                cut_all(self.peers, link.endpoint)

    def _loop(self) -> None:
        while not self._stop.wait(TICK_S):
            try:
                self.check()
            except Exception:  # psutil racing a closing fd: look again at the next tick
                continue
