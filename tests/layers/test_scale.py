"""Scale and Bias layers: shapes per Caffe (axis, num_axes, scalar, second bottom), values, exhaustive float64
gradient checks (step and threshold 1e-6), in-place use, accumulation into parameter diffs, errors.
The reference cases scale_* and bias_axis1 run end to end in tests/test_reference.py."""
from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format

import pycaffe_norm as caffe
from pycaffe_norm.errors import NetError, ShapeError
from pycaffe_norm.layers import create_layer
from pycaffe_norm.proto import caffe_pb2
from tests.gradient_check import GradientChecker, make_blob


def layer_of(text: str):
    p = caffe_pb2.LayerParameter()
    text_format.Parse('name: "s" ' + text, p)
    return create_layer(p, caffe_pb2.TRAIN)


def rng(seed: int = 0) -> np.random.RandomState:
    return np.random.RandomState(seed)


def setup(layer, *arrays, in_place: bool = False):
    bottom = [make_blob(a) for a in arrays]
    top = [bottom[0]] if in_place else [make_blob(np.zeros(0))]
    layer.initialize(bottom, top)
    return bottom, top


def bcast(p, x_ndim: int, axis: int):
    p = np.asarray(p)
    return p.reshape((1,) * axis + p.shape + (1,) * (x_ndim - axis - p.ndim))


@pytest.mark.parametrize("params, axis, shape", [
    ("", 1, (3,)),
    ("axis: 0 num_axes: 2", 0, (2, 3)),
    ("num_axes: 0", 0, ()),
    ("num_axes: -1", 1, (3, 4, 5)),
    ("axis: -1", 3, (5,)),
    ("axis: 2 num_axes: 2", 2, (4, 5)),
])
def test_scale_blob_shape_and_forward(params, axis, shape):
    x = rng(1).randn(2, 3, 4, 5)
    layer = layer_of('type: "Scale" scale_param { %s bias_term: true filler { type: "gaussian" } '
                     'bias_filler { type: "gaussian" } }' % params)
    bottom, top = setup(layer, x)
    assert [b.shape for b in layer.blobs] == [shape, shape]
    layer.forward(bottom, top)
    s, b = layer.blobs[0].data, layer.blobs[1].data
    np.testing.assert_allclose(top[0].data, x * bcast(s, 4, axis) + bcast(b, 4, axis), rtol=1e-13)


def test_scale_default_fillers_are_identity():
    layer = layer_of('type: "Scale" scale_param { bias_term: true }')
    x = rng(2).randn(2, 3, 2)
    bottom, top = setup(layer, x)
    layer.forward(bottom, top)
    np.testing.assert_array_equal(layer.blobs[0].data, 1.0)
    np.testing.assert_array_equal(layer.blobs[1].data, 0.0)
    np.testing.assert_allclose(top[0].data, x)


def test_scale_two_bottoms_with_bias_uses_bottom1_axes():
    x, s = rng(3).randn(2, 3, 4, 5), rng(4).randn(3, 4)
    layer = layer_of('type: "Scale" scale_param { axis: 1 bias_term: true bias_filler { type: "gaussian" } }')
    bottom, top = setup(layer, x, s)
    assert len(layer.blobs) == 1 and layer.blobs[0].shape == (3, 4)   # bias is blobs[0] with two bottoms
    layer.forward(bottom, top)
    np.testing.assert_allclose(top[0].data, x * bcast(s, 4, 1) + bcast(layer.blobs[0].data, 4, 1), rtol=1e-13)


def test_scale_scalar_second_bottom_ignores_axis():
    x = rng(5).randn(2, 3, 2)
    layer = layer_of('type: "Scale" scale_param { axis: 2 }')
    bottom, top = setup(layer, x, np.array(2.5))
    layer.forward(bottom, top)
    np.testing.assert_allclose(top[0].data, 2.5 * x)


@pytest.mark.parametrize("text, arrays", [
    ('scale_param { bias_term: true filler { type: "gaussian" } bias_filler { type: "gaussian" } }', [(2, 3, 2, 2)]),
    ('scale_param { num_axes: 0 bias_term: true filler { type: "gaussian" } }', [(2, 3, 2)]),
    ('scale_param { axis: 0 num_axes: -1 filler { type: "gaussian" } }', [(2, 3, 2)]),
    ('scale_param { axis: -1 bias_term: true filler { type: "gaussian" } }', [(3, 2, 4)]),
    ('scale_param { axis: 0 }', [(2, 3, 2, 2), (2, 3)]),
    ('scale_param { axis: 1 bias_term: true bias_filler { type: "gaussian" } }', [(2, 3, 2, 2), (3, 2)]),
    ('scale_param { }', [(2, 3, 2), ()]),
    ('scale_param { axis: 0 }', [(2, 3), (2, 3)]),                    # elementwise
])
@pytest.mark.parametrize("in_place", [False, True])
def test_scale_gradient(text, arrays, in_place):
    layer = layer_of('type: "Scale" ' + text)
    bottom, top = setup(layer, *[rng(6 + i).randn(*s) for i, s in enumerate(arrays)], in_place=in_place)
    n = GradientChecker().check(layer, bottom, top, already_set_up=True)
    assert n >= sum(int(np.prod(s)) for s in arrays)


def test_scale_in_place_matches_out_of_place():
    x = rng(7).randn(2, 3, 4)
    dy = rng(8).randn(2, 3, 4)
    results = []
    for in_place in (False, True):
        layer = layer_of('type: "Scale" scale_param { bias_term: true filler { type: "constant" value: 1.5 } }')
        bottom, top = setup(layer, x, in_place=in_place)
        layer.forward(bottom, top)
        y = top[0].data.copy()
        top[0].diff[...] = dy
        layer.backward(top, [True], bottom)
        results.append((y, bottom[0].diff.copy(), layer.blobs[0].diff.copy(), layer.blobs[1].diff.copy()))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-13)
    np.testing.assert_allclose(results[0][2], (dy * x).sum(axis=(0, 2)), rtol=1e-12)
    np.testing.assert_allclose(results[0][3], dy.sum(axis=(0, 2)), rtol=1e-12)


def test_scale_param_diffs_accumulate_bottom_diffs_overwrite():
    x, s = rng(9).randn(2, 3, 2), rng(10).randn(3)
    layer = layer_of('type: "Scale" scale_param { bias_term: true filler { type: "gaussian" } }')
    bottom, top = setup(layer, x)
    layer.forward(bottom, top)
    top[0].diff[...] = 1
    layer.backward(top, [True], bottom)
    first = [b.diff.copy() for b in layer.blobs] + [bottom[0].diff.copy()]
    layer.backward(top, [True], bottom)
    np.testing.assert_allclose(layer.blobs[0].diff, 2 * first[0])
    np.testing.assert_allclose(layer.blobs[1].diff, 2 * first[1])
    np.testing.assert_allclose(bottom[0].diff, first[2])
    layer2 = layer_of('type: "Scale" scale_param { }')
    bottom2, top2 = setup(layer2, x, s)
    layer2.forward(bottom2, top2)
    top2[0].diff[...] = 1
    layer2.backward(top2, [True, True], bottom2)
    layer2.backward(top2, [True, True], bottom2)
    np.testing.assert_allclose(bottom2[1].diff, x.sum(axis=(0, 2)))   # a bottom diff is overwritten


def test_scale_errors():
    with pytest.raises(ShapeError, match="'s'"):
        setup(layer_of('type: "Scale"'), np.ones((2, 3, 4)), np.ones((4,)))
    with pytest.raises(NetError, match="num_axes"):
        setup(layer_of('type: "Scale" scale_param { num_axes: -2 }'), np.ones((2, 3)))
    with pytest.raises(NetError, match="extends past"):
        setup(layer_of('type: "Scale" scale_param { axis: 1 num_axes: 3 }'), np.ones((2, 3)))
    with pytest.raises(NetError, match="axis"):
        setup(layer_of('type: "Scale" scale_param { axis: 4 }'), np.ones((2, 3)))
    layer = layer_of('type: "Scale"')
    bottom, top = setup(layer, np.ones((2, 3, 4)))
    bottom[0].reshape((2, 5, 4))
    with pytest.raises(ShapeError):
        layer.reshape(bottom, top)


@pytest.mark.parametrize("text, arrays", [
    ('bias_param { filler { type: "gaussian" } }', [(2, 3, 2, 2)]),
    ('bias_param { num_axes: 0 filler { type: "gaussian" } }', [(2, 3)]),
    ('bias_param { axis: 0 num_axes: -1 filler { type: "gaussian" } }', [(2, 3)]),
    ('bias_param { axis: 1 }', [(2, 3, 4), (3, 4)]),
    ('bias_param { }', [(2, 3, 4), ()]),
])
@pytest.mark.parametrize("in_place", [False, True])
def test_bias_forward_and_gradient(text, arrays, in_place):
    layer = layer_of('type: "Bias" ' + text)
    xs = [rng(11 + i).randn(*s) for i, s in enumerate(arrays)]
    bottom, top = setup(layer, *xs, in_place=in_place)
    layer.forward(bottom, top)
    b = xs[1] if len(xs) > 1 else layer.blobs[0].data
    p = layer.layer_param.bias_param
    axis = 0 if np.ndim(b) == 0 else p.axis % len(arrays[0])
    np.testing.assert_allclose(top[0].data, xs[0] + bcast(b, len(arrays[0]), axis), rtol=1e-13)
    bottom[0].data[...] = xs[0]
    GradientChecker().check(layer, bottom, top, already_set_up=True)


def test_bias_default_filler_zero_and_shape_error():
    layer = layer_of('type: "Bias"')
    setup(layer, np.ones((2, 3)))
    np.testing.assert_array_equal(layer.blobs[0].data, 0.0)
    assert layer.blobs[0].shape == (3,)
    with pytest.raises(ShapeError, match="bias"):
        setup(layer_of('type: "Bias"'), np.ones((2, 3)), np.ones((2,)))


def test_scale_and_bias_in_a_net_float32():
    net = caffe_pb2.NetParameter()
    text_format.Parse('''
        force_backward: true
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 2 } } }
        layer { name: "sc" type: "Scale" bottom: "x" top: "x" scale_param { filler { value: 2 } } }
        layer { name: "b" type: "Bias" bottom: "x" top: "y" bias_param { filler { value: 0.5 } } }''', net)
    n = caffe.Net(net, caffe.TRAIN)
    x = rng(12).randn(2, 3, 2).astype(np.float32)
    n.blobs["x"].data[...] = x
    n.forward()
    np.testing.assert_allclose(n.blobs["y"].data, 2 * x + 0.5, rtol=1e-6)
    assert n.blobs["y"].data.dtype == np.float32
