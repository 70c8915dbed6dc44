"""A persistent ggml CPU threadpool for a llama.cpp context, as llama.cpp's own tools attach one.

Without an attached pool, ggml makes a disposable one for every graph it computes (ggml-cpu.c,
ggml_graph_compute): each decoded token starts and joins its worker threads again. llama-bench, llama-cli and
llama-server create one pool per context (ggml_threadpool_new) and attach it (llama_attach_threadpool);
llama-cpp-python 0.3.36 binds neither, so they are declared here with ctypes, looked up through libllama's own
handle. dlsym on that handle searches libllama and then the libraries it links (libggml-base.so.0, libggml.so.0 ->
libggml-cpu.so.0), so the pool comes from the very copy of ggml-cpu that computes the context's graphs. Loading
``lib/libggml-cpu.so`` by path instead maps a second copy: the wheel ships ``libggml-cpu.so``, ``.so.0`` and
``.so.0.25.3`` as three separate files (a wheel holds no symlinks), and the dynamic loader only shares a library
whose path or soname it already knows.

    struct ggml_threadpool_params {             ggml.h; 528 bytes on x86-64 and aarch64
        bool     cpumask[GGML_MAX_N_THREADS];     offset 0, 512 bytes: all zero = the inherited affinity
        int      n_threads;                       512
        enum ggml_sched_priority prio;            516 (int; 0 = normal)
        uint32_t poll;                            520: 0 = sleep between graphs .. 100 = spin; ggml's default 50
        bool     strict_cpu;                      524
        bool     paused;                          525   (+2 bytes of padding)
    };

ggml_threadpool_params_init fills ggml's defaults (the ones llama-bench's and llama-cli's pools use).
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

GGML_MAX_N_THREADS = 512


class ThreadpoolParams(ctypes.Structure):
    _fields_ = [("cpumask", ctypes.c_bool * GGML_MAX_N_THREADS), ("n_threads", ctypes.c_int),
                ("prio", ctypes.c_int), ("poll", ctypes.c_uint32), ("strict_cpu", ctypes.c_bool),
                ("paused", ctypes.c_bool)]


@functools.cache
def _functions() -> dict[str, Any]:
    from llama_cpp import llama_cpp as lc

    params_p = ctypes.POINTER(ThreadpoolParams)
    table = {  # name: (argument types, result type); defined in ggml-base, ggml-cpu, ggml-cpu, llama, llama
        "ggml_threadpool_params_init": ([params_p, ctypes.c_int], None),
        "ggml_threadpool_new": ([params_p], ctypes.c_void_p),
        "ggml_threadpool_free": ([ctypes.c_void_p], None),
        "llama_attach_threadpool": ([ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p], None),
        "llama_detach_threadpool": ([ctypes.c_void_p], None),
    }
    out: dict[str, Any] = {}
    for name, (args, result) in table.items():
        fn = getattr(lc._lib, name)  # AttributeError where the loader can't find it: the backend runs without a pool
        fn.argtypes, fn.restype = args, result
        out[name] = fn
    return out


class Threadpool:
    """``n_threads`` ggml workers attached to llama.cpp context ``ctx`` (a llama_context pointer) for its
    single-token and batch graphs alike; :meth:`close` detaches and frees them (call it before the context
    is freed)."""

    def __init__(self, ctx: Any, n_threads: int) -> None:
        fn = _functions()
        params = ThreadpoolParams()
        fn["ggml_threadpool_params_init"](ctypes.byref(params), n_threads)
        pool = fn["ggml_threadpool_new"](ctypes.byref(params))
        if not pool:
            raise RuntimeError(f"ggml could not start a pool of {n_threads} threads")
        self._fn, self._ctx, self._pool = fn, ctx, pool
        fn["llama_attach_threadpool"](ctx, pool, None)  # NULL batch pool: the same pool for batches

    def close(self) -> None:
        if self._pool is not None:
            self._fn["llama_detach_threadpool"](self._ctx)
            self._fn["ggml_threadpool_free"](self._pool)
            self._pool = None
