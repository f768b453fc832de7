"""im2col / col2im and the batched-GEMM convolution kernels behind Convolution and Deconvolution.

Columns are built for a whole batch at once so that each group needs a single GEMM. Two column layouts exist
because neither wins everywhere on a CPU:

* ``batch_last=False``: columns ``(C, *kernel, N, *out)``. The output of the GEMM is ``(M, N, P)``, which is cheap
  to turn into ``(N, M, P)``; but the im2col copies run along the last spatial axis only (short rows).
* ``batch_last=True``: columns ``(C, *kernel, *out, N)``. im2col/col2im copy rows of ``out_w * N`` contiguous
  elements (fast when many channels feed small images), at the price of transposing input and output.

Spatial dimensions are generic (N-D); loops run over kernel offsets only, never over images or pixels.

Two-dimensional convolutions with stride 1 (the common case) skip the full column matrix: in the layout
``(C, H, N, W)`` the inputs of kernel column ``j`` are one shifted copy ``(C, kw, Hp, N, Ow)``, and kernel row ``i``
reads a contiguous range of its columns, so each kernel row is one GEMM over a view. That copies the input ``kw``
times instead of ``kh * kw`` and keeps the buffer ``kh`` times smaller. The data gradient is then the "full"
correlation of the padded top gradient with the rotated kernel, computed the same way.

Scratch arrays live in one workspace per thread shared by every convolution (Caffe shares one column buffer),
so nothing in them survives from forward to backward.
"""
from __future__ import annotations

import itertools
import math
import threading
from typing import Optional, Sequence, Tuple

import numpy as np

from .. import parallel
from . import cuda_kernels
from .per_channel import channel_sum

# Tests set this to True/False to force a layout; None picks by the cost estimate in ``choose_batch_last``.
FORCE_BATCH_LAST: Optional[bool] = None
# Tests set this to False (the full im2col path everywhere) or True (the kernel-row path wherever it applies).
USE_ROWS: Optional[bool] = None
# Largest column buffer (elements) built at once; bigger batches are processed in chunks of whole images
# (1M elements: 4 MiB of float32 per thread, cache-sized GEMM operands instead of the whole batch's columns). The
# kernel-row path, with less work per chunk outside its GEMMs, takes half that (measured on CIFAR-10-quick:
# conv2's products 5% faster at 2 MiB, conv1's im2col 20% slower).
MAX_COL_ELEMENTS = 1 << 20


class Workspace:
    """Reusable scratch arrays (re-allocating large arrays every call costs page faults)."""

    def __init__(self) -> None:
        self._bufs: dict = {}

    def get(self, key: str, shape: Sequence[int], dtype, xp):
        shape = tuple(int(s) for s in shape)
        n = math.prod(shape)
        buf = self._bufs.get(key)
        if buf is None or buf.size < n or buf.dtype != np.dtype(dtype) or type(buf) is not xp.ndarray:
            buf = xp.empty(max(n, 1), dtype=dtype)
            self._bufs[key] = buf
        return buf[:n].reshape(shape)

    def clear(self) -> None:
        self._bufs.clear()


_local = threading.local()


def shared_workspace() -> Workspace:
    """The calling thread's workspace shared by all convolutions: contents are valid within one call only."""
    ws = getattr(_local, "ws", None)
    if ws is None:
        ws = _local.ws = Workspace()
    return ws


class ConvGeometry:
    """Spatial geometry of a convolution from ``in_shape`` (conv input) to ``out_shape`` (conv output)."""

    def __init__(self, in_shape, out_shape, kernel, stride, pad, dilation) -> None:
        self.in_shape: Tuple[int, ...] = tuple(int(v) for v in in_shape)
        self.out_shape: Tuple[int, ...] = tuple(int(v) for v in out_shape)
        self.kernel: Tuple[int, ...] = tuple(int(v) for v in kernel)
        self.stride: Tuple[int, ...] = tuple(int(v) for v in stride)
        self.pad: Tuple[int, ...] = tuple(int(v) for v in pad)
        self.dilation: Tuple[int, ...] = tuple(int(v) for v in dilation)
        self.padded_shape = tuple(i + 2 * p for i, p in zip(self.in_shape, self.pad))
        self.kernel_count = int(np.prod(self.kernel, dtype=np.int64))
        self.out_count = int(np.prod(self.out_shape, dtype=np.int64))
        self.in_count = int(np.prod(self.in_shape, dtype=np.int64))
        self.has_pad = any(self.pad)
        # (kernel offset index tuple, slices of the padded input that the offset reads for all outputs)
        self.offsets = []
        for idx in itertools.product(*[range(k) for k in self.kernel]):
            sl = tuple(slice(i * d, i * d + s * (o - 1) + 1, s)
                       for i, d, s, o in zip(idx, self.dilation, self.stride, self.out_shape))
            self.offsets.append((idx, sl))


def extent(kernel: int, dilation: int) -> int:
    return dilation * (kernel - 1) + 1


def conv_out_size(size: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    """Caffe's convolution output size; -1 when the dilated kernel does not fit the padded input."""
    span = size + 2 * pad - extent(kernel, dilation)
    return -1 if span < 0 else span // stride + 1


def deconv_out_size(size: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    return stride * (size - 1) + extent(kernel, dilation) - 2 * pad


def choose_batch_last(n: int, c: int, m: int, geom: ConvGeometry) -> bool:
    """Estimates which column layout is cheaper for one forward+backward (constants measured on x86 numpy)."""
    if FORCE_BATCH_LAST is not None:
        return FORCE_BATCH_LAST
    if n == 1 or not geom.out_shape:
        return False
    # batch-first: one short row per (column row, image, output row); batch-last: two transposed copies of
    # the input and output instead.
    rows = c * geom.kernel_count * (geom.out_count // max(geom.out_shape[-1], 1))
    moved = m * geom.out_count + c * geom.in_count
    return rows * 8 > moved


# --- layout conversion -----------------------------------------------------------------------------------
def _spatial_perm(nsp: int, batch_last: bool) -> tuple:
    # (N, C, *S) -> (C, N, *S) or (C, *S, N)
    return (1,) + tuple(range(2, 2 + nsp)) + (0,) if batch_last else (1, 0) + tuple(range(2, 2 + nsp))


def _inverse_perm(nsp: int, batch_last: bool) -> tuple:
    # (C, N, *S) or (C, *S, N) -> (N, C, *S)
    return (nsp + 1, 0) + tuple(range(1, 1 + nsp)) if batch_last else (1, 0) + tuple(range(2, 2 + nsp))


def _interior(geom: ConvGeometry, batch_last: bool) -> tuple:
    sl = tuple(slice(p, p + s) for p, s in zip(geom.pad, geom.in_shape))
    return (slice(None),) + sl if batch_last else (slice(None), slice(None)) + sl


def to_layout(x, geom: ConvGeometry, batch_last: bool, ws: Workspace, key: str):
    """``x`` (N, C, *in) -> zero-padded ``(C, N, *padded)`` or ``(C, *padded, N)`` (a view when possible)."""
    xp = _xp(x)
    nsp = len(geom.in_shape)
    view = x.transpose(_spatial_perm(nsp, batch_last))
    if not geom.has_pad and not batch_last:
        return view
    n, c = x.shape[0], x.shape[1]
    shape = (c,) + geom.padded_shape + (n,) if batch_last else (c, n) + geom.padded_shape
    buf = ws.get(key, shape, x.dtype, xp)
    inner = _interior(geom, batch_last)

    def part(c0, c1):
        if geom.has_pad:
            buf[c0:c1].fill(0)
        buf[c0:c1][inner] = view[c0:c1]

    _by_channel(c, part, buf)
    return buf


def from_layout(buf, geom: ConvGeometry, batch_last: bool, out) -> None:
    """Writes the interior of a padded layout array into ``out`` (N, C, *in)."""
    src = buf[_interior(geom, batch_last)].transpose(_inverse_perm(len(geom.in_shape), batch_last))
    _by_channel(buf.shape[0], lambda c0, c1: out[:, c0:c1].__setitem__(Ellipsis, src[:, c0:c1]), buf)


def im2col(xl, geom: ConvGeometry, batch_last: bool, ws: Workspace, key: str = "col"):
    """Padded layout input -> columns ``(C * kernel_count, N * out_count)``."""
    c = xl.shape[0]
    n = xl.shape[-1] if batch_last else xl.shape[1]
    shape = (c,) + geom.kernel + (geom.out_shape + (n,) if batch_last else (n,) + geom.out_shape)
    col = ws.get(key, shape, xl.dtype, _xp(xl))
    lead = (slice(None),) if batch_last else (slice(None), slice(None))

    def part(c0, c1):
        xc = xl[c0:c1]
        for idx, sl in geom.offsets:
            col[(slice(c0, c1),) + idx] = xc[lead + sl]

    _by_channel(c, part, col)
    return col.reshape(c * geom.kernel_count, n * geom.out_count)


def col2im(col, c: int, n: int, geom: ConvGeometry, batch_last: bool, ws: Workspace, key: str):
    """Columns ``(C * kernel_count, N * out_count)`` -> summed into a zeroed padded layout array."""
    shape = (c,) + geom.padded_shape + (n,) if batch_last else (c, n) + geom.padded_shape
    buf = ws.get(key, shape, col.dtype, _xp(col))
    cshape = (c,) + geom.kernel + (geom.out_shape + (n,) if batch_last else (n,) + geom.out_shape)
    col = col.reshape(cshape)
    lead = (slice(None),) if batch_last else (slice(None), slice(None))

    def part(c0, c1):
        bc = buf[c0:c1]
        bc.fill(0)
        for idx, sl in geom.offsets:
            bc[lead + sl] += col[(slice(c0, c1),) + idx]

    _by_channel(c, part, col)
    return buf


def to_rows(y, batch_last: bool, ws: Workspace, key: str):
    """``y`` (N, M, *out) -> contiguous ``(M, N * out_count)`` in the column order of the layout."""
    n, m = y.shape[0], y.shape[1]
    p = int(np.prod(y.shape[2:], dtype=np.int64))
    y3 = y.reshape(n, m, p)
    buf = ws.get(key, (m, p, n) if batch_last else (m, n, p), y.dtype, _xp(y))
    src = y3.transpose(1, 2, 0) if batch_last else y3.transpose(1, 0, 2)
    _by_channel(m, lambda m0, m1: buf[m0:m1].__setitem__(Ellipsis, src[m0:m1]), buf)
    return buf.reshape(m, n * p)


def from_rows(rows, out, batch_last: bool, bias=None) -> None:
    """Rows ``(M, N * out_count)`` -> ``out`` (N, M, *out), adding ``bias`` (M,) to the rows first (in place)."""
    n, m = out.shape[0], out.shape[1]
    p = int(np.prod(out.shape[2:], dtype=np.int64))
    _add_bias(rows, bias)
    src = rows.reshape(m, p, n).transpose(2, 0, 1) if batch_last else rows.reshape(m, n, p).transpose(1, 0, 2)
    _rows_out(src, out.reshape(n, m, p))


def _add_bias(rows, bias) -> None:
    """``rows`` (M, ...) += ``bias`` (M,), before the rows are copied out: along the rows' long contiguous axis
    (added during the transposing copy, NumPy's broadcast costs ~0.2 us per output row of 8-64 elements)."""
    if bias is not None:
        r2 = rows.reshape(bias.shape[0], -1)
        r2 += bias.reshape(-1, 1)


def _rows_out(src, dst) -> None:
    """``dst[...] = src`` for (N, M, ...) arrays, split over M on threads."""
    _by_channel(dst.shape[1], lambda m0, m1: dst[:, m0:m1].__setitem__(Ellipsis, src[:, m0:m1]), dst)


def _by_channel(c: int, part, array) -> None:
    """Runs ``part(c0, c1)`` over channel ranges on the thread pool (copies and sums are memory-bound loops
    that NumPy runs without the GIL); ``array`` is the largest array touched, for the size and the backend."""
    parallel.over_batch(c, part, int(array.size), isinstance(array, np.ndarray))


def _xp(a):
    if isinstance(a, np.ndarray):
        return np
    from ..backend import array_module
    return array_module(a)


def _chunks(n: int, per_image: int, share: int = 1):
    step = max(1, MAX_COL_ELEMENTS // share // max(per_image, 1))
    for n0 in range(0, n, step):
        yield n0, min(n, n0 + step)


# --- kernel-row path (2-D, stride 1) ----------------------------------------------------------------------
def use_rows(geom: ConvGeometry, k_in: int, m_out: int) -> bool:
    """Whether the kernel-row path computes a correlation with ``k_in`` input channels per group and ``m_out``
    outputs per group. It needs 2-D, stride 1. Measured on a 2-core x86 (OpenBLAS, CPU time, CIFAR/ResNet/LeNet
    shapes) it pays for padded convolutions whose kernel-row GEMMs are big enough (``k_in * kw >= 48``, ``m_out >=
    16``); few input channels (LeNet's and CIFAR's conv1), unpadded layers and 1x1 kernels run faster on im2col."""
    if USE_ROWS is False or len(geom.kernel) != 2 or geom.stride != (1, 1):
        return False
    return USE_ROWS is True or (geom.kernel_count > 1 and geom.has_pad and k_in * geom.kernel[1] >= 48
                                and m_out >= 16)


def _full_pad(geom: ConvGeometry):
    """Padding of the top gradient whose correlation with the rotated kernel is the data gradient (stride 1)."""
    return tuple(extent(k, d) - 1 - p for k, d, p in zip(geom.kernel, geom.dilation, geom.pad))


def _hnw(x, pad, ws: Workspace, key: str):
    """``x`` (N, C, H, W) -> zero-padded ``(C, H + 2 ph, N, W + 2 pw)``."""
    n, c, h, w = x.shape
    ph, pw = pad
    buf = ws.get(key, (c, h + 2 * ph, n, w + 2 * pw), x.dtype, _xp(x))
    src = x.transpose(1, 2, 0, 3)

    def part(c0, c1):
        b = buf[c0:c1]
        if ph:  # only the border is zeroed: the interior is overwritten below
            b[:, :ph] = 0
            b[:, ph + h:] = 0
        if pw:
            b[:, ph:ph + h, :, :pw] = 0
            b[:, ph:ph + h, :, pw + w:] = 0
        b[:, ph:ph + h, :, pw:pw + w] = src[c0:c1]

    _by_channel(c, part, buf)
    return buf


def _pixel_rows(a, group: int, ws: Workspace, key: str):
    """``a`` (N, C, H, W) -> (group, H * N * W, C / group): one row of channels per position, positions in the
    kernel columns' (H, N, W) order. As the right operand of a weight gradient's product it runs ~12% faster in
    OpenBLAS than the transposed (C, H * N * W) rows (83 against 74 GFLOP/s on CIFAR-10's conv2), and the copy costs
    the same."""
    n, c, h, w = a.shape
    buf = ws.get(key, (h, n, w, c), a.dtype, _xp(a))
    buf[...] = a.transpose(2, 0, 3, 1)
    return buf.reshape(h * n * w, group, c // group).transpose(1, 0, 2)


def _wcols(xl, kw: int, dw: int, ow: int, ws: Workspace):
    """``xl`` (C, Hp, N, Wp) -> (C, kw, Hp, N, Ow): the inputs of each kernel column, ``xl[..., j*dw : j*dw+ow]``."""
    c, hp, n, wp = xl.shape
    if kw == 1 and wp == ow:
        return xl.reshape(c, 1, hp, n, ow)
    col = ws.get("col", (c, kw, hp, n, ow), xl.dtype, _xp(xl))

    def part(c0, c1):
        for j in range(kw):
            col[c0:c1, j] = xl[c0:c1, ..., j * dw:j * dw + ow]

    _by_channel(c, part, col)
    return col


def _kernel_columns(x, pad, kw: int, dw: int, ow: int, ws: Workspace):
    """``x`` (N, C, H, W) -> (C, kw, H + 2 ph, N, Ow): the inputs of each kernel column of the zero-padded ``x``,
    copied straight from ``x`` (as ``_wcols(_hnw(x, pad))`` without the padded intermediate)."""
    n, c, h, w = x.shape
    ph, pw = pad
    if kw == 1 and w + 2 * pw == ow:
        return _wcols(_hnw(x, pad, ws, "xl"), kw, dw, ow, ws)
    col = ws.get("col", (c, kw, h + 2 * ph, n, ow), x.dtype, _xp(x))
    src = x.transpose(1, 2, 0, 3)  # (C, H, N, W)
    # "Same" width (the usual padded stride-1 layer): the kernel column at offset 0 is x itself in (C, H, N, W)
    # order, and every other column is that block shifted by a few elements, one long copy per channel, with the
    # columns that the shift wraps across row ends set to zero. Otherwise each column copies rows of Ow elements.
    same = ow == w and pw % dw == 0 and pw // dw < kw
    spans = []
    for j in range(kw):  # output columns o read input column o + j * dw - pw: those inside [0, w)
        o_lo = min(ow, max(0, pw - j * dw))
        o_hi = max(o_lo, min(ow, w + pw - j * dw))
        spans.append((o_lo, o_hi, o_lo + j * dw - pw))

    def part(c0, c1):
        cc = col[c0:c1]
        if ph:
            cc[:, :, :ph] = 0
            cc[:, :, ph + h:] = 0
        if same:
            center = pw // dw
            block = cc[:, center, ph:ph + h]
            block[...] = src[c0:c1]
            flat, length = block.reshape(c1 - c0, -1), h * n * w
        for j, (o_lo, o_hi, i_lo) in enumerate(spans):
            inner = cc[:, j, ph:ph + h]
            if same and j != center:
                shift, out = j * dw - pw, inner.reshape(c1 - c0, -1)
                if shift > 0:
                    out[:, :length - shift] = flat[:, shift:]
                else:
                    out[:, -shift:] = flat[:, :length + shift]
            elif not same:
                inner[..., o_lo:o_hi] = src[c0:c1, ..., i_lo:i_lo + o_hi - o_lo]
            rows = inner.reshape(c1 - c0, h * n, ow)
            for o in list(range(o_lo)) + list(range(o_hi, ow)):  # one strided pass per zero column
                rows[:, :, o] = 0

    _by_channel(c, part, col)
    return col


def _slabs(col, group: int, kh: int, dh: int, oh: int) -> list:
    """Per kernel row ``i``, its GEMM operand: the (group, Cg * kw, oh * N * Ow) view of rows i*dh ... of ``col``."""
    c, kw, hp, n, ow = col.shape
    flat = col.reshape(group, (c // group) * kw, hp * n * ow)
    step, length = n * ow, oh * n * ow
    return [flat[:, :, i * dh * step:i * dh * step + length] for i in range(kh)]


def _row_weights(w, group: int, flip: bool = False):
    """``w`` (M, Cg, kh, kw) -> per kernel row (kh, group, Mg, Cg * kw); ``flip``: the rotated, transposed kernel
    of the data gradient, (kh, group, Cg, Mg * kw) holding w[m, c, kh-1-i, kw-1-j]."""
    xp = _xp(w)
    m, cg, kh, kw = w.shape
    wg = w.reshape(group, m // group, cg, kh, kw)
    if flip:
        return xp.ascontiguousarray(wg[:, :, :, ::-1, ::-1].transpose(3, 0, 2, 1, 4)).reshape(
            kh, group, cg, (m // group) * kw)
    return xp.ascontiguousarray(wg.transpose(3, 0, 1, 2, 4)).reshape(kh, group, m // group, cg * kw)


def _correlate(col, wr, dh: int, oh: int, ws: Workspace):
    """Sum over kernel rows of ``wr[i] @ slab_i``: rows (group, Mg, oh * N * Ow)."""
    xp = _xp(col)
    slabs = _slabs(col, wr.shape[1], wr.shape[0], dh, oh)
    out = ws.get("rows", wr.shape[1:3] + (slabs[0].shape[2],), col.dtype, xp)
    xp.matmul(wr[0], slabs[0], out=out)
    if len(slabs) > 1:
        tmp = ws.get("tmp", out.shape, col.dtype, xp)
        for i in range(1, len(slabs)):
            xp.matmul(wr[i], slabs[i], out=tmp)
            out += tmp
    return out


def _rows_to_nchw(rows, y, bias) -> None:
    """Rows (M, Oh, N, Ow) -> ``y`` (N, M, Oh, Ow), adding ``bias`` (M,) to the rows first (in place)."""
    n, m, oh, ow = y.shape
    _add_bias(rows, bias)
    _rows_out(rows.reshape(m, oh, n, ow).transpose(2, 0, 1, 3), y)


def _fwd_rows(x, w, bias, y, geom: ConvGeometry, group: int, ws: Workspace) -> None:
    kw, (dh, dw), (oh, ow) = geom.kernel[1], geom.dilation, geom.out_shape
    wr = _row_weights(w, group)
    for n0, n1 in _chunks(x.shape[0], x.shape[1] * kw * geom.padded_shape[0] * ow, 2):
        col = _kernel_columns(x[n0:n1], geom.pad, kw, dw, ow, ws)
        _rows_to_nchw(_correlate(col, wr, dh, oh, ws), y[n0:n1], bias)


def _bwd_weight_rows(x, dy, dw, geom: ConvGeometry, group: int, ws: Workspace) -> None:
    xp = _xp(dy)
    (kh, kw), (dh, dwl), (oh, ow) = geom.kernel, geom.dilation, geom.out_shape
    m, cg = dw.shape[0], dw.shape[1]
    mg = m // group
    dwr = None
    for n0, n1 in _chunks(x.shape[0], x.shape[1] * kw * geom.padded_shape[0] * ow, 2):
        slabs = _slabs(_kernel_columns(x[n0:n1], geom.pad, kw, dwl, ow, ws), group, kh, dh, oh)
        rows = _pixel_rows(dy[n0:n1], group, ws, "dyrows")
        # slab @ rows: OpenBLAS runs it 1.2x faster than rows^T @ slab^T here
        part = xp.stack([xp.matmul(s, rows) for s in slabs])  # (kh, group, Cg * kw, Mg)
        dwr = part if dwr is None else dwr + part
    dw.reshape(group, mg, cg, kh, kw)[...] += dwr.reshape(kh, group, cg, kw, mg).transpose(1, 4, 2, 0, 3)


def _bwd_data_rows(dy, w, dx, geom: ConvGeometry, group: int, ws: Workspace) -> None:
    kw, (dh, dwl), (h, wd) = geom.kernel[1], geom.dilation, geom.in_shape
    pad = _full_pad(geom)
    wf = _row_weights(w, group, flip=True)
    for n0, n1 in _chunks(dy.shape[0], dy.shape[1] * kw * (dy.shape[2] + 2 * pad[0]) * wd, 2):
        col = _kernel_columns(dy[n0:n1], pad, kw, dwl, wd, ws)
        _rows_to_nchw(_correlate(col, wf, dh, h, ws), dx[n0:n1], None)


def _bwd_both_rows(x, dy, w, dx, dw, geom: ConvGeometry, group: int, ws: Workspace) -> None:
    """Data and weight gradients from one set of top-gradient kernel columns: the data gradient's slab for
    rotated kernel row ``kh-1-i``, times the input in (C, H, N, W) rows, is the weight gradient of kernel row ``i``
    (with kernel columns reversed). One copy of the input instead of ``kw`` shifted copies and a copy of the top
    gradient, and both products read the columns while they are in the cache."""
    xp = _xp(dy)
    (kh, kw), (dh, dwl), (h, wd) = geom.kernel, geom.dilation, geom.in_shape
    m, cg = w.shape[0], w.shape[1]
    mg = m // group
    pad = _full_pad(geom)
    wf = _row_weights(w, group, flip=True)
    acc = None
    for n0, n1 in _chunks(dy.shape[0], m * kw * (dy.shape[2] + 2 * pad[0]) * wd, 2):
        col = _kernel_columns(dy[n0:n1], pad, kw, dwl, wd, ws)
        _rows_to_nchw(_correlate(col, wf, dh, h, ws), dx[n0:n1], None)
        rows = _pixel_rows(x[n0:n1], group, ws, "xrows")
        part = xp.stack([xp.matmul(s, rows) for s in _slabs(col, group, kh, dh, h)])
        acc = part if acc is None else acc + part     # (kh, group, Mg * kw, Cg), rotated kernel rows and columns
    dw.reshape(group, mg, cg, kh, kw)[...] += acc.reshape(kh, group, mg, kw, cg)[::-1, :, :, ::-1].transpose(
        1, 2, 4, 0, 3)


# --- full im2col path (any geometry) -------------------------------------------------------------------------
def _fwd_cols(x, w, bias, y, geom: ConvGeometry, group: int, ws: Workspace) -> None:
    xp = _xp(x)
    n, c = x.shape[0], x.shape[1]
    m = w.shape[0]
    bl = choose_batch_last(n, c, m, geom)
    wg = w.reshape(group, m // group, -1)
    per_image = _per_image_products(geom, bl, group)
    for n0, n1 in _chunks(n, c * geom.kernel_count * geom.out_count):
        col = im2col(to_layout(x[n0:n1], geom, bl, ws, "xl"), geom, bl, ws)
        if per_image:  # each image's product written straight into its (M, P) output
            y3 = y[n0:n1].reshape(n1 - n0, m, geom.out_count)
            xp.matmul(wg[0], _image_columns(col, n1 - n0), out=y3)
            if bias is not None:
                y3 += bias.reshape(1, m, 1)
            continue
        rows = ws.get("rows", (group, m // group, col.shape[1]), x.dtype, xp)
        xp.matmul(wg, col.reshape(group, -1, col.shape[1]), out=rows)
        from_rows(rows.reshape(m, -1), y[n0:n1], bl, bias)


def _bwd_weight_cols(x, dy, dw, geom: ConvGeometry, group: int, ws: Workspace) -> None:
    xp = _xp(dy)
    n, c = x.shape[0], x.shape[1]
    m = dw.shape[0]
    bl = choose_batch_last(n, c, m, geom)
    per_image = _per_image_products(geom, bl, group)
    for n0, n1 in _chunks(n, c * geom.kernel_count * geom.out_count):
        col = im2col(to_layout(x[n0:n1], geom, bl, ws, "xl"), geom, bl, ws)
        if per_image:  # sum over images of columns (K, P) @ top gradient (P, M), read in place
            d3 = dy[n0:n1].reshape(n1 - n0, m, geom.out_count)
            part = xp.matmul(_image_columns(col, n1 - n0), d3.transpose(0, 2, 1))
            dw += part.sum(axis=0).T.reshape(dw.shape)
            continue
        rows = to_rows(dy[n0:n1], bl, ws, "rows").reshape(group, m // group, -1)
        # (columns @ rows^T)^T: the transposed product runs 1.2x faster in OpenBLAS than rows @ columns^T
        dw += xp.matmul(col.reshape(group, -1, col.shape[1]), rows.transpose(0, 2, 1)).transpose(0, 2, 1).reshape(
            dw.shape)


# Output positions per image from which the full im2col path multiplies image by image (measured on a 2-core x86:
# LeNet's conv1, 576 positions, 2x faster; CIFAR-10's conv1, 1024, 8% faster; 64 positions slower).
PER_IMAGE_MIN_POSITIONS = 256


def _per_image_products(geom: ConvGeometry, batch_last: bool, group: int) -> bool:
    """Whether the products run per image: one GEMM per image writes its output in place and reads its top
    gradient in place (no copy to or from the (M, N * P) rows); pays for many positions per image."""
    return not batch_last and group == 1 and geom.out_count >= PER_IMAGE_MIN_POSITIONS


def _image_columns(col, nb: int):
    """Columns (K, nb * P) of the batch-first layout as (nb, K, P) per-image views."""
    return col.reshape(col.shape[0], nb, -1).transpose(1, 0, 2)


def _bwd_data_cols(dy, w, dx, geom: ConvGeometry, group: int, ws: Workspace) -> None:
    xp = _xp(dy)
    n, c = dx.shape[0], dx.shape[1]
    m = w.shape[0]
    bl = choose_batch_last(n, c, m, geom)
    wg = w.reshape(group, m // group, -1)
    for n0, n1 in _chunks(n, c * geom.kernel_count * geom.out_count):
        rows = to_rows(dy[n0:n1], bl, ws, "rows").reshape(group, m // group, -1)
        dcol = ws.get("col", (group, wg.shape[2], rows.shape[2]), dy.dtype, xp)
        xp.matmul(wg.transpose(0, 2, 1), rows, out=dcol)  # BLAS takes the transposed view as is
        buf = col2im(dcol.reshape(-1, rows.shape[2]), c, n1 - n0, geom, bl, ws, "dxl")
        from_layout(buf, geom, bl, dx[n0:n1])


# --- the three products of a convolution, and Convolution/Deconvolution on them --------------------------
def _forward(x, w, bias, y, geom: ConvGeometry, group: int, ws: Workspace) -> None:
    """``y`` (N, M, *out) = x (N, C, *in) correlated with ``w`` (M, C/group, *kernel), plus ``bias``."""
    if cuda_kernels.enabled(_xp(x)) and cuda_kernels.conv_applies(geom, x):  # one im2col launch + GEMM
        return cuda_kernels.conv_forward(x, w, bias, y, geom, group, ws)
    rows = use_rows(geom, w.shape[1], w.shape[0] // group)
    (_fwd_rows if rows else _fwd_cols)(x, w, bias, y, geom, group, ws)


def _weight_grad(x, dy, dw, geom: ConvGeometry, group: int, ws: Workspace) -> None:
    """``dw`` += the weight gradient of ``_forward`` for input ``x`` and top gradient ``dy``."""
    if cuda_kernels.enabled(_xp(x)) and cuda_kernels.conv_applies(geom, x):
        return cuda_kernels.conv_weight_grad(x, dy, dw, geom, group, ws)
    rows = use_rows(geom, dw.shape[1], dw.shape[0] // group)
    (_bwd_weight_rows if rows else _bwd_weight_cols)(x, dy, dw, geom, group, ws)


def _data_grad(dy, w, dx, geom: ConvGeometry, group: int, ws: Workspace) -> None:
    """``dx`` = the input gradient of ``_forward`` for top gradient ``dy`` (overwritten)."""
    if cuda_kernels.enabled(_xp(dy)) and cuda_kernels.conv_applies(geom, dy):  # GEMM + one col2im launch
        return cuda_kernels.conv_data_grad(dy, w, dx, geom, group, ws)
    (_bwd_data_rows if _data_rows(geom, w, group) else _bwd_data_cols)(dy, w, dx, geom, group, ws)


def _data_rows(geom: ConvGeometry, w, group: int) -> bool:
    """Whether the data gradient takes the kernel-row path. The full correlation runs over the top gradient padded
    by extent-1-pad: only when that is no more than the forward's own padding (a "same" convolution), or the
    zeros cost more than the im2col path saves."""
    full = _full_pad(geom)
    return use_rows(geom, w.shape[0] // group, w.shape[1]) and min(full) >= 0 and (
        USE_ROWS is True or all(f <= p for f, p in zip(full, geom.pad)))


def _bias_grad(dy, db) -> None:
    """``db`` += the sum of ``dy`` over images and positions (``per_channel.channel_sum``: 3x faster than NumPy's
    reduction over two axes, 1.4x faster than a matrix-vector product with ones)."""
    n, m = dy.shape[0], dy.shape[1]
    db += channel_sum(_xp(dy), dy.reshape(n, m, -1))


def _over_images(x, fn, elements: int) -> None:
    """Runs ``fn(n0, n1, ws)`` over chunks of the batch on the thread pool, each with its thread's workspace (so
    each core builds its own columns and runs its own single-threaded GEMMs); CuPy arrays run in one call."""
    if not isinstance(x, np.ndarray):
        fn(0, x.shape[0], shared_workspace())
        return
    parallel.over_batch(x.shape[0], lambda n0, n1: fn(n0, n1, shared_workspace()), elements, True)


def _backward_split(x, dy, dw, db, data_grad, geom: ConvGeometry, group: int, weight_grad=None, both=None) -> None:
    """One pass over chunks of the batch on the pool: each chunk adds its share of the weight and bias gradients
    into partials of its own and runs ``data_grad(n0, n1, ws)``; the partials are then added in batch order, so a
    given thread count always gives the same bits. ``weight_grad(x, dy, dw, ws)`` defaults to the convolution's;
    ``both(n0, n1, dw, ws)``, when given, computes the weight and data gradients of a chunk together."""
    weight_grad = weight_grad or (lambda xs, ds, p, ws: _weight_grad(xs, ds, p, geom, group, ws))
    if not isinstance(dy, np.ndarray) or parallel.num_threads() <= 1:
        ws = shared_workspace()
        if db is not None:
            _bias_grad(dy, db)
        if both is not None:
            both(0, dy.shape[0], dw, ws)
            return
        if dw is not None:
            weight_grad(x, dy, dw, ws)
        if data_grad is not None:
            data_grad(0, dy.shape[0], ws)
        return
    partials = {}

    def part(n0, n1, ws):
        sums = []  # not in the workspace: a pool thread may run two chunks
        if dw is not None:
            sums.append(np.zeros_like(dw))
            if both is None:
                weight_grad(x[n0:n1], dy[n0:n1], sums[-1], ws)
        if db is not None:
            sums.append(np.zeros_like(db))
            _bias_grad(dy[n0:n1], sums[-1])
        partials[n0] = sums
        if both is not None:
            both(n0, n1, sums[0], ws)
        elif data_grad is not None:
            data_grad(n0, n1, ws)

    _over_images(dy, part, x.size + 2 * dy.size)
    for n0 in sorted(partials):
        for total, p in zip([g for g in (dw, db) if g is not None], partials[n0]):
            total += p


def conv_forward(x, w, bias, y, geom: ConvGeometry, group: int, ws: Workspace) -> None:
    """Caffe's convolution forward: ``x`` (N, C, *in), ``w`` (M, C/group, *kernel) -> ``y`` (N, M, *out)."""
    _over_images(x, lambda n0, n1, ws: _forward(x[n0:n1], w, bias, y[n0:n1], geom, group, ws), x.size + y.size)


def conv_backward(x, w, dy, geom: ConvGeometry, group: int, ws: Workspace,
                  dx=None, dw=None, db=None) -> None:
    """Accumulates ``dw`` (M, C/group, *kernel) and ``db`` (M,) and overwrites ``dx`` (N, C, *in); any may be None."""
    data = None if dx is None else (lambda n0, n1, ws: _data_grad(dy[n0:n1], w, dx[n0:n1], geom, group, ws))

    def both(n0, n1, p, ws):   # both gradients from the same top-gradient columns (kernel-row path)
        _bwd_both_rows(x[n0:n1], dy[n0:n1], w, dx[n0:n1], p, geom, group, ws)

    fused = dx is not None and dw is not None and isinstance(dy, np.ndarray) and _data_rows(geom, w, group)
    _backward_split(x, dy, dw, db, data, geom, group, both=both if fused else None)


def deconv_forward(x, w, bias, y, geom: ConvGeometry, group: int, ws: Workspace) -> None:
    """Caffe's deconvolution forward (the convolution's backward-data): ``x`` (N, C_in, *conv_out),
    ``w`` (C_in, M/group, *kernel) -> ``y`` (N, M, *conv_in)."""
    _over_images(x, lambda n0, n1, ws: _data_grad(x[n0:n1], w, y[n0:n1], geom, group, ws), x.size + y.size)
    if bias is not None:
        n, m = y.shape[0], y.shape[1]
        y3 = y.reshape(n, m, -1)
        y3 += bias.reshape(1, m, 1)


def deconv_backward(x, w, dy, geom: ConvGeometry, group: int, ws: Workspace,
                    dx=None, dw=None, db=None) -> None:
    """Backward of ``deconv_forward``: ``dy`` (N, M, *conv_in) -> ``dx``, ``dw``, ``db`` (as conv_backward)."""
    data = None if dx is None else (lambda n0, n1, ws: _forward(dy[n0:n1], w, None, dx[n0:n1], geom, group, ws))
    _backward_split(x, dy, dw, db, data, geom, group,
                    lambda xs, ds, p, ws: _weight_grad(ds, xs, p, geom, group, ws))
