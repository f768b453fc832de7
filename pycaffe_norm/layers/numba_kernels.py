"""Fused CPU kernels for the row-normalization layers (LayerNorm, GroupNorm, InstanceNorm, RMSNorm), compiled by
Numba when it is installed (the ``fast`` extra).

The NumPy path of those layers makes about six passes over the data forward and seven backward, each a separate
ufunc call; these kernels make three and two, with the row statistics in registers. Each call handles one block of
units on the calling thread without the GIL (pcn's pool runs the blocks), so the layers keep their blocking, their
per-group parameter-gradient partials and hence the same bits on any number of threads. Sums are accumulated in
float64 for float32 data too.

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
    def row_norm_forward(x, xh, y, mean, var, inv, w, b, q, m, seg, eps, center, has_w, has_b, keep):
        """Per row of ``m`` elements (``q`` rows per unit, a unit being a row of ``x`` (units, q * m)):
        x_hat = (x - mean) * inv (no mean without ``center``), y = x_hat * w + b, where each run of ``seg``
        consecutive elements of a unit shares one entry of ``w`` and ``b`` (a channel's positions); x_hat is
        written to ``xh`` only when ``keep``."""
        for u in range(x.shape[0]):
            for r in range(q):
                o = r * m
                xr, hr, yr = x[u, o:o + m], xh[u, o:o + m], y[u, o:o + m]
                mu = 0.0
                if center:
                    s = 0.0
                    for i in range(m):
                        s += xr[i]
                    mu = s / m
                v = 0.0
                for i in range(m):
                    d = xr[i] - mu
                    v += d * d
                v /= m
                iv = 1.0 / math.sqrt(v + eps)
                row = u * q + r
                if center:
                    mean[row] = mu
                var[row] = v
                inv[row] = iv
                # y may be x: each element is read before it is written
                if seg == 1:    # two loops: with a third flag inside, LLVM leaves the loop scalar
                    wr, br = w[o:o + m], b[o:o + m]
                    if keep:
                        for i in range(m):
                            h = (xr[i] - mu) * iv
                            hr[i] = h
                            if has_w:
                                h = h * wr[i]
                            if has_b:
                                h = h + br[i]
                            yr[i] = h
                    else:
                        for i in range(m):
                            h = (xr[i] - mu) * iv
                            if has_w:
                                h = h * wr[i]
                            if has_b:
                                h = h + br[i]
                            yr[i] = h
                else:
                    for k in range(m // seg):
                        p = (o + k * seg) // seg
                        wc = np.float64(w[p]) if has_w else 1.0
                        bc = np.float64(b[p]) if has_b else 0.0
                        xs, hs, ys = xr[k * seg:(k + 1) * seg], hr[k * seg:(k + 1) * seg], yr[k * seg:(k + 1) * seg]
                        for i in range(seg):
                            h = (xs[i] - mu) * iv
                            if keep:
                                hs[i] = h
                            ys[i] = h * wc + bc

    @jit
    def row_norm_backward(dy, src, dx, mean, inv, w, dw, db, q, m, seg, center, has_w, want_w, want_b, prop,
                          from_x):
        """With g = dy * w (in float64, so that g - mean(g) is exactly 0 for one-element rows): dx = (g - mean(g)
        - x_hat * mean(g * x_hat)) * inv (no mean(g) without ``center``); dw += sum of dy * x_hat and db += sum of
        dy over the elements sharing each entry (float64 vectors). ``src`` is x_hat, or with ``from_x`` the input,
        from which x_hat = (x - mean) * inv is recomputed."""
        for u in range(dy.shape[0]):
            for r in range(q):
                o = r * m
                dr, hr = dy[u, o:o + m], src[u, o:o + m]
                row = u * q + r
                # x_hat = (src - shift) * scale: exactly src itself when src is x_hat
                shift = np.float64(mean[row]) if from_x and center else 0.0
                scale = np.float64(inv[row]) if from_x else 1.0
                sg = 0.0
                sgh = 0.0
                if seg == 1:    # one parameter per element: LayerNorm, RMSNorm
                    wr = w[o:o + m]
                    if want_w or want_b:
                        dwr, dbr = dw[o:o + m], db[o:o + m]
                        for i in range(m):
                            d = dr[i]
                            h = (hr[i] - shift) * scale
                            if want_w:
                                dwr[i] += d * h
                            if want_b:
                                dbr[i] += d
                            g = d * np.float64(wr[i]) if has_w else np.float64(d)
                            sg += g
                            sgh += g * h
                    else:   # a loop without the accumulations vectorises (LLVM does not split the one above)
                        for i in range(m):
                            g = dr[i] * np.float64(wr[i]) if has_w else np.float64(dr[i])
                            sg += g
                            sgh += g * ((hr[i] - shift) * scale)
                else:           # one parameter per channel: sums over its positions, then weighted once
                    for k in range(m // seg):
                        p = (o + k * seg) // seg
                        ds, hs = dr[k * seg:(k + 1) * seg], hr[k * seg:(k + 1) * seg]
                        sd = 0.0
                        sdh = 0.0
                        for i in range(seg):
                            d = ds[i]
                            sd += d
                            sdh += d * ((hs[i] - shift) * scale)
                        if want_w:
                            dw[p] += sdh
                        if want_b:
                            db[p] += sd
                        wc = np.float64(w[p]) if has_w else 1.0
                        sg += wc * sd
                        sgh += wc * sdh
                if prop:
                    iv = inv[row]
                    a = sg / m if center else 0.0
                    c = sgh / m
                    xr = dx[u, o:o + m]     # dx may be dy
                    if seg == 1:
                        wr = w[o:o + m]
                        for i in range(m):
                            g = dr[i] * np.float64(wr[i]) if has_w else np.float64(dr[i])
                            xr[i] = (g - a - ((hr[i] - shift) * scale) * c) * iv
                    else:
                        for k in range(m // seg):
                            wc = np.float64(w[(o + k * seg) // seg]) if has_w else 1.0
                            ds, hs = dr[k * seg:(k + 1) * seg], hr[k * seg:(k + 1) * seg]
                            xs = xr[k * seg:(k + 1) * seg]
                            for i in range(seg):
                                xs[i] = (ds[i] * wc - a - ((hs[i] - shift) * scale) * c) * iv

    return row_norm_forward, row_norm_backward


_EMPTY: dict = {}


def _empty(dtype):
    key = np.dtype(dtype).str
    if key not in _EMPTY:
        _EMPTY[key] = np.zeros(1, dtype=dtype)
    return _EMPTY[key]


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
    dummy = _empty(x.dtype)
    fwd(x, x if xh is None else xh, y, dummy if mean is None else mean, var, inv, dummy if w is None else w,
        dummy if b is None else b, q, m, seg, float(eps), center, w is not None, b is not None, xh is not None)


def row_norm_backward(dy, src, dx, mean, inv, w, dw, db, q: int, m: int, seg: int, center: bool,
                      from_x: bool) -> None:
    """One block: ``dy``, ``src`` (x_hat, or with ``from_x`` the forward's input), ``dx`` (units, q * m), ``dx``
    None for no input gradient; ``mean`` (None without centring) and ``inv`` of the forward; ``dw``/``db`` float64
    vectors (one entry per ``seg`` elements of a unit) to accumulate into, or None."""
    bwd = _load()[1]
    _check(dy, (src, dx), (mean, inv), (w, dw, db), q, m, seg)
    dummy, acc = _empty(dy.dtype), _empty(np.float64)
    bwd(dy, src, dummy.reshape(1, 1) if dx is None else dx, inv if mean is None else mean, inv,
        dummy if w is None else w, acc if dw is None else dw, acc if db is None else db, q, m, seg, center,
        w is not None, dw is not None, db is not None, dx is not None, from_x)
