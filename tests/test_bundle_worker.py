"""The Pi bundle as a cluster worker: edge-run-worker.service and `install.sh --worker` (install.sh run on this
machine with a stand-in Python and systemctl: the real install under emulation is the ARM leg's, tools/arm_check.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge_run.runtime.bundle import baseline_named
from edge_run.runtime.bundle.build import _sha256sums, render, write_generated

PI4_FEATURES = "processor\t: 0\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU part\t: 0xd08\n\n" * 4
# `python3.13` as install.sh uses it: the version it asks for, a venv of stand-ins, real Python for its checks
FAKE_PYTHON = """#!/bin/sh
case "$1 $2" in
    "-c "*version_info*) echo 3.13 ;;
    "-m venv") mkdir -p "$4/bin"
        for f in python edge-run; do printf '#!/bin/sh\\nexit 0\\n' > "$4/bin/$f"; chmod +x "$4/bin/$f"; done ;;
    "-c "*) exec REAL "$@" ;;
    *) exit 0 ;;
esac
"""
FAKE_SYSTEMCTL = """#!/bin/sh
printf '%s\\n' "$*" >> "$SYSTEMCTL_LOG"
[ "$1" != is-system-running ] || echo "$SYSTEMD_STATE"
"""


def _bundle(tmp_path: Path, threads: int = 4) -> Path:
    """A bundle as `edge-run bundle` lays it out, with a stand-in model and pip wheel (nothing is pip-installed)."""
    b = tmp_path / "bundle"
    (b / "wheels").mkdir(parents=True)
    (b / "models").mkdir()
    (b / "models" / "m.gguf").write_bytes(b"GGUF stand-in")
    (b / "wheels" / "pip-24.0-py3-none-any.whl").write_bytes(b"pip stand-in")
    for template in ("install.sh", "edge-run.service", "edge-run-worker.service"):
        write_generated(b / template, render(template, baseline_named("armv8-a"), "pi4-4gb", "3.13", "m.gguf",
                                             "edge-run[serve]==0.1.0", threads, 2048))
    write_generated(b / "SHA256SUMS", _sha256sums(b))
    return b


def _install(bundle: Path, *args: str, state: str = "running") -> subprocess.CompletedProcess[str]:
    tools = bundle.parent / "fake-bin"
    tools.mkdir(exist_ok=True)
    for name, text in (("python3.13", FAKE_PYTHON.replace("REAL", sys.executable)), ("systemctl", FAKE_SYSTEMCTL)):
        (tools / name).write_text(text)
        (tools / name).chmod(0o755)
    (bundle.parent / "cpuinfo").write_text(PI4_FEATURES)
    env = {**os.environ, "PATH": f"{tools}{os.pathsep}{os.environ['PATH']}", "EDGE_RUN_MACHINE": "aarch64",
           "EDGE_RUN_CPUINFO": str(bundle.parent / "cpuinfo"), "EDGE_RUN_PREFIX": str(bundle.parent / "prefix"),
           "EDGE_RUN_UNIT_DIR": str(bundle.parent / "units"), "SYSTEMCTL_LOG": str(bundle.parent / "systemctl.log"),
           "SYSTEMD_STATE": state}
    return subprocess.run(["sh", str(bundle / "install.sh"), *args], capture_output=True, text=True, env=env,
                          timeout=120)


def _exec_argv(unit: str) -> list[str]:
    """ExecStart's argv as systemd splits it, for words the way install.sh writes them (plain or "quoted",
    no escapes inside)."""
    (line,) = [ln for ln in unit.splitlines() if ln.startswith("ExecStart=")]
    words = re.findall(r'"([^"\\]*)"|(\S+)', line[len("ExecStart="):])
    return [quoted or plain for quoted, plain in words]


def test_install_sh_and_the_worker_unit_are_well_formed() -> None:
    text = render("install.sh", baseline_named("armv8-a"), "pi4-4gb", "3.13", "m.gguf", "edge-run[serve]==0.1.0")
    for shell in ("sh", "dash"):
        r = subprocess.run([shell, "-n"], input=text, capture_output=True, text=True)
        assert r.returncode == 0, (shell, r.stderr)
    unit = render("edge-run-worker.service", baseline_named("armv8-a"), "pi%h-4gb", "3.13", "m.gguf", "", 4, 2048)
    assert "Description=edge-run worker: a share of a split model (pi%%h-4gb)" in unit  # a specifier stays text
    left = [(i, m) for i, ln in enumerate(unit.splitlines()) for m in re.findall(r"@[A-Z_]+@", ln)]
    assert {m for _, m in left} == {"@PREFIX@", "@WORKER_ARGS@"}
    assert all(unit.splitlines()[i].startswith("ExecStart=") for i, _ in left)
    assert "ExecStart=@PREFIX@/venv/bin/edge-run worker --threads 4 @WORKER_ARGS@\n" in unit
    assert "Restart=on-failure" in unit and "DynamicUser=yes" in unit and "WantedBy=multi-user.target" in unit


def test_install_worker_writes_quotes_and_enables_its_unit(tmp_path: Path) -> None:
    b = _bundle(tmp_path)
    r = _install(b, "--worker", "--host", "10.0.0.2", "--port=050060", "--allow", "10.0.0.0/24", "--allow=fd00::7")
    assert r.returncode == 0, r.stderr
    prefix, units = tmp_path / "prefix", tmp_path / "units"
    unit = (prefix / "edge-run-worker.service").read_text()
    assert (units / "edge-run-worker.service").read_text() == unit
    assert _exec_argv(unit) == [f"{prefix}/venv/bin/edge-run", "worker", "--threads", "4", "--host", "10.0.0.2",
                                "--port", "50060", "--allow", "10.0.0.0/24", "--allow", "fd00::7"]
    assert re.search(r'--host "10\.0\.0\.2" --port "50060" --allow "10\.0\.0\.0/24" --allow "fd00::7"\n', unit)
    assert "@" not in unit.split("[Unit]", 1)[1]  # every placeholder filled, comments aside
    calls = (tmp_path / "systemctl.log").read_text().splitlines()
    assert calls == ["is-system-running", "daemon-reload", "enable edge-run-worker.service",
                     "restart edge-run-worker.service"]
    assert "edge-run-worker enabled and started, listening on 10.0.0.2:50060" in r.stdout
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze (the systemd package) checks the unit as systemd reads it"
    check = subprocess.run([analyze, "verify", str(units / "edge-run-worker.service")], capture_output=True,
                           text=True)
    assert check.returncode == 0 and not check.stderr.strip(), check.stderr
    assert (prefix / "edge-run.service").is_file() and (prefix / "models" / "m.gguf").is_file()


def test_install_worker_without_systemd_installs_the_unit_and_says_how_to_start(tmp_path: Path) -> None:
    b = _bundle(tmp_path, threads=2)
    r = _install(b, "--worker", state="offline")
    assert r.returncode == 0, r.stderr
    unit = (tmp_path / "units" / "edge-run-worker.service").read_text()
    assert _exec_argv(unit)[1:] == ["worker", "--threads", "2", "--host", "127.0.0.1", "--port", "50052"]
    assert (tmp_path / "systemctl.log").read_text().splitlines() == ["is-system-running"]
    assert "systemd is not running here; start the worker with: " in r.stdout
    assert r.stdout.rstrip().endswith("bin/edge-run worker --host 127.0.0.1 --port 50052")


def test_plain_install_leaves_the_worker_alone(tmp_path: Path) -> None:
    r = _install(_bundle(tmp_path))
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "units").exists() and not (tmp_path / "prefix" / "edge-run-worker.service").exists()
    assert not (tmp_path / "systemctl.log").exists()


@pytest.mark.parametrize(("args", "needle"), [
    (["--worker", "--host", "$(touch MARK)", "--allow", "10.0.0.0/24"], "is not an address"),
    (["--worker", "--host", "a b", "--allow", "10.0.0.0/24"], "is not an address"),
    (["--worker", "--host", "-x", "--allow", "10.0.0.0/24"], "is not an address"),
    (["--worker", "--host", "10.0.0.2"], "exposes the worker"),
    (["--worker", "--host", "0.0.0.0"], "--allow 10.0.0.2"),
    (["--worker", "--port", "0"], "is not a TCP port"),
    (["--worker", "--port", "65536"], "is not a TCP port"),
    (["--worker", "--port", "5e4"], "is not a TCP port"),
    (["--worker", "--port", "1234567"], "is not a TCP port"),
    (["--worker", "--allow", '10.0.0.0/24"\nExecStartPre=/bin/sh -c "touch MARK'], "is not an address or network"),
    (["--worker", "--allow", "10.0.0.0/99"], "--allow 10.0.0.0/99 is not an address or network"),
    (["--worker", "--allow", "1.2.3.999"], "--allow 1.2.3.999 is not an address or network"),
    (["--worker", "--allow", "%i"], "is not an address or network"),
    (["--host", "10.0.0.2", "--allow", "10.0.0.0/24"], "sets up a cluster worker. Add --worker"),
    (["--worker", "--port"], "--port needs a value"),
    (["--workers"], "unknown option --workers"),
])
def test_install_worker_bad_options_are_one_line_and_install_nothing(tmp_path: Path, args: list[str],
                                                                     needle: str) -> None:
    mark = tmp_path / "ran"
    r = _install(_bundle(tmp_path), *[a.replace("MARK", str(mark)) for a in args])
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
    assert not (tmp_path / "prefix").exists() and not (tmp_path / "units").exists() and not mark.exists()
