"""Convolution, Deconvolution, Im2col, Pooling and SPP with BVLC Caffe's geometry and numerics."""
from __future__ import annotations

import math
from typing import List, Tuple

import numpy as np

from .. import parallel
from ..blob import Blob
from ..errors import NetError
from ..fillers import fill
from ..proto import caffe_pb2
from . import cuda_kernels, pool_planes
from . import im2col as ic
from .base import Layer, register


def _per_axis(layer: Layer, values, name: str, n: int, default: int) -> Tuple[int, ...]:
    """A repeated field given 0 times (default), once (all axes) or once per spatial axis, as Caffe reads it."""
    values = list(values)
    if len(values) == 0:
        return (default,) * n
    if len(values) == 1:
        return (int(values[0]),) * n
    if len(values) != n:
        raise NetError("layer %r (%s): %s must be specified once, or once per spatial dimension "
                       "(%s specified %d times; %d spatial dims)" % (layer.name, layer.type, name, name,
                                                                     len(values), n))
    return tuple(int(v) for v in values)


def _hw_pair(layer: Layer, p, name: str, n: int, default: int, required: bool) -> Tuple[int, ...]:
    """``<name>_h``/``<name>_w`` (2-D only) or the repeated ``<name>`` field."""
    has_h, has_w = p.HasField(name + "_h"), p.HasField(name + "_w")
    repeated = getattr(p, name if name != "kernel" else "kernel_size")
    if has_h or has_w:
        if n != 2:
            raise NetError("layer %r (%s): %s_h & %s_w can only be used for 2D convolution (input has %d spatial "
                           "axes)" % (layer.name, layer.type, name, name, n))
        if len(repeated):
            raise NetError("layer %r (%s): either %s or %s_h/w should be specified; not both"
                           % (layer.name, layer.type, name if name != "kernel" else "kernel_size", name))
        return int(getattr(p, name + "_h")), int(getattr(p, name + "_w"))
    if required and n > 0 and not len(repeated):
        raise NetError("layer %r (%s): kernel_size (or kernel_h and kernel_w) is required"
                       % (layer.name, layer.type))
    return _per_axis(layer, repeated, name if name != "kernel" else "kernel_size", n, default)


class _BaseConvolution(Layer):
    """Shared setup of Convolution and Deconvolution (Caffe's BaseConvolutionLayer)."""

    min_bottom = 1
    min_top = 1
    allow_in_place = False
    reverse = False  # Deconvolution: the roles of input and output are swapped

    def setup(self, bottom: List[Blob], top: List[Blob]) -> None:
        p = self.layer_param.convolution_param
        if len(bottom) != len(top):
            raise NetError("layer %r (%s) needs as many tops as bottoms, got %d bottoms and %d tops"
                           % (self.name, self.type, len(bottom), len(top)))
        b0 = bottom[0]
        try:
            self.channel_axis = b0.canonical_axis(p.axis)
        except ValueError as e:
            raise NetError("layer %r (%s): convolution_param.axis: %s" % (self.name, self.type, e)) from None
        self.num_axes = b0.num_axes
        n = self.num_axes - self.channel_axis - 1
        self.num_spatial = n
        self.kernel = _hw_pair(self, p, "kernel", n, 1, required=True)
        if any(k <= 0 for k in self.kernel):
            raise NetError("layer %r (%s): filter dimensions must be nonzero, got %s"
                           % (self.name, self.type, self.kernel))
        self.stride = _hw_pair(self, p, "stride", n, 1, required=False)
        if any(s <= 0 for s in self.stride):
            raise NetError("layer %r (%s): strides must be positive, got %s" % (self.name, self.type, self.stride))
        self.pad = _hw_pair(self, p, "pad", n, 0, required=False)
        self.dilation = _per_axis(self, p.dilation, "dilation", n, 1)
        if any(d <= 0 for d in self.dilation):
            raise NetError("layer %r (%s): dilation must be positive, got %s"
                           % (self.name, self.type, self.dilation))
        self.channels = b0.shape[self.channel_axis]
        self.num_output = int(p.num_output)
        if self.num_output <= 0:
            raise NetError("layer %r (%s): convolution_param.num_output must be > 0" % (self.name, self.type))
        self.group = int(p.group)
        if self.group <= 0:
            raise NetError("layer %r (%s): group must be > 0" % (self.name, self.type))
        if self.channels % self.group:
            raise self.shape_error("bottom (its %d channels are not a multiple of group %d)"
                                   % (self.channels, self.group), b0.shape, ("N", "k*%d" % self.group, "..."))
        if self.num_output % self.group:
            raise NetError("layer %r (%s): num_output %d must be a multiple of group %d"
                           % (self.name, self.type, self.num_output, self.group))
        if self.reverse:
            conv_out, conv_in = self.channels, self.num_output
        else:
            conv_out, conv_in = self.num_output, self.channels
        self.bias_term = bool(p.bias_term)
        wshape = (conv_out, conv_in // self.group) + self.kernel
        shapes = [wshape] + ([(self.num_output,)] if self.bias_term else [])
        if self.blobs:
            if len(self.blobs) != len(shapes):
                raise NetError("layer %r (%s): incorrect number of weight blobs: %d given, %d expected "
                               "(bias_term %s)" % (self.name, self.type, len(self.blobs), len(shapes),
                                                   self.bias_term))
            for i, (blob, shape) in enumerate(zip(self.blobs, shapes)):
                if tuple(blob.shape) != shape:
                    what = "weight blob" if i == 0 else "bias blob"
                    raise self.shape_error("%s (bottom %s, %d channels)" % (what, b0.shape, self.channels),
                                           blob.shape, shape)
        else:
            self.blobs = [Blob(s, dtype=b0.dtype, xp=b0.xp) for s in shapes]
            fill(self.blobs[0], p.weight_filler)
            if self.bias_term:
                fill(self.blobs[1], p.bias_filler)
        self.param_propagate_down = [True] * len(self.blobs)

    def _out_spatial(self, in_spatial: Tuple[int, ...]) -> Tuple[int, ...]:
        raise NotImplementedError

    def reshape(self, bottom: List[Blob], top: List[Blob]) -> None:
        b0 = bottom[0]
        if b0.num_axes != self.num_axes:
            raise self.shape_error("bottom (the number of axes may not change)", b0.shape,
                                   ("...",) * self.num_axes)
        ca = self.channel_axis
        if b0.shape[ca] != self.channels:
            expected = b0.shape[:ca] + (self.channels,) + b0.shape[ca + 1:]
            raise self.shape_error("bottom (input channels incompatible with the weights %s)"
                                   % (self.blobs[0].shape,), b0.shape, expected)
        for i, b in enumerate(bottom[1:], 1):
            if b.shape != b0.shape:
                raise self.shape_error("bottom %d (all bottoms must share one shape)" % i, b.shape, b0.shape)
        in_sp = b0.shape[ca + 1:]
        out_sp = self._out_spatial(in_sp)
        self.num = int(np.prod(b0.shape[:ca], dtype=np.int64))
        key = (out_sp, in_sp) if self.reverse else (in_sp, out_sp)
        if getattr(self, "_geom_key", None) != key:  # Net reshapes before every forward: build it on changes only
            self.geom = ic.ConvGeometry(*key, self.kernel, self.stride, self.pad, self.dilation)
            self._geom_key = key
        top_shape = b0.shape[:ca] + (self.num_output,) + out_sp
        for t in top:
            t.reshape(top_shape)

    def _as4(self, a, channels: int, spatial):
        # (outer..., C, spatial...) -> (num, C, spatial...): a view, blobs are contiguous
        return a.reshape((self.num, channels) + tuple(spatial))

    def _bottom_view(self, a):
        return self._as4(a, self.channels, a.shape[self.channel_axis + 1:])

    def _top_view(self, a):
        return self._as4(a, self.num_output, a.shape[self.channel_axis + 1:])

    # (forward, backward) kernels of im2col.py: Convolution's, or Deconvolution's with the roles swapped
    _kernels: tuple = ()

    def forward(self, bottom, top):
        w = self.blobs[0].data
        bias = self.blobs[1].data if self.bias_term else None
        for b, t in zip(bottom, top):
            self._kernels[0](self._bottom_view(b.data), w, bias, self._top_view(t.data), self.geom, self.group,
                             ic.shared_workspace())

    def backward(self, top, propagate_down, bottom):
        w = self.blobs[0].data
        dw = self.blobs[0].diff if self.param_propagate_down[0] else None
        db = self.blobs[1].diff if self.bias_term and self.param_propagate_down[1] else None
        for i, (b, t) in enumerate(zip(bottom, top)):
            dx = self._bottom_view(b.diff) if propagate_down[i] else None
            self._kernels[1](self._bottom_view(b.data), w, self._top_view(t.diff), self.geom, self.group,
                             ic.shared_workspace(), dx=dx, dw=dw, db=db)


@register("Convolution")
class ConvolutionLayer(_BaseConvolution):
    """Caffe's convolution: weights (num_output, C/group, *kernel), bias (num_output,)."""

    def _out_spatial(self, in_spatial):
        out = []
        for d, size in enumerate(in_spatial):
            o = ic.conv_out_size(size, self.kernel[d], self.stride[d], self.pad[d], self.dilation[d])
            if o <= 0:
                raise self.shape_error(
                    "bottom (spatial axis %d: dilated kernel %d is larger than the padded input %d)"
                    % (d, ic.extent(self.kernel[d], self.dilation[d]), size + 2 * self.pad[d]),
                    in_spatial, tuple("<=%d" % (s + 2 * p) for s, p in zip(in_spatial, self.pad)))
            out.append(o)
        return tuple(out)

    _kernels = (ic.conv_forward, ic.conv_backward)


@register("Deconvolution")
class DeconvolutionLayer(_BaseConvolution):
    """Caffe's deconvolution (forward = convolution backward-data): weights (C, num_output/group, *kernel)."""

    reverse = True

    def _out_spatial(self, in_spatial):
        out = []
        for d, size in enumerate(in_spatial):
            o = ic.deconv_out_size(size, self.kernel[d], self.stride[d], self.pad[d], self.dilation[d])
            if o <= 0:
                raise self.shape_error("bottom (spatial axis %d: output size %d <= 0 with kernel %d, stride %d, "
                                       "pad %d)" % (d, o, self.kernel[d], self.stride[d], self.pad[d]),
                                       in_spatial, ("larger",) * len(in_spatial))
            out.append(o)
        return tuple(out)

    _kernels = (ic.deconv_forward, ic.deconv_backward)


@register("Im2col")
class Im2colLayer(Layer):
    """Caffe's Im2colLayer: each image's convolution columns as a blob, (outer..., C * prod(kernel), *out).

    ``convolution_param`` gives ``kernel_size`` (or ``kernel_h``/``kernel_w``), ``stride``, ``pad``, ``dilation``
    and ``axis`` (the channel axis; the axes before it are flattened into images), 2-D or N-D. Channel ``c`` of the
    top holds input channel ``c // prod(kernel)`` at kernel offset ``c % prod(kernel)`` (row-major), for every
    output position, as Caffe's im2col lays out its column buffer. Backward is col2im (overlaps summed).
    """

    exact_num_bottom = 1
    exact_num_top = 1
    allow_in_place = False

    def setup(self, bottom: List[Blob], top: List[Blob]) -> None:
        p = self.layer_param.convolution_param
        b0 = bottom[0]
        try:
            self.channel_axis = b0.canonical_axis(p.axis)
        except ValueError as e:
            raise NetError("layer %r (Im2col): convolution_param.axis: %s" % (self.name, e)) from None
        self.num_axes = b0.num_axes
        n = self.num_axes - self.channel_axis - 1
        if n < 1:
            raise self.shape_error("bottom (Im2col needs at least one spatial axis after channel axis %d)"
                                   % self.channel_axis, b0.shape, b0.shape + ("H",))
        self.kernel = _hw_pair(self, p, "kernel", n, 1, required=True)
        self.stride = _hw_pair(self, p, "stride", n, 1, required=False)
        self.pad = _hw_pair(self, p, "pad", n, 0, required=False)
        self.dilation = _per_axis(self, p.dilation, "dilation", n, 1)
        for name, values, low in (("kernel", self.kernel, 1), ("stride", self.stride, 1),
                                  ("pad", self.pad, 0), ("dilation", self.dilation, 1)):
            if any(v < low for v in values):
                raise NetError("layer %r (Im2col): %s must be >= %d on every axis, got %s"
                               % (self.name, name, low, values))
        self._ws = ic.Workspace()

    def reshape(self, bottom: List[Blob], top: List[Blob]) -> None:
        b0 = bottom[0]
        if b0.num_axes != self.num_axes:
            raise self.shape_error("bottom (the number of axes may not change)", b0.shape, ("...",) * self.num_axes)
        ca = self.channel_axis
        in_sp = b0.shape[ca + 1:]
        out_sp = tuple(ic.conv_out_size(size, k, s, pd, d)
                       for size, k, s, pd, d in zip(in_sp, self.kernel, self.stride, self.pad, self.dilation))
        if any(o <= 0 for o in out_sp):
            raise self.shape_error("bottom (dilated kernel %s larger than the padded input)"
                                   % (tuple(ic.extent(k, d) for k, d in zip(self.kernel, self.dilation)),),
                                   in_sp, tuple(">=%d" % (ic.extent(k, d) - 2 * pd)
                                                for k, d, pd in zip(self.kernel, self.dilation, self.pad)))
        self.channels = b0.shape[ca]
        self.num = int(np.prod(b0.shape[:ca], dtype=np.int64))
        self.geom = ic.ConvGeometry(in_sp, out_sp, self.kernel, self.stride, self.pad, self.dilation)
        top[0].reshape(b0.shape[:ca] + (self.channels * self.geom.kernel_count,) + out_sp)

    def _views(self, bottom_array, top_array):
        # (outer..., C, *in) -> (num, C, *in) and the top likewise: views, blobs are contiguous
        g = self.geom
        return (bottom_array.reshape((self.num, self.channels) + g.in_shape),
                top_array.reshape((self.num, self.channels * g.kernel_count) + g.out_shape))

    def forward(self, bottom, top):
        x, y = self._views(bottom[0].data, top[0].data)
        col = ic.im2col(ic.to_layout(x, self.geom, False, self._ws, "xl"), self.geom, False, self._ws)
        ic.from_rows(col, y, False)  # (C * K, num * P) -> (num, C * K, *out)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dx, dy = self._views(bottom[0].diff, top[0].diff)
        rows = ic.to_rows(dy, False, self._ws, "rows")
        buf = ic.col2im(rows, self.channels, self.num, self.geom, False, self._ws, "dxl")
        ic.from_layout(buf, self.geom, False, dx)


_PP = caffe_pb2.PoolingParameter
# Pooling walks the batch in blocks of about this many input elements (2 MiB of float32), so that the running max,
# argmax and temporaries of its passes over the windows stay in the cache (measured: MAX 3x3/2 forward and backward
# about 30% faster than whole-batch passes).
_POOL_BLOCK = 1 << 19


@register("Pooling")
class PoolingLayer(Layer):
    """MAX / AVE pooling over (N, C, H, W); MAX may output its argmax mask (flat h*W+w) as a second top."""

    exact_num_bottom = 1
    min_top = 1
    allow_in_place = False

    def __init__(self, param, phase=caffe_pb2.TRAIN):
        super().__init__(param, phase)
        self.max_top = 2 if param.pooling_param.pool == _PP.MAX else 1

    def setup(self, bottom, top):
        p = self.layer_param.pooling_param
        self.method = p.pool
        if self.method == _PP.STOCHASTIC:
            raise NetError("layer %r (Pooling): STOCHASTIC pooling is not supported (use MAX or AVE)" % self.name)
        if self.method not in (_PP.MAX, _PP.AVE):
            raise NetError("layer %r (Pooling): unknown pooling method %d" % (self.name, self.method))
        has_k, has_kh, has_kw = p.HasField("kernel_size"), p.HasField("kernel_h"), p.HasField("kernel_w")
        self.global_pooling = bool(p.global_pooling)
        if self.global_pooling:
            if has_k or has_kh or has_kw:
                raise NetError("layer %r (Pooling): with global_pooling: true the kernel size cannot be specified"
                               % self.name)
        else:
            if has_k and (has_kh or has_kw):
                raise NetError("layer %r (Pooling): filter size is kernel_size OR kernel_h and kernel_w; not both"
                               % self.name)
            if not has_k and not (has_kh and has_kw):
                raise NetError("layer %r (Pooling): kernel_size is required (for non-square filters both kernel_h "
                               "and kernel_w)" % self.name)
        for name in ("pad", "stride"):
            hh, hw = p.HasField(name + "_h"), p.HasField(name + "_w")
            if (hh or hw) and (p.HasField(name) or not (hh and hw)):
                raise NetError("layer %r (Pooling): %s is %s OR %s_h and %s_w are required"
                               % (self.name, name, name, name, name))
        self._check_4d(bottom[0])
        if self.global_pooling:
            self.kernel = (bottom[0].shape[2], bottom[0].shape[3])
        elif has_k:
            self.kernel = (int(p.kernel_size),) * 2
        else:
            self.kernel = (int(p.kernel_h), int(p.kernel_w))
        if min(self.kernel) <= 0:
            raise NetError("layer %r (Pooling): filter dimensions cannot be zero, got %s" % (self.name, self.kernel))
        self.pad = (int(p.pad_h), int(p.pad_w)) if p.HasField("pad_h") else (int(p.pad),) * 2
        self.stride = (int(p.stride_h), int(p.stride_w)) if p.HasField("stride_h") else (int(p.stride),) * 2
        if min(self.stride) <= 0:
            raise NetError("layer %r (Pooling): stride must be positive, got %s" % (self.name, self.stride))
        if self.global_pooling and (any(self.pad) or self.stride != (1, 1)):
            raise NetError("layer %r (Pooling): with global_pooling: true only pad = 0 and stride = 1 are allowed"
                           % self.name)
        if self.pad[0] >= self.kernel[0] or self.pad[1] >= self.kernel[1]:
            raise NetError("layer %r (Pooling): pad %s must be smaller than the kernel %s"
                           % (self.name, self.pad, self.kernel))
        self.round_ceil = p.round_mode == _PP.CEIL
        self._ws = ic.Workspace()

    def _check_4d(self, b: Blob) -> None:
        if b.num_axes != 4:
            raise self.shape_error("bottom (Pooling needs 4 axes: num, channels, height, width)", b.shape,
                                   ("N", "C", "H", "W"))

    def reshape(self, bottom, top):
        b = bottom[0]
        self._check_4d(b)
        n, c, h, w = b.shape
        if self.global_pooling:
            self.kernel = (h, w)
        out = []
        for size, k, s, p in zip((h, w), self.kernel, self.stride, self.pad):
            if size + 2 * p < k:
                raise self.shape_error("bottom (kernel %s is larger than the padded input)" % (self.kernel,),
                                       b.shape, (n, c, ">=%d" % (self.kernel[0] - 2 * self.pad[0]),
                                                 ">=%d" % (self.kernel[1] - 2 * self.pad[1])))
            o = (math.ceil((size + 2 * p - k) / s) if self.round_ceil else (size + 2 * p - k) // s) + 1
            # Caffe: the last window must start inside the image (or its right padding)
            if p > 0 and (o - 1) * s >= size + p:
                o -= 1
            out.append(o)
        self.out = tuple(out)
        self.in_hw = (h, w)
        for t in top:
            t.reshape((n, c) + self.out)
        self._is_global = self.kernel == (h, w) and not any(self.pad)
        key = (h, w, self.kernel, b.dtype, b.xp)
        if getattr(self, "_geometry_key", None) == key:  # reshape runs every forward: keep what depends on (H, W)
            return
        self._geometry_key = key
        self._planes = pool_planes.PlaneGeometry((h, w), self.kernel, self.stride, self.pad, self.out)
        self._windows = [(i, j) for i in range(self.kernel[0]) for j in range(self.kernel[1])]  # scan order
        if self.method == _PP.AVE:
            sizes = []
            for size, k, s, p, o in zip((h, w), self.kernel, self.stride, self.pad, self.out):
                start = np.arange(o) * s - p
                end = np.minimum(start + k, size + p)
                sizes.append(end - start)
            area = np.maximum(np.outer(sizes[0], sizes[1]), 1)  # an empty window (stride > kernel) sums to 0
            self._area = b.xp.asarray(area, dtype=b.dtype)

    def forward(self, bottom, top):
        x = bottom[0].data
        xp = bottom[0].xp
        if cuda_kernels.enabled(xp):  # one launch, the argmax kept on the device
            return cuda_kernels.pool_forward(self, bottom, top)
        y = top[0].data
        n, c, h, w = x.shape
        numpy = xp is np
        if self.method == _PP.MAX:
            if self._is_global:
                x3 = x.reshape(n, c, h * w)
                self._arg = x3.argmax(axis=2)  # first maximum in scan order, as Caffe
                y.reshape(n, c)[...] = x3.max(axis=2)
                if len(top) > 1:
                    top[1].data.reshape(n, c)[...] = self._arg
                return
            g, (oh, ow) = self._planes, self.out
            itype = np.int8 if len(self._windows) < 127 else np.int32
            arg = self._ws.get("arg", (n, c * g.cells), itype, xp)  # kept for backward, on the planes' cell grid

            def block(n0, n1):
                pool_planes.max_forward(g, x[n0:n1].reshape(-1, h, w), y[n0:n1].reshape(-1, oh, ow),
                                        arg[n0:n1].reshape(-1), ic.shared_workspace(), xp)

            parallel.over_batch(n, block, x.size, numpy, _POOL_BLOCK)
            self._arg = arg
            if len(top) > 1:
                k = arg.reshape(n, c, g.hq, g.wq)[:, :, :oh, :ow]
                oi = xp.asarray([i for i, _ in self._windows], dtype=np.int64)[k]
                oj = xp.asarray([j for _, j in self._windows], dtype=np.int64)[k]
                hh = oi + (xp.arange(oh) * self.stride[0] - self.pad[0])[:, None]
                ww = oj + (xp.arange(ow) * self.stride[1] - self.pad[1])[None, :]
                inside = (hh >= 0) & (hh < h) & (ww >= 0) & (ww < w)
                top[1].data[...] = xp.where(inside, hh * w + ww, -1)
        else:
            if self._is_global:
                y.reshape(n, c)[...] = x.reshape(n, c, h * w).sum(axis=2) / self._area.reshape(())
                return
            g, (oh, ow) = self._planes, self.out

            def block(n0, n1):
                pool_planes.ave_forward(g, x[n0:n1].reshape(-1, h, w), y[n0:n1].reshape(-1, oh, ow), self._area,
                                        ic.shared_workspace(), xp)

            parallel.over_batch(n, block, x.size, numpy, _POOL_BLOCK)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = bottom[0].xp
        if cuda_kernels.enabled(xp):
            return cuda_kernels.pool_backward(self, top, bottom)
        dy = top[0].diff
        dx = bottom[0].diff
        n, c, h, w = dx.shape
        (ph, pw) = self.pad
        if self._is_global:
            if self.method == _PP.MAX:
                sel = xp.arange(h * w).reshape(1, 1, h * w) == self._arg[:, :, None]
                xp.multiply(sel, dy.reshape(n, c, 1), out=dx.reshape(n, c, h * w))
            else:
                dx[...] = (dy / self._area).reshape(n, c, 1, 1)
            return
        g, (oh, ow) = self._planes, self.out

        def block(n0, n1):
            scratch = ic.shared_workspace()
            d3, dx3 = dy[n0:n1].reshape(-1, oh, ow), dx[n0:n1].reshape(-1, h, w)
            if self.method == _PP.MAX:
                pool_planes.max_backward(g, d3, self._arg[n0:n1].reshape(-1), dx3, scratch, xp)
            else:
                pool_planes.ave_backward(g, d3, self._area, dx3, scratch, xp)

        parallel.over_batch(n, block, dx.size, xp is np, _POOL_BLOCK)


@register("SPP")
class SPPLayer(Layer):
    """Spatial pyramid pooling: level l pools (N, C, H, W) into 2^l x 2^l bins with Caffe's Pooling (kernel
    ceil(H / 2^l), stride = kernel, pad (kernel 2^l - H + 1) // 2), flattens each level and concatenates them:
    top (N, C * sum_l 4^l). With pyramid_height 1 the top is the single pooling output (N, C, 1, 1), as in Caffe."""

    exact_num_bottom = 1
    exact_num_top = 1
    allow_in_place = False

    def setup(self, bottom, top):
        p = self.layer_param.spp_param
        self.height = int(p.pyramid_height)
        if self.height < 1:
            raise NetError("layer %r (SPP): spp_param.pyramid_height must be given and >= 1" % self.name)
        if p.pool not in (caffe_pb2.SPPParameter.MAX, caffe_pb2.SPPParameter.AVE):
            raise NetError("layer %r (SPP): only MAX and AVE pooling are supported" % self.name)
        # SPPParameter and PoolingParameter number MAX and AVE alike.
        self.pool = _PP.MAX if p.pool == caffe_pb2.SPPParameter.MAX else _PP.AVE
        self._hw = None

    def _level_param(self, level: int, h: int, w: int) -> caffe_pb2.LayerParameter:
        lp = caffe_pb2.LayerParameter(name="%s (pyramid level %d)" % (self.name, level), type="Pooling")
        pp = lp.pooling_param
        pp.pool = self.pool
        bins = 2 ** level
        kh, kw = -(-h // bins), -(-w // bins)
        pp.kernel_h, pp.kernel_w = kh, kw
        pp.stride_h, pp.stride_w = kh, kw
        pp.pad_h, pp.pad_w = (kh * bins - h + 1) // 2, (kw * bins - w + 1) // 2
        return lp

    def reshape(self, bottom, top):
        b = bottom[0]
        if b.num_axes != 4:
            raise self.shape_error("bottom (SPP needs 4 axes: num, channels, height, width)", b.shape,
                                   ("N", "C", "H", "W"))
        n, c, h, w = b.shape
        if (h, w) != self._hw:  # pooling geometry depends on the spatial size: rebuild the levels
            self._pools, self._tops = [], []
            for level in range(self.height):
                pool = PoolingLayer(self._level_param(level, h, w), self.phase)
                t = Blob((), dtype=b.dtype, xp=b.xp)
                pool.initialize([b], [t])
                self._pools.append(pool)
                self._tops.append(t)
            self._hw = (h, w)
        else:
            for pool, t in zip(self._pools, self._tops):
                pool.reshape([b], [t])
        self._sizes = [t.count // max(n, 1) for t in self._tops]
        if self.height == 1:
            top[0].reshape(self._tops[0].shape)
        else:
            top[0].reshape((n, sum(self._sizes)))

    def _levels(self):
        offset = 0
        for pool, t, size in zip(self._pools, self._tops, self._sizes):
            yield pool, t, slice(offset, offset + size)
            offset += size

    def forward(self, bottom, top):
        n = bottom[0].shape[0]
        y = top[0].data.reshape(n, -1)
        for pool, t, cols in self._levels():
            pool.forward(bottom, [t])
            y[:, cols] = t.data.reshape(n, -1)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        n = bottom[0].shape[0]
        dy = top[0].diff.reshape(n, -1)
        total = None
        for pool, t, cols in self._levels():
            t.diff[...] = dy[:, cols].reshape(t.shape)
            pool.backward([t], [True], bottom)  # overwrites bottom diff: sum the levels aside
            if total is None:
                total = bottom[0].diff.copy()
            else:
                total += bottom[0].diff
        bottom[0].diff[...] = total


def _xp(a):
    return ic._xp(a)
