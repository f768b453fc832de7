"""Softmax, the loss layers and Accuracy.

Loss layers write a scalar top (shape ``()``); backward reads the loss weight from ``top[0].diff``, which the
Net presets to the layer's loss_weight, exactly as Caffe does.
"""
from __future__ import annotations

import numpy as np

from ..blob import Blob
from ..errors import NetError
from ..proto import caffe_pb2
from .base import Layer, register

_LP = caffe_pb2.LossParameter
# Caffe clips probabilities at FLT_MIN before the log, whatever the blob dtype.
_FLT_MIN = float(np.finfo(np.float32).tiny)
_LOG_THRESHOLD = 1e-20  # MultinomialLogisticLoss's clip


def softmax_into(x3, y3, xp) -> None:
    """Stable softmax over axis 1 of a (outer, channels, inner) array, written into ``y3`` (may alias ``x3``)."""
    m = x3.max(axis=1, keepdims=True)
    xp.subtract(x3, m, out=y3)
    xp.exp(y3, out=y3)
    y3 /= y3.sum(axis=1, keepdims=True)


def _split_at(blob: Blob, axis: int):
    """(outer, channels, inner) of ``blob`` around ``axis``."""
    return blob.count_range(0, axis), blob.shape[axis], blob.count_range(axis + 1)


@register("Softmax")
class SoftmaxLayer(Layer):
    """y = exp(x - max) / sum(exp(x - max)) along ``softmax_param.axis`` (default 1)."""

    backward_reads_top = True

    exact_num_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom, top):
        try:
            self.axis = bottom[0].canonical_axis(self.layer_param.softmax_param.axis)
        except ValueError as e:
            raise NetError("layer %r (Softmax): %s" % (self.name, e)) from None
        self.dims = _split_at(bottom[0], self.axis)
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        softmax_into(bottom[0].data.reshape(self.dims), top[0].data.reshape(self.dims), bottom[0].xp)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = bottom[0].xp
        y = top[0].data.reshape(self.dims)
        dy = top[0].diff.reshape(self.dims)
        dot = (dy * y).sum(axis=1, keepdims=True)  # before the write: the diffs alias when in place
        dx = bottom[0].diff.reshape(self.dims)
        xp.subtract(dy, dot, out=dx)
        dx *= y


class LossLayer(Layer):
    """Caffe's LossLayer: two bottoms of equal first dimension, a scalar top, no gradient to the labels."""

    exact_num_bottom = 2
    exact_num_top = 1
    is_loss = True
    allow_in_place = False

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != 1

    def check_first_dims(self, bottom) -> None:
        a, b = bottom[0].shape, bottom[1].shape
        if not a or not b or a[0] != b[0]:
            raise NetError("layer %r (%s): the data and label should have the same first dimension, got %s and %s"
                           % (self.name, self.type, a, b))

    def refuse_label_gradient(self, propagate_down) -> None:
        if len(propagate_down) > 1 and propagate_down[1]:
            raise NetError("layer %r (%s) cannot backpropagate to label inputs" % (self.name, self.type))

    def read_normalization(self) -> None:
        lp = self.layer_param.loss_param
        self.has_ignore_label = lp.HasField("ignore_label")
        self.ignore_label = int(lp.ignore_label)
        # The legacy bool only counts when the new enum is not given.
        if not lp.HasField("normalization") and lp.HasField("normalize"):
            self.normalization = _LP.VALID if lp.normalize else _LP.BATCH_SIZE
        else:
            self.normalization = lp.normalization

    def normalizer(self, outer: int, inner: int, valid_count):
        """Caffe's get_normalizer, floored at 1. ``valid_count`` may be a device scalar (VALID mode)."""
        mode = self.normalization
        if mode == _LP.FULL:
            return float(max(1, outer * inner))
        if mode == _LP.VALID:
            return valid_count.clip(1, None) if hasattr(valid_count, "clip") else float(max(1, valid_count))
        if mode == _LP.BATCH_SIZE:
            return float(max(1, outer))
        if mode == _LP.NONE:
            return 1.0
        raise NetError("layer %r (%s): unknown normalization mode %r" % (self.name, self.type, mode))

    def labels(self, blob: Blob, shape):
        # Caffe casts label values with static_cast<int>, i.e. truncation toward zero.
        return blob.data.reshape(shape).astype(np.int64)

    def valid_mask(self, lab, xp):
        if self.has_ignore_label:
            return lab != self.ignore_label
        return xp.ones(lab.shape, dtype=bool)

    def check_label_range(self, lab, valid, n_classes: int, xp) -> None:
        bad = valid & ((lab < 0) | (lab >= n_classes))
        if bool(bad.any()):
            value = int(lab[bad].reshape(-1)[0])
            raise NetError("layer %r (%s): label value %d is outside [0, %d)%s"
                           % (self.name, self.type, value, n_classes,
                              "" if self.has_ignore_label else " (no ignore_label is set)"))


@register("SoftmaxWithLoss")
class SoftmaxWithLossLayer(LossLayer):
    """Softmax over ``softmax_param.axis`` followed by the multinomial logistic loss of the labels.

    Labels have outer x inner elements (e.g. N x H x W for (N, C, H, W) scores at axis 1). An optional second
    top receives the probabilities.
    """

    exact_num_top = None
    min_top = 1
    max_top = 2

    def setup(self, bottom, top):
        self.read_normalization()
        self.prob = Blob(bottom[0].shape, dtype=bottom[0].dtype, xp=bottom[0].xp)

    def reshape(self, bottom, top):
        self.check_first_dims(bottom)
        try:
            self.axis = bottom[0].canonical_axis(self.layer_param.softmax_param.axis)
        except ValueError as e:
            raise NetError("layer %r (SoftmaxWithLoss): %s" % (self.name, e)) from None
        self.dims = _split_at(bottom[0], self.axis)
        outer, _, inner = self.dims
        if outer * inner != bottom[1].count:
            raise NetError("layer %r (SoftmaxWithLoss): number of labels must match number of predictions: scores "
                           "%s with softmax axis %d need %d labels, the label blob %s has %d"
                           % (self.name, bottom[0].shape, self.axis, outer * inner, bottom[1].shape,
                              bottom[1].count))
        self.prob.reshape(bottom[0].shape)
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        xp = bottom[0].xp
        outer, channels, inner = self.dims
        prob3 = self.prob.data.reshape(self.dims)
        softmax_into(bottom[0].data.reshape(self.dims), prob3, xp)
        lab = self.labels(bottom[1], (outer, inner))
        valid = self.valid_mask(lab, xp)
        self.check_label_range(lab, valid, channels, xp)
        self._lab = xp.where(valid, lab, 0)
        self._valid = valid
        p = xp.take_along_axis(prob3, self._lab[:, None, :], axis=1)[:, 0, :]
        logp = xp.log(xp.maximum(p, p.dtype.type(_FLT_MIN)))
        loss = -xp.where(valid, logp, 0).sum(dtype=prob3.dtype)
        count = valid.sum().astype(prob3.dtype) if self.normalization == _LP.VALID else int(lab.size)
        self._normalizer = self.normalizer(outer, inner, count)
        top[0].data[...] = loss / self._normalizer
        if len(top) > 1:
            top[1].data[...] = self.prob.data

    def backward(self, top, propagate_down, bottom):
        self.refuse_label_gradient(propagate_down)
        if not propagate_down[0]:
            return
        xp = bottom[0].xp
        outer, _, inner = self.dims
        dx = bottom[0].diff.reshape(self.dims)
        dx[...] = self.prob.data.reshape(self.dims)
        dx[xp.arange(outer)[:, None], self._lab, xp.arange(inner)[None, :]] -= 1
        if self.has_ignore_label:
            dx *= self._valid[:, None, :]
        dx *= top[0].diff / self._normalizer


@register("EuclideanLoss")
class EuclideanLossLayer(LossLayer):
    """loss = sum((a - b)^2) / (2 N); both bottoms get gradients."""

    def allow_force_backward(self, bottom_index: int) -> bool:
        return True

    def reshape(self, bottom, top):
        self.check_first_dims(bottom)
        if bottom[0].count_range(1) != bottom[1].count_range(1):
            raise NetError("layer %r (EuclideanLoss): inputs must have the same dimension, got %s and %s"
                           % (self.name, bottom[0].shape, bottom[1].shape))
        top[0].reshape(())

    def forward(self, bottom, top):
        self._diff = bottom[0].data - bottom[1].data.reshape(bottom[0].shape)
        d = self._diff.reshape(-1)
        top[0].data[...] = d.dot(d) / bottom[0].shape[0] / 2

    def backward(self, top, propagate_down, bottom):
        for i, sign in ((0, 1), (1, -1)):
            if propagate_down[i]:
                alpha = top[0].diff * sign / bottom[0].shape[0]
                bottom[i].diff[...] = (self._diff * alpha).reshape(bottom[i].shape)


@register("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLossLayer(LossLayer):
    """Cross entropy of sigmoid(x) against targets in [0, 1], computed stably; ignore_label and normalization
    as in SoftmaxWithLoss (default VALID)."""

    def setup(self, bottom, top):
        self.read_normalization()

    def reshape(self, bottom, top):
        self.check_first_dims(bottom)
        if bottom[0].count != bottom[1].count:
            raise NetError("layer %r (SigmoidCrossEntropyLoss): inputs must have the same count, got %s and %s"
                           % (self.name, bottom[0].shape, bottom[1].shape))
        self.outer = bottom[0].shape[0]
        self.inner = bottom[0].count_range(1)
        top[0].reshape(())

    def forward(self, bottom, top):
        xp = bottom[0].xp
        x = bottom[0].data
        t = bottom[1].data.reshape(x.shape)
        self._sig = 0.5 * xp.tanh(0.5 * x) + 0.5
        pos = (x >= 0).astype(x.dtype)
        # -[x (t - [x >= 0]) - log(1 + exp(x - 2 x [x >= 0]))]: no overflow for either sign of x.
        elem = x * (t - pos) - xp.log(1 + xp.exp(x - 2 * x * pos))
        self._valid = None
        if self.has_ignore_label:
            self._valid = t.astype(np.int64) != self.ignore_label
            elem = xp.where(self._valid, elem, 0)
            count = self._valid.sum().astype(x.dtype)
        else:
            count = int(x.size)
        self._normalizer = self.normalizer(self.outer, self.inner, count)
        top[0].data[...] = -elem.sum() / self._normalizer

    def backward(self, top, propagate_down, bottom):
        self.refuse_label_gradient(propagate_down)
        if not propagate_down[0]:
            return
        dx = bottom[0].diff
        bottom[0].xp.subtract(self._sig, bottom[1].data.reshape(dx.shape), out=dx)
        if self._valid is not None:
            dx *= self._valid
        dx *= top[0].diff / self._normalizer


@register("MultinomialLogisticLoss")
class MultinomialLogisticLossLayer(LossLayer):
    """loss = -sum_n log(max(p[n, label_n], 1e-20)) / N on probabilities (N, C) (or (N, C, 1, 1))."""

    def reshape(self, bottom, top):
        self.check_first_dims(bottom)
        if bottom[1].count_range(1) != 1:
            raise self.shape_error("label", bottom[1].shape, (bottom[0].shape[0],))
        top[0].reshape(())

    def _gather(self, bottom):
        xp = bottom[0].xp
        num = bottom[0].shape[0]
        p2 = bottom[0].data.reshape(num, -1)
        lab = self.labels(bottom[1], (num,))
        self.check_label_range(lab, xp.ones(lab.shape, dtype=bool), p2.shape[1], xp)
        p = p2[xp.arange(num), lab]
        return lab, xp.maximum(p, p.dtype.type(_LOG_THRESHOLD))

    def setup(self, bottom, top):
        self.has_ignore_label = False

    def forward(self, bottom, top):
        _, p = self._gather(bottom)
        top[0].data[...] = -bottom[0].xp.log(p).sum() / bottom[0].shape[0]

    def backward(self, top, propagate_down, bottom):
        self.refuse_label_gradient(propagate_down)
        if not propagate_down[0]:
            return
        xp = bottom[0].xp
        num = bottom[0].shape[0]
        lab, p = self._gather(bottom)
        dx = bottom[0].diff.reshape(num, -1)
        dx[...] = 0
        dx[xp.arange(num), lab] = (-top[0].diff / num) / p


@register("Accuracy")
class AccuracyLayer(Layer):
    """Top-k accuracy along ``axis``; a prediction ties with the true class count against it, as in Caffe.

    The optional second top holds the per-class accuracy. No backward.
    """

    exact_num_bottom = 2
    min_top = 1
    max_top = 2
    allow_in_place = False

    def setup(self, bottom, top):
        ap = self.layer_param.accuracy_param
        self.top_k = int(ap.top_k)
        self.has_ignore_label = ap.HasField("ignore_label")
        self.ignore_label = int(ap.ignore_label)

    def allow_force_backward(self, bottom_index: int) -> bool:
        return False

    def reshape(self, bottom, top):
        if bottom[1].count == 0 or self.top_k > bottom[0].count // bottom[1].count:
            raise NetError("layer %r (Accuracy): top_k %d must be at most the number of classes (%d)"
                           % (self.name, self.top_k, bottom[0].count // max(bottom[1].count, 1)))
        try:
            self.axis = bottom[0].canonical_axis(self.layer_param.accuracy_param.axis)
        except ValueError as e:
            raise NetError("layer %r (Accuracy): %s" % (self.name, e)) from None
        self.dims = _split_at(bottom[0], self.axis)
        outer, channels, inner = self.dims
        if outer * inner != bottom[1].count:
            raise NetError("layer %r (Accuracy): number of labels must match number of predictions: scores %s "
                           "with label axis %d need %d labels, the label blob %s has %d"
                           % (self.name, bottom[0].shape, self.axis, outer * inner, bottom[1].shape,
                              bottom[1].count))
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape((channels,))

    def forward(self, bottom, top):
        xp = bottom[0].xp
        outer, channels, inner = self.dims
        x3 = bottom[0].data.reshape(self.dims)
        lab = bottom[1].data.reshape(outer, inner).astype(np.int64)
        valid = lab != self.ignore_label if self.has_ignore_label else xp.ones(lab.shape, dtype=bool)
        bad = valid & ((lab < 0) | (lab >= channels))
        if bool(bad.any()):
            raise NetError("layer %r (Accuracy): label value %d is outside [0, %d)"
                           % (self.name, int(lab[bad].reshape(-1)[0]), channels))
        safe = xp.where(valid, lab, 0)
        true_score = xp.take_along_axis(x3, safe[:, None, :], axis=1)
        # Caffe counts the classes scoring >= the true class (itself included): correct when <= top_k.
        n_ge = (x3 >= true_score).sum(axis=1)
        correct = valid & (n_ge <= self.top_k)
        count = int(valid.sum())
        top[0].data[...] = 0 if count == 0 else float(correct.sum()) / count
        if len(top) > 1:
            lab_v = safe[valid]
            totals = xp.bincount(lab_v, minlength=channels)
            hits = xp.bincount(safe[correct], minlength=channels)
            top[1].data[...] = xp.where(totals > 0, hits / xp.maximum(totals, 1), 0)
