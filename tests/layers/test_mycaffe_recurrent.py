"""MyCaffe's recurrent layers: LSTM with engine CUDNN, LstmSimple, LstmAttention.

Forward values are compared with per-step, per-stream NumPy references written here from the formulas (and, when
torch is importable, with torch.nn.LSTM for cuDNN's weight layout); gradients get exhaustive float64 checks; the
MyCaffe behaviours (state carry-over, maxT, clipping, dropout in TRAIN only, batch_first) and errors are checked.
"""
from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format

import pycaffe_norm as caffe
from pycaffe_norm.blob import Blob
from pycaffe_norm.errors import NetError, ShapeError
from pycaffe_norm.layers import create_layer, mycaffe_recurrent
from pycaffe_norm.proto import caffe_pb2
from pycaffe_norm.upgrade import upgrade_net
from tests.gradient_check import GradientChecker, make_blob

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST
FILLERS = 'weight_filler { type: "gaussian" std: 0.4 } bias_filler { type: "gaussian" std: 0.3 }'
CHECKER = GradientChecker()


def layer(text: str, phase: int = TRAIN, name: str = "rec"):
    p = caffe_pb2.LayerParameter()
    text_format.Parse('name: "%s" ' % name + text, p)
    return create_layer(p, phase)


def cudnn(extra: str = "", hidden: int = 3, phase: int = TRAIN):
    return layer('type: "LSTM" recurrent_param { engine: CUDNN num_output: %d %s %s }' % (hidden, FILLERS, extra),
                 phase)


def run(lay, arrays, n_top: int = 1):
    bottom = [make_blob(a) for a in arrays]
    top = [Blob((), dtype=np.float64) for _ in range(n_top)]
    lay.initialize(bottom, top)
    lay.forward(bottom, top)
    return bottom, top


def sig(a):
    return 1.0 / (1.0 + np.exp(-a))


def rand(shape, seed):
    return np.random.RandomState(seed).uniform(-1, 1, shape)


def first_zero(t_steps, n):
    """cont: 0 at t = 0 (a fresh sequence), 1 after."""
    cont = np.ones((t_steps, n))
    cont[0] = 0
    return cont


# --- independent references ------------------------------------------------------------------------------------
def cudnn_split(flat, input_dim, hidden, num_layers):
    """cuDNN's LSTM weight space, layer by layer: W_ih (4H, I_l), W_hh (4H, H), b_ih, b_hh; gates i, f, g, o."""
    out, at = [], 0
    for layer_index in range(num_layers):
        i_l = input_dim if layer_index == 0 else hidden
        sizes = [4 * hidden * i_l, 4 * hidden * hidden, 4 * hidden, 4 * hidden]
        parts = []
        for size in sizes:
            parts.append(flat[at:at + size])
            at += size
        out.append((parts[0].reshape(4 * hidden, i_l), parts[1].reshape(4 * hidden, hidden), parts[2], parts[3]))
    assert at == flat.size
    return out


def cudnn_reference(flat, x, hidden, num_layers, h0=None, c0=None):
    """Stacked cuDNN LSTM, one stream and one step at a time; x (T, N, I). Returns y, h_T, c_T."""
    t_steps, n, input_dim = x.shape
    weights = cudnn_split(flat, input_dim, hidden, num_layers)
    inp = x
    h_fin, c_fin = np.zeros((num_layers, n, hidden)), np.zeros((num_layers, n, hidden))
    for k, (w_ih, w_hh, b_ih, b_hh) in enumerate(weights):
        out = np.zeros((t_steps, n, hidden))
        for s in range(n):
            h = np.zeros(hidden) if h0 is None else h0[k, s].copy()
            c = np.zeros(hidden) if c0 is None else c0[k, s].copy()
            for t in range(t_steps):
                a = w_ih @ inp[t, s] + b_ih + w_hh @ h + b_hh
                i, f, g, o = sig(a[:hidden]), sig(a[hidden:2 * hidden]), np.tanh(a[2 * hidden:3 * hidden]), \
                    sig(a[3 * hidden:])
                c = f * c + i * g
                h = o * np.tanh(c)
                out[t, s] = h
            h_fin[k, s], c_fin[k, s] = h, c
        inp = out
    return inp, h_fin, c_fin


def kernel_reference(w_ih, w_hh, b, x, cont, h0=None, c0=None):
    """MyCaffe's lstm_fwd kernels, one stream and one step at a time; x (T, N, I), cont (T, N); gates i, f, o, g."""
    t_steps, n, _ = x.shape
    hd = w_hh.shape[1]
    out = np.zeros((t_steps, n, hd))
    for s in range(n):
        h = np.zeros(hd) if h0 is None else h0[s].copy()
        c = np.zeros(hd) if c0 is None else c0[s].copy()
        for t in range(t_steps):
            a = w_ih @ x[t, s] + b + cont[t, s] * (w_hh @ h)
            i, f, o, g = sig(a[:hd]), sig(a[hd:2 * hd]), sig(a[2 * hd:3 * hd]), np.tanh(a[3 * hd:])
            c = cont[t, s] * f * c + i * g
            h = o * np.tanh(c)
            out[t, s] = h
    return out


# --- LSTM, engine CUDNN: layout and forward ----------------------------------------------------------------------
def test_cudnn_engine_builds_one_blob_in_cudnn_layout():
    lay = cudnn("num_layers: 2", hidden=4)
    _, top = run(lay, [rand((5, 2, 3, 2), 0), first_zero(5, 2)])
    h, i = 4, 6
    assert type(lay).__name__ == "CudnnLSTMLayer" and lay.type == "LSTM"
    assert [b.shape for b in lay.blobs] == [(4 * h * (i + h) + 8 * h + 4 * h * (h + h) + 8 * h, 1, 1)]
    assert top[0].shape == (5, 2, 4, 1)  # MyCaffe's cuDNN output blob (T, N, H, 1)
    caffe_engine = layer('type: "LSTM" recurrent_param { engine: CAFFE num_output: 4 }')
    run(caffe_engine, [rand((5, 2, 6), 0), first_zero(5, 2)])
    assert [b.shape for b in caffe_engine.blobs] == [(16, 6), (16,), (16, 4)]  # BVLC's W_xc, b_c, W_hc


def test_cudnn_weights_filled_per_matrix_and_bias():
    lay = layer('type: "LSTM" recurrent_param { engine: CUDNN num_output: 2 num_layers: 2 weight_filler { '
                'type: "constant" value: 2 } bias_filler { type: "constant" value: 3 } }')
    run(lay, [rand((2, 1, 3), 0), first_zero(2, 1)])
    for w_ih, w_hh, b_ih, b_hh in cudnn_split(lay.blobs[0].data.reshape(-1), 3, 2, 2):
        assert np.all(w_ih == 2) and np.all(w_hh == 2) and np.all(b_ih == 3) and np.all(b_hh == 3)


def test_cudnn_unset_fillers_are_mycaffes():
    lay = layer('type: "LSTM" recurrent_param { engine: CUDNN num_output: 2 }')
    run(lay, [rand((2, 1, 3), 0), first_zero(2, 1)])
    w_ih, w_hh, b_ih, b_hh = cudnn_split(lay.blobs[0].data.reshape(-1), 3, 2, 1)[0]
    assert np.all(b_ih == np.float32(0.1)) and np.all(b_hh == np.float32(0.1))  # MyCaffe's bias 0.1
    assert np.std(w_ih) > 0 and np.all(np.abs(w_ih) <= np.sqrt(3.0 / 3)) and np.all(np.abs(w_hh) <= np.sqrt(3.0 / 2))


@pytest.mark.parametrize("num_layers", [1, 3])
def test_cudnn_forward_matches_reference(num_layers):
    x = rand((4, 3, 5), 1)
    lay = cudnn("num_layers: %d" % num_layers, phase=TEST)
    _, top = run(lay, [x, first_zero(4, 3)])
    y, _, _ = cudnn_reference(lay.blobs[0].data.reshape(-1), x, 3, num_layers)
    np.testing.assert_allclose(top[0].data[..., 0], y, rtol=1e-12, atol=1e-12)


def test_cudnn_layout_is_torch_lstm_layout():
    # PyTorch's cuDNN LSTM keeps its weights in cuDNN's buffer in this same order (w_ih, w_hh, b_ih, b_hh per
    # layer, gates i, f, g, o); its CPU LSTM computes the same function from the same tensors.
    torch = pytest.importorskip("torch")
    x = rand((6, 2, 4), 2)
    lay = cudnn("num_layers: 2", hidden=5, phase=TEST)
    _, top = run(lay, [x, first_zero(6, 2)])
    ref = torch.nn.LSTM(4, 5, num_layers=2).double()
    with torch.no_grad():
        for k, parts in enumerate(cudnn_split(lay.blobs[0].data.reshape(-1), 4, 5, 2)):
            for name, value in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), parts):
                getattr(ref, "%s_l%d" % (name, k)).copy_(torch.from_numpy(value.copy()))
        y, _ = ref(torch.from_numpy(x))
    np.testing.assert_allclose(top[0].data[..., 0], y.numpy(), rtol=1e-12, atol=1e-12)


def test_cudnn_exposed_states_in_and_out():
    lay = cudnn("num_layers: 2 expose_hidden: true")
    x, h0, c0 = rand((3, 2, 4), 3), rand((2, 2, 3), 4), rand((2, 2, 3), 5)
    _, top = run(lay, [x, np.ones((3, 2)), h0, c0], n_top=3)
    y, h_t, c_t = cudnn_reference(lay.blobs[0].data.reshape(-1), x, 3, 2, h0, c0)
    assert [t.shape for t in top] == [(3, 2, 3, 1), (2, 2, 3, 1), (2, 2, 3, 1)]
    np.testing.assert_allclose(top[0].data[..., 0], y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(top[1].data[..., 0], h_t, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(top[2].data[..., 0], c_t, rtol=1e-12, atol=1e-12)


def test_cudnn_auto_repeat_feeds_one_state_to_every_layer():
    lay = cudnn("num_layers: 2 expose_hidden_input: true auto_repeat_hidden_states_across_layers: true")
    x, h0, c0 = rand((3, 2, 4), 3), rand((2, 3), 4), rand((2, 3), 5)
    _, top = run(lay, [x, np.ones((3, 2)), h0, c0])
    y, _, _ = cudnn_reference(lay.blobs[0].data.reshape(-1), x, 3, 2, np.stack([h0, h0]), np.stack([c0, c0]))
    np.testing.assert_allclose(top[0].data[..., 0], y, rtol=1e-12, atol=1e-12)


def test_cudnn_batch_first_is_the_transposed_computation():
    x = rand((2, 5, 4), 6)  # (N, T, I)
    lay = cudnn("batch_first: true num_layers: 2", phase=TEST)
    _, top = run(lay, [x, first_zero(5, 2).T])
    assert top[0].shape == (2, 5, 3, 1)
    y, _, _ = cudnn_reference(lay.blobs[0].data.reshape(-1), x.transpose(1, 0, 2), 3, 2)
    np.testing.assert_allclose(top[0].data[..., 0], y.transpose(1, 0, 2), rtol=1e-12, atol=1e-12)


def test_cudnn_ignores_cont_inside_the_sequence_and_carries_state_on_cont0():
    x = rand((4, 2, 3), 7)
    lay = cudnn(phase=TEST)
    bottom, top = run(lay, [x, np.array([[0, 0], [0, 0], [1, 0], [0, 1]])])
    flat = lay.blobs[0].data.reshape(-1)
    y, h_t, c_t = cudnn_reference(flat, x, 3, 1)
    np.testing.assert_allclose(top[0].data[..., 0], y, rtol=1e-12, atol=1e-12)  # no resets: cuDNN has none
    bottom[1].data[...] = 1  # cont[0] > 0: the final states of the last forward start this one
    lay.forward(bottom, top)
    y2, _, _ = cudnn_reference(flat, x, 3, 1, h_t, c_t)
    np.testing.assert_allclose(top[0].data[..., 0], y2, rtol=1e-12, atol=1e-12)
    bottom[1].data[0] = 0  # cont[0] == 0: zero states
    lay.forward(bottom, top)
    np.testing.assert_allclose(top[0].data[..., 0], y, rtol=1e-12, atol=1e-12)
    rnn8 = cudnn("use_cudnn_rnn8_if_supported: true", phase=TEST)
    rnn8_bottom, rnn8_top = run(rnn8, [x, np.ones((4, 2))])
    rnn8.blobs[0].data[...] = lay.blobs[0].data
    for _ in range(2):  # MyCaffe's RNN8 path never carries states over
        rnn8.forward(rnn8_bottom, rnn8_top)
        np.testing.assert_allclose(rnn8_top[0].data[..., 0], y, rtol=1e-12, atol=1e-12)


def test_cudnn_dropout_between_layers_in_train_only():
    x = rand((3, 2, 4), 8)
    train = cudnn("num_layers: 2 dropout_ratio: 0.5")
    test = cudnn("num_layers: 2 dropout_ratio: 0.5", phase=TEST)
    caffe.set_random_seed(3)
    _, top_train = run(train, [x, first_zero(3, 2)])
    _, top_test = run(test, [x, first_zero(3, 2)])
    test.blobs[0].data[...] = train.blobs[0].data
    b_test = [make_blob(x), make_blob(first_zero(3, 2))]
    test.forward(b_test, top_test)
    flat = train.blobs[0].data.reshape(-1)
    y, _, _ = cudnn_reference(flat, x, 3, 2)
    np.testing.assert_allclose(top_test[0].data[..., 0], y, rtol=1e-12, atol=1e-12)
    # TRAIN: layer 1 sees layer 0's output times the (inverted-dropout) mask, which is 0 or 2 everywhere.
    mask = train._masks[0]
    assert set(np.unique(mask)) == {0.0, 2.0} and train._masks[1] is None
    y0, _, _ = cudnn_reference(flat[:4 * 3 * (4 + 3) + 24], x, 3, 1)
    layer1 = flat[4 * 3 * (4 + 3) + 24:]
    y1, _, _ = cudnn_reference(layer1, y0 * mask, 3, 1)
    np.testing.assert_allclose(top_train[0].data[..., 0], y1, rtol=1e-12, atol=1e-12)


# --- LSTM, engine CUDNN: gradients -------------------------------------------------------------------------------
@pytest.mark.parametrize("extra, n_bottom, n_top", [
    ("num_layers: 2", 2, 1),
    ("num_layers: 2 batch_first: true", 2, 1),
    ("num_layers: 2 expose_hidden: true", 4, 3),
    ("num_layers: 2 expose_hidden_input: true auto_repeat_hidden_states_across_layers: true", 4, 1),
])
def test_cudnn_gradient(extra, n_bottom, n_top):
    lay = cudnn(extra)
    t_steps, n = 3, 2
    x = rand((n, t_steps, 2, 2) if "batch_first" in extra else (t_steps, n, 2, 2), 9)
    cont = first_zero(t_steps, n).T if "batch_first" in extra else first_zero(t_steps, n)
    arrays = [x, cont]
    if n_bottom == 4:
        shape = (n, 3) if "auto_repeat" in extra else (2, n, 3)
        arrays += [rand(shape, 10), rand(shape, 11)]
    bottom = [make_blob(a) for a in arrays]
    top = [Blob((), dtype=np.float64) for _ in range(n_top)]
    checked = [j for j in range(n_bottom) if j != 1]
    assert CHECKER.check(lay, bottom, top, check_bottom=checked) > 0


def test_cudnn_gradient_with_dropout(monkeypatch):
    # One fixed dropout mask for every forward of the check (the layer draws from pcn's generator).
    monkeypatch.setattr(mycaffe_recurrent, "rng", lambda: np.random.RandomState(5))
    lay = cudnn("num_layers: 3 dropout_ratio: 0.4")
    bottom = [make_blob(rand((3, 2, 3), 12)), make_blob(first_zero(3, 2))]
    assert CHECKER.check(lay, bottom, [Blob((), dtype=np.float64)], check_bottom=[0]) > 0
    assert any(np.any(m == 0) for m in lay._masks if m is not None)


def test_cudnn_encoder_decoder_chain_as_in_mycaffes_tft_nets():
    # The encoder takes (N, H) states repeated to both layers and exposes its final (L, N, H, 1) states, which the
    # decoder takes as they are; both batch_first, as MyCaffe's Temporal Fusion Transformer nets write them.
    common = "num_layers: 2 batch_first: true auto_repeat_hidden_states_across_layers: true " \
             "use_cudnn_rnn8_if_supported: true expose_hidden_input: true"
    encoder = cudnn(common + " expose_hidden_output: true", phase=TEST)
    decoder = cudnn(common + " expose_hidden_output: false", phase=TEST)
    x_past, x_future, h0, c0 = rand((2, 4, 3), 14), rand((2, 3, 3), 15), rand((2, 3), 16), rand((2, 3), 17)
    _, enc_top = run(encoder, [x_past, np.ones((2, 4)), h0, c0], n_top=3)
    _, dec_top = run(decoder, [x_future, np.ones((2, 3)), enc_top[1].data, enc_top[2].data])
    _, h_t, c_t = cudnn_reference(encoder.blobs[0].data.reshape(-1), x_past.transpose(1, 0, 2), 3, 2,
                                  np.stack([h0, h0]), np.stack([c0, c0]))
    y, _, _ = cudnn_reference(decoder.blobs[0].data.reshape(-1), x_future.transpose(1, 0, 2), 3, 2, h_t, c_t)
    assert dec_top[0].shape == (2, 3, 3, 1)
    np.testing.assert_allclose(dec_top[0].data[..., 0], y.transpose(1, 0, 2), rtol=1e-12, atol=1e-12)


def test_cudnn_weight_gradient_accumulates():
    lay = cudnn()
    bottom, top = run(lay, [rand((2, 1, 3), 13), first_zero(2, 1)])
    top[0].diff[...] = 1
    lay.backward(top, [True, False], bottom)
    once = lay.blobs[0].diff.copy()
    lay.backward(top, [True, False], bottom)
    np.testing.assert_allclose(lay.blobs[0].diff, 2 * once, rtol=1e-14)
    assert np.any(once != 0)


@pytest.mark.parametrize("extra, arrays, match", [
    ("bidirectional: true", 2, "bidirectional"),
    ("num_layers: 0", 2, "num_layers"),
    ("dropout_ratio: 1", 2, "dropout_ratio"),
    ("", 3, "both h_0 and c_0"),
    ("expose_hidden_input: true", 5, "wrong-state"),
])
def test_cudnn_errors(extra, arrays, match):
    lay = cudnn(extra)
    x = rand((2, 2, 3), 0)
    bottoms = [x, np.ones((2, 2)), rand((1, 2, 3), 1), rand((1, 2, 3), 1)][:arrays]
    if arrays == 5:  # states of the wrong size
        bottoms = [x, np.ones((2, 2)), rand((3, 2, 3), 1), rand((3, 2, 3), 1)]
        with pytest.raises(ShapeError, match="bottom 2 .h_0."):
            run(lay, bottoms)
        return
    with pytest.raises(NetError, match=match):
        run(lay, bottoms)


def test_cudnn_loaded_blob_of_wrong_size_is_refused():
    lay = cudnn()
    lay.blobs = [Blob((7, 1, 1), dtype=np.float64)]
    with pytest.raises(ShapeError, match="cuDNN's weights"):
        run(lay, [rand((2, 1, 3), 0), first_zero(2, 1)])


def test_caffe_engine_refuses_mycaffe_only_settings():
    for extra, match in (("batch_first: true", "batch_first"), ("expose_hidden_output: true", "expose_hidden_output"),
                         ("auto_repeat_hidden_states_across_layers: true", "auto_repeat")):
        with pytest.raises(NetError, match=match):
            layer('type: "LSTM" recurrent_param { num_output: 2 %s }' % extra)
    with pytest.raises(NetError, match="engine: CUDNN"):
        layer('type: "RNN" recurrent_param { num_output: 2 engine: CUDNN }')


# --- LstmSimple -----------------------------------------------------------------------------------------------
def simple(extra: str = "", hidden: int = 3, batch: int = 2, fillers: str = FILLERS):
    return layer('type: "LstmSimple" lstm_simple_param { num_output: %d batch_size: %d %s %s }'
                 % (hidden, batch, fillers, extra))


def test_lstm_simple_blobs_defaults_and_clockwork_bias():
    lay = simple("enable_clockwork_forgetgate_bias: true", fillers="")
    _, top = run(lay, [rand((6, 5), 0)])
    assert [b.shape for b in lay.blobs] == [(12, 5), (12, 3), (12,)]
    assert top[0].shape == (6, 3)
    b01 = float(np.float32(0.1))  # the filler value is a float field
    np.testing.assert_array_equal(lay.blobs[2].data, [b01] * 3 + [5.0] * 3 + [b01] * 6)  # MyCaffe: 0.1
    assert np.all(np.abs(lay.blobs[0].data) <= np.sqrt(3.0 / 5)) and np.std(lay.blobs[0].data) > 0  # xavier


def test_lstm_simple_forward_without_clip_starts_fresh_every_time():
    x = rand((8, 3), 1)  # T = 4 steps of N = 2 rows, time-major
    lay = simple()
    bottom, top = run(lay, [x])
    w_ih, w_hh, b = (blob.data for blob in lay.blobs)
    ref = kernel_reference(w_ih, w_hh, b, x.reshape(4, 2, 3), first_zero(4, 2))
    np.testing.assert_allclose(top[0].data, ref.reshape(8, 3), rtol=1e-12, atol=1e-12)
    lay.forward(bottom, top)
    np.testing.assert_allclose(top[0].data, ref.reshape(8, 3), rtol=1e-12, atol=1e-12)


def test_lstm_simple_clip_resets_and_carries_state_over():
    x = rand((8, 3), 2)
    clip = np.array([0, 0, 1, 1, 0, 1, 1, 1], np.float64)  # stream 0 restarts at t = 2
    lay = simple()
    bottom, top = run(lay, [x, clip])
    w_ih, w_hh, b = (blob.data for blob in lay.blobs)
    ref = kernel_reference(w_ih, w_hh, b, x.reshape(4, 2, 3), clip.reshape(4, 2))
    np.testing.assert_allclose(top[0].data, ref.reshape(8, 3), rtol=1e-12, atol=1e-12)
    # With a clip input the final states of one forward start the next (scaled by clip at t = 0).
    h_t, c_t = lay._state
    bottom[1].data[...] = 1
    lay.forward(bottom, top)
    ref2 = kernel_reference(w_ih, w_hh, b, x.reshape(4, 2, 3), np.ones((4, 2)), h_t, c_t)
    np.testing.assert_allclose(top[0].data, ref2.reshape(8, 3), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("with_clip", [False, True])
def test_lstm_simple_gradient(with_clip):
    lay = simple(batch=2)
    arrays = [rand((6, 2, 2), 3)]
    if with_clip:
        arrays.append(np.array([0, 0, 1, 0, 1, 1], np.float64))
    bottom = [make_blob(a) for a in arrays]
    assert CHECKER.check(lay, bottom, [Blob((), dtype=np.float64)], check_bottom=[0]) > 0


def test_lstm_simple_clipping_threshold_bounds_gate_gradients():
    # One step, one stream: the bias gradient is the gate-input gradient itself, so it is the unclipped one
    # bounded to [-threshold, threshold], and the input gradient is that times W_ih.
    x = rand((1, 4), 4)
    grads = []
    for threshold in (0.0, 0.05):
        lay = simple("clipping_threshold: %g" % threshold, batch=1)
        caffe.set_random_seed(9)
        bottom, top = run(lay, [x])
        top[0].diff[...] = rand(top[0].shape, 5) * 3
        lay.backward(top, [True], bottom)
        grads.append((lay.blobs[2].diff.copy(), bottom[0].diff.copy(), lay.blobs[0].data.copy()))
    (db, _, _), (db_clip, dx_clip, w_ih) = grads
    assert np.abs(db).max() > 0.05
    np.testing.assert_allclose(db_clip, np.clip(db, -0.05, 0.05), rtol=1e-13)
    np.testing.assert_allclose(dx_clip[0], db_clip @ w_ih, rtol=1e-13)


@pytest.mark.parametrize("arrays, match", [
    ([(5, 3)], "multiple of batch_size 2"),
    ([(6, 3), (5,)], "clip"),
])
def test_lstm_simple_errors(arrays, match):
    with pytest.raises(ShapeError, match=match):
        run(simple(), [rand(s, 0) for s in arrays])
    with pytest.raises(NetError, match="num_output must be > 0"):
        run(simple(hidden=0), [rand((6, 3), 0)])
    with pytest.raises(NetError, match="batch_size must be > 0"):
        run(simple(batch=0), [rand((6, 3), 0)])


# --- LstmAttention (without attention) ------------------------------------------------------------------------
def attention(extra: str = ""):
    return layer('type: "LstmAttention" lstm_attention_param { num_output: 3 %s %s }' % (FILLERS, extra))


def test_lstm_attention_forward_matches_reference():
    x = rand((4, 2, 3, 1), 5)
    clip = np.array([[0, 0], [1, 1], [1, 0], [1, 1]], np.float64)
    lay = attention()
    _, top = run(lay, [x, clip])
    w_ih, w_hh, b = (blob.data for blob in lay.blobs)
    np.testing.assert_allclose(top[0].data, kernel_reference(w_ih, w_hh, b, x.reshape(4, 2, 3), clip),
                               rtol=1e-12, atol=1e-12)
    no_clip = attention()
    _, top = run(no_clip, [x])
    w_ih, w_hh, b = (blob.data for blob in no_clip.blobs)
    np.testing.assert_allclose(top[0].data, kernel_reference(w_ih, w_hh, b, x.reshape(4, 2, 3), first_zero(4, 2)),
                               rtol=1e-12, atol=1e-12)


def test_lstm_attention_runs_only_the_longest_stream():
    # maxT = the largest per-stream clip sum, plus one when clip[0] is 0: here 2 + 1 = 3 of 5 steps.
    x = rand((5, 2, 3), 6)
    clip = np.array([[0, 0], [1, 1], [1, 0], [0, 0], [0, 0]], np.float64)
    lay = attention()
    _, top = run(lay, [x, clip])
    w_ih, w_hh, b = (blob.data for blob in lay.blobs)
    ref = kernel_reference(w_ih, w_hh, b, x[:3], clip[:3])
    np.testing.assert_allclose(top[0].data[:3], ref, rtol=1e-12, atol=1e-12)
    assert np.all(top[0].data[3:] == 0)


def test_lstm_attention_projection_and_carry_over():
    x = rand((3, 2, 4), 7)
    lay = attention("num_output_ip: 5")
    bottom, top = run(lay, [x, first_zero(3, 2)])
    assert [b.shape for b in lay.blobs][3:] == [(3, 5), (1, 5)] and top[0].shape == (3, 2, 5)
    w_ih, w_hh, b, w_hd, b_hd = (blob.data for blob in lay.blobs)
    h = kernel_reference(w_ih, w_hh, b, x, first_zero(3, 2))
    np.testing.assert_allclose(top[0].data, h @ w_hd + b_hd[0], rtol=1e-12, atol=1e-12)
    h_t, c_t = lay._state
    bottom[1].data[...] = 1  # clip[0] != 0: start from the last final states
    lay.forward(bottom, top)
    h2 = kernel_reference(w_ih, w_hh, b, x, np.ones((3, 2)), h_t, c_t)
    np.testing.assert_allclose(top[0].data, h2 @ w_hd + b_hd[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("extra, clip", [
    ("", None),
    ("", [[0, 0], [1, 1], [1, 0]]),
    ("num_output_ip: 2", [[0, 0], [1, 1], [1, 1]]),
    ("", [[0, 0], [1, 0], [0, 0]]),  # maxT = 2 of 3 steps
])
def test_lstm_attention_gradient(extra, clip):
    lay = attention(extra)
    arrays = [rand((3, 2, 2), 8)] + ([np.asarray(clip, np.float64)] if clip is not None else [])
    bottom = [make_blob(a) for a in arrays]
    assert CHECKER.check(lay, bottom, [Blob((), dtype=np.float64)], check_bottom=[0]) > 0


def test_lstm_attention_errors():
    with pytest.raises(NetError, match="enable_attention"):
        run(attention("enable_attention: true"), [rand((2, 1, 3), 0), first_zero(2, 1)])
    with pytest.raises(ShapeError, match="clip"):
        run(attention(), [rand((2, 2, 3), 0), np.ones(3)])


# --- MyCaffe-style nets -------------------------------------------------------------------------------------------
RECURRENT_NET = """
name: "char_rnn_like"
layer { name: "input" type: "Input" top: "data" top: "clip" top: "label"
  input_param { shape { %s dim: 5 } shape { %s } shape { dim: 12 dim: 1 } } }
layer { name: "lstm1" type: "%s" bottom: "data" bottom: "clip" top: "lstm1" %s }
layer { name: "flat" type: "Reshape" bottom: "lstm1" top: "flat" reshape_param { shape { dim: -1 dim: 4 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "flat" top: "ip1" inner_product_param { num_output: 3
  weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" }
"""
NET_LAYERS = [
    ("Lstm", "recurrent_param { engine: CUDNN num_output: 4 num_layers: 2 dropout_ratio: 0.3 dropout_seed: 0 "
             "weight_filler { type: \"uniform\" min: -0.1 max: 0.1 } bias_filler { type: \"constant\" value: 0 } }"),
    ("Lstm", "recurrent_param { num_output: 4 weight_filler { type: \"uniform\" min: -0.1 max: 0.1 } }"),
    ("LstmSimple", "lstm_simple_param { num_output: 4 batch_size: 2 }"),
    ("LstmAttention", "lstm_attention_param { num_output: 4 }"),
]


@pytest.mark.parametrize("type_name, param", NET_LAYERS)
def test_mycaffe_recurrent_nets_train(type_name, param):
    net_param = caffe_pb2.NetParameter()
    # LstmSimple reads (T * N, ...) rows with N = batch_size, like MyCaffe's (75, 1, 15) char-RNN input.
    dims = "dim: 12 dim: 1" if type_name == "LstmSimple" else "dim: 6 dim: 2"
    text_format.Parse(RECURRENT_NET % (dims, dims, type_name, param), net_param)
    net_param = upgrade_net(net_param)
    caffe.set_random_seed(11)
    net = caffe.Net(net_param, caffe.TRAIN)
    rs = np.random.RandomState(0)
    net.blobs["data"].data[...] = rs.uniform(-1, 1, net.blobs["data"].shape)
    net.blobs["clip"].data[...] = first_zero(6, 2).reshape(net.blobs["clip"].shape)
    net.blobs["label"].data[...] = rs.randint(0, 3, net.blobs["label"].shape)
    loss = float(net.forward()["loss"])
    net.backward()
    assert np.isfinite(loss)
    lstm = [lay for lay in net.layers if lay.name == "lstm1"][0]
    assert all(np.isfinite(b.diff).all() and np.any(b.diff != 0) for b in lstm.blobs)


def test_mycaffe_type_strings_read_as_pcn_types():
    net_param = caffe_pb2.NetParameter()
    text_format.Parse('layer { name: "a" type: "Lstm" recurrent_param { num_output: 2 } } '
                      'layer { name: "b" type: "Rnn" recurrent_param { num_output: 2 } } '
                      'layer { name: "c" type: "lstm_simple" } layer { name: "d" type: "LSTM_ATTENTION" }', net_param)
    assert [lp.type for lp in upgrade_net(net_param).layer] == ["LSTM", "RNN", "LstmSimple", "LstmAttention"]


def test_cudnn_weights_round_trip_through_a_caffemodel(tmp_path):
    net_param = caffe_pb2.NetParameter()
    text_format.Parse(RECURRENT_NET % ("dim: 6 dim: 2", "dim: 6 dim: 2", "Lstm", NET_LAYERS[0][1]), net_param)
    net = caffe.Net(upgrade_net(net_param), caffe.TEST)
    net.blobs["data"].data[...] = rand(net.blobs["data"].shape, 20)
    net.blobs["clip"].data[...] = first_zero(6, 2)
    before = net.forward()["loss"].copy()
    net.save(str(tmp_path / "w.caffemodel"))
    again = caffe.Net(upgrade_net(net_param), caffe.TEST)
    again.copy_from(str(tmp_path / "w.caffemodel"))
    again.blobs["data"].data[...] = net.blobs["data"].data
    again.blobs["clip"].data[...] = net.blobs["clip"].data
    np.testing.assert_array_equal(again.params["lstm1"][0].data, net.params["lstm1"][0].data)
    np.testing.assert_array_equal(again.forward()["loss"], before)
