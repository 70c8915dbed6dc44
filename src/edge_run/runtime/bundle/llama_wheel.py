"""Cross-build llama-cpp-python for linux-aarch64 at one CPU baseline and package it as a wheel.

    pip download --no-deps --no-binary :all: llama-cpp-python==<pin>     the sdist (cached)
        │  its llama_cpp/ package + vendor/llama.cpp: the very sources the pinned version ships
        ▼
    cmake (llama-cpp-python's own CMakeLists.txt) + a cross toolchain (toolchain.py), GGML_NATIVE=OFF,
    the baseline's arch flags, no OpenMP, no tests/examples/server/tools/mtmd, GGML_RPC=ON; targets llama
    ggml ggml-base ggml-cpu ggml-rpc (the libraries llama_cpp/*.py load with ctypes from llama_cpp/lib,
    RPATH $ORIGIN; libggml.so needs libggml-rpc.so, llama.cpp's RPC client and server)
        │  checked: every library is aarch64 and needs nothing beyond libc/libm/libstdc++/libgcc_s/each other
        ▼
    llama_cpp_python-<pin>+<baseline tag>-py3-none-manylinux_2_<glibc>_aarch64.whl
        (the same layout as PyPI's: llama_cpp/*.py, llama_cpp/lib/lib*.so; RECORD with sha256)
        + llama_cpp/lib/build.json: the RPC stamp runtime/cluster/build.py reads (ggml version, RPC protocol),
          so `edge-run worker` on the board loads the shipped libggml-rpc.so instead of building one

Cache: ``<cache>/llama-cpp-python/<pin>/<baseline tag>/`` holds the wheel and build.json. A build runs in
a ``.edge-run-build-PID-*`` folder beside it and is renamed into place when complete, so an interrupted
build leaves nothing under the final name (the next build removes a dead process's leftovers). A read-only
cache still works: the wheel is built in ``work_dir`` instead.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from edge_run.core.errors import InputError, ResourceError
from edge_run.core.fsutil import cache_dir
from edge_run.runtime.bundle.baselines import Baseline
from edge_run.runtime.bundle.elf import read_elf
from edge_run.runtime.bundle.toolchain import Toolchain, find_toolchain
from edge_run.runtime.bundle.wheel import normalize_dist, set_metadata_version, write_wheel

DIST = "llama-cpp-python"
LIB_TARGETS = ("llama", "ggml", "ggml-base", "ggml-cpu", "ggml-rpc")
WHEEL_FORMAT = 2  # build.json "format": 2 = with ggml-rpc; a cached wheel of another format is rebuilt
RPC_STAMP = "build.json"  # in llama_cpp/lib, as runtime/cluster/build.py writes it beside its libggml-rpc.so
RPC_STAMP_FORMAT = 1
# What the libraries may need from the device: glibc, the C++ runtime, and each other (nothing else: no libgomp).
ALLOWED_NEEDED = re.compile(r"^(libc|libm|libdl|libpthread|librt|ld-linux-aarch64|libstdc\+\+|libgcc_s|libllama|"
                            r"libggml|libggml-base|libggml-cpu|libggml-rpc)\.so(\.\d+)*$")
CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=OFF", "-DGGML_OPENMP=OFF", "-DGGML_BACKEND_DL=OFF",
    "-DGGML_CPU_ALL_VARIANTS=OFF", "-DLLAVA_BUILD=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_TOOLS=OFF", "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_CURL=OFF", "-DGGML_RPC=ON", "-DGGML_RPC_RDMA=OFF",  # RPC over TCP only (no libibverbs on a Pi)
    # one file per library, named as ctypes loads it (wheels cannot hold the libllama.so -> .so.0 symlinks)
    "-DCMAKE_PLATFORM_NO_VERSIONED_SONAME=ON",
)


class BuildError(ResourceError):
    """The cross build itself failed; build_llama_wheel keeps its log and names it in the hint."""


def pinned_llama_version() -> str:
    """The llama-cpp-python version edge-run pins (its ``==`` requirement), else the installed one."""
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        for req in importlib.metadata.requires("edge-run") or []:
            m = re.match(r"^llama[-_.]cpp[-_.]python\s*==\s*([\w.]+)\s*(;.*)?$", req.strip(), re.IGNORECASE)
            if m:
                return m.group(1)
    return importlib.metadata.version(DIST)


def remove_dead_builds(folder: Path) -> None:
    """Remove ``.edge-run-*-PID-*`` folders left in ``folder`` by a process that no longer runs (SIGKILL)."""
    try:
        entries = list(folder.iterdir()) if folder.is_dir() else []
    except OSError:  # a folder we may not list: nothing of ours can be in it
        return
    for entry in entries:
        m = re.match(r"^\.edge-run-[a-z]+-(\d+)-", entry.name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except PermissionError:
            pass


def wheel_cache_root() -> Path:
    return cache_dir() / "llama-cpp-python"


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK | os.X_OK)


def run_group(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """subprocess.run in its own process group: an interrupted bundle stops the compilers / pip's children too,
    before the temp folder they write into is removed."""
    proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
    try:
        out, err = proc.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _run(cmd: list[str], log: Path, cwd: Path | None = None) -> None:
    with open(log, "ab") as f:
        f.write(("$ " + " ".join(cmd) + "\n").encode())
        f.flush()
        proc = run_group(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=cwd)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["?"]
        raise BuildError(f"{Path(cmd[0]).name} failed while cross-building llama.cpp ({tail[0].strip()[:200]})")


def fetch_sdist(version: str, work_dir: Path) -> Path:
    """The llama-cpp-python sdist: $EDGE_RUN_LLAMA_SDIST, the cached copy, or `pip download` (cached after)."""
    env = os.environ.get("EDGE_RUN_LLAMA_SDIST")
    if env:
        if not Path(env).is_file():
            raise InputError(f"EDGE_RUN_LLAMA_SDIST={env} is not a file", "point it at llama_cpp_python-*.tar.gz")
        return Path(env)
    name = f"llama_cpp_python-{version}.tar.gz"
    cached = wheel_cache_root() / "sdist" / name
    if cached.is_file():
        return cached
    dl = Path(tempfile.mkdtemp(prefix=f".edge-run-sdist-{os.getpid()}-", dir=work_dir))
    proc = run_group([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                      "--disable-pip-version-check", "-q", "-d", str(dl), f"{DIST}=={version}"],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    got = dl / name
    if proc.returncode != 0 or not got.is_file():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ResourceError(f"could not download the {DIST} {version} sdist ({last[:200]})",
                            "check PyPI access, or set EDGE_RUN_LLAMA_SDIST to a local copy")
    if _writable(cached.parent):
        with contextlib.suppress(OSError):
            os.replace(got, cached)  # same file system as work_dir when the cache is writable
            return cached
    return got


def _extract(sdist: Path, dest: Path) -> Path:
    """Unpack the sdist (tarfile's "data" filter: no absolute paths, links out of dest or devices)."""
    with tarfile.open(sdist) as tf:
        tf.extractall(dest, filter="data")
    roots = [p for p in dest.iterdir() if p.is_dir()]
    if len(roots) != 1 or not (roots[0] / "vendor" / "llama.cpp" / "CMakeLists.txt").is_file():
        raise InputError(f"{sdist.name} is not a llama-cpp-python sdist with vendor/llama.cpp",
                         "delete it from the cache and build again")
    return roots[0]


def _libraries(build: Path) -> dict[str, Path]:
    """The built shared libraries (unversioned: llama_cpp loads libllama.so, which needs libggml.so ...)."""
    return {p.name: p for p in sorted(build.rglob("lib*.so")) if p.is_file() and p.name[3:-3] in LIB_TARGETS}


def check_libraries(libs: dict[str, Path]) -> str:
    """Every library is aarch64 and needs only allowed libraries; returns the manylinux platform tag."""
    glibc = (2, 17)
    for name, path in libs.items():
        info = read_elf(path)
        if info.machine != "aarch64":
            raise ResourceError(f"cross-built {name} is {info.machine}, not aarch64", "check the toolchain")
        bad = [n for n in info.needed if not ALLOWED_NEEDED.match(n)]
        if bad:
            raise ResourceError(f"cross-built {name} needs {', '.join(bad)}, which a Pi may not have",
                                "build without it (GGML_OPENMP=OFF)")
        glibc = max(glibc, info.max_glibc())
    return f"manylinux_{glibc[0]}_{glibc[1]}_aarch64"


def rpc_stamp(src: Path, log: Path, full_version: str, seconds: float) -> dict[str, Any]:
    """llama_cpp/lib/build.json: what runtime/cluster/build.py's read_stamp needs to trust the shipped
    libggml-rpc.so (the ggml version cmake printed, the vendored header's RPC protocol)."""
    m = re.search(r"ggml version:\s*(\S+)", log.read_text(errors="replace"))
    header = (src / "vendor" / "llama.cpp" / "ggml" / "include" / "ggml-rpc.h").read_text(errors="replace")
    parts = [re.search(rf"#define\s+RPC_PROTO_{k}_VERSION\s+(\d+)", header) for k in ("MAJOR", "MINOR", "PATCH")]
    if m is None or not all(parts):
        raise BuildError("the cross build printed no ggml version, or ggml-rpc.h has no RPC protocol version")
    return {"format": RPC_STAMP_FORMAT, "llama_cpp_python": full_version, "ggml_version": m.group(1),
            "protocol": [int(p.group(1)) for p in parts if p], "seconds": round(seconds, 1), "machine": "aarch64"}


def _assemble(src: Path, build: Path, version: str, baseline: Baseline, out_dir: Path, stamp: dict[str, Any]) -> Path:
    libs = _libraries(build)
    missing = [t for t in LIB_TARGETS if f"lib{t}.so" not in libs]
    if missing:
        raise ResourceError(f"the cross build made no {', '.join('lib' + t + '.so' for t in missing)}",
                            "rerun with EDGE_RUN_DEBUG=1 and read the build log")
    platform_tag = check_libraries(libs)
    files: dict[str, bytes | Path] = {}
    pkg = src / "llama_cpp"
    for p in sorted(pkg.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts and p.parent.name != "lib":
            files[f"llama_cpp/{p.relative_to(pkg).as_posix()}"] = p
    for name, path in libs.items():
        files[f"llama_cpp/lib/{name}"] = path
    full_version = f"{version}+{baseline.wheel_tag}"
    files[f"llama_cpp/lib/{RPC_STAMP}"] = (json.dumps({**stamp, "baseline": baseline.name}, indent=2) + "\n").encode()
    metadata = set_metadata_version((src / "PKG-INFO").read_text(encoding="utf-8"), full_version)
    return write_wheel(out_dir, DIST, full_version, f"py3-none-{platform_tag}", files, metadata)


def _prefix_map(work: Path) -> list[str]:
    """__FILE__ in GGML_ASSERT messages would carry this machine's build folder into the wheel: map it to '.'."""
    flag = f"-ffile-prefix-map={work}=."
    return [f"-DCMAKE_C_FLAGS={flag}", f"-DCMAKE_CXX_FLAGS={flag}"]


def _build(version: str, baseline: Baseline, toolchain: Toolchain, work: Path, out_dir: Path) -> Path:
    started = time.monotonic()
    src = _extract(fetch_sdist(version, work), work / "src")
    build = work / "build"
    build.mkdir()
    log = work / "build.log"
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    _run(["cmake", "-S", str(src), "-B", str(build), *generator, *CMAKE_OPTIONS,
          f"-DSKBUILD_PLATLIB_DIR={work / 'stage'}", *_prefix_map(work), *toolchain.write_cmake(work, baseline)], log)
    _run(["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2), "--target", *LIB_TARGETS], log)
    stamp = rpc_stamp(src, log, f"{version}+{baseline.wheel_tag}", time.monotonic() - started)
    return _assemble(src, build, version, baseline, out_dir, stamp)


def cached_llama_wheel(baseline: Baseline, version: str | None = None) -> Path | None:
    """The cached wheel, or None (absent, or built by an older edge-run: without ggml-rpc)."""
    folder = wheel_cache_root() / (version or pinned_llama_version()) / baseline.wheel_tag
    try:
        current = json.loads((folder / "build.json").read_text(encoding="utf-8")).get("format") == WHEEL_FORMAT
    except (OSError, ValueError, AttributeError):
        return None
    found = sorted(folder.glob(f"{normalize_dist(DIST)}-*.whl")) if current else []
    return found[0] if found else None


def build_llama_wheel(baseline: Baseline, version: str | None = None, work_dir: Path | None = None,
                      force: bool = False) -> Path:
    """The cross-built llama-cpp-python wheel for ``baseline`` (a cache hit returns at once).

    ``work_dir`` holds the build and the wheel when the cache is not writable (default: a new temp folder).
    """
    version = version or pinned_llama_version()
    hit = None if force else cached_llama_wheel(baseline, version)
    if hit is not None:
        return hit
    toolchain = find_toolchain()
    parent = wheel_cache_root() / version
    cache_ok = _writable(parent)
    base = parent if cache_ok else Path(work_dir or tempfile.mkdtemp(prefix="edge-run-llama-"))
    base.mkdir(parents=True, exist_ok=True)
    remove_dead_builds(base)
    work = Path(tempfile.mkdtemp(prefix=f".edge-run-build-{os.getpid()}-", dir=base))
    started = time.monotonic()
    try:
        out = work / "out"
        out.mkdir()
        wheel = _build(version, baseline, toolchain, work, out)
        info = {"format": WHEEL_FORMAT, "llama_cpp_python": version, "baseline": baseline.name, "march": baseline.march,
                "toolchain": toolchain.name, "seconds": round(time.monotonic() - started, 1), "wheel": wheel.name}
        (out / "build.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        final = (parent if cache_ok else base) / baseline.wheel_tag
        if final.exists():  # --force rebuild, or another process won the race
            shutil.rmtree(final)
        os.rename(out, final)
        return final / wheel.name
    except BuildError as e:
        keep = (base if os.access(base, os.W_OK) else Path(tempfile.gettempdir())) / f"failed-{baseline.wheel_tag}.log"
        with contextlib.suppress(OSError):
            shutil.copy(work / "build.log", keep)
        e.hint = f"the build log is {keep}"
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
