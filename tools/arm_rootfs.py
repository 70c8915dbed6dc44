"""An arm64 Debian root filesystem run through qemu-user, for the emulated ARM leg (tools/arm_check.py).

Cache layout (``$EDGE_RUN_CACHE`` or ``~/.cache/edge-run``)::

    arm-rootfs/<suite>-<key>/         pristine root filesystem; <key> hashes suite, mirror and package list
    arm-rootfs/<suite>-<key>/.edge-run-rootfs.json   stamp written last (inside the temp dir, before the rename)
    arm-rootfs/.tmp-*                 a build in progress (renamed into place when complete; stale ones removed)
    arm-work/<pid>/                   a throwaway copy of the rootfs for one leg (removed at the end, or by the
                                      next leg when its pid is gone)

A leg never modifies the cached rootfs: it copies it, mounts /proc and /dev into the copy, and runs commands
with ``chroot`` under the kernel's binfmt_misc handler for aarch64 ELF files (qemu-user-static with the F flag),
so every child process (bash, python -m venv, pip) is emulated too. ``QEMU_CPU`` selects the emulated core.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from edge_run.core.errors import ResourceError
from edge_run.core.fsutil import cache_dir, pid_alive

SUITE = "trixie"  # Debian 13: Python 3.13, as the current Raspberry Pi OS
MIRROR = "http://deb.debian.org/debian"
# --variant=extract unpacks these (and their dependencies) without running maintainer scripts: no emulated dpkg,
# so a cold build takes about a minute instead of ~20 (python's postinst byte-compiles the stdlib under qemu).
# What the scripts would have made that a leg needs (/etc/passwd, /etc/group) is copied in by a host-side hook.
VARIANT = "extract"
PACKAGES = ("python3", "python3-venv", "libstdc++6", "base-files", "base-passwd", "dash", "bash", "coreutils", "grep",
            "sed", "gzip", "tar", "findutils", "diffutils")  # libstdc++6: numpy's and llama.cpp's aarch64 builds
HOOKS = ('cp "$1/usr/share/base-passwd/passwd.master" "$1/etc/passwd"',
         'cp "$1/usr/share/base-passwd/group.master" "$1/etc/group"')
STAMP = ".edge-run-rootfs.json"
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
BINFMT_D_RULES = (Path("/usr/lib/binfmt.d/qemu-aarch64.conf"), Path("/etc/binfmt.d/qemu-aarch64.conf"))
INSTALL_HINT = "install qemu-user-static binfmt-support mmdebstrap (apt-get install -y ...) and run as root"


def rootfs_key(suite: str = SUITE, packages: Sequence[str] = PACKAGES, mirror: str = MIRROR) -> str:
    text = json.dumps({"suite": suite, "packages": sorted(packages), "mirror": mirror, "variant": VARIANT,
                       "hooks": HOOKS})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_host() -> None:
    """Root, mmdebstrap, qemu-user-static and a registered aarch64 binfmt handler (registered here if possible)."""
    if os.geteuid() != 0:
        raise ResourceError("the emulated ARM leg needs root (chroot, mounting /proc)", "run it as root (CI does)")
    missing = [t for t in ("mmdebstrap", "qemu-aarch64-static", "chroot", "mount") if shutil.which(t) is None]
    if missing:
        raise ResourceError(f"{', '.join(missing)} not found", INSTALL_HINT)
    if not (BINFMT_DIR / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)], capture_output=True)
    handler = BINFMT_DIR / "qemu-aarch64"
    if not handler.exists() and shutil.which("update-binfmts"):
        subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], capture_output=True)
    if not handler.exists():
        _register_from_binfmt_d()
    try:
        text = handler.read_text()
    except OSError:
        raise ResourceError("no binfmt_misc handler for aarch64 programs", INSTALL_HINT) from None
    if not text.startswith("enabled") or "F" not in text.split("flags:", 1)[-1].split("\n", 1)[0]:
        raise ResourceError("the aarch64 binfmt handler is disabled or lacks the F (fix binary) flag",
                            "update-binfmts --enable qemu-aarch64 (from qemu-user-static)")


def _register_from_binfmt_d() -> None:
    """qemu-user-binfmt >= 9 ships its rules for systemd-binfmt (/usr/lib/binfmt.d) instead of update-binfmts'
    database; without systemd running (a container, CI) nothing loads them: write the rule into `register`."""
    for conf in BINFMT_D_RULES:
        try:
            rule = next(ln for ln in conf.read_text().splitlines() if ln.startswith(":qemu-aarch64:"))
            (BINFMT_DIR / "register").write_text(rule)
        except (OSError, StopIteration):
            continue
        return


def ensure_rootfs(log: Path) -> tuple[Path, float]:
    """The cached pristine rootfs (built with mmdebstrap when missing) and the seconds spent building it."""
    base = cache_dir() / "arm-rootfs"
    base.mkdir(parents=True, exist_ok=True)
    final = base / f"{SUITE}-{rootfs_key()}"
    if (final / STAMP).is_file():
        return final, 0.0
    for stale in base.glob(".tmp-*"):  # a build killed half-way (its pid is the last dash-separated field)
        if not pid_alive(int(stale.name.rsplit("-", 1)[-1])):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = base / f".tmp-{final.name}-{os.getpid()}"
    t0 = time.monotonic()
    try:
        with open(log, "ab") as out:
            hooks = [f"--customize-hook={h}" for h in HOOKS]
            proc = subprocess.run(["mmdebstrap", "--arch=arm64", f"--variant={VARIANT}", "--mode=root",
                                   "--aptopt=APT::Install-Recommends \"false\"", *hooks,
                                   f"--include={','.join(PACKAGES)}", SUITE, str(tmp), MIRROR],
                                  stdout=out, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            raise ResourceError(f"mmdebstrap failed building the {SUITE} arm64 rootfs (see {log})",
                                "check network access to deb.debian.org and free disk space")
        (tmp / STAMP).write_text(json.dumps({"suite": SUITE, "packages": list(PACKAGES), "mirror": MIRROR}))
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final, time.monotonic() - t0


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    with open("/proc/self/mounts", encoding="utf-8") as f:
        points = [line.split()[1] for line in f]
    return sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True)


def _remove_work(root: Path) -> None:
    for point in _mounts_under(root):
        subprocess.run(["umount", "-l", point], capture_output=True)
    if not _mounts_under(root):  # never delete through a live mount (it would delete the host's /dev)
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def work_rootfs(pristine: Path, tag: str = "") -> Iterator[Path]:
    """A throwaway copy of the rootfs with /proc and /dev mounted; unmounted and removed on exit."""
    parent = cache_dir() / "arm-work"
    parent.mkdir(parents=True, exist_ok=True)
    for old in parent.iterdir():  # <pid>-<tag> of a leg that was killed
        pid = old.name.split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            _remove_work(old)
    root = parent / f"{os.getpid()}-{tag}"
    _remove_work(root)
    try:
        subprocess.run(["cp", "-a", "--reflink=auto", str(pristine), str(root)], check=True)
        subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
        subprocess.run(["mount", "--rbind", "/dev", str(root / "dev")], check=True)
        subprocess.run(["mount", "--make-rslave", str(root / "dev")], check=True)
        yield root
    finally:
        _remove_work(root)


def chroot_cmd(root: Path, argv: Sequence[str], cwd: str = "/") -> list[str]:
    return [shutil.which("chroot") or "/usr/sbin/chroot", str(root), "/usr/bin/env", "-C", cwd, *argv]


def emulated_env(cpu: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of an emulated process: a clean PATH/HOME inside the rootfs and qemu's -cpu."""
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin", "HOME": "/root", "LANG": "C.UTF-8",
           "QEMU_CPU": cpu, "EDGE_RUN_CACHE": "/root/.cache/edge-run"}
    env.update(extra or {})
    return env


def self_check(root: Path) -> None:
    """The registered handler must be a qemu that emulates /proc/cpuinfo (>= 8.1): install.sh and detect read it."""
    proc = run_emulated(root, "cortex-a76", ["grep", "-m1", "^Features", "/proc/cpuinfo"], timeout=120)
    if proc.returncode != 0 or "asimddp" not in proc.stdout:
        raise ResourceError(
            "the registered qemu-aarch64 shows emulated programs the host's /proc/cpuinfo (qemu older than 8.1, or a "
            "stale binfmt registration)", "install qemu-user-static >= 8.1 (Debian 12: apt-get install -y -t "
            "bookworm-backports qemu-user-static), then: update-binfmts --disable qemu-aarch64; "
            "update-binfmts --enable qemu-aarch64")


def run_emulated(root: Path, cpu: str, argv: Sequence[str], *, cwd: str = "/", timeout: float = 900,
                 env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(chroot_cmd(root, argv, cwd), env=emulated_env(cpu, env), capture_output=True, text=True,
                          timeout=timeout)
