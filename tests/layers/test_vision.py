"""Convolution, Deconvolution and Pooling: Caffe's reference cases driven through the layer directly, forward values
against direct (loop) definitions, exhaustive float64 gradient checks for every mode, and clear shape errors."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from google.protobuf import text_format

from pycaffe_norm import parallel
from pycaffe_norm.blob import Blob
from pycaffe_norm.errors import NetError, ShapeError
from pycaffe_norm.layers import create_layer, vision
from pycaffe_norm.layers import im2col as ic
from pycaffe_norm.proto import caffe_pb2
from tests.gradient_check import GradientChecker, make_blob
from tests.reference_check import REF, check, load, tol

TRAIN = caffe_pb2.TRAIN
GAUSS = 'weight_filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 }'


@pytest.fixture(params=[(False, False, False), (False, False, True), (False, True, False), (True, None, False)],
                ids=["batch_first", "per_image", "batch_last", "rows"])
def layout(request, monkeypatch):
    """Runs a test under both column layouts of the full im2col path (the batch-first one with its products over
    the whole chunk and image by image, where the group count allows), and with the kernel-row path where it
    applies (2-D, stride 1; the others still take the im2col path)."""
    use_rows, batch_last, per_image = request.param
    monkeypatch.setattr(ic, "USE_ROWS", use_rows)
    monkeypatch.setattr(ic, "FORCE_BATCH_LAST", batch_last)
    monkeypatch.setattr(ic, "PER_IMAGE_MIN_POSITIONS", 0 if per_image else 1 << 62)
    yield request.param


def make_layer(text: str, phase=TRAIN):
    p = caffe_pb2.LayerParameter()
    text_format.Parse('name: "v" ' + text, p)
    return create_layer(p, phase)


def setup_layer(text, *arrays, dtype=np.float64, ntop=1):
    layer = make_layer(text)
    bottom = [make_blob(a, dtype) for a in arrays]
    top = [Blob((), dtype=dtype) for _ in range(ntop)]
    layer.initialize(bottom, top)
    return layer, bottom, top


def gaussian(shape, seed=0):
    return np.random.RandomState(seed).randn(*shape)


def distinct(shape, seed=0, spacing=0.1):
    """Values at least ``spacing`` apart (MAX pooling's argmax must not flip under a finite-difference step)."""
    n = int(np.prod(shape))
    return (np.random.RandomState(seed).permutation(n) - n / 2.0).reshape(shape) * spacing


# --- direct definitions (loops; small shapes only) -----------------------------------------------------------
def conv_direct(x, w, b, stride, pad, dil, group):
    n, c = x.shape[:2]
    m = w.shape[0]
    k = w.shape[2:]
    nsp = len(k)
    xpad = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in pad])
    ext = [d * (kk - 1) + 1 for d, kk in zip(dil, k)]
    out = [(x.shape[2 + i] + 2 * pad[i] - ext[i]) // stride[i] + 1 for i in range(nsp)]
    y = np.zeros((n, m) + tuple(out))
    cg, mg = c // group, m // group
    for pos in itertools.product(*[range(o) for o in out]):
        sl = tuple(slice(o * s, o * s + e, d) for o, s, e, d in zip(pos, stride, ext, dil))
        patch = xpad[(slice(None), slice(None)) + sl]
        for g in range(group):
            pg = patch[:, g * cg:(g + 1) * cg].reshape(n, -1)
            wg = w[g * mg:(g + 1) * mg].reshape(mg, -1)
            y[(slice(None), slice(g * mg, (g + 1) * mg)) + pos] = pg @ wg.T
    if b is not None:
        y += b.reshape((1, m) + (1,) * nsp)
    return y


def deconv_direct(x, w, b, stride, pad, dil, group):
    """Scatter definition: every input pixel adds its weights into the (padded) output."""
    n, c = x.shape[:2]
    mg = w.shape[1]
    m = mg * group
    k = w.shape[2:]
    nsp = len(k)
    ext = [d * (kk - 1) + 1 for d, kk in zip(dil, k)]
    out = [s * (x.shape[2 + i] - 1) + ext[i] - 2 * p for i, (s, p) in enumerate(zip(stride, pad))]
    ypad = np.zeros((n, m) + tuple(o + 2 * p for o, p in zip(out, pad)))
    cg = c // group
    for pos in itertools.product(*[range(s) for s in x.shape[2:]]):
        sl = tuple(slice(i * s, i * s + e, d) for i, s, e, d in zip(pos, stride, ext, dil))
        for g in range(group):
            contrib = np.einsum("nc,cm...->nm...", x[(slice(None), slice(g * cg, (g + 1) * cg)) + pos],
                                w[g * cg:(g + 1) * cg])
            ypad[(slice(None), slice(g * mg, (g + 1) * mg)) + sl] += contrib
    y = ypad[(slice(None), slice(None)) + tuple(slice(p, p + o) for p, o in zip(pad, out))]
    if b is not None:
        y = y + b.reshape((1, m) + (1,) * nsp)
    return y


def pool_direct(x, method, k, s, p, ceil=True):
    """Caffe's pooling loops (vectorised over N and C only); MAX returns (values, flat argmax mask)."""
    n, c, h, w = x.shape
    out = []
    for size, kk, ss, pp in zip((h, w), k, s, p):
        o = (math.ceil((size + 2 * pp - kk) / ss) if ceil else (size + 2 * pp - kk) // ss) + 1
        if pp and (o - 1) * ss >= size + pp:
            o -= 1
        out.append(o)
    y = np.zeros((n, c) + tuple(out))
    mask = np.full(y.shape, -1.0)
    for ph in range(out[0]):
        for pw in range(out[1]):
            hs, ws = ph * s[0] - p[0], pw * s[1] - p[1]
            if method == "MAX":
                he, we = min(hs + k[0], h), min(ws + k[1], w)
                hs, ws = max(hs, 0), max(ws, 0)
                best = np.full((n, c), -np.finfo(np.float32).max)
                for hh in range(hs, he):
                    for ww in range(ws, we):
                        v = x[:, :, hh, ww]
                        upd = v > best
                        best = np.where(upd, v, best)
                        mask[:, :, ph, pw] = np.where(upd, hh * w + ww, mask[:, :, ph, pw])
                y[:, :, ph, pw] = best
            else:
                he, we = min(hs + k[0], h + p[0]), min(ws + k[1], w + p[1])
                size = (he - hs) * (we - ws)
                hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
                y[:, :, ph, pw] = x[:, :, hs:he, ws:we].sum(axis=(2, 3)) / size
    return y, mask


# --- reference cases (BVLC Caffe outputs), layer driven directly ---------------------------------------------
CASES = ["conv_1x1", "conv_dilation2", "conv_group2", "conv_rect", "conv_s2_p1", "deconv_s2", "pool_ave_pad",
         "pool_ave_pad_clip", "pool_global_ave", "pool_max_ceil", "pool_max_floor"]


def run_reference_case(name):
    d = REF / name
    meta, data = load(d)
    net = caffe_pb2.NetParameter()
    text_format.Parse((d / "net.prototxt").read_text(), net)
    (lp,) = [lp for lp in net.layer if lp.type != "Input"]
    layer = create_layer(lp, TRAIN)
    bottom = [make_blob(data["in/" + b], np.float32) for b in lp.bottom]
    top = [Blob((), dtype=np.float32) for _ in lp.top]
    layer.initialize(bottom, top)
    for i, blob in enumerate(layer.blobs):
        blob.data[...] = data["param/%s/%d" % (lp.name, i)]
    layer.forward(bottom, top)
    key = "out/" + lp.top[0]
    check(top[0].data, data[key], tol(meta, key), key)
    top[0].diff[...] = data["topdiff/" + lp.top[0]]
    layer.backward(top, [True], bottom)
    key = "grad/" + lp.bottom[0]
    check(bottom[0].diff, data[key], tol(meta, key), key)
    for i, blob in enumerate(layer.blobs):
        key = "pgrad/%s/%d" % (lp.name, i)
        check(blob.diff, data[key], tol(meta, key), key)


@pytest.mark.parametrize("name", CASES)
def test_reference_case_layer(name, layout):
    run_reference_case(name)


# --- convolution ------------------------------------------------------------------------------------------------
CONV_MODES = {
    # name: (param text, bottom shape)
    "k3": ("num_output: 4 kernel_size: 3", (2, 3, 5, 6)),
    "stride2": ("num_output: 3 kernel_size: 3 stride: 2", (2, 2, 7, 6)),
    "pad1": ("num_output: 3 kernel_size: 3 pad: 1", (2, 2, 4, 5)),
    "stride2_pad2": ("num_output: 2 kernel_size: 3 stride: 2 pad: 2", (2, 3, 5, 5)),
    "dilation2": ("num_output: 2 kernel_size: 2 dilation: 2 pad: 1", (2, 2, 6, 5)),
    # "same" width: the kernel-row path shifts one copy of the input for the other kernel columns
    "k5_pad2": ("num_output: 3 kernel_size: 5 pad: 2", (2, 3, 6, 7)),
    "dilation2_same": ("num_output: 2 kernel_size: 3 dilation: 2 pad: 2", (2, 2, 6, 5)),
    "group2": ("num_output: 4 kernel_size: 2 group: 2", (2, 4, 4, 4)),
    "group3_stride": ("num_output: 3 kernel_size: 2 group: 3 stride: 2 pad: 1", (1, 3, 5, 4)),
    "rect": ("num_output: 2 kernel_h: 3 kernel_w: 1 stride_h: 1 stride_w: 2 pad_h: 0 pad_w: 1", (2, 2, 5, 4)),
    "rect_repeated": ("num_output: 2 kernel_size: 2 kernel_size: 3 stride: 2 stride: 1 pad: 1 pad: 0",
                      (2, 2, 5, 5)),
    "no_bias": ("num_output: 3 kernel_size: 2 bias_term: false", (2, 3, 4, 4)),
    "1x1": ("num_output: 3 kernel_size: 1", (2, 4, 3, 3)),
    "3d": ("num_output: 2 kernel_size: 2 stride: 1 pad: 1", (2, 2, 3, 3, 2)),
    "1d": ("num_output: 2 kernel_size: 3 stride: 2 dilation: 1", (2, 3, 7)),
}


def _conv_params(layer):
    return layer.stride, layer.pad, layer.dilation


@pytest.mark.parametrize("mode", sorted(CONV_MODES))
def test_convolution_forward_matches_direct(mode, layout):
    text, shape = CONV_MODES[mode]
    x = gaussian(shape)
    layer, b, t = setup_layer('type: "Convolution" convolution_param { %s %s }' % (text, GAUSS), x)
    layer.forward(b, t)
    bias = layer.blobs[1].data if layer.bias_term else None
    ref = conv_direct(x, layer.blobs[0].data, bias, *_conv_params(layer), layer.group)
    assert t[0].shape == ref.shape
    np.testing.assert_allclose(t[0].data, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", sorted(CONV_MODES))
def test_convolution_gradient(mode, layout):
    text, shape = CONV_MODES[mode]
    layer, b, t = setup_layer('type: "Convolution" convolution_param { %s %s }' % (text, GAUSS), gaussian(shape))
    assert GradientChecker().check(layer, b, t, already_set_up=True) > 0


def test_convolution_weight_shapes_and_filler():
    layer, b, t = setup_layer('type: "Convolution" convolution_param { num_output: 6 kernel_h: 3 kernel_w: 2 '
                              'group: 2 weight_filler { type: "constant" value: 0.5 } '
                              'bias_filler { type: "constant" value: -1 } }', gaussian((2, 4, 5, 5)))
    assert layer.blobs[0].shape == (6, 2, 3, 2) and layer.blobs[1].shape == (6,)
    assert np.all(layer.blobs[0].data == 0.5) and np.all(layer.blobs[1].data == -1)
    assert t[0].shape == (2, 6, 3, 4)


def test_convolution_float32_stays_float32(layout):
    x = gaussian((3, 2, 6, 6)).astype(np.float32)
    layer, b, t = setup_layer('type: "Convolution" convolution_param { num_output: 3 kernel_size: 3 pad: 1 %s }'
                              % GAUSS, x, dtype=np.float32)
    layer.forward(b, t)
    assert t[0].data.dtype == np.float32 and layer.blobs[0].dtype == np.float32
    ref = conv_direct(x.astype(np.float64), layer.blobs[0].data.astype(np.float64),
                      layer.blobs[1].data.astype(np.float64), (1, 1), (1, 1), (1, 1), 1)
    np.testing.assert_allclose(t[0].data, ref, rtol=1e-5, atol=1e-5)


def test_convolution_axis2_flattens_leading_axes(layout):
    # axis 2: (A, B, C, H, W) is treated as A*B images of C channels
    x = gaussian((2, 3, 2, 5, 4))
    layer, b, t = setup_layer('type: "Convolution" convolution_param { num_output: 2 kernel_size: 2 axis: 2 %s }'
                              % GAUSS, x)
    layer.forward(b, t)
    assert t[0].shape == (2, 3, 2, 4, 3)
    ref = conv_direct(x.reshape(6, 2, 5, 4), layer.blobs[0].data, layer.blobs[1].data, (1, 1), (0, 0), (1, 1), 1)
    np.testing.assert_allclose(t[0].data.reshape(6, 2, 4, 3), ref, rtol=1e-12, atol=1e-12)
    assert GradientChecker().check(layer, b, t, already_set_up=True) > 0


def test_convolution_two_bottoms_share_weights(layout):
    x0, x1 = gaussian((2, 2, 4, 4), 1), gaussian((2, 2, 4, 4), 2)
    layer, b, t = setup_layer('type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 pad: 1 %s }'
                              % GAUSS, x0, x1, ntop=2)
    layer.forward(b, t)
    for x, top in zip((x0, x1), t):
        ref = conv_direct(x, layer.blobs[0].data, layer.blobs[1].data, (1, 1), (1, 1), (1, 1), 1)
        np.testing.assert_allclose(top.data, ref, rtol=1e-12, atol=1e-12)
    # parameter gradients accumulate over both pairs
    assert GradientChecker().check(layer, b, t, already_set_up=True) > 0


def test_convolution_param_diff_accumulates_and_propagate_down_false(layout):
    layer, b, t = setup_layer('type: "Convolution" convolution_param { num_output: 2 kernel_size: 2 %s }' % GAUSS,
                              gaussian((2, 2, 3, 3)))
    layer.forward(b, t)
    t[0].diff[...] = gaussian(t[0].shape, 5)
    b[0].diff[...] = 7.0
    layer.backward(t, [False], b)
    assert np.all(b[0].diff == 7.0)  # untouched
    first = [p.diff.copy() for p in layer.blobs]
    layer.backward(t, [False], b)
    for p, f in zip(layer.blobs, first):
        np.testing.assert_allclose(p.diff, 2 * f, rtol=1e-12)
    layer.param_propagate_down[0] = False
    layer.backward(t, [True], b)
    np.testing.assert_allclose(layer.blobs[0].diff, 2 * first[0], rtol=1e-12)
    np.testing.assert_allclose(layer.blobs[1].diff, 3 * first[1], rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_convolution_backward_reads_the_bottom_as_it_is_then(layout, dtype):
    """Backward computes from the bottom it is given (nothing is kept from forward): a bottom changed after forward,
    or a second backward, gives exactly the gradient a fresh layer computes."""
    text = 'type: "Convolution" convolution_param { num_output: 3 kernel_size: 3 pad: 1 %s }' % GAUSS
    x, x2, dy = gaussian((3, 2, 5, 5), 1), gaussian((3, 2, 5, 5), 2), gaussian((3, 3, 5, 5), 3)

    def grads(layer, b, t, xb):
        for p in layer.blobs:
            p.diff[...] = 0
        b[0].data[...] = xb
        t[0].diff[...] = dy
        layer.backward(t, [True], b)
        return [b[0].diff.copy()] + [p.diff.copy() for p in layer.blobs]

    layer, b, t = setup_layer(text, x, dtype=dtype)
    fresh, bf, tf = setup_layer(text, x2, dtype=dtype)
    for p, q in zip(fresh.blobs, layer.blobs):
        p.data[...] = q.data
    fresh.forward(bf, tf)
    ref2 = grads(fresh, bf, tf, x2)
    layer.forward(b, t)
    ref = grads(layer, b, t, x)
    again = grads(layer, b, t, x)
    layer.forward(b, t)
    changed = grads(layer, b, t, x2)          # bottom changed after forward: computed from x2
    for a, c in zip(ref, again):
        np.testing.assert_array_equal(a, c)
    for a, c in zip(ref2, changed):
        np.testing.assert_array_equal(a, c)
    for p in layer.blobs:
        assert p.diff.dtype == dtype


@pytest.mark.parametrize("kind", ["Convolution", "Deconvolution"])
def test_convolution_on_threads_equals_one_thread(layout, kind, monkeypatch):
    """Split over threads (forced here), the results equal one thread's up to rounding (each thread's GEMMs see
    part of the batch, and the weight gradient sums per-thread partials); the same thread count repeats bits."""
    x, dy = gaussian((3, 4, 6, 5), 1), None
    text = 'type: "%s" convolution_param { num_output: 6 kernel_size: 3 pad: 1 group: 2 %s }' % (kind, GAUSS)
    results = []
    for threads in ("1", "3", "3"):
        monkeypatch.setenv("PCN_THREADS", threads)
        monkeypatch.setattr(parallel, "MIN_ELEMENTS", 0)
        layer, b, t = setup_layer(text, x)
        layer.blobs[0].data[...] = gaussian(layer.blobs[0].shape, 9)
        layer.blobs[1].data[...] = gaussian(layer.blobs[1].shape, 8)
        layer.forward(b, t)
        dy = gaussian(t[0].shape, 4) if dy is None else dy
        t[0].diff[...] = dy
        layer.backward(t, [True], b)
        results.append([t[0].data.copy(), b[0].diff.copy(), layer.blobs[0].diff.copy()])
    one, three, again = results
    for a, c in zip(one, three):
        np.testing.assert_allclose(a, c, rtol=1e-13, atol=1e-13)
    for a, c in zip(three, again):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("stride", [1, 2])
def test_convolution_batch_chunking_gives_same_result(monkeypatch, layout, stride):
    x = gaussian((5, 3, 6, 6))
    text = ('type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: %d group: 1 %s }'
            % (stride, GAUSS))
    results = []
    for cap in (1 << 26, 60):  # 60 elements: one image per chunk
        monkeypatch.setattr(ic, "MAX_COL_ELEMENTS", cap)
        layer, b, t = setup_layer(text, x)
        layer.blobs[0].data[...] = gaussian(layer.blobs[0].shape, 9)
        layer.blobs[1].data[...] = gaussian(layer.blobs[1].shape, 8)
        layer.forward(b, t)
        t[0].diff[...] = gaussian(t[0].shape, 4)
        layer.backward(t, [True], b)
        results.append([t[0].data.copy(), b[0].diff.copy(), layer.blobs[0].diff.copy(), layer.blobs[1].diff.copy()])
    for a, c in zip(*results):
        np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-12)


def test_convolution_backward_chunk_cap_lowered_after_forward(monkeypatch, layout):
    """Forward built the whole batch's columns in one chunk; when backward runs in chunks, they are not reused."""
    x, dy = gaussian((5, 3, 6, 6)), gaussian((5, 4, 3, 3), 4)
    text = 'type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 %s }' % GAUSS
    results = []
    for cap_in_forward in (60, 1 << 26):
        monkeypatch.setattr(ic, "MAX_COL_ELEMENTS", cap_in_forward)
        layer, b, t = setup_layer(text, x)
        layer.blobs[0].data[...] = gaussian(layer.blobs[0].shape, 9)
        layer.forward(b, t)
        monkeypatch.setattr(ic, "MAX_COL_ELEMENTS", 60)  # one image per chunk
        t[0].diff[...] = dy
        layer.backward(t, [True], b)
        results.append([b[0].diff.copy(), layer.blobs[0].diff.copy(), layer.blobs[1].diff.copy()])
    for a, c in zip(*results):
        np.testing.assert_array_equal(a, c)


def test_convolution_layout_heuristic():
    g1 = ic.ConvGeometry((28, 28), (24, 24), (5, 5), (1, 1), (0, 0), (1, 1))
    g2 = ic.ConvGeometry((12, 12), (8, 8), (5, 5), (1, 1), (0, 0), (1, 1))
    assert ic.choose_batch_last(64, 1, 20, g1) is False   # LeNet conv1: few input channels
    assert ic.choose_batch_last(64, 20, 50, g2) is True   # LeNet conv2: many channels, small images
    assert ic.choose_batch_last(1, 20, 50, g2) is False   # a single image needs no transposes


# --- deconvolution ----------------------------------------------------------------------------------------------
DECONV_MODES = {
    "s2_p1": ("num_output: 2 kernel_size: 4 stride: 2 pad: 1", (2, 3, 3, 2)),
    "k3": ("num_output: 3 kernel_size: 3", (2, 2, 3, 3)),
    "group2": ("num_output: 4 kernel_size: 2 stride: 2 group: 2", (2, 4, 2, 3)),
    "rect_dil": ("num_output: 2 kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 1 dilation: 2", (1, 2, 3, 3)),
    "no_bias": ("num_output: 2 kernel_size: 3 stride: 3 bias_term: false", (2, 2, 2, 2)),
    "3d": ("num_output: 2 kernel_size: 2 stride: 2", (1, 2, 2, 2, 2)),
}


@pytest.mark.parametrize("mode", sorted(DECONV_MODES))
def test_deconvolution_forward_matches_scatter(mode, layout):
    text, shape = DECONV_MODES[mode]
    x = gaussian(shape)
    layer, b, t = setup_layer('type: "Deconvolution" convolution_param { %s %s }' % (text, GAUSS), x)
    layer.forward(b, t)
    bias = layer.blobs[1].data if layer.bias_term else None
    ref = deconv_direct(x, layer.blobs[0].data, bias, *_conv_params(layer), layer.group)
    assert t[0].shape == ref.shape
    np.testing.assert_allclose(t[0].data, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", sorted(DECONV_MODES))
def test_deconvolution_gradient(mode, layout):
    text, shape = DECONV_MODES[mode]
    layer, b, t = setup_layer('type: "Deconvolution" convolution_param { %s %s }' % (text, GAUSS), gaussian(shape))
    assert GradientChecker().check(layer, b, t, already_set_up=True) > 0


def test_deconvolution_weight_shape_and_output_size():
    layer, b, t = setup_layer('type: "Deconvolution" convolution_param { num_output: 6 kernel_size: 4 stride: 2 '
                              'pad: 1 group: 3 }', gaussian((2, 3, 5, 7)))
    assert layer.blobs[0].shape == (3, 2, 4, 4) and layer.blobs[1].shape == (6,)
    assert t[0].shape == (2, 6, 10, 14)  # stride*(in-1) + kernel - 2*pad


def test_deconvolution_is_convolution_adjoint(layout):
    # <conv(y), x> == <y, deconv(x)> with the same weights and no bias
    geo = "kernel_size: 3 stride: 2 pad: 1 bias_term: false"
    y = gaussian((2, 2, 7, 5), 1)
    conv, cb, ct = setup_layer('type: "Convolution" convolution_param { num_output: 3 %s }' % geo, y)
    conv.blobs[0].data[...] = gaussian(conv.blobs[0].shape, 2)
    conv.forward(cb, ct)
    x = gaussian(ct[0].shape, 3)
    dec, db, dt = setup_layer('type: "Deconvolution" convolution_param { num_output: 2 %s }' % geo, x)
    assert dec.blobs[0].shape == conv.blobs[0].shape
    dec.blobs[0].data[...] = conv.blobs[0].data
    dec.forward(db, dt)
    assert dt[0].shape == y.shape
    assert np.isclose(np.sum(ct[0].data * x), np.sum(y * dt[0].data), rtol=1e-12)


# --- convolution errors -----------------------------------------------------------------------------------------
def test_preloaded_weight_with_wrong_input_channels_names_layer_and_shapes():
    layer = make_layer('type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 }')
    layer.blobs = [Blob((4, 3, 3, 3)), Blob((4,))]
    with pytest.raises(ShapeError, match=r"'v'.*\(4, 3, 3, 3\).*\(4, 5, 3, 3\)"):
        layer.initialize([make_blob(np.zeros((1, 5, 6, 6)))], [Blob(())])


def test_preloaded_blob_count_mismatch():
    layer = make_layer('type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 bias_term: false }')
    layer.blobs = [Blob((4, 5, 3, 3)), Blob((4,))]
    with pytest.raises(NetError, match="number of weight blobs"):
        layer.initialize([make_blob(np.zeros((1, 5, 6, 6)))], [Blob(())])


def test_reshape_to_other_channel_count_is_refused():
    layer, b, t = setup_layer('type: "Convolution" convolution_param { num_output: 2 kernel_size: 1 }',
                              np.zeros((1, 3, 4, 4)))
    b[0].reshape((1, 4, 4, 4))
    with pytest.raises(ShapeError, match=r"'v'.*\(1, 4, 4, 4\).*\(1, 3, 4, 4\)"):
        layer.reshape(b, t)


@pytest.mark.parametrize("text, shape, match", [
    ("num_output: 2 kernel_size: 5", (1, 1, 4, 6), r"'v'.*larger than the padded input"),
    ("num_output: 2 kernel_size: 3 dilation: 3", (1, 1, 6, 6), r"'v'.*dilated kernel 7"),
    ("num_output: 2 kernel_size: 3 group: 2", (1, 3, 6, 6), r"'v'.*group 2"),
    ("num_output: 3 kernel_size: 3 group: 2", (1, 4, 6, 6), r"'v'.*num_output 3 .*group 2"),
    ("num_output: 2", (1, 1, 6, 6), r"'v'.*kernel_size"),
    ("num_output: 2 kernel_size: 3 kernel_h: 3 kernel_w: 3", (1, 1, 6, 6), r"'v'.*not both"),
    ("num_output: 2 kernel_size: 3 kernel_size: 3 kernel_size: 1", (1, 1, 6, 6), r"'v'.*once per spatial"),
    ("num_output: 2 kernel_h: 3 kernel_w: 3", (1, 1, 6, 6, 6), r"'v'.*only be used for 2D"),
    ("kernel_size: 3", (1, 1, 6, 6), r"'v'.*num_output"),
    ("num_output: 2 kernel_size: 0", (1, 1, 6, 6), r"'v'.*nonzero"),
    ("num_output: 2 kernel_size: 3 stride: 0", (1, 1, 6, 6), r"'v'.*stride"),
])
def test_convolution_errors(text, shape, match):
    with pytest.raises(NetError, match=match):
        setup_layer('type: "Convolution" convolution_param { %s }' % text, np.zeros(shape))


def test_deconvolution_nonpositive_output_is_an_error():
    with pytest.raises(ShapeError, match=r"'v'.*output size"):
        setup_layer('type: "Deconvolution" convolution_param { num_output: 2 kernel_size: 1 pad: 1 }',
                    np.zeros((1, 1, 1, 1)))


# --- pooling ----------------------------------------------------------------------------------------------------
POOL_MODES = {
    # name: (pooling_param text, bottom shape, kernel, stride, pad, ceil)
    "max_k2s2": ("pool: MAX kernel_size: 2 stride: 2", (2, 2, 4, 5), (2, 2), (2, 2), (0, 0), True),
    "max_ceil": ("pool: MAX kernel_size: 3 stride: 2", (2, 2, 6, 6), (3, 3), (2, 2), (0, 0), True),
    "max_floor": ("pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR", (2, 2, 6, 7), (3, 3), (2, 2), (0, 0),
                  False),
    "max_pad": ("pool: MAX kernel_size: 3 stride: 2 pad: 1", (1, 2, 5, 6), (3, 3), (2, 2), (1, 1), True),
    "max_pad_clip": ("pool: MAX kernel_size: 2 stride: 2 pad: 1", (2, 1, 3, 5), (2, 2), (2, 2), (1, 1), True),
    "max_rect": ("pool: MAX kernel_h: 3 kernel_w: 2 stride_h: 1 stride_w: 2 pad_h: 1 pad_w: 0", (1, 2, 4, 5),
                 (3, 2), (1, 2), (1, 0), True),
    "max_overlap_s1": ("pool: MAX kernel_size: 3 stride: 1", (1, 2, 5, 4), (3, 3), (1, 1), (0, 0), True),
    # 144 windows: the argmax is kept as int32 instead of int8
    "max_k12_int32": ("pool: MAX kernel_size: 12 stride: 1", (1, 2, 13, 14), (12, 12), (1, 1), (0, 0), True),
    # kernel smaller than the stride: some pixels reach no window (gradient 0)
    "max_k2s3": ("pool: MAX kernel_size: 2 stride: 3", (2, 2, 7, 8), (2, 2), (3, 3), (0, 0), True),
    "max_k2s3_pad": ("pool: MAX kernel_h: 2 kernel_w: 3 stride_h: 3 stride_w: 4 pad_h: 1 pad_w: 2", (1, 2, 8, 9),
                     (2, 3), (3, 4), (1, 2), True),
    "ave_k2s2": ("pool: AVE kernel_size: 2 stride: 2", (2, 2, 4, 5), (2, 2), (2, 2), (0, 0), True),
    "ave_pad": ("pool: AVE kernel_size: 3 stride: 2 pad: 1", (2, 2, 7, 5), (3, 3), (2, 2), (1, 1), True),
    "ave_pad_clip": ("pool: AVE kernel_size: 2 stride: 2 pad: 1", (2, 2, 3, 5), (2, 2), (2, 2), (1, 1), True),
    "ave_floor": ("pool: AVE kernel_size: 3 stride: 2 round_mode: FLOOR", (1, 2, 6, 7), (3, 3), (2, 2), (0, 0),
                  False),
    "ave_k1s2": ("pool: AVE kernel_size: 1 stride: 2", (2, 2, 5, 7), (1, 1), (2, 2), (0, 0), True),
    "ave_k2s3_floor": ("pool: AVE kernel_size: 2 stride: 3 round_mode: FLOOR", (1, 2, 8, 7), (2, 2), (3, 3),
                       (0, 0), False),
    "ave_rect_pad": ("pool: AVE kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 2", (1, 2, 5, 4),
                     (2, 3), (2, 1), (1, 2), True),
}


@pytest.mark.parametrize("mode", sorted(POOL_MODES))
def test_pooling_forward_matches_caffe_loops(mode):
    text, shape, k, s, p, ceil = POOL_MODES[mode]
    method = "MAX" if "MAX" in text else "AVE"
    x = distinct(shape, 1)
    ntop = 2 if method == "MAX" else 1
    layer, b, t = setup_layer('type: "Pooling" pooling_param { %s }' % text, x, ntop=ntop)
    layer.forward(b, t)
    ref, mask = pool_direct(x, method, k, s, p, ceil)
    assert t[0].shape == ref.shape
    np.testing.assert_allclose(t[0].data, ref, rtol=1e-12, atol=1e-14)
    if method == "MAX":
        np.testing.assert_array_equal(t[1].data, mask)


@pytest.mark.parametrize("mode", sorted(POOL_MODES))
def test_pooling_gradient(mode):
    text, shape = POOL_MODES[mode][:2]
    layer, b, t = setup_layer('type: "Pooling" pooling_param { %s }' % text, distinct(shape, 2))
    assert GradientChecker().check(layer, b, t, already_set_up=True) > 0


@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_global_pooling(method):
    x = distinct((2, 3, 4, 5), 3)
    layer, b, t = setup_layer('type: "Pooling" pooling_param { pool: %s global_pooling: true }' % method, x,
                              ntop=2 if method == "MAX" else 1)
    layer.forward(b, t)
    assert t[0].shape == (2, 3, 1, 1)
    flat = x.reshape(2, 3, 20)
    if method == "MAX":
        np.testing.assert_array_equal(t[0].data[..., 0, 0], flat.max(axis=2))
        np.testing.assert_array_equal(t[1].data[..., 0, 0], flat.argmax(axis=2))
    else:
        np.testing.assert_allclose(t[0].data[..., 0, 0], flat.mean(axis=2), rtol=1e-12)
    checker = GradientChecker()
    layer2, b2, t2 = setup_layer('type: "Pooling" pooling_param { pool: %s global_pooling: true }' % method, x)
    assert checker.check(layer2, b2, t2, already_set_up=True) > 0


def test_max_pooling_ties_pick_first_in_scan_order():
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 1, 0] = x[0, 0, 1, 1] = 5.0      # window (0, 0): tie in its second row
    x[0, 0, 2, 3] = x[0, 0, 3, 2] = 2.0      # window (1, 1): tie across rows
    layer, b, t = setup_layer('type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 2 }', x, ntop=2)
    layer.forward(b, t)
    np.testing.assert_array_equal(t[0].data[0, 0], [[5, 0], [0, 2]])
    # all-zero windows pick their first element; ties pick the first maximum in row-major scan order
    np.testing.assert_array_equal(t[1].data[0, 0], [[4, 2], [8, 11]])
    t[0].diff[...] = 1.0
    layer.backward(t, [True], b)
    expected = np.zeros((4, 4))
    expected[1, 0] = expected[0, 2] = expected[2, 0] = expected[2, 3] = 1.0
    np.testing.assert_array_equal(b[0].diff[0, 0], expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", ["max_ceil", "max_pad", "max_rect", "max_overlap_s1", "max_k2s2", "max_k2s3_pad",
                                  "max_k12_int32"])
def test_max_pooling_ties_mask_and_gradient_match_caffe_loops(mode, dtype):
    """Many ties (small integers): the max, the argmax (first maximum in h-major scan order, the mask top) and the
    gradient (scattered to the argmax, overlapping windows summed) equal Caffe's loops exactly."""
    text, shape, k, s, p, ceil = POOL_MODES[mode]
    x = np.random.RandomState(4).randint(-2, 2, size=(3,) + shape[1:]).astype(dtype)
    layer, b, t = setup_layer('type: "Pooling" pooling_param { %s }' % text, x, dtype=dtype, ntop=2)
    layer.forward(b, t)
    ref, mask = pool_direct(x.astype(np.float64), "MAX", k, s, p, ceil)
    np.testing.assert_array_equal(t[0].data, ref)
    np.testing.assert_array_equal(t[1].data, mask)
    dy = np.random.RandomState(5).randint(1, 9, size=t[0].shape).astype(dtype)
    t[0].diff[...] = dy
    layer.backward(t, [True], b)
    expected = np.zeros(x.shape)
    for n, c in itertools.product(range(x.shape[0]), range(x.shape[1])):
        flat = expected[n, c].reshape(-1)
        for i, m in np.ndenumerate(mask[n, c]):
            flat[int(m)] += dy[n, c][i]
    np.testing.assert_array_equal(b[0].diff, expected)
    assert b[0].diff.dtype == dtype


def test_max_pooling_overlapping_windows_accumulate_gradient():
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 1, 1] = 1.0  # the centre is the max of all four 2x2 windows
    layer, b, t = setup_layer('type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 1 }', x)
    layer.forward(b, t)
    t[0].diff[...] = [[[[1, 2], [3, 4]]]]
    layer.backward(t, [True], b)
    assert b[0].diff[0, 0, 1, 1] == 10 and np.count_nonzero(b[0].diff) == 1


def test_pooling_float32_large_batch_matches_direct():
    x = distinct((4, 3, 9, 8), 5).astype(np.float32)
    for text, method, k, s, p in [("pool: MAX kernel_size: 3 stride: 2 pad: 1", "MAX", (3, 3), (2, 2), (1, 1)),
                                  ("pool: AVE kernel_size: 3 stride: 2 pad: 1", "AVE", (3, 3), (2, 2), (1, 1))]:
        layer, b, t = setup_layer('type: "Pooling" pooling_param { %s }' % text, x, dtype=np.float32)
        layer.forward(b, t)
        assert t[0].data.dtype == np.float32
        np.testing.assert_allclose(t[0].data, pool_direct(x.astype(np.float64), method, k, s, p)[0],
                                   rtol=1e-6, atol=1e-5)  # float32 sums of values up to ~20


@pytest.mark.parametrize("mode", ["max_ceil", "max_pad", "ave_pad", "max_overlap_s1", "max_k2s3_pad"])
def test_pooling_on_threads_equals_one_thread(mode, monkeypatch):
    """Batch chunks on threads (forced here for a small batch), and blocks of one image each within a thread's
    chunk, give bit-identical values, masks and gradients."""
    text, shape, *_ = POOL_MODES[mode]
    x = distinct((5,) + shape[1:], 6).astype(np.float32)
    dy = gaussian((5,) + shape[1:], 7)
    results = []
    for threads, block in (("1", vision._POOL_BLOCK), ("3", vision._POOL_BLOCK), ("3", 1)):
        monkeypatch.setenv("PCN_THREADS", threads)
        monkeypatch.setattr(parallel, "MIN_ELEMENTS", 0)
        monkeypatch.setattr(vision, "_POOL_BLOCK", block)
        ntop = 2 if "max" in mode else 1
        layer, b, t = setup_layer('type: "Pooling" pooling_param { %s }' % text, x, dtype=np.float32, ntop=ntop)
        layer.forward(b, t)
        t[0].diff[...] = dy[:, :, :t[0].shape[2], :t[0].shape[3]]
        layer.backward(t, [True], b)
        results.append([a.data.copy() for a in t] + [b[0].diff.copy()])
    for other in results[1:]:
        for a, c in zip(results[0], other):
            np.testing.assert_array_equal(a, c)


def test_pooling_reshape_follows_bottom():
    layer, b, t = setup_layer('type: "Pooling" pooling_param { pool: AVE kernel_size: 2 stride: 2 }',
                              gaussian((1, 2, 4, 4)))
    b[0].reshape((3, 2, 6, 8))
    b[0].data[...] = gaussian((3, 2, 6, 8))
    layer.reshape(b, t)
    layer.forward(b, t)
    np.testing.assert_allclose(t[0].data, pool_direct(b[0].data, "AVE", (2, 2), (2, 2), (0, 0))[0], rtol=1e-12)


@pytest.mark.parametrize("text, shape, match", [
    ("pool: STOCHASTIC kernel_size: 2", (1, 1, 4, 4), r"'v'.*STOCHASTIC.*not supported"),
    ("pool: MAX global_pooling: true kernel_size: 2", (1, 1, 4, 4), r"'v'.*global_pooling"),
    ("pool: AVE global_pooling: true stride: 2", (1, 1, 4, 4), r"'v'.*global_pooling.*stride = 1"),
    ("pool: MAX kernel_size: 2 kernel_h: 2 kernel_w: 2", (1, 1, 4, 4), r"'v'.*not both"),
    ("pool: MAX kernel_h: 2", (1, 1, 4, 4), r"'v'.*kernel_h and kernel_w"),
    ("pool: MAX kernel_size: 2 pad: 2", (1, 1, 4, 4), r"'v'.*pad .* smaller than the kernel"),
    ("pool: MAX kernel_size: 2 pad_h: 1", (1, 1, 4, 4), r"'v'.*pad_h and pad_w"),
    ("pool: MAX kernel_size: 2 stride: 1 stride_h: 1 stride_w: 1", (1, 1, 4, 4), r"'v'.*stride_h and stride_w"),
    ("pool: MAX kernel_size: 5", (1, 1, 4, 6), r"'v'.*larger than the padded input.*\(1, 1, 4, 6\)"),
    ("pool: MAX kernel_size: 2", (2, 4, 4), r"'v'.*4 axes.*\(2, 4, 4\)"),
    ("pool: MAX kernel_size: 0", (1, 1, 4, 4), r"'v'.*cannot be zero"),
])
def test_pooling_errors(text, shape, match):
    with pytest.raises(NetError, match=match):
        setup_layer('type: "Pooling" pooling_param { %s }' % text, np.zeros(shape))


def test_pooling_top_counts():
    with pytest.raises(NetError, match="at most 1 top"):
        setup_layer('type: "Pooling" pooling_param { pool: AVE kernel_size: 2 }', np.zeros((1, 1, 4, 4)), ntop=2)
    layer, b, t = setup_layer('type: "Pooling" pooling_param { pool: MAX kernel_size: 2 }', np.zeros((1, 1, 4, 4)),
                              ntop=2)
    assert t[1].shape == t[0].shape == (1, 1, 3, 3)
