"""llama.cpp's RPC backend, ``libggml-rpc.so``, for the llama-cpp-python this edge-run runs on, built once.

llama-cpp-python builds llama.cpp without ``GGML_RPC``, but its sdist vendors ``ggml/src/ggml-rpc``. This
configures that vendored llama.cpp with ``-DGGML_RPC=ON`` and builds the one target ``ggml-rpc``:

    pip download llama-cpp-python==<installed version> (sdist; the bundle's cache and helpers: llama_wheel.py)
        │  vendor/llama.cpp, the very source the installed libggml-base.so was built from
        ▼
    cmake -DGGML_RPC=ON -DGGML_CPU=OFF ... --target ggml-rpc      (ggml-base is compiled as a dependency, not kept)
        ▼
    <cache>/llama-cpp-python/<version>/ggml-rpc-<machine>/libggml-rpc.so + build.json

No CPU backend is compiled and no library of llama-cpp-python is replaced: when edge-run loads
``libggml-rpc.so`` (native.py), its DT_NEEDED ``libggml-base.so.0`` binds by soname to the copy ``llama_cpp``
already loaded, so the RPC backend and llama.cpp share one ggml. The build runs in a
``.edge-run-build-PID-*`` folder and is renamed into place when complete; a lock file makes a second process
wait for the first build instead of repeating it.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edge_run.core.errors import ClusterError, EdgeRunError

LIB_NAME = "libggml-rpc.so"
BUILD_STAMP = "build.json"
STAMP_FORMAT = 1
CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release", "-DGGML_RPC=ON", "-DGGML_RPC_RDMA=OFF", "-DGGML_CPU=OFF", "-DGGML_NATIVE=OFF",
    "-DGGML_OPENMP=OFF", "-DGGML_BACKEND_DL=OFF", "-DBUILD_SHARED_LIBS=ON", "-DGGML_CCACHE=OFF",
    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_TOOLS=OFF",
    "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_CURL=OFF",
    # no RUNPATH to the build folder: libggml-base must come from the process (llama_cpp's copy)
    "-DCMAKE_SKIP_BUILD_RPATH=ON",
)
# what libggml-rpc.so may need: the C/C++ runtime and the ggml-base llama_cpp ships
ALLOWED_NEEDED = re.compile(r"^(libc|libm|libdl|libpthread|librt|ld-linux[\w.-]*|libstdc\+\+|libgcc_s|libggml-base)"
                            r"\.so(\.\d+)*$")
BUILD_COMMAND = "edge-run cluster build"


@dataclass(frozen=True)
class RpcBuild:
    path: Path  # libggml-rpc.so
    llama_cpp_python: str
    ggml_version: str
    protocol: tuple[int, int, int]  # RPC_PROTO_{MAJOR,MINOR,PATCH}_VERSION of the vendored ggml-rpc.h
    seconds: float

    @property
    def protocol_text(self) -> str:
        return ".".join(map(str, self.protocol))


def installed_llama_version() -> str:
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError as e:
        raise ClusterError("llama-cpp-python is not installed", "pip install -e . (edge-run pins it)") from e


def llama_lib_dir() -> Path:
    """llama_cpp/lib of the installed package, found without importing it."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise ClusterError("llama-cpp-python is not installed", "pip install -e . (edge-run pins it)")
    return Path(next(iter(spec.submodule_search_locations))) / "lib"


def ggml_base_soname() -> str:
    """The name libllama needs ggml-base by (libggml-base.so.0 from PyPI's sdist build, libggml-base.so in
    edge-run's Pi wheel): libggml-rpc.so must need the same name to bind to the loaded copy."""
    from edge_run.runtime.bundle.elf import read_elf

    lib = llama_lib_dir() / "libllama.so"
    if not lib.is_file():
        raise ClusterError(f"llama-cpp-python has no {lib}", "reinstall llama-cpp-python")
    names = [n for n in read_elf(lib).needed if n.startswith("libggml-base.so")]
    return names[0] if names else "libggml-base.so.0"


def rpc_cache_folder(version: str) -> Path:
    from edge_run.runtime.bundle.llama_wheel import wheel_cache_root

    return wheel_cache_root() / version / f"ggml-rpc-{platform.machine()}"


def read_stamp(folder: Path, version: str) -> RpcBuild | None:
    """The finished build in ``folder`` for ``version``, or None (absent, another version, damaged)."""
    try:
        info = json.loads((folder / BUILD_STAMP).read_text(encoding="utf-8"))
        build = RpcBuild(folder / LIB_NAME, str(info["llama_cpp_python"]), str(info["ggml_version"]),
                         (int(info["protocol"][0]), int(info["protocol"][1]), int(info["protocol"][2])),
                         float(info["seconds"]))
        ok = info.get("format") == STAMP_FORMAT and build.llama_cpp_python == version and build.path.is_file()
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None
    return build if ok else None


def cached_rpc_library(version: str | None = None) -> RpcBuild | None:
    version = version or installed_llama_version()
    return read_stamp(rpc_cache_folder(version), version)


def protocol_of(header: Path) -> tuple[int, int, int]:
    text = header.read_text(encoding="utf-8", errors="replace")
    parts = [re.search(rf"#define\s+RPC_PROTO_{k}_VERSION\s+(\d+)", text) for k in ("MAJOR", "MINOR", "PATCH")]
    if not all(parts):
        raise ClusterError(f"{header.name} in the llama-cpp-python sdist has no RPC protocol version",
                           "this llama-cpp-python is too old for llama.cpp's RPC backend")
    major, minor, patch = (int(m.group(1)) for m in parts if m)
    return major, minor, patch


def _run(cmd: list[str], log: Path, cwd: Path | None = None) -> None:
    from edge_run.runtime.bundle.llama_wheel import run_group

    with open(log, "ab") as f:
        f.write(("$ " + " ".join(cmd) + "\n").encode())
        f.flush()
        try:
            proc = run_group(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=cwd)
        except FileNotFoundError as e:
            raise ClusterError(f"{cmd[0]} is not installed; it is needed to build llama.cpp's RPC library once",
                               "install cmake and a C++ compiler (apt install cmake g++), then run "
                               f"`{BUILD_COMMAND}`") from e
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["?"]
        raise ClusterError(f"{Path(cmd[0]).name} failed while building llama.cpp's RPC library "
                           f"({tail[0].strip()[:200]})")


def _compile(version: str, work: Path, out: Path) -> RpcBuild:
    from edge_run.runtime.bundle.elf import read_elf
    from edge_run.runtime.bundle.llama_wheel import _extract, fetch_sdist

    started = time.monotonic()
    src = _extract(fetch_sdist(version, work), work / "src") / "vendor" / "llama.cpp"
    protocol = protocol_of(src / "ggml" / "include" / "ggml-rpc.h")
    build, log = work / "build", work / "build.log"
    soname_flags = [] if re.search(r"\.so\.\d+$", ggml_base_soname()) else ["-DCMAKE_PLATFORM_NO_VERSIONED_SONAME=ON"]
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    prefix_map = f"-ffile-prefix-map={work}=."  # no build folder in GGML_ASSERT messages
    _run(["cmake", "-S", str(src), "-B", str(build), *generator, *CMAKE_OPTIONS, *soname_flags,
          f"-DCMAKE_C_FLAGS={prefix_map}", f"-DCMAKE_CXX_FLAGS={prefix_map}"], log)
    _run(["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2), "--target", "ggml-rpc"], log)
    found = sorted(p for p in build.rglob("libggml-rpc.so*") if p.is_file() and not p.is_symlink())
    if not found:
        raise ClusterError("the build made no libggml-rpc.so", f"read {log}")
    shutil.copyfile(found[0], out / LIB_NAME)
    bad = [n for n in read_elf(out / LIB_NAME).needed if not ALLOWED_NEEDED.match(n)]
    if bad:
        raise ClusterError(f"the built libggml-rpc.so needs {', '.join(bad)}",
                           "report it: it should need ggml-base only")
    m = re.search(r"ggml version:\s*(\S+)", log.read_text(errors="replace"))
    result = RpcBuild(out / LIB_NAME, version, m.group(1) if m else "?", protocol,
                      round(time.monotonic() - started, 1))
    stamp = {"format": STAMP_FORMAT, "llama_cpp_python": version, "ggml_version": result.ggml_version,
             "protocol": list(protocol), "seconds": result.seconds, "machine": platform.machine(),
             "cmake_options": [*CMAKE_OPTIONS, *soname_flags]}
    (out / BUILD_STAMP).write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")
    return result


@contextlib.contextmanager
def _build_lock(parent: Path) -> Iterator[None]:
    with open(parent / ".ggml-rpc-build.lock", "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # a second builder waits for the first, then finds its result
        yield


def build_rpc_library(version: str | None = None, force: bool = False) -> RpcBuild:
    """libggml-rpc.so for llama-cpp-python ``version`` (default: the installed one); a cache hit returns at once.
    ClusterError (with the log's path) when cmake, a compiler or the sdist is missing or the build fails."""
    from edge_run.runtime.bundle.llama_wheel import remove_dead_builds

    version = version or installed_llama_version()
    final = rpc_cache_folder(version)
    if not force and (hit := read_stamp(final, version)) is not None:
        return hit
    parent = final.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ClusterError(f"cannot write the build cache {parent} ({e.strerror})",
                           "set EDGE_RUN_CACHE to a writable folder") from e
    with _build_lock(parent):
        if not force and (hit := read_stamp(final, version)) is not None:
            return hit
        remove_dead_builds(parent)
        work = Path(tempfile.mkdtemp(prefix=f".edge-run-build-{os.getpid()}-", dir=parent))
        try:
            out = work / "out"
            out.mkdir()
            try:
                _compile(version, work, out)
            except EdgeRunError as e:
                keep = parent / f"failed-ggml-rpc-{platform.machine()}.log"
                with contextlib.suppress(OSError):
                    shutil.copy(work / "build.log", keep)
                hint = f"{e.hint.rstrip('.')}; " if e.hint else ""
                raise ClusterError(e.message, f"{hint}the build log is {keep}; then run `{BUILD_COMMAND}`") from e
            if final.exists():
                shutil.rmtree(final)
            os.rename(out, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    built = read_stamp(final, version)
    if built is None:
        raise ClusterError(f"the RPC library build left no usable stamp in {final}", f"run `{BUILD_COMMAND}` again")
    return built
