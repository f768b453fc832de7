"""UnPooling (MyCaffe): forward against loop transcriptions of MyCaffe's unpooling kernels, gradient checks."""
from __future__ import annotations

import numpy as np
import pytest

from pycaffe_norm.blob import Blob
from pycaffe_norm.errors import NetError
from tests.gradient_check import GradientChecker, layer_from_text, make_blob


def gaussian(shape, seed=3):
    return np.random.RandomState(seed).randn(*shape)


def setup_layer(text, inputs):
    layer = layer_from_text('type: "UnPooling" unpooling_param { %s }' % text, name="unpool")
    bottom = [make_blob(a) for a in inputs]
    top = [Blob((), dtype=np.float64)]
    layer.initialize(bottom, top)
    return layer, bottom, top


def unpooled_size(h, k, s, p):
    return max((h - 1) * s + k - 2 * p, h * s - p + 1)


def max_unpool_loops(x, k, s, p, uh, uw, mask=None):
    """One bottom element at a time, as MyCaffe's unpooling_fwd_max_kernel (in order: the last write wins)."""
    n, c, h, w = x.shape
    y = np.zeros((n, c, uh, uw))
    for a in range(n):
        for b in range(c):
            for ph in range(h):
                for pw in range(w):
                    if mask is None:
                        r = max(0, min(ph * s - p, uh - 1))
                        q = max(0, min(pw * s - p, uw - 1))
                        idx = r * uw + q
                    else:
                        idx = int(mask[a, b, ph, pw])
                    y[a, b].reshape(-1)[idx] = x[a, b, ph, pw]
    return y


def ave_unpool_loops(x, k, s, uh, uw):
    """MyCaffe's unpooling_fwd_ave_kernel, one output element at a time (pad 0: UnPooling's AVE has none)."""
    n, c, h, w = x.shape
    y = np.zeros((n, c, uh, uw))
    for a in range(n):
        for b in range(c):
            for r in range(uh):
                for q in range(uw):
                    hs = 0 if r < k else (r - k) // s + 1
                    he = min(r // s + 1, h)
                    ws = 0 if q < k else (q - k) // s + 1
                    we = min(q // s + 1, w)
                    total = 0.0
                    for ph in range(hs, he):
                        for pw in range(ws, we):
                            size = (min(ph * s + k, uh) - ph * s) * (min(pw * s + k, uw) - pw * s)
                            total += x[a, b, ph, pw] / size
                    y[a, b, r, q] = total
    return y


@pytest.mark.parametrize("k, s, p", [(2, 2, 0), (3, 2, 0), (3, 2, 1), (2, 1, 0), (3, 3, 1)])
def test_max_unpooling_without_mask_puts_values_at_window_corners(k, s, p):
    x = gaussian((2, 3, 3, 4))
    layer, bottom, top = setup_layer("pool: MAX kernel_size: %d stride: %d pad: %d" % (k, s, p), [x])
    layer.forward(bottom, top)
    uh, uw = unpooled_size(3, k, s, p), unpooled_size(4, k, s, p)
    assert top[0].shape == (2, 3, uh, uw)
    np.testing.assert_array_equal(top[0].data, max_unpool_loops(x, k, s, p, uh, uw))


def pool_with_mask(x, k, s):
    """Caffe MAX pooling (pad 0, windows inside the image) with the flat argmax of each window."""
    n, c, h, w = x.shape
    oh, ow = (h - k) // s + 1, (w - k) // s + 1
    y, mask = np.zeros((n, c, oh, ow)), np.zeros((n, c, oh, ow))
    for ph in range(oh):
        for pw in range(ow):
            win = x[:, :, ph * s:ph * s + k, pw * s:pw * s + k].reshape(n, c, -1)
            arg = win.argmax(axis=2)
            y[:, :, ph, pw] = win.max(axis=2)
            mask[:, :, ph, pw] = (ph * s + arg // k) * w + pw * s + arg % k
    return y, mask


@pytest.mark.parametrize("k, s", [(2, 2), (3, 2)])
def test_max_unpooling_with_a_pooling_mask_inverts_max_pooling(k, s):
    x = gaussian((2, 2, 7, 7), seed=4)
    pooled, mask = pool_with_mask(x, k, s)
    layer, bottom, top = setup_layer("pool: MAX kernel_size: %d stride: %d unpool_size: 7" % (k, s), [pooled, mask])
    layer.forward(bottom, top)
    assert top[0].shape == x.shape
    np.testing.assert_array_equal(top[0].data, max_unpool_loops(pooled, k, s, 0, 7, 7, mask))
    kept = top[0].data != 0
    np.testing.assert_array_equal(top[0].data[kept], x[kept])   # each maximum back in its place


def test_max_unpooling_with_mask_from_pcn_pooling_in_a_net(tmp_path):
    import pycaffe_norm as caffe

    net_file = tmp_path / "net.prototxt"
    net_file.write_text(
        'layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } } }\n'
        'layer { name: "pool" type: "Pooling" bottom: "x" top: "p" top: "mask" '
        'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
        'layer { name: "unpool" type: "UnPooling" bottom: "p" bottom: "mask" top: "u" '
        'unpooling_param { pool: MAX kernel_size: 2 stride: 2 unpool_h: 6 unpool_w: 6 } }\n')
    net = caffe.Net(str(net_file), caffe.TEST, dtype=np.float64)
    x = gaussian((2, 3, 6, 6), seed=5)
    u = net.forward(x=x)["u"]
    blocks = x.reshape(2, 3, 3, 2, 3, 2)
    is_max = blocks == blocks.max(axis=(3, 5), keepdims=True)
    np.testing.assert_array_equal(u, np.where(is_max.reshape(x.shape), x, 0))


@pytest.mark.parametrize("k, s, uh", [(2, 2, None), (3, 2, None), (2, 1, None), (3, 2, 6)])
def test_ave_unpooling_forward(k, s, uh):
    x = gaussian((2, 2, 3, 4), seed=6)
    text = "pool: AVE kernel_size: %d stride: %d" % (k, s)
    if uh is not None:
        text += " unpool_h: %d unpool_w: %d" % (uh, uh)
    layer, bottom, top = setup_layer(text, [x])
    layer.forward(bottom, top)
    h_out = uh if uh is not None else unpooled_size(3, k, s, 0)
    w_out = uh if uh is not None else unpooled_size(4, k, s, 0)
    np.testing.assert_allclose(top[0].data, ave_unpool_loops(x, k, s, h_out, w_out), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("text", ["pool: MAX kernel_size: 2 stride: 2", "pool: MAX kernel_size: 3 stride: 2 pad: 1",
                                  "pool: MAX kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2",
                                  "pool: AVE kernel_size: 2 stride: 2", "pool: AVE kernel_size: 3 stride: 2",
                                  "pool: AVE kernel_size: 3 stride: 1 unpool_size: 4"])
def test_unpooling_gradient(text):
    layer, bottom, top = setup_layer(text, [gaussian((2, 2, 3, 3), seed=7)])
    assert GradientChecker().check(layer, bottom, top, already_set_up=True) == 36


def test_max_unpooling_gradient_with_a_colliding_mask():
    pooled = gaussian((1, 2, 2, 2), seed=8)
    mask = np.array([[[[0, 0], [5, 5]], [[3, 1], [1, 8]]]], dtype=np.float64)   # repeated targets
    layer, bottom, top = setup_layer("pool: MAX kernel_size: 2 stride: 1 unpool_size: 3", [pooled, mask])
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, max_unpool_loops(pooled, 2, 1, 0, 3, 3, mask))
    assert GradientChecker().check(layer, bottom, top, check_bottom=[0], already_set_up=True) == 8


@pytest.mark.parametrize("text, match", [
    ("pool: STOCHASTIC kernel_size: 2", "STOCHASTIC"),
    ("pool: AVE kernel_size: 3 pad: 1", "MAX unpooling only"),
    ("pool: MAX kernel_size: 2 kernel_h: 2 kernel_w: 2", "kernel_size"),
    ("pool: MAX", "kernel_size"),
    ("pool: MAX kernel_size: 2 pad: 2", "smaller than the kernel"),
])
def test_unpooling_bad_parameters_are_clear_errors(text, match):
    with pytest.raises(NetError, match=match):
        setup_layer(text, [gaussian((1, 1, 2, 2))])


def test_unpooling_bad_mask_and_shapes_are_clear_errors():
    with pytest.raises(NetError, match="4 axes"):
        setup_layer("pool: MAX kernel_size: 2 stride: 2", [gaussian((2, 3))])
    layer, bottom, top = setup_layer("pool: MAX kernel_size: 2 stride: 2 unpool_size: 4",
                                     [gaussian((1, 1, 2, 2)), np.full((1, 1, 2, 2), 16.0)])
    with pytest.raises(NetError, match="mask value 16"):
        layer.forward(bottom, top)
    with pytest.raises(NetError, match="mask"):
        setup_layer("pool: AVE kernel_size: 2", [gaussian((1, 1, 2, 2)), np.zeros((1, 1, 2, 2))])
