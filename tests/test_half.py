"""src/edge_run/converters/gguf/half.py: ggml's float32 -> float16 row converter, bit for bit numpy's cast (round to
nearest
even, subnormals, overflow to inf, signed zeros), and the finite check on float16 bits."""

from __future__ import annotations

import numpy as np
import pytest

from edge_run.converters.gguf import half

EDGES = np.array([0.0, -0.0, 1e-8, -1e-8, 5.96e-8, 2.98e-8, 6.1e-5, 6.0e-5, 65504.0, 65519.99, 65520.0, -65520.0,
                  1e30, -1e30, 1.0 + 2**-11, 1.0 + 3 * 2**-11, 2049.0, 2051.0, np.pi, -np.e], dtype=np.float32)


def _values() -> np.ndarray:
    rng = np.random.default_rng(0)
    wide = (rng.standard_normal(100_003) * rng.choice([1e-6, 1e-3, 1.0, 1e3, 1e5], 100_003)).astype(np.float32)
    return np.concatenate([EDGES, wide])


def test_ggml_converter_is_loaded_and_bit_identical_to_numpy() -> None:
    assert half._ggml_converter() is not None  # llama-cpp-python's libggml-cpu is installed with edge-run
    x = _values()
    with np.errstate(over="ignore"):
        want = x.astype(np.float16)
    got = half.to_f16(x)
    assert got.dtype == np.float16 and got.flags.c_contiguous
    assert np.array_equal(got.view(np.uint16), want.view(np.uint16))


def test_strided_and_2d_input(monkeypatch: pytest.MonkeyPatch) -> None:
    x = _values()[:100_000].reshape(400, 250)[:, ::2]  # not contiguous
    with np.errstate(over="ignore"):
        want = x.astype(np.float16)
    assert np.array_equal(half.to_f16(x).view(np.uint16), want.view(np.uint16))
    monkeypatch.setattr(half, "_ggml_converter", lambda: None)  # the numpy fallback gives the same
    assert np.array_equal(half.to_f16(x).view(np.uint16), want.view(np.uint16))
    assert half.to_f16(np.zeros((0, 3), np.float32)).shape == (0, 3)


def test_finite_check_on_bits() -> None:
    h = np.array([0, 1, -65504, 6e-8], dtype=np.float16)
    assert half.all_finite_f16(h) and half.all_finite_f16(h[:0])
    for bad in (np.inf, -np.inf, np.nan):
        assert not half.all_finite_f16(np.append(h, np.float16(bad)))
