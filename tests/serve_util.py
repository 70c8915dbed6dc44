"""Start and stop a real `edge-run serve` process on 127.0.0.1 and a free port (shared by the serve tests)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    proc: subprocess.Popen[str]
    port: int
    model_id: str
    api_key: str | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kwargs: Any) -> Any:
        import openai

        return openai.OpenAI(base_url=f"{self.base_url}/v1", api_key=self.api_key or "unused", max_retries=0,
                             timeout=kwargs.pop("timeout", 300), **kwargs)

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.base_url}/health", timeout=10) as r:
            data: dict[str, Any] = json.loads(r.read())
            return data

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> tuple[int, str, str]:
        """Send ``sig`` (unless it has exited already) and wait. After a signal of one's own, use ``wait``: a
        second SIGTERM makes the server exit at once, without its clean shutdown."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait(timeout)

    def wait(self, timeout: float = 30) -> tuple[int, str, str]:
        """Wait for the process to end (killed after ``timeout`` s); its exit code, stdout and stderr."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        return self.proc.returncode, out, err


def start_server(artifact: Path, *args: str, env: dict[str, str] | None = None, cache: Path | None = None,
                 api_key: str | None = None, timeout: float = 180) -> Server:
    port = free_port()
    env = dict(env if env is not None else os.environ)
    if cache is not None:
        env["EDGE_RUN_CACHE"] = str(cache)
    env.pop("EDGE_RUN_DEBUG", None)
    extra = ["--api-key", api_key] if api_key else []
    proc = subprocess.Popen([sys.executable, "-m", "edge_run.cli.main", "serve", str(artifact),
                             "--port", str(port), *extra, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    server = Server(proc, port, Path(artifact).name, api_key)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"edge-run serve exited {proc.returncode}: {err[-2000:]}{out[-500:]}")
        try:
            if server.health()["model_loaded"]:
                return server
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.2)
    server.stop(signal.SIGKILL)
    raise AssertionError("edge-run serve did not come up in time")


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
