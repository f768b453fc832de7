"""Normalization layers: BatchNorm, LRN, MVN, Normalization1, GRN, Normalize / Normalization2.

The reference cases (Caffe's float32 outputs and float64 formulas) run end to end in tests/test_reference.py;
here: the formula cases driven layer by layer in float64 (to ~1e-10), exhaustive float64 gradient checks (step and
threshold 1e-6) for every layer and mode, statistical checks, BatchNorm's phases and running sums, in-place
use, errors and logging.
"""
from __future__ import annotations

import json
import logging
import pathlib

import numpy as np
import pytest
from google.protobuf import text_format

import pycaffe_norm as caffe
from pycaffe_norm.errors import NetError, ShapeError
from pycaffe_norm.layers import create_layer
from pycaffe_norm.proto import caffe_pb2
from tests.gradient_check import GradientChecker, make_blob

REF = pathlib.Path(__file__).resolve().parents[1] / "reference"
TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def layer_of(text: str, phase: int = TRAIN):
    p = caffe_pb2.LayerParameter()
    text_format.Parse(text, p)
    if not p.name:
        p.name = "l"
    return create_layer(p, phase)


def run(layer, x, in_place: bool = False):
    """Sets up and runs forward; returns (bottom, top)."""
    bottom = [make_blob(x, dtype=np.asarray(x).dtype)]
    top = bottom if in_place else [caffe.Blob((), dtype=bottom[0].dtype)]
    layer.initialize(bottom, top)
    layer.forward(bottom, top)
    return bottom, top


def grad_check(layer, x, in_place: bool = False, **kw) -> int:
    bottom = [make_blob(x)]
    top = bottom if in_place else [make_blob(np.zeros(0))]
    n = GradientChecker(**kw).check(layer, bottom, top)
    return n


def rng(seed: int = 0) -> np.random.RandomState:
    return np.random.RandomState(seed)


# --------------------------------------------------------------------------------------------------------
# formula reference cases, layer by layer in float64 (a float64 implementation matches them to ~1e-12)
# --------------------------------------------------------------------------------------------------------
FORMULA_CASES = ["grn_l2", "normalization1_l2", "normalize_channel_perchannel", "normalize_channel_ssd20",
                 "normalize_eps_visible", "normalize_spatial_perchannel", "normalize_spatial_shared"]


@pytest.mark.parametrize("case", FORMULA_CASES)
def test_formula_case_float64(case):
    d = REF / case
    meta = json.loads((d / "case.json").read_text())
    assert meta["source"] == "formula" and meta["dtype"] == "float64"
    net = caffe_pb2.NetParameter()
    text_format.Parse((d / "net.prototxt").read_text(), net)
    (lp,) = [lp for lp in net.layer if lp.type != "Input"]
    with np.load(d / "data.npz", allow_pickle=False) as z:
        A = {k: z[k] for k in z.files}
    layer = create_layer(lp, TRAIN)
    bottom = [make_blob(A["in/" + b]) for b in lp.bottom]
    top = [make_blob(np.zeros(0))]
    layer.initialize(bottom, top)
    for k in A:
        if k.startswith("param/"):
            layer.blobs[int(k.rsplit("/", 1)[1])].data[...] = A[k]
    layer.forward(bottom, top)
    np.testing.assert_allclose(top[0].data, A["out/" + lp.top[0]], rtol=1e-10, atol=1e-12)
    top[0].diff[...] = A["topdiff/" + lp.top[0]]
    layer.backward(top, [True], bottom)
    np.testing.assert_allclose(bottom[0].diff, A["grad/" + lp.bottom[0]], rtol=1e-9, atol=1e-12)
    for k in A:
        if k.startswith("pgrad/"):
            np.testing.assert_allclose(layer.blobs[int(k.rsplit("/", 1)[1])].diff, A[k], rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------------------------------------
# BatchNorm
# --------------------------------------------------------------------------------------------------------
def bn_reference(x, mean, var, eps):
    c = x.shape[1] if x.ndim > 1 else 1
    shape = (1, c) + (1,) * (x.ndim - 2)
    return (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)


def test_batchnorm_forward_batch_stats_and_running_sums():
    x = rng(1).randn(4, 3, 2, 5) * 2 + 1.5
    layer = layer_of('type: "BatchNorm" batch_norm_param { moving_average_fraction: 0.9 eps: 1e-5 }')
    bottom, top = run(layer, x)
    mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    np.testing.assert_allclose(top[0].data, bn_reference(x, mean, var, 1e-5), rtol=1e-10, atol=1e-12)
    m = 4 * 2 * 5
    np.testing.assert_allclose(layer.blobs[0].data, mean, rtol=1e-12)
    np.testing.assert_allclose(layer.blobs[1].data, var * m / (m - 1), rtol=1e-12)
    np.testing.assert_allclose(layer.blobs[2].data, [1.0])
    x2 = rng(2).randn(4, 3, 2, 5)
    bottom[0].data[...] = x2
    layer.forward(bottom, top)
    np.testing.assert_allclose(layer.blobs[0].data, x2.mean(axis=(0, 2, 3)) + 0.9 * mean, rtol=1e-12)
    np.testing.assert_allclose(layer.blobs[1].data, (x2.var(axis=(0, 2, 3)) + 0.9 * var) * m / (m - 1),
                               rtol=1e-12)
    np.testing.assert_allclose(layer.blobs[2].data, [1.9])
    assert [b.shape for b in layer.blobs] == [(3,), (3,), (1,)]


def test_batchnorm_statistics_mean0_var1():
    x = rng(3).randn(8, 4, 5, 5) * 3 - 2
    _, top = run(layer_of('type: "BatchNorm"'), x.astype(np.float32))
    y = top[0].data.astype(np.float64)
    assert np.abs(y.mean(axis=(0, 2, 3))).max() < 1e-3
    assert np.abs(y.var(axis=(0, 2, 3)) - 1).max() < 1e-3


@pytest.mark.parametrize("phase, explicit, global_mode", [
    (TRAIN, "", False), (TEST, "", True), (TRAIN, "use_global_stats: true", True),
    (TEST, "use_global_stats: false", False)])
def test_batchnorm_mode_follows_phase_unless_set(phase, explicit, global_mode, caplog):
    with caplog.at_level(logging.INFO, logger="pycaffe_norm"):
        layer = layer_of('name: "bn1" type: "BatchNorm" batch_norm_param { %s }' % explicit, phase)
        run(layer, rng(0).randn(3, 2))
    assert layer.use_global_stats is global_mode
    msgs = [r.getMessage() for r in caplog.records if "bn1" in r.getMessage()]
    assert len(msgs) == 1
    assert ("global statistics" in msgs[0]) is global_mode
    assert ("batch statistics" in msgs[0]) is not global_mode


def test_batchnorm_global_mode_divides_by_S_and_zero_S_means_zero_stats():
    x = rng(4).randn(2, 3, 4)
    layer = layer_of('type: "BatchNorm" batch_norm_param { eps: 1e-3 }', TEST)
    bottom, top = run(layer, x)
    np.testing.assert_allclose(top[0].data, x / np.sqrt(1e-3), rtol=1e-12)      # fresh: S == 0
    layer.blobs[0].data[...] = [1.0, -2.0, 0.5]
    layer.blobs[1].data[...] = [4.0, 9.0, 1.0]
    layer.blobs[2].data[...] = 2.0
    layer.forward(bottom, top)
    np.testing.assert_allclose(top[0].data, bn_reference(x, np.array([0.5, -1, 0.25]), np.array([2, 4.5, 0.5]), 1e-3),
                               rtol=1e-12)
    assert float(layer.blobs[2].data[0]) == 2.0   # no update in global mode


def test_batchnorm_reads_S_from_element_0_of_a_mycaffe_shaped_blob():
    layer = layer_of('type: "BatchNorm"', TEST)
    layer.blobs = [make_blob([1.0, 2.0]), make_blob([4.0, 9.0]), make_blob([2.0, 2.0])]   # MyCaffe: S is (C,)
    _, top = run(layer, np.ones((3, 2)))
    np.testing.assert_allclose(top[0].data[0], [0.5 / np.sqrt(2 + 1e-5), 0.0], rtol=1e-12)


def test_batchnorm_train_and_test_differ_and_test_uses_saved_sums():
    r = rng(5)
    train = layer_of('type: "BatchNorm"', TRAIN)
    bottom, top = run(train, r.randn(6, 2, 3, 3) * 2 + 1)
    for _ in range(3):
        bottom[0].data[...] = r.randn(6, 2, 3, 3) * 2 + 1
        train.forward(bottom, top)
    x = r.randn(6, 2, 3, 3) * 2 + 1
    test = layer_of('type: "BatchNorm"', TEST)
    test.blobs = [caffe.Blob(b.shape, dtype=np.float64) for b in train.blobs]
    for dst, src in zip(test.blobs, train.blobs):
        dst.data[...] = src.data
    _, top_test = run(test, x)
    s = float(train.blobs[2].data[0])
    expected = bn_reference(x, train.blobs[0].data / s, train.blobs[1].data / s, 1e-5)
    np.testing.assert_allclose(top_test[0].data, expected, rtol=1e-10)
    bottom[0].data[...] = x
    train.forward(bottom, top)
    assert np.abs(top[0].data - top_test[0].data).max() > 1e-2


def test_batchnorm_statistics_blobs_never_learn():
    layer = layer_of('type: "BatchNorm"')
    run(layer, rng(0).randn(3, 2, 2))
    assert layer.fixed_param_indices() == [0, 1, 2]
    assert layer.param_propagate_down == [False, False, False]
    layer2 = layer_of('type: "BatchNorm" batch_norm_param { scale_bias: true }')
    run(layer2, rng(0).randn(3, 2, 2))
    assert layer2.param_propagate_down == [False, False, False, True, True]


def test_batchnorm_lr_mult_forced_to_zero_by_net_with_warning(caplog):
    net = caffe_pb2.NetParameter()
    text_format.Parse('''
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 4 dim: 3 } } }
        layer { name: "bn" type: "BatchNorm" bottom: "x" top: "y"
                param { lr_mult: 1 } param { lr_mult: 0 } param { lr_mult: 2 } }''', net)
    with caplog.at_level(logging.WARNING, logger="pycaffe_norm"):
        n = caffe.Net(net, caffe.TRAIN)
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "'bn'" in r.getMessage()]
    assert len(warned) == 2          # blobs 0 and 2
    assert n.layer_dict["bn"].param_propagate_down == [False, False, False]
    assert all(lr == 0 for lr in n.params_lr[:3])


@pytest.mark.parametrize("shape", [(5, 3), (4, 2, 3), (3, 2, 2, 3), (7,)])
def test_batchnorm_gradient_batch_mode(shape):
    x = rng(6).randn(*shape) * 2 + 0.5
    grad_check(layer_of('type: "BatchNorm"'), x)


def test_batchnorm_gradient_global_mode():
    layer = layer_of('type: "BatchNorm" batch_norm_param { eps: 1e-3 }', TEST)
    layer.blobs = [make_blob([0.3, -0.2]), make_blob([2.0, 0.5]), make_blob([1.5])]
    grad_check(layer, rng(7).randn(3, 2, 2, 2))


@pytest.mark.parametrize("phase", [TRAIN, TEST])
def test_batchnorm_gradient_in_place(phase):
    layer = layer_of('type: "BatchNorm"', phase)
    layer.blobs = [make_blob([0.3, -0.2, 1.0]), make_blob([2.0, 0.5, 1.0]), make_blob([1.5])]
    grad_check(layer, rng(8).randn(4, 3, 2), in_place=True)


def test_batchnorm_in_place_matches_out_of_place_and_caches_xnorm():
    x = rng(9).randn(4, 3, 2, 2)
    a, b = layer_of('type: "BatchNorm"'), layer_of('type: "BatchNorm"')
    _, top = run(a, x)
    bot_in, top_in = run(b, x, in_place=True)
    np.testing.assert_allclose(top_in[0].data, top[0].data, rtol=1e-13)
    dy = rng(10).randn(*x.shape)
    bot = [make_blob(x)]
    a.forward(bot, top)
    top[0].diff[...] = dy
    a.backward(top, [True], bot)
    expected = bot[0].diff.copy()
    top_in[0].data[...] = -5          # a later in-place layer clobbers the output: BatchNorm kept x_norm
    top_in[0].diff[...] = dy
    b.backward(top_in, [True], bot_in)
    np.testing.assert_allclose(bot_in[0].diff, expected, rtol=1e-12)


@pytest.mark.parametrize("phase", [TRAIN, TEST])
@pytest.mark.parametrize("in_place", [False, True])
def test_batchnorm_scale_bias(phase, in_place):
    x = rng(11).randn(5, 3, 2, 2) * 1.5 + 0.7
    text = ('type: "BatchNorm" batch_norm_param { scale_bias: true scale_filler { type: "constant" value: 2 } '
            'bias_filler { type: "constant" value: 0.5 } }')
    layer = layer_of(text, phase)
    _, top = run(layer, x)
    assert [b.shape for b in layer.blobs] == [(3,), (3,), (1,), (3,), (3,)]
    np.testing.assert_allclose(layer.blobs[3].data, 2.0)
    np.testing.assert_allclose(layer.blobs[4].data, 0.5)
    if phase == TRAIN:
        xn = bn_reference(x, x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3)), 1e-5)
    else:
        xn = x / np.sqrt(1e-5)
    np.testing.assert_allclose(top[0].data, 2 * xn + 0.5, rtol=1e-10)
    layer = layer_of(text, phase)
    layer.blobs = [make_blob([0.3, -0.2, 1.0]), make_blob([2.0, 0.5, 1.0]), make_blob([1.5]),
                   make_blob([0.5, -1.5, 2.0]), make_blob([0.1, 0.2, -0.3])]
    grad_check(layer, x, in_place=in_place)


def test_batchnorm_scale_bias_on_by_filler_and_default_fillers():
    layer = layer_of('type: "BatchNorm" batch_norm_param { bias_filler { type: "constant" value: 1 } }')
    run(layer, rng(0).randn(3, 2))
    assert len(layer.blobs) == 5
    np.testing.assert_allclose(layer.blobs[3].data, 1.0)
    layer = layer_of('type: "BatchNorm" batch_norm_param { scale_bias: true }')
    run(layer, rng(0).randn(3, 2))
    np.testing.assert_allclose(layer.blobs[3].data, 1.0)
    np.testing.assert_allclose(layer.blobs[4].data, 0.0)


def test_batchnorm_errors():
    layer = layer_of('type: "BatchNorm"')
    bottom, top = run(layer, rng(0).randn(3, 2, 2))
    bottom[0].reshape((3, 4, 2))
    with pytest.raises(ShapeError, match="BatchNorm"):
        layer.reshape(bottom, top)
    layer = layer_of('type: "BatchNorm"')
    layer.blobs = [make_blob([0.0, 0.0]), make_blob([0.0])]
    with pytest.raises(NetError, match="parameter blobs"):
        run(layer, rng(0).randn(3, 2, 2))


def test_batchnorm_net_trained_snapshot_loaded_in_test(tmp_path):
    net_text = '''
        name: "bnnet"
        layer { name: "data" type: "Input" top: "data" top: "label"
                input_param { shape { dim: 16 dim: 6 } shape { dim: 16 } } }
        layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
                inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.5 } } }
        layer { name: "bn" type: "BatchNorm" bottom: "ip1" top: "ip1" }
        layer { name: "sc" type: "Scale" bottom: "ip1" top: "ip1" scale_param { bias_term: true } }
        layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
                inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
        layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }'''
    sp = caffe_pb2.SolverParameter()
    text_format.Parse('base_lr: 0.1 momentum: 0.9 lr_policy: "fixed" max_iter: 30 display: 0 random_seed: 3 '
                      'snapshot_prefix: "%s"' % (tmp_path / "bn"), sp)
    text_format.Parse(net_text, sp.net_param)
    solver = caffe.get_solver(sp)
    r = rng(12)
    for _ in range(30):
        solver.net.blobs["data"].data[...] = r.randn(16, 6) * 2 + 1
        solver.net.blobs["label"].data[...] = r.randint(0, 3, 16)
        solver.step(1)
    state = solver.snapshot()
    assert pathlib.Path(state).exists()
    model = str(tmp_path / "bn_iter_30.caffemodel")
    netp = caffe_pb2.NetParameter()
    text_format.Parse(net_text, netp)
    test_net = caffe.Net(netp, model, caffe.TEST)
    sums = [np.array(b.data, np.float64) for b in test_net.params["bn"]]
    np.testing.assert_allclose(sums[2], [sum(0.999 ** i for i in range(30))], rtol=1e-5)
    x = r.randn(16, 6) * 2 + 1
    test_net.blobs["data"].data[...] = x
    # ip1 before BatchNorm, by hand from the saved weights
    w, b = (np.array(p.data, np.float64) for p in test_net.params["ip1"])
    h = x @ w.T + b
    s = sums[2][0]
    expected_bn = (h - sums[0] / s) / np.sqrt(sums[1] / s + 1e-5)
    sc, sb = (np.array(p.data, np.float64) for p in test_net.params["sc"])
    test_net.forward()
    np.testing.assert_allclose(test_net.blobs["ip1"].data, expected_bn * sc + sb, rtol=2e-4, atol=2e-5)
    train_net = caffe.Net(netp, model, caffe.TRAIN)
    train_net.blobs["data"].data[...] = x
    train_net.forward()
    assert np.abs(train_net.blobs["ip1"].data - test_net.blobs["ip1"].data).max() > 1e-2


# --------------------------------------------------------------------------------------------------------
# LRN
# --------------------------------------------------------------------------------------------------------
def lrn_across_reference(x, size, alpha, beta, k):
    n, c = x.shape[:2]
    pre = (size - 1) // 2
    out = np.empty_like(x)
    for ch in range(c):
        lo, hi = max(0, ch - pre), min(c, ch + pre + 1)
        s = k + alpha / size * (x[:, lo:hi] ** 2).sum(axis=1)
        out[:, ch] = x[:, ch] * s ** -beta
    return out


def lrn_within_reference(x, size, alpha, beta):
    pre = (size - 1) // 2
    h, w = x.shape[2:]
    pad = np.zeros(x.shape[:2] + (h + 2 * pre, w + 2 * pre))
    pad[:, :, pre:pre + h, pre:pre + w] = x ** 2
    s = np.zeros_like(x)
    for i in range(size):
        for j in range(size):
            s += pad[:, :, i:i + h, j:j + w]
    return x * (1 + alpha / size ** 2 * s) ** -beta


@pytest.mark.parametrize("size, c, beta", [(5, 7, 0.75), (3, 4, 0.5), (15, 7, 0.75), (1, 3, 1.0), (5, 3, 0.6),
                                           (41, 20, 0.75)])
def test_lrn_across_forward(size, c, beta):
    x = rng(13).randn(2, c, 3, 2) * 3
    layer = layer_of('type: "LRN" lrn_param { local_size: %d alpha: 0.5 beta: %g k: 1.5 }' % (size, beta))
    _, top = run(layer, x)
    np.testing.assert_allclose(top[0].data, lrn_across_reference(x, size, 0.5, beta, 1.5), rtol=1e-12)


@pytest.mark.parametrize("size", [1, 3, 5, 9])
def test_lrn_within_forward_ignores_k(size):
    x = rng(14).randn(2, 2, 5, 4) * 3
    layer = layer_of('type: "LRN" lrn_param { local_size: %d alpha: 0.5 beta: 0.75 k: 7 '
                     'norm_region: WITHIN_CHANNEL }' % size)
    _, top = run(layer, x)
    np.testing.assert_allclose(top[0].data, lrn_within_reference(x, size, 0.5, 0.75), rtol=1e-12)


@pytest.mark.parametrize("text, shape", [
    ("local_size: 5 alpha: 1 beta: 0.75", (2, 7, 3, 3)),          # Caffe's TestGradientAcrossChannels
    ("local_size: 15 alpha: 0.8 beta: 0.75", (2, 7, 2, 2)),       # local_size > channels
    ("local_size: 5 alpha: 0.6 beta: 0.6 k: 2", (3, 4)),          # 2-D input, general beta
    ("local_size: 3 alpha: 0.6 beta: 0.5", (2, 3, 2, 2)),
    ("local_size: 3 alpha: 0.6 beta: 1 k: 1.5", (2, 3, 2, 2)),
    ("local_size: 41 alpha: 0.8 beta: 0.75", (1, 20, 1, 2)),      # banded-matrix window
    ("local_size: 3 alpha: 1 beta: 0.75 norm_region: WITHIN_CHANNEL", (2, 2, 4, 3)),
    ("local_size: 5 alpha: 1 beta: 0.6 k: 9 norm_region: WITHIN_CHANNEL", (1, 2, 4, 4)),
])
@pytest.mark.parametrize("in_place", [False, True])
def test_lrn_gradient(text, shape, in_place):
    layer = layer_of('type: "LRN" lrn_param { %s }' % text)
    grad_check(layer, rng(15).randn(*shape), in_place=in_place)


def test_lrn_gradient_tight_float64():
    # Caffe's 1e-2 is for float32; in float64 the analytic gradient agrees far more closely.
    layer = layer_of('type: "LRN" lrn_param { local_size: 5 alpha: 1 beta: 0.75 }')
    x = rng(16).randn(2, 6, 2, 2)
    GradientChecker().check(layer, [make_blob(x)], [make_blob(np.zeros(0))])


def test_lrn_errors():
    with pytest.raises(NetError, match="odd"):
        run(layer_of('name: "n1" type: "LRN" lrn_param { local_size: 4 }'), np.ones((1, 3, 2, 2)))
    with pytest.raises(ShapeError, match="WITHIN_CHANNEL"):
        run(layer_of('type: "LRN" lrn_param { norm_region: WITHIN_CHANNEL local_size: 3 }'), np.ones((2, 3, 4)))


def test_lrn_in_place_matches_out_of_place():
    x = rng(17).randn(2, 5, 3, 3)
    a = layer_of('type: "LRN" lrn_param { local_size: 3 alpha: 0.7 }')
    b = layer_of('type: "LRN" lrn_param { local_size: 3 alpha: 0.7 }')
    bot, top = run(a, x)
    bot_in, top_in = run(b, x, in_place=True)
    np.testing.assert_allclose(top_in[0].data, top[0].data, rtol=1e-14)
    dy = rng(18).randn(*x.shape)
    top[0].diff[...] = dy
    top_in[0].diff[...] = dy
    a.backward(top, [True], bot)
    b.backward(top_in, [True], bot_in)
    np.testing.assert_allclose(bot_in[0].diff, bot[0].diff, rtol=1e-12)


# --------------------------------------------------------------------------------------------------------
# MVN
# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("across", [False, True])
def test_mvn_statistics_mean0_var1(across):
    x = rng(19).randn(3, 4, 5, 6) * 4 + 3
    layer = layer_of('type: "MVN" mvn_param { across_channels: %s }' % str(across).lower())
    _, top = run(layer, x.astype(np.float32))
    y = top[0].data.astype(np.float64)
    axes = (1, 2, 3) if across else (2, 3)
    assert np.abs(y.mean(axis=axes)).max() < 1e-3
    assert np.abs(y.var(axis=axes) - 1).max() < 1e-3


def test_mvn_forward_eps_outside_sqrt_and_mean_only():
    x = rng(20).randn(2, 3, 4) * 0.1
    _, top = run(layer_of('type: "MVN" mvn_param { eps: 0.01 }'), x)
    mean, std = x.mean(axis=2, keepdims=True), x.std(axis=2, keepdims=True)
    np.testing.assert_allclose(top[0].data, (x - mean) / (std + 0.01), rtol=1e-12)
    _, top = run(layer_of('type: "MVN" mvn_param { normalize_variance: false }'), x)
    np.testing.assert_allclose(top[0].data, x - mean, rtol=1e-12)


def test_mvn_backward_is_caffes_formula_ignoring_eps():
    x = rng(21).randn(2, 2, 3, 4) * 0.1
    layer = layer_of('type: "MVN" mvn_param { eps: 0.01 }')
    bot, top = run(layer, x)
    dy = rng(22).randn(*x.shape)
    top[0].diff[...] = dy
    layer.backward(top, [True], bot)
    y = top[0].data
    m = lambda a: a.mean(axis=(2, 3), keepdims=True)  # noqa: E731
    expected = (dy - m(dy) - m(dy * y) * y) / (x.std(axis=(2, 3), keepdims=True) + 0.01)
    np.testing.assert_allclose(bot[0].diff, expected, rtol=1e-12)


# With unit-scale data, eps 1e-9 is far below what a finite difference can see, so Caffe's eps-free Jacobian
# is exact to the checker's precision; mvn_large_eps shows where it is not.
@pytest.mark.parametrize("text, shape", [
    ("", (2, 3, 3, 2)), ("across_channels: true", (2, 3, 2, 2)), ("normalize_variance: false", (2, 3, 2, 2)),
    ("normalize_variance: false across_channels: true", (2, 2, 3)), ("", (3, 2, 5)),
])
@pytest.mark.parametrize("in_place", [False, True])
def test_mvn_gradient(text, shape, in_place):
    layer = layer_of('type: "MVN" mvn_param { %s }' % text)
    grad_check(layer, rng(23).randn(*shape) * 2 + 1, in_place=in_place)


# --------------------------------------------------------------------------------------------------------
# Normalization1, GRN
# --------------------------------------------------------------------------------------------------------
def away_from_zero(shape, seed):
    x = rng(seed).uniform(0.2, 1.5, shape)
    return x * rng(seed + 1).choice([-1.0, 1.0], shape)


def test_normalization1_unit_norms_and_zero_sample():
    x = rng(24).randn(4, 3, 2, 3).astype(np.float32)
    x[2] = 0
    layer = layer_of('type: "Normalization1"')
    bot, top = run(layer, x)
    y = top[0].data.reshape(4, -1).astype(np.float64)
    norms = np.sqrt((y ** 2).sum(axis=1))
    assert np.abs(norms[[0, 1, 3]] - 1).max() < 1e-5
    assert np.all(y[2] == 0)
    top[0].diff[...] = 1
    layer.backward(top, [True], bot)
    assert np.all(np.isfinite(bot[0].diff)) and np.all(bot[0].diff[2] == 0)
    _, top = run(layer_of('type: "Normalization1" normalization_param { norm: L1 }'), x)
    y = top[0].data.reshape(4, -1).astype(np.float64)
    assert np.abs(np.abs(y[[0, 1, 3]]).sum(axis=1) - 1).max() < 1e-5


@pytest.mark.parametrize("norm", ["L2", "L1"])
@pytest.mark.parametrize("shape", [(3, 2, 2, 3), (4, 5)])
@pytest.mark.parametrize("in_place", [False, True])
def test_normalization1_gradient(norm, shape, in_place):
    layer = layer_of('type: "Normalization1" normalization_param { norm: %s }' % norm)
    grad_check(layer, away_from_zero(shape, 25), in_place=in_place)


@pytest.mark.parametrize("type_name", ["GRN", "GlobResNorm", "globresnet"])
def test_grn_unit_norm_over_channels(type_name):
    x = rng(26).randn(2, 5, 3, 4).astype(np.float32)
    x[1, :, 2, 1] = 0
    layer = layer_of('type: "%s"' % type_name)
    bot, top = run(layer, x)
    norms = np.sqrt((top[0].data.astype(np.float64) ** 2).sum(axis=1))
    mask = np.ones_like(norms, bool)
    mask[1, 2, 1] = False
    assert np.abs(norms[mask] - 1).max() < 1e-5
    assert np.all(top[0].data[1, :, 2, 1] == 0)
    top[0].diff[...] = 1
    layer.backward(top, [True], bot)
    assert np.all(bot[0].diff[1, :, 2, 1] == 0) and np.all(np.isfinite(bot[0].diff))


@pytest.mark.parametrize("shape", [(2, 4, 2, 3), (3, 4), (2, 3, 2, 1, 2)])
@pytest.mark.parametrize("in_place", [False, True])
def test_grn_gradient(shape, in_place):
    grad_check(layer_of('type: "GRN"'), away_from_zero(shape, 27), in_place=in_place)


def test_grn_with_grn_param_is_the_tft_layer():
    with pytest.raises(NetError, match="Temporal Fusion Transformer"):
        layer_of('name: "g" type: "GRN" grn_param { input_dim: 4 hidden_dim: 8 }')


# --------------------------------------------------------------------------------------------------------
# Normalize / Normalization2
# --------------------------------------------------------------------------------------------------------
NORMALIZE_MODES = [(a, c) for a in (True, False) for c in (True, False)]


def normalize_reference(x, scale, across_spatial, eps):
    n, c = x.shape[:2]
    x3 = x.reshape(n, c, -1)
    if across_spatial:
        norm = np.sqrt((x3 ** 2).sum(axis=(1, 2), keepdims=True) + eps)
    else:
        norm = np.sqrt((x3 ** 2).sum(axis=1, keepdims=True) + eps)
    s = np.asarray(scale, np.float64).reshape(1, -1, 1) if np.ndim(scale) else scale
    return (x3 / norm * s).reshape(x.shape)


@pytest.mark.parametrize("across, shared", NORMALIZE_MODES)
def test_normalize_forward_and_blob_shape(across, shared):
    x = rng(28).randn(2, 3, 2, 3)
    text = ('type: "Normalize" norm_param { across_spatial: %s channel_shared: %s '
            'scale_filler { type: "constant" value: 2.5 } }' % (str(across).lower(), str(shared).lower()))
    layer = layer_of(text)
    _, top = run(layer, x)
    assert layer.blobs[0].shape == (() if shared else (3,))
    np.testing.assert_allclose(top[0].data, normalize_reference(x, 2.5, across, 1e-10), rtol=1e-12)


@pytest.mark.parametrize("across, shared", NORMALIZE_MODES)
@pytest.mark.parametrize("in_place", [False, True])
def test_normalize_gradient(across, shared, in_place):
    text = ('type: "Normalize" norm_param { across_spatial: %s channel_shared: %s eps: 0.05 }'
            % (str(across).lower(), str(shared).lower()))
    layer = layer_of(text)
    bottom = [make_blob(rng(29).randn(2, 3, 2, 2))]
    top = bottom if in_place else [make_blob(np.zeros(0))]
    layer.initialize(bottom, top)
    layer.blobs[0].data[...] = 1.7 if shared else [0.5, 2.0, -1.5]   # unequal scales: exact gradient needed
    GradientChecker().check(layer, bottom, top, already_set_up=True)


def test_normalize_unit_norm_and_normalization2_esp_alias():
    x = rng(30).randn(3, 4, 2, 2).astype(np.float32)
    _, top = run(layer_of('type: "Normalize" norm_param { across_spatial: false }'), x)
    assert np.abs(np.sqrt((top[0].data.astype(np.float64) ** 2).sum(axis=1)) - 1).max() < 1e-5
    layer = layer_of('type: "Normalization2" normalization2_param { across_spatial: true esp: 0.5 }')
    x = rng(31).randn(2, 3, 2, 2)
    _, top = run(layer, x)
    assert layer.eps == 0.5
    np.testing.assert_allclose(top[0].data, normalize_reference(x, 1.0, True, 0.5), rtol=1e-12)
    with pytest.raises(NetError, match="esp"):
        run(layer_of('type: "Normalization2" normalization2_param { eps: 0.1 esp: 0.5 }'), x)


def test_normalize_rejects_wrong_scale_blob():
    layer = layer_of('type: "Normalize" norm_param { channel_shared: false }')
    layer.blobs = [make_blob([1.0, 2.0])]
    with pytest.raises(NetError, match="scale blob"):
        run(layer, rng(0).randn(2, 3, 2, 2))


@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
@pytest.mark.parametrize("in_place", [False, True])
def test_lrn_on_threads_gives_one_threads_bits(region, in_place, monkeypatch):
    """The batch split over the pool (forced here for a small batch) changes no bit, in place or not."""
    from pycaffe_norm import parallel

    monkeypatch.setattr(parallel, "MIN_ELEMENTS", 0)
    x = rng(3).randn(5, 7, 6, 4).astype(np.float32)
    dy = rng(4).randn(5, 7, 6, 4).astype(np.float32)
    results = []
    for threads in ("1", "3", "3"):
        monkeypatch.setenv("PCN_THREADS", threads)
        layer = layer_of('type: "LRN" lrn_param { norm_region: %s local_size: 3 alpha: 0.5 beta: 0.75 k: 2 }'
                         % region)
        bottom, top = run(layer, x.copy(), in_place)
        out = top[0].data.copy()
        top[0].diff[...] = dy
        layer.backward(top, [True], bottom)
        results.append((out, bottom[0].diff.copy()))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("extra", ["", "scale_bias: true", "use_global_stats: true"])
@pytest.mark.parametrize("in_place", [False, True])
def test_batchnorm_channels_on_threads_give_one_threads_bits(extra, in_place, monkeypatch):
    """BatchNorm's channels split over the pool (forced here) give the bits of one thread: outputs, running
    statistics, input and scale_bias gradients, in place or not."""
    from pycaffe_norm import parallel
    from pycaffe_norm.layers import normalization

    monkeypatch.setattr(parallel, "MIN_ELEMENTS", 0)
    monkeypatch.setattr(normalization, "SPLIT_ELEMENTS", 0)
    x = (rng(5).randn(4, 7, 3, 5) * 2 + 1).astype(np.float32)
    dy = rng(6).randn(4, 7, 3, 5).astype(np.float32)
    results = []
    for threads in ("1", "3"):
        monkeypatch.setenv("PCN_THREADS", threads)
        layer = layer_of('type: "BatchNorm" batch_norm_param { %s }' % extra)
        if "global" in extra:
            layer.initialize([make_blob(x, dtype=np.float32)], [caffe.Blob((), dtype=np.float32)])
            for i, v in enumerate((rng(7).randn(7), rng(8).rand(7) + 0.5, np.ones(1))):
                layer.blobs[i].data[...] = v
        bottom, top = run(layer, x.copy(), in_place)
        out = top[0].data.copy()
        top[0].diff[...] = dy
        layer.backward(top, [True], bottom)
        results.append([out, bottom[0].diff.copy()] + [b.data.copy() for b in layer.blobs]
                       + [b.diff.copy() for b in layer.blobs[3:]])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
