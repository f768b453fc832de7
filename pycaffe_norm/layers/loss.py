"""Softmax, the loss layers and Accuracy.

Loss layers write a scalar top (shape ``()``); backward reads the loss weight from ``top[0].diff``, which the
Net presets to the layer's loss_weight, exactly as Caffe does.
"""
from __future__ import annotations

import numpy as np

from ..blob import Blob
from ..errors import NetError, PcnError
from ..io.arrays import load_binaryproto
from ..proto import caffe_pb2
from . import cuda_kernels
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

    def read_normalization(self, default: int = _LP.VALID) -> None:
        """``default`` is the mode when neither field is set (SigmoidCrossEntropyLoss's is BATCH_SIZE)."""
        lp = self.layer_param.loss_param
        self.has_ignore_label = lp.HasField("ignore_label")
        self.ignore_label = int(lp.ignore_label)
        # The legacy bool only counts when the new enum is not given.
        if lp.HasField("normalization"):
            self.normalization = lp.normalization
        elif lp.HasField("normalize"):
            self.normalization = _LP.VALID if lp.normalize else _LP.BATCH_SIZE
        else:
            self.normalization = default

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

    axis_name = "softmax axis"

    def softmax_axis(self) -> int:
        return self.layer_param.softmax_param.axis

    def reshape(self, bottom, top):
        self.check_first_dims(bottom)
        try:
            self.axis = bottom[0].canonical_axis(self.softmax_axis())
        except ValueError as e:
            raise NetError("layer %r (%s): %s" % (self.name, self.type, e)) from None
        self.dims = _split_at(bottom[0], self.axis)
        outer, _, inner = self.dims
        if outer * inner != bottom[1].count:
            raise NetError("layer %r (%s): number of labels must match number of predictions: scores %s with %s %d "
                           "need %d labels, the label blob %s has %d"
                           % (self.name, self.type, bottom[0].shape, self.axis_name, self.axis, outer * inner,
                              bottom[1].shape, bottom[1].count))
        self.prob.reshape(bottom[0].shape)
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape(bottom[0].shape)

    def softmax_and_labels(self, bottom):
        """Softmax into ``self.prob``; keeps the labels (ignored ones as 0) and their validity; returns prob3."""
        xp = bottom[0].xp
        outer, channels, inner = self.dims
        prob3 = self.prob.data.reshape(self.dims)
        softmax_into(bottom[0].data.reshape(self.dims), prob3, xp)
        lab = self.labels(bottom[1], (outer, inner))
        valid = self.valid_mask(lab, xp)
        self.check_label_range(lab, valid, channels, xp)
        self._lab = xp.where(valid, lab, 0)
        self._valid = valid
        return prob3

    def set_loss(self, top, loss) -> None:
        """Normalises ``loss`` as ``loss_param`` says and writes the tops (loss, and probabilities if asked)."""
        outer, _, inner = self.dims
        valid = self._valid
        count = valid.sum().astype(self.prob.dtype) if self.normalization == _LP.VALID else int(valid.size)
        self._normalizer = self.normalizer(outer, inner, count)
        top[0].data[...] = loss / self._normalizer
        if len(top) > 1:
            top[1].data[...] = self.prob.data

    def forward(self, bottom, top):
        xp = bottom[0].xp
        if cuda_kernels.enabled(xp):  # losses and counts in one launch, no host sync (a bad label: NaN loss)
            return cuda_kernels.softmax_loss_forward(self, bottom, top)
        prob3 = self.softmax_and_labels(bottom)
        p = xp.take_along_axis(prob3, self._lab[:, None, :], axis=1)[:, 0, :]
        logp = xp.log(xp.maximum(p, p.dtype.type(_FLT_MIN)))
        self.set_loss(top, -xp.where(self._valid, logp, 0).sum(dtype=prob3.dtype))

    def backward(self, top, propagate_down, bottom):
        self.refuse_label_gradient(propagate_down)
        if not propagate_down[0]:
            return
        xp = bottom[0].xp
        if cuda_kernels.enabled(xp):
            return cuda_kernels.softmax_loss_backward(self, top, bottom)
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
    as in SoftmaxWithLoss, but with Caffe's default BATCH_SIZE when neither normalization field is set."""

    def setup(self, bottom, top):
        self.read_normalization(default=_LP.BATCH_SIZE)

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


@register("HingeLoss")
class HingeLossLayer(LossLayer):
    """One-vs-all hinge loss on scores (N, C...): d = max(0, 1 + s x) with s = -1 at the label, +1 elsewhere;
    loss = sum(d) / N (L1, default) or sum(d^2) / N (L2)."""

    def setup(self, bottom, top):
        self.has_ignore_label = False
        self.norm = self.layer_param.hinge_loss_param.norm
        if self.norm not in (caffe_pb2.HingeLossParameter.L1, caffe_pb2.HingeLossParameter.L2):
            raise NetError("layer %r (HingeLoss): unknown norm %r" % (self.name, self.norm))

    def reshape(self, bottom, top):
        self.check_first_dims(bottom)
        if bottom[1].count_range(1) != 1:
            raise self.shape_error("label", bottom[1].shape, (bottom[0].shape[0],))
        top[0].reshape(())

    def forward(self, bottom, top):
        xp = bottom[0].xp
        num = bottom[0].shape[0]
        x = bottom[0].data.reshape(num, -1)
        lab = self.labels(bottom[1], (num,))
        self.check_label_range(lab, xp.ones(lab.shape, dtype=bool), x.shape[1], xp)
        sign = xp.ones_like(x)
        sign[xp.arange(num), lab] = -1
        d = xp.maximum(1 + sign * x, 0)
        self._sign, self._d = sign, d
        loss = d.sum() if self.norm == caffe_pb2.HingeLossParameter.L1 else (d * d).sum()
        top[0].data[...] = loss / num

    def backward(self, top, propagate_down, bottom):
        self.refuse_label_gradient(propagate_down)
        if not propagate_down[0]:
            return
        num = bottom[0].shape[0]
        if self.norm == caffe_pb2.HingeLossParameter.L1:
            g = self._sign * (self._d > 0)  # Caffe's sign(s d), d >= 0
        else:
            g = 2 * self._sign * self._d
        bottom[0].diff.reshape(num, -1)[...] = g * (top[0].diff / num)


@register("InfogainLoss")
class InfogainLossLayer(SoftmaxWithLossLayer):
    """SoftmaxWithLoss generalised by an infogain matrix H (C x C): the loss of an item with label y is
    -sum_l H[y, l] log(max(p_l, 1e-20)), p = softmax along ``infogain_loss_param.axis``. H comes from a third
    bottom or from the ``source`` .binaryproto. ignore_label and normalization (default VALID) as in
    SoftmaxWithLoss; an optional second top receives the probabilities. H = identity gives SoftmaxWithLoss."""

    exact_num_bottom = None
    min_bottom = 2
    max_bottom = 3

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index == 0

    def setup(self, bottom, top):
        lp = self.layer_param.loss_param
        if lp.HasField("normalize"):
            raise NetError("layer %r (InfogainLoss): loss_param.normalize is deprecated and refused by Caffe's "
                           "InfogainLoss; use loss_param.normalization" % self.name)
        self.read_normalization()
        self.H = None
        if len(bottom) < 3:
            p = self.layer_param.infogain_loss_param
            if not p.HasField("source"):
                raise NetError("layer %r (InfogainLoss): give the infogain matrix as a third bottom or as "
                               "infogain_loss_param.source (a .binaryproto file)" % self.name)
            try:
                H = load_binaryproto(p.source)
            except PcnError as e:  # name the layer and field, not only the file
                raise NetError("layer %r (InfogainLoss): infogain_loss_param.source: %s" % (self.name, e)) from None
            self.H = bottom[0].xp.asarray(H, dtype=bottom[0].dtype)
        self.prob = Blob(bottom[0].shape, dtype=bottom[0].dtype, xp=bottom[0].xp)

    def _matrix(self, bottom):
        return bottom[2].data if len(bottom) > 2 else self.H

    axis_name = "infogain axis"

    def softmax_axis(self) -> int:
        return self.layer_param.infogain_loss_param.axis

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        channels = self.dims[1]
        H = self._matrix(bottom)
        if H.size != channels * channels:
            raise self.shape_error("infogain matrix (%d labels along axis %d of %s)"
                                   % (channels, self.axis, bottom[0].shape), H.shape, (channels, channels))

    def forward(self, bottom, top):
        xp = bottom[0].xp
        prob3 = self.softmax_and_labels(bottom)
        channels = self.dims[1]
        H = self._matrix(bottom).reshape(channels, channels)
        self._Hy = H[self._lab].transpose(0, 2, 1)  # (outer, channels, inner): row H[y] of each item
        logp = xp.log(xp.maximum(prob3, prob3.dtype.type(_LOG_THRESHOLD)))
        self.set_loss(top, -(self._Hy * logp * self._valid[:, None, :]).sum())

    def backward(self, top, propagate_down, bottom):
        self.refuse_label_gradient(propagate_down)
        if len(propagate_down) > 2 and propagate_down[2]:
            raise NetError("layer %r (InfogainLoss) cannot backpropagate to the infogain matrix" % self.name)
        if not propagate_down[0]:
            return
        channels = self.dims[1]
        row_sums = self._matrix(bottom).reshape(channels, channels).sum(axis=1)
        dx = bottom[0].diff.reshape(self.dims)
        dx[...] = self.prob.data.reshape(self.dims) * row_sums[self._lab][:, None, :] - self._Hy
        if self.has_ignore_label:
            dx *= self._valid[:, None, :]
        dx *= top[0].diff / self._normalizer


@register("ContrastiveLoss")
class ContrastiveLossLayer(LossLayer):
    """Siamese loss on feature pairs a, b (N, C) and similarity y (N): sum_n [y_n d_n^2 + (1 - y_n)
    max(margin - d_n, 0)^2] / 2N with d = ||a - b||; ``legacy_version`` uses max(margin - d^2, 0) instead.
    The dissimilar-pair gradient divides by d + 1e-4, as Caffe's."""

    exact_num_bottom = 3

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != 2

    def setup(self, bottom, top):
        p = self.layer_param.contrastive_loss_param
        self.margin = float(p.margin)
        self.legacy = bool(p.legacy_version)

    def reshape(self, bottom, top):
        self.check_first_dims(bottom)
        a, b, y = bottom
        num = a.shape[0]
        if a.num_axes < 2 or a.count_range(2) != 1:
            raise self.shape_error("bottom 0 (features must be (N, C) or (N, C, 1, 1))", a.shape, (num, "C"))
        if b.shape[1:] != a.shape[1:]:
            raise self.shape_error("bottom 1 (must match bottom 0)", b.shape, a.shape)
        if y.num_axes < 1 or y.shape[0] != num or y.count_range(1) != 1:
            raise self.shape_error("bottom 2 (one similarity label per pair)", y.shape, (num,))
        top[0].reshape(())

    def forward(self, bottom, top):
        xp = bottom[0].xp
        num = bottom[0].shape[0]
        self._diff = (bottom[0].data - bottom[1].data).reshape(num, -1)
        self._dist_sq = (self._diff * self._diff).sum(axis=1)
        self._similar = bottom[2].data.reshape(num).astype(np.int64) != 0  # Caffe's static_cast<int>
        if self.legacy:
            apart = xp.maximum(self.margin - self._dist_sq, 0)
        else:
            apart = xp.maximum(self.margin - xp.sqrt(self._dist_sq), 0) ** 2
        loss = xp.where(self._similar, self._dist_sq, apart).sum()
        top[0].data[...] = loss / num / 2

    def backward(self, top, propagate_down, bottom):
        if propagate_down[2]:
            raise NetError("layer %r (ContrastiveLoss) cannot backpropagate to the similarity labels" % self.name)
        xp = bottom[0].xp
        num = bottom[0].shape[0]
        if self.legacy:
            mdist = self.margin - self._dist_sq
            apart = -1.0
        else:
            dist = xp.sqrt(self._dist_sq)
            mdist = self.margin - dist
            apart = -mdist / (dist + 1e-4)
        # per-pair coefficient of (a - b), before the sign and loss-weight factor alpha
        coef = xp.where(self._similar, 1.0, xp.where(mdist > 0, apart, 0.0))
        for i, sign in ((0, 1), (1, -1)):
            if propagate_down[i]:
                alpha = top[0].diff * sign / num
                bottom[i].diff.reshape(num, -1)[...] = (coef * alpha)[:, None] * self._diff
