"""Quantize a full-precision GGUF with llama.cpp (llama_model_quantize) in a child process.

A GGML_ASSERT inside llama.cpp aborts the whole process, so the quantizer never runs in ours:

    edge-run (parent)                         python -m edge_run.converters.gguf.quantize (child)
      atomic temp path  ── argv, stdin(imatrix) ──>  llama_model_quantize(in, tmp, params)
      wait / forward SIGINT/SIGTERM <── exit code, stderr tail
      rename tmp -> final on success

The importance matrix travels as an .npz file of {tensor name: float32 per-column importances}.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edge_run.converters.gguf.quant_types import QuantType
from edge_run.core.errors import EdgeRunError, Interrupted, ResourceError

# Rows of a tensor llama.cpp converts at once: bounds the quantizer's memory to about this much
# per thread instead of whole tensors (a 262k-vocab embedding is 670 MB in float32).
MAX_BUF_BYTES = 64 * 1024 * 1024
# less free space than this after a failed quantization means the disk filled up
MIN_FREE_BYTES = 1 << 20


class QuantizeError(EdgeRunError):
    exit_code = 3


def quantize_gguf(src: Path, dest: Path, qtype: QuantType, n_threads: int = 0,
                  imatrix: Path | None = None) -> tuple[int, int]:
    """Run the quantizer child; ``dest`` is a temp path the caller renames.

    Returns (weight bytes, weight elements) of the result, measured by the child (reading a GGUF's
    tensor table with GGUFReader costs memory proportional to the vocabulary; the child has it to spare).
    """
    cmd = [sys.executable, "-m", __name__, str(src), str(dest), str(int(qtype.ftype)), str(n_threads)]
    if imatrix is not None:
        cmd.append(str(imatrix))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=die_with_parent(os.getpid()))
    try:
        out, err = proc.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        proc.wait()
        raise
    if proc.returncode != 0:
        tail = [ln for ln in err.decode("utf-8", "replace").splitlines() if ln.strip()][-3:]
        msg = " | ".join(tail) or f"exit code {proc.returncode}"
        if proc.returncode < 0 and -proc.returncode in (2, 15):
            raise Interrupted(f"quantization to {qtype.name} was interrupted")
        if "No space left" in msg or _out_of_space(dest):
            raise ResourceError(f"disk full while quantizing to {qtype.name}",
                                "free some space or choose another --out")
        raise QuantizeError(f"llama.cpp failed to quantize to {qtype.name}: {msg}",
                            "run with EDGE_RUN_DEBUG=1 for the full log")
    stats = json.loads(out.decode().strip().splitlines()[-1])
    return int(stats["bytes"]), int(stats["elements"])


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent: int) -> Callable[[], None]:
    """A preexec_fn for a child that must not outlive edge-run: the kernel sends it SIGKILL when the parent
    dies (even by SIGKILL or the OOM killer), and a parent that died before prctl took effect is caught by
    comparing getppid with the parent's pid (the child was reparented)."""

    def arm() -> None:
        with contextlib.suppress(OSError, AttributeError):  # not Linux: the signal handler path still applies
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return arm


def _out_of_space(dest: Path) -> bool:
    """Did the quantizer fail because its output could not be written? (llama.cpp reports a failed write as
    an iostream error without errno: look at the free space and the file-size limit instead.)"""
    try:
        free = shutil.disk_usage(dest.parent).free
        size = dest.stat().st_size if dest.exists() else 0
    except OSError:
        return False
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return free < MIN_FREE_BYTES or (soft != resource.RLIM_INFINITY and size + MIN_FREE_BYTES >= soft)


def _child(argv: list[str]) -> int:
    import llama_cpp

    src, dest, ftype, n_threads = argv[0], argv[1], int(argv[2]), int(argv[3])
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = n_threads
    params.max_buf_size = MAX_BUF_BYTES
    keep: list[object] = []
    if len(argv) > 4:
        data = np.load(argv[4])
        entries = (llama_cpp.llama_model_imatrix_data * (len(data.files) + 1))()
        for i, name in enumerate(data.files):
            arr = np.ascontiguousarray(data[name], dtype=np.float32)
            keep.append(arr)
            cname = name.encode()
            keep.append(cname)
            entries[i].name = cname
            entries[i].data = arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = arr.size
        entries[len(data.files)].name = None  # NULL-terminated list
        keep.append(entries)
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    rc = llama_cpp.llama_model_quantize(src.encode(), dest.encode(), ctypes.byref(params))
    if rc != 0:
        return 1
    del keep
    from edge_run.core.gguf_header import read_gguf_header

    header = read_gguf_header(Path(dest), max_items=0)  # the tensor table only: the vocabulary is skipped
    stats = {"bytes": sum(t.n_bytes for t in header.tensors), "elements": sum(t.n_elements for t in header.tensors)}
    sys.stdout.write(json.dumps(stats) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
