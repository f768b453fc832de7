"""InnerProduct: Caffe's reference cases through the layer, forward values, gradient checks for axis/transpose/bias,
and clear errors."""
from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format

from pycaffe_norm.blob import Blob
from pycaffe_norm.errors import NetError, ShapeError
from pycaffe_norm.layers import create_layer
from pycaffe_norm.layers import inner_product as ip_module
from pycaffe_norm.proto import caffe_pb2
from pycaffe_norm.random import set_random_seed
from tests.gradient_check import GradientChecker, layer_from_text, make_blob
from tests.reference_check import REF, check, load, tol

TRAIN = caffe_pb2.TRAIN
GAUSS = 'weight_filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 }'


def make_layer(text: str):
    return layer_from_text('type: "InnerProduct" ' + text, name="ip")


def setup_layer(text, x, dtype=np.float64):
    layer = make_layer(text)
    b, t = [make_blob(x, dtype)], [Blob((), dtype=dtype)]
    layer.initialize(b, t)
    return layer, b, t


def gaussian(shape, seed=0):
    return np.random.RandomState(seed).randn(*shape)


@pytest.mark.parametrize("name", ["ip_2d", "ip_4d_axis1", "ip_transpose"])
def test_reference_case_layer(name):
    d = REF / name
    meta, data = load(d)
    net = caffe_pb2.NetParameter()
    text_format.Parse((d / "net.prototxt").read_text(), net)
    (lp,) = [lp for lp in net.layer if lp.type != "Input"]
    layer = create_layer(lp, TRAIN)
    b, t = [make_blob(data["in/data"], np.float32)], [Blob((), dtype=np.float32)]
    layer.initialize(b, t)
    for i, blob in enumerate(layer.blobs):
        blob.data[...] = data["param/ip/%d" % i]
    layer.forward(b, t)
    t[0].diff[...] = data["topdiff/ip"]
    layer.backward(t, [True], b)
    pairs = [("out/ip", t[0].data), ("grad/data", b[0].diff)]
    pairs += [("pgrad/ip/%d" % i, blob.diff) for i, blob in enumerate(layer.blobs)]
    for key, got in pairs:
        check(got, data[key], tol(meta, key), key)


MODES = {
    # name: (param text, bottom shape, axis)
    "2d": ("num_output: 3", (4, 5), 1),
    "4d_axis1": ("num_output: 3", (2, 3, 2, 2), 1),
    "4d_axis2": ("num_output: 2 axis: 2", (2, 3, 2, 2), 2),
    "axis_neg1": ("num_output: 2 axis: -1", (2, 3, 4), 2),
    "axis0": ("num_output: 2 axis: 0", (3, 2), 0),
    "transpose": ("num_output: 3 transpose: true", (4, 5), 1),
    "transpose_4d": ("num_output: 2 transpose: true", (2, 2, 3, 2), 1),
    "no_bias": ("num_output: 3 bias_term: false", (3, 4), 1),
    "no_bias_transpose": ("num_output: 3 bias_term: false transpose: true", (3, 4), 1),
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_forward_values(mode):
    text, shape, axis = MODES[mode]
    x = gaussian(shape)
    layer, b, t = setup_layer("inner_product_param { %s %s }" % (text, GAUSS), x)
    layer.forward(b, t)
    m = int(np.prod(shape[:axis]))
    w = layer.blobs[0].data
    w = w.T if layer.transpose else w
    ref = x.reshape(m, -1) @ w.T
    if layer.bias_term:
        ref = ref + layer.blobs[1].data
    assert t[0].shape == shape[:axis] + (w.shape[0],)
    np.testing.assert_allclose(t[0].data.reshape(m, -1), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_gradient(mode):
    text, shape, _ = MODES[mode]
    layer, b, t = setup_layer("inner_product_param { %s %s }" % (text, GAUSS), gaussian(shape))
    assert GradientChecker().check(layer, b, t, already_set_up=True) > 0


def test_weight_shapes_and_fillers():
    layer, _, t = setup_layer('inner_product_param { num_output: 4 weight_filler { type: "constant" value: 2 } '
                              'bias_filler { type: "constant" value: 3 } }', np.ones((2, 3, 5)))
    assert layer.blobs[0].shape == (4, 15) and layer.blobs[1].shape == (4,)
    assert np.all(layer.blobs[0].data == 2) and np.all(layer.blobs[1].data == 3)
    layer2, _, _ = setup_layer("inner_product_param { num_output: 4 transpose: true bias_term: false }",
                               np.ones((2, 3, 5)))
    assert [p.shape for p in layer2.blobs] == [(15, 4)]


def test_float32_and_param_diff_accumulation():
    x = gaussian((6, 7)).astype(np.float32)
    layer, b, t = setup_layer("inner_product_param { num_output: 5 %s }" % GAUSS, x, dtype=np.float32)
    layer.forward(b, t)
    assert t[0].data.dtype == np.float32
    t[0].diff[...] = gaussian((6, 5), 1)
    layer.backward(t, [False], b)
    first = [p.diff.copy() for p in layer.blobs]
    np.testing.assert_allclose(first[0], t[0].diff.T @ x, rtol=1e-5)
    np.testing.assert_allclose(first[1], t[0].diff.sum(0), rtol=1e-5)
    layer.backward(t, [True], b)
    for p, f in zip(layer.blobs, first):
        np.testing.assert_allclose(p.diff, 2 * f, rtol=1e-5)
    np.testing.assert_allclose(b[0].diff, t[0].diff @ layer.blobs[0].data, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("transpose", ["false", "true"])
def test_weight_gradient_in_row_blocks_equals_one_product(transpose, monkeypatch):
    """The weight gradient accumulated in blocks of rows (a small temporary) equals x^T dy accumulated at once."""
    x, dy = gaussian((4, 3, 2), 1), gaussian((4, 5), 2)
    layer, b, t = setup_layer("inner_product_param { num_output: 5 transpose: %s %s }" % (transpose, GAUSS), x)
    monkeypatch.setattr(ip_module, "_PRODUCT_BLOCK", 7)   # one or two rows per block
    layer.blobs[0].diff[...] = 1.0
    layer.forward(b, t)
    t[0].diff[...] = dy
    layer.backward(t, [True], b)
    x2 = x.reshape(4, 6)
    expected = 1.0 + (x2.T @ dy if transpose == "true" else dy.T @ x2)
    np.testing.assert_allclose(layer.blobs[0].diff, expected, rtol=1e-12)


def test_reshape_with_other_batch_size():
    layer, b, t = setup_layer("inner_product_param { num_output: 2 %s }" % GAUSS, gaussian((3, 2, 2)))
    b[0].reshape((5, 4))
    layer.reshape(b, t)
    assert t[0].shape == (5, 2)


def test_incompatible_input_size_names_layer_and_shapes():
    layer, b, t = setup_layer("inner_product_param { num_output: 2 }", np.zeros((3, 4, 2)))
    b[0].reshape((3, 5, 2))
    with pytest.raises(ShapeError, match=r"'ip'.*\(3, 5, 2\)"):
        layer.reshape(b, t)


def test_preloaded_weight_with_wrong_shape():
    layer = make_layer("inner_product_param { num_output: 3 }")
    layer.blobs = [Blob((3, 7)), Blob((3,))]
    with pytest.raises(ShapeError, match=r"'ip'.*\(3, 7\).*\(3, 8\)"):
        layer.initialize([make_blob(np.zeros((2, 8)))], [Blob(())])


@pytest.mark.parametrize("text, match", [
    ("inner_product_param { }", "num_output"),
    ("inner_product_param { num_output: 2 axis: 3 }", "axis"),
])
def test_parameter_errors(text, match):
    with pytest.raises(NetError, match=r"'ip'.*" + match):
        setup_layer(text, np.zeros((2, 3)))


NOISY = {
    "bias": ("num_output: 3", (4, 5)),
    "no_bias": ("num_output: 3 bias_term: false", (4, 5)),
    "transpose": ("num_output: 3 transpose: true", (2, 2, 3)),
    "transpose_no_bias": ("num_output: 2 transpose: true bias_term: false", (3, 4)),
}


def noisy_layer(text, x, phase=TRAIN, sigma=" sigma_init: 0.5"):
    p = caffe_pb2.LayerParameter()
    text_format.Parse('name: "ip" type: "InnerProduct" inner_product_param { %s %s enable_noise: true%s }'
                      % (text, GAUSS, sigma), p)
    layer = create_layer(p, phase)
    b, t = [make_blob(x)], [Blob((), dtype=np.float64)]
    layer.initialize(b, t)
    layer.reshape(b, t)
    return layer, b, t


def test_noisy_blobs_are_filled_as_mycaffe():
    # MyCaffe: weight and bias filled, then scaled by 1/sqrt(weight.shape[1]); sigmas sigma_init/sqrt(fan).
    x = gaussian((2, 5))
    set_random_seed(3)
    plain, _, _ = setup_layer("inner_product_param { num_output: 3 %s }" % GAUSS, x)
    set_random_seed(3)
    layer, _, _ = noisy_layer("num_output: 3", x, sigma="")
    assert [blob.shape for blob in layer.blobs] == [(3, 5), (3,), (3, 5), (3,)]
    np.testing.assert_allclose(layer.blobs[0].data, plain.blobs[0].data / np.sqrt(5), rtol=1e-15)
    np.testing.assert_allclose(layer.blobs[1].data, plain.blobs[1].data / np.sqrt(5), rtol=1e-15)
    np.testing.assert_allclose(layer.blobs[2].data, 0.017 / np.sqrt(5), rtol=1e-15)
    np.testing.assert_allclose(layer.blobs[3].data, 0.017 / np.sqrt(3), rtol=1e-15)
    tl, _, _ = noisy_layer("num_output: 3 transpose: true bias_term: false", x)
    assert [blob.shape for blob in tl.blobs] == [(5, 3), (5, 3)]
    np.testing.assert_allclose(tl.blobs[1].data, 0.5 / np.sqrt(3), rtol=1e-15)


@pytest.mark.parametrize("mode", sorted(NOISY))
def test_noisy_forward_values(mode):
    text, shape = NOISY[mode]
    x = gaussian(shape)
    layer, b, t = noisy_layer(text, x)
    layer.forward(b, t)
    eps = [e.copy() for e in layer.epsilon]
    assert all(np.all(np.abs(e) <= 1) and np.std(e) > 0.1 for e in eps)
    half = len(layer.blobs) // 2
    w = layer.blobs[0].data + layer.blobs[half].data * eps[0]
    w = w.T if layer.transpose else w
    ref = x.reshape(-1, w.shape[1]) @ w.T
    if layer.bias_term:
        ref = ref + layer.blobs[1].data + layer.blobs[3].data * eps[1]
    np.testing.assert_allclose(t[0].data.reshape(ref.shape), ref, rtol=1e-12, atol=1e-12)
    layer.forward(b, t)  # new noise each TRAIN forward
    assert not np.array_equal(layer.epsilon[0], eps[0])


def test_noisy_test_phase_uses_mu_weights_only():
    x = gaussian((4, 5))
    layer, b, t = noisy_layer("num_output: 3", x, phase=caffe_pb2.TEST)
    layer.forward(b, t)
    np.testing.assert_allclose(t[0].data, x @ layer.blobs[0].data.T + layer.blobs[1].data, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", sorted(NOISY))
def test_noisy_gradient_with_noise_held(mode):
    text, shape = NOISY[mode]
    layer, b, t = noisy_layer(text, gaussian(shape))
    layer.resample_noise = False
    n = GradientChecker().check(layer, b, t, already_set_up=True)
    assert n == b[0].count + sum(blob.count for blob in layer.blobs)


def test_noisy_wrong_blob_count_and_bad_sigma():
    x = gaussian((2, 5))
    layer = make_layer("inner_product_param { num_output: 3 enable_noise: true }")
    layer.blobs = [Blob((3, 5)), Blob((3,))]
    with pytest.raises(NetError, match="incorrect number of weight blobs: 2 given, 4 expected"):
        layer.initialize([make_blob(x)], [Blob(())])
    with pytest.raises(NetError, match="sigma_init must be >= 0"):
        setup_layer("inner_product_param { num_output: 3 enable_noise: true sigma_init: -1 }", x)
