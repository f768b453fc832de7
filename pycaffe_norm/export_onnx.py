"""ONNX export of deploy nets: ``pcn export onnx MODEL WEIGHTS OUT.onnx [--opset N]``.

The exporter builds the net with pcn (TEST phase, the given weights) and translates it layer by layer from the
parameters pcn itself resolved, so the ONNX graph computes what pcn computes: Caffe's pooling output size and AVE
divisor, BatchNorm's scale-factor blob, LRN's window conventions and the MyCaffe normalization layers are written
out as ONNX operators or exact compositions of them. A layer ONNX cannot express is refused by name; all such layers
are listed in one error line. The mapping of every layer type is documented in docs/onnx.md.

Needs the ``onnx`` package (``pip install 'pycaffe_norm[onnx]'``); ``onnxruntime`` is only needed to run the result.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import backend, prototxt
from .errors import PcnError
from .proto import caffe_pb2

DEFAULT_OPSET = 17
MIN_OPSET = 13          # Softmax over one axis, Split sizes and ReduceSum axes as inputs
_REDUCE_AXES_INPUT_OPSET = 18   # the Reduce ops other than ReduceSum take their axes as an input from here on
_FLT_MAX = float(np.finfo(np.float32).max)
_MAX_PROTO_BYTES = 2**31 - 2**24     # protobuf's 2 GiB message limit, less room for the graph itself
_PP = caffe_pb2.PoolingParameter
_EP = caffe_pb2.EltwiseParameter


class _Refused(Exception):
    """A translated layer type with parameters the export does not handle; the message says which."""


def _onnx():
    try:
        import onnx
        from onnx import helper, numpy_helper  # noqa: F401
    except ImportError:
        raise PcnError("ONNX export needs the onnx package: pip install 'pycaffe_norm[onnx]'") from None
    return onnx


# ----------------------------------------------------------------------------------------------------
# graph builder
# ----------------------------------------------------------------------------------------------------

class _Graph:
    """Collects nodes and initializers, and hands out unique value names."""

    def __init__(self, opset: int):
        onnx = _onnx()
        self.helper = onnx.helper
        self.numpy_helper = onnx.numpy_helper
        self.opset = opset
        self.nodes: list = []
        self.initializers: list = []
        self.used: set = set()
        self.layer = ""         # the layer being translated: prefix of node and constant names

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.used:
            name = "%s_%d" % (base, k)
            k += 1
        self.used.add(name)
        return name

    def const(self, what: str, value, dtype=np.float32) -> str:
        name = self.fresh("%s/%s" % (self.layer, what))
        self.initializers.append(self.numpy_helper.from_array(np.ascontiguousarray(np.asarray(value, dtype)), name))
        return name

    def ints(self, what: str, values: Sequence[int]) -> str:
        return self.const(what, np.asarray(values, np.int64), np.int64)

    def op(self, op_type: str, inputs: Sequence[str], out: Optional[str] = None, **attrs) -> str:
        """Adds one node with one output (named ``out``, or a fresh name after the layer and op) and returns it."""
        out = out if out is not None else self.fresh("%s/%s" % (self.layer, op_type))
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [out], name=self.fresh(out + ":node"),
                                                **attrs))
        return out

    def reduce(self, op_type: str, x: str, axes: Sequence[int], out: Optional[str] = None) -> str:
        """Reduce* with keepdims over ``axes``: an attribute before opset 18 (13 for ReduceSum), an input after."""
        since = 13 if op_type == "ReduceSum" else _REDUCE_AXES_INPUT_OPSET
        if self.opset >= since:
            return self.op(op_type, [x, self.ints("axes", axes)], out, keepdims=1)
        return self.op(op_type, [x], out, axes=list(axes), keepdims=1)

    def reshape(self, x: str, shape: Sequence[int], out: Optional[str] = None) -> str:
        return self.op("Reshape", [x, self.ints("shape", shape)], out)

    def safe_reciprocal(self, norm: str) -> str:
        """1/norm, and 0 where norm is 0 (pcn's rule: an all-zero group normalises to 0)."""
        zero = self.const("zero", 0.0)
        return self.op("Where", [self.op("Equal", [norm, zero]), zero, self.op("Reciprocal", [norm])])


def _channel_shaped(values, ndim: int) -> np.ndarray:
    """A per-channel vector shaped (C, 1, ...) to broadcast over axis 1 of an ``ndim``-D tensor."""
    v = np.asarray(values, np.float32).reshape(-1)
    return v.reshape((v.size,) + (1,) * max(ndim - 2, 0))


# ----------------------------------------------------------------------------------------------------
# layer translations: each gets the graph, the pcn layer, its bottom value names, bottom and top blobs and the
# names its tops must take, and returns the value name of every top (a bottom's name where it only passes it on)
# ----------------------------------------------------------------------------------------------------

Converter = Callable[["_Graph", object, List[str], list, list, List[str]], List[str]]
_CONVERTERS: Dict[str, Converter] = {}


def _converts(*types: str):
    def deco(fn: Converter) -> Converter:
        for t in types:
            _CONVERTERS[t] = fn
        return fn
    return deco


def _data(blob) -> np.ndarray:
    return np.asarray(backend.to_numpy(blob.data), np.float32)


@_converts("Input")
def _input(g, layer, xs, bottoms, tops, outs):
    return outs     # graph inputs; added by the caller


@_converts("Split")
def _split(g, layer, xs, bottoms, tops, outs):
    return [xs[0]] * len(tops)


@_converts("Silence")
def _silence(g, layer, xs, bottoms, tops, outs):
    return []


def _conv_attrs(layer) -> dict:
    if layer.channel_axis != 1:
        raise _Refused("convolution_param.axis %d (ONNX convolves over axis 1)" % layer.channel_axis)
    return dict(kernel_shape=list(layer.kernel), strides=list(layer.stride), dilations=list(layer.dilation),
                pads=list(layer.pad) * 2, group=layer.group)


@_converts("Convolution", "Deconvolution")
def _convolution(g, layer, xs, bottoms, tops, outs):
    attrs = _conv_attrs(layer)
    # Deconvolution's weights (C_in, num_output / group, *kernel) are ConvTranspose's layout as they are; with
    # no output_padding ConvTranspose's size, stride * (in - 1) + dilated kernel - 2 pad, is Caffe's.
    op_type = "ConvTranspose" if layer.reverse else "Conv"
    params = [g.const("weight", _data(layer.blobs[0]))]
    if layer.bias_term:
        params.append(g.const("bias", _data(layer.blobs[1])))
    return [g.op(op_type, [x] + params, out, **attrs) for x, out in zip(xs, outs)]


def _pool_end_pad(size: int, out: int, kernel: int, stride: int, pad: int) -> Tuple[int, int]:
    """(end padding, windows missing): floor-mode pooling with ``pad`` at the start and this end padding gives
    Caffe's ``out`` windows but the last ``missing``, which lie wholly beyond the input.

    The last window starts at (out - 1) * stride - pad, so the padded extent must reach (out - 1) * stride + kernel;
    ONNX runtimes require pads smaller than the kernel, and where that is not enough (stride > kernel with ceil
    rounding) the windows left out start at or after ``size``: empty windows, filled in afterwards.
    """
    end = min(max((out - 1) * stride + kernel - size - pad, 0), kernel - 1)
    got = (size + pad + end - kernel) // stride + 1
    assert got == out or (got < out and got * stride - pad >= size)
    return end, out - got


@_converts("Pooling")
def _pooling(g, layer, xs, bottoms, tops, outs):
    if len(tops) > 1:
        raise _Refused("a second top (the MAX argmax mask)")
    n, c, h, w = bottoms[0].shape
    x, out = xs[0], outs[0]
    is_max = layer.method == _PP.MAX
    if layer.kernel == (h, w) and not any(layer.pad):
        return [g.op("GlobalMaxPool" if is_max else "GlobalAveragePool", [x], out)]
    # Caffe's output size (ceil or floor, the last window starting inside the image or its left padding) is
    # reproduced in floor mode with explicit pads, not with ONNX's ceil_mode.
    ends, missing = zip(*[_pool_end_pad(size, o, k, s, p)
                          for size, o, k, s, p in zip((h, w), layer.out, layer.kernel, layer.stride, layer.pad)])
    attrs = dict(kernel_shape=list(layer.kernel), strides=list(layer.stride), pads=list(layer.pad) + list(ends))
    area = _caffe_pool_divisor(layer, (h, w))
    full = float(layer.kernel[0] * layer.kernel[1])
    rescale = not is_max and not np.all(area == full)
    last = not any(missing) and not rescale
    if is_max:      # MAX windows skip ONNX padding, as Caffe's windows never read theirs
        y = g.op("MaxPool", [x], out if last else None, **attrs)
    else:           # every window lies inside the padded extent: count_include_pad divides by kh * kw
        y = g.op("AveragePool", [x], out if last else None, count_include_pad=1, **attrs)
    if any(missing):    # empty windows: Caffe gives -FLT_MAX (MAX) or 0 (AVE)
        fill = g.const("empty_window", -_FLT_MAX if is_max else 0.0)
        y = g.op("Pad", [y, g.ints("pads", [0, 0, 0, 0, 0, 0] + list(missing)), fill], None if rescale else out,
                 mode="constant")
    if rescale:     # Caffe divides by the window clipped to [-pad, size + pad)
        y = g.op("Mul", [y, g.const("area_rescale", full / area)], out)
    return [y]


def _caffe_pool_divisor(layer, in_hw: Tuple[int, int]) -> np.ndarray:
    """Caffe's AVE divisor per output position: the window clipped to [-pad, size + pad) (at least 1)."""
    sizes = []
    for size, k, s, p, o in zip(in_hw, layer.kernel, layer.stride, layer.pad, layer.out):
        start = np.arange(o) * s - p
        sizes.append(np.minimum(start + k, size + p) - start)
    return np.maximum(np.outer(sizes[0], sizes[1]), 1).astype(np.float64)


@_converts("SPP")
def _spp(g, layer, xs, bottoms, tops, outs):
    # each pyramid level is one of Caffe's Pooling layers (pcn keeps them): pooled, flattened, concatenated
    if layer.height == 1:
        return _pooling(g, layer._pools[0], xs, bottoms, layer._tops, outs)
    n = bottoms[0].shape[0]
    levels = [g.reshape(_pooling(g, pool, xs, bottoms, [t], [g.fresh("%s/level%d" % (g.layer, k))])[0], (n, -1))
              for k, (pool, t) in enumerate(zip(layer._pools, layer._tops))]
    return [g.op("Concat", levels, outs[0], axis=1)]


@_converts("InnerProduct")
def _inner_product(g, layer, xs, bottoms, tops, outs):
    shape = bottoms[0].shape
    axis = layer.axis
    flat = g.op("Flatten", [xs[0]], axis=axis)
    inputs = [flat, g.const("weight", _data(layer.blobs[0]))]
    if layer.bias_term:
        inputs.append(g.const("bias", _data(layer.blobs[1])))
    if axis == 1:
        return [g.op("Gemm", inputs, outs[0], transB=0 if layer.transpose else 1)]
    y = g.op("Gemm", inputs, None, transB=0 if layer.transpose else 1)
    return [g.reshape(y, tuple(shape[:axis]) + (layer.num_output,), outs[0])]


@_converts("Embed")
def _embed(g, layer, xs, bottoms, tops, outs):
    # the float indices become int64 rows of W (input_dim, num_output); an index out of range is the runtime's
    # error, as it is pcn's
    index = g.op("Cast", xs, to=_onnx().TensorProto.INT64)
    rows = g.op("Gather", [g.const("weight", _data(layer.blobs[0])), index], None if layer.bias_term else outs[0],
                axis=0)
    if not layer.bias_term:
        return [rows]
    return [g.op("Add", [rows, g.const("bias", _data(layer.blobs[1]))], outs[0])]


@_converts("ReLU")
def _relu(g, layer, xs, bottoms, tops, outs):
    if layer.negative_slope == 0:
        return [g.op("Relu", xs, outs[0])]
    return [g.op("LeakyRelu", xs, outs[0], alpha=layer.negative_slope)]


@_converts("PReLU")
def _prelu(g, layer, xs, bottoms, tops, outs):
    slope = _data(layer.blobs[0])
    slope = slope.reshape(1) if layer.channel_shared else _channel_shaped(slope, bottoms[0].num_axes)
    return [g.op("PRelu", [xs[0], g.const("slope", slope)], outs[0])]


@_converts("ELU")
def _elu(g, layer, xs, bottoms, tops, outs):
    return [g.op("Elu", xs, outs[0], alpha=layer.alpha)]


@_converts("Sigmoid")
def _sigmoid(g, layer, xs, bottoms, tops, outs):
    return [g.op("Sigmoid", xs, outs[0])]


@_converts("TanH")
def _tanh(g, layer, xs, bottoms, tops, outs):
    return [g.op("Tanh", xs, outs[0])]


@_converts("AbsVal")
def _absval(g, layer, xs, bottoms, tops, outs):
    return [g.op("Abs", xs, outs[0])]


@_converts("Power")
def _power(g, layer, xs, bottoms, tops, outs):
    if layer.diff_scale == 0:       # a constant, as pcn computes it (0^0 = 1)
        value = 1.0 if layer.power == 0 else float(np.power(np.float64(layer.shift), layer.power))
        return [g.op("Expand", [g.const("value", value), g.ints("shape", tops[0].shape)], outs[0])]
    steps = [("Mul", layer.scale, 1.0), ("Add", layer.shift, 0.0), ("Pow", layer.power, 1.0)]
    return [_chain(g, xs[0], [(op, v) for op, v, identity in steps if v != identity], outs[0])]


def _chain(g, x: str, steps: Sequence[Tuple[str, float]], out: str) -> str:
    """Binary ops with scalar constants applied in turn (an Identity when there are none)."""
    if not steps:
        return g.op("Identity", [x], out)
    for i, (op_type, value) in enumerate(steps):
        x = g.op(op_type, [x, g.const(op_type.lower(), value)], out if i == len(steps) - 1 else None)
    return x


@_converts("Exp")
def _exp(g, layer, xs, bottoms, tops, outs):
    x = xs[0] if layer.inner_scale == 1 else g.op("Mul", [xs[0], g.const("inner_scale", layer.inner_scale)])
    if layer.outer_scale == 1:
        return [g.op("Exp", [x], outs[0])]
    return [g.op("Mul", [g.op("Exp", [x]), g.const("outer_scale", layer.outer_scale)], outs[0])]


@_converts("Log")
def _log(g, layer, xs, bottoms, tops, outs):
    x = xs[0]
    if not (layer.input_scale == 1 and layer.input_shift == 0):
        x = _chain(g, x, [("Mul", layer.input_scale), ("Add", layer.input_shift)], g.fresh(g.layer + "/inner"))
    if layer.base_scale == 1:
        return [g.op("Log", [x], outs[0])]
    return [g.op("Mul", [g.op("Log", [x]), g.const("base_scale", layer.base_scale)], outs[0])]


@_converts("BNLL")
def _bnll(g, layer, xs, bottoms, tops, outs):
    # pcn's overflow-free form: max(x, 0) + log(1 + exp(-|x|))
    tail = g.op("Log", [g.op("Add", [g.const("one", 1.0), g.op("Exp", [g.op("Neg", [g.op("Abs", xs)])])])])
    return [g.op("Add", [g.op("Relu", xs), tail], outs[0])]


@_converts("Threshold")
def _threshold(g, layer, xs, bottoms, tops, outs):
    above = g.op("Greater", [xs[0], g.const("threshold", layer.threshold)])
    return [g.op("Cast", [above], outs[0], to=_onnx().TensorProto.FLOAT)]


@_converts("Clip")
def _clip(g, layer, xs, bottoms, tops, outs):
    return [g.op("Clip", [xs[0], g.const("min", layer.lo), g.const("max", layer.hi)], outs[0])]


@_converts("Swish")
def _swish(g, layer, xs, bottoms, tops, outs):
    x = xs[0] if layer.beta == 1 else g.op("Mul", [xs[0], g.const("beta", layer.beta)])
    return [g.op("Mul", [xs[0], g.op("Sigmoid", [x])], outs[0])]


@_converts("Softmax")
def _softmax(g, layer, xs, bottoms, tops, outs):
    return [g.op("Softmax", xs, outs[0], axis=layer.axis)]


@_converts("Dropout")
def _dropout(g, layer, xs, bottoms, tops, outs):
    if layer.scale_train:       # TEST: the identity
        return [g.op("Identity", xs, outs[0])]
    return [g.op("Mul", [xs[0], g.const("keep", 1.0 - layer.ratio)], outs[0])]


@_converts("Concat")
def _concat(g, layer, xs, bottoms, tops, outs):
    return [g.op("Concat", xs, outs[0], axis=layer.axis)]


@_converts("Slice")
def _slice(g, layer, xs, bottoms, tops, outs):
    sizes = [e - b for b, e in zip(layer.bounds, layer.bounds[1:])]
    if len(outs) == 1:
        return [g.op("Identity", xs, outs[0])]
    g.nodes.append(g.helper.make_node("Split", [xs[0], g.ints("split", sizes)], list(outs),
                                      name=g.fresh(g.layer + ":node"), axis=layer.axis))
    return list(outs)


@_converts("Eltwise")
def _eltwise(g, layer, xs, bottoms, tops, outs):
    if layer.op == _EP.MAX:
        return [g.op("Max", xs, outs[0])]
    if layer.op == _EP.PROD:
        acc = xs[0]
        for i, x in enumerate(xs[1:], 1):
            acc = g.op("Mul", [acc, x], outs[0] if i == len(xs) - 1 else None)
        return [acc]
    # SUM, in pcn's order: c0 * x0 + c1 * x1 + ...
    terms = [x if c == 1 else g.op("Mul", [x, g.const("coeff", c)]) for x, c in zip(xs, layer.coeffs)]
    acc = terms[0]
    for i, t in enumerate(terms[1:], 1):
        acc = g.op("Add", [acc, t], outs[0] if i == len(terms) - 1 else None)
    return [acc]


@_converts("Crop")
def _crop(g, layer, xs, bottoms, tops, outs):
    axes = [i for i, (a, b) in enumerate(zip(bottoms[0].shape, tops[0].shape)) if a != b or layer.offsets[i]]
    if not axes:
        return [g.op("Identity", xs[:1], outs[0])]
    starts = [layer.offsets[i] for i in axes]
    ends = [layer.offsets[i] + tops[0].shape[i] for i in axes]
    return [g.op("Slice", [xs[0], g.ints("starts", starts), g.ints("ends", ends), g.ints("axes", axes)], outs[0])]


@_converts("Tile")
def _tile(g, layer, xs, bottoms, tops, outs):
    # Caffe copies the block from axis on whole, tiles times: ONNX Tile's repetition of that axis
    repeats = [1] * bottoms[0].num_axes
    repeats[layer.axis] = layer.tiles
    return [g.op("Tile", [xs[0], g.ints("repeats", repeats)], outs[0])]


@_converts("Reduction")
def _reduction(g, layer, xs, bottoms, tops, outs):
    R = caffe_pb2.ReductionParameter
    op_type = {R.SUM: "ReduceSum", R.MEAN: "ReduceSum", R.ASUM: "ReduceL1", R.SUMSQ: "ReduceSumSquare"}[layer.op]
    rows = g.reshape(xs[0], (layer.num, layer.dim))
    y = g.reduce(op_type, rows, [1])
    if layer.coeff != 1:        # MEAN: coeff / dim, as pcn
        y = g.op("Mul", [y, g.const("coeff", layer.coeff)])
    return [g.reshape(y, tops[0].shape, outs[0])]


@_converts("ArgMax")
def _argmax(g, layer, xs, bottoms, tops, outs):
    # pcn's method: the top_k of the reversed axis (TopK puts the lower index first among equal values), so
    # that ties go to the larger index as in Caffe; the index is (dim - 1) - the reversed one.
    outer, dim, inner = layer.dims
    x3 = g.reshape(xs[0], (outer, dim, inner))
    reverse = g.op("Slice", [x3, g.ints("starts", [-1]), g.ints("ends", [-(2**62)]), g.ints("axes", [1]),
                             g.ints("steps", [-1])])
    values, order = g.fresh(g.layer + "/values"), g.fresh(g.layer + "/order")
    g.nodes.append(g.helper.make_node("TopK", [reverse, g.ints("k", [layer.top_k])], [values, order],
                                      name=g.fresh(g.layer + ":node"), axis=1, largest=1, sorted=1))
    index = g.op("Cast", [g.op("Sub", [g.ints("last", [dim - 1]), order])], to=_onnx().TensorProto.FLOAT)
    if layer.has_axis:
        return [g.reshape(values if layer.out_max_val else index, tops[0].shape, outs[0])]
    if layer.out_max_val:      # (N, 2, top_k): indices, then values
        rows = [g.reshape(v, (outer, 1, layer.top_k)) for v in (index, values)]
        return [g.reshape(g.op("Concat", rows, axis=1), tops[0].shape, outs[0])]
    return [g.reshape(index, tops[0].shape, outs[0])]


@_converts("Flatten", "Reshape")
def _reshape(g, layer, xs, bottoms, tops, outs):
    return [g.reshape(xs[0], tops[0].shape, outs[0])]


def _param_broadcast_shape(bottom, param_shape: Tuple[int, ...], axis: int) -> Tuple[int, ...]:
    """A Scale/Bias parameter of ``param_shape`` applied at ``axis``, shaped to broadcast over ``bottom``."""
    if len(param_shape) == 0:
        return ()
    axis = bottom.canonical_axis(axis)
    return tuple(param_shape) + (1,) * (bottom.num_axes - axis - len(param_shape))


def _apply_param(g, op_type: str, x: str, what: str, param, bottom, axis: int, out: Optional[str],
                 from_bottom: Optional[str] = None) -> str:
    shape = _param_broadcast_shape(bottom, tuple(param.shape), axis)
    if from_bottom is not None:
        value = g.reshape(from_bottom, shape) if shape != tuple(param.shape) else from_bottom
    else:
        value = g.const(what, _data(param).reshape(shape))
    return g.op(op_type, [x, value], out)


@_converts("Scale")
def _scale(g, layer, xs, bottoms, tops, outs):
    axis = layer.layer_param.scale_param.axis
    two = len(bottoms) > 1
    scale = bottoms[1] if two else layer.blobs[0]
    last = layer.bias_index is None
    y = _apply_param(g, "Mul", xs[0], "scale", scale, bottoms[0], axis, outs[0] if last else None,
                     xs[1] if two else None)
    if last:
        return [y]
    return [_apply_param(g, "Add", y, "bias", layer.blobs[layer.bias_index], bottoms[0], axis, outs[0])]


@_converts("Bias")
def _bias(g, layer, xs, bottoms, tops, outs):
    two = len(bottoms) > 1
    bias = bottoms[1] if two else layer.blobs[0]
    return [_apply_param(g, "Add", xs[0], "bias", bias, bottoms[0], layer.layer_param.bias_param.axis, outs[0],
                         xs[1] if two else None)]


@_converts("BatchNorm")
def _batch_norm(g, layer, xs, bottoms, tops, outs):
    ndim = bottoms[0].num_axes
    if layer.use_global_stats:
        # pcn's arithmetic in float32: mean = blob0 / S, var = blob1 / S, y = (x - mean) * 1 / sqrt(var + eps)
        s = float(_data(layer.blobs[2]).reshape(-1)[0])
        factor = np.float32(0 if s == 0 else 1 / s)
        mean = _data(layer.blobs[0]) * factor
        var = _data(layer.blobs[1]) * factor
        inv_std = g.const("inv_std", _channel_shaped((1 / np.sqrt(var + np.float32(layer.eps))).astype(np.float32),
                                                     ndim))
        y = g.op("Sub", [xs[0], g.const("mean", _channel_shaped(mean, ndim))])
    else:
        # use_global_stats: false at TEST: the batch's own statistics over N and the spatial axes (biased variance)
        axes = [0] + list(range(2, ndim))
        y = g.op("Sub", [xs[0], g.reduce("ReduceMean", xs[0], axes)])
        var = g.reduce("ReduceMean", g.op("Mul", [y, y]), axes)
        inv_std = g.op("Reciprocal", [g.op("Sqrt", [g.op("Add", [var, g.const("eps", layer.eps)])])])
    if not layer.scale_bias:
        return [g.op("Mul", [y, inv_std], outs[0])]
    y = g.op("Mul", [y, inv_std])
    y = g.op("Mul", [y, g.const("scale", _channel_shaped(_data(layer.blobs[3]), ndim))])
    return [g.op("Add", [y, g.const("bias", _channel_shaped(_data(layer.blobs[4]), ndim))], outs[0])]


@_converts("LRN")
def _lrn(g, layer, xs, bottoms, tops, outs):
    x, shape = xs[0], bottoms[0].shape
    if not layer.within:
        # ONNX LRN divides alpha by size and centres the window as Caffe does: the parameters carry over.
        # onnxruntime's LRN takes 4-D input only: other ranks go through (N, C, rest, 1).
        attrs = dict(size=layer.size, alpha=layer.alpha, beta=layer.beta, bias=layer.k)
        if len(shape) == 4:
            return [g.op("LRN", [x], outs[0], **attrs)]
        rest = int(np.prod(shape[2:], dtype=np.int64))
        y = g.op("LRN", [g.reshape(x, (shape[0], shape[1], rest, 1))], None, **attrs)
        return [g.reshape(y, shape, outs[0])]
    # WITHIN_CHANNEL, as Caffe builds it: x * (1 + alpha * mean of x^2 over the zero-padded size x size window)
    # ^ -beta; every window lies inside the padded input, so AveragePool's divisor is size^2 (k is unused)
    half = (layer.size - 1) // 2
    sq = g.op("Mul", [x, x])
    mean = g.op("AveragePool", [sq], kernel_shape=[layer.size] * 2, strides=[1, 1], pads=[half] * 4,
                count_include_pad=1)
    scale = g.op("Add", [g.op("Mul", [mean, g.const("alpha", layer.alpha)]), g.const("one", 1.0)])
    return [g.op("Mul", [x, g.op("Pow", [scale, g.const("neg_beta", -layer.beta)])], outs[0])]


@_converts("MVN")
def _mvn(g, layer, xs, bottoms, tops, outs):
    shape = bottoms[0].shape
    groups = layer._groups(bottoms[0])
    rows = g.reshape(xs[0], (groups, -1))
    centred = g.op("Sub", [rows, g.reduce("ReduceMean", rows, [1])])
    if layer.normalize_variance:
        # eps is added to the standard deviation, outside the square root
        std = g.op("Sqrt", [g.reduce("ReduceMean", g.op("Mul", [centred, centred]), [1])])
        centred = g.op("Div", [centred, g.op("Add", [std, g.const("eps", layer.eps)])])
    return [g.reshape(centred, shape, outs[0])]


@_converts("Normalization1")
def _normalization1(g, layer, xs, bottoms, tops, outs):
    shape = bottoms[0].shape
    rows = g.reshape(xs[0], (shape[0], -1))
    norm = g.reduce("ReduceL1" if layer.l1 else "ReduceL2", rows, [1])
    y = g.op("Mul", [rows, g.safe_reciprocal(norm)])
    return [g.reshape(y, shape, outs[0])]


@_converts("GRN", "GlobResNorm", "globresnet")
def _grn(g, layer, xs, bottoms, tops, outs):
    if bottoms[0].num_axes < 2:
        raise _Refused("a bottom of fewer than 2 axes")
    norm = g.reduce("ReduceL2", xs[0], [1])
    return [g.op("Mul", [xs[0], g.safe_reciprocal(norm)], outs[0])]


@_converts("Normalize", "Normalization2")
def _normalize(g, layer, xs, bottoms, tops, outs):
    x, ndim = xs[0], bottoms[0].num_axes
    if ndim < 2:
        raise _Refused("a bottom of fewer than 2 axes")
    axes = list(range(1, ndim)) if layer.across_spatial else [1]
    sum_sq = g.reduce("ReduceSum", g.op("Mul", [x, x]), axes)
    norm = g.op("Sqrt", [g.op("Add", [sum_sq, g.const("eps", layer.eps)])])
    xhat = g.op("Div", [x, norm])
    scale = _data(layer.blobs[0])
    scale = scale.reshape(()) if layer.channel_shared else _channel_shaped(scale, ndim)
    return [g.op("Mul", [xhat, g.const("scale", scale)], outs[0])]


# ----------------------------------------------------------------------------------------------------
# the net
# ----------------------------------------------------------------------------------------------------

def supported_layer_types() -> List[str]:
    """The layer types the exporter translates (some parameter settings of them are still refused)."""
    return sorted(_CONVERTERS)


def _refusal(items: List[Tuple[str, str, str]], layers: Sequence[caffe_pb2.LayerParameter]) -> PcnError:
    listed = ", ".join("%r (%s%s)" % (name, type_, ": " + why if why else "") for name, type_, why in items)
    names = {name for name, _, _ in items}
    train_net = any(lp.name in names and (not lp.bottom or lp.type.endswith("Loss") or lp.type == "Accuracy")
                    for lp in layers)
    hint = "; export a deploy net (Input layers, no data, loss or accuracy layers)" if train_net else ""
    return PcnError("ONNX export cannot express %s: %s%s"
                    % ("this layer" if len(items) == 1 else "these %d layers" % len(items), listed, hint))


def _check_opset(opset: int) -> None:
    top = _onnx().defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= top:
        raise PcnError("--opset %d: pcn exports ONNX opsets %d to %d (the installed onnx package's newest)"
                       % (opset, MIN_OPSET, top))


def refused_layers(param: caffe_pb2.NetParameter) -> List[Tuple[str, str, str]]:
    """(name, type, reason) of every layer of a TEST-phase NetParameter whose type ONNX export does not know."""
    return [(lp.name, lp.type, "") for lp in param.layer if lp.type not in _CONVERTERS]


def export_net(net, opset: int = DEFAULT_OPSET):
    """The ONNX ModelProto computing ``net``'s forward pass (its Input blobs in, its output blobs out).

    Raises PcnError naming every layer ONNX cannot express. The model is not run through onnx's checker here
    (that serializes it once more); :func:`export_onnx` checks the bytes it writes."""
    onnx = _onnx()
    helper = onnx.helper
    _check_opset(opset)
    refused = [(lp.name, lp.type, "") for lp in net.layer_params if lp.type not in _CONVERTERS]
    g = _Graph(opset)
    inputs = set(net.inputs)
    # Every blob's final value takes the blob's name (reserved here, so no generated name can take it); a value
    # that an in-place layer overwrites later gets a fresh "blob/layer" name, and so does an overwritten input.
    g.used.update(net.blobs)
    last_writer = {}
    for i, lp in enumerate(net.layer_params):
        for name in lp.top:
            last_writer[name] = i
    current: Dict[str, str] = {name: name for name in inputs}
    for i, (layer, lp) in enumerate(zip(net.layers, net.layer_params)):
        convert = _CONVERTERS.get(lp.type)
        outs = [name if lp.type == "Input" or (last_writer[name] == i and name not in inputs)
                else g.fresh("%s/%s" % (name, lp.name)) for name in lp.top]
        g.layer = lp.name
        if convert is not None:
            xs = [current[b] for b in lp.bottom]
            try:
                outs = convert(g, layer, xs, net.bottom_vecs[i], net.top_vecs[i], outs)
            except _Refused as e:
                refused.append((lp.name, lp.type, str(e)))
        for name, value in zip(lp.top, outs):
            current[name] = value
    if refused:
        raise _refusal(refused, net.layer_params)
    blobs = net.blobs
    graph_inputs = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, list(blobs[n].shape))
                    for n in net.inputs]
    graph_outputs = []
    for name in net.outputs:
        if name in inputs:
            continue        # an Input blob no layer reads: not a result
        if current[name] != name:     # the last layer only passed a value on (Split)
            g.layer = name
            g.op("Identity", [current[name]], name)
        graph_outputs.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, list(blobs[name].shape)))
    graph = helper.make_graph(g.nodes, net.name or "pcn_net", graph_inputs, graph_outputs, g.initializers)
    opsets = [helper.make_opsetid("", opset)]
    from . import __version__ as version
    model = helper.make_model(graph, opset_imports=opsets, producer_name="pycaffe_norm", producer_version=version)
    model.ir_version = helper.find_min_ir_version_for(opsets)    # what runtimes of that opset's era can load
    return model


def check(data: bytes) -> None:
    """onnx's checker with shape inference on a serialized model; a failure is a bug in the exporter."""
    onnx = _onnx()
    onnx.checker.check_model(data, full_check=True)


def export_onnx(model: str, weights: str, out: str, opset: int = DEFAULT_OPSET):
    """Exports the deploy net ``model`` with ``weights`` to the ONNX file ``out``; returns the ModelProto."""
    from .net import TEST, Net, filter_net
    from .upgrade import upgrade_net

    _onnx()
    _check_opset(opset)
    for path, what in ((model, "net prototxt"), (weights, "weights file")):
        if not os.path.exists(path):
            raise PcnError("%s not found: %s" % (what, path))
        if os.path.isdir(path):
            raise PcnError("%s is a directory, not a file: %s" % (what, path))
    if os.path.isdir(out):
        raise PcnError("output path is a directory: %s" % out)
    # Refuse unknown types before building the net: a data layer would look for its database first.
    param = upgrade_net(prototxt.read_text(model, caffe_pb2.NetParameter(), "net prototxt"))
    param.state.phase = TEST
    param = filter_net(param)
    refused = refused_layers(param)
    if refused:
        raise _refusal(refused, param.layer)
    net = Net(model, TEST, weights=weights)
    onnx_model = export_net(net, opset)
    size = sum(len(t.raw_data) for t in onnx_model.graph.initializer)
    if size > _MAX_PROTO_BYTES:
        raise PcnError("%s: the weights take %.3g GB; an ONNX file holds at most 2 GB (larger models need ONNX's "
                       "external data files, which pcn does not write)" % (model, size / 1e9))
    data = onnx_model.SerializeToString()
    check(data)
    prototxt.atomic_write(out, data)
    return onnx_model


__all__ = ["DEFAULT_OPSET", "MIN_OPSET", "export_net", "export_onnx", "refused_layers", "supported_layer_types"]
