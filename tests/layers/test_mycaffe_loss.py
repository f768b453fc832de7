"""TripletLoss and MemoryLoss (MyCaffe's loss layers)."""
from __future__ import annotations

import numpy as np
import pytest

from pycaffe_norm.blob import Blob
from pycaffe_norm.errors import NetError
from pycaffe_norm.layers.mycaffe_loss import MemoryLossArgs
from tests.gradient_check import GradientChecker, layer_from_text, make_blob


def gaussian(shape, seed):
    return np.random.RandomState(seed).randn(*shape)


def setup_layer(text, inputs, n_tops=1):
    layer = layer_from_text(text, name="loss")
    bottom = [make_blob(a) for a in inputs]
    top = [Blob((), dtype=np.float64) for _ in range(n_tops)]
    layer.initialize(bottom, top)
    return layer, bottom, top


# --- TripletLoss -------------------------------------------------------------------------------------------------
def triplet_inputs(num=6, dim=4):
    a, p, n = gaussian((num, dim), 1), gaussian((num, dim), 2), gaussian((num, dim), 3)
    label = np.arange(num, dtype=np.float64)[:, None] * np.ones((1, 3))
    return [a, p, n, label]


def test_triplet_loss_forward_matches_the_hinge_formula():
    inputs = triplet_inputs()
    alpha = 1.5
    layer, bottom, top = setup_layer('type: "TripletLoss" triplet_loss_param { alpha: %g }' % alpha, inputs)
    layer.forward(bottom, top)
    a, p, n, _ = inputs
    expected = 0.0
    for i in range(a.shape[0]):
        expected += max(0.0, np.dot(a[i] - p[i], a[i] - p[i]) - np.dot(a[i] - n[i], a[i] - n[i]) + alpha)
    expected /= 2 * a.shape[0]
    assert float(top[0].data) == pytest.approx(expected, rel=1e-12)
    assert 0 < expected  # some triplets are active ...
    hinge = ((a - p) ** 2).sum(1) - ((a - n) ** 2).sum(1) + alpha
    assert (hinge < 0).any()  # ... and some are not, so both branches are exercised


def test_triplet_loss_default_alpha_is_mycaffes():
    layer, bottom, top = setup_layer('type: "TripletLoss"', triplet_inputs())
    assert layer.alpha == pytest.approx(1.1)


@pytest.mark.parametrize("alpha", [0.5, 1.5, 4.0])
def test_triplet_loss_gradient(alpha):
    layer, bottom, top = setup_layer('type: "TripletLoss" triplet_loss_param { alpha: %g }' % alpha,
                                     triplet_inputs(num=5, dim=3))
    n = GradientChecker().check(layer, bottom, top, check_bottom=[0, 1, 2], already_set_up=True)
    assert n == 3 * 5 * 3


def test_triplet_loss_gradient_scales_with_the_loss_weight():
    layer, bottom, top = setup_layer('type: "TripletLoss" triplet_loss_param { alpha: 2 }', triplet_inputs())
    layer.forward(bottom, top)
    top[0].diff[...] = 1.0
    layer.backward(top, [True, True, True, False], bottom)
    unit = [b.diff.copy() for b in bottom[:3]]
    top[0].diff[...] = 3.0
    layer.backward(top, [True, True, True, False], bottom)
    for b, u in zip(bottom[:3], unit):
        np.testing.assert_allclose(b.diff, 3.0 * u, rtol=1e-12)
    # a - p, p - a and a - n sum to zero per element: the three gradients cancel
    np.testing.assert_allclose(sum(unit), 0.0, atol=1e-12)


def test_triplet_loss_refuses_label_gradient_and_centroid_bottom():
    layer, bottom, top = setup_layer('type: "TripletLoss"', triplet_inputs())
    layer.forward(bottom, top)
    with pytest.raises(NetError, match="label"):
        layer.backward(top, [True, False, False, True], bottom)
    with pytest.raises(NetError, match="fifth bottom"):
        setup_layer('type: "TripletLoss"', triplet_inputs() + [np.zeros((10, 4))])


def test_triplet_loss_shape_mismatch_is_a_clear_error():
    inputs = triplet_inputs()
    inputs[1] = inputs[1][:, :3]
    with pytest.raises(NetError, match="positive"):
        setup_layer('type: "TripletLoss"', inputs)


# --- MemoryLoss --------------------------------------------------------------------------------------------------
def half_sum_of_squares(args: MemoryLossArgs) -> None:
    """A user loss: sum(x^2)/2 over the bottoms, with its true gradient written by the callback."""
    args.loss = sum(0.5 * float((b.data ** 2).sum()) for b in args.bottom)
    for b in args.bottom:
        b.diff[...] = b.data
    args.enable_loss_update = False


def test_memory_loss_without_a_callback_is_a_clear_error():
    layer, bottom, top = setup_layer('type: "MemoryLoss"', [gaussian((3, 4), 1)])
    with pytest.raises(NetError, match="on_get_loss"):
        layer.forward(bottom, top)
    layer.on_get_loss = lambda args: setattr(args, "loss", "big")
    with pytest.raises(NetError, match="'big', not a number"):
        layer.forward(bottom, top)


@pytest.mark.parametrize("normalization, divisor", [("BATCH_SIZE", 3), ("VALID", 3 * 2 * 5), ("FULL", 30),
                                                    ("NONE", 1)])
def test_memory_loss_forward_divides_the_user_loss_by_the_normalizer(normalization, divisor):
    x = gaussian((3, 4, 2, 5), 2)
    layer, bottom, top = setup_layer('type: "MemoryLoss" loss_param { normalization: %s }' % normalization, [x])
    seen = {}

    def fn(args):
        seen["normalizer"] = args.normalizer
        seen["state"] = args.user_state
        args.loss = 7.0

    layer.on_get_loss = fn
    layer.user_state = "state"
    layer.forward(bottom, top)
    assert seen == {"normalizer": divisor, "state": "state"}
    assert float(top[0].data) == pytest.approx(7.0 / divisor)


def test_memory_loss_default_normalization_is_batch_size_and_normalize_true_is_valid():
    x = gaussian((3, 4, 2), 2)
    for text, divisor in (("", 3), ("loss_param { normalize: true }", 6)):
        layer, bottom, top = setup_layer('type: "MemoryLoss" ' + text, [x])
        layer.on_get_loss = lambda args: setattr(args, "loss", 1.0)
        layer.forward(bottom, top)
        assert float(top[0].data) == pytest.approx(1.0 / divisor)


@pytest.mark.parametrize("n_bottoms", [1, 2])
def test_memory_loss_gradient_from_the_callback(n_bottoms):
    inputs = [gaussian((3, 4), 1), gaussian((3, 4), 2)][:n_bottoms]
    layer, bottom, top = setup_layer('type: "MemoryLoss" loss_param { normalization: VALID }', inputs)
    layer.on_get_loss = half_sum_of_squares
    n = GradientChecker().check(layer, bottom, top, already_set_up=True)
    assert n == 12 * n_bottoms


def test_memory_loss_default_gradient_is_data_times_loss_times_weight():
    x = gaussian((3, 4), 4)
    layer, bottom, top = setup_layer('type: "MemoryLoss"', [x])
    layer.on_get_loss = lambda args: setattr(args, "loss", 6.0)
    layer.forward(bottom, top)
    top[0].diff[...] = 0.5
    layer.backward(top, [True], bottom)
    # MyCaffe: diff = data * top (top = loss / 3), times the loss weight, not divided again.
    np.testing.assert_allclose(bottom[0].diff, x * (6.0 / 3) * 0.5, rtol=1e-12)


def test_memory_loss_unequal_bottoms_use_no_normalization():
    layer, bottom, top = setup_layer('type: "MemoryLoss"', [gaussian((3, 4), 1), gaussian((3, 2), 2)])
    layer.on_get_loss = lambda args: setattr(args, "loss", 5.0)
    layer.forward(bottom, top)
    assert float(top[0].data) == pytest.approx(5.0)


def test_memory_loss_subclass_hook():
    from pycaffe_norm.layers.mycaffe_loss import MemoryLossLayer

    class Squares(MemoryLossLayer):
        def get_loss(self, args):
            half_sum_of_squares(args)

    layer = layer_from_text('type: "MemoryLoss"', name="loss")
    sub = Squares(layer.layer_param)
    x = gaussian((2, 3), 5)
    bottom, top = [make_blob(x)], [Blob((), dtype=np.float64)]
    sub.initialize(bottom, top)
    sub.forward(bottom, top)
    assert float(top[0].data) == pytest.approx(0.5 * (x ** 2).sum() / 2)


def test_memory_loss_in_a_net_through_layer_dict(tmp_path):
    import pycaffe_norm as caffe

    net_file = tmp_path / "net.prototxt"
    net_file.write_text('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n'
                        'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { '
                        'num_output: 2 weight_filler { type: "gaussian" std: 1 } } }\n'
                        'layer { name: "loss" type: "MemoryLoss" bottom: "y" top: "loss" }\n')
    net = caffe.Net(str(net_file), caffe.TRAIN, dtype=np.float64)
    net.layer_dict["loss"].on_get_loss = half_sum_of_squares
    net.blobs["x"].data[...] = gaussian((2, 3), 6)
    loss = net.forward_backward()
    y = net.blobs["y"].data
    assert loss == pytest.approx(0.5 * (y ** 2).sum() / 2)
    np.testing.assert_allclose(net.blobs["y"].diff, y / 2, rtol=1e-12)
    assert np.abs(net.params["ip"][0].diff).sum() > 0
