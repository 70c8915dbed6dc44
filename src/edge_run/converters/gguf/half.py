"""float32 -> float16 with ggml's own row converter, the one llama.cpp uses (F16C / AVX-512 on x86, the
hardware conversion where an ARM core has it; round to nearest even, bit-identical to numpy's cast, about 15x
faster on x86). It is loaded from the libggml-cpu that llama-cpp-python installed, without importing llama_cpp
(that would load libllama too); numpy's cast stands in wherever the library cannot be loaded.

    ggml-cpu.h:  void ggml_cpu_fp32_to_fp16(const float * x, ggml_fp16_t * y, int64_t n);
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np

LIBRARY_NAMES = ("libggml-cpu.so", "libggml-cpu.dylib", "ggml-cpu.dll")
F16_EXPONENT = 0x7C00  # all exponent bits set: inf or NaN


def _library_files(libdir: Path) -> list[Path]:
    """Where to look for libggml-cpu, its soname file first (``libggml-cpu.so.0``): libllama links that name, so
    a process that loads llama.cpp later shares this copy instead of mapping a second one (the wheel ships
    ``.so``, ``.so.0`` and ``.so.0.x.y`` as separate files)."""
    sonames = sorted(libdir.glob("libggml-cpu.so.*"), key=lambda p: (len(p.name), p.name))
    return sonames[:1] + [libdir / name for name in LIBRARY_NAMES]


@functools.cache
def _ggml_converter() -> Callable[[int, int, int], None] | None:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        return None
    libdir = Path(spec.origin).parent / "lib"
    for path in _library_files(libdir):
        try:
            lib = ctypes.CDLL(str(path))
        except OSError:
            continue
        try:
            init, convert = lib.ggml_cpu_init, lib.ggml_cpu_fp32_to_fp16
        except AttributeError:
            return None
        init.argtypes, init.restype = [], None
        convert.argtypes, convert.restype = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64], None
        init()  # ggml's conversion tables and CPU feature detection
        return convert
    return None


def to_f16(x: np.ndarray) -> np.ndarray:
    """``x`` as a C-contiguous float16 array (values beyond +-65504 become inf, as in any float16 cast)."""
    src = np.ascontiguousarray(x, dtype=np.float32)
    convert = _ggml_converter()
    if convert is None:
        with np.errstate(over="ignore"):
            return src.astype(np.float16)
    out = np.empty(src.shape, dtype=np.float16)
    if src.size:
        convert(src.ctypes.data, out.ctypes.data, src.size)
    return out


def all_finite_f16(h: np.ndarray) -> bool:
    """No inf or NaN in a float16 array (on the bits: numpy's isfinite on float16 is ~15x slower)."""
    return h.size == 0 or int((h.view(np.uint16) & 0x7FFF).max()) < F16_EXPONENT
