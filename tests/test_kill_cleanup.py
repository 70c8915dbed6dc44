"""SIGKILL (or the OOM killer) gives edge-run no chance to clean up: what it leaves must be removed by the next
convert into that folder, the quantizer child must die with its parent, and two converts into one folder must
not both write.

    .edge-run-tmp-<pid>-NAME.Q8_0.gguf     atomic temp file of an artifact       } removed by the next convert when
    .edge-run-<pid>-XXXX/NAME.F16.gguf      temp folder of the F16 intermediate   } <pid> is no longer running
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import CliResult


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_next_convert_removes_dead_processes_temps(tiny_checkpoint: Callable[[str], Path], tmp_path: Path,
                                                   cli: Callable[..., CliResult],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_RUN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    out.mkdir()
    dead = _dead_pid()
    (out / f".edge-run-tmp-{dead}-tiny.Q4_K_M.gguf").write_bytes(b"x" * 1000)
    (out / f".edge-run-{dead}-k2j4x9").mkdir()
    (out / f".edge-run-{dead}-k2j4x9" / "tiny.F16.gguf").write_bytes(b"y" * 1000)
    (out / f".edge-run-tmp-{dead}-old-tiny.int4").mkdir()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live_temp = out / f".edge-run-tmp-{alive.pid}-other.Q8_0.gguf"
        live_temp.write_bytes(b"z")
        (out / "notes.txt").write_text("mine")
        res = cli("convert", tiny_checkpoint("llama"), "--quant", "q8_0", "--out", out, "--name", "tiny", "--json")
        assert res.code == 0, res.stderr
        left = sorted(p.name for p in out.iterdir())
        assert left == sorted([live_temp.name, "notes.txt", "tiny.Q8_0.gguf", "tiny.Q8_0.gguf.manifest.json"])
    finally:
        alive.kill()
        alive.wait()


def test_quantizer_child_dies_with_its_parent(tmp_path: Path) -> None:
    """A parent killed by SIGKILL takes its quantizer child along (PR_SET_PDEATHSIG armed in the child)."""
    script = textwrap.dedent("""
        import os, subprocess, sys, time
        from edge_run.converters.gguf.quantize import die_with_parent
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True,
                                 preexec_fn=die_with_parent(os.getpid()))
        print(child.pid, flush=True)
        time.sleep(120)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        child_pid = int(parent.stdout.readline())  # type: ignore[union-attr]
        assert _running(child_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while _running(child_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(child_pid), "the child outlived its SIGKILLed parent"
    finally:
        parent.kill()
        parent.wait()


def _running(pid: int) -> bool:
    """Alive and not a zombie (the child is reparented to init, which reaps it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_a_second_convert_into_a_busy_folder_fails_at_once(tiny_checkpoint: Callable[[str], Path], tmp_path: Path,
                                                           cli: Callable[..., CliResult],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process holds the folder (as a running convert does): this one exits 4 and writes nothing."""
    monkeypatch.setenv("EDGE_RUN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from edge_run.core.fsutil import exclusive_folder
        with exclusive_folder({str(out)!r}):
            print("held", flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"  # type: ignore[union-attr]
        res = cli("convert", tiny_checkpoint("llama"), "--quant", "q8_0", "--out", out, "--name", "tiny")
        assert res.code == 4, res.stderr
        assert res.stderr.strip() == (f"error: another edge-run process is writing into {out}. wait for it to finish "
                                      "or choose another --out")
        assert list(out.iterdir()) == []
    finally:
        holder.kill()
        holder.wait()
    res = cli("convert", tiny_checkpoint("llama"), "--quant", "q8_0", "--out", out, "--name", "tiny")
    assert res.code == 0, res.stderr  # the lock went with the process: no lock file to clean up


def test_no_overwrite_between_check_and_rename(tmp_path: Path) -> None:
    """The exists-check passed, then someone else created the file: without --force it is kept."""
    from edge_run.core.errors import OutputExistsError
    from edge_run.core.fsutil import atomic_path

    dest = tmp_path / "a.gguf"
    with pytest.raises(OutputExistsError), atomic_path(dest) as tmp:
        tmp.write_bytes(b"mine")
        dest.write_bytes(b"theirs")
    assert dest.read_bytes() == b"theirs" and sorted(p.name for p in tmp_path.iterdir()) == ["a.gguf"]


@pytest.mark.zoo
def test_sigkill_midway_then_rerun_leaves_nothing(tmp_path: Path) -> None:
    """SIGKILL a real convert while llama.cpp's quantizer child writes; the child dies too, and re-running the
    convert into the folder finishes with only the artifacts and manifests in it."""
    from tools.zoo import zoo_checkpoint

    ckpt = zoo_checkpoint("smollm2-135m")
    out = tmp_path / "out"
    env = {**os.environ, "EDGE_RUN_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "edge_run.cli.main", "convert", str(ckpt), "--quant", "q8_0", "--out",
           str(out), "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 120
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if any(out.glob(".edge-run-tmp-*Q8_0.gguf")):
                break
            time.sleep(0.005)
        quantizers = _children_running("edge_run.converters.gguf.quantize", str(out))
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert quantizers, "the quantizer stage was not reached"
    left = sorted(p.name for p in out.iterdir())
    assert any(n.startswith(".edge-run-") for n in left), left  # SIGKILL: nothing could clean up
    deadline = time.monotonic() + 10
    while any(_running(pid) for pid in quantizers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_running(pid) for pid in quantizers), "the quantizer outlived its SIGKILLed parent"
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(p.name for p in out.iterdir()) == ["smollm2-135m.Q8_0.gguf", "smollm2-135m.Q8_0.gguf.manifest.json"]


def _children_running(module: str, marker: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                argv = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if module.encode() in argv and any(marker.encode() in a for a in argv):
                pids.append(int(d.name))
    return pids
