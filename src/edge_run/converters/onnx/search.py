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
                  s      = sum w x q / sum w q^2,  q = L - zp            refit with zp fixed
                  L      = clip(round(x / s) + zp, 0, nmax); refit s     one more rounding
                  err    = sum w x^2 - (sum w x q)^2 / sum w q^2         closed form, no error pass
    plus the round-to-nearest solution itself as candidate -1; the best candidate then gets REFINE more
    rounds (L = clip(round(x / s) + zp); refit (s, zp) jointly or s alone, whichever errs less: neither
    step can raise the error). A last exact comparison with round-to-nearest keeps the result never worse
    than RTN on the weighted error. Every candidate costs one rounding pass and three per-block dot
    products (sum w L, sum w L^2, sum w x L) per rounding: refits and errors are per-block arithmetic.
    Symmetric blocks keep zp = 2^(bits-1) and search the scale only.

Every operation is elementwise or a per-block sum over a fixed chunk shape: the same input gives the same
bytes. The packing is MatMulNBits' (see quantize.py).
"""

from __future__ import annotations

import numpy as np

# iscale from (nmax - 3) to (nmax + 1) over the range in 9 steps (SmolLM2-135M's matrices with their
# importance: 0.2-1.7% less weighted error than a 21-step grid searched pass by pass, at 1/4 of the time)
RMIN, RDELTA, NSTEP, REFINE = -3.0, 0.5, 8, 3
SEARCH_CHUNK_ELEMENTS = 1 << 20  # elements per search pass (a few f32 temporaries of this size)


def _rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, b).astype(np.float64)


def _round_codes(x: np.ndarray, inv: np.ndarray, zp: np.ndarray, nmax: int, out: np.ndarray) -> np.ndarray:
    """out = clip(round(x * inv) + zp, 0, nmax), per-block ``inv`` and ``zp`` [M]."""
    np.multiply(x, inv[:, None].astype(np.float32), out=out)
    np.rint(out, out=out)
    out += zp[:, None].astype(np.float32)
    return np.clip(out, 0, nmax, out=out)


def _inverse(s: np.ndarray) -> np.ndarray:
    return np.where(s == 0, 0, 1 / np.where(s == 0, 1, s))


def _rtn(x: np.ndarray, nmax: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """onnxruntime's round-to-nearest (scale, zp) per block (asymmetric: range includes 0)."""
    if symmetric:
        idx = np.abs(x).argmax(axis=1)
        vmax = np.take_along_axis(x, idx[:, None], axis=1)[:, 0]
        half = (nmax + 1) // 2
        return (vmax / np.float32(-half)).astype(np.float32), np.full(x.shape[0], half, np.float64)
    lo = np.minimum(x.min(axis=1), 0)
    hi = np.maximum(x.max(axis=1), 0)
    s = ((hi - lo) / np.float32(nmax)).astype(np.float32)
    return s, np.clip(np.rint(-lo / np.where(s == 0, 1, s)), 0, nmax).astype(np.float64)


class _Sums:
    """Per-block sums of one chunk that every candidate's refit and error are computed from."""

    def __init__(self, x: np.ndarray, w: np.ndarray) -> None:
        self.x, self.w = x, w
        self.wx = w * x
        self.sw = w.sum(axis=1).astype(np.float64)
        self.sx = self.wx.sum(axis=1).astype(np.float64)
        self.sx2 = _rowdot(self.wx, x)
        self.wl = np.empty_like(x)

    def codes(self, lv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sum w L, sum w L^2, sum w x L) of codes ``lv``."""
        np.multiply(self.w, lv, out=self.wl)
        return self.wl.sum(axis=1).astype(np.float64), _rowdot(self.wl, lv), _rowdot(self.wx, lv)

    def fit_scale(self, sl: np.ndarray, sl2: np.ndarray, sxl: np.ndarray, zp: np.ndarray,
                  fallback: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Least-squares scale for codes with zero point ``zp``, and its weighted error."""
        den = sl2 - 2 * zp * sl + zp * zp * self.sw
        num = sxl - zp * self.sx
        good = den > 0
        safe = np.where(good, den, 1)
        return np.where(good, num / safe, fallback), self.sx2 - np.where(good, num * num / safe, 0)

    def fit_offset(self, sl: np.ndarray, sl2: np.ndarray, sxl: np.ndarray, nmax: int, s0: np.ndarray,
                   zp0: np.ndarray) -> np.ndarray:
        """Integer zero point from the joint least-squares (scale, offset) fit (``zp0`` where degenerate)."""
        det = self.sw * sl2 - sl * sl
        good = det > 0
        safe = np.where(good, det, 1)
        s = np.where(good, (self.sw * sxl - self.sx * sl) / safe, s0)
        m = (sl2 * self.sx - sl * sxl) / safe
        ok = good & (s > 0)
        return np.where(ok, np.clip(np.rint(-m / np.where(ok, s, 1)), 0, nmax), zp0)

    def error(self, lv: np.ndarray, s: np.ndarray, zp: np.ndarray) -> np.ndarray:
        d = s[:, None].astype(np.float32) * (lv - zp[:, None].astype(np.float32)) - self.x
        np.multiply(d, self.w, out=self.wl)
        return _rowdot(self.wl, d)


def search_blocks(x: np.ndarray, w: np.ndarray, bits: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray,
                                                                                       np.ndarray]:
    """Blocks ``x`` [M, B] f32, weights ``w`` [M, B] (>= 0): return (codes u8 [M, B], scales f32 [M], zp u8 [M])."""
    nmax = (1 << bits) - 1
    x = x.astype(np.float32, copy=False)
    w = w.astype(np.float32, copy=False)
    sums = _Sums(x, w)
    rtn_s, rtn_zp = _rtn(x, nmax, symmetric)
    if symmetric:
        idx = np.abs(x).argmax(axis=1)
        span = -np.take_along_axis(x, idx[:, None], axis=1)[:, 0]  # the largest magnitude maps to code 0
        top, lo = (nmax + 1) // 2, np.zeros(x.shape[0], np.float32)
    else:
        lo = np.minimum(x.min(axis=1), 0)
        span = np.maximum(x.max(axis=1), 0) - lo
        top = nmax
    ok = span != 0
    safe_span = np.where(ok, span, 1).astype(np.float64)
    lv = np.empty_like(x)
    best_err = np.full(x.shape[0], np.inf)
    best_s, best_zp = rtn_s.astype(np.float64), rtn_zp
    for c in range(-1, NSTEP + 1):
        if c < 0:
            inv, zp0 = _inverse(rtn_s.astype(np.float64)), rtn_zp
        else:
            inv = (top + RMIN + c * RDELTA) / safe_span
            zp0 = rtn_zp if symmetric else np.clip(np.rint(-lo * inv), 0, nmax)
        sl, sl2, sxl = sums.codes(_round_codes(x, inv, zp0, nmax, lv))
        zp = zp0 if symmetric or c < 0 else sums.fit_offset(sl, sl2, sxl, nmax, _inverse(inv), zp0)
        s, err = sums.fit_scale(sl, sl2, sxl, zp, _inverse(inv))
        if c >= 0:  # one more rounding with the fitted scale and zero point, then the scale refit
            sl, sl2, sxl = sums.codes(_round_codes(x, _inverse(s), zp, nmax, lv))
            s, err = sums.fit_scale(sl, sl2, sxl, zp, s)
        if c < 0:  # round-to-nearest keeps its own scale
            s = rtn_s.astype(np.float64)
            err = sums.sx2 - 2 * s * (sxl - zp * sums.sx) + s * s * (sl2 - 2 * zp * sl + zp * zp * sums.sw)
        better = (err < best_err) & (ok | (c < 0))
        best_err = np.where(better, err, best_err)
        best_s = np.where(better, s, best_s)
        best_zp = np.where(better, zp, best_zp)
    for _ in range(REFINE):
        sl, sl2, sxl = sums.codes(_round_codes(x, _inverse(best_s), best_zp, nmax, lv))
        s, err = sums.fit_scale(sl, sl2, sxl, best_zp, best_s)
        if not symmetric:
            zp2 = sums.fit_offset(sl, sl2, sxl, nmax, best_s, best_zp)
            s2, err2 = sums.fit_scale(sl, sl2, sxl, zp2, best_s)
            joint = err2 < err
            s, err, best_zp = np.where(joint, s2, s), np.where(joint, err2, err), np.where(joint, zp2, best_zp)
        best_s = s
    best_s32 = best_s.astype(np.float32)
    # exact comparison with round-to-nearest (the closed-form errors above cancel in float arithmetic)
    rtn_lv = _round_codes(x, _inverse(rtn_s), rtn_zp, nmax, np.empty_like(x))
    worse = sums.error(lv, best_s32, best_zp) > sums.error(rtn_lv, rtn_s, rtn_zp)
    codes = np.where(worse[:, None], rtn_lv, lv).astype(np.uint8)
    return codes, np.where(worse, rtn_s, best_s32).astype(np.float32), np.where(worse, rtn_zp, best_zp).astype(np.uint8)


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
