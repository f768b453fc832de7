"""Coordinate maps between the tops of a net_spec graph (pycaffe's ``caffe.coord_map``), used to crop and align
feature maps, as in fully convolutional nets.

A map is ``(axis, scale, shift)``: along each spatial axis after ``axis``, position ``i`` of the input corresponds
to position ``scale * i + shift`` of the output (``scale`` and ``shift`` are arrays, one entry per spatial axis, or
plain numbers). ``axis`` None means the map holds for any axis layout (an element-wise layer). Maps compose along a
path of layers, and ``coord_map_from_to`` relates two tops through their nearest common ancestor.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Dict, Optional, Tuple

import numpy as np

from .errors import PcnError
from .net_spec import Function, Top
from .net_spec import layers as L

CoordMap = Tuple[Optional[int], Any, Any]
IDENTITY: CoordMap = (None, 1, 0)

# Layers whose output position i is their input position i (element-wise, or combining equal-sized inputs).
PASS_THROUGH_LAYERS = ("AbsVal", "BatchNorm", "Bias", "BNLL", "Dropout", "Eltwise", "ELU", "Log", "LRN", "Exp",
                       "MVN", "Power", "ReLU", "PReLU", "Scale", "Sigmoid", "Split", "TanH", "Threshold")
_LEGACY_2D_FIELDS = {"pad_h", "pad_w", "kernel_h", "kernel_w", "stride_h", "stride_w"}


class UndefinedMapException(Exception):
    """The layer has no coordinate map (InnerProduct, Reshape, ...): walks stop there."""


class AxisMismatchException(Exception):
    """Two maps along a path apply to different axes."""


class UnconnectedTopsError(PcnError, RuntimeError):
    """The two tops share no ancestor reachable through mappable layers (a RuntimeError, as in pycaffe)."""


class CropError(PcnError, AssertionError):
    """``crop`` cannot express the map as a Crop layer (an AssertionError, as pycaffe's checks raise)."""


def _vector(value) -> np.ndarray:
    return np.array(value, ndmin=1)


def _window(fn: Function) -> Tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """(axis, stride, effective kernel extent, pad) of a Convolution, Deconvolution, Im2col or Pooling function."""
    params: Dict[str, Any] = fn.params.get("convolution_param", fn.params)
    if _LEGACY_2D_FIELDS & set(fn.params) or _LEGACY_2D_FIELDS & set(params):
        raise CropError("layers.%s: coordinate maps need kernel_size/stride/pad, not the _h/_w fields"
                        % fn.type_name)
    kernel = _vector(params["kernel_size"])
    dilation = _vector(params.get("dilation", 1))
    return (params.get("axis", 1), _vector(params.get("stride", 1)), dilation * (kernel - 1) + 1,
            _vector(params.get("pad", 0)))


def coord_map(fn: Function) -> CoordMap:
    """The map from ``fn``'s input positions to its output positions; UndefinedMapException when it has none."""
    kind = fn.type_name
    if kind in ("Convolution", "Pooling", "Im2col"):
        axis, stride, extent, pad = _window(fn)
        # output j covers inputs stride*j - pad .. + extent - 1, centred at stride*j - pad + (extent - 1)/2
        return axis, 1 / stride, (pad - (extent - 1) / 2) / stride
    if kind == "Deconvolution":
        axis, stride, extent, pad = _window(fn)
        return axis, stride, (extent - 1) / 2 - pad
    if kind in PASS_THROUGH_LAYERS:
        return IDENTITY
    if kind == "Crop":
        params = fn.params.get("crop_param", fn.params)
        # Crop's axis is the first cropped one; maps name the axis before the first spatial one.
        return params.get("axis", 2) - 1, 1, -_vector(params.get("offset", 0))
    raise UndefinedMapException(kind)


def compose(first: CoordMap, then: CoordMap) -> CoordMap:
    """The map of applying ``then`` to the coordinates ``first`` gives: scales multiply, shifts accumulate."""
    axis_first, scale_first, shift_first = first
    axis_then, scale_then, shift_then = then
    if axis_first is not None and axis_then is not None and axis_first != axis_then:
        raise AxisMismatchException("maps along axes %d and %d do not compose" % (axis_first, axis_then))
    axis = axis_then if axis_first is None else axis_first
    return axis, scale_first * scale_then, scale_first * shift_then + shift_first


def inverse(mapping: CoordMap) -> CoordMap:
    """The map back from output to input positions."""
    axis, scale, shift = mapping
    return axis, 1 / scale, -shift / scale


def _mappable_bottoms(top: Top):
    """The inputs a walk follows: all of them, except Crop's second (it only gives the output size)."""
    inputs = top.fn.inputs
    return inputs[:1] if top.fn.type_name == "Crop" else inputs


def _walk(start: Top):
    """Yields (top, map from that top's coordinates to ``start``'s) for ``start`` and its mappable ancestors,
    nearest first."""
    maps = {start: IDENTITY}
    queue = deque([start])
    while queue:
        top = queue.popleft()
        yield top, maps[top]
        bottoms = _mappable_bottoms(top)
        if not bottoms:
            continue
        try:
            step = coord_map(top.fn)
        except UndefinedMapException:
            continue
        for bottom in bottoms:
            if bottom not in maps:
                maps[bottom] = compose(maps[top], step)
                queue.append(bottom)


def coord_map_from_to(top_from: Top, top_to: Top) -> CoordMap:
    """The map from ``top_from``'s positions to ``top_to``'s, through their nearest common ancestor."""
    from_maps = dict(_walk(top_from))
    for top, to_map in _walk(top_to):
        if top in from_maps:
            return compose(to_map, inverse(from_maps[top]))
    raise UnconnectedTopsError("could not compute a coordinate map between the tops: are they connected by "
                               "spatial layers (convolution, pooling, element-wise, crop)?")


def crop(top_from: Top, top_to: Top) -> Top:
    """A Crop layer (net_spec) that cuts ``top_from`` to the region that corresponds to ``top_to``."""
    axis, scale, shift = coord_map_from_to(top_from, top_to)
    if not np.all(scale == 1):
        raise CropError("scale mismatch on crop (a = %s): the tops differ in resolution" % (scale,))
    if not np.all(shift <= 0):
        raise CropError("cannot crop a negative offset (b = %s): %s is smaller than the reference" % (shift, top_from))
    if not np.all(np.round(shift) == shift):
        raise CropError("cannot crop a non-integer offset (b = %s)" % (shift,))
    offsets = [int(v) for v in -np.round(_vector(shift)).astype(int)]
    return L.Crop(top_from, top_to, crop_param=dict(axis=axis + 1, offset=offsets))
