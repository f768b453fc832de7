"""MyCaffe's own recurrent layers: ``LSTM`` with ``engine: CUDNN``, ``LstmSimple`` and ``LstmAttention``.

* ``LSTM`` with ``recurrent_param { engine: CUDNN }`` is MyCaffe's cuDNN RNN (RecurrentLayer.cs): one parameter
  blob in cuDNN's weight layout, ``num_layers`` stacked layers with dropout between them in TRAIN, no resets
  inside the sequence. ``engine: CAFFE`` (or unset) is BVLC's LSTM (``recurrent.LSTMLayer``), as in MyCaffe.
* ``LstmSimple`` (LSTMSimpleLayer.cs) and ``LstmAttention`` (LSTMAttentionLayer.cs, without attention) are the
  single-kernel LSTMs of MyCaffe's CUDA code: blobs W_ih (4H, I), W_hh (4H, H), b (4H), gate-input gradients
  optionally bounded by ``clipping_threshold``.

All three share one LSTM core (``lstm_steps_forward``/``lstm_steps_backward``): the input projection of every step
is one matrix product, and only the recurrence loops over time. Where MyCaffe's kernels compute a gradient that
is not the gradient of their forward pass (see docs/layers.md), pcn computes the exact gradient.
"""
from __future__ import annotations

from typing import List

from .. import parallel
from ..blob import Blob
from ..errors import NetError
from ..fillers import fill, fill_array
from ..proto import caffe_pb2
from ..random import rng
from .base import TRAIN, Layer, register
from .recurrent import _sigmoid

# Block positions of the gates (i, f, o, g) in the 4H gate vector.
CAFFE_GATES = (0, 1, 2, 3)   # Caffe and MyCaffe's own kernels: i, f, o, g
CUDNN_GATES = (0, 1, 3, 2)   # cuDNN: i, f, g, o


def lstm_steps_forward(xp, proj, w_hh, cont, h0, c0, gates: tuple = CAFFE_GATES) -> tuple:
    """Runs the LSTM recurrence over T steps.

    proj (T, N, 4H): the input part of the gate inputs (W_ih x_t + biases); w_hh (4H, H); cont (T, N, 1)
    multiplies h_{t-1} and c_{t-1} (0 starts a new sequence); h0, c0 (N, H). Returns (h (T, N, H), cache).
    """
    t_steps, n, h4 = proj.shape
    hd = h4 // 4
    bi, bf, bo, bg = (slice(k * hd, (k + 1) * hd) for k in gates)
    acts = xp.empty_like(proj)
    c_all = xp.empty((t_steps + 1, n, hd), dtype=proj.dtype)  # c_all[0] = c0
    h_all = xp.empty((t_steps, n, hd), dtype=proj.dtype)
    h_conted = xp.empty_like(h_all)
    tanh_c = xp.empty_like(h_all)
    c_all[0] = c0
    h_prev = h0
    for t in range(t_steps):
        h_conted[t] = cont[t] * h_prev
        pre = proj[t] + h_conted[t] @ w_hh.T
        acts[t] = _sigmoid(xp, pre)
        acts[t, :, bg] = xp.tanh(pre[:, bg])
        c_all[t + 1] = cont[t] * acts[t, :, bf] * c_all[t] + acts[t, :, bi] * acts[t, :, bg]
        tanh_c[t] = xp.tanh(c_all[t + 1])
        h_all[t] = acts[t, :, bo] * tanh_c[t]
        h_prev = h_all[t]
    return h_all, (acts, c_all, h_conted, tanh_c, cont, gates)


def lstm_steps_backward(xp, cache: tuple, w_hh, dh_top, dh_last, dc_last, clip_threshold: float = 0.0) -> tuple:
    """Gradients of ``lstm_steps_forward``: returns (d_gates (T, N, 4H) w.r.t. the gate inputs, dh0, dc0).

    dh_top (T, N, H) reaches every output, dh_last/dc_last the final states. With ``clip_threshold`` > 0 each
    step's gate-input gradient is bounded to [-threshold, threshold] before it flows on (MyCaffe's clipping).
    The W_hh gradient is ``d_gates^T h_conted`` (see ``recurrent_weight_grad``).
    """
    acts, c_all, h_conted, tanh_c, cont, gates = cache
    t_steps, n, h4 = acts.shape
    hd = h4 // 4
    bi, bf, bo, bg = (slice(k * hd, (k + 1) * hd) for k in gates)
    d_gates = xp.empty_like(acts)
    dh_next, dc_next = dh_last, dc_last
    for t in range(t_steps - 1, -1, -1):
        i, f, o, g = acts[t, :, bi], acts[t, :, bf], acts[t, :, bo], acts[t, :, bg]
        dh = dh_top[t] + dh_next
        dc = dc_next + dh * o * (1 - tanh_c[t] * tanh_c[t])
        d_gates[t, :, bi] = dc * g * i * (1 - i)
        d_gates[t, :, bf] = dc * cont[t] * c_all[t] * f * (1 - f)
        d_gates[t, :, bo] = dh * tanh_c[t] * o * (1 - o)
        d_gates[t, :, bg] = dc * i * (1 - g * g)
        if clip_threshold > 0:
            xp.clip(d_gates[t], -clip_threshold, clip_threshold, out=d_gates[t])
        dc_next = dc * cont[t] * f
        dh_next = cont[t] * (d_gates[t] @ w_hh)
    return d_gates, dh_next, dc_next


def recurrent_weight_grad(cache: tuple, d_gates):
    """dL/dW_hh of one ``lstm_steps_forward`` call."""
    h_conted = cache[2]
    return parallel.dot(d_gates.reshape(-1, d_gates.shape[-1]).T, h_conted.reshape(-1, h_conted.shape[-1]))


def _filler(param, name: str, default: caffe_pb2.FillerParameter) -> caffe_pb2.FillerParameter:
    return getattr(param, name) if param.HasField(name) else default


# MyCaffe's default fillers (LSTMSimpleParameter.cs, LSTMAttentionParameter.cs): xavier weights, bias 0.1.
_XAVIER = caffe_pb2.FillerParameter(type="xavier")
_BIAS_01 = caffe_pb2.FillerParameter(type="constant", value=0.1)


# ---------------------------------------------------------------------------------------------------------------
# LSTM, engine CUDNN
# ---------------------------------------------------------------------------------------------------------------
class CudnnLSTMLayer(Layer):
    """MyCaffe's ``LSTM`` with ``engine: CUDNN``: a cuDNN RNN in LSTM mode.

    Bottoms x (T, N, ...) and cont (T, N) ((N, T, ...) and (N, T) with ``batch_first``), then h_0 and c_0 with
    ``expose_hidden_input`` ((L, N, H) in any shape of that count; (N, H) repeated to every layer with
    ``auto_repeat_hidden_states_across_layers``). Tops: y (T, N, H, 1) ((N, T, H, 1) with ``batch_first``) and,
    with ``expose_hidden_output``, h_T and c_T (L, N, H, 1).

    The one parameter blob (W, 1, 1) holds, layer after layer, cuDNN's LSTM parameters: W_ih (4H, I_l) and W_hh
    (4H, H), gate blocks in cuDNN's order i, f, g, o, then b_ih (4H) and b_hh (4H); I_0 = I, I_l = H after.
    cont is not applied inside the sequence (cuDNN has no resets); the final states of one forward start the next
    when cont[0] of the first stream is > 0 (MyCaffe's legacy cuDNN path), never with
    ``use_cudnn_rnn8_if_supported``. Dropout (``dropout_ratio``) acts on the outputs of all layers but the last,
    in TRAIN only.
    """

    type = "LSTM"
    allow_in_place = False

    def __init__(self, param, phase: int = TRAIN):
        super().__init__(param, phase)
        p = param.recurrent_param
        self.expose_in = p.expose_hidden_input if p.HasField("expose_hidden_input") else p.expose_hidden
        self.expose_out = p.expose_hidden_output if p.HasField("expose_hidden_output") else p.expose_hidden
        self.min_bottom = 4 if self.expose_in else 2
        self.max_bottom = 4
        self.exact_num_top = 3 if self.expose_out else 1

    def _error(self, what: str) -> NetError:
        return NetError("layer %r (LSTM, engine CUDNN): %s" % (self.name, what))

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != 1

    def setup(self, bottom: List[Blob], top: List[Blob]) -> None:
        p = self.layer_param.recurrent_param
        self.hidden = int(p.num_output)
        self.num_layers = int(p.num_layers)
        self.dropout_ratio = float(p.dropout_ratio)
        self.batch_first = bool(p.batch_first)
        self.auto_repeat = bool(p.auto_repeat_hidden_states_across_layers)
        self.carry_over = not p.use_cudnn_rnn8_if_supported
        if self.hidden <= 0:
            raise self._error("recurrent_param.num_output must be > 0")
        if self.num_layers < 1:
            raise self._error("recurrent_param.num_layers must be >= 1")
        if not 0.0 <= self.dropout_ratio < 1.0:
            raise self._error("recurrent_param.dropout_ratio must be in [0, 1), got %g" % self.dropout_ratio)
        if p.bidirectional:
            raise self._error("recurrent_param.bidirectional: true is not supported by pcn")
        if len(bottom) == 3:
            raise self._error("takes x, cont and then both h_0 and c_0 (4 bottoms), got 3 bottoms")
        if bottom[0].num_axes < 3:
            raise self.shape_error("bottom 0 (x) (needs at least 3 axes)", bottom[0].shape,
                                   bottom[0].shape + ("features",))
        self.input_dim = bottom[0].count_range(2)
        shape = (self.param_count(), 1, 1)
        if self.blobs:
            if len(self.blobs) != 1:
                raise self._error("takes 1 parameter blob (cuDNN's weights), %d given" % len(self.blobs))
            if self.blobs[0].count != shape[0]:
                raise self.shape_error("parameter blob (cuDNN's weights)", self.blobs[0].shape, shape)
            self.blobs[0].reshape(shape)
        else:
            blob = Blob(shape, dtype=bottom[0].dtype, xp=bottom[0].xp)
            flat = bottom[0].xp.zeros(shape[0], dtype=bottom[0].dtype)
            # The CUDNN engine exists only in MyCaffe, so unset fillers mean MyCaffe's defaults; each gate's
            # matrix and bias is filled on its own, as MyCaffe fills cuDNN's linear layers.
            weight_filler = _filler(p, "weight_filler", _XAVIER)
            bias_filler = _filler(p, "bias_filler", _BIAS_01)
            for layer in self.layer_views(flat):
                for gate in range(4):
                    rows = slice(gate * self.hidden, (gate + 1) * self.hidden)
                    for name in ("w_ih", "w_hh"):
                        layer[name][rows] = bottom[0].xp.asarray(fill_array(weight_filler, layer[name][rows].shape))
                    for name in ("b_ih", "b_hh"):
                        layer[name][rows] = bottom[0].xp.asarray(fill_array(bias_filler, (self.hidden,)))
            blob.data[...] = flat.reshape(shape)
            self.blobs = [blob]
        self.param_propagate_down = [True]
        self._state = None
        self._masks = []

    def param_count(self) -> int:
        h = self.hidden
        return sum(4 * h * (i + h) + 8 * h for i in self.layer_inputs())

    def layer_inputs(self) -> list:
        return [self.input_dim] + [self.hidden] * (self.num_layers - 1)

    def layer_views(self, flat) -> list:
        """Per layer, views of w_ih (4H, I_l), w_hh (4H, H), b_ih and b_hh (4H) into the flat weights."""
        h4, views, at = 4 * self.hidden, [], 0
        for i in self.layer_inputs():
            layer = {}
            for name, shape in (("w_ih", (h4, i)), ("w_hh", (h4, self.hidden)), ("b_ih", (h4,)), ("b_hh", (h4,))):
                size = shape[0] * (shape[1] if len(shape) > 1 else 1)
                layer[name] = flat[at:at + size].reshape(shape)
                at += size
            views.append(layer)
        return views

    def _time_major(self, a):
        return a.swapaxes(0, 1) if self.batch_first else a

    def reshape(self, bottom: List[Blob], top: List[Blob]) -> None:
        x, cont = bottom[0], bottom[1]
        if x.num_axes < 3 or x.count_range(2) != self.input_dim:
            raise self.shape_error("bottom 0 (x) (%d input features expected from axis 2 on)" % self.input_dim,
                                   x.shape, x.shape[:2] + (self.input_dim,))
        if cont.shape != x.shape[:2]:
            raise self.shape_error("bottom 1 (cont) (must match the first two axes of x %s)" % (x.shape,),
                                   cont.shape, x.shape[:2])
        t_steps, n = (x.shape[1], x.shape[0]) if self.batch_first else x.shape[:2]
        self.t_steps, self.n = t_steps, n
        state_count = self.num_layers * n * self.hidden
        if self.expose_in:
            for j, name in ((2, "h_0"), (3, "c_0")):
                ok = bottom[j].count == state_count or (self.auto_repeat and bottom[j].count == n * self.hidden)
                if not ok:
                    raise self.shape_error("bottom %d (%s)" % (j, name), bottom[j].shape,
                                           (self.num_layers, n, self.hidden))
        top[0].reshape((n, t_steps, self.hidden, 1) if self.batch_first else (t_steps, n, self.hidden, 1))
        if self.expose_out:
            top[1].reshape((self.num_layers, n, self.hidden, 1))
            top[2].reshape((self.num_layers, n, self.hidden, 1))

    def _initial_states(self, bottom: List[Blob]) -> list:
        xp, dtype = bottom[0].xp, bottom[0].dtype
        shape = (self.num_layers, self.n, self.hidden)
        if self.expose_in:
            states = []
            for j in (2, 3):
                s = bottom[j].data.reshape(-1, self.n, self.hidden)
                states.append(xp.broadcast_to(s, shape) if s.shape[0] == 1 else s)
            return states
        if self.carry_over and self._state is not None and self._state[0].shape == shape:
            if float(bottom[1].data.reshape(-1)[0]) > 0:
                return self._state
        return [xp.zeros(shape, dtype=dtype), xp.zeros(shape, dtype=dtype)]

    def forward(self, bottom: List[Blob], top: List[Blob]) -> None:
        xp = bottom[0].xp
        t_steps, n = self.t_steps, self.n
        views = self.layer_views(self.blobs[0].data.reshape(-1))
        h0, c0 = self._initial_states(bottom)
        ones = xp.ones((t_steps, n, 1), dtype=bottom[0].dtype)
        inp = self._time_major(bottom[0].data.reshape(bottom[0].shape[:2] + (self.input_dim,)))
        self._inputs, self._caches, self._masks = [], [], []
        h_last, c_last = [], []
        for layer, w in enumerate(views):
            self._inputs.append(inp)
            proj = (parallel.dot(inp.reshape(t_steps * n, -1), w["w_ih"].T) + (w["b_ih"] + w["b_hh"])).reshape(
                t_steps, n, -1)
            out, cache = lstm_steps_forward(xp, proj, w["w_hh"], ones, h0[layer], c0[layer], CUDNN_GATES)
            self._caches.append(cache)
            h_last.append(out[-1])
            c_last.append(cache[1][-1])
            if layer < self.num_layers - 1 and self.phase == TRAIN and self.dropout_ratio > 0:
                keep = rng().random_sample(out.shape) >= self.dropout_ratio  # drawn on the CPU, as Dropout does
                mask = xp.asarray(keep.astype(out.dtype) / out.dtype.type(1.0 - self.dropout_ratio))
                self._masks.append(mask)
                out = out * mask
            else:
                self._masks.append(None)
            inp = out
        top[0].data[...] = self._time_major(inp).reshape(top[0].shape)
        self._state = [xp.stack(h_last), xp.stack(c_last)]
        if self.expose_out:
            top[1].data[...] = self._state[0].reshape(top[1].shape)
            top[2].data[...] = self._state[1].reshape(top[2].shape)

    def backward(self, top: List[Blob], propagate_down: List[bool], bottom: List[Blob]) -> None:
        xp = bottom[0].xp
        t_steps, n, hd = self.t_steps, self.n, self.hidden
        views = self.layer_views(self.blobs[0].data.reshape(-1))
        grads = self.layer_views(self.blobs[0].diff.reshape(-1))
        dy = self._time_major(top[0].diff.reshape(top[0].shape[:2] + (hd,)))
        zeros = xp.zeros((self.num_layers, n, hd), dtype=bottom[0].dtype)
        dh_last = top[1].diff.reshape(self.num_layers, n, hd) if self.expose_out else zeros
        dc_last = top[2].diff.reshape(self.num_layers, n, hd) if self.expose_out else zeros
        dh0, dc0 = xp.empty_like(zeros), xp.empty_like(zeros)
        for layer in range(self.num_layers - 1, -1, -1):
            w, g, cache, inp = views[layer], grads[layer], self._caches[layer], self._inputs[layer]
            if self._masks[layer] is not None:
                dy = dy * self._masks[layer]
            d_gates, dh0[layer], dc0[layer] = lstm_steps_backward(xp, cache, w["w_hh"], dy, dh_last[layer],
                                                                  dc_last[layer])
            d2 = d_gates.reshape(t_steps * n, -1)
            if self.param_propagate_down[0]:
                g["w_ih"] += parallel.dot(d2.T, inp.reshape(t_steps * n, -1))
                g["w_hh"] += recurrent_weight_grad(cache, d_gates)
                db = d2.sum(axis=0)
                g["b_ih"] += db
                g["b_hh"] += db
            if layer > 0 or propagate_down[0]:
                dy = parallel.dot(d2, w["w_ih"]).reshape(t_steps, n, -1)
        if propagate_down[0]:
            bottom[0].diff[...] = self._time_major(dy).reshape(bottom[0].shape)
        if self.expose_in:
            for j, d in ((2, dh0), (3, dc0)):
                if propagate_down[j]:
                    if bottom[j].count == d.size:
                        bottom[j].diff[...] = d.reshape(bottom[j].shape)
                    else:  # repeated to every layer: the gradients add up
                        bottom[j].diff[...] = d.sum(axis=0).reshape(bottom[j].shape)


# ---------------------------------------------------------------------------------------------------------------
# LstmSimple and LstmAttention
# ---------------------------------------------------------------------------------------------------------------
class _KernelLSTM(Layer):
    """What LstmSimple and LstmAttention share: blobs W_ih (4H, I), W_hh (4H, H), b (4H) and MyCaffe's
    lstm_fwd/lstm_bwd kernels (gates i, f, o, g; cont scales h_{t-1} and c_{t-1}; bounded gate gradients)."""

    allow_in_place = False
    min_bottom = 1
    max_bottom = 2
    exact_num_top = 1
    param_field = ""

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != 1

    def _create_blobs(self, bottom: List[Blob], input_dim: int) -> None:
        p = getattr(self.layer_param, self.param_field)
        hd = self.hidden
        specs = [("W_ih", (4 * hd, input_dim)), ("W_hh", (4 * hd, hd)), ("b", (4 * hd,))]
        if self.blobs:
            if len(self.blobs) != 3:
                raise NetError("layer %r (%s): incorrect number of parameter blobs: %d given, 3 expected "
                               "(W_ih, W_hh, b)" % (self.name, self.type, len(self.blobs)))
            for blob, (name, shape) in zip(self.blobs, specs):
                if tuple(blob.shape) != shape:
                    raise self.shape_error("parameter %s" % name, blob.shape, shape)
        else:
            self.blobs = [Blob(shape, dtype=bottom[0].dtype, xp=bottom[0].xp) for _, shape in specs]
            weight_filler = _filler(p, "weight_filler", _XAVIER)
            fill(self.blobs[0], weight_filler)
            fill(self.blobs[1], weight_filler)
            fill(self.blobs[2], _filler(p, "bias_filler", _BIAS_01))
            if p.enable_clockwork_forgetgate_bias:
                self.blobs[2].data[hd:2 * hd] = 5.0  # Koutnik et al., 'A Clockwork RNN' (2014)
        self.param_propagate_down = [True] * 3
        self._state = None

    def _read_common(self) -> None:
        p = getattr(self.layer_param, self.param_field)
        self.hidden = int(p.num_output)
        self.clip_threshold = float(p.clipping_threshold)
        if self.hidden <= 0:
            raise NetError("layer %r (%s): %s.num_output must be > 0" % (self.name, self.type, self.param_field))
        if self.clip_threshold < 0:
            raise NetError("layer %r (%s): %s.clipping_threshold must be >= 0"
                           % (self.name, self.type, self.param_field))

    def _run(self, bottom: List[Blob], x, t_run: int, carry: bool):
        """Forward over the first ``t_run`` of the T steps of x (T, N, I); returns h (t_run, N, H)."""
        xp = bottom[0].xp
        t_steps, n = x.shape[:2]
        w_ih, w_hh, b = (blob.data for blob in self.blobs[:3])
        proj = (parallel.dot(x[:t_run].reshape(t_run * n, -1), w_ih.T) + b).reshape(t_run, n, -1)
        if len(bottom) > 1:
            cont = bottom[1].data.reshape(t_steps, n, 1)[:t_run]
        else:
            cont = xp.ones((t_run, n, 1), dtype=x.dtype)
            cont[0] = 0  # MyCaffe's kernels without a clip input: cont_t = (t > 0)
        shape = (n, self.hidden)
        if carry and self._state is not None and self._state[0].shape == shape:
            h0, c0 = self._state
        else:
            h0, c0 = xp.zeros(shape, dtype=x.dtype), xp.zeros(shape, dtype=x.dtype)
        h, cache = lstm_steps_forward(xp, proj, w_hh, cont, h0, c0, CAFFE_GATES)
        self._cache, self._x = cache, x[:t_run]
        self._state = [h[-1].copy(), cache[1][-1].copy()]
        return h

    def _run_backward(self, bottom: List[Blob], dh, propagate_x: bool):
        """Backward of ``_run`` given dh (t_run, N, H); returns dx (t_run, N, I) or None."""
        xp = bottom[0].xp
        t_run, n, hd = dh.shape
        zeros = xp.zeros((n, hd), dtype=dh.dtype)
        w_ih, w_hh = self.blobs[0].data, self.blobs[1].data
        d_gates, _, _ = lstm_steps_backward(xp, self._cache, w_hh, dh, zeros, zeros, self.clip_threshold)
        d2 = d_gates.reshape(t_run * n, -1)
        if self.param_propagate_down[0]:
            self.blobs[0].diff += parallel.dot(d2.T, self._x.reshape(t_run * n, -1))
        if self.param_propagate_down[1]:
            self.blobs[1].diff += recurrent_weight_grad(self._cache, d_gates)
        if self.param_propagate_down[2]:
            self.blobs[2].diff += d2.sum(axis=0)
        return parallel.dot(d2, w_ih).reshape(t_run, n, -1) if propagate_x else None


@register("LstmSimple")
class LstmSimpleLayer(_KernelLSTM):
    """MyCaffe's LSTMSimpleLayer: x (T*N, ...) time-major with N = ``batch_size``, optional clip (T*N values,
    0 starts a new sequence), output (T*N, H). With a clip input the final states of one forward start the
    next (scaled by clip); without one every forward starts from zero states."""

    param_field = "lstm_simple_param"

    def setup(self, bottom: List[Blob], top: List[Blob]) -> None:
        self._read_common()
        self.batch = int(self.layer_param.lstm_simple_param.batch_size)
        if self.batch <= 0:
            raise NetError("layer %r (LstmSimple): lstm_simple_param.batch_size must be > 0" % self.name)
        if bottom[0].num_axes < 1 or bottom[0].shape[0] == 0:
            raise self.shape_error("bottom 0 (x) (needs axis 0 = T * batch_size)", bottom[0].shape, ("T*N", "..."))
        self.input_dim = bottom[0].count_range(1)
        self._create_blobs(bottom, self.input_dim)

    def reshape(self, bottom: List[Blob], top: List[Blob]) -> None:
        x = bottom[0]
        rows = x.shape[0] if x.num_axes else 0
        if rows == 0 or rows % self.batch or x.count_range(1) != self.input_dim:
            raise self.shape_error("bottom 0 (x) (axis 0 must be a multiple of batch_size %d, %d features after)"
                                   % (self.batch, self.input_dim), x.shape, ("T*%d" % self.batch, self.input_dim))
        if len(bottom) > 1 and bottom[1].count != rows:
            raise self.shape_error("bottom 1 (clip) (needs one value per row of x)", bottom[1].shape, (rows,))
        self.t_steps = rows // self.batch
        top[0].reshape((rows, self.hidden))

    def forward(self, bottom: List[Blob], top: List[Blob]) -> None:
        x = bottom[0].data.reshape(self.t_steps, self.batch, self.input_dim)
        h = self._run(bottom, x, self.t_steps, carry=len(bottom) > 1)
        top[0].data[...] = h.reshape(top[0].shape)

    def backward(self, top: List[Blob], propagate_down: List[bool], bottom: List[Blob]) -> None:
        dh = top[0].diff.reshape(self.t_steps, self.batch, self.hidden)
        dx = self._run_backward(bottom, dh, propagate_down[0])
        if propagate_down[0]:
            bottom[0].diff[...] = dx.reshape(bottom[0].shape)


@register("LstmAttention")
class LstmAttentionLayer(_KernelLSTM):
    """MyCaffe's LSTMAttentionLayer without attention: x (T, N, ...), optional clip (T, N), output (T, N, H), or
    (T, N, num_output_ip) through a final projection h W_hd + b_hd with W_hd (H, num_output_ip), b_hd (1, ...).

    With a clip input only the first maxT steps run, maxT being the longest stream (the sum of its clip values,
    plus one when clip[0] of the first stream is 0), and the final states of one forward start the next when
    clip[0] of the first stream is not 0. Later steps output 0."""

    param_field = "lstm_attention_param"

    def setup(self, bottom: List[Blob], top: List[Blob]) -> None:
        p = self.layer_param.lstm_attention_param
        self._read_common()
        if p.enable_attention:
            raise NetError("layer %r (LstmAttention): lstm_attention_param.enable_attention: true is not supported "
                           "(MyCaffe's attention path takes batch size 1 and queries the first step's cell state; "
                           "pcn does not reproduce it)" % self.name)
        if bottom[0].num_axes < 3:
            raise self.shape_error("bottom 0 (x) (needs axes T, N, features...)", bottom[0].shape,
                                   bottom[0].shape + ("features",))
        self.input_dim = bottom[0].count_range(2)
        self.num_ip = int(p.num_output_ip)
        given = list(self.blobs)
        self.blobs = given[:3]
        self._create_blobs(bottom, self.input_dim)
        if self.num_ip > 0:
            specs = [("W_hd", (self.hidden, self.num_ip)), ("b_hd", (1, self.num_ip))]
            if len(given) > 3:
                if len(given) != 5:
                    raise NetError("layer %r (LstmAttention): incorrect number of parameter blobs: %d given, 5 "
                                   "expected (W_ih, W_hh, b, W_hd, b_hd)" % (self.name, len(given)))
                for blob, (name, shape) in zip(given[3:], specs):
                    if tuple(blob.shape) != shape:
                        raise self.shape_error("parameter %s" % name, blob.shape, shape)
                self.blobs += given[3:]
            else:
                extra = [Blob(shape, dtype=bottom[0].dtype, xp=bottom[0].xp) for _, shape in specs]
                fill(extra[0], _filler(p, "weight_filler", _XAVIER))
                fill(extra[1], _filler(p, "bias_filler", _BIAS_01))
                self.blobs += extra
            self.param_propagate_down = [True] * 5
        elif len(given) > 3:
            raise NetError("layer %r (LstmAttention): incorrect number of parameter blobs: %d given, 3 expected "
                           "(W_ih, W_hh, b)" % (self.name, len(given)))

    def reshape(self, bottom: List[Blob], top: List[Blob]) -> None:
        x = bottom[0]
        if x.num_axes < 3 or x.count_range(2) != self.input_dim:
            raise self.shape_error("bottom 0 (x) (%d input features expected from axis 2 on)" % self.input_dim,
                                   x.shape, x.shape[:2] + (self.input_dim,))
        if len(bottom) > 1 and bottom[1].count != x.shape[0] * x.shape[1]:
            raise self.shape_error("bottom 1 (clip) (needs T * N values)", bottom[1].shape, x.shape[:2])
        top[0].reshape(x.shape[:2] + (self.num_ip if self.num_ip > 0 else self.hidden,))

    def _steps_to_run(self, bottom: List[Blob]) -> int:
        t_steps, n = bottom[0].shape[:2]
        if len(bottom) < 2:
            return t_steps
        clip = bottom[1].data.reshape(t_steps, n)
        longest = int(float(clip.sum(axis=0).max())) if clip.size > 1 else 1
        if clip.size > 1 and float(clip[0, 0]) == 0:
            longest += 1
        return max(1, min(t_steps, longest))

    def forward(self, bottom: List[Blob], top: List[Blob]) -> None:
        t_steps, n = bottom[0].shape[:2]
        x = bottom[0].data.reshape(t_steps, n, self.input_dim)
        self.t_run = self._steps_to_run(bottom)
        carry = len(bottom) > 1 and float(bottom[1].data.reshape(-1)[0]) != 0
        h = self._run(bottom, x, self.t_run, carry)
        if self.num_ip > 0:
            self._h = h
            out = h @ self.blobs[3].data + self.blobs[4].data.reshape(-1)
        else:
            out = h
        top[0].data[:self.t_run] = out
        if self.t_run < t_steps:
            top[0].data[self.t_run:] = 0

    def backward(self, top: List[Blob], propagate_down: List[bool], bottom: List[Blob]) -> None:
        t_run = self.t_run
        d_out = top[0].diff[:t_run]
        if self.num_ip > 0:
            d2 = d_out.reshape(-1, self.num_ip)
            if self.param_propagate_down[3]:
                self.blobs[3].diff += self._h.reshape(-1, self.hidden).T @ d2
            if self.param_propagate_down[4]:
                self.blobs[4].diff += d2.sum(axis=0).reshape(1, -1)
            dh = d_out @ self.blobs[3].data.T
        else:
            dh = d_out
        dx = self._run_backward(bottom, dh, propagate_down[0])
        if propagate_down[0]:
            bottom[0].diff[:t_run] = dx.reshape((t_run,) + bottom[0].shape[1:])
            bottom[0].diff[t_run:] = 0
