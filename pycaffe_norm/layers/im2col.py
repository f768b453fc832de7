"""im2col / col2im and the batched-GEMM convolution kernels behind Convolution and Deconvolution.

Columns are built for a whole batch at once so that each group needs a single GEMM. Two column layouts exist
because neither wins everywhere on a CPU:

* ``batch_last=False``: columns ``(C, *kernel, N, *out)``. The output of the GEMM is ``(M, N, P)``, which is cheap
  to turn into ``(N, M, P)``; but the im2col copies run along the last spatial axis only (short rows).
* ``batch_last=True``: columns ``(C, *kernel, *out, N)``. im2col/col2im copy rows of ``out_w * N`` contiguous
  elements (fast when many channels feed small images), at the price of transposing input and output.

Spatial dimensions are generic (N-D); loops run over kernel offsets only, never over images or pixels.
"""
from __future__ import annotations

import itertools
from typing import Optional, Sequence, Tuple

import numpy as np

# Tests set this to True/False to force a layout; None picks by the cost estimate in ``choose_batch_last``.
FORCE_BATCH_LAST: Optional[bool] = None
# Largest column buffer (elements) built at once; bigger batches are processed in chunks of whole images.
MAX_COL_ELEMENTS = 1 << 26


class Workspace:
    """Reusable scratch arrays (re-allocating large arrays every call costs page faults)."""

    def __init__(self) -> None:
        self._bufs: dict = {}
        # what the "col" buffer holds when forward's columns may serve the backward pass: (key, "xseen" copy)
        self._cols_of = None

    def get(self, key: str, shape: Sequence[int], dtype, xp):
        shape = tuple(int(s) for s in shape)
        n = int(np.prod(shape, dtype=np.int64))
        buf = self._bufs.get(key)
        if buf is None or buf.size < n or buf.dtype != np.dtype(dtype) or type(buf) is not xp.ndarray:
            buf = xp.empty(max(n, 1), dtype=dtype)
            self._bufs[key] = buf
        return buf[:n].reshape(shape)

    def clear(self) -> None:
        self._bufs.clear()
        self._cols_of = None

    def keep_cols(self, key: tuple, x) -> None:
        """Records that the "col" buffer holds the columns of ``x`` (copied aside, to check it is unchanged)."""
        seen = self.get("xseen", x.shape, x.dtype, _xp(x))
        seen[...] = x
        self._cols_of = key

    def take_cols(self, key: tuple, x) -> bool:
        """True when the "col" buffer still holds the columns of ``x``, bit for bit; the claim is used up."""
        kept, self._cols_of = self._cols_of, None
        if kept != key:
            return False
        return _same_bits(self.get("xseen", x.shape, x.dtype, _xp(x)), x)

    def drop_cols(self) -> None:
        self._cols_of = None


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
    if geom.has_pad:
        buf.fill(0)
    buf[_interior(geom, batch_last)] = view
    return buf


def from_layout(buf, geom: ConvGeometry, batch_last: bool, out) -> None:
    """Writes the interior of a padded layout array into ``out`` (N, C, *in)."""
    nsp = len(geom.in_shape)
    out[...] = buf[_interior(geom, batch_last)].transpose(_inverse_perm(nsp, batch_last))


def im2col(xl, geom: ConvGeometry, batch_last: bool, ws: Workspace, key: str = "col"):
    """Padded layout input -> columns ``(C * kernel_count, N * out_count)``."""
    c = xl.shape[0]
    n = xl.shape[-1] if batch_last else xl.shape[1]
    shape = (c,) + geom.kernel + (geom.out_shape + (n,) if batch_last else (n,) + geom.out_shape)
    col = ws.get(key, shape, xl.dtype, _xp(xl))
    lead = (slice(None),) if batch_last else (slice(None), slice(None))
    for idx, sl in geom.offsets:
        col[(slice(None),) + idx] = xl[lead + sl]
    return col.reshape(c * geom.kernel_count, n * geom.out_count)


def col2im(col, c: int, n: int, geom: ConvGeometry, batch_last: bool, ws: Workspace, key: str):
    """Columns ``(C * kernel_count, N * out_count)`` -> summed into a zeroed padded layout array."""
    shape = (c,) + geom.padded_shape + (n,) if batch_last else (c, n) + geom.padded_shape
    buf = ws.get(key, shape, col.dtype, _xp(col))
    buf.fill(0)
    cshape = (c,) + geom.kernel + (geom.out_shape + (n,) if batch_last else (n,) + geom.out_shape)
    col = col.reshape(cshape)
    lead = (slice(None),) if batch_last else (slice(None), slice(None))
    for idx, sl in geom.offsets:
        buf[lead + sl] += col[(slice(None),) + idx]
    return buf


def to_rows(y, batch_last: bool, ws: Workspace, key: str):
    """``y`` (N, M, *out) -> contiguous ``(M, N * out_count)`` in the column order of the layout."""
    n, m = y.shape[0], y.shape[1]
    p = int(np.prod(y.shape[2:], dtype=np.int64))
    y3 = y.reshape(n, m, p)
    buf = ws.get(key, (m, p, n) if batch_last else (m, n, p), y.dtype, _xp(y))
    buf[...] = y3.transpose(1, 2, 0) if batch_last else y3.transpose(1, 0, 2)
    return buf.reshape(m, n * p)


def from_rows(rows, out, batch_last: bool, bias=None) -> None:
    """Rows ``(M, N * out_count)`` -> ``out`` (N, M, *out), adding ``bias`` (M,) on the way."""
    xp = _xp(out)
    n, m = out.shape[0], out.shape[1]
    p = int(np.prod(out.shape[2:], dtype=np.int64))
    src = rows.reshape(m, p, n).transpose(2, 0, 1) if batch_last else rows.reshape(m, n, p).transpose(1, 0, 2)
    dst = out.reshape(n, m, p)
    if bias is None:
        dst[...] = src
    else:
        xp.add(src, bias.reshape(1, m, 1), out=dst)


def _xp(a):
    if isinstance(a, np.ndarray):
        return np
    from ..backend import array_module
    return array_module(a)


def _same_bits(a, b) -> bool:
    """Bitwise equality (NaN payloads and the sign of zero included), so a kept result is exactly a recomputed one."""
    utype = {2: np.uint16, 4: np.uint32, 8: np.uint64}.get(np.dtype(a.dtype).itemsize)
    if utype is None or not a.flags.c_contiguous or not b.flags.c_contiguous:
        return False
    return bool(_xp(a).array_equal(a.view(utype), b.view(utype)))


def _cols_key(x, w, geom: ConvGeometry, group: int, bl: bool) -> tuple:
    return (x.shape, np.dtype(x.dtype).str, w.shape, group, bl, geom.in_shape, geom.out_shape, geom.kernel,
            geom.stride, geom.pad, geom.dilation)


def _chunks(n: int, per_image: int):
    step = max(1, MAX_COL_ELEMENTS // max(per_image, 1))
    for n0 in range(0, n, step):
        yield n0, min(n, n0 + step)


# --- convolution kernels ---------------------------------------------------------------------------------
def conv_forward(x, w, bias, y, geom: ConvGeometry, group: int, ws: Workspace) -> None:
    """Caffe's convolution forward: ``x`` (N, C, *in), ``w`` (M, C/group, *kernel) -> ``y`` (N, M, *out)."""
    xp = _xp(x)
    n, c = x.shape[0], x.shape[1]
    m = w.shape[0]
    bl = choose_batch_last(n, c, m, geom)
    wg = w.reshape(group, m // group, -1)
    chunks = list(_chunks(n, c * geom.kernel_count * geom.out_count))
    for n0, n1 in chunks:
        nb = n1 - n0
        col = im2col(to_layout(x[n0:n1], geom, bl, ws, "xl"), geom, bl, ws)
        rows = ws.get("rows", (group, m // group, nb * geom.out_count), x.dtype, xp)
        xp.matmul(wg, col.reshape(group, -1, col.shape[1]), out=rows)
        from_rows(rows.reshape(m, -1), y[n0:n1], bl, bias)
    if len(chunks) == 1:  # the columns of the whole batch stay in "col": the weight gradient can reuse them
        ws.keep_cols(_cols_key(x, w, geom, group, bl), x)
    else:
        ws.drop_cols()


def conv_backward(x, w, dy, geom: ConvGeometry, group: int, ws: Workspace,
                  dx=None, dw=None, db=None) -> None:
    """Accumulates ``dw`` (M, C/group, *kernel) and ``db`` (M,) and overwrites ``dx`` (N, C, *in); any may be None."""
    xp = _xp(dy)
    n, c = x.shape[0], x.shape[1]
    m = w.shape[0]
    mg = m // group
    bl = choose_batch_last(n, c, m, geom)
    wg = w.reshape(group, mg, -1)
    if db is not None:
        db += dy.reshape(n, m, -1).sum(axis=(0, 2))
    if dw is None:
        ws.drop_cols()  # dx's GEMM overwrites "col"
        if dx is None:
            return
    # forward's columns, when "col" still holds those of this very input (one chunk, x unchanged since) and this
    # pass is one chunk too (MAX_COL_ELEMENTS may have been lowered since forward)
    chunks = list(_chunks(n, c * geom.kernel_count * geom.out_count))
    kept = ws.take_cols(_cols_key(x, w, geom, group, bl), x) and len(chunks) == 1
    for n0, n1 in chunks:
        nb = n1 - n0
        rows = to_rows(dy[n0:n1], bl, ws, "rows").reshape(group, mg, -1)
        if dw is not None:
            if kept:
                shape = (c,) + geom.kernel + (geom.out_shape + (nb,) if bl else (nb,) + geom.out_shape)
                col = ws.get("col", shape, x.dtype, xp).reshape(c * geom.kernel_count, nb * geom.out_count)
            else:
                col = im2col(to_layout(x[n0:n1], geom, bl, ws, "xl"), geom, bl, ws)
            col = col.reshape(group, -1, col.shape[1])
            dw += xp.matmul(rows, col.transpose(0, 2, 1)).reshape(dw.shape)
        if dx is not None:
            dcol = ws.get("col", (group, wg.shape[2], rows.shape[2]), dy.dtype, xp)
            xp.matmul(wg.transpose(0, 2, 1), rows, out=dcol)  # BLAS takes the transposed view as is
            buf = col2im(dcol.reshape(-1, rows.shape[2]), c, nb, geom, bl, ws, "dxl")
            from_layout(buf, geom, bl, dx[n0:n1])


def deconv_forward(x, w, bias, y, geom: ConvGeometry, group: int, ws: Workspace) -> None:
    """Caffe's deconvolution forward (the convolution's backward-data): ``x`` (N, C_in, *conv_out),
    ``w`` (C_in, M/group, *kernel) -> ``y`` (N, M, *conv_in)."""
    xp = _xp(x)
    n, cin = x.shape[0], x.shape[1]
    m = y.shape[1]
    cg = cin // group
    bl = choose_batch_last(n, m, cin, geom)
    wg = w.reshape(group, cg, -1)
    for n0, n1 in _chunks(n, m * geom.kernel_count * geom.out_count):
        nb = n1 - n0
        rows = to_rows(x[n0:n1], bl, ws, "rows").reshape(group, cg, -1)
        col = ws.get("col", (group, wg.shape[2], rows.shape[2]), x.dtype, xp)
        xp.matmul(wg.transpose(0, 2, 1), rows, out=col)
        buf = col2im(col.reshape(-1, rows.shape[2]), m, nb, geom, bl, ws, "dxl")
        from_layout(buf, geom, bl, y[n0:n1])
    if bias is not None:
        y3 = y.reshape(n, m, -1)
        y3 += bias.reshape(1, m, 1)


def deconv_backward(x, w, dy, geom: ConvGeometry, group: int, ws: Workspace,
                    dx=None, dw=None, db=None) -> None:
    """Backward of ``deconv_forward``: ``dy`` (N, M, *conv_in) -> ``dx``, ``dw``, ``db`` (as conv_backward)."""
    xp = _xp(dy)
    n, cin = x.shape[0], x.shape[1]
    m = dy.shape[1]
    cg = cin // group
    bl = choose_batch_last(n, m, cin, geom)
    wg = w.reshape(group, cg, -1)
    if db is not None:
        db += dy.reshape(n, m, -1).sum(axis=(0, 2))
    if dw is None and dx is None:
        return
    for n0, n1 in _chunks(n, m * geom.kernel_count * geom.out_count):
        col = im2col(to_layout(dy[n0:n1], geom, bl, ws, "xl"), geom, bl, ws)
        col = col.reshape(group, -1, col.shape[1])
        if dw is not None:
            rows = to_rows(x[n0:n1], bl, ws, "rows").reshape(group, cg, -1)
            dw += xp.matmul(rows, col.transpose(0, 2, 1)).reshape(dw.shape)
        if dx is not None:
            out = ws.get("rows", (group, cg, col.shape[2]), dy.dtype, xp)
            xp.matmul(wg, col, out=out)
            from_rows(out.reshape(cin, -1), dx[n0:n1], bl)
