"""Cross toolchains for linux-aarch64: one row each; the first one found on this machine builds.

    gcc   Debian's aarch64 cross gcc (apt: gcc-aarch64-linux-gnu g++-aarch64-linux-gnu). Links against the
          host distribution's arm64 glibc and the device's libstdc++ (both on every Raspberry Pi OS).
    zig   the ``ziglang`` PyPI package (pip, no root): clang + its own libc++ (linked statically), glibc 2.17
          symbols, so the wheel runs on older distributions too.

Each row knows how to write a CMake toolchain file and which flags select a baseline. The order of
TOOLCHAINS (or $EDGE_RUN_TOOLCHAIN=gcc|zig) says which is tried first; README "Raspberry Pi: bundle" says why.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge_run.core.errors import ResourceError, UsageError
from edge_run.runtime.bundle.baselines import Baseline


@dataclass(frozen=True)
class Toolchain:
    name: str
    install_hint: str
    available: Callable[[], bool]
    write_cmake: Callable[[Path, Baseline], list[str]]  # (build dir, baseline) -> extra cmake -D arguments


def _gcc_available() -> bool:
    return all(shutil.which(t) for t in ("aarch64-linux-gnu-gcc", "aarch64-linux-gnu-g++"))


_CMAKE_COMMON = """set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
"""


def _gcc_cmake(build_dir: Path, baseline: Baseline) -> list[str]:
    tc = build_dir / "toolchain-gcc.cmake"
    tc.write_text(_CMAKE_COMMON + "set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)\n"
                  "set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)\n", encoding="utf-8")
    return [f"-DCMAKE_TOOLCHAIN_FILE={tc}", f"-DGGML_CPU_ARM_ARCH={baseline.march}"]


def _zig_available() -> bool:
    return importlib.util.find_spec("ziglang") is not None


ZIG_TARGET = "aarch64-linux-gnu.2.17"  # glibc 2.17: manylinux2014's floor


def _zig_cmake(build_dir: Path, baseline: Baseline) -> list[str]:
    # CMake wants one executable per tool: small wrappers around `python -m ziglang <tool>`.
    wrappers = {}
    for tool, args in (("cc", f"cc -target {ZIG_TARGET} -mcpu={baseline.zig_mcpu}"),
                       ("c++", f"c++ -target {ZIG_TARGET} -mcpu={baseline.zig_mcpu}"),
                       ("ar", "ar"), ("ranlib", "ranlib")):
        path = build_dir / f"zig-{tool}"
        path.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m ziglang {args} "$@"\n', encoding="utf-8")
        path.chmod(0o755)
        wrappers[tool] = path
    tc = build_dir / "toolchain-zig.cmake"
    tc.write_text(_CMAKE_COMMON + f"set(CMAKE_C_COMPILER {wrappers['cc']})\nset(CMAKE_CXX_COMPILER {wrappers['c++']})\n"
                  f"set(CMAKE_AR {wrappers['ar']})\nset(CMAKE_RANLIB {wrappers['ranlib']})\n", encoding="utf-8")
    # No GGML_CPU_ARM_ARCH: it would add -march=, which zig reads as a CPU name. The level is in -mcpu above.
    # -s: zig keeps debug sections by default (a 40 MiB libllama.so instead of 4 MiB).
    return [f"-DCMAKE_TOOLCHAIN_FILE={tc}", "-DCMAKE_SHARED_LINKER_FLAGS=-s"]


TOOLCHAINS: tuple[Toolchain, ...] = (
    Toolchain("gcc", "apt-get install gcc-aarch64-linux-gnu g++-aarch64-linux-gnu", _gcc_available, _gcc_cmake),
    Toolchain("zig", "pip install 'edge-run[bundle]' (the ziglang package)", _zig_available, _zig_cmake),
)


def _require_cmake() -> None:
    if not shutil.which("cmake"):
        raise ResourceError("cmake is not installed; the cross build of llama.cpp needs cmake >= 3.21",
                            "install it: apt-get install cmake (or pip install cmake)")


def find_toolchain() -> Toolchain:
    """The toolchain to build with: $EDGE_RUN_TOOLCHAIN if set, else the first row available here."""
    _require_cmake()
    wanted = os.environ.get("EDGE_RUN_TOOLCHAIN", "").strip()
    rows = TOOLCHAINS
    if wanted:
        rows = tuple(t for t in TOOLCHAINS if t.name == wanted)
        if not rows:
            raise UsageError(f"EDGE_RUN_TOOLCHAIN={wanted} is not a known toolchain",
                             f"choose from: {', '.join(t.name for t in TOOLCHAINS)}")
    for t in rows:
        if t.available():
            return t
    hints = "; or ".join(t.install_hint for t in rows)
    raise ResourceError("no aarch64 cross compiler found to build llama.cpp for the device", f"install one: {hints}")
