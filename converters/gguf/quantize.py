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
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from edge_run.runtime.errors import EdgeRunError, Interrupted, ResourceError

from .quant_types import QuantType


class QuantizeError(EdgeRunError):
    exit_code = 3


def quantize_gguf(src: Path, dest: Path, qtype: QuantType, n_threads: int = 0,
                  imatrix: Path | None = None) -> None:
    """Run the quantizer child; ``dest`` is a temp path the caller renames."""
    cmd = [sys.executable, "-m", __name__, str(src), str(dest), str(int(qtype.ftype)), str(n_threads)]
    if imatrix is not None:
        cmd.append(str(imatrix))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _, err = proc.communicate()
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
        if "No space left" in msg:
            raise ResourceError(f"disk full while quantizing to {qtype.name}", "free some space")
        raise QuantizeError(f"llama.cpp failed to quantize to {qtype.name}: {msg}",
                            "run with EDGE_RUN_DEBUG=1 for the full log")


def _child(argv: list[str]) -> int:
    import llama_cpp

    src, dest, ftype, n_threads = argv[0], argv[1], int(argv[2]), int(argv[3])
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = n_threads
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
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
