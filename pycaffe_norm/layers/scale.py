"""Scale and Bias layers (Caffe's ``ScaleLayer`` and ``BiasLayer``).

Both broadcast a parameter (a learned blob, or a second bottom) over ``bottom[0]``: the parameter's shape must
equal ``bottom[0].shape[axis : axis + param.ndim]``; a scalar parameter (shape ``()``) applies everywhere.
"""
from __future__ import annotations

from typing import List, Tuple

from ..blob import Blob
from ..errors import NetError
from ..fillers import fill
from . import per_channel as pc
from .base import Layer, register


def _param_shape(layer: Layer, bottom: Blob, axis: int, num_axes: int) -> Tuple[int, ...]:
    """Shape of a learned scale/bias blob: ``num_axes`` axes of bottom[0] from ``axis`` (-1: to the end)."""
    if num_axes < -1:
        raise NetError("layer %r (%s): num_axes must be >= 0, or -1 to extend to the end of bottom[0]; got %d"
                       % (layer.name, layer.type, num_axes))
    try:
        axis = bottom.canonical_axis(axis)
    except ValueError as e:
        raise NetError("layer %r (%s): %s" % (layer.name, layer.type, e)) from None
    end = bottom.num_axes if num_axes == -1 else axis + num_axes
    if end > bottom.num_axes:
        raise NetError("layer %r (%s): a parameter of %d axes from axis %d extends past bottom[0]'s shape %s"
                       % (layer.name, layer.type, num_axes, axis, bottom.shape))
    return tuple(bottom.shape[axis:end])


def _broadcast_dims(layer: Layer, bottom: Blob, param_shape: tuple, axis: int, what: str) -> Tuple[int, int, int]:
    """(outer, dim, inner) so that bottom reshaped to (outer, dim, inner) lines up with the parameter."""
    if len(param_shape) == 0:
        return 1, 1, bottom.count     # a scalar applies everywhere, whatever the axis
    try:
        axis = bottom.canonical_axis(axis)
    except ValueError as e:
        raise NetError("layer %r (%s): %s" % (layer.name, layer.type, e)) from None
    expected = tuple(bottom.shape[axis:axis + len(param_shape)])
    if axis + len(param_shape) > bottom.num_axes or expected != tuple(param_shape):
        raise layer.shape_error("%s (applied at bottom[0] axis %d of shape %s)" % (what, axis, bottom.shape),
                                param_shape, expected)
    outer = bottom.count_range(0, axis)
    dim = int(bottom.count_range(axis, axis + len(param_shape)))
    return outer, dim, bottom.count_range(axis + len(param_shape))


def _broadcast(xp, op, x, v, dims, out) -> None:
    """``out = op(x, v)`` with ``v`` (dim,) broadcast over the outer and inner axes of (outer, dim, inner) arrays,
    along long rows (``per_channel.rows``)."""
    outer, dim, inner = dims
    xr, outr = pc.rows(x.reshape(dims)), pc.rows(out.reshape(dims))
    op(xr, pc.channel_row(xp, v.reshape(dim), inner, xr.shape[1]), out=outr)


@register("Bias")
class BiasLayer(Layer):
    """``top = bottom[0] + b`` with ``b`` a learned blob (``bias_param``) or ``bottom[1]``."""

    min_bottom = 1
    max_bottom = 2
    exact_num_top = 1

    def setup(self, bottom: List[Blob], top: List[Blob]) -> None:
        p = self.layer_param.bias_param
        if len(bottom) == 1 and not self.blobs:
            shape = _param_shape(self, bottom[0], p.axis, p.num_axes)
            blob = Blob(shape, dtype=bottom[0].dtype, xp=bottom[0].xp)
            fill(blob, p.filler)    # an unset filler is constant 0
            self.blobs.append(blob)
        self.param_propagate_down = [True] * len(self.blobs)

    def reshape(self, bottom: List[Blob], top: List[Blob]) -> None:
        b = bottom[1] if len(bottom) > 1 else self.blobs[0]
        self._dims = _broadcast_dims(self, bottom[0], b.shape, self.layer_param.bias_param.axis, "bias")
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def forward(self, bottom: List[Blob], top: List[Blob]) -> None:
        xp = bottom[0].xp
        b = bottom[1] if len(bottom) > 1 else self.blobs[0]
        _broadcast(xp, xp.add, bottom[0].data, b.data, self._dims, top[0].data)

    def backward(self, top: List[Blob], propagate_down: List[bool], bottom: List[Blob]) -> None:
        xp = bottom[0].xp
        dy = top[0].diff
        two = len(bottom) > 1
        if (two and propagate_down[1]) or (not two and self.param_propagate_down[0]):
            g = pc.channel_sum(xp, dy.reshape(self._dims))
            if two:
                bottom[1].diff[...] = g.reshape(bottom[1].shape)
            else:
                self.blobs[0].diff[...] += g.reshape(self.blobs[0].shape)
        if propagate_down[0] and bottom[0] is not top[0]:
            bottom[0].diff[...] = dy


@register("Scale")
class ScaleLayer(Layer):
    """``top = bottom[0] * s (+ b)`` with ``s`` a learned blob (``scale_param``) or ``bottom[1]``.

    With ``bias_term`` the bias blob is ``blobs[1]`` (one bottom) or ``blobs[0]`` (two bottoms), as in Caffe.
    """

    min_bottom = 1
    max_bottom = 2
    exact_num_top = 1

    def setup(self, bottom: List[Blob], top: List[Blob]) -> None:
        p = self.layer_param.scale_param
        two = len(bottom) > 1
        preloaded = len(self.blobs)
        if not two and preloaded == 0:
            shape = _param_shape(self, bottom[0], p.axis, p.num_axes)
            blob = Blob(shape, dtype=bottom[0].dtype, xp=bottom[0].xp)
            if p.HasField("filler"):
                fill(blob, p.filler)
            else:
                blob.data[...] = 1      # identity by default
            self.blobs.append(blob)
        self.bias_index = None
        if p.bias_term:
            if len(self.blobs) + len(bottom) < 3:
                num_axes = bottom[1].num_axes if two else p.num_axes
                shape = _param_shape(self, bottom[0], p.axis, num_axes)
                blob = Blob(shape, dtype=bottom[0].dtype, xp=bottom[0].xp)
                fill(blob, p.bias_filler)
                self.blobs.append(blob)
            self.bias_index = len(self.blobs) - 1
        expected = (0 if two else 1) + (1 if p.bias_term else 0)
        if len(self.blobs) != expected:
            raise NetError("layer %r (Scale): has %d parameter blobs, expected %d (scale from %s, bias_term %s)"
                           % (self.name, len(self.blobs), expected, "bottom[1]" if two else "a blob", p.bias_term))
        self.param_propagate_down = [True] * len(self.blobs)

    def _scale(self, bottom: List[Blob]) -> Blob:
        return bottom[1] if len(bottom) > 1 else self.blobs[0]

    def reshape(self, bottom: List[Blob], top: List[Blob]) -> None:
        p = self.layer_param.scale_param
        self._dims = _broadcast_dims(self, bottom[0], self._scale(bottom).shape, p.axis, "scale")
        if self.bias_index is not None:
            self._bias_dims = _broadcast_dims(self, bottom[0], self.blobs[self.bias_index].shape, p.axis, "bias")
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def forward(self, bottom: List[Blob], top: List[Blob]) -> None:
        xp = bottom[0].xp
        # In place, the scale gradient needs the input that the output overwrites (kept in a buffer, as Caffe's temp_).
        x = bottom[0].data
        self._x_saved = None
        if top[0] is bottom[0]:
            saved = getattr(self, "_x_buffer", None)
            if saved is None or saved.shape != x.shape or saved.dtype != x.dtype or type(saved) is not type(x):
                saved = self._x_buffer = xp.empty_like(x)
            saved[...] = x
            self._x_saved = saved
        _broadcast(xp, xp.multiply, x, self._scale(bottom).data, self._dims, top[0].data)
        if self.bias_index is not None:
            y = top[0].data
            _broadcast(xp, xp.add, y, self.blobs[self.bias_index].data, self._bias_dims, y)

    def backward(self, top: List[Blob], propagate_down: List[bool], bottom: List[Blob]) -> None:
        xp = bottom[0].xp
        dy = top[0].diff
        two = len(bottom) > 1
        if self.bias_index is not None and self.param_propagate_down[self.bias_index]:
            bias = self.blobs[self.bias_index]
            bias.diff[...] += pc.channel_sum(xp, dy.reshape(self._bias_dims)).reshape(bias.shape)
        scale = self._scale(bottom)
        if (two and propagate_down[1]) or (not two and self.param_propagate_down[0]):
            x = self._x_saved if self._x_saved is not None else bottom[0].data
            g = pc.channel_dot(xp, dy.reshape(self._dims), x.reshape(self._dims)).reshape(scale.shape)
            if two:
                scale.diff[...] = g
            else:
                scale.diff[...] += g
        if propagate_down[0]:
            _broadcast(xp, xp.multiply, dy, scale.data, self._dims, bottom[0].diff)

