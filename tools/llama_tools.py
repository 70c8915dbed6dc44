"""llama.cpp's own tools, built from the very source llama-cpp-python vendors and linked against the very
libllama / libggml that llama-cpp-python installed, for side-by-side benchmarks.

    <edge-run cache>/llama-tools/<llama-cpp-python version>/
        llama_cpp_python-<v>.tar.gz     pip download --no-deps --no-binary :all: llama-cpp-python==<v>
        src/                            the sdist, unpacked (vendor/llama.cpp, its gguf-py, convert_hf_to_gguf.py)
        obj/                            llama.cpp's `common` library and the tools' sources, compiled (-O3)
        wbin/llama-bench, llama-perplexity, llama-quantize
        wheel-done.json                 written last: {version, targets, lib}

Only `common` (~60 files) and the three tools are compiled; the model code, ggml and its CPU kernels are the
shared libraries of the installed wheel (rpath), so both sides of a comparison run the same machine code.
Nothing of llama.cpp is committed to edge-run. ``python -m tools.llama_tools`` builds and prints the paths.

    wbin/llama-bench-rpc            (llama_bench_rpc) llama-bench's objects + libggml-rpc.so: the RPC backend of the
                                    same source built with -DGGML_RPC=ON (runtime/cluster/build.py, the library
                                    `edge-run worker` and `--cluster` load), registered before main as a
                                    GGML_RPC=ON libggml registers it, so `--rpc host:port,...` works
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edge_run.core.fsutil import cache_dir

TARGETS = ("llama-bench", "llama-perplexity", "llama-quantize")
TOOL_SOURCES = {"llama-bench": "tools/llama-bench", "llama-perplexity": "tools/perplexity",
                "llama-quantize": "tools/quantize"}
CXX_FLAGS = ("-O3", "-DNDEBUG", "-std=gnu++17", "-pthread", "-w", "-fPIC", "-DLLAMA_SUBPROCESS")
WHEEL_LIBS = ("llama", "ggml", "ggml-base", "ggml-cpu")


@dataclass(frozen=True)
class LlamaTools:
    version: str
    root: Path

    @property
    def source(self) -> Path:
        return self.root / "src" / "vendor" / "llama.cpp"

    def binary(self, name: str) -> Path:
        return self.root / "wbin" / name

    @property
    def convert_script(self) -> Path:
        return self.source / "convert_hf_to_gguf.py"

    def convert_env(self) -> dict[str, str]:
        """Environment for convert_hf_to_gguf.py: the gguf-py of the same llama.cpp source first on the path."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.source / "gguf-py"), env.get("PYTHONPATH")]))
        return env


def installed_version() -> str:
    from importlib.metadata import version

    return version("llama_cpp_python")


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def wheel_lib_dir() -> Path:
    import llama_cpp

    return Path(llama_cpp.__file__).parent / "lib"


def _run(cmd: list[str], cwd: Path | None = None) -> None:
    print("+ " + " ".join(cmd)[:300], file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def _unpack(archive: Path, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp, filter="data")
    (top,) = list(tmp.iterdir())
    top.rename(dest)
    tmp.rmdir()


def _build_info(src: Path, dest: Path, version: str) -> Path:
    text = (src / "common" / "build-info.cpp.in").read_text()
    for key, value in {"LLAMA_BUILD_NUMBER": "0", "LLAMA_BUILD_COMMIT": f"llama-cpp-python-{version}",
                       "BUILD_COMPILER": "c++", "BUILD_TARGET": os.uname().machine}.items():
        text = text.replace(f"@{key}@", value)
    dest.write_text(text)
    return dest


def _compile_all(jobs: list[tuple[Path, Path]], includes: list[str], n_jobs: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def one(job: tuple[Path, Path]) -> None:
        cpp, obj = job
        if not obj.exists():
            tmp = obj.with_suffix(".tmp.o")
            _run(["c++", *CXX_FLAGS, *includes, "-c", str(cpp), "-o", str(tmp)])
            tmp.rename(obj)

    with ThreadPoolExecutor(n_jobs) as pool:
        list(pool.map(one, jobs))


def _build(tools: LlamaTools, n_jobs: int) -> None:
    src, obj = tools.source, tools.root / "obj"
    obj.mkdir(parents=True, exist_ok=True)
    includes = [f"-I{src / d}" for d in ("common", "include", "ggml/include", "vendor")]
    common = sorted([*src.glob("common/*.cpp"), *src.glob("common/jinja/*.cpp"), *src.glob("common/parsers/*.cpp"),
                     src / "vendor" / "cpp-httplib" / "httplib.cpp", _build_info(src, obj / "build-info.cpp",
                                                                                 tools.version)])
    tool_cpp = [cpp for t in TARGETS for cpp in sorted((src / TOOL_SOURCES[t]).glob("*.cpp"))]

    def obj_of(cpp: Path) -> Path:
        return obj / (str(cpp.relative_to(src) if cpp.is_relative_to(src) else cpp.name).replace("/", "__") + ".o")

    _compile_all([(c, obj_of(c)) for c in [*common, *tool_cpp]], includes, n_jobs)
    lib = wheel_lib_dir()
    (tools.root / "wbin").mkdir(exist_ok=True)
    for t in TARGETS:
        own = sorted((src / TOOL_SOURCES[t]).glob("*.cpp"))
        objs = [str(obj_of(c)) for c in [*own, *common]]
        _run(["c++", "-pthread", "-o", str(tools.binary(t)), *objs, f"-L{lib}", f"-Wl,-rpath,{lib}",
              *[f"-l{name}" for name in WHEEL_LIBS]])


def llama_tools(version: str | None = None, jobs: int | None = None) -> LlamaTools:
    """The built tools for ``version`` (default: the installed llama-cpp-python's), building them if needed."""
    version = version or installed_version()
    tools = LlamaTools(version, cache_dir() / "llama-tools" / version)
    done = tools.root / "wheel-done.json"
    with _lock(tools.root.parent / f"{version}-wheel.lock"):
        if done.exists() and all(tools.binary(t).exists() for t in TARGETS):
            return tools
        archive = tools.root / f"llama_cpp_python-{version}.tar.gz"
        if not archive.exists():
            _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                  f"llama-cpp-python=={version}", "-d", str(tools.root)])
        if not tools.source.exists():
            shutil.rmtree(tools.root / "src", ignore_errors=True)
            _unpack(archive, tools.root / "src")
        _build(tools, jobs or os.cpu_count() or 2)
        done.write_text(json.dumps({"version": version, "targets": list(TARGETS), "lib": str(wheel_lib_dir())}) + "\n")
    return tools


RPC_SHIM = """// edge-run (tools/llama_tools.py): llama.cpp's RPC backend in the registry before main, as libggml
// does when built with GGML_RPC=ON; llama-bench then finds it by name ("RPC") for --rpc
#include "ggml-backend.h"
#include "ggml-rpc.h"
__attribute__((constructor)) static void edge_run_register_rpc(void) { ggml_backend_register(ggml_backend_rpc_reg()); }
"""


def llama_bench_rpc(version: str | None = None) -> Path:
    """llama-bench with llama.cpp's RPC client (``--rpc``), linked against the wheel's libraries and the
    libggml-rpc.so edge-run's cluster code uses (built first if needed)."""
    from edge_run.runtime.bundle.elf import read_elf
    from edge_run.runtime.cluster.build import build_rpc_library

    tools = llama_tools(version)
    rpc = build_rpc_library(tools.version)
    out = tools.binary("llama-bench-rpc")
    done = tools.root / "rpc-done.json"
    want = {"rpc_library": str(rpc.path), "ggml_version": rpc.ggml_version, "protocol": list(rpc.protocol)}
    with _lock(tools.root.parent / f"{tools.version}-rpc.lock"):
        with contextlib.suppress(OSError, ValueError):
            if out.exists() and json.loads(done.read_text()) == want:
                return out
        src, obj = tools.source, tools.root / "obj"
        shim = obj / "edge-run-rpc-shim.cpp"
        shim.write_text(RPC_SHIM)
        includes = [f"-I{src / d}" for d in ("common", "include", "ggml/include", "vendor")]
        _run(["c++", *CXX_FLAGS, *includes, "-c", str(shim), "-o", str(shim.with_suffix(".o"))])
        own = [c for c in sorted((src / TOOL_SOURCES["llama-bench"]).glob("*.cpp"))]
        objs = sorted(str(o) for o in obj.glob("*.o") if not o.name.startswith(("tools__", "edge-run-")))
        objs += [str(obj / (str(c.relative_to(src)).replace("/", "__") + ".o")) for c in own]
        lib = wheel_lib_dir()
        # beside the binary under its soname (libggml-rpc.so.0 on PyPI's build): the name the binary will need
        soname = read_elf(rpc.path).soname or rpc.path.name
        shutil.copyfile(rpc.path, out.parent / soname)
        tmp = out.with_name(out.name + ".tmp")
        _run(["c++", "-pthread", "-o", str(tmp), str(shim.with_suffix(".o")), *objs, f"-L{lib}", f"-Wl,-rpath,{lib}",
              *[f"-l{name}" for name in WHEEL_LIBS], str(out.parent / soname), "-Wl,-rpath,$ORIGIN"])
        tmp.rename(out)
        done.write_text(json.dumps(want) + "\n")
    return out


if __name__ == "__main__":
    t = llama_tools()
    print(json.dumps({"version": t.version, **{name: str(t.binary(name)) for name in TARGETS},
                      "convert_hf_to_gguf": str(t.convert_script)}, indent=2))
