"""Structural layers (Split, Concat, Slice, Eltwise, Flatten, Reshape, Silence, Tile, Reduction), and the BVLC
reference cases of the neuron, loss and structural families driven layer by layer (without the Net)."""
from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format

from pycaffe_norm.blob import Blob
from pycaffe_norm.errors import NetError
from pycaffe_norm.layers import create_layer
from pycaffe_norm.proto import caffe_pb2
from tests.gradient_check import GradientChecker, layer_from_text, make_blob, run_layer
from tests.reference_check import REF, check, load, tol

TRAIN = caffe_pb2.TRAIN


def make_layer(text: str, phase=TRAIN):
    return layer_from_text(text, phase, name="s")


def run(text, inputs, n_tops=1, top_diffs=None, propagate=None):
    return run_layer(make_layer(text), inputs, n_tops, top_diffs, propagate)


def gaussian(shape, seed=3):
    return np.random.RandomState(seed).randn(*shape)


def gradcheck(text, inputs, n_tops=1, **kw):
    return GradientChecker(**kw).check(
        make_layer(text), [make_blob(a) for a in inputs], [Blob((), dtype=np.float64) for _ in range(n_tops)])


# --- Split -----------------------------------------------------------------------------------------------------
def test_split_copies_and_sums():
    x = gaussian((2, 3))
    _, (b,), tops = run('type: "Split"', [x], n_tops=3, top_diffs=[x, 2 * x, 3 * x])
    for t in tops:
        np.testing.assert_array_equal(t.data, x)
    np.testing.assert_allclose(b.diff, 6 * x)


def test_split_tops_share_the_bottom_data():
    """As Caffe's ShareData: the tops are views of the bottom's data (no copy), and follow it when it is reshaped;
    their diffs are their own."""
    x = gaussian((2, 3))
    layer, (b,), tops = run('type: "Split"', [x], n_tops=2, top_diffs=[x, 2 * x])
    for t in tops:
        assert np.shares_memory(t.data, b.data)
        assert not np.shares_memory(t.diff, b.diff)
    b.data[...] = 7.0
    np.testing.assert_array_equal(tops[1].data, np.full((2, 3), 7.0))
    b.reshape((4, 5))
    layer.reshape([b], tops)
    assert tops[0].shape == (4, 5) and np.shares_memory(tops[0].data, b.data)


def test_split_gradient():
    assert gradcheck('type: "Split"', [gaussian((2, 3, 2))], n_tops=3) == 12


# --- Concat ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,axis", [('type: "Concat"', 1), ('type: "Concat" concat_param { axis: 0 }', 0),
                                       ('type: "Concat" concat_param { axis: -1 }', 3),
                                       ('type: "Concat" concat_param { concat_dim: 2 }', 2)])
def test_concat(text, axis):
    shapes = [[2, 3, 2, 3] for _ in range(3)]
    for i, s in enumerate(shapes):
        s[axis] = i + 1
    xs = [gaussian(s, seed=i) for i, s in enumerate(shapes)]
    dy = gaussian(np.concatenate(xs, axis).shape, seed=11)
    _, bottom, (t,) = run(text, xs, top_diffs=[dy], propagate=[True, False, True])
    np.testing.assert_array_equal(t.data, np.concatenate(xs, axis))
    parts = np.split(dy, [1, 3], axis=axis)
    np.testing.assert_array_equal(bottom[0].diff, parts[0])
    assert not bottom[1].diff.any()  # propagate_down false: untouched
    np.testing.assert_array_equal(bottom[2].diff, parts[2])
    gradcheck(text, xs)


def test_concat_single_bottom_and_errors():
    x = gaussian((2, 3))
    _, _, (t,) = run('type: "Concat"', [x])
    np.testing.assert_array_equal(t.data, x)
    with pytest.raises(NetError, match="'s'.*bottom 1"):
        run('type: "Concat"', [gaussian((2, 3, 4)), gaussian((3, 3, 4))])
    with pytest.raises(NetError, match="'s'.*not both"):
        run('type: "Concat" concat_param { axis: 1 concat_dim: 1 }', [x, x])


# --- Slice -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,axis,points,n", [
    ('type: "Slice" slice_param { slice_point: 1 slice_point: 4 }', 1, [1, 4], 3),
    ('type: "Slice" slice_param { axis: 2 }', 2, [2], 2),
    ('type: "Slice" slice_param { axis: -1 slice_point: 1 }', 2, [1], 2),
    ('type: "Slice" slice_param { slice_dim: 0 }', 0, [1], 2),
    ('type: "Slice" slice_param { axis: 1 }', 1, [2, 4], 3),
])
def test_slice(text, axis, points, n):
    x = gaussian((2, 6, 4))
    parts = np.split(x, points, axis=axis)
    diffs = [gaussian(p.shape, seed=20 + i) for i, p in enumerate(parts)]
    _, (b,), tops = run(text, [x], n_tops=n, top_diffs=diffs)
    for t, p in zip(tops, parts):
        np.testing.assert_array_equal(t.data, p)
    np.testing.assert_array_equal(b.diff, np.concatenate(diffs, axis))
    gradcheck(text, [x], n_tops=n)


@pytest.mark.parametrize("text,n,match", [
    ('type: "Slice" slice_param { slice_point: 2 }', 3, "slice_point"),
    ('type: "Slice" slice_param { slice_point: 4 slice_point: 2 }', 3, "increase"),
    ('type: "Slice" slice_param { slice_point: 6 }', 2, "increase"),
    ('type: "Slice"', 4, "equally"),
])
def test_slice_errors(text, n, match):
    with pytest.raises(NetError, match="'s'.*" + match):
        run(text, [gaussian((2, 6))], n_tops=n)


# --- Eltwise -----------------------------------------------------------------------------------------------------
def three():
    return [gaussian((2, 3, 4), seed=s) for s in (1, 2, 3)]


def test_eltwise_sum_coeff():
    a, b, c = three()
    dy = gaussian((2, 3, 4), seed=9)
    text = 'type: "Eltwise" eltwise_param { operation: SUM coeff: 1 coeff: -0.5 coeff: 2 }'
    _, bottom, (t,) = run(text, [a, b, c], top_diffs=[dy])
    np.testing.assert_allclose(t.data, a - 0.5 * b + 2 * c, rtol=1e-14)
    for blob, k in zip(bottom, (1, -0.5, 2)):
        np.testing.assert_allclose(blob.diff, k * dy, rtol=1e-14)
    gradcheck(text, [a, b, c])
    gradcheck('type: "Eltwise"', [a, b])


@pytest.mark.parametrize("in_place", [0, 1])
def test_eltwise_sum_coeff_in_place(in_place):
    """Top = one of the bottoms: every bottom diff is its coefficient times the top diff as it was, the shared one
    scaled after the others read it."""
    a, b = three()[:2]
    dy = gaussian((2, 3, 4), seed=9)
    layer = make_layer('type: "Eltwise" eltwise_param { operation: SUM coeff: 2 coeff: -0.5 }')
    bottom = [make_blob(a), make_blob(b)]
    top = [bottom[in_place]]
    layer.initialize(bottom, top)
    layer.forward(bottom, top)
    np.testing.assert_allclose(top[0].data, 2 * a - 0.5 * b, rtol=1e-14)
    top[0].diff[...] = dy
    layer.backward(top, [True, True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, 2 * dy)
    np.testing.assert_array_equal(bottom[1].diff, -0.5 * dy)


@pytest.mark.parametrize("stable", ["true", "false"])
def test_eltwise_prod(stable):
    a, b, c = three()
    dy = gaussian((2, 3, 4), seed=9)
    text = 'type: "Eltwise" eltwise_param { operation: PROD stable_prod_grad: %s }' % stable
    _, bottom, (t,) = run(text, [a, b, c], top_diffs=[dy])
    np.testing.assert_allclose(t.data, a * b * c, rtol=1e-14)
    np.testing.assert_allclose(bottom[0].diff, dy * b * c, rtol=1e-12)
    np.testing.assert_allclose(bottom[1].diff, dy * a * c, rtol=1e-12)
    gradcheck(text, [a, b, c])


def test_eltwise_max_and_caffe_tie_rule():
    a, b, c = three()
    # Separate the values so a finite-difference step never changes the winner.
    b += np.where(np.abs(a - b) < 0.05, 0.2, 0)
    c += np.where((np.abs(c - a) < 0.05) | (np.abs(c - b) < 0.05), 0.5, 0)
    text = 'type: "Eltwise" eltwise_param { operation: MAX }'
    dy = gaussian((2, 3, 4), seed=9)
    _, bottom, (t,) = run(text, [a, b, c], top_diffs=[dy])
    stack = np.stack([a, b, c])
    np.testing.assert_array_equal(t.data, stack.max(0))
    win = stack.argmax(0)
    for i, blob in enumerate(bottom):
        np.testing.assert_array_equal(blob.diff, np.where(win == i, dy, 0))
    gradcheck(text, [a, b, c])
    # Ties: bottom 1 beats bottom 0, a later bottom must be strictly larger.
    one = np.ones((1, 2))
    _, bottom, _ = run(text, [one, one, one], top_diffs=[one])
    np.testing.assert_array_equal([bl.diff[0, 0] for bl in bottom], [0, 1, 0])


ELTWISE_OPS = ['eltwise_param { coeff: 2 coeff: 3 coeff: -1 }', 'eltwise_param { operation: PROD }',
               'eltwise_param { operation: PROD stable_prod_grad: false }', 'eltwise_param { operation: MAX }']


@pytest.mark.parametrize("alias", [0, 1])
@pytest.mark.parametrize("param", ELTWISE_OPS)
def test_eltwise_in_place_matches_out_of_place(param, alias):
    xs = three()
    dy = gaussian(xs[0].shape, seed=9)
    results = []
    for in_place in (False, True):
        layer = make_layer('type: "Eltwise" ' + param)
        bottom = [make_blob(x) for x in xs]
        top = bottom[alias] if in_place else Blob((), dtype=np.float64)
        layer.initialize(bottom, [top])
        layer.forward(bottom, [top])
        y = top.data.copy()
        top.diff[...] = dy
        layer.backward([top], [True] * 3, bottom)
        results.append([y] + [b.diff.copy() for b in bottom])
    for got, want in zip(results[1], results[0]):
        np.testing.assert_allclose(got, want, rtol=1e-13)


def test_eltwise_errors():
    a, b, c = three()
    with pytest.raises(NetError, match="'s'.*coeff"):
        run('type: "Eltwise" eltwise_param { coeff: 1 coeff: 2 }', [a, b, c])
    with pytest.raises(NetError, match="'s'.*SUM"):
        run('type: "Eltwise" eltwise_param { operation: PROD coeff: 1 coeff: 2 }', [a, b])
    with pytest.raises(NetError, match="'s'"):
        run('type: "Eltwise"', [a, gaussian((2, 4, 3))])


# --- Flatten / Reshape -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,shape", [
    ('type: "Flatten"', (2, 60)),
    ('type: "Flatten" flatten_param { axis: 2 }', (2, 3, 20)),
    ('type: "Flatten" flatten_param { axis: 0 end_axis: 1 }', (6, 4, 5)),
    ('type: "Flatten" flatten_param { axis: -2 end_axis: -1 }', (2, 3, 20)),
    ('type: "Flatten" flatten_param { axis: 1 end_axis: 1 }', (2, 3, 4, 5)),
    ('type: "Reshape" reshape_param { shape { dim: 0 dim: -1 dim: 10 } }', (2, 6, 10)),
    ('type: "Reshape" reshape_param { shape { dim: 0 dim: 0 dim: 20 } }', (2, 3, 20)),
    ('type: "Reshape" reshape_param { shape { dim: -1 } }', (120,)),
    ('type: "Reshape" reshape_param { axis: 1 num_axes: 1 shape { dim: 3 dim: 1 } }', (2, 3, 1, 4, 5)),
    ('type: "Reshape" reshape_param { axis: -1 shape { dim: 1 } }', (2, 3, 4, 5, 1)),
    ('type: "Reshape" reshape_param { axis: 2 num_axes: 0 shape { dim: 1 } }', (2, 3, 1, 4, 5)),
    # Negative axes count from one past the end: -1 appends, -3 starts at axis 2 of a 4-D blob.
    ('type: "Reshape" reshape_param { axis: -3 num_axes: 2 shape { dim: -1 } }', (2, 3, 20)),
    ('type: "Reshape" reshape_param { axis: -4 num_axes: 2 shape { dim: -1 } }', (2, 12, 5)),
    ('type: "Reshape" reshape_param { axis: 1 shape { dim: 0 dim: 2 dim: -1 } }', (2, 3, 2, 10)),
])
def test_flatten_reshape(text, shape):
    x = gaussian((2, 3, 4, 5))
    dy = gaussian(shape, seed=7)
    layer, (b,), (t,) = run(text, [x], top_diffs=[dy])
    assert t.shape == shape
    np.testing.assert_array_equal(t.data, x.reshape(shape))
    np.testing.assert_array_equal(b.diff, dy.reshape(x.shape))
    assert layer.allow_in_place is False
    # A later forward follows new bottom values (the top is refreshed, not a stale copy).
    b.data[...] = 2 * x
    layer.forward([b], [t])
    np.testing.assert_array_equal(t.data, 2 * x.reshape(shape))
    assert gradcheck(text, [x]) == x.size


@pytest.mark.parametrize("text", [
    'type: "Reshape" reshape_param { shape { dim: -1 dim: -1 } }',
    'type: "Reshape" reshape_param { shape { dim: 7 dim: -1 } }',
    'type: "Reshape" reshape_param { shape { dim: 2 dim: 3 } }',
    'type: "Reshape" reshape_param { axis: 3 num_axes: 2 shape { dim: -1 } }',
    'type: "Reshape" reshape_param { axis: 2 shape { dim: 0 dim: 0 dim: 0 } }',
    'type: "Flatten" flatten_param { axis: 2 end_axis: 1 }',
])
def test_flatten_reshape_errors(text):
    with pytest.raises(NetError, match="'s'"):
        run(text, [gaussian((2, 3, 4, 5))])


def test_reshape_follows_bottom_reshape():
    layer, (b,), (t,) = run('type: "Reshape" reshape_param { shape { dim: 0 dim: -1 } }', [gaussian((2, 3, 4))])
    b.reshape((5, 3, 4))
    layer.reshape([b], [t])
    assert t.shape == (5, 12)


# --- Silence, Tile, Reduction ----------------------------------------------------------------------------------
def test_silence_zeroes_gradients():
    layer = make_layer('type: "Silence"')
    a, b = make_blob(gaussian((2, 3))), make_blob(gaussian((4,)))
    a.diff[...] = 5
    b.diff[...] = 5
    layer.initialize([a, b], [])
    layer.forward([a, b], [])
    layer.backward([], [True, False], [a, b])
    assert not a.diff.any() and (b.diff == 5).all()


def test_silence_gradient():
    # No top, so the objective is constant: the checker asserts both bottoms' diffs are overwritten with zeros.
    bottom = [make_blob(gaussian((2, 3))), make_blob(gaussian((4,)))]
    for blob in bottom:
        blob.diff[...] = 5
    assert GradientChecker().check(make_layer('type: "Silence"'), bottom, []) == 10


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_tile(axis):
    x = gaussian((2, 3, 2))
    text = 'type: "Tile" tile_param { axis: %d tiles: 3 }' % axis
    _, (b,), (t,) = run(text, [x])
    ax = axis % 3
    reps = [1, 1, 1]
    reps[ax] = 3
    # Caffe repeats the whole trailing block: like np.tile on the axis, not np.repeat.
    np.testing.assert_array_equal(t.data, np.tile(x, reps))
    gradcheck(text, [x])


def test_tile_needs_tiles():
    with pytest.raises(NetError, match="'s'.*tiles"):
        run('type: "Tile"', [gaussian((2, 3))])


REDUCTIONS = [("SUM", lambda x: x.sum(-1)), ("ASUM", lambda x: np.abs(x).sum(-1)),
              ("SUMSQ", lambda x: (x ** 2).sum(-1)), ("MEAN", lambda x: x.mean(-1))]


@pytest.mark.parametrize("op,ref", REDUCTIONS, ids=[r[0] for r in REDUCTIONS])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_reduction(op, ref, axis):
    x = gaussian((2, 3, 4))
    text = 'type: "Reduction" reduction_param { operation: %s axis: %d coeff: -1.5 }' % (op, axis)
    _, _, (t,) = run(text, [x])
    ax = axis % 3
    assert t.shape == x.shape[:ax]
    np.testing.assert_allclose(t.data, -1.5 * ref(x.reshape(x.shape[:ax] + (-1,))), rtol=1e-13)
    gradcheck(text, [x], kink=0.0, kink_range=0.02 if op == "ASUM" else -1.0)


# --- reference cases, driven through the layers alone --------------------------------------------------------------
MY_CASES = ["absval", "accuracy_top1", "accuracy_top5", "concat_axis1", "dropout_test_identity", "eltwise_max",
            "eltwise_prod", "eltwise_sum_coeff", "elu", "euclidean_loss", "flatten", "power_sq", "prelu",
            "prelu_shared", "relu_leaky", "reshape", "reshape_axis1", "sigmoid", "slice_axis1", "softmax_axis1_4d",
            "softmaxloss_2d", "softmaxloss_ignore_valid", "softmaxloss_none_weight2", "tanh"]


@pytest.mark.parametrize("case", MY_CASES)
def test_reference_case_layer_only(case):
    d = REF / case
    meta, A = load(d)
    net = caffe_pb2.NetParameter()
    text_format.Parse((d / "net.prototxt").read_text(), net)
    (lp,) = [layer for layer in net.layer if layer.type != "Input"]
    blobs = {}
    for name in meta["inputs"]:
        blobs[name] = Blob(A["in/" + name].shape, dtype=np.float32)
        blobs[name].data[...] = A["in/" + name]
    layer = create_layer(lp, getattr(caffe_pb2, meta["phase"]))
    bottom = [blobs[n] for n in lp.bottom]
    top = [blobs.setdefault(n, Blob((), dtype=np.float32)) for n in lp.top]
    layer.initialize(bottom, top)
    for k in A:
        if k.startswith("param/"):
            layer.blobs[int(k.rsplit("/", 1)[1])].data[...] = A[k]
    layer.forward(bottom, top)
    for k in A:
        if k.startswith("out/"):
            check(blobs[k[4:]].data, A[k], tol(meta, k), k)
    if not meta["backward"]:
        return
    for k in A:
        if k.startswith("topdiff/"):
            blobs[k[8:]].diff[...] = A[k]
    layer.backward(top, [layer.allow_force_backward(i) for i in range(len(bottom))], bottom)
    for k in A:
        if k.startswith("grad/"):
            check(blobs[k[5:]].diff, A[k], tol(meta, k), k)
        elif k.startswith("pgrad/"):
            check(layer.blobs[int(k.rsplit("/", 1)[1])].diff, A[k], tol(meta, k), k)
