"""Neuron layers: forward values, exhaustive gradient checks (Caffe's settings) and in-place equivalence."""
from __future__ import annotations

import numpy as np
import pytest

import pycaffe_norm
import pycaffe_norm.random
from pycaffe_norm.blob import Blob
from pycaffe_norm.errors import NetError
from pycaffe_norm.proto import caffe_pb2
from tests.gradient_check import GradientChecker, layer_from_text, make_blob

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


@pytest.fixture(autouse=True)
def _restore_pcn_rng():
    """Dropout tests seed pcn's global generator; give later tests the state they would have had."""
    state = pycaffe_norm.random.rng().get_state()
    yield
    pycaffe_norm.random.rng().set_state(state)


def make_layer(text: str, phase=TRAIN):
    return layer_from_text(text, phase, name="n")


def gaussian(shape, seed=3, scale=1.0):
    return np.random.RandomState(seed).randn(*shape) * scale


def forward(text, x, phase=TRAIN, dtype=np.float64):
    layer = make_layer(text, phase)
    b, t = make_blob(x, dtype), Blob((), dtype=dtype)
    layer.initialize([b], [t])
    layer.forward([b], [t])
    return layer, b, t


def away_from(x, points, margin=0.05):
    """Moves elements within ``margin`` of a kink away from it (finite differences straddling a kink fail)."""
    x = x.copy()
    for p in points:
        near = np.abs(x - p) < margin
        x[near] = p + np.where(x[near] >= p, margin, -margin) * 2
    return x


X_SHAPE = (2, 3, 4, 5)


def f32(v: float) -> float:
    """A prototxt float as Caffe reads it (float32), even when the blob is float64."""
    return float(np.float32(v))


# --- forward values ----------------------------------------------------------------------------------------
def sig(x):
    return 1 / (1 + np.exp(-x))


FORWARD_CASES = [
    ('type: "ReLU"', lambda x: np.maximum(x, 0)),
    ('type: "ReLU" relu_param { negative_slope: 0.1 }', lambda x: np.where(x > 0, x, f32(0.1) * x)),
    ('type: "Sigmoid"', sig),
    ('type: "TanH"', np.tanh),
    ('type: "AbsVal"', np.abs),
    ('type: "ELU"', lambda x: np.where(x > 0, x, np.exp(x) - 1)),
    ('type: "ELU" elu_param { alpha: 0.5 }', lambda x: np.where(x > 0, x, 0.5 * (np.exp(x) - 1))),
    ('type: "Power" power_param { power: 2 scale: 0.5 shift: 1 }', lambda x: (1 + 0.5 * x) ** 2),
    ('type: "Power" power_param { power: 1 scale: 0.83 shift: -2.4 }', lambda x: f32(0.83) * x + f32(-2.4)),
    ('type: "Power" power_param { power: 0 scale: 0.83 shift: -2.4 }', lambda x: np.ones_like(x)),
    ('type: "Power" power_param { power: 3 scale: 0 shift: 2 }', lambda x: np.full_like(x, 8.0)),
    ('type: "Exp"', np.exp),
    ('type: "Exp" exp_param { base: 2 scale: 0.5 shift: 1 }', lambda x: 2.0 ** (1 + 0.5 * x)),
    ('type: "Log" log_param { shift: 10 }', lambda x: np.log(x + 10)),
    ('type: "Log" log_param { base: 2 scale: 0.5 shift: 5 }', lambda x: np.log2(0.5 * x + 5)),
    ('type: "BNLL"', lambda x: np.log1p(np.exp(x))),
    ('type: "Threshold" threshold_param { threshold: 0.3 }', lambda x: (x > f32(0.3)).astype(float)),
    ('type: "Clip" clip_param { min: -0.5 max: 0.8 }', lambda x: np.clip(x, -0.5, f32(0.8))),
    ('type: "Swish"', lambda x: x * sig(x)),
    ('type: "Swish" swish_param { beta: 1.5 }', lambda x: x * sig(1.5 * x)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("text,ref", FORWARD_CASES, ids=[c[0] for c in FORWARD_CASES])
def test_forward_values(text, ref, dtype):
    x = gaussian(X_SHAPE)
    _, _, t = forward(text, x, dtype=dtype)
    assert t.shape == X_SHAPE and t.data.dtype == dtype
    tol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(t.data, ref(x.astype(dtype).astype(np.float64)), rtol=tol * 10, atol=tol)


def test_sigmoid_and_bnll_do_not_overflow():
    x = np.array([-1000.0, -80.0, 0.0, 80.0, 1000.0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        _, _, s = forward('type: "Sigmoid"', x, dtype=np.float32)
        _, _, b = forward('type: "BNLL"', x, dtype=np.float32)
    np.testing.assert_allclose(s.data, [0, sig(-80.0), 0.5, 1, 1], atol=1e-7)
    np.testing.assert_allclose(b.data, [0, np.log1p(np.exp(-80.0)), np.log(2), 80, 1000], rtol=1e-6, atol=1e-30)


def test_power_general_and_shift_zero_branches():
    x = np.abs(gaussian(X_SHAPE)) + 0.2
    _, _, t = forward('type: "Power" power_param { power: 0.37 scale: 0.83 shift: 1.5 }', x)
    np.testing.assert_allclose(t.data, (1.5 + f32(0.83) * x) ** f32(0.37), rtol=1e-12)
    _, _, t = forward('type: "Power" power_param { power: 3 scale: 2 }', x)
    np.testing.assert_allclose(t.data, (2 * x) ** 3, rtol=1e-12)


def test_exp_and_log_reject_bad_base():
    with pytest.raises(NetError, match="'n'.*base"):
        forward('type: "Exp" exp_param { base: -2 }', np.ones((2, 3)))
    with pytest.raises(NetError, match="'n'.*base"):
        forward('type: "Log" log_param { base: 0 }', np.ones((2, 3)))


def test_threshold_has_no_backward():
    layer, b, t = forward('type: "Threshold"', gaussian((2, 3)))
    with pytest.raises(NetError, match="cannot backpropagate"):
        layer.backward([t], [True], [b])


def test_absval_refuses_in_place():
    assert make_layer('type: "AbsVal"').allow_in_place is False


# --- PReLU ---------------------------------------------------------------------------------------------------
def test_prelu_default_filler_and_blob_shapes():
    layer, _, _ = forward('type: "PReLU"', gaussian(X_SHAPE))
    assert layer.blobs[0].shape == (3,)
    np.testing.assert_array_equal(layer.blobs[0].data, 0.25)
    shared, _, _ = forward('type: "PReLU" prelu_param { channel_shared: true }', gaussian(X_SHAPE))
    assert shared.blobs[0].shape == ()
    assert float(shared.blobs[0].data) == 0.25


def test_prelu_forward_values():
    x = gaussian(X_SHAPE)
    layer = make_layer('type: "PReLU"')
    b, t = make_blob(x), Blob((), dtype=np.float64)
    layer.initialize([b], [t])
    slopes = np.array([0.1, -0.3, 0.7])
    layer.blobs[0].data[...] = slopes
    layer.forward([b], [t])
    a = slopes.reshape(1, 3, 1, 1)
    np.testing.assert_allclose(t.data, np.where(x > 0, x, a * x), rtol=1e-14)


def test_prelu_rejects_channel_mismatch():
    layer, b, t = forward('type: "PReLU"', gaussian(X_SHAPE))
    b.reshape((2, 4, 4, 5))
    with pytest.raises(NetError, match="'n'"):
        layer.reshape([b], [t])


def test_prelu_keeps_preloaded_blobs():
    layer = make_layer('type: "PReLU"')
    layer.blobs = [make_blob([0.5, 0.6, 0.7])]
    b, t = make_blob(gaussian(X_SHAPE)), Blob((), dtype=np.float64)
    layer.initialize([b], [t])
    np.testing.assert_array_equal(layer.blobs[0].data, [0.5, 0.6, 0.7])


# --- gradients ------------------------------------------------------------------------------------------------
GRAD_SHAPE = (2, 3, 3, 4)
GRAD_CASES = [
    # text, input transform, checker kwargs
    ('type: "ReLU"', None, dict(kink=0.0, kink_range=0.01)),
    ('type: "ReLU" relu_param { negative_slope: 0.01 }', None, dict(kink=0.0, kink_range=0.01)),
    ('type: "Sigmoid"', None, {}),
    ('type: "TanH"', None, {}),
    ('type: "AbsVal"', None, dict(kink=0.0, kink_range=0.01)),
    ('type: "ELU" elu_param { alpha: 0.5 }', None, dict(kink=0.0, kink_range=0.01)),
    ('type: "ELU"', None, dict(kink=0.0, kink_range=0.01)),
    ('type: "Power" power_param { power: 0.37 scale: 0.83 shift: 2.4 }', np.abs, {}),
    ('type: "Power" power_param { power: 2 scale: 0.83 shift: -2.4 }', None, {}),
    ('type: "Power" power_param { power: 2 scale: 0.5 }', None, {}),
    ('type: "Power" power_param { power: 3 scale: 0.7 }', lambda x: np.abs(x) + 0.5, {}),
    ('type: "Power" power_param { power: 1 scale: 0.83 shift: -2.4 }', None, {}),
    ('type: "Power" power_param { power: 0 scale: 0.83 shift: -2.4 }', None, {}),
    ('type: "Power" power_param { power: 2 scale: 0 shift: 3 }', None, {}),
    ('type: "Exp"', None, {}),
    ('type: "Exp" exp_param { base: 2 scale: 0.5 shift: 1 }', None, {}),
    ('type: "Log"', lambda x: np.abs(x) + 0.5, {}),
    ('type: "Log" log_param { base: 2 scale: 0.5 shift: 3 }', None, {}),
    ('type: "BNLL"', None, {}),
    ('type: "Clip" clip_param { min: -0.5 max: 0.8 }', lambda x: away_from(x, [-0.5, 0.8]), {}),
    ('type: "Swish"', None, {}),
    ('type: "Swish" swish_param { beta: 1.5 }', None, {}),
    ('type: "PReLU"', lambda x: away_from(x, [0.0]), {}),
    ('type: "PReLU" prelu_param { channel_shared: true }', lambda x: away_from(x, [0.0]), {}),
    ('type: "PReLU" prelu_param { filler { type: "uniform" min: -0.5 max: 0.5 } }',
     lambda x: away_from(x, [0.0]), {}),
]


@pytest.mark.parametrize("text,transform,kw", GRAD_CASES, ids=[c[0] for c in GRAD_CASES])
def test_gradient(text, transform, kw):
    x = gaussian(GRAD_SHAPE)
    if transform is not None:
        x = transform(x)
    layer = make_layer(text)
    b, t = make_blob(x), Blob((), dtype=np.float64)
    n = GradientChecker(**kw).check(layer, [b], [t])
    assert n >= x.size // 2


def test_prelu_param_gradient_sums_over_batch_and_space():
    layer = make_layer('type: "PReLU"')
    x = gaussian(GRAD_SHAPE)
    b, t = make_blob(x), Blob((), dtype=np.float64)
    layer.initialize([b], [t])
    layer.forward([b], [t])
    dy = gaussian(GRAD_SHAPE, seed=9)
    t.diff[...] = dy
    layer.blobs[0].diff[...] = 1.0  # accumulates onto what is there
    layer.backward([t], [True], [b])
    expect = 1.0 + np.where(x <= 0, dy * x, 0).sum(axis=(0, 2, 3))
    np.testing.assert_allclose(layer.blobs[0].diff, expect, rtol=1e-12)


# --- Dropout -----------------------------------------------------------------------------------------------
def test_dropout_train_statistics_and_scale():
    pycaffe_norm.set_random_seed(1701)
    x = np.abs(gaussian((50, 40))) + 1
    layer, b, t = forward('type: "Dropout" dropout_param { dropout_ratio: 0.3 }', x)
    kept = t.data != 0
    assert abs(kept.mean() - 0.7) < 0.03
    np.testing.assert_allclose(t.data[kept], x[kept] / (1 - f32(0.3)), rtol=1e-12)
    dy = gaussian((50, 40), seed=5)
    t.diff[...] = dy
    layer.backward([t], [True], [b])
    np.testing.assert_allclose(b.diff, np.where(kept, dy / (1 - f32(0.3)), 0), rtol=1e-12)


def test_dropout_is_seeded_by_pcn_rng():
    x = gaussian((10, 10))
    text = 'type: "Dropout"'
    pycaffe_norm.set_random_seed(7)
    a = forward(text, x)[2].data.copy()
    pycaffe_norm.set_random_seed(7)
    b = forward(text, x)[2].data.copy()
    np.testing.assert_array_equal(a, b)


def test_dropout_test_phase_is_identity():
    x = gaussian(X_SHAPE)
    layer, b, t = forward('type: "Dropout" dropout_param { dropout_ratio: 0.6 }', x, phase=TEST)
    np.testing.assert_array_equal(t.data, x)
    t.diff[...] = 2 * x
    layer.backward([t], [True], [b])
    np.testing.assert_array_equal(b.diff, 2 * x)


def test_dropout_rejects_bad_ratio():
    with pytest.raises(NetError, match="'n'.*dropout_ratio"):
        forward('type: "Dropout" dropout_param { dropout_ratio: 1.0 }', gaussian((2, 3)))


def _reseeding(layer, seed=11):
    """Same mask on every forward, as Caffe's GradientChecker reseeds before each one."""
    inner = layer.forward

    def fwd(bottom, top):
        pycaffe_norm.set_random_seed(seed)
        inner(bottom, top)

    layer.forward = fwd
    return layer


@pytest.mark.parametrize("phase", [TRAIN, TEST])
def test_dropout_gradient(phase):
    layer = _reseeding(make_layer('type: "Dropout" dropout_param { dropout_ratio: 0.4 }', phase))
    b, t = make_blob(gaussian(GRAD_SHAPE)), Blob((), dtype=np.float64)
    GradientChecker().check(layer, [b], [t])


# --- in place ------------------------------------------------------------------------------------------------
INPLACE_CASES = [c[0] for c in GRAD_CASES if "AbsVal" not in c[0]] + [
    'type: "Dropout" dropout_param { dropout_ratio: 0.4 }',
]


def _run(text, x, dy, in_place, phase=TRAIN):
    layer = make_layer(text, phase)
    if "Dropout" in text:
        _reseeding(layer)
    b = make_blob(x)
    t = b if in_place else Blob((), dtype=np.float64)
    layer.initialize([b], [t])
    for p in layer.blobs:
        p.data[...] = np.linspace(-0.4, 0.6, p.count).reshape(p.shape)
        p.diff[...] = 0
    layer.forward([b], [t])
    y = t.data.copy()
    t.diff[...] = dy
    layer.backward([t], [True], [b])
    return y, b.diff.copy(), [p.diff.copy() for p in layer.blobs]


@pytest.mark.parametrize("phase", [TRAIN, TEST])
@pytest.mark.parametrize("text", INPLACE_CASES)
def test_in_place_matches_out_of_place(text, phase):
    x = np.abs(gaussian(GRAD_SHAPE)) + 0.5 if ("Power" in text or "Log" in text) else gaussian(GRAD_SHAPE)
    dy = gaussian(GRAD_SHAPE, seed=4)
    y0, dx0, dp0 = _run(text, x, dy, False, phase)
    y1, dx1, dp1 = _run(text, x, dy, True, phase)
    np.testing.assert_array_equal(y1, y0)
    np.testing.assert_allclose(dx1, dx0, rtol=1e-14, atol=0)
    for a, b in zip(dp1, dp0):
        np.testing.assert_allclose(a, b, rtol=1e-14)


def test_float32_stays_float32():
    for text, _ in FORWARD_CASES:
        layer, b, t = forward(text, gaussian((2, 3, 2)), dtype=np.float32)
        if "Threshold" in text:
            continue
        t.diff[...] = 1
        layer.backward([t], [True], [b])
        assert t.data.dtype == np.float32 and b.diff.dtype == np.float32, text


@pytest.mark.parametrize("in_place", [False, True])
def test_relu_on_threads_gives_one_threads_bits(in_place, monkeypatch):
    """ReLU splits its rows over the pool (forced here): the same bits as one thread, in place or not."""
    from pycaffe_norm import parallel

    monkeypatch.setattr(parallel, "MIN_ELEMENTS", 0)
    x, dy = gaussian((5, 3, 4, 2), 1).astype(np.float32), gaussian((5, 3, 4, 2), 2).astype(np.float32)
    results = []
    for threads in ("1", "3"):
        monkeypatch.setenv("PCN_THREADS", threads)
        layer = make_layer('type: "ReLU"')
        bottom = [make_blob(x.copy(), np.float32)]
        top = bottom if in_place else [Blob((), dtype=np.float32)]
        layer.initialize(bottom, top)
        layer.forward(bottom, top)
        out = top[0].data.copy()
        top[0].diff[...] = dy
        layer.backward(top, [True], bottom)
        results.append((out, bottom[0].diff.copy()))
    np.testing.assert_array_equal(results[0][0], np.maximum(x, 0))
    np.testing.assert_array_equal(results[0][1], dy * (x > 0))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
