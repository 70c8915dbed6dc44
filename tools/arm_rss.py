"""Peak RSS of an emulated (qemu-user) process, split into the guest program's memory and qemu's own.

qemu-user runs the aarch64 program inside its own host process, so the host sees one RSS that holds both the
guest's pages (its code, heap, mmap'd model, KV cache) and qemu's (its binary, heap, translated-code buffer).
The leg pins the guest address space: ``QEMU_GUEST_BASE`` (qemu's -B) places guest address 0 at a fixed host
address and ``QEMU_RESERVED_VA`` (-R) reserves the whole guest address space there up front, so every guest
mapping lies inside [base, base + size) and none of qemu's own does. Summing the ``Rss:`` of the host's
/proc/PID/smaps entries inside that window gives the guest's RSS exactly as a native arm64 process would
have it; the remainder is qemu's footprint (also reported, as the issue asks, for an idle python).
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tools.arm_rootfs import chroot_cmd

GUEST_BASE = 0x2000_0000_0000  # 32 TiB: far from the host's own mappings (PIE near 0x55.., mmap near 0x7f..)
GUEST_SIZE = 0x2_0000_0000  # 8 GiB of guest address space: SmolLM2 runs use < 1 GiB
PINNED_ENV = {"QEMU_GUEST_BASE": hex(GUEST_BASE), "QEMU_RESERVED_VA": hex(GUEST_SIZE)}
KIB = 1024


def smaps_split(pid: int, base: int = GUEST_BASE, size: int = GUEST_SIZE) -> tuple[int, int]:
    """(guest RSS, total RSS) in KiB from /proc/PID/smaps; raises OSError once the process is gone."""
    guest = total = 0
    inside = False
    with open(f"/proc/{pid}/smaps", encoding="ascii", errors="replace") as f:
        for line in f:
            if line[0] in "0123456789abcdef" and "-" in line.split(" ", 1)[0]:  # "start-end perms offset ..."
                lo, hi = (int(x, 16) for x in line.split(" ", 1)[0].split("-"))
                inside = lo >= base and hi <= base + size
            elif line.startswith("Rss:"):
                kib = int(line.split()[1])
                total += kib
                if inside:
                    guest += kib
    return guest, total


@dataclass
class Measured:
    returncode: int
    stdout: str
    stderr: str
    guest_peak_mib: float
    total_peak_mib: float
    seconds: float

    @property
    def qemu_mib(self) -> float:
        return self.total_peak_mib - self.guest_peak_mib


def run_sampled(cmd: Sequence[str], env: Mapping[str, str], timeout: float, interval: float = 0.1) -> Measured:
    """Run ``cmd`` (its pid becomes the qemu process through exec) and sample its memory until it exits."""
    peaks = [0, 0]
    t0 = time.monotonic()
    proc = subprocess.Popen(list(cmd), env={**env, **PINNED_ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                guest, total = smaps_split(proc.pid)
            except (OSError, ValueError):
                guest = total = 0
            peaks[0], peaks[1] = max(peaks[0], guest), max(peaks[1], total)
            done.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        err += f"\n(killed after {timeout:.0f} s)"
    finally:
        done.set()
        sampler.join()
    return Measured(proc.returncode, out, err, peaks[0] / KIB, peaks[1] / KIB, time.monotonic() - t0)


def idle_python_cmd(chroot: Path, python: str) -> list[str]:
    """An emulated python that has imported what ``edge-run run`` imports, then sleeps while it is sampled."""
    code = "import numpy, llama_cpp, edge_run.cli.main, time; time.sleep(3)"
    return chroot_cmd(chroot, [python, "-c", code])
