"""MyCaffe's UnPooling layer: the inverse of MAX pooling (with or without a Pooling mask) and of AVE pooling.

Follows MyCaffe.layers.beta.UnPoolingLayer and its CUDA kernels (unpooling_fwd/bwd): MAX puts each value at the
position its Pooling mask names, or without a mask at the top-left corner of its pooling window; AVE spreads each
value evenly over its window (the transpose of average pooling, windows clipped as Caffe's AVE pooling clips
them). The default output size is max((H - 1) * stride + kernel - 2 * pad, H * stride - pad + 1), MyCaffe's rule
(after H. Noh's unpooling layer); ``unpool_size`` or ``unpool_h``/``unpool_w`` override it.
"""
from __future__ import annotations

import numpy as np

from ..errors import NetError
from ..proto import caffe_pb2
from .base import Layer, register

_PP = caffe_pb2.PoolingParameter


def _pair(p, repeated: str, h: str, w: str, default):
    """(h, w) from a repeated field's first value or the _h/_w pair (MyCaffe's KernelParameter rule)."""
    values = list(getattr(p, repeated))
    if values:
        return int(values[0]), int(values[0])
    return (int(getattr(p, h)) if p.HasField(h) else default, int(getattr(p, w)) if p.HasField(w) else default)


@register("UnPooling")
class UnPoolingLayer(Layer):
    """MAX: bottom 0 the pooled values, optional bottom 1 the Pooling layer's mask top; AVE: one bottom."""

    min_bottom = 1
    max_bottom = 2
    exact_num_top = 1
    allow_in_place = False

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index == 0

    def setup(self, bottom, top):
        p = self.layer_param.unpooling_param
        self.method = p.pool
        if self.method not in (_PP.MAX, _PP.AVE):
            raise self._error("pool %s is not supported (MAX or AVE)" % _PP.PoolMethod.Name(self.method))
        if self.method != _PP.MAX and len(bottom) > 1:
            raise self._error("only MAX unpooling takes a mask bottom")
        has_size = bool(p.kernel_size) or p.HasField("kernel_h") or p.HasField("kernel_w")
        self.global_pooling = bool(p.global_pooling)
        if self.global_pooling:
            if has_size:
                raise self._error("with global_pooling the kernel size cannot be given")
        elif bool(p.kernel_size) == (p.HasField("kernel_h") and p.HasField("kernel_w")):
            raise self._error("give kernel_size, or both kernel_h and kernel_w (not both forms)")
        self.kernel = (0, 0) if self.global_pooling else _pair(p, "kernel_size", "kernel_h", "kernel_w", 0)
        self.pad = _pair(p, "pad", "pad_h", "pad_w", 0)
        self.stride = _pair(p, "stride", "stride_h", "stride_w", 1)
        self.unpool = _pair(p, "unpool_size", "unpool_h", "unpool_w", -1)
        if self.global_pooling and (self.pad != (0, 0) or self.stride != (1, 1)):
            raise self._error("with global_pooling only pad 0 and stride 1 are allowed")
        if not self.global_pooling and min(self.kernel) <= 0:
            raise self._error("kernel dimensions must be > 0, got %s" % (self.kernel,))
        if min(self.stride) <= 0:
            raise self._error("stride must be > 0, got %s" % (self.stride,))
        if self.pad != (0, 0):
            if self.method != _PP.MAX:
                raise self._error("padding is implemented for MAX unpooling only")
            if self.pad[0] >= self.kernel[0] or self.pad[1] >= self.kernel[1]:
                raise self._error("pad %s must be smaller than the kernel %s" % (self.pad, self.kernel))

    def _error(self, what: str) -> NetError:
        return NetError("layer %r (UnPooling): %s" % (self.name, what))

    def reshape(self, bottom, top):
        x = bottom[0]
        if x.num_axes != 4:
            raise self.shape_error("bottom 0 (must have 4 axes: num, channels, height, width)", x.shape,
                                   ("N", "C", "H", "W"))
        n, c, h, w = x.shape
        if self.global_pooling:
            self.kernel = (h, w)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.pad
        uh = self.unpool[0] if self.unpool[0] >= 0 else max((h - 1) * sh + kh - 2 * ph, h * sh - ph + 1)
        uw = self.unpool[1] if self.unpool[1] >= 0 else max((w - 1) * sw + kw - 2 * pw, w * sw - pw + 1)
        self.out_hw = (max(uh, 1), max(uw, 1))
        if len(bottom) > 1 and bottom[1].count != x.count:
            raise self.shape_error("bottom 1 (the Pooling mask, one index per pooled value)", bottom[1].shape,
                                   x.shape)
        top[0].reshape((n, c) + self.out_hw)
        self._corner_winners = None

    # --- MAX ---------------------------------------------------------------------------------------------------
    def _max_targets(self, bottom):
        """(flat top index of each bottom element, indices of the bottom elements that land there).

        Where several values land on one position the last in memory order wins, as in MyCaffe's CPU unpooling;
        only the winners receive a gradient, so backward is the exact derivative of forward.
        """
        xp = bottom[0].xp
        n, c, h, w = bottom[0].shape
        uh, uw = self.out_hw
        planes = xp.arange(n * c, dtype=np.int64)[:, None] * (uh * uw)
        if len(bottom) > 1:
            local = bottom[1].data.reshape(n * c, h * w).astype(np.int64)
            bad = (local < 0) | (local >= uh * uw)
            if bool(bad.any()):
                raise self._error("mask value %d is outside the %dx%d unpooled plane"
                                  % (int(local[bad].reshape(-1)[0]), uh, uw))
        else:
            rows = xp.clip(xp.arange(h) * self.stride[0] - self.pad[0], 0, uh - 1)
            cols = xp.clip(xp.arange(w) * self.stride[1] - self.pad[1], 0, uw - 1)
            local = xp.broadcast_to((rows[:, None] * uw + cols[None, :]).reshape(1, h * w), (n * c, h * w))
        target = (planes + local).reshape(-1)
        order = xp.argsort(target, kind="stable")
        ordered = target[order]
        last = xp.ones(ordered.shape, dtype=bool)
        last[:-1] = ordered[1:] != ordered[:-1]
        winners = order[last]
        return target[winners], winners

    def forward(self, bottom, top):
        y = top[0].data.reshape(-1)
        y[...] = 0
        if self.method == _PP.MAX:
            target, winners = self._max_targets(bottom)
            y[target] = bottom[0].data.reshape(-1)[winners]
            return
        padded = self._ave_canvas(bottom[0])
        x = bottom[0].data * self._ave_weights(bottom[0])
        (kh, kw), (sh, sw) = self.kernel, self.stride
        h, w = bottom[0].shape[2:]
        for i in range(kh):
            for j in range(kw):
                padded[:, :, i:i + sh * (h - 1) + 1:sh, j:j + sw * (w - 1) + 1:sw] += x
        uh, uw = self.out_hw
        top[0].data[...] = padded[:, :, self.pad[0]:self.pad[0] + uh, self.pad[1]:self.pad[1] + uw]

    def backward(self, top, propagate_down, bottom):
        if len(propagate_down) > 1 and propagate_down[1]:
            raise self._error("cannot backpropagate to the mask")
        if not propagate_down[0]:
            return
        dx = bottom[0].diff
        if self.method == _PP.MAX:
            target, winners = self._max_targets(bottom)
            flat = dx.reshape(-1)
            flat[...] = 0
            flat[winners] = top[0].diff.reshape(-1)[target]
            return
        padded = self._ave_canvas(bottom[0])
        uh, uw = self.out_hw
        padded[:, :, self.pad[0]:self.pad[0] + uh, self.pad[1]:self.pad[1] + uw] = top[0].diff
        (kh, kw), (sh, sw) = self.kernel, self.stride
        h, w = bottom[0].shape[2:]
        dx[...] = 0
        for i in range(kh):
            for j in range(kw):
                dx += padded[:, :, i:i + sh * (h - 1) + 1:sh, j:j + sw * (w - 1) + 1:sw]
        dx *= self._ave_weights(bottom[0])

    # --- AVE ---------------------------------------------------------------------------------------------------
    def _ave_canvas(self, x):
        """Zeros over the padded unpooled plane, large enough for every window."""
        n, c, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.pad
        uh, uw = self.out_hw
        size = (max((h - 1) * sh + kh, ph + uh), max((w - 1) * sw + kw, pw + uw))
        return x.xp.zeros((n, c) + size, dtype=x.dtype)

    def _ave_weights(self, x):
        """1 / window size per pooled position; the window is clipped at the unpooled size plus padding."""
        xp = x.xp
        h, w = x.shape[2:]
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.pad
        uh, uw = self.out_hw
        size_h = xp.minimum(kh, uh + 2 * ph - xp.arange(h) * sh)
        size_w = xp.minimum(kw, uw + 2 * pw - xp.arange(w) * sw)
        area = (size_h[:, None] * size_w[None, :]).astype(x.dtype)
        valid = (size_h[:, None] > 0) & (size_w[None, :] > 0)
        return xp.where(valid, 1.0 / xp.where(valid, area, 1), 0).astype(x.dtype)
