"""The process entry ends the process without the interpreter's teardown (src/edge_run/cli/main.end_process), and
`run` leaves its model to the exit (src/edge_run/cli/_common.closed_or_left_to_exit). What an exit must still do is
checked here: every byte written reaches its reader (Python's buffers and C stdio's), the exit code is kept,
atexit handlers run, a thread still at work finishes, a reader that went away gives 141, and a model is closed
whenever main() runs in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_run.cli import _common

ENTRY = [sys.executable, "-m", "edge_run.cli.main"]


def _end(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh process, its output buffered (as in a pipe without PYTHONUNBUFFERED)."""
    prelude = "import sys, os, atexit, threading, time, ctypes\nfrom edge_run.cli.main import end_process\n"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, cwd=tmp_path,
                          timeout=60, env=env)


def test_output_and_exit_code_survive(tmp_path: Path) -> None:
    """Buffered Python output and C stdio output written with printf into a pipe (fully buffered) both arrive."""
    r = _end("sys.stdout.write('x' * 100000)\n"
             "ctypes.CDLL(None).printf(b'from C\\n')\n"
             "end_process(7)\n", tmp_path)
    assert r.returncode == 7, r.stderr
    assert r.stdout.startswith("x" * 100000) and r.stdout.endswith("from C\n")


def test_atexit_handlers_run_and_a_working_thread_finishes(tmp_path: Path) -> None:
    r = _end("atexit.register(lambda: open('atexit.txt', 'w').write('ran'))\n"
             "def work():\n"
             "    time.sleep(0.3)\n"
             "    open('thread.txt', 'w').write('done')\n"
             "threading.Thread(target=work).start()\n"
             "end_process(3)\n", tmp_path)
    assert r.returncode == 3, r.stderr
    assert (tmp_path / "atexit.txt").read_text() == "ran"
    assert (tmp_path / "thread.txt").read_text() == "done"


def test_reader_gone_is_141(tmp_path: Path) -> None:
    """The last flush into a pipe nobody reads: 141, as for a write during the command, and nothing on stderr."""
    code = "sys.stdout.write('y' * 1000)\nend_process(0)\n"
    prelude = "import sys\nfrom edge_run.cli.main import end_process\n"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # the text waits in the buffer
    p = subprocess.Popen([sys.executable, "-c", prelude + code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         cwd=tmp_path, env=env)
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()  # the reader goes away before the process writes
    err = p.stderr.read()
    assert p.wait(timeout=60) == 141 and err == b""


def test_run_through_the_entry(tiny_gguf: Path, tmp_path: Path) -> None:
    """The whole `run` JSON document reaches a file; a user's mistake keeps its exit code and one-line message."""
    out = tmp_path / "out.json"
    with out.open("w") as f:
        r = subprocess.run([*ENTRY, "run", str(tiny_gguf), "-p", "hello", "-n", "4", "-t", "1", "--json"],
                           stdout=f, stderr=subprocess.PIPE, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert doc["completion_tokens"] >= 1 and doc["finish_reason"] in ("length", "stop")
    r = subprocess.run([*ENTRY, "run", str(tiny_gguf), "-p", "", "-t", "1"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and len(r.stderr.splitlines()) == 1


class _Model:
    closed = False

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("ends_after", [False, True])
def test_model_closed_unless_the_process_ends(monkeypatch: pytest.MonkeyPatch, ends_after: bool) -> None:
    monkeypatch.setattr(_common, "process_ends_after_command", ends_after)
    monkeypatch.setattr(_common, "_left_to_exit", [])
    model = _Model()
    with pytest.raises(RuntimeError), _common.closed_or_left_to_exit(model):
        raise RuntimeError("the command failed")
    assert model.closed is not ends_after
    assert (model in _common._left_to_exit) is ends_after


def test_full_disk_at_the_last_flush_is_one_line_and_exit_4(tmp_path: Path) -> None:
    """/dev/full (Linux, the platform edge-run targets) fails every write with ENOSPC."""
    prelude = "import sys\nfrom edge_run.cli.main import end_process\n"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-c", prelude + "sys.stdout.write('z' * 100)\nend_process(0)\n"],
                           stdout=full, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env, timeout=60)
    assert r.returncode == 4
    assert r.stderr.startswith("error: could not write the output") and len(r.stderr.splitlines()) == 1
