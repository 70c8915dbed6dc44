"""The emulated ARM leg's cluster step (tools/arm_check.py): aarch64 `edge-run worker`s of the installed Pi 4 bundle,
each an emulated process in the leg's rootfs, and an x86 `edge-run run --cluster` splitting a model across them.

    x86 host: edge-run run SmolLM2 Q4_K_M --cluster pi4-4gb@127.0.0.1:P1,pi4-4gb@127.0.0.1:P2
        │ llama.cpp RPC (protocol of the vendored source), loopback: the chroot shares the host's network
        ├──▶ chroot ROOTFS PREFIX/bin/edge-run worker --port P1 --threads 1      QEMU_CPU=cortex-a72
        └──▶ chroot ROOTFS PREFIX/bin/edge-run worker --port P2 --threads 1      QEMU_CPU=cortex-a72

The workers load the libggml-rpc.so the bundle's cross-built wheel ships (llama_cpp/lib), not one built on the
board. Stopped with SIGTERM, as systemd stops edge-run-worker.service; each must end cleanly.
"""

from __future__ import annotations

import contextlib
import select
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_run.core.errors import ResourceError
from tools import arm_rootfs

WORKERS = 2
WORKER_CPU = "cortex-a72"  # Pi 4
WORKER_THREADS = 1  # two emulated workers and the x86 host share the machine's cores
START_TIMEOUT_S = 600.0  # an emulated Python importing edge-run and llama_cpp: tens of seconds, more when busy
STOP_TIMEOUT_S = 60.0


@dataclass
class EmulatedWorker:
    port: int
    proc: subprocess.Popen[str]
    stderr: Any  # a temporary file: llama.cpp's server logs each connection there
    banner: str = ""
    stopped_cleanly: bool | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def last_error(self) -> str:
        self.stderr.seek(0)
        text = self.stderr.read().decode("utf-8", "replace")
        return (text.strip().splitlines() or ["no output"])[-1][:200]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _read_banner(proc: subprocess.Popen[str], deadline: float) -> str:
    """The worker's 'listening on' line ("" when it exited or the deadline passed first)."""
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            line = proc.stdout.readline()
            if not line:
                return ""
            if "listening on" in line:
                return line.strip()
        elif proc.poll() is not None:
            return ""
    return ""


def _stop(worker: EmulatedWorker) -> None:
    if worker.proc.poll() is None:
        worker.proc.send_signal(signal.SIGTERM)
        try:
            worker.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            worker.proc.kill()
            worker.proc.wait()
    out = worker.proc.stdout.read() if worker.proc.stdout else ""
    worker.stopped_cleanly = worker.proc.returncode == 0 and "worker stopped" in out


@contextlib.contextmanager
def emulated_workers(root: Path, prefix: str, n: int = WORKERS) -> Iterator[list[EmulatedWorker]]:
    """``n`` workers of the bundle installed at ``prefix`` in ``root``, listening on free loopback ports; stopped
    with SIGTERM on exit (``stopped_cleanly`` says how each ended). ResourceError when one does not start."""
    workers: list[EmulatedWorker] = []
    try:
        for _ in range(n):
            port = free_port()
            cmd = arm_rootfs.chroot_cmd(root, [f"{prefix}/bin/edge-run", "worker", "--port", str(port),
                                               "--threads", str(WORKER_THREADS)])
            err = tempfile.TemporaryFile()
            workers.append(EmulatedWorker(port, subprocess.Popen(
                cmd, env=arm_rootfs.emulated_env(WORKER_CPU), stdout=subprocess.PIPE, stderr=err, text=True), err))
        deadline = time.monotonic() + START_TIMEOUT_S
        for w in workers:  # started side by side, read in turn
            w.banner = _read_banner(w.proc, deadline)
            if not w.banner:
                _stop(w)
                raise ResourceError(f"the emulated worker on port {w.port} did not start (exit {w.proc.returncode}):"
                                    f" {w.last_error()}")
        yield workers
    finally:
        for w in workers:
            if w.stopped_cleanly is None:
                _stop(w)
            w.stderr.close()
