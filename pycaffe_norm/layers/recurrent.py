"""Recurrent layers with BVLC Caffe's semantics: ``RNN``, ``LSTM`` and the single-step ``LSTMUnit``.

Caffe implements RNN and LSTM by unrolling a sub-net over the T time steps; here they are computed directly (one
matrix product for the input projection of all steps, a loop over time only), with the same parameter blobs in
the same order and shapes, so ``.caffemodel`` weights load unchanged. Bottoms are ``x`` (T, N, ...), ``cont``
(T, N; 0 starts a new sequence), an optional static input ``x_static`` (N, ...) and, with ``expose_hidden``, the
initial states; tops are the outputs (T, N, num_output) and, with ``expose_hidden``, the final states.
"""
from __future__ import annotations

from typing import List

from .. import parallel
from ..blob import Blob
from ..errors import NetError
from ..fillers import fill
from ..proto import caffe_pb2
from .base import TRAIN, Layer, register

_CUDNN = caffe_pb2.RecurrentParameter.CUDNN


def _sigmoid(xp, a):
    # Same function as Caffe's 1 / (1 + exp(-a)), written so that it cannot overflow.
    return 0.5 * xp.tanh(0.5 * a) + 0.5


def _check_caffe_engine(param) -> None:
    """Refuses, by name, MyCaffe's recurrent_param settings that the CAFFE engine (this module) does not compute."""
    p = param.recurrent_param
    where = "layer %r (%s): recurrent_param." % (param.name, param.type)
    if p.engine == _CUDNN:  # LSTM's CUDNN engine never gets here (LSTMLayer.__new__)
        raise NetError(where + "engine: CUDNN (MyCaffe's cuDNN RNN with ReLU) is not supported by pcn for %s; "
                       "use engine: CAFFE" % param.type)
    if p.batch_first:
        raise NetError(where + "batch_first: true needs engine: CUDNN in pcn (the CAFFE engine takes (T, N, ...))")
    if p.auto_repeat_hidden_states_across_layers:
        raise NetError(where + "auto_repeat_hidden_states_across_layers needs engine: CUDNN (MyCaffe's CAFFE "
                       "engine refuses it too)")
    for name in ("expose_hidden_input", "expose_hidden_output"):
        if p.HasField(name) and getattr(p, name) != p.expose_hidden:
            raise NetError(where + "%s differs from expose_hidden, which the CAFFE engine does not support; "
                           "use engine: CUDNN or set expose_hidden" % name)


class _RecurrentLayer(Layer):
    """Shared bottom/top handling, parameter creation and hidden-state carry-over of RNN and LSTM."""

    # In Caffe the top shares memory with the unrolled net while x shares with the bottom: in place is broken.
    allow_in_place = False
    # Names of the recurrent states in Caffe's unrolled net, in bottom/top order.
    state_names: tuple = ()

    def __init__(self, param, phase: int = TRAIN):
        super().__init__(param, phase)
        p = param.recurrent_param
        _check_caffe_engine(param)
        self.expose_hidden = bool(p.expose_hidden)
        n_state = len(self.state_names) if self.expose_hidden else 0
        # Caffe: x, cont, [x_static], [states...]; tops: output, [final states...].
        self.min_bottom = 2 + n_state
        self.max_bottom = 3 + n_state
        self.exact_num_top = 1 + n_state

    # --- parameters ---------------------------------------------------------------------------------------
    def param_specs(self, input_dim: int, static_dim: int | None) -> list:
        """(name, shape, is_bias) of each parameter blob, in the order of Caffe's unrolled net."""
        raise NotImplementedError

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != 1  # no gradient for the sequence continuation indicators

    def setup(self, bottom: List[Blob], top: List[Blob]) -> None:
        p = self.layer_param.recurrent_param
        self.num_output = int(p.num_output)
        if self.num_output <= 0:
            raise NetError("layer %r (%s): recurrent_param.num_output must be > 0" % (self.name, self.type))
        n_state = len(self.state_names) if self.expose_hidden else 0
        self.static_input = len(bottom) > 2 + n_state
        self._check_x_cont(bottom)
        if bottom[0].num_axes < 3:
            # Caffe's input InnerProduct works on axis 2, so x needs a feature axis.
            raise self.shape_error("bottom 0 (x) (needs at least 3 axes: T, N, features...)",
                                   bottom[0].shape, bottom[0].shape + ("features",))
        self.input_dim = bottom[0].count_range(2)
        self.static_dim = bottom[2].count_range(1) if self.static_input else None
        specs = self.param_specs(self.input_dim, self.static_dim)
        if self.blobs:
            if len(self.blobs) != len(specs):
                raise NetError("layer %r (%s): incorrect number of parameter blobs: %d given, %d expected (%s)"
                               % (self.name, self.type, len(self.blobs), len(specs),
                                  ", ".join(s[0] for s in specs)))
            for blob, (name, shape, _) in zip(self.blobs, specs):
                if tuple(blob.shape) != shape:
                    raise self.shape_error("parameter %s" % name, blob.shape, shape)
        else:
            self.blobs = [Blob(shape, dtype=bottom[0].dtype, xp=bottom[0].xp) for _, shape, _ in specs]
            for blob, (_, _, is_bias) in zip(self.blobs, specs):
                fill(blob, p.bias_filler if is_bias else p.weight_filler)
        self.param_propagate_down = [True] * len(self.blobs)
        self._state = None  # final states of the previous forward (Caffe carries them over when not exposed)

    def _check_x_cont(self, bottom: List[Blob]) -> None:
        x, cont = bottom[0], bottom[1]
        if x.num_axes < 2:
            raise self.shape_error("bottom 0 (x) (needs axes T, N, ...)", x.shape, ("T", "N", "..."))
        if cont.shape != x.shape[:2]:
            raise self.shape_error("bottom 1 (cont) (must be (T, N) of x %s)" % (x.shape,), cont.shape,
                                   x.shape[:2])

    def reshape(self, bottom: List[Blob], top: List[Blob]) -> None:
        self._check_x_cont(bottom)
        x = bottom[0]
        t_steps, n = x.shape[:2]
        if x.num_axes < 3 or x.count_range(2) != self.input_dim:
            raise self.shape_error("bottom 0 (x) (%d input features expected from axis 2 on)" % self.input_dim,
                                   x.shape, (t_steps, n, self.input_dim))
        if self.static_input:
            xs = bottom[2]
            if xs.num_axes < 1 or xs.shape[0] != n or xs.count_range(1) != self.static_dim:
                raise self.shape_error("bottom 2 (x_static) (must be (N, ...) with %d features)" % self.static_dim,
                                       xs.shape, (n, self.static_dim))
        state_shape = (1, n, self.num_output)
        if self.expose_hidden:
            first = 3 if self.static_input else 2
            for j, name in enumerate(self.state_names):
                if bottom[first + j].shape != state_shape:
                    raise self.shape_error("bottom %d (%s)" % (first + j, name), bottom[first + j].shape,
                                           state_shape)
            for j in range(len(self.state_names)):
                top[1 + j].reshape(state_shape)
        top[0].reshape((t_steps, n, self.num_output))

    def _initial_states(self, bottom: List[Blob], n: int) -> list:
        xp, dtype = bottom[0].xp, bottom[0].dtype
        if self.expose_hidden:
            first = 3 if self.static_input else 2
            return [bottom[first + j].data.reshape(n, self.num_output) for j in range(len(self.state_names))]
        if self._state is not None and self._state[0].shape == (n, self.num_output):
            return self._state
        return [xp.zeros((n, self.num_output), dtype=dtype) for _ in self.state_names]

    def _input_projection(self, bottom: List[Blob], w_x, b, w_static):
        """W_x x_t + b (+ W_static x_static) for all time steps at once: (T, N, out)."""
        x = bottom[0]
        t_steps, n = x.shape[:2]
        proj = parallel.dot(x.data.reshape(t_steps * n, self.input_dim), w_x.T) + b
        proj = proj.reshape(t_steps, n, -1)
        if self.static_input:
            proj += (bottom[2].data.reshape(n, self.static_dim) @ w_static.T)[None]
        return proj

    def _input_backward(self, bottom, propagate_down, d_proj, i_wx: int, i_b: int, i_ws: int | None) -> None:
        """Gradients of ``_input_projection`` given d_proj (T, N, out)."""
        x = bottom[0]
        t_steps, n = x.shape[:2]
        d2 = d_proj.reshape(t_steps * n, -1)
        if self.param_propagate_down[i_wx]:
            self.blobs[i_wx].diff += parallel.dot(d2.T, x.data.reshape(t_steps * n, self.input_dim))
        if self.param_propagate_down[i_b]:
            self.blobs[i_b].diff += d2.sum(axis=0)
        if propagate_down[0]:
            x.diff[...] = parallel.dot(d2, self.blobs[i_wx].data).reshape(x.shape)
        if self.static_input:
            d_static = d_proj.sum(axis=0)  # x_static feeds every time step
            xs = bottom[2]
            if self.param_propagate_down[i_ws]:
                self.blobs[i_ws].diff += d_static.T @ xs.data.reshape(n, self.static_dim)
            if propagate_down[2]:
                xs.diff[...] = (d_static @ self.blobs[i_ws].data).reshape(xs.shape)

    def _final_state_diffs(self, top: List[Blob], n: int) -> list:
        """Diffs arriving at the final states (exposed tops), or zeros: no gradient flows across batches."""
        xp = top[0].xp
        if self.expose_hidden:
            return [top[1 + j].diff.reshape(n, self.num_output) for j in range(len(self.state_names))]
        return [xp.zeros((n, self.num_output), dtype=top[0].dtype) for _ in self.state_names]

    def _initial_state_backward(self, bottom, propagate_down, diffs) -> None:
        if self.expose_hidden:
            first = 3 if self.static_input else 2
            for j, d in enumerate(diffs):
                if propagate_down[first + j]:
                    bottom[first + j].diff[...] = d.reshape(bottom[first + j].shape)


@register("RNN")
class RNNLayer(_RecurrentLayer):
    """Elman RNN as Caffe's: h_t = tanh(W_hh (cont_t h_{t-1}) + W_xh x_t + b_h [+ W_xh_static x_static]),
    o_t = tanh(W_ho h_t + b_o). Blobs: W_xh, b_h, [W_xh_static], W_hh, W_ho, b_o."""

    state_names = ("h_0",)

    def param_specs(self, input_dim, static_dim):
        h = self.num_output
        specs = [("W_xh", (h, input_dim), False), ("b_h", (h,), True)]
        if static_dim is not None:
            specs.append(("W_xh_static", (h, static_dim), False))
        return specs + [("W_hh", (h, h), False), ("W_ho", (h, h), False), ("b_o", (h,), True)]

    def _indices(self):
        s = 1 if self.static_input else 0
        return {"W_xh": 0, "b_h": 1, "W_xh_static": 2 if s else None, "W_hh": 2 + s, "W_ho": 3 + s, "b_o": 4 + s}

    def forward(self, bottom, top):
        xp = bottom[0].xp
        ix = self._indices()
        t_steps, n = bottom[0].shape[:2]
        hd = self.num_output
        w = [b.data for b in self.blobs]
        proj = self._input_projection(bottom, w[ix["W_xh"]], w[ix["b_h"]],
                                      w[ix["W_xh_static"]] if self.static_input else None)
        cont = bottom[1].data.reshape(t_steps, n, 1)
        (h_prev,) = self._initial_states(bottom, n)
        h_all = xp.empty((t_steps, n, hd), dtype=proj.dtype)
        h_conted = xp.empty_like(h_all)
        w_hh = w[ix["W_hh"]]
        for t in range(t_steps):
            h_conted[t] = cont[t] * h_prev
            h_all[t] = xp.tanh(proj[t] + h_conted[t] @ w_hh.T)
            h_prev = h_all[t]
        out = xp.tanh(parallel.dot(h_all.reshape(t_steps * n, hd), w[ix["W_ho"]].T) + w[ix["b_o"]])
        top[0].data[...] = out.reshape(t_steps, n, hd)
        self._cache = (h_all, h_conted)
        self._state = [h_all[-1].copy()]
        if self.expose_hidden:
            top[1].data[...] = h_all[-1].reshape(top[1].shape)

    def backward(self, top, propagate_down, bottom):
        ix = self._indices()
        t_steps, n = bottom[0].shape[:2]
        hd = self.num_output
        h_all, h_conted = self._cache
        cont = bottom[1].data.reshape(t_steps, n, 1)
        out = top[0].data.reshape(t_steps * n, hd)
        d_out = top[0].diff.reshape(t_steps * n, hd) * (1 - out * out)
        if self.param_propagate_down[ix["W_ho"]]:
            self.blobs[ix["W_ho"]].diff += parallel.dot(d_out.T, h_all.reshape(t_steps * n, hd))
        if self.param_propagate_down[ix["b_o"]]:
            self.blobs[ix["b_o"]].diff += d_out.sum(axis=0)
        dh_out = parallel.dot(d_out, self.blobs[ix["W_ho"]].data).reshape(t_steps, n, hd)
        w_hh = self.blobs[ix["W_hh"]].data
        (dh_next,) = self._final_state_diffs(top, n)
        d_pre = bottom[0].xp.empty_like(h_all)
        for t in range(t_steps - 1, -1, -1):
            d_pre[t] = (dh_out[t] + dh_next) * (1 - h_all[t] * h_all[t])
            dh_next = cont[t] * (d_pre[t] @ w_hh)
        if self.param_propagate_down[ix["W_hh"]]:
            self.blobs[ix["W_hh"]].diff += parallel.dot(d_pre.reshape(t_steps * n, hd).T,
                                                         h_conted.reshape(t_steps * n, hd))
        self._input_backward(bottom, propagate_down, d_pre, ix["W_xh"], ix["b_h"], ix["W_xh_static"])
        self._initial_state_backward(bottom, propagate_down, [dh_next])


@register("LSTM")
class LSTMLayer(_RecurrentLayer):
    """LSTM as Caffe's (no peepholes): gates [i, f, o, g] = W_xc x_t + b_c [+ W_xc_static x_static]
    + W_hc (cont_t h_{t-1}); c_t = cont_t f_t c_{t-1} + i_t g_t; h_t = o_t tanh(c_t).
    Blobs: W_xc (4H, I), b_c (4H,), [W_xc_static (4H, I_static)], W_hc (4H, H)."""

    state_names = ("h_0", "c_0")

    def __new__(cls, param=None, phase: int = TRAIN):
        # MyCaffe's engine: CUDNN is another algorithm and blob layout; like Caffe's layer factory, pick by engine.
        if cls is LSTMLayer and param is not None and param.recurrent_param.engine == _CUDNN:
            from .mycaffe_recurrent import CudnnLSTMLayer
            return CudnnLSTMLayer(param, phase)
        return super().__new__(cls)

    def param_specs(self, input_dim, static_dim):
        h4 = 4 * self.num_output
        specs = [("W_xc", (h4, input_dim), False), ("b_c", (h4,), True)]
        if static_dim is not None:
            specs.append(("W_xc_static", (h4, static_dim), False))
        return specs + [("W_hc", (h4, self.num_output), False)]

    def forward(self, bottom, top):
        xp = bottom[0].xp
        t_steps, n = bottom[0].shape[:2]
        hd = self.num_output
        w = [b.data for b in self.blobs]
        s = 1 if self.static_input else 0
        proj = self._input_projection(bottom, w[0], w[1], w[2] if s else None)
        w_hc = w[2 + s]
        cont = bottom[1].data.reshape(t_steps, n, 1)
        h_prev, c_prev = self._initial_states(bottom, n)
        acts = xp.empty((t_steps, n, 4 * hd), dtype=proj.dtype)   # i, f, o (sigmoid) and g (tanh)
        c_all = xp.empty((t_steps + 1, n, hd), dtype=proj.dtype)  # c_all[0] = c_0
        h_all = xp.empty((t_steps, n, hd), dtype=proj.dtype)
        h_conted = xp.empty_like(h_all)
        tanh_c = xp.empty_like(h_all)
        c_all[0] = c_prev
        for t in range(t_steps):
            h_conted[t] = cont[t] * h_prev
            gates = proj[t] + h_conted[t] @ w_hc.T
            acts[t, :, :3 * hd] = _sigmoid(xp, gates[:, :3 * hd])
            acts[t, :, 3 * hd:] = xp.tanh(gates[:, 3 * hd:])
            i, f, o, g = (acts[t, :, k * hd:(k + 1) * hd] for k in range(4))
            c_all[t + 1] = cont[t] * f * c_all[t] + i * g
            tanh_c[t] = xp.tanh(c_all[t + 1])
            h_all[t] = o * tanh_c[t]
            h_prev = h_all[t]
        top[0].data[...] = h_all
        self._cache = (acts, c_all, h_conted, tanh_c)
        self._state = [h_all[-1].copy(), c_all[-1].copy()]
        if self.expose_hidden:
            top[1].data[...] = h_all[-1].reshape(top[1].shape)
            top[2].data[...] = c_all[-1].reshape(top[2].shape)

    def backward(self, top, propagate_down, bottom):
        xp = bottom[0].xp
        t_steps, n = bottom[0].shape[:2]
        hd = self.num_output
        s = 1 if self.static_input else 0
        acts, c_all, h_conted, tanh_c = self._cache
        cont = bottom[1].data.reshape(t_steps, n, 1)
        w_hc = self.blobs[2 + s].data
        dh_top = top[0].diff
        dh_next, dc_next = self._final_state_diffs(top, n)
        d_gates = xp.empty_like(acts)
        for t in range(t_steps - 1, -1, -1):
            i, f, o, g = (acts[t, :, k * hd:(k + 1) * hd] for k in range(4))
            dh = dh_top[t] + dh_next
            dc = dc_next + dh * o * (1 - tanh_c[t] * tanh_c[t])
            d_gates[t, :, :hd] = dc * g * i * (1 - i)
            d_gates[t, :, hd:2 * hd] = dc * c_all[t] * cont[t] * f * (1 - f)
            d_gates[t, :, 2 * hd:3 * hd] = dh * tanh_c[t] * o * (1 - o)
            d_gates[t, :, 3 * hd:] = dc * i * (1 - g * g)
            dc_next = dc * cont[t] * f
            dh_next = cont[t] * (d_gates[t] @ w_hc)
        if self.param_propagate_down[2 + s]:
            self.blobs[2 + s].diff += d_gates.reshape(t_steps * n, 4 * hd).T @ h_conted.reshape(t_steps * n, hd)
        self._input_backward(bottom, propagate_down, d_gates, 0, 1, 2 if s else None)
        self._initial_state_backward(bottom, propagate_down, [dh_next, dc_next])


@register("LSTMUnit")
class LSTMUnitLayer(Layer):
    """One LSTM step as Caffe's LSTMUnit: bottoms c_prev (1, N, D), gate inputs (1, N, 4D) in order i, f, o, g,
    cont (1, N); tops c = cont f c_prev + i g and h = o tanh(c), both (1, N, D). No parameters, no clipping."""

    exact_num_bottom = 3
    exact_num_top = 2
    allow_in_place = False  # backward needs c_prev and the gate inputs after c and h are written

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != 2

    def reshape(self, bottom, top):
        c_prev, x, cont = bottom
        n = c_prev.shape[1] if c_prev.num_axes >= 2 else None
        if c_prev.num_axes != 3 or c_prev.shape[0] != 1:
            raise self.shape_error("bottom 0 (c_prev) (must be (1, N, D))", c_prev.shape, (1, "N", "D"))
        d = c_prev.shape[2]
        if x.shape != (1, n, 4 * d):
            raise self.shape_error("bottom 1 (gate inputs) (must be (1, N, 4D) for c_prev %s)" % (c_prev.shape,),
                                   x.shape, (1, n, 4 * d))
        if cont.shape != (1, n):
            raise self.shape_error("bottom 2 (cont) (must be (1, N))", cont.shape, (1, n))
        self.hidden_dim = d
        top[0].reshape(c_prev.shape)
        top[1].reshape(c_prev.shape)

    def forward(self, bottom, top):
        xp = bottom[0].xp
        d = self.hidden_dim
        x = bottom[1].data[0]
        cont = bottom[2].data[0][:, None]
        sig = _sigmoid(xp, x[:, :3 * d])
        i, f, o = sig[:, :d], sig[:, d:2 * d], sig[:, 2 * d:]
        g = xp.tanh(x[:, 3 * d:])
        c = cont * f * bottom[0].data[0] + i * g
        tanh_c = xp.tanh(c)
        top[0].data[0] = c
        top[1].data[0] = o * tanh_c
        self._cache = (i, f, o, g, tanh_c)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[2]:
            raise NetError("layer %r (LSTMUnit) cannot backpropagate to the sequence indicators (bottom 2)"
                           % self.name)
        if not (propagate_down[0] or propagate_down[1]):
            return
        d = self.hidden_dim
        i, f, o, g, tanh_c = self._cache
        cont = bottom[2].data[0][:, None]
        dh = top[1].diff[0]
        dc = top[0].diff[0] + dh * o * (1 - tanh_c * tanh_c)
        if propagate_down[0]:
            bottom[0].diff[0] = dc * cont * f
        if propagate_down[1]:
            dx = bottom[1].diff[0]
            dx[:, :d] = dc * g * i * (1 - i)
            dx[:, d:2 * d] = dc * bottom[0].data[0] * cont * f * (1 - f)
            dx[:, 2 * d:3 * d] = dh * tanh_c * o * (1 - o)
            dx[:, 3 * d:] = dc * i * (1 - g * g)

