"""Im2col (pycaffe_norm/layers/vision.py): Caffe's test cases, forward values against a hand loop over kernel
offsets and output positions (2-D and N-D, stride, pad, dilation, a channel axis after outer axes), exhaustive
float64 gradient checks (step and threshold 1e-6) and errors."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from pycaffe_norm.blob import Blob
from pycaffe_norm.errors import NetError, ShapeError
from tests.gradient_check import GradientChecker, layer_from_text, make_blob


def setup(param: str, x):
    layer = layer_from_text('type: "Im2col" convolution_param { %s }' % param)
    bottom, top = [make_blob(x)], [Blob((), dtype=np.float64)]
    layer.initialize(bottom, top)
    layer.reshape(bottom, top)
    return layer, bottom, top


def im2col_loop(x, kernel, stride, pad, dilation):
    """(N, C, *in) -> (N, C * prod(kernel), *out), one element at a time."""
    n, c, spatial = x.shape[0], x.shape[1], x.shape[2:]
    out = [(s + 2 * p - (d * (k - 1) + 1)) // st + 1 for s, k, st, p, d in zip(spatial, kernel, stride, pad, dilation)]
    kcount = int(np.prod(kernel))
    y = np.zeros((n, c * kcount) + tuple(out))
    for i, ch in itertools.product(range(n), range(c)):
        for ki, koff in enumerate(itertools.product(*[range(k) for k in kernel])):   # row-major kernel offsets
            for pos in itertools.product(*[range(o) for o in out]):
                src = [q * st - p + ko * d for q, st, p, ko, d in zip(pos, stride, pad, koff, dilation)]
                if all(0 <= v < s for v, s in zip(src, spatial)):   # outside: the zero padding
                    y[(i, ch * kcount + ki) + pos] = x[(i, ch) + tuple(src)]
    return y


def gaussian(shape, seed=1701):
    return np.random.RandomState(seed).randn(*shape)


def test_setup_and_caffe_forward_checks():
    x = gaussian((2, 3, 6, 5))
    layer, bottom, top = setup("kernel_size: 3 stride: 2", x)
    assert top[0].shape == (2, 27, 2, 2)
    layer.forward(bottom, top)
    for c in range(27):   # Caffe's TestForward: the top-left block
        assert top[0].data[0, c, 0, 0] == x[0, c // 9, (c // 3) % 3, c % 3]
    layer, bottom, top = setup("kernel_h: 5 kernel_w: 3 stride: 2", x)   # TestRect
    layer.forward(bottom, top)
    assert top[0].shape == (2, 45, 1, 2)
    for c in range(45):
        assert top[0].data[0, c, 0, 0] == x[0, c // 15, (c // 3) % 5, c % 3]


@pytest.mark.parametrize("param,kernel,stride,pad,dilation", [
    ("kernel_size: 3 stride: 2", (3, 3), (2, 2), (0, 0), (1, 1)),
    ("kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2 pad_h: 1 pad_w: 2", (2, 3), (1, 2), (1, 2), (1, 1)),
    ("kernel_size: 2 pad: 1 dilation: 2", (2, 2), (1, 1), (1, 1), (2, 2)),
    ("kernel_size: 2 kernel_size: 1 kernel_size: 2 stride: 1 stride: 1 stride: 2 pad: 1 pad: 0 pad: 0",
     (2, 1, 2), (1, 1, 2), (1, 0, 0), (1, 1, 1)),
])
def test_forward_matches_a_hand_loop(param, kernel, stride, pad, dilation):
    x = gaussian((2, 2) + (4, 5, 3)[:len(kernel)])
    layer, bottom, top = setup(param, x)
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, im2col_loop(x, kernel, stride, pad, dilation))


def test_channel_axis_after_outer_axes():
    x = gaussian((2, 3, 2, 4, 4))   # axis: 2 -> 6 images of 2 channels, 4 x 4
    layer, bottom, top = setup("kernel_size: 3 pad: 1 axis: 2", x)
    layer.forward(bottom, top)
    assert top[0].shape == (2, 3, 18, 4, 4)
    expected = im2col_loop(x.reshape(6, 2, 4, 4), (3, 3), (1, 1), (1, 1), (1, 1)).reshape(2, 3, 18, 4, 4)
    np.testing.assert_array_equal(top[0].data, expected)


@pytest.mark.parametrize("param,shape", [
    ("kernel_size: 3 stride: 2", (2, 3, 6, 5)),                     # Caffe's TestGradient
    ("kernel_h: 5 kernel_w: 3 stride: 2", (2, 3, 6, 5)),            # TestRectGradient
    ("kernel_size: 2 stride: 1 pad: 1 dilation: 2", (1, 2, 4, 5)),  # overlapping windows and padding
    ("kernel_size: 2 stride: 1 stride: 2 stride: 1 pad: 1", (1, 2, 3, 4, 3)),   # N-D
])
def test_gradient_exhaustive(param, shape):
    layer, bottom, top = setup(param, gaussian(shape))
    assert GradientChecker().check(layer, bottom, top, already_set_up=True) == \
        int(np.prod(shape))


def test_backward_sums_overlaps_and_respects_propagate_down():
    x = gaussian((1, 1, 3, 3))
    layer, bottom, top = setup("kernel_size: 2 stride: 1", x)
    layer.forward(bottom, top)
    top[0].diff[...] = 1
    layer.backward(top, [True], bottom)
    # each input pixel's gradient counts the windows that read it
    np.testing.assert_array_equal(bottom[0].diff[0, 0], [[1, 2, 1], [2, 4, 2], [1, 2, 1]])
    bottom[0].diff[...] = 7
    layer.backward(top, [False], bottom)
    assert (bottom[0].diff == 7).all()


def test_errors():
    with pytest.raises(NetError, match=r"layer 'l' \(Im2col\): kernel_size \(or kernel_h and kernel_w\) is required"):
        setup("stride: 2", gaussian((1, 1, 4, 4)))
    with pytest.raises(ShapeError, match=r"Im2col"):
        setup("kernel_size: 5", gaussian((1, 1, 4, 4)))
    with pytest.raises(NetError, match=r"stride must be >= 1"):
        setup("kernel_size: 2 stride: 0", gaussian((1, 1, 4, 4)))
    with pytest.raises(ShapeError, match=r"at least one spatial axis"):
        setup("kernel_size: 2 axis: 1", gaussian((2, 3)))
