"""tools/bench_rpc.py's own pieces (the benchmark itself is run by hand: results/rpc_bench.json): the counting relay
that measures the bytes a split sends per token, and the CLI's usage errors."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tools.bench_rpc import CountingRelay

ROOT = Path(__file__).resolve().parents[1]


def _echo_server() -> tuple[socket.socket, int]:
    """Answers every request with twice as many bytes, until the peer closes."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data * 2)

    threading.Thread(target=serve, daemon=True).start()
    return srv, srv.getsockname()[1]


def test_counting_relay_counts_every_byte_each_way() -> None:
    srv, port = _echo_server()
    relay = CountingRelay(port)
    try:
        host, relay_port = relay.endpoint.split(":")
        with socket.create_connection((host, int(relay_port))) as c:
            for size in (1, 1000, 300_000):
                c.sendall(b"x" * size)
                got = 0
                while got < 2 * size:
                    got += len(c.recv(1 << 20))
        deadline = time.monotonic() + 5
        while relay.down < 2 * 301_001 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (relay.up, relay.down) == (301_001, 602_002)
    finally:
        relay.close()
        srv.close()


@pytest.mark.parametrize("args", [["--rounds", "0"], ["--worker-threads", "0"]])
def test_cli_usage_errors_are_one_line(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "tools.bench_rpc", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "at least 1" in lines[0]
