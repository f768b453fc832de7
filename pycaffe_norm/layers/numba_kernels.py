"""Fused CPU kernels for the row-normalization layers (LayerNorm, GroupNorm, InstanceNorm, RMSNorm), compiled by
Numba when it is installed (the ``fast`` extra).

The NumPy path of those layers makes about six passes over the data forward and seven backward, each a separate
ufunc call; these kernels read each row twice in each direction while it is in the cache, with the row statistics
in registers. Each call handles one block of units on the calling thread without the GIL (pcn's pool runs the
blocks), so the layers keep their blocking, their per-group parameter-gradient partials and hence the same bits on
any number of threads. Row sums are accumulated in float64 for float32 data too; elementwise arithmetic runs in the
data's precision, as in the NumPy passes.

Numba is imported on first use only (it adds ~150 MiB of resident memory and a second of start-up): nets without
these layers never load it. ``PCN_NUMBA=0`` or ``ENABLED = False`` keeps the NumPy path; without Numba, or when it
fails to import (e.g. a NumPy newer than it supports), the NumPy path runs, with the same results to rounding.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Optional

import numpy as np

logger = logging.getLogger("pycaffe_norm")

# None: use the kernels when Numba imports (and PCN_NUMBA is not 0); tests set True/False to force a path.
ENABLED: Optional[bool] = None
_kernels = None     # (forward, backward) once compiled; False when Numba is unavailable


def available() -> bool:
    """Whether the row-normalization layers run on the compiled kernels (imports Numba on the first call)."""
    if ENABLED is False or (ENABLED is None and os.environ.get("PCN_NUMBA", "").strip() == "0"):
        return False
    return bool(_load())


def _load():
    global _kernels
    if _kernels is None:
        try:
            _kernels = _compile()
        except Exception as exc:   # not installed, or an install that cannot run: the NumPy path is complete
            if ENABLED:
                raise
            logger.debug("Numba kernels unavailable (%s): the normalization layers use NumPy", exc)
            _kernels = False
    return _kernels


def _compile():
    import numba

    # Reassociation lets LLVM vectorise the row sums and the mixed float32/float64 loops (3-4x faster than
    # without). No contraction into FMAs: with it, g - mean(g) for a row of one element is ~1e-16 instead of the
    # exact 0 that NumPy and PyTorch give. No finite-math flags: NaN and inf propagate as in NumPy.
    # Every loop indexes a 1-D view of one row (or one channel's run) from 0: Numba then drops its negative-index
    # wraparound check, which otherwise keeps LLVM from vectorising (4x slower).
    jit = numba.njit(nogil=True, cache=True, fastmath={"reassoc"})

    @jit
    def row_norm_forward(x, xh, y, mean, var, inv, w, b, q, m, seg, eps, center, keep):
        """Per row of ``m`` elements (``q`` rows per unit, a unit being a row of ``x`` (units, q * m)):
        x_hat = (x - mean) * inv (mean 0 without ``center``), y = x_hat * w + b, where each run of ``seg``
        consecutive elements of a unit shares one entry of ``w`` and ``b`` (a channel's positions); x_hat is
        written to ``xh`` only when ``keep``. The statistics are summed in float64, the elementwise part runs in
        the data's precision with the statistics rounded to it (as the NumPy passes; for float32 half the vector
        work of float64)."""
        cast = x.dtype.type
        for u in range(x.shape[0]):
            for r in range(q):
                o = r * m
                xr, hr, yr = x[u, o:o + m], xh[u, o:o + m], y[u, o:o + m]
                # one pass over the row, shifted by its first element: as exact as two passes when that element
                # is within a few deviations of the mean (it is one of the row's values), and 0 for a constant row
                shift = np.float64(xr[0]) if center else 0.0
                s = 0.0
                s2 = 0.0
                for i in range(m):
                    d = xr[i] - shift
                    s += d
                    s2 += d * d
                mu = shift + s / m if center else 0.0
                v = s2 / m - (s / m) ** 2 if center else s2 / m
                if v < 0.0:     # rounding; a NaN stays NaN
                    v = 0.0
                iv = 1.0 / math.sqrt(v + eps)
                row = u * q + r
                mean[row] = mu
                var[row] = v
                inv[row] = iv
                mt, it = cast(mu), cast(iv)
                # y may be x: each element is read before it is written
                if seg == 1:
                    wr, br = w[o:o + m], b[o:o + m]
                    if keep:
                        for i in range(m):
                            h = (xr[i] - mt) * it
                            hr[i] = h
                            yr[i] = h * wr[i] + br[i]
                    else:
                        for i in range(m):
                            yr[i] = (xr[i] - mt) * it * wr[i] + br[i]
                else:
                    for k in range(m // seg):
                        p = (o + k * seg) // seg
                        wc, bc = w[p], b[p]
                        xs, hs, ys = xr[k * seg:(k + 1) * seg], hr[k * seg:(k + 1) * seg], yr[k * seg:(k + 1) * seg]
                        if keep:
                            for i in range(seg):
                                h = (xs[i] - mt) * it
                                hs[i] = h
                                ys[i] = h * wc + bc
                        else:
                            for i in range(seg):
                                ys[i] = (xs[i] - mt) * it * wc + bc

    @jit
    def row_norm_backward(dy, src, dx, shift, scale, inv, w, dw, db, q, m, seg, center, want_w, want_b, prop):
        """With x_hat = (src - shift) * scale per row (``src`` x_hat itself: shift 0, scale 1; or the input: the
        forward's mean and inv) and g = dy * w: dx = (g - mean(g) - x_hat * mean(g * x_hat)) * inv (no mean(g)
        without ``center``); dw += sum of dy * x_hat and db += sum of dy over the elements sharing each entry.
        Row sums in float64, elementwise in the data's precision; for a row of one element
        g - mean(g) is exactly 0."""
        cast = dy.dtype.type
        for u in range(dy.shape[0]):
            for r in range(q):
                o = r * m
                row = u * q + r
                dr, hr = dy[u, o:o + m], src[u, o:o + m]
                st, sc = shift[row], scale[row]
                sg = 0.0
                sgh = 0.0
                if seg == 1:    # one parameter per element: LayerNorm, RMSNorm
                    wr = w[o:o + m]
                    if want_w or want_b:
                        dwr, dbr = dw[o:o + m], db[o:o + m]
                        for i in range(m):
                            d = dr[i]
                            h = (hr[i] - st) * sc
                            if want_w:
                                dwr[i] += d * h
                            if want_b:
                                dbr[i] += d
                            g = d * wr[i]
                            sg += g
                            sgh += g * h
                    else:   # a loop without the accumulations vectorises (LLVM does not split the one above)
                        for i in range(m):
                            g = dr[i] * wr[i]
                            sg += g
                            sgh += g * ((hr[i] - st) * sc)
                else:           # one parameter per channel: sums over its positions, then weighted once
                    for k in range(m // seg):
                        p = (o + k * seg) // seg
                        ds, hs = dr[k * seg:(k + 1) * seg], hr[k * seg:(k + 1) * seg]
                        sd = 0.0
                        sdh = 0.0
                        for i in range(seg):
                            d = ds[i]
                            sd += d
                            sdh += d * ((hs[i] - st) * sc)
                        if want_w:
                            dw[p] += sdh
                        if want_b:
                            db[p] += sd
                        wc = np.float64(w[p])
                        sg += wc * sd
                        sgh += wc * sdh
                if prop:
                    it = inv[row]
                    at = cast(sg / m) if center else cast(0.0)
                    ct = cast(sgh / m)
                    xr = dx[u, o:o + m]     # dx may be dy
                    if seg == 1:
                        wr = w[o:o + m]
                        for i in range(m):
                            xr[i] = (dr[i] * wr[i] - at - ((hr[i] - st) * sc) * ct) * it
                    else:
                        for k in range(m // seg):
                            wc = w[(o + k * seg) // seg]
                            ds, hs = dr[k * seg:(k + 1) * seg], hr[k * seg:(k + 1) * seg]
                            xs = xr[k * seg:(k + 1) * seg]
                            for i in range(seg):
                                xs[i] = (ds[i] * wc - at - ((hs[i] - st) * sc) * ct) * it

    return row_norm_forward, row_norm_backward


_CONSTANTS: dict = {}


def _constant(value: float, n: int, dtype):
    """A cached vector of ``n`` copies of ``value`` (absent weights, biases, means), which the kernels only read.
    Writable, so that the kernels are compiled for one array type (Numba types read-only arrays apart)."""
    key = (value, n, np.dtype(dtype).str)
    v = _CONSTANTS.get(key)
    if v is None:
        if len(_CONSTANTS) > 64:
            _CONSTANTS.clear()
        v = _CONSTANTS[key] = np.full(n, value, dtype=dtype)
    return v


def _check(x, blocks, rows, vectors, q: int, m: int, seg: int) -> None:
    """The kernels do not check bounds: a caller's shape error must not become a write outside an array."""
    units = x.shape[0]
    ok = x.ndim == 2 and x.shape[1] == q * m and seg >= 1 and m % seg == 0
    ok = ok and all(a is None or a.shape == x.shape for a in blocks)
    ok = ok and all(a is None or a.shape == (units * q,) for a in rows)
    ok = ok and all(a is None or a.shape == (q * m // seg,) for a in vectors)
    if not ok:
        raise ValueError("row-normalization kernel: shapes %s do not fit %d units of %d rows of %d elements"
                         % ([None if a is None else a.shape for a in (x,) + blocks + rows + vectors], units, q, m))


def row_norm_forward(x, xh, y, mean, var, inv, w, b, q: int, m: int, seg: int, eps: float, center: bool) -> None:
    """One block: ``x``, ``y`` (units, q * m), ``xh`` the same or None (x_hat not kept); ``mean`` (or None without
    centring), ``var``, ``inv`` (units * q,); ``w``, ``b``: one entry per ``seg`` consecutive elements of a unit,
    or None."""
    fwd = _load()[0]
    _check(x, (xh, y), (mean, var, inv), (w, b), q, m, seg)
    size = q * m // seg
    fwd(x, x if xh is None else xh, y, np.zeros_like(var) if mean is None else mean, var, inv,
        _constant(1.0, size, x.dtype) if w is None else w, _constant(0.0, size, x.dtype) if b is None else b,
        q, m, seg, float(eps), center, xh is not None)


def row_norm_backward(dy, src, dx, mean, inv, w, dw, db, q: int, m: int, seg: int, center: bool,
                      from_x: bool) -> None:
    """One block: ``dy``, ``src`` (x_hat, or with ``from_x`` the forward's input), ``dx`` (units, q * m), ``dx``
    None for no input gradient; ``mean`` (None without centring) and ``inv`` of the forward; ``dw``/``db`` vectors
    (one entry per ``seg`` elements of a unit) to accumulate into, or None."""
    bwd = _load()[1]
    _check(dy, (src, dx), (mean, inv), (w, dw, db), q, m, seg)
    rows, dt = inv.shape[0], dy.dtype
    shift = mean if from_x and mean is not None else _constant(0.0, rows, dt)
    scale = inv if from_x else _constant(1.0, rows, dt)
    acc = np.zeros(1)   # written to only when asked for (dw, db)
    bwd(dy, src, np.empty((1, 1), dt) if dx is None else dx, shift, scale, inv,
        _constant(1.0, q * m // seg, dt) if w is None else w, acc if dw is None else dw,
        acc if db is None else db, q, m, seg, center, dw is not None, db is not None, dx is not None)
