"""Compiled CPU loops (Numba) for pooling's backward pass, where NumPy needs many passes over memory.

NumPy scatters a pooling gradient with one strided pass per window offset (nine for a 3 x 3 kernel, each with a
mask or a quotient temporary); these loops write each input gradient once: on CIFAR-10-quick's MAX pool1 about
2.5x faster. The forward passes stay NumPy's (a compiled per-window maximum is a serial dependency chain, slower
than NumPy's passes over all windows). The loops run only when Numba is importable (installed with pcn where it has
wheels) and ``PCN_NUMBA`` is not ``0``, and for NumPy float arrays; otherwise the layers' NumPy code runs. Both give
the same bits: the outputs are walked backwards and the window offsets forwards, so each input's terms are added in
increasing window order, as the NumPy passes add them.

Numba is imported, and the loops compiled (cached on disk), on first use, not when pcn is imported. The loops
release the GIL and run on pcn's thread pool over batch chunks (``parallel.over_batch``), like the NumPy code.
"""
from __future__ import annotations

import os

import numpy as np

# Tests set this to False to run the NumPy code with Numba installed.
USE_KERNELS = True
_compiled = None  # {name: compiled function} once Numba is loaded; False when it cannot be


def available() -> bool:
    """Whether Numba loads here (imports it and compiles the loops the first time)."""
    global _compiled
    if _compiled is None:
        try:
            import numba
        except Exception:  # not installed, or a Numba that does not load on this interpreter
            _compiled = False
            return False
        jit = numba.njit(nogil=True, cache=True)
        _compiled = {"max_backward": jit(_max_backward), "ave_backward": jit(_ave_backward)}
    return _compiled is not False


def enabled(*arrays) -> bool:
    """Whether the compiled loops run for these arrays: Numba present, not switched off, NumPy float arrays."""
    if not USE_KERNELS or os.environ.get("PCN_NUMBA", "").strip() == "0":
        return False
    return all(isinstance(a, np.ndarray) and a.dtype in (np.float32, np.float64) for a in arrays) and available()


def _interior(size, kernel, stride, pad, out):
    """The outputs [lo, hi) along one axis whose window lies inside the image (no bounds checks needed)."""
    lo = min(out, -(-pad // stride))
    hi = min(out, (size + pad - kernel) // stride + 1) if size + pad >= kernel else 0
    return lo, max(lo, hi)


def _max_backward(dy, arg, dx, di, dj, sh, sw, ph, pw):
    """dx (n, c, h, w) = the sum of dy over the outputs whose argmax is each input (dx is overwritten); ``di``,
    ``dj``: the row and column of each window offset."""
    n, c, h, w = dx.shape
    oh, ow = dy.shape[2], dy.shape[3]
    for b in range(n):
        for ch in range(c):
            g = dx[b, ch]
            g[:, :] = 0
            for r in range(oh - 1, -1, -1):  # backwards: each input's terms arrive in increasing window order
                h0 = r * sh - ph
                for q in range(ow - 1, -1, -1):
                    k = arg[b, ch, r, q]
                    hh = h0 + di[k]
                    ww = q * sw - pw + dj[k]
                    if 0 <= hh < h and 0 <= ww < w:
                        g[hh, ww] += dy[b, ch, r, q]


def _ave_backward(dy, dx, area, kh, kw, sh, sw, ph, pw, q_lo, q_hi, border):
    """dx = the sum, over the windows holding each input, of dy / area (dx is overwritten); rows of outputs are
    walked backwards and offsets forwards, so each input's terms arrive in increasing window order. Output
    columns [q_lo, q_hi) have their windows inside the image; ``border`` lists the others."""
    n, c, h, w = dx.shape
    oh, ow = dy.shape[2], dy.shape[3]
    d = np.empty(ow, dy.dtype)
    for b in range(n):
        for ch in range(c):
            g = dx[b, ch]
            g[:, :] = 0
            for r in range(oh - 1, -1, -1):
                h0 = r * sh - ph
                for q in range(ow):
                    d[q] = dy[b, ch, r, q] / area[r, q]
                for i in range(kh):
                    hh = h0 + i
                    if hh < 0 or hh >= h:
                        continue
                    gr = g[hh]
                    for j in range(kw):
                        for q in range(q_lo, q_hi):
                            gr[q * sw - pw + j] += d[q]
                        for q in border:
                            ww = q * sw - pw + j
                            if 0 <= ww < w:
                                gr[ww] += d[q]


def max_pool_backward(dy, arg, dx, kernel, stride, pad) -> None:
    """dx = MAX pooling's input gradient from ``dy`` and the window offsets ``arg`` (n, c, oh, ow) of the forward."""
    offsets = np.arange(kernel[0] * kernel[1])
    _compiled["max_backward"](dy, arg, dx, offsets // kernel[1], offsets % kernel[1], *stride, *pad)


def ave_pool_backward(dy, dx, area, kernel, stride, pad) -> None:
    """dx = AVE pooling's input gradient from ``dy`` and Caffe's window areas ``area`` (oh, ow)."""
    ow, w = dy.shape[3], dx.shape[3]
    q_lo, q_hi = _interior(w, kernel[1], stride[1], pad[1], ow)
    border = np.array([q for q in range(ow) if q < q_lo or q >= q_hi], dtype=np.int64)
    _compiled["ave_backward"](dy, dx, area, *kernel, *stride, *pad, q_lo, q_hi, border)
