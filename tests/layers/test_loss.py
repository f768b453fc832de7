"""Softmax, SoftmaxWithLoss, EuclideanLoss, SigmoidCrossEntropyLoss, MultinomialLogisticLoss and Accuracy."""
from __future__ import annotations

import numpy as np
import pytest

from pycaffe_norm.blob import Blob
from pycaffe_norm.errors import NetError
from pycaffe_norm.proto import caffe_pb2
from tests.gradient_check import GradientChecker, layer_from_text, make_blob

TRAIN = caffe_pb2.TRAIN
FLT_MIN = float(np.finfo(np.float32).tiny)


def make_layer(text: str):
    return layer_from_text(text, name="loss")


def gaussian(shape, seed=3, scale=1.0):
    return np.random.RandomState(seed).randn(*shape) * scale


def labels(shape, n_classes, seed=5):
    return np.random.RandomState(seed).randint(0, n_classes, size=shape).astype(np.float64)


def run(text, inputs, n_tops=1, top_diff=1.0, dtype=np.float64, propagate=None):
    """Builds, forwards and (with ``propagate``) backwards a layer; returns (layer, bottoms, tops)."""
    layer = make_layer(text)
    bottom = [make_blob(a, dtype) for a in inputs]
    top = [Blob((), dtype=dtype) for _ in range(n_tops)]
    layer.initialize(bottom, top)
    layer.forward(bottom, top)
    if propagate is not None:
        top[0].diff[...] = top_diff
        layer.backward(top, propagate, bottom)
    return layer, bottom, top


def np_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# --- Softmax ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [1, 2, -1, 0])
def test_softmax_forward(axis):
    x = gaussian((2, 5, 3, 4))
    _, _, (t,) = run('type: "Softmax" softmax_param { axis: %d }' % axis, [x])
    np.testing.assert_allclose(t.data, np_softmax(x, axis), rtol=1e-12)


def test_softmax_is_stable_for_large_inputs():
    x = np.array([[1000.0, 1001.0, 999.0], [-1000.0, -1000.0, -1000.0]])
    with np.errstate(over="raise", invalid="raise"):
        _, _, (t,) = run('type: "Softmax"', [x], dtype=np.float32)
    np.testing.assert_allclose(t.data, np_softmax(x, 1), rtol=1e-6)


@pytest.mark.parametrize("axis", [1, 2])
def test_softmax_gradient(axis):
    layer = make_layer('type: "Softmax" softmax_param { axis: %d }' % axis)
    GradientChecker().check(layer, [make_blob(gaussian((2, 4, 3, 2)))],
                                                     [Blob((), dtype=np.float64)])


def test_softmax_in_place():
    x, dy = gaussian((2, 5, 3)), gaussian((2, 5, 3), seed=8)
    results = []
    for in_place in (False, True):
        layer = make_layer('type: "Softmax"')
        b = make_blob(x)
        t = b if in_place else Blob((), dtype=np.float64)
        layer.initialize([b], [t])
        layer.forward([b], [t])
        y = t.data.copy()
        t.diff[...] = dy
        layer.backward([t], [True], [b])
        results.append((y, b.diff.copy()))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-15)
    np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-13, atol=1e-16)


def test_softmax_bad_axis():
    with pytest.raises(NetError, match="'loss'"):
        run('type: "Softmax" softmax_param { axis: 4 }', [gaussian((2, 3))])


# --- SoftmaxWithLoss ---------------------------------------------------------------------------------------
def ref_softmax_loss(x, lab, axis=1, ignore=None, mode="VALID", weight=1.0):
    """NumPy loss and gradient of SoftmaxWithLoss (labels shaped outer x inner)."""
    x = np.moveaxis(x, axis, -1)
    p = np_softmax(x, -1)
    lab = lab.reshape(x.shape[:-1]).astype(int)
    valid = np.ones(lab.shape, bool) if ignore is None else lab != ignore
    safe = np.where(valid, lab, 0)
    picked = np.take_along_axis(p, safe[..., None], -1)[..., 0]
    loss = -np.log(np.maximum(picked, FLT_MIN))[valid].sum()
    outer = int(np.prod(x.shape[:axis]))
    norm = {"FULL": lab.size, "VALID": valid.sum(), "BATCH_SIZE": outer, "NONE": 1}[mode]
    norm = max(1, norm)
    g = p.copy()
    np.put_along_axis(g, safe[..., None], np.take_along_axis(g, safe[..., None], -1) - 1, -1)
    g *= valid[..., None] * (weight / norm)
    return loss / norm, np.moveaxis(g, -1, axis)


SWL_MODES = [
    ("", "VALID", None),
    ("loss_param { normalization: FULL ignore_label: 2 }", "FULL", 2),
    ("loss_param { normalization: VALID ignore_label: 2 }", "VALID", 2),
    ("loss_param { normalization: BATCH_SIZE ignore_label: 2 }", "BATCH_SIZE", 2),
    ("loss_param { normalization: NONE }", "NONE", None),
    ("loss_param { normalize: true ignore_label: 0 }", "VALID", 0),     # legacy bool: VALID
    ("loss_param { normalize: false ignore_label: 0 }", "BATCH_SIZE", 0),  # legacy bool: BATCH_SIZE
    ("loss_param { normalize: false normalization: FULL }", "FULL", None),  # the enum wins when both are set
]


@pytest.mark.parametrize("extra,mode,ignore", SWL_MODES, ids=[m[0] or "default" for m in SWL_MODES])
def test_softmax_loss_values_and_gradient_4d(extra, mode, ignore):
    x, lab = gaussian((2, 4, 3, 2)), labels((2, 1, 3, 2), 4)
    _, (b, _), (t,) = run('type: "SoftmaxWithLoss" ' + extra, [x, lab], propagate=[True, False], top_diff=1.7)
    loss, grad = ref_softmax_loss(x, lab, 1, ignore, mode, 1.7)
    assert t.shape == ()
    np.testing.assert_allclose(float(t.data), loss, rtol=1e-12)
    np.testing.assert_allclose(b.diff, grad, rtol=1e-10, atol=1e-15)
    GradientChecker().check(
        make_layer('type: "SoftmaxWithLoss" ' + extra), [make_blob(x), make_blob(lab)],
        [Blob((), dtype=np.float64)], check_bottom=[0])


def test_softmax_loss_axis2_and_3d():
    x, lab = gaussian((3, 2, 4, 2)), labels((3, 2, 2), 4)
    _, (b, _), (t,) = run('type: "SoftmaxWithLoss" softmax_param { axis: 2 }', [x, lab], propagate=[True, False])
    loss, grad = ref_softmax_loss(x, lab, 2)
    np.testing.assert_allclose(float(t.data), loss, rtol=1e-12)
    np.testing.assert_allclose(b.diff, grad, rtol=1e-10, atol=1e-15)


def test_softmax_loss_all_ignored_gives_zero():
    x, lab = gaussian((4, 3)), np.full(4, 7.0)
    _, (b, _), (t,) = run('type: "SoftmaxWithLoss" loss_param { ignore_label: 7 }', [x, lab],
                          propagate=[True, False])
    assert float(t.data) == 0
    assert not b.diff.any()


def test_softmax_loss_second_top_is_prob():
    x, lab = gaussian((2, 4, 3)), labels((2, 3), 4)
    _, _, (loss, prob) = run('type: "SoftmaxWithLoss"', [x, lab], n_tops=2)
    np.testing.assert_allclose(prob.data, np_softmax(x, 1), rtol=1e-12)
    assert prob.shape == x.shape


def test_softmax_loss_float32_tiny_probability_is_clipped():
    x, lab = np.array([[0.0, 200.0]]), np.array([0.0])
    _, _, (t,) = run('type: "SoftmaxWithLoss"', [x, lab], dtype=np.float32)
    np.testing.assert_allclose(float(t.data), -np.log(FLT_MIN), rtol=1e-6)


def test_softmax_loss_label_rules():
    layer = make_layer('type: "SoftmaxWithLoss"')
    assert layer.is_loss and not layer.allow_force_backward(1) and layer.allow_force_backward(0)
    _, bottom, top = run('type: "SoftmaxWithLoss"', [gaussian((3, 4)), labels(3, 4)])
    with pytest.raises(NetError, match="'loss'.*label"):
        layer = make_layer('type: "SoftmaxWithLoss"')
        layer.initialize(bottom, top)
        layer.forward(bottom, top)
        layer.backward(top, [True, True], bottom)


@pytest.mark.parametrize("bad", [4.0, -1.0])
def test_softmax_loss_label_out_of_range(bad):
    lab = np.array([0.0, bad, 1.0])
    with pytest.raises(NetError, match=r"'loss'.*label value %d" % int(bad)):
        run('type: "SoftmaxWithLoss"', [gaussian((3, 4)), lab])


def test_softmax_loss_label_count_mismatch():
    with pytest.raises(NetError, match="'loss'.*number of labels"):
        run('type: "SoftmaxWithLoss"', [gaussian((2, 4, 3)), labels((2, 2), 4)])
    with pytest.raises(NetError, match="'loss'.*first dimension"):
        run('type: "SoftmaxWithLoss"', [gaussian((2, 4)), labels((4,), 4)])


# --- EuclideanLoss -----------------------------------------------------------------------------------------
def test_euclidean_loss_values_and_gradients():
    a, b = gaussian((4, 3, 2)), gaussian((4, 6), seed=9)
    layer, (ba, bb), (t,) = run('type: "EuclideanLoss"', [a, b], propagate=[True, True], top_diff=0.5)
    d = a - b.reshape(a.shape)
    np.testing.assert_allclose(float(t.data), (d ** 2).sum() / 4 / 2, rtol=1e-12)
    np.testing.assert_allclose(ba.diff, 0.5 * d / 4, rtol=1e-12)
    np.testing.assert_allclose(bb.diff, -0.5 * d.reshape(4, 6) / 4, rtol=1e-12)
    assert layer.allow_force_backward(1)


def test_euclidean_loss_gradient_check():
    GradientChecker().check(
        make_layer('type: "EuclideanLoss"'), [make_blob(gaussian((5, 3))), make_blob(gaussian((5, 3), seed=7))],
        [Blob((), dtype=np.float64)])


def test_euclidean_loss_shape_mismatch():
    with pytest.raises(NetError, match="'loss'"):
        run('type: "EuclideanLoss"', [gaussian((4, 3)), gaussian((4, 2))])


# --- SigmoidCrossEntropyLoss ---------------------------------------------------------------------------------
# Caffe's default, with neither normalization nor normalize set, is BATCH_SIZE (not SoftmaxWithLoss's VALID).
SCE_MODES = [("", "BATCH_SIZE", None), ("loss_param { ignore_label: -1 }", "BATCH_SIZE", -1),
             ("loss_param { normalization: VALID ignore_label: -1 }", "VALID", -1),
             ("loss_param { normalize: true ignore_label: -1 }", "VALID", -1),
             ("loss_param { normalization: BATCH_SIZE ignore_label: -1 }", "BATCH_SIZE", -1),
             ("loss_param { normalization: FULL ignore_label: -1 }", "FULL", -1),
             ("loss_param { normalization: NONE }", "NONE", None)]


@pytest.mark.parametrize("extra,mode,ignore", SCE_MODES, ids=[m[0] or "default" for m in SCE_MODES])
def test_sigmoid_cross_entropy(extra, mode, ignore):
    x = gaussian((3, 2, 4), scale=2)
    tgt = np.random.RandomState(2).rand(3, 2, 4)
    if ignore is not None:
        tgt[0, 1, :2] = ignore
    _, (b, _), (t,) = run('type: "SigmoidCrossEntropyLoss" ' + extra, [x, tgt], propagate=[True, False],
                          top_diff=1.3)
    s = 1 / (1 + np.exp(-x))
    valid = np.ones(x.shape, bool) if ignore is None else tgt != ignore
    elem = -(tgt * np.log(s) + (1 - tgt) * np.log(1 - s))
    norm = max(1, {"VALID": valid.sum(), "BATCH_SIZE": 3, "FULL": x.size, "NONE": 1}[mode])
    np.testing.assert_allclose(float(t.data), elem[valid].sum() / norm, rtol=1e-10)
    np.testing.assert_allclose(b.diff, np.where(valid, s - tgt, 0) * 1.3 / norm, rtol=1e-10)
    GradientChecker().check(
        make_layer('type: "SigmoidCrossEntropyLoss" ' + extra), [make_blob(x), make_blob(tgt)],
        [Blob((), dtype=np.float64)], check_bottom=[0])


def test_sigmoid_cross_entropy_is_stable():
    x, tgt = np.array([[-200.0, 200.0, 0.0]]), np.array([[1.0, 0.0, 1.0]])
    with np.errstate(over="raise", invalid="raise"):
        _, _, (t,) = run('type: "SigmoidCrossEntropyLoss"', [x, tgt], dtype=np.float32)
    np.testing.assert_allclose(float(t.data), 200 + 200 + np.log(2), rtol=1e-6)  # BATCH_SIZE: divided by N = 1


# --- MultinomialLogisticLoss ---------------------------------------------------------------------------------
def test_multinomial_logistic_loss():
    p = np.random.RandomState(4).uniform(0.3, 1.0, (4, 5))
    lab = labels(4, 5)
    _, (b, _), (t,) = run('type: "MultinomialLogisticLoss"', [p, lab], propagate=[True, False], top_diff=2.0)
    picked = p[np.arange(4), lab.astype(int)]
    np.testing.assert_allclose(float(t.data), -np.log(picked).sum() / 4, rtol=1e-12)
    g = np.zeros_like(p)
    g[np.arange(4), lab.astype(int)] = -2.0 / 4 / picked
    np.testing.assert_allclose(b.diff, g, rtol=1e-12)
    GradientChecker().check(
        make_layer('type: "MultinomialLogisticLoss"'), [make_blob(p), make_blob(lab)],
        [Blob((), dtype=np.float64)], check_bottom=[0])


def test_multinomial_logistic_loss_clips_zero_probability():
    _, _, (t,) = run('type: "MultinomialLogisticLoss"', [np.array([[0.0, 1.0]]), np.array([0.0])])
    np.testing.assert_allclose(float(t.data), -np.log(1e-20), rtol=1e-12)


# --- Accuracy --------------------------------------------------------------------------------------------------
def ref_accuracy(x, lab, k, axis=1, ignore=None):
    x = np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])
    lab = lab.reshape(-1).astype(int)
    keep = np.ones(lab.shape, bool) if ignore is None else lab != ignore
    x, lab = x[keep], lab[keep]
    true = x[np.arange(len(lab)), lab]
    correct = (x >= true[:, None]).sum(1) <= k
    per_class = np.array([correct[lab == c].mean() if (lab == c).any() else 0 for c in range(x.shape[1])])
    return correct.mean() if len(lab) else 0.0, per_class


@pytest.mark.parametrize("k", [1, 3, 5])
def test_accuracy_top_k(k):
    x, lab = gaussian((40, 6)), labels(40, 6)
    _, _, (acc, per) = run('type: "Accuracy" accuracy_param { top_k: %d }' % k, [x, lab], n_tops=2)
    ref, ref_per = ref_accuracy(x, lab, k)
    assert acc.shape == () and per.shape == (6,)
    np.testing.assert_allclose(float(acc.data), ref, rtol=1e-12)
    np.testing.assert_allclose(per.data, ref_per, rtol=1e-12)


def test_accuracy_ties_count_against_the_true_class():
    x = np.array([[1.0, 1.0, 0.0], [2.0, 1.0, 2.0], [0.0, 3.0, 1.0]])
    _, _, (acc,) = run('type: "Accuracy"', [x, np.array([0.0, 0.0, 1.0])])
    np.testing.assert_allclose(float(acc.data), 1 / 3)
    _, _, (acc,) = run('type: "Accuracy" accuracy_param { top_k: 2 }', [x, np.array([0.0, 0.0, 1.0])])
    np.testing.assert_allclose(float(acc.data), 1.0)


def test_accuracy_spatial_with_ignore():
    x, lab = gaussian((2, 4, 3, 2)), labels((2, 3, 2), 4)
    lab[0, 0] = 255
    _, _, (acc, per) = run('type: "Accuracy" accuracy_param { ignore_label: 255 }', [x, lab], n_tops=2)
    ref, ref_per = ref_accuracy(x, lab, 1, 1, 255)
    np.testing.assert_allclose(float(acc.data), ref, rtol=1e-12)
    np.testing.assert_allclose(per.data, ref_per, rtol=1e-12)


def test_accuracy_axis_last_and_all_ignored():
    x, lab = gaussian((3, 4, 5)), labels((3, 4), 5)
    _, _, (acc,) = run('type: "Accuracy" accuracy_param { axis: -1 }', [x, lab])
    np.testing.assert_allclose(float(acc.data), ref_accuracy(x, lab, 1, 2)[0], rtol=1e-12)
    _, _, (acc,) = run('type: "Accuracy" accuracy_param { ignore_label: 1 }', [gaussian((2, 3)), np.ones(2)])
    assert float(acc.data) == 0


def test_accuracy_errors():
    with pytest.raises(NetError, match="'loss'.*top_k"):
        run('type: "Accuracy" accuracy_param { top_k: 7 }', [gaussian((4, 6)), labels(4, 6)])
    with pytest.raises(NetError, match="'loss'.*label value 9"):
        run('type: "Accuracy"', [gaussian((2, 6)), np.array([1.0, 9.0])])
    layer, bottom, top = run('type: "Accuracy"', [gaussian((2, 6)), labels(2, 6)])
    assert not layer.allow_force_backward(0)
    with pytest.raises(NetError, match="cannot backpropagate"):
        layer.backward(top, [True, False], bottom)
