"""SIGINT / SIGTERM sent to a real `edge-run convert` midway leave no partial artifact and no temp files.

The conversion of the real SmolLM2-135M checkpoint (513 MiB fp32) takes seconds, long enough to catch
each stage in the act:

    convert ──> .edge-run-XXXX/smollm2-135m.F16.gguf   growing   <- signal here ("conversion")
            ──> .edge-run-tmp-PID-smollm2-135m.Q8_0.gguf      <- signal here ("quantization": the
                                                                  llama.cpp quantizer child is running)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.zoo

TEMP_MARK = ".edge-run-"
DEADLINE_S = 120.0


@pytest.fixture(scope="module")
def smollm2() -> Path:
    from tools.zoo import zoo_checkpoint

    return zoo_checkpoint("smollm2-135m")


def _intermediate_growing(out: Path) -> bool:
    """The F16 intermediate exists in its temp folder and has some tensor data in it."""
    return any(p.stat().st_size > (1 << 20) for d in out.glob(f"{TEMP_MARK}*") if d.is_dir() for p in d.iterdir())


def _quantizer_running(out: Path) -> bool:
    """The atomic temp file of the first quantized artifact exists (the quantizer child writes it)."""
    return any(p.is_file() for p in out.glob(f"{TEMP_MARK}tmp-*Q8_0.gguf"))


STAGES: dict[str, Callable[[Path], bool]] = {"conversion": _intermediate_growing, "quantization": _quantizer_running}


def _everything_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("stage", list(STAGES))
def test_signal_midway_leaves_nothing(stage: str, signum: signal.Signals, smollm2: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "edge_run.cli.main", "convert", str(smollm2), "--quant", "q8_0,q4_k_m",
           "--out", str(out), "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    caught = False
    deadline = time.monotonic() + DEADLINE_S
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if out.exists() and STAGES[stage](out):
                os.kill(proc.pid, signum)
                caught = True
                break
            time.sleep(0.005)
        _, stderr = proc.communicate(timeout=DEADLINE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert caught, f"the conversion ended before the {stage} stage was seen (rc {proc.returncode})"
    assert proc.returncode == 130, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip().startswith("error:")]
    assert lines == [f"error: interrupted by {signum.name}. partial files were removed"], stderr
    assert "Traceback" not in stderr
    left = _everything_under(out)
    assert left == [], f"left behind after {signum.name} during {stage}: {left}"
    # the quantizer child (its own session) must be gone too: nothing is still writing into the folder
    time.sleep(0.2)
    assert _everything_under(out) == []


def test_interrupt_keeps_finished_artifacts(smollm2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A signal during the second quantization keeps the first, complete artifact and its manifest."""
    from edge_run.runtime.artifacts.integrity import verify_artifact

    monkeypatch.setenv("EDGE_RUN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "edge_run.cli.main", "convert", str(smollm2), "--quant", "q8_0,q4_k_m",
           "--out", str(out), "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + DEADLINE_S
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if any(out.glob(f"{TEMP_MARK}tmp-*Q4_K_M.gguf")):
                os.kill(proc.pid, signal.SIGTERM)
                break
            time.sleep(0.005)
        proc.communicate(timeout=DEADLINE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert _everything_under(out) == ["smollm2-135m.Q8_0.gguf", "smollm2-135m.Q8_0.gguf.manifest.json"]
    assert verify_artifact(out / "smollm2-135m.Q8_0.gguf", full=True) is not None
