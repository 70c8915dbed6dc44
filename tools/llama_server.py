"""llama.cpp's `llama-server`, built from the source llama-cpp-python vendors and linked against the wheel's own
libllama / libggml / libmtmd (as tools/llama_tools.py builds llama-bench), for tools/bench_serve.py --parallel.

    <edge-run cache>/llama-tools/<version>/
        obj/ui/ui.cpp, ui.h        the web UI's asset table, generated empty (scripts/ui-assets.cmake, no UI)
        obj/tools__server__*.o     tools/server's sources, compiled (-O3)
        wbin/llama-server

``python -m tools.llama_server`` builds it (reusing llama_tools' compiled `common`) and prints its path.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tools.llama_tools import WHEEL_LIBS, _compile_all, _lock, _run, llama_tools, wheel_lib_dir


def llama_server(version: str | None = None, jobs: int | None = None) -> Path:
    tools = llama_tools(version)
    out = tools.binary("llama-server")
    with _lock(tools.root.parent / f"{tools.version}-server.lock"):
        if out.exists():
            return out
        src, obj = tools.source, tools.root / "obj"
        ui = obj / "ui"
        ui.mkdir(parents=True, exist_ok=True)
        if not (ui / "ui.cpp").exists():
            _run(["cmake", f"-DUI_SOURCE_DIR={src / 'tools' / 'ui'}", f"-DUI_BINARY_DIR={ui}",
                  f"-DLLAMA_SOURCE_DIR={src}", "-DLLAMA_BUILD_NUMBER=0", "-DHF_BUCKET=", "-DHF_VERSION=",
                  "-DHF_ENABLED=OFF", "-DBUILD_UI=OFF", "-DLLAMA_UI_GZIP=ON", "-P",
                  str(src / "scripts" / "ui-assets.cmake")])
        includes = [f"-I{src / d}" for d in ("common", "include", "ggml/include", "vendor", "tools/mtmd",
                                             "tools/server", ".")] + [f"-I{ui}"]
        own = sorted((src / "tools" / "server").glob("*.cpp"))
        jobs_ = [(cpp, obj / ("tools__server__" + cpp.name + ".o")) for cpp in own]
        jobs_.append((ui / "ui.cpp", obj / "tools__ui__ui.cpp.o"))
        _compile_all(jobs_, includes, jobs or os.cpu_count() or 2)
        common = sorted(str(o) for o in obj.glob("*.o") if not o.name.startswith(("tools__", "edge-run-")))
        lib = wheel_lib_dir()
        tmp = out.with_name(out.name + ".tmp")
        out.parent.mkdir(exist_ok=True)
        _run(["c++", "-pthread", "-o", str(tmp), *[str(o) for _, o in jobs_], *common, f"-L{lib}",
              f"-Wl,-rpath,{lib}", "-lmtmd", *[f"-l{name}" for name in WHEEL_LIBS]])
        tmp.rename(out)
    return out


def version_line(binary: Path) -> str:
    res = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60)
    return (res.stdout + res.stderr).strip().splitlines()[0] if (res.stdout + res.stderr).strip() else ""


if __name__ == "__main__":
    path = llama_server()
    print(path, version_line(path), file=sys.stdout)
