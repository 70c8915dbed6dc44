"""Check a GGUF file with llama.cpp in a child process before this process loads it.

llama.cpp rejects most corrupt files with an error, but a few defects end in a GGML_ASSERT that
aborts the whole process (a vocabulary with two identical tokens, for one). So the first load of a
file goes through a child that reads only the header and vocabulary::

    edge-run (parent)                                  python -m edge_run.runtime.backends.preflight FILE (child)
      cache hit (path, size, mtime)? ── yes ──> load      llama_model_load_from_file(vocab_only=True)
      no ── spawn ──────────────────────────────────>     print {"context_length", "n_vocab", ...}
         <── exit 0 + JSON: cache it, load             exit 1: llama.cpp's own error
         <── killed by SIGABRT: ArtifactError          GGML_ASSERT: abort()

The result is cached in ``cache_dir()/preflight.json`` keyed by path, size and mtime, so only a new or
changed file pays for the child (about 0.5-2 s, most of it importing llama_cpp).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from edge_run.core.errors import ArtifactError, EdgeRunError, ResourceError
from edge_run.core.stamp_cache import StampCache

PROBE_TIMEOUT_S = 300
_ASSERT = re.compile(r"(GGML_ASSERT\(.*?\) failed|terminate called.*|what\(\):.*)")
# llama.cpp log lines that say why a load failed, most specific first
# a memory limit in the child: Python's MemoryError, C++'s bad_alloc, mmap/ld.so failing to map (ulimit -v)
_OUT_OF_MEMORY = re.compile(r"(MemoryError|std::bad_alloc|Cannot allocate memory|failed to mmap|failed to map segment"
                            r"|out of memory)", re.IGNORECASE)
_LOAD_ERRORS = (re.compile(r"gguf_init_from_\w+: (.*)"), re.compile(r"error loading model: (.*)"))
PROBED = StampCache("preflight")  # path, size, mtime -> the child's header facts


def check_gguf(path: Path) -> dict[str, Any]:
    """Header facts of a GGUF that llama.cpp can read (``context_length``, ``n_vocab``, ``architecture``);
    ArtifactError when llama.cpp rejects it or would abort on it."""
    path = Path(path)
    cached = PROBED.get(path)
    if isinstance(cached, dict):
        return cached
    try:
        proc = subprocess.run([sys.executable, "-m", __name__, str(path)], capture_output=True, text=True,
                              errors="replace", timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise ArtifactError(f"llama.cpp took over {PROBE_TIMEOUT_S} s to read the header of {path.name}",
                            "the file is corrupt or on a very slow disk") from e
    if proc.returncode != 0:
        raise _failure(path, proc.returncode, proc.stderr)
    try:
        info = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError) as e:
        raise ArtifactError(f"llama.cpp's header check of {path.name} printed no result") from e
    PROBED.put(path, info)  # skipped when the cache is read-only
    return info


def _failure(path: Path, returncode: int, stderr: str) -> EdgeRunError:
    hint = "the file is corrupt or truncated: re-convert or re-download it"
    oom = _OUT_OF_MEMORY.search(stderr)
    if oom or returncode == -9:  # a memory limit (ulimit -v, cgroup) or the OOM killer, not a corrupt file
        return ResourceError(f"not enough memory to read {path.name} ({oom.group(1) if oom else 'killed'})",
                             "free memory, raise the memory limit (ulimit -v, the container's memory.max) "
                             "or pick a smaller artifact")
    crash = _ASSERT.search(stderr)
    if returncode < 0 or crash:
        what = crash.group(1) if crash else f"signal {-returncode}"
        return ArtifactError(f"llama.cpp aborts reading {path.name} ({what})", hint)
    reason = next((m.group(1).strip() for pattern in _LOAD_ERRORS if (m := pattern.search(stderr))), "")
    return ArtifactError(f"llama.cpp cannot read {path.name}" + (f" ({reason})" if reason else ""), hint)


def _child(path: str) -> int:
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(path.encode(), params)
    if not model:
        return 1
    buf = ctypes.create_string_buffer(4096)
    meta: dict[str, str] = {}
    for i in range(llama_cpp.llama_model_meta_count(model)):
        if llama_cpp.llama_model_meta_key_by_index(model, i, buf, len(buf)) < 0:
            continue
        name = buf.value.decode("utf-8", "replace")
        if llama_cpp.llama_model_meta_val_str_by_index(model, i, buf, len(buf)) >= 0:
            meta[name] = buf.value.decode("utf-8", "replace")
    arch = meta.get("general.architecture", "")
    ctx = meta.get(f"{arch}.context_length", "")
    info = {"architecture": arch, "context_length": int(ctx) if ctx.isdigit() else 0,
            "n_vocab": int(llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model)))}
    llama_cpp.llama_model_free(model)
    sys.stdout.write(json.dumps(info) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))


def read_gguf_header(path: Path) -> Any:
    """gguf-py's GGUFReader over ``path``, refusing any read past the end of the file.

    gguf-py trusts the counts in the header: an array whose length says 10^11 makes it append empty
    views in a loop until the process runs out of memory. Every read here is checked against the file
    size, so a corrupt count fails at once. Any failure is an ArtifactError.
    """
    import gguf
    import numpy as np

    class BoundedReader(gguf.GGUFReader):
        def _get(self, offset: int, dtype: Any, count: int = 1, override_order: Any = None) -> Any:
            if offset + np.dtype(dtype).itemsize * int(count) > len(self.data):
                raise ValueError(f"a field at byte {offset} runs past the end of the file")
            return super()._get(offset, dtype, count, override_order)

    path = Path(path)
    try:
        return BoundedReader(path)
    except (ValueError, OSError, IndexError, KeyError, TypeError, OverflowError) as e:
        raise ArtifactError(f"{path.name} is not a readable GGUF file ({e})", "re-convert or re-download it") from e
