"""The GGUF backend attaches one persistent ggml threadpool to its llama.cpp context, as llama-bench and llama-cli
do (src/edge_run/runtime/backends/threadpool.py). The numbers must not change: with the same thread count ggml splits
every
graph the same way, so the logits equal plain llama-cpp-python's (no pool: a fresh set of threads per graph)
bit for bit, for a batch and for single-token decodes."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest

from edge_run.runtime.artifacts.formats import open_backend
from edge_run.runtime.backends import LoadOptions
from edge_run.runtime.backends.threadpool import ThreadpoolParams

CTX = 64


def _logits(llm: object, tokens: list[int]) -> np.ndarray:
    llm.reset()  # type: ignore[attr-defined]
    llm.eval(tokens[:40])  # one batch  # type: ignore[attr-defined]
    for t in tokens[40:48]:  # then single-token decodes, as generation runs them
        llm.eval([t])  # type: ignore[attr-defined]
    return np.array(llm.scores[:48], dtype=np.float32)  # type: ignore[attr-defined]


@pytest.mark.parametrize("threads", [1, 2])
def test_pool_gives_the_same_logits_as_plain_llama_cpp(tiny_gguf: Path, threads: int) -> None:
    import llama_cpp

    from edge_run.runtime.backends.gguf import _quiet_stderr

    options = LoadOptions(n_ctx=CTX, n_batch=CTX, logits_all=True, n_threads=threads)
    with open_backend(tiny_gguf, options) as b:
        assert b._pool is not None  # type: ignore[attr-defined]
        tokens = b.tokenize("The quick brown fox jumps over the lazy dog. " * 8)[:48]
        ours = _logits(b.llm, tokens)  # type: ignore[attr-defined]
    with _quiet_stderr():
        plain = llama_cpp.Llama(model_path=str(tiny_gguf), n_ctx=CTX, n_batch=CTX, n_ubatch=CTX, n_threads=threads,
                                n_threads_batch=threads, logits_all=True, flash_attn=True, verbose=False)
    try:
        ref = _logits(plain, tokens)
    finally:
        plain.close()
    assert np.array_equal(ours, ref)


def test_params_struct_matches_ggml() -> None:
    """The ctypes layout is ggml.h's: ggml_threadpool_params_init writes n_threads and poll where we read them."""
    from edge_run.runtime.backends.threadpool import _functions

    assert ctypes.sizeof(ThreadpoolParams) == 528
    p = ThreadpoolParams()
    p.paused = True
    _functions()["ggml_threadpool_params_init"](ctypes.byref(p), 3)
    assert (p.n_threads, p.prio, p.poll, p.strict_cpu, p.paused) == (3, 0, 50, False, False)
    assert not any(p.cpumask)


ONE_COPY_PROBE = """
import sys
import numpy as np
from pathlib import Path
from edge_run.converters.gguf.half import _ggml_converter, to_f16
from edge_run.runtime.backends import LoadOptions
from edge_run.runtime.artifacts.formats import open_backend
assert _ggml_converter() is not None
to_f16(np.ones(8, dtype=np.float32))  # the converter's libggml-cpu first, as `edge-run convert` loads it
with open_backend(Path(sys.argv[1]), LoadOptions(n_ctx=32, n_threads=2)) as b:
    assert b._pool is not None
    b.tokenize("hello")
    with open("/proc/self/maps") as f:
        print("\\n".join(sorted({line.split()[-1] for line in f if "/libggml" in line})))
"""


def test_one_copy_of_each_ggml_library(tiny_gguf: Path) -> None:
    """The pool and the fp16 converter use the ggml libraries llama.cpp runs on: no second copy is mapped. The wheel
    ships libggml-cpu.so and libggml-cpu.so.0 as separate files, and loading the first by path mapped both."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", ONE_COPY_PROBE, str(tiny_gguf)], capture_output=True, text=True,
                         check=True).stdout.split()
    stems = [Path(p).name.split(".so")[0] for p in out]
    assert {"libggml-base", "libggml-cpu"} <= set(stems)
    assert len(stems) == len(set(stems)), out
