"""InnerProduct (fully connected) and Embed (lookup table) with Caffe's weight layouts and axis semantics."""
from __future__ import annotations

from typing import List

import numpy as np

from .. import backend
from ..blob import Blob
from ..errors import NetError
from ..fillers import fill
from .base import Layer, register
from .common import scatter_add_rows
from .im2col import shared_workspace

# Elements of the temporary of a weight-gradient product (4 MiB of float32).
_PRODUCT_BLOCK = 1 << 20


def _weight_and_bias(layer: Layer, bottom: Blob, weight_shape, p, context: str = "") -> None:
    """Checks the weight (and, with ``bias_term``, bias) blobs given by a prototxt or caffemodel, or creates and
    fills them from ``p.weight_filler`` / ``p.bias_filler``."""
    shapes = [tuple(weight_shape)] + ([(layer.num_output,)] if layer.bias_term else [])
    if layer.blobs:
        if len(layer.blobs) != len(shapes):
            raise NetError("layer %r (%s): incorrect number of weight blobs: %d given, %d expected (bias_term %s)"
                           % (layer.name, layer.type, len(layer.blobs), len(shapes), layer.bias_term))
        for i, (blob, shape) in enumerate(zip(layer.blobs, shapes)):
            if tuple(blob.shape) != shape:
                raise layer.shape_error(("weight blob" if i == 0 else "bias blob") + context, blob.shape, shape)
    else:
        layer.blobs = [Blob(s, dtype=bottom.dtype, xp=bottom.xp) for s in shapes]
        fill(layer.blobs[0], p.weight_filler)
        if layer.bias_term:
            fill(layer.blobs[1], p.bias_filler)
    layer.param_propagate_down = [True] * len(layer.blobs)


@register("InnerProduct")
class InnerProductLayer(Layer):
    """y = x W^T + b over the axes from ``axis`` on; W is (num_output, K), or (K, num_output) with transpose."""

    exact_num_bottom = 1
    exact_num_top = 1
    allow_in_place = False

    def setup(self, bottom: List[Blob], top: List[Blob]) -> None:
        p = self.layer_param.inner_product_param
        b = bottom[0]
        self.num_output = int(p.num_output)
        if self.num_output <= 0:
            raise NetError("layer %r (InnerProduct): inner_product_param.num_output must be > 0" % self.name)
        self.bias_term = bool(p.bias_term)
        self.transpose = bool(p.transpose)
        self.axis = self._axis(b)
        self.k = b.count_range(self.axis)
        wshape = (self.k, self.num_output) if self.transpose else (self.num_output, self.k)
        _weight_and_bias(self, b, wshape, p, " (bottom %s flattened from axis %d)" % (b.shape, self.axis))

    def _axis(self, b: Blob) -> int:
        try:
            return b.canonical_axis(self.layer_param.inner_product_param.axis)
        except ValueError as e:
            raise NetError("layer %r (InnerProduct): inner_product_param.axis: %s" % (self.name, e)) from None

    def reshape(self, bottom, top):
        b = bottom[0]
        axis = self._axis(b)
        if b.count_range(axis) != self.k:
            raise self.shape_error("bottom (input size incompatible with the inner product weights %s: %d "
                                   "inputs from axis %d on, expected %d)"
                                   % (self.blobs[0].shape, b.count_range(axis), axis, self.k),
                                   b.shape, b.shape[:axis] + ("prod=%d" % self.k,))
        self.axis = axis
        self.m = b.count_range(0, axis)
        top[0].reshape(b.shape[:axis] + (self.num_output,))

    def forward(self, bottom, top):
        xp = bottom[0].xp
        x = bottom[0].data.reshape(self.m, self.k)
        w = self.blobs[0].data
        y = top[0].data.reshape(self.m, self.num_output)
        xp.matmul(x, w if self.transpose else w.T, out=y)
        if self.bias_term:
            y += self.blobs[1].data

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff.reshape(self.m, self.num_output)
        x = bottom[0].data.reshape(self.m, self.k)
        if self.param_propagate_down[0]:
            if self.transpose:
                _add_product(self.blobs[0].diff, x.T, dy)
            else:
                _add_product(self.blobs[0].diff, dy.T, x)
        if self.bias_term and self.param_propagate_down[1]:
            self.blobs[1].diff += dy.sum(axis=0)
        if propagate_down[0]:
            w = self.blobs[0].data
            bottom[0].xp.matmul(dy, w.T if self.transpose else w, out=bottom[0].diff.reshape(self.m, self.k))


def _add_product(out, a, b) -> None:
    """``out += a @ b`` in blocks of rows, so that the product's temporary stays small (CaffeNet's fc6 weight
    gradient would otherwise allocate a 151 MB array every iteration; Caffe's GEMM accumulates with beta = 1)."""
    xp = backend.array_module(out)
    rows = max(1, _PRODUCT_BLOCK // max(b.shape[1], 1))
    ws = shared_workspace()
    for r0 in range(0, a.shape[0], rows):
        r1 = min(a.shape[0], r0 + rows)
        tmp = ws.get("ip_product", (r1 - r0, b.shape[1]), out.dtype, xp)
        xp.matmul(a[r0:r1], b, out=tmp)
        out[r0:r1] += tmp


@register("Embed")
class EmbedLayer(Layer):
    """A lookup table: each bottom value, an integer index in [0, input_dim), picks a row of W (input_dim,
    num_output) (plus the bias); top shape is bottom.shape + (num_output,). No gradient to the indices."""

    exact_num_bottom = 1
    exact_num_top = 1
    allow_in_place = False

    def allow_force_backward(self, bottom_index: int) -> bool:
        return False

    def setup(self, bottom: List[Blob], top: List[Blob]) -> None:
        p = self.layer_param.embed_param
        b = bottom[0]
        self.num_output = int(p.num_output)
        self.input_dim = int(p.input_dim)
        if self.num_output <= 0:
            raise NetError("layer %r (Embed): embed_param.num_output must be > 0" % self.name)
        if self.input_dim <= 0:
            raise NetError("layer %r (Embed): embed_param.input_dim must be > 0" % self.name)
        self.bias_term = bool(p.bias_term)
        _weight_and_bias(self, b, (self.input_dim, self.num_output), p)

    def reshape(self, bottom, top):
        self.m = bottom[0].count
        top[0].reshape(bottom[0].shape + (self.num_output,))

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(-1)
        idx = x.astype(np.int64)
        # Caffe only DCHECKs these; a wrong index would read another row or out of bounds.
        bad = (idx < 0) | (idx >= self.input_dim) | (idx != x)
        if bool(bad.any()):
            raise NetError("layer %r (Embed): input value %g is not an integer index in [0, %d) (input_dim)"
                           % (self.name, float(x[bad][0]), self.input_dim))
        self._idx = idx
        y = top[0].data.reshape(self.m, self.num_output)
        y[...] = self.blobs[0].data[idx]
        if self.bias_term:
            y += self.blobs[1].data

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            raise NetError("layer %r (Embed) cannot backpropagate to its input (indices)" % self.name)
        dy = top[0].diff.reshape(self.m, self.num_output)
        if self.param_propagate_down[0]:
            scatter_add_rows(self.blobs[0].xp, self.blobs[0].diff, self._idx, dy)
        if self.bias_term and self.param_propagate_down[1]:
            self.blobs[1].diff += dy.sum(axis=0)
