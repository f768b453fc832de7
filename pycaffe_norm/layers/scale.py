"""Scale and Bias layers (Caffe's ``ScaleLayer`` and ``BiasLayer``).

Both broadcast a parameter (a learned blob, or a second bottom) over ``bottom[0]``: the parameter's shape must
equal ``bottom[0].shape[axis : axis + param.ndim]``; a scalar parameter (shape ``()``) applies everywhere.
"""
from __future__ import annotations

from typing import List, Tuple

from ..blob import Blob
from ..errors import NetError
from ..fillers import fill
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


def _reduce_outer_inner(xp, a, outer: int, dim: int, inner: int):
    """Sum of an (outer*dim*inner) array over the outer and inner axes -> (dim,)."""
    a = a.reshape(outer, dim, inner)
    if inner > 1:
        a = a.sum(axis=2)
    else:
        a = a[:, :, 0]
    return a.sum(axis=0) if outer > 1 else a[0]


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
        outer, dim, inner = self._dims
        b = (bottom[1] if len(bottom) > 1 else self.blobs[0]).data.reshape(1, dim, 1)
        x = bottom[0].data.reshape(outer, dim, inner)
        bottom[0].xp.add(x, b, out=top[0].data.reshape(outer, dim, inner))

    def backward(self, top: List[Blob], propagate_down: List[bool], bottom: List[Blob]) -> None:
        xp = bottom[0].xp
        dy = top[0].diff
        two = len(bottom) > 1
        if (two and propagate_down[1]) or (not two and self.param_propagate_down[0]):
            g = _reduce_outer_inner(xp, dy, *self._dims)
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
        # In place, the scale gradient needs the input that the output overwrites.
        self._x_saved = bottom[0].data.copy() if top[0] is bottom[0] else None
        outer, dim, inner = self._dims
        s = self._scale(bottom).data.reshape(1, dim, 1)
        y = top[0].data.reshape(outer, dim, inner)
        xp.multiply(bottom[0].data.reshape(outer, dim, inner), s, out=y)
        if self.bias_index is not None:
            bo, bd, bi = self._bias_dims
            yb = top[0].data.reshape(bo, bd, bi)
            yb += self.blobs[self.bias_index].data.reshape(1, bd, 1)

    def backward(self, top: List[Blob], propagate_down: List[bool], bottom: List[Blob]) -> None:
        xp = bottom[0].xp
        dy = top[0].diff
        two = len(bottom) > 1
        if self.bias_index is not None and self.param_propagate_down[self.bias_index]:
            bias = self.blobs[self.bias_index]
            bias.diff[...] += _reduce_outer_inner(xp, dy, *self._bias_dims).reshape(bias.shape)
        scale = self._scale(bottom)
        if (two and propagate_down[1]) or (not two and self.param_propagate_down[0]):
            x = self._x_saved if self._x_saved is not None else bottom[0].data
            g = _reduce_outer_inner(xp, dy * x, *self._dims).reshape(scale.shape)
            if two:
                scale.diff[...] = g
            else:
                scale.diff[...] += g
        if propagate_down[0]:
            outer, dim, inner = self._dims
            s = scale.data.reshape(1, dim, 1)
            d = bottom[0].diff.reshape(outer, dim, inner)
            xp.multiply(dy.reshape(outer, dim, inner), s, out=d)

