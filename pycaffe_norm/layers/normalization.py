"""Normalization layers: BatchNorm, LRN, MVN (BVLC Caffe), Normalization1 and GRN (MyCaffe), Normalize /
Normalization2 (SSD-Caffe / MyCaffe).

Formulas, parameters and the differences between BVLC Caffe, MyCaffe and pcn are in docs/normalization.md.
Every layer runs in place; a statistic the backward needs and the in-place forward overwrites is cached.
"""
from __future__ import annotations

import logging
from typing import List, Tuple

import numpy as np

from .. import backend, parallel
from ..blob import Blob
from ..errors import NetError
from ..fillers import fill
from ..proto import caffe_pb2
from . import cuda_kernels
from . import per_channel as pc
from .base import TEST, Layer, register
from .im2col import shared_workspace

logger = logging.getLogger("pycaffe_norm")

_LRN = caffe_pb2.LRNParameter
_NORM1 = caffe_pb2.Normalization1Parameter

# Above this many shifted additions a window sum is done as a product with a 0/1 band matrix instead.
_MAX_SHIFTS = 16


# --------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------
def _window_sum(xp, a, size: int, axis: int):
    """Sum over a centred window of ``size`` (odd) along ``axis``, zero padded at both ends (so clipped).

    Small windows use shifted slice additions (no cancellation, unlike a cumulative sum); large windows, and
    short last axes, a matrix product with a band of ones, which BLAS sums just as exactly.
    """
    n = a.shape[axis]
    reach = min((size - 1) // 2, n - 1)
    if reach == 0:
        return a.copy()
    # Short strided slices along the last axis are slow to add; a small matrix product is not.
    if 2 * reach > _MAX_SHIFTS or (axis == a.ndim - 1 and n <= 64):
        i = xp.arange(n)
        band = (xp.abs(i[:, None] - i[None, :]) <= (size - 1) // 2).astype(a.dtype)
        moved = xp.moveaxis(a, axis, -1)
        return xp.moveaxis(xp.matmul(moved, band), -1, axis)   # band is symmetric
    out = a.copy()
    for d in range(1, reach + 1):
        hi = [slice(None)] * a.ndim
        lo = [slice(None)] * a.ndim
        hi[axis] = slice(d, None)
        lo[axis] = slice(None, n - d)
        hi, lo = tuple(hi), tuple(lo)
        out[hi] += a[lo]
        out[lo] += a[hi]
    return out


def _f(value: float) -> float:
    """A float field of the prototxt as the decimal it was written as (protobuf stores float32: 0.05 would
    otherwise become 0.05000000074505806 in float64 computations)."""
    return float(str(np.float32(value)))


def _pow_neg(xp, s, beta: float):
    """``s ** -beta``; the usual betas go through square roots, which are much faster than ``power``."""
    if beta == 0.75:
        r = xp.sqrt(s)
        r = xp.reciprocal(r, out=r)
        return xp.multiply(r, xp.sqrt(r), out=r)
    if beta == 0.5:
        r = xp.sqrt(s)
        return xp.reciprocal(r, out=r)
    if beta == 1.0:
        return xp.reciprocal(s)
    return xp.power(s, s.dtype.type(-beta))


def _safe_reciprocal(xp, norm):
    """1/norm, and 0 where norm is 0: an all-zero group normalises to 0 with zero gradient."""
    nz = norm != 0
    return xp.where(nz, 1.0 / xp.where(nz, norm, 1), 0).astype(norm.dtype)


def _as_ncs(layer: Layer, blob: Blob, min_axes: int = 2) -> Tuple[int, int, int]:
    """(N, C, S) with S the product of the axes after the channel axis."""
    if blob.num_axes < min_axes:
        raise layer.shape_error("bottom[0]", blob.shape, ("N", "C", "...")[:max(min_axes, 2)] + ("...",))
    n = blob.shape[0]
    c = blob.shape[1] if blob.num_axes > 1 else 1
    return n, c, blob.count_range(2) if blob.num_axes > 2 else 1


# --------------------------------------------------------------------------------------------------------
# BatchNorm
# --------------------------------------------------------------------------------------------------------
# BatchNorm splits its channels over the thread pool from this many elements on (tests lower it).
SPLIT_ELEMENTS = 1 << 20


@register("BatchNorm")
class BatchNormLayer(Layer):
    """Caffe's BatchNorm: per-channel (axis 1) normalisation over N and all spatial axes.

    blobs[0..2] hold the decayed *sums* of the batch mean, of the unbiased batch variance and of the weights
    (S); the global statistics are blob/S. blobs[3], blobs[4] (MyCaffe ``scale_bias``) are a learned per-channel
    scale and bias applied after normalising.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def fixed_param_indices(self) -> List[int]:
        """Parameter blobs the solver must never update (the Net forces their lr_mult to 0)."""
        return [0, 1, 2] + ([len(self.blobs) - 1] if getattr(self, "renorm", False) else [])

    def setup(self, bottom: List[Blob], top: List[Blob]) -> None:
        p = self.layer_param.batch_norm_param
        self.maf = _f(p.moving_average_fraction)
        self.sync_stats = bool(p.sync_stats) and self.phase != TEST   # only rank 0 runs test nets
        self.eps = _f(p.eps)
        explicit = p.HasField("use_global_stats")
        self.use_global_stats = bool(p.use_global_stats) if explicit else self.phase == TEST
        if bottom[0].num_axes < 1:
            raise self.shape_error("bottom[0]", bottom[0].shape, ("N", "C", "..."))
        self.channels = 1 if bottom[0].num_axes == 1 else bottom[0].shape[1]
        # MyCaffe also switches scale_bias on when either filler is given.
        self.scale_bias = bool(p.scale_bias or p.HasField("scale_filler") or p.HasField("bias_filler"))
        dtype, xp, c = bottom[0].dtype, bottom[0].xp, self.channels
        if not self.blobs:
            self.blobs = [Blob((c,), dtype=dtype, xp=xp), Blob((c,), dtype=dtype, xp=xp),
                          Blob((1,), dtype=dtype, xp=xp)]       # Blob() starts at zero, S included
        if self.scale_bias and len(self.blobs) == 3:
            scale, bias = Blob((c,), dtype=dtype, xp=xp), Blob((c,), dtype=dtype, xp=xp)
            if p.HasField("scale_filler"):
                fill(scale, p.scale_filler)
            else:
                scale.data[...] = 1
            fill(bias, p.bias_filler)       # an unset filler is constant 0
            self.blobs += [scale, bias]
        # Batch Renormalization (pcn extension): its iteration counter is one more blob, after all others.
        self.renorm = bool(p.renorm)
        self.renorm_schedule = (_f(p.r_max), _f(p.d_max), p.renorm_ramp_start, p.r_max_ramp_end, p.d_max_ramp_end)
        if self.renorm and len(self.blobs) == 3 + 2 * self.scale_bias:
            self.blobs.append(Blob((1,), dtype=dtype, xp=xp))
        expected = [(c,), (c,), (1,)] + ([(c,), (c,)] if self.scale_bias else []) + [(1,)] * self.renorm
        got = [tuple(b.shape) for b in self.blobs]
        # S is read from element 0 of blobs[2], as Caffe does; MyCaffe stores it with shape (C,).
        if len(got) != len(expected) or self.blobs[2].count < 1 or \
                any(_prod(g) != _prod(e) for i, (g, e) in enumerate(zip(got, expected)) if i != 2):
            raise NetError("layer %r (BatchNorm): parameter blobs have shapes %s, expected %s"
                           % (self.name, got, expected))
        self.param_propagate_down = [False, False, False] + [True] * (2 * self.scale_bias) + [False] * self.renorm
        # A prototxt lr_mult != 0 on blobs 0..2 is overridden (with a warning) by the Net through
        # fixed_param_indices(), as MyCaffe does; BVLC Caffe refuses such a prototxt.
        logger.info("layer %r (BatchNorm): normalising with %s (%s)", self.name,
                    "global statistics (blobs / S)" if self.use_global_stats else
                    "batch statistics, updating the running sums",
                    ("use_global_stats: %s" % str(self.use_global_stats).lower()) if explicit else
                    "use_global_stats unset, %s phase" % ("TEST" if self.phase == TEST else "TRAIN"))

    def reshape(self, bottom: List[Blob], top: List[Blob]) -> None:
        shape = bottom[0].shape
        c = 1 if len(shape) == 1 else shape[1]
        if c != self.channels:
            expected = (shape[0], self.channels) + tuple(shape[2:])
            raise self.shape_error("bottom[0] (channel axis 1 fixed at setup)", shape, expected)
        if top[0] is not bottom[0]:
            top[0].reshape(shape)

    def _by_channels(self, xp, x3) -> bool:
        """Whether a pass can split the channels over the thread pool in one go: NumPy arrays, and no step that
        needs every channel's statistics in between (an allreduce of sync_stats, Batch Renormalization's r, d)."""
        from .. import distributed

        syncing = self.sync_stats and distributed.communicator() is not None
        # measured on 2 cores: the split pays from about 1M elements (16x96x27x27: 1.45x), below that the
        # strided channel slices cost more than the second core saves (100x32x8x8: 0.6x)
        return (xp is np and not syncing and not self.renorm and parallel.num_threads() > 1
                and x3.size >= SPLIT_ELEMENTS)

    def _output(self, xp, xn, y, inv_std, rd, c0: int, c1: int) -> None:
        """Channels [c0, c1): x_norm *= inv_std, then top = x_norm (* r + d) (* scale + bias)."""
        s = xn.shape[2]
        xn, y = pc.rows(xn), pc.rows(y)
        row = xn.shape[1]
        xn *= pc.channel_row(xp, inv_std, s, row)
        src = xn
        if rd is not None:            # Batch Renormalization: x_norm * r + d
            xp.multiply(xn, pc.channel_row(xp, rd[0][c0:c1], s, row), out=y)
            y += pc.channel_row(xp, rd[1][c0:c1], s, row)
            src = y
        if self.scale_bias:
            xp.multiply(src, pc.channel_row(xp, self.blobs[3].data[c0:c1], s, row), out=y)
            y += pc.channel_row(xp, self.blobs[4].data[c0:c1], s, row)
        elif src is xn:
            y[...] = xn

    def forward(self, bottom: List[Blob], top: List[Blob]) -> None:
        xp = bottom[0].xp
        x = bottom[0].data
        x3 = x.reshape(x.shape[0], self.channels, -1)
        dt = x.dtype.type
        m = x3.shape[0] * x3.shape[2]
        self._rd = None
        # x_norm is kept for backward: a later in-place layer may overwrite top (Caffe caches it too)
        xn = _buffer(self, "xnorm", xp, x3.shape, x.dtype)
        y = top[0].data.reshape(x3.shape)
        if not self.use_global_stats and self._by_channels(xp, x3):
            # every channel's statistics and output in one pass over its own slice, channels split over the pool
            mean, var, inv = (xp.empty(self.channels, dtype=x.dtype) for _ in range(3))

            def channels(c0: int, c1: int) -> None:
                xs, ns = x3[:, c0:c1], xn[:, c0:c1]
                mean[c0:c1] = pc.channel_sum(xp, xs) / dt(m)
                xf = pc.rows(xs)
                xp.subtract(xf, pc.channel_row(xp, mean[c0:c1], xs.shape[2], xf.shape[1]), out=pc.rows(ns))
                var[c0:c1] = pc.channel_dot(xp, ns, ns) / dt(m)
                inv[c0:c1] = (1 / xp.sqrt(var[c0:c1] + dt(self.eps))).astype(x.dtype)
                self._output(xp, ns, y[:, c0:c1], inv[c0:c1], None, c0, c1)

            parallel.over_batch(self.channels, channels, x.size, True)
            self._m, self._inv_std = m, inv
            self._update_running(mean, var, m)
            return
        if self.use_global_stats:
            s = self.blobs[2].data.reshape(-1)[:1]      # 1/S, or 0 when S is 0, on the device: no host sync
            factor = xp.where(s == 0, dt(0), dt(1) / xp.where(s == 0, dt(1), s))
            mean = self.blobs[0].data * factor
            var = self.blobs[1].data * factor
        else:
            total, m = _sync_sums(self, xp, pc.channel_sum(xp, x3), m=m)     # sync_stats: over all ranks' batches
            mean = total / dt(m)
        self._m = m
        xf = pc.rows(x3)
        xp.subtract(xf, pc.channel_row(xp, mean, x3.shape[2], xf.shape[1]), out=pc.rows(xn))
        if not self.use_global_stats:
            var = _sync_sums(self, xp, pc.channel_dot(xp, xn, xn))[0] / dt(m)
            if self.renorm:     # r and d come from the running statistics before this batch's update
                self._rd = _renorm_rd(self, xp, mean, var)
            self._update_running(mean, var, m)
        self._inv_std = (1 / xp.sqrt(var + dt(self.eps))).astype(x.dtype)
        self._output(xp, xn, y, self._inv_std, self._rd, 0, self.channels)

    def _update_running(self, mean, var, m: int) -> None:
        # Caffe keeps decayed sums; the variance is stored unbiased, m/(m-1).
        dt = mean.dtype.type
        maf = dt(self.maf)
        for blob, stat in ((self.blobs[0], mean), (self.blobs[1], var * dt(m / (m - 1) if m > 1 else 1))):
            blob.data[...] *= maf
            blob.data[...] += stat
        self.blobs[2].data[...] *= maf
        self.blobs[2].data[...] += 1

    def backward(self, top: List[Blob], propagate_down: List[bool], bottom: List[Blob]) -> None:
        xp = bottom[0].xp
        xn = self._buffers["xnorm"]
        dy = top[0].diff.reshape(xn.shape)
        dx = bottom[0].diff.reshape(xn.shape)
        need_sums = not self.use_global_stats or self.scale_bias
        # The scale of scale_bias only multiplies the top diff: fold it into the per-channel factor.
        coef = self._inv_std * self.blobs[3].data if self.scale_bias else self._inv_std
        if self._rd is not None:            # r is a constant in backward (Ioffe 2017)
            coef = coef * self._rd[0]
        dt = xn.dtype.type
        m = dt(self._m)
        if self._by_channels(xp, xn):
            sum_dy, sum_dyx = (xp.empty(self.channels, dtype=xn.dtype) for _ in range(2))
            prop = propagate_down[0]

            def channels(c0: int, c1: int) -> None:
                ds, ns = dy[:, c0:c1], xn[:, c0:c1]
                if need_sums:
                    sum_dy[c0:c1], sum_dyx[c0:c1] = pc.channel_sum(xp, ds), pc.channel_dot(xp, ds, ns)
                if prop:
                    self._input_diff(xp, ds, ns, dx[:, c0:c1], coef[c0:c1],
                                     None if self.use_global_stats else (sum_dy[c0:c1], sum_dyx[c0:c1]), m)

            parallel.over_batch(self.channels, channels, xn.size, True)
            if need_sums:
                self._param_diffs((sum_dy, sum_dyx))
            return
        sums = (pc.channel_sum(xp, dy), pc.channel_dot(xp, dy, xn)) if need_sums else None   # sum(dy), sum(dy * x_norm)
        self._param_diffs(sums)
        if not propagate_down[0]:
            return
        if self.sync_stats and not self.use_global_stats:
            # the gradient of statistics over all ranks' batches needs the sums over all ranks
            sums = _sync_sums(self, xp, *sums)
        self._input_diff(xp, dy, xn, dx, coef, None if self.use_global_stats else sums[:2], m)

    def _param_diffs(self, sums) -> None:
        """scale_bias's diffs from sum(dy) and sum(dy * x_norm) (sum(dy * (x_norm * r + d)) with renorm)."""
        if not self.scale_bias:
            return
        if self.param_propagate_down[3]:
            self.blobs[3].diff[...] += sums[1] if self._rd is None else sums[1] * self._rd[0] + sums[0] * self._rd[1]
        if self.param_propagate_down[4]:
            self.blobs[4].diff[...] += sums[0]

    def _input_diff(self, xp, dy, xn, dx, coef, sums, m) -> None:
        """dx = dy * coef with global statistics; else (dy - mean(dy) - mean(dy * x_norm) * x_norm) * coef, means
        over N and the spatial axes (``sums``: their per-channel sums)."""
        s = xn.shape[2]
        dy, xn, dx = pc.rows(dy), pc.rows(xn), pc.rows(dx)
        row = xn.shape[1]
        if sums is None:
            xp.multiply(dy, pc.channel_row(xp, coef, s, row), out=dx)
            return
        tmp = shared_workspace().get("batch_norm_tmp", xn.shape, xn.dtype, xp)
        xp.multiply(xn, pc.channel_row(xp, sums[1] / m, s, row), out=tmp)
        xp.subtract(dy, pc.channel_row(xp, sums[0] / m, s, row), out=dx)     # dx may be dy (in place): read first
        dx -= tmp
        dx *= pc.channel_row(xp, coef, s, row)


def renorm_limits(schedule, iteration: float) -> Tuple[float, float]:
    """Batch Renormalization's (r_max, d_max) at ``iteration``: 1 and 0 until renorm_ramp_start, then linear
    ramps reaching r_max at r_max_ramp_end and d_max at d_max_ramp_end (at once when an end is <= the start)."""
    r_max, d_max, start, r_end, d_end = schedule

    def ramp(end):
        if end <= start:
            return 1.0 if iteration >= start else 0.0
        return min(max((iteration - start) / float(end - start), 0.0), 1.0)

    return 1.0 + (r_max - 1.0) * ramp(r_end), d_max * ramp(d_end)


def _renorm_rd(layer: Layer, xp, mean, var):
    """Batch Renormalization's per-channel r and d from the batch and the running statistics (blobs / S), and
    one step of the iteration counter (the last blob). Before any statistics exist (S == 0), r = 1 and d = 0."""
    counter = layer.blobs[-1].data
    r_max, d_max = renorm_limits(layer.renorm_schedule, float(counter.reshape(-1)[0]))
    counter += 1
    dt = mean.dtype.type
    s = float(layer.blobs[2].data.reshape(-1)[0])
    if s == 0:
        return xp.ones_like(mean), xp.zeros_like(mean)
    sigma_run = xp.sqrt(layer.blobs[1].data / dt(s) + dt(layer.eps))
    r = xp.clip(xp.sqrt(var + dt(layer.eps)) / sigma_run, dt(1 / r_max), dt(r_max))
    d = xp.clip((mean - layer.blobs[0].data / dt(s)) / sigma_run, dt(-d_max), dt(d_max))
    return r.astype(mean.dtype), d.astype(mean.dtype)


def _sync_sums(layer: Layer, xp, *sums, m: int = 0):
    """``sums`` (per-channel arrays) and ``m`` summed over the data-parallel ranks when the layer has sync_stats and
    several ranks train together (one allreduce, in float64); else returned as they are. Returns (*sums, m)."""
    from .. import distributed

    comm = distributed.communicator()
    if not layer.sync_stats or comm is None or comm.size == 1:
        return sums + (m,)
    host = np.concatenate([backend.to_numpy(a).astype(np.float64).ravel() for a in sums] + [np.array([float(m)])])
    comm.allreduce_sum(host)
    out, o = [], 0
    for a in sums:
        out.append(xp.asarray(host[o:o + a.size].reshape(a.shape).astype(a.dtype)))
        o += a.size
    return tuple(out) + (int(round(host[-1])),)


def _buffer(layer: Layer, name: str, xp, shape, dtype):
    """A scratch array kept between calls (allocating large arrays every iteration costs page faults)."""
    bufs = layer.__dict__.setdefault("_buffers", {})
    buf = bufs.get(name)
    if buf is None or buf.shape != tuple(shape) or buf.dtype != dtype or backend.array_module(buf) is not xp:
        buf = bufs[name] = xp.empty(shape, dtype=dtype)
    return buf


def _prod(shape) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


# --------------------------------------------------------------------------------------------------------
# LRN
# --------------------------------------------------------------------------------------------------------
@register("LRN")
class LRNLayer(Layer):
    """Local response normalisation, ACROSS_CHANNELS or WITHIN_CHANNEL, with Caffe's values and gradients."""

    backward_reads_top = True

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom: List[Blob], top: List[Blob]) -> None:
        p = self.layer_param.lrn_param
        self.size = int(p.local_size)
        if self.size % 2 != 1:
            raise NetError("layer %r (LRN): local_size must be odd (the window is centred), got %d"
                           % (self.name, self.size))
        self.alpha, self.beta, self.k = _f(p.alpha), _f(p.beta), _f(p.k)
        self.within = p.norm_region == _LRN.WITHIN_CHANNEL
        if p.norm_region not in (_LRN.ACROSS_CHANNELS, _LRN.WITHIN_CHANNEL):
            raise NetError("layer %r (LRN): unknown norm_region %d" % (self.name, p.norm_region))

    def reshape(self, bottom: List[Blob], top: List[Blob]) -> None:
        shape = bottom[0].shape
        if self.within and len(shape) != 4:
            raise self.shape_error("bottom[0] (WITHIN_CHANNEL needs N, C, H, W)", shape, ("N", "C", "H", "W"))
        if len(shape) < 2:
            raise self.shape_error("bottom[0]", shape, ("N", "C", "..."))
        if top[0] is not bottom[0]:
            top[0].reshape(shape)

    def _window(self, xp, a):
        if self.within:
            return _window_sum(xp, _window_sum(xp, a, self.size, 2), self.size, 3)
        return _window_sum(xp, a, self.size, 1)

    def forward(self, bottom: List[Blob], top: List[Blob]) -> None:
        xp = bottom[0].xp
        if cuda_kernels.enabled(xp):  # window sums and output in two launches
            return cuda_kernels.lrn_forward(self, bottom, top)
        x = bottom[0].data
        if not self.within:
            x = x.reshape(x.shape[0], x.shape[1], -1)
        dt = x.dtype.type
        self._x_saved = x.copy() if top[0] is bottom[0] else None
        y = top[0].data.reshape(x.shape)
        self._scale, self._pw = xp.empty_like(x), xp.empty_like(x)
        if self.within:
            # Caffe builds this from AVE pooling (divisor size^2 everywhere) and Power(shift 1): k is unused.
            mult, shift = dt(self.alpha / (self.size * self.size)), dt(1)
        else:
            mult, shift = dt(self.alpha / self.size), dt(self.k)
        src = self._x_saved if self._x_saved is not None else x

        def images(a: int, b: int) -> None:  # samples are independent: chunks of the batch run on the pool
            xs = src[a:b]
            scale = self._window(xp, xs * xs)
            scale *= mult
            scale += shift
            self._scale[a:b] = scale
            self._pw[a:b] = _pow_neg(xp, scale, self.beta)
            xp.multiply(xs, self._pw[a:b], out=y[a:b])

        parallel.over_batch(x.shape[0], images, x.size, xp is np)

    def backward(self, top: List[Blob], propagate_down: List[bool], bottom: List[Blob]) -> None:
        if not propagate_down[0]:
            return
        xp = bottom[0].xp
        if cuda_kernels.enabled(xp):
            return cuda_kernels.lrn_backward(self, top, bottom)
        shape = self._scale.shape
        x = self._x_saved if self._x_saved is not None else bottom[0].data.reshape(shape)
        dy = top[0].diff.reshape(shape)
        y = top[0].data.reshape(shape)       # Caffe reads the top data here
        dx = bottom[0].diff.reshape(shape)
        dt = x.dtype.type
        n = self.size * self.size if self.within else self.size
        coeff = dt(2.0 * self.alpha * self.beta / n)

        def images(a: int, b: int) -> None:
            ratio = dy[a:b] * y[a:b]
            ratio /= self._scale[a:b]
            acc = self._window(xp, ratio)
            acc *= x[a:b]
            acc *= coeff
            d = dy[a:b] * self._pw[a:b]
            d -= acc
            dx[a:b] = d                          # dx may be dy (in place): this chunk's dy is read above

        parallel.over_batch(shape[0], images, dx.size, xp is np)


# --------------------------------------------------------------------------------------------------------
# MVN
# --------------------------------------------------------------------------------------------------------
@register("MVN")
class MVNLayer(Layer):
    """Mean (and variance) normalisation per (n, c) over the remaining axes, or per n (across_channels)."""

    backward_reads_top = True

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom: List[Blob], top: List[Blob]) -> None:
        p = self.layer_param.mvn_param
        self.normalize_variance = bool(p.normalize_variance)
        self.across_channels = bool(p.across_channels)
        self.eps = _f(p.eps)

    def reshape(self, bottom: List[Blob], top: List[Blob]) -> None:
        if bottom[0].num_axes < 1:
            raise self.shape_error("bottom[0]", bottom[0].shape, ("N", "..."))
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def _groups(self, blob: Blob) -> int:
        shape = blob.shape
        if self.across_channels or len(shape) < 2:
            return shape[0]
        return shape[0] * shape[1]

    def forward(self, bottom: List[Blob], top: List[Blob]) -> None:
        xp = bottom[0].xp
        x = bottom[0].data.reshape(self._groups(bottom[0]), -1)
        dt = x.dtype.type
        y = top[0].data.reshape(x.shape)
        xp.subtract(x, (_row_sum(xp, x) / dt(x.shape[1]))[:, None], out=y)    # y may be x (in place)
        if self.normalize_variance:
            var = _row_dot(xp, y, y) / dt(x.shape[1])
            # eps is added to the standard deviation, outside the square root
            self._div = (xp.sqrt(var) + dt(self.eps))[:, None]
            y /= self._div

    def backward(self, top: List[Blob], propagate_down: List[bool], bottom: List[Blob]) -> None:
        if not propagate_down[0]:
            return
        xp = bottom[0].xp
        g = self._groups(bottom[0])
        dy = top[0].diff.reshape(g, -1)
        dx = bottom[0].diff.reshape(g, -1)
        dt = dy.dtype.type
        d = dt(dy.shape[1])
        mean_dy = (_row_sum(xp, dy) / d)[:, None]
        if self.normalize_variance:
            # Caffe's formula: (dy - mean(dy) - mean(dy*y)*y) / (std + eps); it treats eps as constant.
            y = top[0].data.reshape(g, -1)
            tmp = _buffer(self, "tmp", xp, y.shape, y.dtype)
            xp.multiply(y, (_row_dot(xp, dy, y) / d)[:, None], out=tmp)
            xp.subtract(dy, mean_dy, out=dx)        # dx may be dy (in place): dy is read before
            dx -= tmp
            dx /= self._div
        else:
            xp.subtract(dy, mean_dy, out=dx)


def _row_sum(xp, a):
    """Row sums of a 2-D array, by BLAS dot products. One large gemv would be split over OpenBLAS threads, whose
    wake-ups cost milliseconds whenever another process holds a core; many small products stay on one."""
    return xp.matmul(a[:, None, :], xp.ones((a.shape[1], 1), dtype=a.dtype))[:, 0, 0]


def _row_dot(xp, a, b):
    """Row-wise dot products of two 2-D arrays, by BLAS."""
    return xp.matmul(a[:, None, :], b[:, :, None])[:, 0, 0]


# --------------------------------------------------------------------------------------------------------
# Normalization1 (MyCaffe)
# --------------------------------------------------------------------------------------------------------
@register("Normalization1")
class Normalization1Layer(Layer):
    """Per-sample normalisation over all non-batch axes: L2 ``x/||x||_2`` (default) or L1 ``x/sum|x|``."""

    backward_reads_top = True

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom: List[Blob], top: List[Blob]) -> None:
        norm = self.layer_param.normalization_param.norm
        if norm not in (_NORM1.L1, _NORM1.L2):
            raise NetError("layer %r (Normalization1): unknown norm %d" % (self.name, norm))
        self.l1 = norm == _NORM1.L1

    def reshape(self, bottom: List[Blob], top: List[Blob]) -> None:
        if bottom[0].num_axes < 1:
            raise self.shape_error("bottom[0]", bottom[0].shape, ("N", "..."))
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def forward(self, bottom: List[Blob], top: List[Blob]) -> None:
        xp = bottom[0].xp
        x = bottom[0].data.reshape(bottom[0].shape[0], -1)
        if cuda_kernels.enabled(xp):  # one block per sample
            norm = (cuda_kernels.row_dot(x, absolute=True) if self.l1 else xp.sqrt(cuda_kernels.row_dot(x, x)))[:, None]
        elif self.l1:
            norm = xp.abs(x).sum(axis=1, keepdims=True)
        else:
            norm = xp.sqrt(xp.einsum("nd,nd->n", x, x))[:, None]
        self._inv = _safe_reciprocal(xp, norm)
        xp.multiply(x, self._inv, out=top[0].data.reshape(x.shape))

    def backward(self, top: List[Blob], propagate_down: List[bool], bottom: List[Blob]) -> None:
        if not propagate_down[0]:
            return
        xp = bottom[0].xp
        n = bottom[0].shape[0]
        dy = top[0].diff.reshape(n, -1)
        y = top[0].data.reshape(n, -1)
        dot = (cuda_kernels.row_dot(dy, y) if cuda_kernels.enabled(xp) else xp.einsum("nd,nd->n", dy, y))[:, None]
        # L2: (dy - y*sum(dy*y))/||x||;  L1: (dy - sign(x)*sum(dy*y))/sum|x|  (sign(x) = sign(y))
        dx = dy - (xp.sign(y) if self.l1 else y) * dot
        dx *= self._inv
        bottom[0].diff[...] = dx.reshape(bottom[0].shape)


# --------------------------------------------------------------------------------------------------------
# GRN (MyCaffe's global response normalisation)
# --------------------------------------------------------------------------------------------------------
@register("GRN", "GlobResNorm", "globresnet")
class GRNLayer(Layer):
    """At every (n, spatial position): ``y = x / sqrt(sum over channels of x^2)``; no parameters."""

    backward_reads_top = True

    exact_num_bottom = 1
    exact_num_top = 1

    def __init__(self, param: caffe_pb2.LayerParameter, phase: int = caffe_pb2.TRAIN):
        super().__init__(param, phase)
        if param.HasField("grn_param"):
            raise NetError("layer %r (%s): a layer with grn_param is MyCaffe's Temporal Fusion Transformer "
                           "'Gated Residual Network', not Global Response Normalization; pcn does not support "
                           "it (for the L2 normalisation across channels, drop grn_param or use type "
                           "\"GlobResNorm\")" % (param.name, param.type))

    def reshape(self, bottom: List[Blob], top: List[Blob]) -> None:
        _as_ncs(self, bottom[0])
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def forward(self, bottom: List[Blob], top: List[Blob]) -> None:
        xp = bottom[0].xp
        if cuda_kernels.enabled(xp):  # one launch: each thread normalises one (n, s) column
            return cuda_kernels.l2norm_forward(self, bottom, top, 0.0, safe=True)
        x = bottom[0].data.reshape(_as_ncs(self, bottom[0]))
        norm = xp.sqrt(xp.einsum("ncs,ncs->ns", x, x))[:, None, :]
        self._inv = _safe_reciprocal(xp, norm)
        xp.multiply(x, self._inv, out=top[0].data.reshape(x.shape))

    def backward(self, top: List[Blob], propagate_down: List[bool], bottom: List[Blob]) -> None:
        if not propagate_down[0]:
            return
        xp = bottom[0].xp
        if cuda_kernels.enabled(xp):
            return cuda_kernels.l2norm_backward(self, top, bottom, safe=True)
        shape = _as_ncs(self, bottom[0])
        dy = top[0].diff.reshape(shape)
        y = top[0].data.reshape(shape)
        dx = dy - y * xp.einsum("ncs,ncs->ns", dy, y)[:, None, :]
        dx *= self._inv
        bottom[0].diff[...] = dx.reshape(bottom[0].shape)


# --------------------------------------------------------------------------------------------------------
# Normalize (SSD-Caffe) / Normalization2 (MyCaffe)
# --------------------------------------------------------------------------------------------------------
@register("Normalize", "Normalization2")
class NormalizeLayer(Layer):
    """``y = scale * x / sqrt(sum x^2 + eps)``: the sum over C*spatial per sample (across_spatial) or over C at
    every position; ``scale`` is one learned scalar (channel_shared, blob shape ()) or one per channel (C,)."""

    exact_num_bottom = 1
    exact_num_top = 1

    def _param(self) -> caffe_pb2.NormalizeParameter:
        lp = self.layer_param
        own, other = ("normalization2_param", "norm_param") if lp.type == "Normalization2" else \
            ("norm_param", "normalization2_param")
        if not lp.HasField(own) and lp.HasField(other):
            return getattr(lp, other)
        return getattr(lp, own)

    def setup(self, bottom: List[Blob], top: List[Blob]) -> None:
        p = self._param()
        self.across_spatial = bool(p.across_spatial)
        self.channel_shared = bool(p.channel_shared)
        self.eps = _f(p.eps)
        if p.HasField("esp"):        # MyCaffe's spelling
            if p.HasField("eps") and p.eps != p.esp:
                raise NetError("layer %r (%s): eps %g and its alias esp %g disagree"
                               % (self.name, self.type, p.eps, p.esp))
            self.eps = _f(p.esp)
        n, c, s = _as_ncs(self, bottom[0])
        shape = () if self.channel_shared else (c,)
        if not self.blobs:
            blob = Blob(shape, dtype=bottom[0].dtype, xp=bottom[0].xp)
            if p.HasField("scale_filler"):
                fill(blob, p.scale_filler)
            else:
                blob.data[...] = 1
            self.blobs.append(blob)
        if len(self.blobs) != 1 or self.blobs[0].count != _prod(shape):
            raise NetError("layer %r (%s): scale blob(s) %s do not fit channel_shared %s with %d channels"
                           % (self.name, self.type, [b.shape for b in self.blobs], self.channel_shared, c))
        self.param_propagate_down = [True]

    def reshape(self, bottom: List[Blob], top: List[Blob]) -> None:
        n, c, s = _as_ncs(self, bottom[0])
        if not self.channel_shared and c != self.blobs[0].count:
            raise self.shape_error("bottom[0] (channels fixed by the scale blob)", bottom[0].shape,
                                   (n, self.blobs[0].count) + tuple(bottom[0].shape[2:]))
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def _scale3(self):
        s = self.blobs[0].data
        return s.reshape(1, 1, 1) if self.channel_shared else s.reshape(1, -1, 1)

    def _group_sum(self, xp, a, b):
        if self.across_spatial:
            return xp.einsum("ncs,ncs->n", a, b)[:, None, None]
        return xp.einsum("ncs,ncs->ns", a, b)[:, None, :]

    def forward(self, bottom: List[Blob], top: List[Blob]) -> None:
        xp = bottom[0].xp
        if cuda_kernels.enabled(xp) and not self.across_spatial:
            return cuda_kernels.l2norm_forward(self, bottom, top, self.eps, safe=False, scale=self._scale3())
        x = bottom[0].data.reshape(_as_ncs(self, bottom[0]))
        norm = xp.sqrt(self._group_sum(xp, x, x) + x.dtype.type(self.eps))
        self._norm = norm
        self._xhat = x / norm
        xp.multiply(self._xhat, self._scale3(), out=top[0].data.reshape(x.shape))

    def backward(self, top: List[Blob], propagate_down: List[bool], bottom: List[Blob]) -> None:
        xp = bottom[0].xp
        xh = self._xhat
        dy = top[0].diff.reshape(xh.shape)
        if self.param_propagate_down[0]:
            if self.channel_shared:
                g = xp.einsum("ncs,ncs->", dy, xh)
            else:
                g = xp.einsum("ncs,ncs->c", dy, xh)
            self.blobs[0].diff[...] += g.reshape(self.blobs[0].shape)
        if propagate_down[0]:
            if cuda_kernels.enabled(xp) and not self.across_spatial:
                return cuda_kernels.l2norm_backward(self, top, bottom, safe=False, scale=self.blobs[0].data,
                                                    channel_shared=self.channel_shared)
            # The exact derivative: with g = dy*scale, dx = (g - xhat*sum(g*xhat)) / norm.
            g = dy * self._scale3()
            dx = g - xh * self._group_sum(xp, g, xh)
            dx /= self._norm
            bottom[0].diff[...] = dx.reshape(bottom[0].shape)
