"""RNN, LSTM, LSTMUnit: Caffe's blob layout, forward values against a per-step NumPy reference, sequence resets and
state carry-over, exhaustive float64 gradient checks (step and threshold 1e-6), training in a net,
and clear errors."""
from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format

import pycaffe_norm as caffe
from pycaffe_norm.blob import Blob
from pycaffe_norm.errors import NetError, ShapeError
from pycaffe_norm.layers import create_layer
from pycaffe_norm.proto import caffe_pb2
from tests.gradient_check import GradientChecker, make_blob

TRAIN = caffe_pb2.TRAIN
# Caffe's test fillers for both layers.
FILLERS = 'weight_filler { type: "gaussian" std: 0.2 } bias_filler { type: "gaussian" std: 0.1 }'
H = 7  # Caffe's tests use num_output 7


def make_layer(kind: str, extra: str = "", name: str = "rec"):
    p = caffe_pb2.LayerParameter()
    text = 'name: "%s" type: "%s" ' % (name, kind)
    if kind != "LSTMUnit":
        text += "recurrent_param { num_output: %d %s %s }" % (H, FILLERS, extra)
    text_format.Parse(text, p)
    return create_layer(p, TRAIN)


def uniform(shape, seed, lo=-1.0, hi=1.0):
    return np.random.RandomState(seed).uniform(lo, hi, shape)


def bottoms_for(kind, t_steps, n, cont, static=False, expose=False, seed=0):
    """x (T, N, 3, 2), cont, [x_static (N, 2, 3, 4)], [h_0 [, c_0]] as in Caffe's tests."""
    arrays = [uniform((t_steps, n, 3, 2), seed), np.asarray(cont, np.float64).reshape(t_steps, n)]
    if static:
        arrays.append(uniform((n, 2, 3, 4), seed + 1))
    if expose:
        for j in range(2 if kind == "LSTM" else 1):
            arrays.append(uniform((1, n, H), seed + 2 + j))
    return [make_blob(a) for a in arrays]


def run(layer, bottom):
    n_top = 1 + (len(layer.state_names) if layer.expose_hidden else 0)
    top = [Blob((), dtype=np.float64) for _ in range(n_top)]
    layer.initialize(bottom, top)
    layer.forward(bottom, top)
    return top


# --- independent reference: per step, per stream, straight from the formulas in Caffe's headers -----------
def _sig(a):
    return 1.0 / (1.0 + np.exp(-a))


def reference(kind, params, x, cont, x_static=None, states=None):
    t_steps, n = cont.shape
    x = x.reshape(t_steps, n, -1)
    p = list(params)
    w_x, b = p.pop(0), p.pop(0)
    w_s = p.pop(0) if x_static is not None else None
    h = np.zeros((n, H)) if states is None else states[0].reshape(n, H).copy()
    c = np.zeros((n, H)) if states is None or len(states) < 2 else states[1].reshape(n, H).copy()
    outs = np.zeros((t_steps, n, H))
    for t in range(t_steps):
        for s in range(n):
            pre = w_x @ x[t, s] + b + p[0] @ (cont[t, s] * h[s])
            if w_s is not None:
                pre = pre + w_s @ x_static[s].reshape(-1)
            if kind == "RNN":
                h[s] = np.tanh(pre)
                outs[t, s] = np.tanh(p[1] @ h[s] + p[2])
            else:
                i, f, o, g = _sig(pre[:H]), _sig(pre[H:2 * H]), _sig(pre[2 * H:3 * H]), np.tanh(pre[3 * H:])
                c[s] = cont[t, s] * f * c[s] + i * g
                h[s] = o * np.tanh(c[s])
                outs[t, s] = h[s]
    return outs, h, c


# --- layout ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, static, shapes", [
    ("LSTM", False, [(28, 6), (28,), (28, 7)]),
    ("LSTM", True, [(28, 6), (28,), (28, 24), (28, 7)]),
    ("RNN", False, [(7, 6), (7,), (7, 7), (7, 7), (7,)]),
    ("RNN", True, [(7, 6), (7,), (7, 24), (7, 7), (7, 7), (7,)]),
])
def test_parameter_blobs_order_shapes_and_fillers(kind, static, shapes):
    # W_xc, b_c, [W_xc_static], W_hc  /  W_xh, b_h, [W_xh_static], W_hh, W_ho, b_o: Caffe's unrolled-net order
    p = caffe_pb2.LayerParameter()
    text_format.Parse('name: "r" type: "%s" recurrent_param { num_output: 7 weight_filler { type: "constant" '
                      'value: 2 } bias_filler { type: "constant" value: 3 } }' % kind, p)
    layer = create_layer(p, TRAIN)
    top = run(layer, bottoms_for(kind, 2, 3, np.zeros((2, 3)), static=static))
    assert [b.shape for b in layer.blobs] == shapes
    for b in layer.blobs:
        assert np.all(b.data == (3 if b.data.ndim == 1 else 2))
    assert top[0].shape == (2, 3, 7)


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_expose_hidden_tops_and_bottom_counts(kind):
    layer = make_layer(kind, "expose_hidden: true")
    n_state = 2 if kind == "LSTM" else 1
    top = run(layer, bottoms_for(kind, 3, 2, np.ones((3, 2)), static=True, expose=True))
    assert [t.shape for t in top] == [(3, 2, H)] + [(1, 2, H)] * n_state
    with pytest.raises(NetError, match="'rec'.*at least %d bottom" % (2 + n_state)):
        make_layer(kind, "expose_hidden: true").initialize(bottoms_for(kind, 3, 2, np.ones((3, 2))), top)


# --- forward values ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
@pytest.mark.parametrize("static, expose", [(False, False), (True, False), (True, True)])
def test_forward_matches_per_step_reference(kind, static, expose):
    cont = np.array([[0, 1], [1, 0], [1, 1], [0, 1]])
    if expose:
        cont[0] = 1  # let h_0 (and c_0) matter
    layer = make_layer(kind, "expose_hidden: true" if expose else "")
    bottom = bottoms_for(kind, 4, 2, cont, static=static, expose=expose)
    top = run(layer, bottom)
    first = 3 if static else 2
    outs, h, c = reference(kind, [b.data for b in layer.blobs], bottom[0].data, cont,
                           bottom[2].data if static else None,
                           [b.data for b in bottom[first:]] if expose else None)
    np.testing.assert_allclose(top[0].data, outs, rtol=1e-12, atol=1e-12)
    if expose:
        np.testing.assert_allclose(top[1].data[0], h, rtol=1e-12, atol=1e-12)
        if kind == "LSTM":
            np.testing.assert_allclose(top[2].data[0], c, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_cont_zero_resets_state_mid_sequence(kind):
    cont = np.array([0, 1, 1, 0, 1, 1])[:, None].repeat(2, axis=1)
    layer = make_layer(kind)
    bottom = bottoms_for(kind, 6, 2, cont)
    full = run(layer, bottom)[0].data.copy()
    fresh = make_layer(kind)
    tail = [make_blob(bottom[0].data[3:]), make_blob(cont[3:])]
    fresh.initialize(tail, [Blob((), dtype=np.float64)])
    for a, b in zip(fresh.blobs, layer.blobs):
        a.data[...] = b.data
    top = [Blob((), dtype=np.float64)]
    fresh.reshape(tail, top)
    fresh.forward(tail, top)
    np.testing.assert_allclose(full[3:], top[0].data, rtol=1e-13, atol=1e-13)
    assert not np.allclose(full[1:3], run(make_layer(kind), [make_blob(bottom[0].data[1:3]),
                                                           make_blob(np.zeros((2, 2)))])[0].data)


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_one_step_at_a_time_carries_state_like_a_full_sequence(kind):
    # Caffe's TestForward: without expose_hidden the final state of one forward is the next one's initial state.
    cont = np.array([[0, 0], [1, 1], [1, 1]])
    caffe.set_random_seed(1701)
    layer = make_layer(kind)
    bottom = bottoms_for(kind, 3, 2, cont)
    full = run(layer, bottom)[0].data.copy()
    caffe.set_random_seed(1701)
    step = make_layer(kind)
    top = [Blob((), dtype=np.float64)]
    for t in range(3):
        b = [make_blob(bottom[0].data[t:t + 1]), make_blob(cont[t:t + 1])]
        if t == 0:
            step.initialize(b, top)
        step.reshape(b, top)
        step.forward(b, top)
        np.testing.assert_allclose(top[0].data[0], full[t], rtol=1e-12, atol=1e-12)
    for t in range(1, 3):  # all cont 0: each step starts afresh, so outputs differ after the first
        b = [make_blob(bottom[0].data[t:t + 1]), make_blob(np.zeros((1, 2)))]
        step.forward(b, top)
        assert np.all(top[0].data[0] != full[t])


# --- gradients (exhaustive, float64 step and threshold 1e-6) ---------------------------------------------------
CHECKER = GradientChecker()
MIXED = np.arange(4).reshape(2, 2) > 2  # Caffe's "NonZeroContBufferSize2": cont_i = i > 2


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
@pytest.mark.parametrize("case", ["t1_cont0", "buffer2", "buffer2_static", "expose_hidden", "expose_static"])
def test_gradient(kind, case):
    static = "static" in case
    expose = "expose" in case
    if case == "t1_cont0":
        t_steps, n, cont = 1, 3, np.zeros((1, 3))
    elif expose:  # cont 1 at t=0 so the initial states reach the outputs, and a reset at t=1 for stream 0
        t_steps, n, cont = 3, 2, np.array([[1, 1], [0, 1], [1, 1]])
    else:
        t_steps, n, cont = 2, 2, MIXED
    layer = make_layer(kind, "expose_hidden: true" if expose else "")
    bottom = bottoms_for(kind, t_steps, n, cont, static=static, expose=expose)
    top = [Blob((), dtype=np.float64) for _ in range(1 + (len(layer.state_names) if expose else 0))]
    checked = [j for j in range(len(bottom)) if j != 1]  # no gradient for cont, as in Caffe
    assert CHECKER.check(layer, bottom, top, check_bottom=checked) > 0


@pytest.mark.parametrize("cont", [[0, 0, 0], [1, 0, 1]])
def test_lstm_unit_gradient(cont):
    layer = make_layer("LSTMUnit")
    bottom = [make_blob(uniform((1, 3, H), 1)), make_blob(uniform((1, 3, 4 * H), 2)), make_blob([cont])]
    top = [Blob((), dtype=np.float64), Blob((), dtype=np.float64)]
    assert CHECKER.check(layer, bottom, top, check_bottom=[0, 1]) > 0


def test_lstm_unit_forward_and_reset():
    layer = make_layer("LSTMUnit")
    c_prev, x = uniform((1, 2, 3), 3), uniform((1, 2, 12), 4, -3, 3)
    bottom = [make_blob(c_prev), make_blob(x), make_blob([[1, 0]])]
    top = [Blob((), dtype=np.float64), Blob((), dtype=np.float64)]
    layer.initialize(bottom, top)
    layer.forward(bottom, top)
    i, f, o, g = _sig(x[0, :, :3]), _sig(x[0, :, 3:6]), _sig(x[0, :, 6:9]), np.tanh(x[0, :, 9:])
    c = np.array([1.0, 0.0])[:, None] * f * c_prev[0] + i * g
    np.testing.assert_allclose(top[0].data[0], c, rtol=1e-13)
    np.testing.assert_allclose(top[1].data[0], o * np.tanh(c), rtol=1e-13)
    assert top[0].shape == top[1].shape == (1, 2, 3)
    assert not layer.allow_force_backward(2)
    with pytest.raises(NetError, match="sequence indicators"):
        layer.backward(top, [True, True, True], bottom)


# --- nets, errors -------------------------------------------------------------------------------------------
LSTM_NET = """
name: "seq"
layer { name: "data" type: "Input" top: "x" top: "cont" top: "target"
        input_param { shape { dim: 5 dim: 3 dim: 2 } shape { dim: 5 dim: 3 } shape { dim: 5 dim: 3 dim: 1 } } }
layer { name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" top: "h"
        recurrent_param { num_output: 6 weight_filler { type: "uniform" min: -0.3 max: 0.3 }
                          bias_filler { type: "constant" value: 0 } } }
layer { name: "ip" type: "InnerProduct" bottom: "h" top: "y"
        inner_product_param { num_output: 1 axis: 2 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "target" top: "loss" }
"""


def test_lstm_net_trains_with_sgd(tmp_path):
    (tmp_path / "net.prototxt").write_text(LSTM_NET)
    (tmp_path / "solver.prototxt").write_text(
        'net: "%s"\nbase_lr: 0.2\nmomentum: 0.9\nlr_policy: "fixed"\nmax_iter: 100\ndisplay: 0\n'
        'random_seed: 5\nsnapshot_after_train: false\n' % (tmp_path / "net.prototxt"))
    solver = caffe.get_solver(str(tmp_path / "solver.prototxt"))
    net = solver.net
    assert [p.data.shape for p in net.params["lstm"]] == [(24, 2), (24,), (24, 6)]
    rng = np.random.RandomState(0)
    x = rng.uniform(-1, 1, (5, 3, 2))
    net.blobs["x"].data[...] = x
    net.blobs["cont"].data[...] = (np.arange(5) > 0)[:, None]
    net.blobs["target"].data[...] = np.cumsum(x[:, :, :1], axis=0) * 0.5  # needs memory across steps
    first = float(net.forward()["loss"])
    solver.step(60)
    assert float(net.forward()["loss"]) < 0.3 * first


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_in_place_is_refused(kind):
    text = ('layer { name: "in" type: "Input" top: "x" top: "cont" input_param { shape { dim: 2 dim: 1 dim: 7 } '
            'shape { dim: 2 dim: 1 } } } layer { name: "rec" type: "%s" bottom: "x" bottom: "cont" top: "x" '
            'recurrent_param { num_output: 7 } }' % kind)
    with pytest.raises(NetError, match="'rec'.*in place"):
        caffe.Net(text_format.Parse(text, caffe_pb2.NetParameter()), caffe.TRAIN)


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
@pytest.mark.parametrize("what, bottom, pattern", [
    ("cont T", lambda: [make_blob(np.zeros((3, 2, 4))), make_blob(np.zeros((4, 2)))], r"cont.*\(4, 2\).*\(3, 2\)"),
    ("cont N", lambda: [make_blob(np.zeros((3, 2, 4))), make_blob(np.zeros((3, 5)))], r"cont.*\(3, 5\).*\(3, 2\)"),
    ("cont axes", lambda: [make_blob(np.zeros((3, 2, 4))), make_blob(np.zeros((3, 2, 1)))], r"cont"),
    ("x axes", lambda: [make_blob(np.zeros((3, 2))), make_blob(np.zeros((3, 2)))], r"x.*3 axes"),
    ("static N", lambda: [make_blob(np.zeros((3, 2, 4))), make_blob(np.zeros((3, 2))), make_blob(np.zeros((3, 4)))],
     r"x_static.*\(3, 4\)"),
])
def test_shape_errors_name_layer_and_shapes(kind, what, bottom, pattern):
    with pytest.raises(ShapeError, match=r"'rec' \(%s\).*" % kind + pattern):
        run(make_layer(kind), bottom())


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_reshape_errors_after_setup(kind):
    layer = make_layer(kind, "expose_hidden: true")
    bottom = bottoms_for(kind, 2, 2, np.ones((2, 2)), expose=True)
    top = run(layer, bottom)
    bottom[2].reshape((1, 3, H))
    with pytest.raises(ShapeError, match=r"h_0.*\(1, 3, 7\).*\(1, 2, 7\)"):
        layer.reshape(bottom, top)
    bottom = bottoms_for(kind, 2, 2, np.ones((2, 2)), expose=True)
    bottom[0].reshape((2, 2, 5))
    with pytest.raises(ShapeError, match=r"x.*6 input features"):
        layer.reshape(bottom, top)


def test_other_errors():
    with pytest.raises(NetError, match="'rec'.*num_output"):
        p = caffe_pb2.LayerParameter()
        text_format.Parse('name: "rec" type: "LSTM"', p)
        run(create_layer(p, TRAIN), bottoms_for("LSTM", 1, 1, [[0]]))
    layer = make_layer("LSTM")
    layer.blobs = [Blob((28, 6)), Blob((28,)), Blob((28, 5))]
    with pytest.raises(ShapeError, match=r"W_hc.*\(28, 5\).*\(28, 7\)"):
        run(layer, bottoms_for("LSTM", 1, 1, [[0]]))
    layer = make_layer("LSTM")
    layer.blobs = [Blob((28, 6)), Blob((28,))]
    with pytest.raises(NetError, match="2 given, 3 expected"):
        run(layer, bottoms_for("LSTM", 1, 1, [[0]]))
    unit = make_layer("LSTMUnit")
    with pytest.raises(ShapeError, match=r"gate inputs.*\(1, 2, 10\).*\(1, 2, 12\)"):
        unit.initialize([make_blob(np.zeros((1, 2, 3))), make_blob(np.zeros((1, 2, 10))),
                         make_blob(np.zeros((1, 2)))], [Blob(()), Blob(())])


def test_float32_forward_backward():
    layer = make_layer("LSTM", "", "f32")
    bottom = [make_blob(uniform((3, 2, 4), 0), np.float32), make_blob(MIXED.tolist() + [[1, 1]], np.float32)]
    top = [Blob((), dtype=np.float32)]
    layer.initialize(bottom, top)
    layer.forward(bottom, top)
    top[0].diff[...] = 1
    layer.backward(top, [True, False], bottom)
    assert top[0].data.dtype == np.float32 and bottom[0].diff.dtype == np.float32
    assert all(b.data.dtype == np.float32 and np.any(b.diff != 0) for b in layer.blobs)
