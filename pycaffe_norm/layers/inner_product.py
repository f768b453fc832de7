"""InnerProduct (fully connected) and Embed (lookup table) with Caffe's weight layouts and axis semantics."""
from __future__ import annotations

from typing import List

import numpy as np

from .. import backend, parallel
from ..blob import Blob
from ..errors import NetError
from ..fillers import fill
from ..proto.caffe_pb2 import TRAIN
from ..random import rng
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
        self.enable_noise = bool(p.enable_noise)
        if not self.enable_noise:
            _weight_and_bias(self, b, wshape, p, " (bottom %s flattened from axis %d)" % (b.shape, self.axis))
            return
        if not p.sigma_init >= 0:
            raise NetError("layer %r (InnerProduct): inner_product_param.sigma_init must be >= 0, got %g"
                           % (self.name, p.sigma_init))
        self._noisy_blobs(b, wshape, p)
        # Whether each TRAIN forward draws new noise (MyCaffe's noisy DQN trainer calls ResetNoise every step);
        # a test sets it False to hold the noise fixed.
        self.resample_noise = True
        self.reset_noise()

    def _noisy_blobs(self, b: Blob, wshape, p) -> None:
        """MyCaffe's NoisyNet blobs: weight, bias, sigma weight, sigma bias (no bias: weight, sigma weight). New
        weight and bias are filled and scaled by 1 / sqrt(wshape[1]), the sigmas set to sigma_init / sqrt(fan)
        (wshape[1] for the weight, num_output for the bias), as MyCaffe's InnerProductLayer.LayerSetUp."""
        shapes = [tuple(wshape)] + ([(self.num_output,)] if self.bias_term else [])
        shapes = shapes + shapes
        if self.blobs:
            if len(self.blobs) != len(shapes):
                raise NetError("layer %r (InnerProduct): incorrect number of weight blobs: %d given, %d expected "
                               "(enable_noise adds the sigma blobs; bias_term %s)"
                               % (self.name, len(self.blobs), len(shapes), self.bias_term))
            for i, (blob, shape) in enumerate(zip(self.blobs, shapes)):
                if tuple(blob.shape) != shape:
                    raise self.shape_error("weight blob %d (enable_noise)" % i, blob.shape, shape)
        else:
            self.blobs = [Blob(s, dtype=b.dtype, xp=b.xp) for s in shapes]
            half = len(shapes) // 2
            fill(self.blobs[0], p.weight_filler)
            if self.bias_term:
                fill(self.blobs[1], p.bias_filler)
            for blob in self.blobs[:half]:
                blob.data *= blob.dtype.type(1.0 / np.sqrt(wshape[1]))
            for blob in self.blobs[half:]:
                blob.data[...] = p.sigma_init / np.sqrt(blob.shape[1] if len(blob.shape) == 2 else blob.shape[0])
        self.param_propagate_down = [True] * len(self.blobs)

    def reset_noise(self) -> None:
        """Draws new noise eps, uniform in [-1, 1] and one value per weight and bias element (MyCaffe's
        ResetNoise: independent, not NoisyNet's factorised Gaussian), from pcn's generator."""
        half = len(self.blobs) // 2
        self.epsilon = [self.blobs[i].xp.asarray(rng().uniform(-1.0, 1.0, self.blobs[i].shape)
                                                 .astype(self.blobs[i].dtype)) for i in range(half)]

    def _noisy(self) -> bool:
        return self.enable_noise and self.phase == TRAIN

    def _effective(self):
        """The weight and bias a TRAIN forward computes with: mu + sigma * eps."""
        half = len(self.blobs) // 2
        return [self.blobs[i].data + self.blobs[half + i].data * self.epsilon[i] for i in range(half)]

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
        x = bottom[0].data.reshape(self.m, self.k)
        if self._noisy():
            if self.resample_noise:
                self.reset_noise()
            params = self._effective()
        else:
            params = [blob.data for blob in self.blobs[:2 if self.bias_term else 1]]
        w = params[0]
        y = top[0].data.reshape(self.m, self.num_output)
        _product(x, w if self.transpose else w.T, y)
        if self.bias_term:
            y += params[1]

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff.reshape(self.m, self.num_output)
        x = bottom[0].data.reshape(self.m, self.k)
        if self._noisy():
            self._noisy_backward(dy, x, propagate_down, bottom)
            return
        if self.param_propagate_down[0]:
            if self.transpose:
                _add_product(self.blobs[0].diff, x.T, dy)
            else:
                _add_product(self.blobs[0].diff, dy.T, x)
        if self.bias_term and self.param_propagate_down[1]:
            self.blobs[1].diff += dy.sum(axis=0)
        if propagate_down[0]:
            w = self.blobs[0].data
            _product(dy, w.T if self.transpose else w, bottom[0].diff.reshape(self.m, self.k))

    def _noisy_backward(self, dy, x, propagate_down, bottom) -> None:
        """TRAIN with noise: dW and dsigma_W = dW_eff * eps (likewise the bias), dx = dy W_eff. MyCaffe sets
        sigma's diff to the weight's whole accumulated diff times eps and computes dx with W alone; pcn takes the
        exact gradients of its forward (the same when the diffs start at zero, as with iter_size 1, except dx)."""
        half = len(self.blobs) // 2
        grads = [(x.T @ dy) if self.transpose else (dy.T @ x)] + ([dy.sum(axis=0)] if self.bias_term else [])
        for i, g in enumerate(grads):
            if self.param_propagate_down[i]:
                self.blobs[i].diff += g
            if self.param_propagate_down[half + i]:
                self.blobs[half + i].diff += g * self.epsilon[i]
        if propagate_down[0]:
            w = self._effective()[0]
            bottom[0].xp.matmul(dy, w.T if self.transpose else w, out=bottom[0].diff.reshape(self.m, self.k))


def _product(a, b, out) -> None:
    """``out[...] = a @ b``; NumPy's split over the thread pool (BLAS runs single-threaded inside a net pass)."""
    if isinstance(out, np.ndarray):
        parallel.matmul(a, b, out)
    else:
        backend.array_module(out).matmul(a, b, out=out)


def _add_product(out, a, b) -> None:
    """``out += a @ b`` in blocks of rows, so that the product's temporary stays small (CaffeNet's fc6 weight
    gradient would otherwise allocate a 151 MB array every iteration; Caffe's GEMM accumulates with beta = 1).
    The blocks of NumPy arrays run on the thread pool, each with its thread's temporary."""
    xp = backend.array_module(out)

    def rows(r0, r1):
        tmp = shared_workspace().get("ip_product", (r1 - r0, b.shape[1]), out.dtype, xp)
        xp.matmul(a[r0:r1], b, out=tmp)
        out[r0:r1] += tmp

    parallel.over_batch(a.shape[0], rows, out.size + a.size + b.size, xp is np, _PRODUCT_BLOCK)


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
