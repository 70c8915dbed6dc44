"""Talk to a worker in Python before llama.cpp does: llama.cpp aborts the whole process on a worker that is down,
of another protocol or silent; this turns each of those into one ClusterError naming the node.

The wire format (ggml-rpc.cpp, protocol 7): a request is ``cmd u8 | size u64 | payload``, a reply
``size u64 | payload``, little-endian, on one TCP connection that starts with HELLO:

    HELLO (14)              payload conn_caps[24] (zeros: plain TCP)     reply major, minor, patch, pad, caps[24]
    DEVICE_COUNT (15)       no payload                                   reply u32
    GET_DEVICE_MEMORY (11)  u32 device                                   reply free u64, total u64

A server serves one connection at a time; the probe closes its own before llama.cpp connects.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from dataclasses import dataclass

from edge_run.core.errors import ClusterError

CMD_GET_DEVICE_MEMORY = 11
CMD_HELLO = 14
CMD_DEVICE_COUNT = 15
CONN_CAPS = 24
HELLO_REPLY = 4 + CONN_CAPS
BUSY_BANNER = b"EDGE-RUN-WORKER-BUSY\n"  # worker.py's front says this to a client while another one is served
DEFAULT_TIMEOUT_S = 5.0
RTT_ROUNDS = 5


@dataclass(frozen=True)
class WorkerInfo:
    endpoint: str
    protocol: tuple[int, int, int]
    devices: int
    free_bytes: int
    total_bytes: int
    rtt_ms: float  # median round trip of DEVICE_COUNT (a request and its 12-byte reply)

    def to_dict(self) -> dict[str, object]:
        return {"endpoint": self.endpoint, "protocol": ".".join(map(str, self.protocol)), "devices": self.devices,
                "free_mib": round(self.free_bytes / 2**20, 1), "total_mib": round(self.total_bytes / 2**20, 1),
                "rtt_ms": round(self.rtt_ms, 3)}


BUSY_HINT = "a worker serves one host at a time; stop the other host or start another worker"


def _recv_exact(sock: socket.socket, n: int, endpoint: str, what: str) -> bytes:
    data = bytearray()
    while len(data) < n:
        try:
            chunk = sock.recv(n - len(data))
        except TimeoutError as e:
            raise ClusterError(f"{endpoint} accepted the connection but sent no {what} within {sock.gettimeout():g} s",
                               "it is stalled, serving another host, or not an edge-run worker") from e
        except ConnectionResetError:  # closed with our request unread: a refusal like any other close
            break
        except OSError as e:
            raise ClusterError(f"{endpoint} dropped the connection ({e.strerror or e})",
                               "is it an edge-run worker? check the port") from e
        if not chunk:
            break
        data += chunk
    if len(data) < n:
        if data and BUSY_BANNER.startswith(bytes(data)):
            raise ClusterError(f"the worker at {endpoint} is busy serving another host", BUSY_HINT)
        raise ClusterError(f"{endpoint} closed the connection without an RPC {what}",
                           "it is not an edge-run worker, or its --allow does not list this host")
    return bytes(data)


def _request(sock: socket.socket, cmd: int, payload: bytes, reply_size: int, endpoint: str, what: str) -> bytes:
    try:
        sock.sendall(struct.pack("<BQ", cmd, len(payload)) + payload)
    except OSError as e:
        raise ClusterError(f"{endpoint} dropped the connection ({e.strerror or e})") from e
    head = _recv_exact(sock, 8, endpoint, what)
    if BUSY_BANNER.startswith(head):
        raise ClusterError(f"the worker at {endpoint} is busy serving another host", BUSY_HINT)
    (size,) = struct.unpack("<Q", head)
    if size != reply_size:
        shown = head.decode("ascii", "replace").split("\n")[0].strip()
        raise ClusterError(f"{endpoint} is not an llama.cpp RPC worker of this protocol (its {what} is {size} bytes, "
                           f"not {reply_size}; it began {shown!r})",
                           "check the port, and run the same edge-run version on every node")
    return _recv_exact(sock, reply_size, endpoint, what)


def split_endpoint(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


def connect(endpoint: str, timeout: float) -> socket.socket:
    host, port = split_endpoint(endpoint)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except TimeoutError as e:
        raise ClusterError(f"no answer from {endpoint} within {timeout:g} s", "is the board on and reachable?") from e
    except socket.gaierror as e:
        raise ClusterError(f"unknown host {host!r} in {endpoint}", "check the name or use the IP address") from e
    except OSError as e:
        raise ClusterError(f"cannot connect to the worker at {endpoint} ({e.strerror or e})",
                           "start it there: edge-run worker --host ADDRESS --port PORT") from e
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def hello(sock: socket.socket, endpoint: str, protocol: tuple[int, int, int]) -> tuple[int, int, int]:
    """HELLO; ClusterError unless the worker speaks ``protocol`` (llama.cpp's rule: same major, minor not newer)."""
    reply = _request(sock, CMD_HELLO, bytes(CONN_CAPS), HELLO_REPLY, endpoint, "hello reply")
    theirs = (reply[0], reply[1], reply[2])
    if theirs[0] != protocol[0] or theirs[1] > protocol[1]:
        raise ClusterError(f"the worker at {endpoint} speaks RPC protocol {'.'.join(map(str, theirs))}, this host "
                           f"{'.'.join(map(str, protocol))}", "run the same edge-run version on every node")
    return theirs


def probe(endpoint: str, protocol: tuple[int, int, int], timeout: float = DEFAULT_TIMEOUT_S,
          rounds: int = RTT_ROUNDS) -> WorkerInfo:
    """Connect, HELLO, count devices, read device 0's memory, time ``rounds`` round trips; then disconnect."""
    with contextlib.closing(connect(endpoint, timeout)) as sock:
        theirs = hello(sock, endpoint, protocol)
        times = []
        count = 0
        for _ in range(max(1, rounds)):
            t0 = time.perf_counter()
            (count,) = struct.unpack("<I", _request(sock, CMD_DEVICE_COUNT, b"", 4, endpoint, "device count"))
            times.append(time.perf_counter() - t0)
        if count < 1:
            raise ClusterError(f"the worker at {endpoint} offers no device", "restart it")
        free, total = struct.unpack("<QQ", _request(sock, CMD_GET_DEVICE_MEMORY, struct.pack("<I", 0), 16, endpoint,
                                                    "device memory"))
    times.sort()
    return WorkerInfo(endpoint, theirs, count, free, total, times[len(times) // 2] * 1000.0)
