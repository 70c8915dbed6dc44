"""Scale search for block-wise weight quantization: per block, the (scale, zero point) that minimise the
weighted reconstruction error, instead of round-to-nearest over the block's min/max.

The idea is llama.cpp's k-quant quantizers' (a grid of candidate inverse scales around nmax / range; for
each, round, then refit the scale and offset by weighted least squares; keep the best), written here for
whole row chunks at once in numpy and for MatMulNBits' integer zero points:

    per block x[0..B) with weights w[0..B) (importance of each input column; 1 without calibration):

    candidate c:  iscale = (nmax + RMIN + c * RDELTA) / (max - min)       c = 0 .. NSTEP
                  zp     = clip(round(-min * iscale), 0, nmax)
                  L      = clip(round(x * iscale) + zp, 0, nmax)
                  (s, m) = argmin sum w (s*L + m - x)^2                  closed form
                  zp     = clip(round(-m / s), 0, nmax)                  the offset as an integer zero point
                  s      = sum w x (L - zp) / sum w (L - zp)^2           refit with zp fixed
                  L      = clip(round(x / s) + zp, 0, nmax); refit s     one more rounding pass
                  err    = sum w (s (L - zp) - x)^2
    plus the round-to-nearest solution itself as candidate -1, so the result is never worse than RTN on
    the weighted error. Symmetric blocks keep zp = 2^(bits-1) and search the scale only.

Every operation is elementwise or a per-block sum over a fixed chunk shape: the same input gives the same
bytes. The packing is MatMulNBits' (see quantize.py).
"""

from __future__ import annotations

import numpy as np

RMIN, RDELTA, NSTEP = -3.0, 0.2, 20  # iscale from (nmax - 3) to (nmax + 1) over the range (range shrink helps)
SEARCH_CHUNK_ELEMENTS = 1 << 20  # elements per search pass (~a dozen f32 temporaries of this size)
_TINY = np.float32(1e-30)


def _rtn(x: np.ndarray, nmax: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """onnxruntime's round-to-nearest (scale, zp) per block (asymmetric: range includes 0)."""
    if symmetric:
        idx = np.abs(x).argmax(axis=1)
        vmax = np.take_along_axis(x, idx[:, None], axis=1)[:, 0]
        half = (nmax + 1) // 2
        s = vmax / np.float32(-half)
        return s.astype(np.float32), np.full(x.shape[0], half, np.float32)
    lo = np.minimum(x.min(axis=1), 0)
    hi = np.maximum(x.max(axis=1), 0)
    s = (hi - lo) / np.float32(nmax)
    zp = np.clip(np.rint(-lo / np.where(s == 0, 1, s)), 0, nmax)
    return s.astype(np.float32), zp.astype(np.float32)


def _codes(x: np.ndarray, s: np.ndarray, zp: np.ndarray, nmax: int) -> np.ndarray:
    inv = np.where(s == 0, 0, 1 / np.where(s == 0, 1, s)).astype(np.float32)
    return np.clip(np.rint(x * inv[:, None]) + zp[:, None], 0, nmax)


def _refit(x: np.ndarray, w: np.ndarray, q: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Least-squares scale for fixed centred codes q = L - zp (keeps ``s`` where q is all zero)."""
    den = (w * q * q).sum(axis=1)
    return np.where(den > 0, (w * x * q).sum(axis=1) / np.maximum(den, _TINY), s).astype(np.float32)


def _error(x: np.ndarray, w: np.ndarray, q: np.ndarray, s: np.ndarray) -> np.ndarray:
    d = s[:, None] * q - x
    return (w * d * d).sum(axis=1)


def search_blocks(x: np.ndarray, w: np.ndarray, bits: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray,
                                                                                       np.ndarray]:
    """Blocks ``x`` [M, B] f32, weights ``w`` [M, B] (>= 0): return (codes u8 [M, B], scales f32 [M], zp u8 [M])."""
    nmax = (1 << bits) - 1
    x = x.astype(np.float32, copy=False)
    w = w.astype(np.float32, copy=False)
    best_s, best_zp = _rtn(x, nmax, symmetric)
    best_q = _codes(x, best_s, best_zp, nmax) - best_zp[:, None]
    best_err = _error(x, w, best_q, best_s)
    if symmetric:
        idx = np.abs(x).argmax(axis=1)
        vmax = np.take_along_axis(x, idx[:, None], axis=1)[:, 0]
        span = -vmax  # the largest magnitude maps to code 0 (-zp): the side with one more level
        half = (nmax + 1) // 2
    else:
        lo = np.minimum(x.min(axis=1), 0)
        span = np.maximum(x.max(axis=1), 0) - lo
    ok = span != 0
    safe_span = np.where(ok, span, 1).astype(np.float32)
    sw = w.sum(axis=1)
    sx = (w * x).sum(axis=1)
    for c in range(NSTEP + 1):
        if symmetric:
            iscale = np.float32(half + RMIN + c * RDELTA) / safe_span
            zp = np.full(x.shape[0], half, np.float32)
            s0 = np.where(ok, 1 / iscale, 0).astype(np.float32)
            q = _codes(x, s0, zp, nmax) - half
            s = _refit(x, w, q, s0)
        else:
            iscale = np.float32(nmax + RMIN + c * RDELTA) / safe_span
            zp = np.clip(np.rint(-lo * iscale), 0, nmax)
            lv = np.clip(np.rint(x * iscale[:, None]) + zp[:, None], 0, nmax)
            sl = (w * lv).sum(axis=1)
            sl2 = (w * lv * lv).sum(axis=1)
            sxl = (w * x * lv).sum(axis=1)
            det = sw * sl2 - sl * sl
            good = det > 0
            det = np.where(good, det, 1)
            s = np.where(good, (sw * sxl - sx * sl) / det, 1 / iscale).astype(np.float32)
            m = np.where(good, (sl2 * sx - sl * sxl) / det, lo)
            s = np.where(s > 0, s, 1 / iscale).astype(np.float32)
            zp = np.clip(np.rint(-m / s), 0, nmax).astype(np.float32)
            s = _refit(x, w, lv - zp[:, None], s)
        q = _codes(x, s, zp, nmax) - zp[:, None]
        s = _refit(x, w, q, s)
        err = _error(x, w, q, s)
        better = ok & (err < best_err)
        if better.any():
            best_err = np.where(better, err, best_err)
            best_s = np.where(better, s, best_s)
            best_zp = np.where(better, zp, best_zp)
            best_q = np.where(better[:, None], q, best_q)
    codes = (best_q + best_zp[:, None]).astype(np.uint8)
    return codes, best_s.astype(np.float32), best_zp.astype(np.uint8)


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Codes u8 [n, kb, block] -> MatMulNBits' B bytes [n, kb, block*bits/8] (4 bits: low nibble first)."""
    if bits == 8:
        return codes
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


def pack_zero_points(zp: np.ndarray, bits: int) -> np.ndarray:
    """Zero points u8 [n, kb] -> [n, ceil(kb*bits/8)] (4 bits: two a byte, low nibble first, per row)."""
    if bits == 8:
        return zp
    if zp.shape[1] % 2:
        zp = np.pad(zp, ((0, 0), (0, 1)))
    return (zp[:, 0::2] | (zp[:, 1::2] << 4)).astype(np.uint8)


def search_rows(w: np.ndarray, bits: int, block: int, symmetric: bool,
                importance: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Like quantize.quantize_rows (same packed outputs), with the scale search; ``importance`` [K] weights
    each input column's squared error (mean squared activation entering the matrix)."""
    n, k = w.shape
    kb = (k + block - 1) // block
    pad = kb * block - k
    imp = np.ones(k, np.float32) if importance is None else np.asarray(importance, np.float32).reshape(k)
    imp = np.pad(imp, (0, pad)).reshape(1, kb, block)  # padded columns weigh nothing
    codes = np.empty((n, kb, block), np.uint8)
    scales = np.empty((n, kb), np.float32)
    zps = np.empty((n, kb), np.uint8)
    step = max(1, SEARCH_CHUNK_ELEMENTS // (kb * block))
    for a in range(0, n, step):
        b = min(n, a + step)
        x = np.asarray(w[a:b], np.float32)
        if pad:
            x = np.pad(x, ((0, 0), (0, pad)))
        x = x.reshape(b - a, kb, block)
        weights = np.broadcast_to(imp, x.shape).reshape(-1, block)
        c, s, z = search_blocks(x.reshape(-1, block), weights, bits, symmetric)
        codes[a:b] = c.reshape(b - a, kb, block)
        scales[a:b] = s.reshape(b - a, kb)
        zps[a:b] = z.reshape(b - a, kb)
    if symmetric:
        zps[:] = 1 << (bits - 1)
    return pack_codes(codes, bits), scales, pack_zero_points(zps, bits)
