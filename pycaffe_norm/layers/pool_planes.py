"""MAX and AVE pooling over phase planes: every window pass is one long contiguous loop.

A pooling window at offset (i, j) reads the input at rows ``i + stride_h * o`` and columns ``j + stride_w * p``.
Read straight from (N, C, H, W) that is a strided view with rows of ``out_w`` elements, and NumPy pays a call of
its inner loop per row: for CIFAR-10's 3x3/2 pooling that is 16 or 8 elements, and the loop overhead costs more
than the arithmetic. So the padded input is first split once into ``stride_h * stride_w`` phase planes, plane
``(a, b)`` holding padded rows ``a, a + stride_h, ...`` and columns ``b, b + stride_w, ...`` of every image on a
grid of ``Hq x Wq`` cells (``Hq = out_h + (kernel_h - 1) // stride_h``, ``Wq`` likewise). Window (i, j) is then plane
``(i % stride_h, j % stride_w)`` shifted by ``(i // stride_h) * Wq + j // stride_w`` cells: one contiguous slice of
the flat plane for the whole block of images. Outputs are computed on the same ``Hq x Wq`` grid and the first
``out_h x out_w`` cells kept; the other cells read across image borders and are never used (their top gradient is
zero in backward). The windows are visited in Caffe's scan order and the arithmetic is the same as window by
window, so the results are the same bits: first maximum on ties, sums in window order.
"""
from __future__ import annotations

import numpy as np


class PlaneGeometry:
    """Where each input pixel and each window lives in the phase planes of one pooling geometry."""

    def __init__(self, in_hw, kernel, stride, pad, out) -> None:
        (self.h, self.w), (kh, kw), (sh, sw), (ph, pw), (oh, ow) = in_hw, kernel, stride, pad, out
        self.out, self.stride = (oh, ow), (sh, sw)
        self.hq, self.wq = oh + (kh - 1) // sh, ow + (kw - 1) // sw
        self.cells = self.hq * self.wq
        # phases that some window reads (fewer than stride when the kernel is smaller than the stride)
        self.phases = [(a, b) for a in range(min(sh, kh)) for b in range(min(sw, kw))]
        index = {ab: k for k, ab in enumerate(self.phases)}
        self.windows = [(index[(i % sh, j % sw)], (i // sh) * self.wq + j // sw)
                        for i in range(kh) for j in range(kw)]
        self.tail = max(off for _, off in self.windows)
        # per phase: plane cells [r0, r1) x [q0, q1) hold input rows r0*sh + a - ph ... (step sh), likewise columns
        self.spans = []
        covered = 0
        for a, b in self.phases:
            rows = _span(a, sh, ph, self.h, self.hq)
            cols = _span(b, sw, pw, self.w, self.wq)
            self.spans.append((rows, cols))
            covered += (rows[1] - rows[0]) * (cols[1] - cols[0])
        # per phase, the non-empty cell ranges around [r0, r1) x [q0, q1) (each fill is a call, and a GIL hand-off)
        self.borders = []
        for (r0, r1, _), (q0, q1, _) in self.spans:
            ranges = [(slice(None), slice(None, r0)), (slice(None), slice(r1, None)),
                      (slice(None), slice(r0, r1), slice(None, q0)), (slice(None), slice(r0, r1), slice(q1, None))]
            sizes = [r0 * self.wq, (self.hq - r1) * self.wq, (r1 - r0) * q0, (r1 - r0) * (self.wq - q1)]
            self.borders.append([sl for sl, size in zip(ranges, sizes) if size])
        # some input pixels reach no window (kernel < stride, or rows a FLOOR output drops): their gradient is 0
        self.partial = covered != self.h * self.w

    def planes(self, x3, fill, buf):
        """``x3`` (B, H, W) -> ``buf`` (phases, B * cells + tail) of padded planes, cells outside the input ``fill``."""
        nb, (sh, sw) = x3.shape[0], self.stride
        if self.tail:
            buf[:, nb * self.cells:] = fill  # read only by unused cells: defined values keep them quiet
        for k, ((r0, r1, h0), (q0, q1, w0)) in enumerate(self.spans):
            grid = buf[k, :nb * self.cells].reshape(nb, self.hq, self.wq)
            for border in self.borders[k]:  # only the border: the interior is overwritten below
                grid[border] = fill
            grid[:, r0:r1, q0:q1] = x3[:, h0::sh, w0::sw][:, :r1 - r0, :q1 - q0]
        return buf

    def unplanes(self, buf, dx3) -> None:
        """Gradient planes ``buf`` -> ``dx3`` (B, H, W); pixels that no window reaches get 0."""
        nb, (sh, sw) = dx3.shape[0], self.stride
        if self.partial:
            dx3.fill(0)
        for k, ((r0, r1, h0), (q0, q1, w0)) in enumerate(self.spans):
            grid = buf[k, :nb * self.cells].reshape(nb, self.hq, self.wq)
            dx3[:, h0::sh, w0::sw][:, :r1 - r0, :q1 - q0] = grid[:, r0:r1, q0:q1]


def _span(phase: int, stride: int, pad: int, size: int, cells: int):
    """Plane cells [c0, c1) of ``phase`` that hold input indices, and the first such index (c0*stride + phase - pad)."""
    c0 = max(0, -((phase - pad) // stride))      # first cell whose padded index phase + stride*c is >= pad
    c1 = min(cells, (size - 1 + pad - phase) // stride + 1) if size - 1 + pad - phase >= 0 else 0
    c1 = max(c0, c1)
    return c0, c1, c0 * stride + phase - pad


def max_forward(g: PlaneGeometry, x3, y3, arg, scratch, xp) -> None:
    """MAX of one block: ``x3`` (B, H, W) -> ``y3`` (B, oh, ow) and ``arg`` (B * cells,) the window index of the
    first maximum (int8/int32) on the cell grid."""
    nb = x3.shape[0]
    n = nb * g.cells
    lowest = np.finfo(x3.dtype).min  # Caffe's starting value: padding never wins against real data
    q = g.planes(x3, lowest, scratch.get("pool_planes", (len(g.phases), n + g.tail), x3.dtype, xp))
    wins = [q[k, off:off + n] for k, off in g.windows]
    if len(wins) == 1:
        cur = wins[0]
        arg.fill(0)
    else:
        itype = arg.dtype.type
        bt = scratch.get("pool_mask", (n,), np.bool_, xp)
        st = scratch.get("pool_step", (n,), arg.dtype, xp)
        # The running max alternates between two buffers, so that "did window k raise it" compares two contiguous
        # arrays, new > old (the same as window > old, NaN included), without reading the window twice.
        bufs = (scratch.get("pool_run0", (n,), x3.dtype, xp), scratch.get("pool_run1", (n,), x3.dtype, xp))
        # the mask as 0/1 integers of the index type (an int8 view of the bools: no casting loop)
        raised = bt.view(arg.dtype) if xp is np and arg.dtype.itemsize == 1 else bt
        xp.greater(wins[1], wins[0], out=bt)  # strict: ties keep the earlier offset, as Caffe's scan
        cur = bufs[0]
        xp.maximum(wins[0], wins[1], out=cur)
        arg[...] = bt
        for k in range(2, len(wins)):
            new = bufs[(k - 1) % 2]
            xp.maximum(cur, wins[k], out=new)
            xp.greater(new, cur, out=bt)
            # arg = raised ? k : arg as max(arg, k * raised): k exceeds every earlier index (a masked copy is ~40x
            # slower on random masks)
            xp.multiply(raised, itype(k), out=st)
            xp.maximum(arg, st, out=arg)
            cur = new
    y3[...] = cur.reshape(nb, g.hq, g.wq)[:, :g.out[0], :g.out[1]]


def ave_forward(g: PlaneGeometry, x3, y3, area, scratch, xp) -> None:
    """AVE of one block: the windows summed in scan order, then divided by each output's (clipped) area."""
    nb = x3.shape[0]
    n = nb * g.cells
    q = g.planes(x3, 0, scratch.get("pool_planes", (len(g.phases), n + g.tail), x3.dtype, xp))
    total = scratch.get("pool_run0", (n,), x3.dtype, xp)
    k0, off0 = g.windows[0]
    total[...] = q[k0, off0:off0 + n]
    for k, off in g.windows[1:]:
        total += q[k, off:off + n]
    xp.divide(total.reshape(nb, g.hq, g.wq)[:, :g.out[0], :g.out[1]], area, out=y3)


def _top_grad_cells(g: PlaneGeometry, dy3, area, scratch, xp):
    """``dy3`` (B, oh, ow) (divided by ``area`` when given) on the cell grid, 0 in the cells that are not outputs."""
    nb, (oh, ow) = dy3.shape[0], g.out
    d = scratch.get("pool_dy", (nb, g.hq, g.wq), dy3.dtype, xp)
    if g.hq > oh:
        d[:, oh:] = 0
    if g.wq > ow:
        d[:, :oh, ow:] = 0
    if area is None:
        d[:, :oh, :ow] = dy3
    else:
        xp.divide(dy3, area, out=d[:, :oh, :ow])
    return d.reshape(-1)


def _scatter(g: PlaneGeometry, through, dtype, dx3, scratch, xp) -> None:
    """Gradient planes from ``through(w, out, add)``, which writes (or adds) the block's cell-grid gradient through
    window ``w`` into ``out``; windows in scan order, the first window of each plane writing instead of adding to
    zero. Then the planes are written to ``dx3`` (B, H, W)."""
    n = dx3.shape[0] * g.cells
    buf = scratch.get("pool_planes", (len(g.phases), n + g.tail), dtype, xp)
    if g.tail:  # only unused cells are added there, but uninitialised memory could overflow with a warning
        buf[:, n:] = 0
    for w, (k, off) in enumerate(g.windows):
        through(w, buf[k, off:off + n], off != 0)  # offset 0: the plane's first window in scan order
    g.unplanes(buf, dx3)


def max_backward(g: PlaneGeometry, dy3, arg, dx3, scratch, xp) -> None:
    """MAX backward of one block: each output's gradient to its first maximum (``arg`` from ``max_forward``)."""
    d = _top_grad_cells(g, dy3, None, scratch, xp)
    hit = scratch.get("pool_mask", d.shape, np.bool_, xp)
    tmp = scratch.get("pool_run0", d.shape, d.dtype, xp)

    def through(w, out, add):
        xp.equal(arg, w, out=hit)
        if add:
            xp.multiply(d, hit, out=tmp)
            out += tmp
        else:
            xp.multiply(d, hit, out=out)

    _scatter(g, through, d.dtype, dx3, scratch, xp)


def ave_backward(g: PlaneGeometry, dy3, area, dx3, scratch, xp) -> None:
    """AVE backward of one block: each output's gradient divided by its area, to every pixel of its window."""
    d = _top_grad_cells(g, dy3, area, scratch, xp)

    def through(w, out, add):
        if add:
            out += d
        else:
            out[...] = d

    _scatter(g, through, d.dtype, dx3, scratch, xp)
