"""Normalization layers beyond BVLC Caffe's and MyCaffe's classic set: LayerNorm (MyCaffe's GPT LayerNormLayer and
PyTorch's ``layer_norm``), GroupNorm, InstanceNorm, RMSNorm (MyCaffe's and PyTorch's) and ConvNeXt-V2's Global
Response Normalization (type ``ConvNeXtGRN``, not MyCaffe's ``GRN``). Batch Renormalization is an option of
BatchNorm (``normalization.py``).

Formulas, parameters and the PyTorch mapping are in docs/normalization.md. Every layer runs in place: backward
reads only what forward cached (the normalised input, or ConvNeXtGRN's input), never the top or bottom data.
"""
from __future__ import annotations

import logging
from typing import List, Tuple

import numpy as np

from ..blob import Blob
from ..errors import NetError
from ..fillers import fill
from ..proto import caffe_pb2
from .base import TEST, Layer, register
from .normalization import _buffer

logger = logging.getLogger("pycaffe_norm")


def _f(value: float) -> float:
    """A float32 field as the decimal it was written as (eps: 1e-5 is 1e-5 in float64 nets, not 9.99999974e-06)."""
    return float(str(np.float32(value)))


def _row_sum(xp, a):
    """Row sums of a 2-D array as many small BLAS dot products (stays on one thread; see normalization.py)."""
    return xp.matmul(a[:, None, :], xp.ones((a.shape[1], 1), dtype=a.dtype))[:, 0, 0]


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


class _RowNormLayer(Layer):
    """Normalises the rows of an (R, M) view of the input: ``x_hat = (x - mean) / sqrt(var + eps)`` (or, without
    centring, ``x / sqrt(mean(x^2) + eps)``), then an optional affine part laid out per row element ("inner",
    weight of shape (M,)) or per channel ("channel", weight (C,) on an (N, C, S) view).

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

    def _normalise(self, xp, x2):
        """Writes x_hat into a cached (R, M) buffer; returns it. ``self._inv`` gets 1/sqrt(var + eps), (R,)."""
        dt = x2.dtype.type
        m = dt(x2.shape[1])
        xh = _buffer(self, "xhat", xp, x2.shape, x2.dtype)
        if self.center:
            xp.subtract(x2, (_row_sum(xp, x2) / m)[:, None], out=xh)
        var = _row_dot(xp, xh, xh) / m if self.center else _row_dot(xp, x2, x2) / m
        self._var = var
        self._inv = xp.reciprocal(xp.sqrt(var + dt(self.eps)))
        if self.center:
            xh *= self._inv[:, None]
        else:
            xp.multiply(x2, self._inv[:, None], out=xh)
        return xh

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
        x2 = bottom[0].data.reshape(self._rows(bottom[0]))
        xh = self._normalise(xp, x2)
        self._affine_forward(xp, xh, top[0].data.reshape(x2.shape), bottom[0])

    def backward(self, top: List[Blob], propagate_down: List[bool], bottom: List[Blob]) -> None:
        xp = bottom[0].xp
        xh = self._buffers["xhat"]
        dy2 = top[0].diff.reshape(xh.shape)
        if self.layout == "channel":
            self._channel_backward(xp, dy2, xh, propagate_down[0], bottom[0])
            return
        g = self._affine_backward(xp, dy2, xh, bottom[0])
        if not propagate_down[0]:
            return
        dt = xh.dtype.type
        m = dt(xh.shape[1])
        # centred:  dx = (g - mean(g) - x_hat * mean(g * x_hat)) / sqrt(var + eps)
        # RMS:      dx = (g - x_hat * mean(g * x_hat)) / sqrt(mean(x^2) + eps)
        tmp = _buffer(self, "tmp", xp, xh.shape, xh.dtype)
        xp.multiply(xh, (_row_dot(xp, g, xh) / m)[:, None], out=tmp)
        if self.center:
            tmp += (_row_sum(xp, g) / m)[:, None]
        dx = bottom[0].diff.reshape(xh.shape)
        xp.subtract(g, tmp, out=dx)          # dx may be g (in place, no affine): g is read for the last time
        dx *= self._inv[:, None]


    def _channel_backward(self, xp, dy2, xh, propagate_down: bool, bottom: Blob) -> None:
        """The backward for rows made of whole channels (GroupNorm, InstanceNorm): the sums are taken once per
        (n, c), for the parameter gradients, and combined per group; then
        dx = (dy * w + x_hat * B + C) * inv with per-(n, c) B = -mean(g * x_hat), C = -mean(g), g = dy * w."""
        n, c, s = self._ncs(bottom)
        groups = xh.shape[0] // n
        dt = xh.dtype.type
        sum_dy = _row_sum(xp, dy2.reshape(n * c, s)).reshape(n, c)
        sum_dyx = _row_dot(xp, dy2.reshape(n * c, s), xh.reshape(n * c, s)).reshape(n, c)
        if self.affine:
            i = self.first_affine
            if self.param_propagate_down[i]:
                self.blobs[i].diff[...] += sum_dyx.sum(axis=0)
            if self.param_propagate_down[i + 1]:
                self.blobs[i + 1].diff[...] += sum_dy.sum(axis=0)
        if not propagate_down:
            return
        w = self.blobs[self.first_affine].data if self.affine else None
        g_sum, gx_sum = (sum_dy * w[None, :], sum_dyx * w[None, :]) if w is not None else (sum_dy, sum_dyx)
        m = dt(xh.shape[1])
        per_group = c // groups
        b_coef = xp.repeat(-gx_sum.reshape(n, groups, per_group).sum(axis=2) / m, per_group, axis=1)
        c_coef = xp.repeat(-g_sum.reshape(n, groups, per_group).sum(axis=2) / m, per_group, axis=1)
        inv = xp.repeat(self._inv.reshape(n, groups), per_group, axis=1)
        dy3, xh3 = dy2.reshape(n, c, s), xh.reshape(n, c, s)
        tmp = _buffer(self, "tmp", xp, xh3.shape, xh.dtype)
        xp.multiply(xh3, b_coef[:, :, None], out=tmp)
        tmp += c_coef[:, :, None]
        dx = bottom.diff.reshape(n, c, s)
        if w is not None:
            xp.multiply(dy3, w[None, :, None], out=dx)       # dx may be dy (in place): elementwise
            dx += tmp
        else:
            xp.add(dy3, tmp, out=dx)
        dx *= inv[:, :, None]


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
            n, c, s = self._ncs(bottom[0])
            x2 = bottom[0].data.reshape(n * c, s)
            # the instance means, before an in-place forward overwrites the input
            mean = (_row_sum(bottom[0].xp, x2) / x2.dtype.type(s)).reshape(n, c) if self.track else None
            super().forward(bottom, top)
            if self.track:
                self._update_running(mean, s)
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
