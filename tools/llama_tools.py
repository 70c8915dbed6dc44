"""llama.cpp's own tools, built from the very source llama-cpp-python vendors, for side-by-side benchmarks.

    <edge-run cache>/llama-tools/<llama-cpp-python version>/
        llama_cpp_python-<v>.tar.gz     pip download --no-deps --no-binary :all: llama-cpp-python==<v>
        src/                            the sdist, unpacked (vendor/llama.cpp, its gguf-py, convert_hf_to_gguf.py)
        build/                          cmake build tree (llama.cpp's defaults, as llama-cpp-python's wheel build)
        bin/llama-bench, llama-perplexity, llama-quantize
        done.json                       written last: {version, targets}

Nothing of llama.cpp is committed to edge-run; it is fetched from PyPI and built on first use (minutes on
2 cores), then reused. ``python -m tools.llama_tools`` builds it and prints the paths.
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
CMAKE_FLAGS = ("-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
               "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DBUILD_SHARED_LIBS=OFF")


@dataclass(frozen=True)
class LlamaTools:
    version: str
    root: Path

    @property
    def source(self) -> Path:
        return self.root / "src" / "vendor" / "llama.cpp"

    def binary(self, name: str) -> Path:
        return self.root / "bin" / name

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


def _run(cmd: list[str], cwd: Path | None = None) -> None:
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
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


def llama_tools(version: str | None = None, jobs: int | None = None) -> LlamaTools:
    """The built tools for ``version`` (default: the installed llama-cpp-python's), building them if needed."""
    version = version or installed_version()
    tools = LlamaTools(version, cache_dir() / "llama-tools" / version)
    done = tools.root / "done.json"
    with _lock(tools.root.parent / f"{version}.lock"):
        if done.exists() and all(tools.binary(t).exists() for t in TARGETS):
            return tools
        archive = tools.root / f"llama_cpp_python-{version}.tar.gz"
        if not archive.exists():
            _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                  f"llama-cpp-python=={version}", "-d", str(tools.root)])
        if not tools.source.exists():
            shutil.rmtree(tools.root / "src", ignore_errors=True)
            _unpack(archive, tools.root / "src")
        build = tools.root / "build"
        _run(["cmake", "-S", str(tools.source), "-B", str(build), *CMAKE_FLAGS])
        _run(["cmake", "--build", str(build), "--config", "Release", "-j", str(jobs or os.cpu_count() or 2),
              "--target", *TARGETS])
        (tools.root / "bin").mkdir(exist_ok=True)
        for t in TARGETS:
            shutil.copy2(build / "bin" / t, tools.binary(t))
        done.write_text(json.dumps({"version": version, "targets": list(TARGETS)}) + "\n")
    return tools


if __name__ == "__main__":
    t = llama_tools()
    print(json.dumps({"version": t.version, **{name: str(t.binary(name)) for name in TARGETS},
                      "convert_hf_to_gguf": str(t.convert_script)}, indent=2))
