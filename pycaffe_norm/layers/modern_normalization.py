"""Normalization layers beyond BVLC Caffe's and MyCaffe's classic set: LayerNorm (MyCaffe's GPT LayerNormLayer and
PyTorch's ``layer_norm``), GroupNorm, InstanceNorm, RMSNorm (MyCaffe's and PyTorch's) and ConvNeXt-V2's Global
Response Normalization (type ``ConvNeXtGRN``, not MyCaffe's ``GRN``). Batch Renormalization is an option of
BatchNorm (``normalization.py``).

Formulas, parameters and the PyTorch mapping are in docs/normalization.md. Every layer runs in place: in place,
backward reads only what forward cached (the normalised input, or ConvNeXtGRN's input), never the top or bottom
data. Out of place, the compiled kernels (``numba_kernels``) keep only the row statistics and backward recomputes
the normalised input from the bottom, as Convolution reads its bottom for the weight gradient.
"""
from __future__ import annotations

import itertools
import logging
from typing import List, Tuple

import numpy as np

from .. import parallel
from ..blob import Blob
from ..errors import NetError
from ..fillers import fill
from ..proto import caffe_pb2
from . import im2col as ic
from . import numba_kernels
from .base import TEST, Layer, register
from .normalization import _buffer

logger = logging.getLogger("pycaffe_norm")


def _f(value: float) -> float:
    """A float32 field as the decimal it was written as (eps: 1e-5 is 1e-5 in float64 nets, not 9.99999974e-06)."""
    return float(str(np.float32(value)))


def _row_dot(xp, a, b):
    """Row-wise dot products of two 2-D arrays."""
    return xp.matmul(a[:, None, :], b[:, :, None])[:, 0, 0]


def _param_blob(shape, like: Blob, filler: caffe_pb2.FillerParameter, has_filler: bool, default: float) -> Blob:
    blob = Blob(shape, dtype=like.dtype, xp=like.xp)
    if has_filler:
        fill(blob, filler)
    else:
        blob.data[...] = default
    return blob


def _prod(shape) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


# Elements of one block of units per call (1 MiB of float32 per array): few NumPy calls per pass, and a block's
# scratch and row statistics stay in the cache between the passes of one call.
_BLOCK = 1 << 18
# Groups of blocks that the threads take one at a time (parameter gradients are summed per group).
_GROUPS = 8
_ONES: dict = {}


def _ones(xp, n: int, dtype):
    """A read-only vector of ``n`` ones (cached for NumPy), the right operand of the row-sum GEMVs."""
    if xp is not np:
        return xp.ones(n, dtype=dtype)
    key = (n, np.dtype(dtype).str)
    v = _ONES.get(key)
    if v is None:
        v = np.ones(n, dtype=dtype)
        v.flags.writeable = False
        _ONES[key] = v
    return v


def _over_units(xp, units: int, size: int, row: int, fn) -> None:
    """Runs ``fn(u0, u1, group)`` over the blocks of about ``_BLOCK`` elements (units of ``size`` elements each)
    that cover ``range(units)``. The blocks form at most ``_GROUPS`` groups of consecutive blocks, numbered in batch
    order; each of the pool's threads takes the next group not yet taken and runs its blocks in order (so that a core
    that another process shares does not hold the other up for half the batch, and sums kept per group come out the
    same on any number of threads). ``row``: the length of the rows that per-row values are broadcast along; NumPy's
    ufuncs run with a buffer of at most one row (on these threads only): with its default 8192 elements, an
    operation that broadcasts a per-row value along shorter rows runs about 2.5 times slower (it is buffered)."""
    step = max(1, _BLOCK // max(size, 1))
    count = -(-units // step)
    groups = min(count, _GROUPS)
    taken = itertools.count()           # next() on it is atomic under the GIL
    bufsize = 8192
    while bufsize > 16 and bufsize > row:
        bufsize //= 2

    def worker(_w0: int, _w1: int) -> None:
        old = np.setbufsize(bufsize) if xp is np else None
        try:
            for group in taken:
                if group >= groups:
                    break
                for index in range(group * count // groups, (group + 1) * count // groups):
                    fn(index * step, min(units, (index + 1) * step), group)
        finally:
            if old is not None:
                np.setbufsize(old)

    if count:
        parallel.over_batch(min(groups, parallel.num_threads()), worker, units * size, xp is np)


class _RowNormLayer(Layer):
    """Normalises the rows of an (R, M) view of the input: ``x_hat = (x - mean) / sqrt(var + eps)`` (or, without
    centring, ``x / sqrt(mean(x^2) + eps)``), then an optional affine part laid out per row element ("inner",
    weight of shape (M,)) or per channel ("channel", weight (C,) on an (N, C, S) view).

    The work is split into "units" of ``q`` consecutive rows (a row for LayerNorm and RMSNorm, a sample for GroupNorm
    and InstanceNorm), whose affine part is one vector of ``q * M`` elements (the channel weights repeated over the
    spatial positions). Blocks of units run on pcn's thread pool, each block making all its passes while it is in
    the core's cache; parameter gradients are summed per thread chunk, then the chunks in batch order.

    Subclasses set ``self.eps``, ``self.center``, ``self.affine``, ``self.bias``, ``self.layout``,
    ``self.first_affine`` (index of the weight blob) and implement ``_rows``.
    """

    exact_num_bottom = 1
    exact_num_top = 1
    center = True
    affine = False
    bias = False
    layout = "inner"
    first_affine = 0

    def _rows(self, blob: Blob) -> Tuple[int, int]:
        raise NotImplementedError

    def _ncs(self, blob: Blob) -> Tuple[int, int, int]:
        shape = blob.shape
        return shape[0], shape[1], _prod(shape[2:])

    def _units(self, blob: Blob, rows: int) -> Tuple[int, int]:
        """(number of units, rows per unit)."""
        if self.layout == "inner" or rows == 0:
            return rows, 1
        n = blob.shape[0]
        return n, rows // n

    def _unit_affine(self, xp, blob: Blob, m: int, q: int):
        """The weight and bias as vectors over one unit (q * M elements), or None."""
        if not self.affine:
            return None, None
        i = self.first_affine
        vecs = [self.blobs[i].data] + ([self.blobs[i + 1].data] if self.bias else [])
        if self.layout == "inner":
            vecs = [v.reshape(-1) for v in vecs]
        else:
            s = self._ncs(blob)[2]
            vecs = [xp.repeat(v, s) for v in vecs]
        return vecs[0], (vecs[1] if self.bias else None)

    def _affine_forward(self, xp, xh, y2, bottom: Blob) -> None:
        if not self.affine:
            y2[...] = xh
            return
        w = self.blobs[self.first_affine].data
        b = self.blobs[self.first_affine + 1].data if self.bias else None
        if self.layout == "inner":
            w, b = w.reshape(1, -1), (None if b is None else b.reshape(1, -1))
            xp.multiply(xh, w, out=y2)
            if b is not None:
                y2 += b
            return
        n, c, s = self._ncs(bottom)
        y3 = y2.reshape(n, c, s)
        xp.multiply(xh.reshape(n, c, s), w[None, :, None], out=y3)
        if b is not None:
            y3 += b[None, :, None]

    def _affine_backward(self, xp, dy2, xh, bottom: Blob):
        """Accumulates the weight and bias diffs; returns the gradient with respect to x_hat, (R, M)."""
        if not self.affine:
            return dy2
        i = self.first_affine
        wb, bb = self.blobs[i], (self.blobs[i + 1] if self.bias else None)
        pd = self.param_propagate_down
        if self.layout == "inner":
            if pd[i]:
                wb.diff[...] += xp.sum(dy2 * xh, axis=0).reshape(wb.shape)
            if bb is not None and pd[i + 1]:
                bb.diff[...] += xp.sum(dy2, axis=0).reshape(bb.shape)
            return dy2 * wb.data.reshape(1, -1)
        n, c, s = self._ncs(bottom)
        dy3, xh3 = dy2.reshape(n, c, s), xh.reshape(n, c, s)
        if pd[i]:
            wb.diff[...] += xp.einsum("ncs,ncs->c", dy3, xh3)
        if bb is not None and pd[i + 1]:
            bb.diff[...] += dy3.sum(axis=(0, 2))
        return (dy3 * wb.data[None, :, None]).reshape(dy2.shape)

    def reshape(self, bottom: List[Blob], top: List[Blob]) -> None:
        self._rows(bottom[0])
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def forward(self, bottom: List[Blob], top: List[Blob]) -> None:
        xp = bottom[0].xp
        r, m = self._rows(bottom[0])
        x2 = bottom[0].data.reshape(r, m)
        dt = x2.dtype.type
        units, q = self._units(bottom[0], r)
        k = q * m
        fused = xp is np and m and numba_kernels.available()
        # The kernels keep x_hat only in place; otherwise backward recomputes it from the bottom, as Convolution
        # reads its bottom (one array less to write and to hold).
        self._source = ("xhat" if top[0] is bottom[0] else "x") if fused else None
        if self._source == "x":
            self._buffers = {k: v for k, v in getattr(self, "_buffers", {}).items() if k != "xhat"}
            xh = None
        else:
            xh = _buffer(self, "xhat", xp, (r, m), x2.dtype)
        mean = _buffer(self, "mean", xp, (r,), x2.dtype) if self.center else None
        var = self._var = _buffer(self, "var", xp, (r,), x2.dtype)
        inv = self._inv = _buffer(self, "inv", xp, (r,), x2.dtype)
        x, y = x2.reshape(units, k), top[0].data.reshape(units, k)
        xu = None if xh is None else xh.reshape(units, k)
        ones, dm, eps, center = _ones(xp, m, x2.dtype), dt(m), dt(self.eps), self.center
        self._mean = mean
        if fused:
            seg, w, b = self._kernel_affine(bottom[0], m)
        else:
            w, b = self._unit_affine(xp, bottom[0], m, q)

        def block(u0: int, u1: int, _group: int) -> None:
            r0, r1 = u0 * q, u1 * q
            if fused:
                numba_kernels.row_norm_forward(x[u0:u1], None if xu is None else xu[u0:u1], y[u0:u1],
                                               None if mean is None else mean[r0:r1], var[r0:r1], inv[r0:r1], w, b,
                                               q, m, seg, self.eps, center)
                return
            xr, hr = x[u0:u1].reshape(-1, m), xu[u0:u1].reshape(-1, m)
            if center:
                mu = mean[r0:r1]
                xp.matmul(xr, ones, out=mu)
                mu /= dm
                xp.subtract(xr, mu[:, None], out=hr)
                src = hr
            else:
                src = xr
            v = var[r0:r1]
            v[...] = xp.matmul(src[:, None, :], src[:, :, None])[:, 0, 0]
            v /= dm
            iv = inv[r0:r1]
            xp.add(v, eps, out=iv)
            xp.sqrt(iv, out=iv)
            xp.reciprocal(iv, out=iv)
            xp.multiply(src, iv[:, None], out=hr)
            hu, yu = xu[u0:u1], y[u0:u1]
            if w is not None:
                xp.multiply(hu, w, out=yu)          # y may be x (in place): x is not read after x_hat
                if b is not None:
                    yu += b
            else:
                yu[...] = hu

        if m:
            _over_units(xp, units, k, m, block)
        else:       # empty rows: the statistics are 0 / 0, as NumPy's mean of nothing
            for a in (mean, var, inv):
                if a is not None:
                    a.fill(float("nan"))

    def backward(self, top: List[Blob], propagate_down: List[bool], bottom: List[Blob]) -> None:
        xp = bottom[0].xp
        r, m = self._rows(bottom[0])
        units, q = self._units(bottom[0], r)
        k = q * m
        i = self.first_affine
        want_w = self.affine and self.param_propagate_down[i]
        want_b = self.bias and self.param_propagate_down[i + 1]
        prop = propagate_down[0]
        if not (want_w or want_b or prop) or not m:
            return
        dy, dx = top[0].diff.reshape(units, k), bottom[0].diff.reshape(units, k)
        source = getattr(self, "_source", None)
        if source is not None:   # forward ran on the kernels: so does backward (x_hat may not be kept)
            src = (bottom[0].data if source == "x" else self._buffers["xhat"]).reshape(units, k)
            self._fused_backward(dy, src, source == "x", dx if prop else None, bottom[0], q, m, units, want_w,
                                 want_b)
            return
        xh = self._buffers["xhat"]
        dt = xh.dtype.type
        xu = xh.reshape(units, k)
        w, _ = self._unit_affine(xp, bottom[0], m, q)
        channel = self.layout == "channel"
        n_c, c_c, s_c = self._ncs(bottom[0]) if channel else (0, 0, 0)
        ones, dm, center, inv = _ones(xp, m, xh.dtype), dt(m), self.center, self._inv
        partial: dict = {}

        def block(u0: int, u1: int, group: int) -> None:
            nb, r0, r1 = u1 - u0, u0 * q, u1 * q
            dyb, hb, dxb = dy[u0:u1], xu[u0:u1], dx[u0:u1]
            p = ic.shared_workspace().get("modern_norm_p", (nb, k), xh.dtype, xp)
            if channel:
                # per (n, c) sums over the spatial positions: the parameter gradients, and (weighted with the
                # channel weights) the per-row sums of the x_hat gradient g = dy * w
                d3, h3 = dyb.reshape(-1, 1, s_c), hb.reshape(-1, s_c, 1)
                pc = xp.matmul(d3, h3).reshape(nb, c_c)
                dc = xp.matmul(dyb.reshape(-1, s_c), _ones(xp, s_c, xh.dtype)).reshape(nb, c_c)
                if want_w or want_b:
                    sums = (pc.sum(axis=0), dc.sum(axis=0))
                if prop:
                    wc = self.blobs[i].data if self.affine else None
                    if wc is not None:
                        pc, dc = pc * wc, dc * wc
                    sgx, sg = pc.reshape(-1, c_c // q).sum(axis=1), dc.reshape(-1, c_c // q).sum(axis=1)
            else:
                xp.multiply(dyb, hb, out=p)          # dy * x_hat
                if want_w or want_b:
                    sums = (xp.matmul(_ones(xp, nb, xh.dtype), p) if want_w else None,
                            xp.matmul(_ones(xp, nb, xh.dtype), dyb) if want_b else None)
                if prop:    # a unit is one row here: sum(g * x_hat) = (dy * x_hat) . w, sum(g) = dy . w
                    v = w if w is not None else ones
                    sgx = xp.matmul(p, v)
                    sg = xp.matmul(dyb, v) if center else None
            if want_w or want_b:
                acc = partial.get(group)
                if acc is None:
                    partial[group] = list(sums)
                else:
                    for a, s in zip(acc, sums):
                        if s is not None:
                            a += s
            if not prop:
                return
            # centred:  dx = (g - mean(g)) * inv - x_hat * (mean(g * x_hat) * inv)
            # RMS:      dx = g * inv - x_hat * (mean(g * x_hat) * inv)
            iv = inv[r0:r1]
            bi = sgx / dm
            bi *= iv
            if w is not None:
                xp.multiply(dyb, w, out=p)           # g (p is free again)
                src = p
            else:
                src = dyb
            sr, dr, hr = src.reshape(-1, m), dxb.reshape(-1, m), hb.reshape(-1, m)
            if center:
                xp.subtract(sr, (sg / dm)[:, None], out=dr)   # dx may be dy (in place): elementwise
                dr *= iv[:, None]
            else:
                xp.multiply(sr, iv[:, None], out=dr)
            pr = p.reshape(-1, m)
            xp.multiply(hr, bi[:, None], out=pr)
            dr -= pr

        _over_units(xp, units, k, m, block)
        if want_w or want_b:
            tot = None          # the groups' sums in batch order: the same bits on any number of threads
            for group in sorted(partial):
                part = partial[group]
                tot = part if tot is None else [a if a is None else a + s for a, s in zip(tot, part)]
            for j, (want, s) in enumerate(((want_w, tot[0]), (want_b, tot[1]))):
                if want:
                    if not channel:
                        s = s.reshape(self.blobs[i + j].shape)
                    self.blobs[i + j].diff[...] += s

    def _kernel_affine(self, bottom: Blob, m: int):
        """(elements per parameter entry, weight, bias) for the compiled kernels: the parameters as they are (a
        channel's entry covers its S positions), each None when absent."""
        seg = self._ncs(bottom)[2] if self.layout == "channel" else 1
        if not self.affine:
            return seg, None, None
        i = self.first_affine
        return seg, self.blobs[i].data.reshape(-1), (self.blobs[i + 1].data.reshape(-1) if self.bias else None)

    def _fused_backward(self, dy, src, from_x: bool, dx, bottom: Blob, q: int, m: int, units: int,
                        want_w: bool, want_b: bool) -> None:
        """``backward`` on the compiled kernels from x_hat or (``from_x``) the bottom data: parameter-gradient
        partials per group of blocks, added in batch order (the same bits on any number of threads)."""
        seg, w, _ = self._kernel_affine(bottom, m)
        mean, inv, center, size = self._mean, self._inv, self.center, q * m // seg
        # per-element partials (LayerNorm, RMSNorm) in the data's precision, like the NumPy passes' BLAS sums (a
        # float64 partial costs a conversion per element); per-channel ones in float64
        acc = dy.dtype if seg == 1 else np.float64
        partial: dict = {}

        def block(u0: int, u1: int, group: int) -> None:
            sums = partial.get(group)
            if sums is None:
                sums = partial[group] = [np.zeros(size, acc) if want else None for want in (want_w, want_b)]
            r0, r1 = u0 * q, u1 * q
            numba_kernels.row_norm_backward(dy[u0:u1], src[u0:u1], None if dx is None else dx[u0:u1],
                                            None if mean is None else mean[r0:r1], inv[r0:r1], w, sums[0], sums[1],
                                            q, m, seg, center, from_x)

        _over_units(np, units, q * m, m, block)
        i = self.first_affine
        for j, want in enumerate((want_w, want_b)):
            if want:
                total = None
                for group in sorted(partial):
                    total = partial[group][j] if total is None else total + partial[group][j]
                blob = self.blobs[i + j]
                blob.diff[...] += total.reshape(blob.shape).astype(blob.dtype)


def _trailing_axis(layer: Layer, blob: Blob, axis: int) -> int:
    try:
        return blob.canonical_axis(axis)
    except Exception:
        raise NetError("layer %r (%s): axis %d is out of range for bottom[0] of shape %s"
                       % (layer.name, layer.type, axis, tuple(blob.shape))) from None


# --------------------------------------------------------------------------------------------------------
# LayerNorm
# --------------------------------------------------------------------------------------------------------
@register("LayerNorm")
class LayerNormLayer(_RowNormLayer):
    """MyCaffe's LayerNormLayer / PyTorch's ``layer_norm``: normalises over all axes from ``axis`` (unset:
    MyCaffe's rule, 1 for 2-D input, 2 otherwise), with an optional elementwise affine part of that shape."""

    def setup(self, bottom: List[Blob], top: List[Blob]) -> None:
        p = self.layer_param.layer_norm_param
        self.eps = float(p.epsilon)
        self.passthrough = bool(p.enable_passthrough)
        if self.passthrough:
            logger.warning("layer %r (LayerNorm): enable_passthrough is set, the layer copies its input "
                           "(MyCaffe's debugging mode)", self.name)
        x = bottom[0]
        if x.num_axes < 1:
            raise self.shape_error("bottom[0]", x.shape, ("N", "..."))
        default = 1 if x.num_axes <= 2 else 2
        self.axis = _trailing_axis(self, x, p.axis if p.HasField("axis") else default)
        self.norm_shape = tuple(x.shape[self.axis:])
        self.affine = bool(p.elementwise_affine)
        self.bias = self.affine and bool(p.bias_term)
        if self.affine and not self.blobs:
            self.blobs = [_param_blob(self.norm_shape, x, p.weight_filler, p.HasField("weight_filler"), 1.0)]
            if self.bias:
                self.blobs.append(_param_blob(self.norm_shape, x, p.bias_filler, True, 0.0))
        n_expected = (1 + self.bias) if self.affine else 0
        if len(self.blobs) != n_expected or any(b.count != _prod(self.norm_shape) for b in self.blobs):
            raise NetError("layer %r (LayerNorm): parameter blobs %s do not fit elementwise_affine %s, bias_term "
                           "%s and normalised shape %s" % (self.name, [tuple(b.shape) for b in self.blobs],
                                                           self.affine, self.bias, self.norm_shape))

    def _rows(self, blob: Blob) -> Tuple[int, int]:
        inner = tuple(blob.shape[self.axis:]) if blob.num_axes > self.axis else None
        if inner is None or (self.affine and _prod(inner) != _prod(self.norm_shape)):
            raise self.shape_error("bottom[0] (axes from %d fixed at setup)" % self.axis, blob.shape,
                                   tuple(blob.shape[:self.axis]) + self.norm_shape)
        m = _prod(inner)
        return blob.count // m if m else 0, m

    def forward(self, bottom: List[Blob], top: List[Blob]) -> None:
        if self.passthrough:
            if top[0] is not bottom[0]:
                top[0].data[...] = bottom[0].data
            return
        super().forward(bottom, top)

    def backward(self, top: List[Blob], propagate_down: List[bool], bottom: List[Blob]) -> None:
        if self.passthrough:
            if propagate_down[0] and top[0] is not bottom[0]:
                bottom[0].diff[...] = top[0].diff
            return
        super().backward(top, propagate_down, bottom)


# --------------------------------------------------------------------------------------------------------
# RMSNorm
# --------------------------------------------------------------------------------------------------------
@register("RMSNorm")
class RMSNormLayer(_RowNormLayer):
    """MyCaffe's RMSNormLayer / PyTorch's ``rms_norm``: ``y = x / sqrt(mean(x^2) + eps) * weight`` over all axes
    from ``axis`` (default 2, MyCaffe's), the weight of that shape (``enable_weights``, default true)."""

    center = False
    bias = False

    def setup(self, bottom: List[Blob], top: List[Blob]) -> None:
        p = self.layer_param.rms_norm_param
        self.eps = float(p.epsilon)
        x = bottom[0]
        self.axis = _trailing_axis(self, x, p.axis)
        self.norm_shape = tuple(x.shape[self.axis:])
        self.affine = bool(p.enable_weights)
        if self.affine and not self.blobs:
            self.blobs = [_param_blob(self.norm_shape, x, p.weight_filler, p.HasField("weight_filler"), 1.0)]
        if len(self.blobs) != int(self.affine) or any(b.count != _prod(self.norm_shape) for b in self.blobs):
            raise NetError("layer %r (RMSNorm): parameter blobs %s do not fit enable_weights %s and normalised "
                           "shape %s" % (self.name, [tuple(b.shape) for b in self.blobs], self.affine,
                                         self.norm_shape))

    def _rows(self, blob: Blob) -> Tuple[int, int]:
        inner = tuple(blob.shape[self.axis:]) if blob.num_axes > self.axis else None
        if inner is None or (self.affine and _prod(inner) != _prod(self.norm_shape)):
            raise self.shape_error("bottom[0] (axes from %d fixed at setup)" % self.axis, blob.shape,
                                   tuple(blob.shape[:self.axis]) + self.norm_shape)
        m = _prod(inner)
        return blob.count // m if m else 0, m


# --------------------------------------------------------------------------------------------------------
# GroupNorm
# --------------------------------------------------------------------------------------------------------
def _channels(layer: Layer, blob: Blob) -> int:
    if blob.num_axes < 2:
        raise layer.shape_error("bottom[0]", blob.shape, ("N", "C", "..."))
    return blob.shape[1]


@register("GroupNorm")
class GroupNormLayer(_RowNormLayer):
    """PyTorch's ``group_norm``: per sample, over each of ``num_groups`` groups of consecutive channels and all
    spatial axes; learned per-channel weight and bias (``affine``, default true)."""

    layout = "channel"

    def setup(self, bottom: List[Blob], top: List[Blob]) -> None:
        p = self.layer_param.group_norm_param
        self.eps = _f(p.eps)
        c = _channels(self, bottom[0])
        self.groups = int(p.num_groups)
        if self.groups < 1 or c % self.groups:
            raise NetError("layer %r (GroupNorm): num_groups %d must be at least 1 and divide the %d channels"
                           % (self.name, self.groups, c))
        self.channels = c
        self.affine = self.bias = bool(p.affine)
        if self.affine and not self.blobs:
            self.blobs = [_param_blob((c,), bottom[0], p.weight_filler, p.HasField("weight_filler"), 1.0),
                          _param_blob((c,), bottom[0], p.bias_filler, True, 0.0)]
        if len(self.blobs) != 2 * self.affine or any(b.count != c for b in self.blobs):
            raise NetError("layer %r (GroupNorm): parameter blobs %s do not fit affine %s with %d channels"
                           % (self.name, [tuple(b.shape) for b in self.blobs], self.affine, c))

    def _rows(self, blob: Blob) -> Tuple[int, int]:
        if _channels(self, blob) != self.channels:
            raise self.shape_error("bottom[0] (channels fixed at setup)", blob.shape,
                                   (blob.shape[0], self.channels) + tuple(blob.shape[2:]))
        n, c, s = self._ncs(blob)
        return n * self.groups, (c // self.groups) * s


# --------------------------------------------------------------------------------------------------------
# InstanceNorm
# --------------------------------------------------------------------------------------------------------
@register("InstanceNorm")
class InstanceNormLayer(_RowNormLayer):
    """PyTorch's ``instance_norm``: per sample and channel over the spatial axes; optional per-channel affine and,
    with ``track_running_stats``, running mean and variance (blobs 0 and 1, PyTorch's momentum update) used in
    TEST (or whenever ``use_global_stats`` is true)."""

    layout = "channel"

    def fixed_param_indices(self) -> List[int]:
        """The running statistics are never learned (the Net forces their lr_mult to 0)."""
        return [0, 1] if self.track else []

    def setup(self, bottom: List[Blob], top: List[Blob]) -> None:
        p = self.layer_param.instance_norm_param
        self.eps = _f(p.eps)
        self.momentum = _f(p.momentum)
        self.track = bool(p.track_running_stats)
        explicit = p.HasField("use_global_stats")
        self.use_global_stats = bool(p.use_global_stats) if explicit else (self.track and self.phase == TEST)
        if self.use_global_stats and not self.track:
            raise NetError("layer %r (InstanceNorm): use_global_stats needs track_running_stats (there are no "
                           "running statistics to normalise with)" % self.name)
        c = _channels(self, bottom[0])
        self.channels = c
        self.affine = self.bias = bool(p.affine)
        self.first_affine = 2 if self.track else 0
        x = bottom[0]
        if not self.blobs:
            if self.track:      # PyTorch's initial running statistics: mean 0, variance 1
                self.blobs = [_param_blob((c,), x, p.weight_filler, False, 0.0),
                              _param_blob((c,), x, p.weight_filler, False, 1.0)]
            if self.affine:
                self.blobs += [_param_blob((c,), x, p.weight_filler, p.HasField("weight_filler"), 1.0),
                               _param_blob((c,), x, p.bias_filler, True, 0.0)]
        if len(self.blobs) != 2 * self.track + 2 * self.affine or any(b.count != c for b in self.blobs):
            raise NetError("layer %r (InstanceNorm): parameter blobs %s do not fit track_running_stats %s and "
                           "affine %s with %d channels" % (self.name, [tuple(b.shape) for b in self.blobs],
                                                           self.track, self.affine, c))
        self.param_propagate_down = [False] * (2 * self.track) + [True] * (2 * self.affine)

    def _rows(self, blob: Blob) -> Tuple[int, int]:
        if _channels(self, blob) != self.channels:
            raise self.shape_error("bottom[0] (channels fixed at setup)", blob.shape,
                                   (blob.shape[0], self.channels) + tuple(blob.shape[2:]))
        n, c, s = self._ncs(blob)
        return n * c, s

    def forward(self, bottom: List[Blob], top: List[Blob]) -> None:
        if not self.use_global_stats:
            super().forward(bottom, top)
            if self.track:
                n, c, s = self._ncs(bottom[0])
                self._update_running(self._mean.reshape(n, c), s)
            return
        xp = bottom[0].xp
        x3 = bottom[0].data.reshape(self._ncs(bottom[0]))
        dt = x3.dtype.type
        inv = xp.reciprocal(xp.sqrt(self.blobs[1].data + dt(self.eps)))
        self._inv_global = inv
        xh = _buffer(self, "xhat", xp, (x3.shape[0] * x3.shape[1], x3.shape[2]), x3.dtype)
        xh3 = xh.reshape(x3.shape)
        xp.subtract(x3, self.blobs[0].data[None, :, None], out=xh3)
        xh3 *= inv[None, :, None]
        self._affine_forward(xp, xh, top[0].data.reshape(xh.shape), bottom[0])

    def _update_running(self, instance_means, s: int) -> None:
        """PyTorch's update: running = (1 - momentum) * running + momentum * (mean over N of the instance
        statistics), the variance unbiased (S / (S - 1); factor 1 when S == 1, where PyTorch refuses)."""
        dt = self._inv.dtype.type
        n, c = instance_means.shape
        mean = instance_means.mean(axis=0)
        var = self._var.reshape(n, c).mean(axis=0)
        var *= dt(s / (s - 1) if s > 1 else 1)
        mom = dt(self.momentum)
        for blob, stat in ((self.blobs[0], mean), (self.blobs[1], var)):
            blob.data[...] *= dt(1) - mom
            blob.data[...] += mom * stat

    def backward(self, top: List[Blob], propagate_down: List[bool], bottom: List[Blob]) -> None:
        if not self.use_global_stats:
            super().backward(top, propagate_down, bottom)
            return
        xp = bottom[0].xp
        xh = self._buffers["xhat"]
        g = self._affine_backward(xp, top[0].diff.reshape(xh.shape), xh, bottom[0])
        if propagate_down[0]:
            n, c, s = self._ncs(bottom[0])
            xp.multiply(g.reshape(n, c, s), self._inv_global[None, :, None],
                        out=bottom[0].diff.reshape(n, c, s))


# --------------------------------------------------------------------------------------------------------
# ConvNeXt-V2 Global Response Normalization
# --------------------------------------------------------------------------------------------------------
@register("ConvNeXtGRN")
class ConvNeXtGRNLayer(Layer):
    """ConvNeXt-V2's GRN: ``G = ||x||_2`` per (n, c) over the spatial axes, ``Nx = G / (mean_c G + eps)``,
    ``y = gamma * (x * Nx) + beta + x`` with learned per-channel gamma and beta (initially 0: the identity).
    Not MyCaffe's GRN (type GRN / GlobResNorm), which divides by the L2 norm across channels at each pixel."""

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom: List[Blob], top: List[Blob]) -> None:
        p = self.layer_param.convnext_grn_param
        self.eps = _f(p.eps)
        c = _channels(self, bottom[0])
        self.channels = c
        if not self.blobs:
            self.blobs = [_param_blob((c,), bottom[0], p.gamma_filler, True, 0.0),
                          _param_blob((c,), bottom[0], p.beta_filler, True, 0.0)]
        if len(self.blobs) != 2 or any(b.count != c for b in self.blobs):
            raise NetError("layer %r (ConvNeXtGRN): parameter blobs %s do not fit %d channels (gamma, beta)"
                           % (self.name, [tuple(b.shape) for b in self.blobs], c))

    def _ncs(self, blob: Blob) -> Tuple[int, int, int]:
        if _channels(self, blob) != self.channels:
            raise self.shape_error("bottom[0] (channels fixed at setup)", blob.shape,
                                   (blob.shape[0], self.channels) + tuple(blob.shape[2:]))
        return blob.shape[0], self.channels, _prod(blob.shape[2:])

    def reshape(self, bottom: List[Blob], top: List[Blob]) -> None:
        self._ncs(bottom[0])
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def forward(self, bottom: List[Blob], top: List[Blob]) -> None:
        xp = bottom[0].xp
        x3 = bottom[0].data.reshape(self._ncs(bottom[0]))
        dt = x3.dtype.type
        g = xp.sqrt(_row_dot(xp, x3.reshape(-1, x3.shape[2]), x3.reshape(-1, x3.shape[2]))).reshape(x3.shape[:2])
        d = g.mean(axis=1) + dt(self.eps)                      # (N,)
        d = xp.where(d == 0, dt(1), d)           # an all-zero sample with eps 0: Nx = 0 (not 0 / 0)
        nx = g / d[:, None]
        self._g, self._d, self._nx = g, d, nx
        self._x = x3.copy() if top[0] is bottom[0] else None
        factor = dt(1) + self.blobs[0].data[None, :] * nx      # y = x * (1 + gamma * Nx) + beta
        y3 = top[0].data.reshape(x3.shape)
        xp.multiply(x3, factor[:, :, None], out=y3)
        y3 += self.blobs[1].data[None, :, None]

    def backward(self, top: List[Blob], propagate_down: List[bool], bottom: List[Blob]) -> None:
        xp = bottom[0].xp
        n, c, s = self._ncs(bottom[0])
        x3 = self._x if self._x is not None else bottom[0].data.reshape(n, c, s)
        dy3 = top[0].diff.reshape(n, c, s)
        gamma = self.blobs[0].data
        a0 = _row_dot(xp, dy3.reshape(-1, s), x3.reshape(-1, s)).reshape(n, c)      # sum_s dy * x
        if self.param_propagate_down[0]:
            self.blobs[0].diff[...] += (a0 * self._nx).sum(axis=0)
        if self.param_propagate_down[1]:
            self.blobs[1].diff[...] += dy3.sum(axis=(0, 2))
        if not propagate_down[0]:
            return
        dt = x3.dtype.type
        g, d = self._g, self._d
        a = a0 * gamma[None, :]                                        # dL/dNx
        # Nx = G / (mean_c G + eps):  dL/dG = a / D - sum_c(a * G) / (C * D^2)
        dg = a / d[:, None] - ((a * g).sum(axis=1) / (dt(c) * d * d))[:, None]
        nz = g != 0
        coef = xp.where(nz, dg / xp.where(nz, g, dt(1)), dt(0)).astype(x3.dtype)   # dG/dx = x / G (0 at G = 0)
        factor = dt(1) + gamma[None, :] * self._nx
        dx = bottom[0].diff.reshape(n, c, s)
        tmp = x3 * coef[:, :, None]
        xp.multiply(dy3, factor[:, :, None], out=dx)      # dx may be dy (in place): dy is read once here
        dx += tmp
