"""MyCaffe's loss layers: TripletLoss and MemoryLoss (a loss computed by user code).

Both follow MyCaffe's C# layers (MyCaffe.layers.beta.TripletLossLayer, MyCaffe.layers.MemoryLossLayer): the same
bottoms, normalisation and gradients.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional

from ..blob import Blob
from ..errors import NetError
from ..proto import caffe_pb2
from .base import register
from .loss import LossLayer

_LP = caffe_pb2.LossParameter


@register("TripletLoss")
class TripletLossLayer(LossLayer):
    """loss = sum_n max(0, |a_n - p_n|^2 - |a_n - n_n|^2 + alpha) / 2N over (anchor, positive, negative, label).

    The label bottom is only carried (MyCaffe reads it for pre-generated targets, which its forward refuses, as
    does this layer: a fifth bottom of external targets is an error). Gradients, for active triplets only:
    d/da = (n - p) / N, d/dp = (p - a) / N, d/dn = (a - n) / N, times the loss weight.
    """

    exact_num_bottom = None
    min_bottom = 4
    max_bottom = 5

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index <= 2

    def setup(self, bottom, top):
        if len(bottom) == 5:
            raise NetError("layer %r (TripletLoss): a fifth bottom (external targets such as centroids) is not "
                           "supported, as in MyCaffe; give anchor, positive, negative and label" % self.name)
        self.alpha = float(self.layer_param.triplet_loss_param.alpha)

    def reshape(self, bottom, top):
        anchor = bottom[0]
        if anchor.num_axes < 1 or anchor.shape[0] < 1:
            raise self.shape_error("bottom 0 (anchor)", anchor.shape, ("N", "..."))
        for i, what in ((1, "positive"), (2, "negative")):
            if bottom[i].shape != anchor.shape:
                raise self.shape_error("bottom %d (%s, must match the anchor)" % (i, what), bottom[i].shape,
                                       anchor.shape)
        if bottom[3].shape[:1] != anchor.shape[:1]:
            raise self.shape_error("bottom 3 (label, one row per anchor)", bottom[3].shape, (anchor.shape[0], "..."))
        top[0].reshape(())

    def forward(self, bottom, top):
        xp = bottom[0].xp
        num = bottom[0].shape[0]
        a, p, n = (b.data.reshape(num, -1) for b in bottom[:3])
        d_ap = ((a - p) ** 2).sum(axis=1)
        d_an = ((a - n) ** 2).sum(axis=1)
        hinge = xp.maximum(d_ap - d_an + self.alpha, 0)
        self._active = (hinge > 0).astype(a.dtype)[:, None]
        top[0].data[...] = hinge.sum() / (2.0 * num)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[3] or (len(propagate_down) > 4 and propagate_down[4]):
            raise NetError("layer %r (TripletLoss) cannot backpropagate to the label" % self.name)
        num = bottom[0].shape[0]
        a, p, n = (b.data.reshape(num, -1) for b in bottom[:3])
        scale = self._active * (top[0].diff / num)
        for i, direction in ((0, lambda: n - p), (1, lambda: p - a), (2, lambda: a - n)):
            if propagate_down[i]:
                bottom[i].diff.reshape(num, -1)[...] = scale * direction()


class MemoryLossArgs:
    """What a MemoryLoss callback receives (MyCaffe's MemoryLossLayerGetLossArgs).

    ``bottom``: the layer's bottom blobs; ``user_state``: the layer's ``user_state``; ``normalizer``: the loss
    normalizer. The callback sets ``loss`` (before normalisation) and either leaves ``enable_loss_update`` True
    (MyCaffe's default gradient: each bottom's data times the loss) or writes its own gradient into
    ``bottom[i].diff`` and sets ``enable_loss_update = False``.
    """

    def __init__(self, bottom: List[Blob], user_state: Any, normalizer: float):
        self.bottom = bottom
        self.user_state = user_state
        self.normalizer = normalizer
        self.loss = 0.0
        self.enable_loss_update = True
        self.tag = None


LossCallback = Callable[[MemoryLossArgs], None]


@register("MemoryLoss")
class MemoryLossLayer(LossLayer):
    """A loss whose value and gradient come from user code, as MyCaffe's OnGetLoss event.

    Set ``net.layer_dict["loss"].on_get_loss = fn`` (or subclass and override :meth:`get_loss`); ``fn(args)``
    receives a :class:`MemoryLossArgs`. top = args.loss / normalizer. Backward, with ``enable_loss_update``
    (the default): bottom diff = bottom data * top, times the loss weight; without it: the diffs the callback
    wrote, times loss weight / normalizer. The normalizer follows loss_param (BATCH_SIZE by default, VALID and
    FULL count every element after axis 1); bottoms of unequal size per item use NONE, as in MyCaffe.
    """

    exact_num_bottom = None
    min_bottom = 1
    max_bottom = 2

    def __init__(self, param: caffe_pb2.LayerParameter, phase: int = caffe_pb2.TRAIN):
        super().__init__(param, phase)
        self.on_get_loss: Optional[LossCallback] = None
        self.user_state: Any = None
        self._enable_loss_update = True

    def allow_force_backward(self, bottom_index: int) -> bool:
        return True

    def setup(self, bottom, top):
        self.read_normalization(default=_LP.BATCH_SIZE)
        self._configured = self.normalization

    def reshape(self, bottom, top):
        if bottom[0].num_axes < 1:
            raise self.shape_error("bottom 0", bottom[0].shape, ("N", "..."))
        per_item = bottom[0].count_range(1)
        uniform = all(b.num_axes >= 1 and b.count_range(1) == per_item for b in bottom[1:])
        if uniform:
            self.normalization = self._configured
            self._outer, self._inner = bottom[0].shape[0], bottom[0].count_range(2)
        else:
            self.normalization, self._outer, self._inner = _LP.NONE, 0, 0
        top[0].reshape(())

    def get_loss(self, args: MemoryLossArgs) -> None:
        """Fills ``args.loss`` (and optionally the bottom diffs); calls ``on_get_loss`` unless overridden."""
        if self.on_get_loss is None:
            raise NetError("layer %r (MemoryLoss): no loss function is set; give it one with "
                           "net.layer_dict[%r].on_get_loss = fn (see docs/layers.md)" % (self.name, self.name))
        self.on_get_loss(args)

    def forward(self, bottom, top):
        normalizer = self.normalizer(self._outer, self._inner, self._outer * self._inner)
        args = MemoryLossArgs(bottom, self.user_state, normalizer)
        self.get_loss(args)
        self._enable_loss_update = bool(args.enable_loss_update)
        try:
            loss = float(args.loss)
        except (TypeError, ValueError):
            raise NetError("layer %r (MemoryLoss): the loss function set args.loss to %r, not a number"
                           % (self.name, args.loss)) from None
        top[0].data[...] = loss / normalizer

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        normalizer = self.normalizer(self._outer, self._inner, self._outer * self._inner)
        if self._enable_loss_update:
            loss = top[0].data.reshape(())
            for b in bottom:
                b.diff[...] = b.data * loss
            normalizer = 1.0
        weight = top[0].diff.reshape(()) / normalizer
        for b in bottom:
            b.diff[...] *= weight
