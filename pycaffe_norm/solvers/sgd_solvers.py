"""Caffe's update rules: SGD with momentum, Nesterov, AdaGrad, RMSProp, AdaDelta and Adam; MyCaffe's AdamW."""
from __future__ import annotations

import math

import numpy as np

from .. import parallel
from ..errors import PcnError
from ..layers import cuda_kernels
from ..layers.im2col import shared_workspace
from .solver import Solver

# Elements of a parameter updated per call on the thread pool: the blob's data, diff and history stay in the cache
# through the whole update (CaffeNet's 61 M parameters took ~10 passes over memory as whole-array operations).
_UPDATE_BLOCK = 1 << 16


class SGDSolver(Solver):
    """history = momentum * history + local_rate * grad; w -= history."""

    type = "SGD"

    def update_in_blocks(self, i, rate):
        """NumPy with L2 (or no) weight decay: Caffe's regularize, update and apply for blocks of the parameter on
        the thread pool, in the same operations as ``regularize``, ``compute_update_value`` and ``data -= diff``."""
        p, blob = self.param, self.net.learnable_params[i]
        if not isinstance(blob.data, np.ndarray) or p.regularization_type != "L2":
            return False
        t = blob.dtype.type
        decay = np.float32(p.weight_decay) * np.float32(self.net.params_weight_decay[i])
        d_w, lr, m = t(decay), t(self.local_rate(i, rate)), t(p.momentum)
        w, g, h = blob.data.reshape(-1), blob.diff.reshape(-1), self.history[i].data.reshape(-1)

        def block(a, b):
            tmp = shared_workspace().get("sgd_update", (b - a,), blob.dtype, np)
            gb, hb, wb = g[a:b], h[a:b], w[a:b]
            if decay:
                np.multiply(d_w, wb, out=tmp)
                gb += tmp
            hb *= m
            np.multiply(lr, gb, out=tmp)
            hb += tmp
            gb[...] = hb
            wb -= gb

        parallel.over_batch(w.size, block, w.size, True, _UPDATE_BLOCK)
        return True

    def compute_update_value(self, i, rate):
        blob, h = self.net.learnable_params[i], self.history[i].data
        if cuda_kernels.enabled(blob.xp):  # one fused launch
            return cuda_kernels.update("sgd", blob.diff, [h], self.param.momentum, self.local_rate(i, rate))
        h *= blob.dtype.type(self.param.momentum)
        h += blob.dtype.type(self.local_rate(i, rate)) * blob.diff
        blob.diff[...] = h


class NesterovSolver(Solver):
    type = "Nesterov"

    def compute_update_value(self, i, rate):
        blob, h = self.net.learnable_params[i], self.history[i].data
        if cuda_kernels.enabled(blob.xp):
            return cuda_kernels.update("nesterov", blob.diff, [h], self.param.momentum, self.local_rate(i, rate))
        m = blob.dtype.type(self.param.momentum)
        previous = h.copy()
        h *= m
        h += blob.dtype.type(self.local_rate(i, rate)) * blob.diff
        blob.diff[...] = (1 + m) * h - m * previous


class AdaGradSolver(Solver):
    type = "AdaGrad"

    def check_param(self):
        if self.param.momentum != 0:
            raise PcnError("solver: momentum cannot be used with AdaGrad")

    def compute_update_value(self, i, rate):
        blob, h = self.net.learnable_params[i], self.history[i].data
        xp, t = blob.xp, blob.dtype.type
        if cuda_kernels.enabled(xp):
            return cuda_kernels.update("adagrad", blob.diff, [h], self.param.delta, self.local_rate(i, rate))
        h += blob.diff * blob.diff
        blob.diff[...] = t(self.local_rate(i, rate)) * blob.diff / (xp.sqrt(h) + t(self.param.delta))


class RMSPropSolver(Solver):
    type = "RMSProp"

    def check_param(self):
        if self.param.momentum != 0:
            raise PcnError("solver: momentum cannot be used with RMSProp")
        if not 0 <= self.param.rms_decay <= 1:
            raise PcnError("solver: rms_decay must be in [0, 1], got %g" % self.param.rms_decay)

    def compute_update_value(self, i, rate):
        blob, h = self.net.learnable_params[i], self.history[i].data
        xp, t = blob.xp, blob.dtype.type
        decay = t(self.param.rms_decay)
        if cuda_kernels.enabled(xp):
            return cuda_kernels.update("rmsprop", blob.diff, [h], decay, self.param.delta, self.local_rate(i, rate))
        h *= decay
        h += (1 - decay) * blob.diff * blob.diff
        blob.diff[...] = t(self.local_rate(i, rate)) * blob.diff / (xp.sqrt(h) + t(self.param.delta))


class AdaDeltaSolver(Solver):
    """history[i]: decayed squared gradients; history[n + i]: decayed squared updates."""

    type = "AdaDelta"
    history_multiplier = 2

    def compute_update_value(self, i, rate):
        blob = self.net.learnable_params[i]
        g2, u2 = self.history[i].data, self.history[len(self.net.learnable_params) + i].data
        xp, t = blob.xp, blob.dtype.type
        m, delta = t(self.param.momentum), t(self.param.delta)
        if cuda_kernels.enabled(xp):
            return cuda_kernels.update("adadelta", blob.diff, [g2, u2], m, delta, self.local_rate(i, rate))
        g2 *= m
        g2 += (1 - m) * blob.diff * blob.diff
        blob.diff *= xp.sqrt((u2 + delta) / (g2 + delta))
        u2 *= m
        u2 += (1 - m) * blob.diff * blob.diff
        blob.diff *= t(self.local_rate(i, rate))


class AdamSolver(Solver):
    """history[i]: first moment m; history[n + i]: second moment v; bias correction with t = iter + 1."""

    type = "Adam"
    history_multiplier = 2

    def compute_update_value(self, i, rate):
        blob = self.net.learnable_params[i]
        mom, v = self.history[i].data, self.history[len(self.net.learnable_params) + i].data
        xp, t = blob.xp, blob.dtype.type
        b1, b2 = float(np.float32(self.param.momentum)), float(np.float32(self.param.momentum2))
        step = self.iter + 1
        correction = math.sqrt(1.0 - b2 ** step) / (1.0 - b1 ** step)
        if cuda_kernels.enabled(xp):
            return cuda_kernels.update("adam", blob.diff, [mom, v], b1, b2, self.param.delta,
                                       self.local_rate(i, rate) * correction)
        mom *= t(b1)
        mom += t(1 - b1) * blob.diff
        v *= t(b2)
        v += t(1 - b2) * blob.diff * blob.diff
        blob.diff[...] = t(self.local_rate(i, rate) * correction) * mom / (xp.sqrt(v) + t(self.param.delta))


class AdamWSolver(Solver):
    """MyCaffe's AdamW (AdamWSolver.cs, math.cu adamw_update): after the L2 ``weight_decay`` of every solver, with
    r = local rate and d = adamw_decay * decay_mult, w *= 1 - r d (when d != 0), then m and v as Adam's and
    w -= r / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + delta), t = iter + 1. Element-wise in float64, as
    MyCaffe's kernel, with the scalars rounded to the blob's type first, as MyCaffe passes them."""

    type = "AdamW"
    history_multiplier = 2

    def compute_update_value(self, i, rate):
        blob = self.net.learnable_params[i]
        mom, v = self.history[i].data, self.history[len(self.net.learnable_params) + i].data
        t = blob.dtype.type
        b1, b2 = float(t(np.float32(self.param.momentum))), float(t(np.float32(self.param.momentum2)))
        eps = float(t(np.float32(self.param.delta)))
        local_rate = float(t(float(rate) * float(self.net.params_lr[i])))
        decay = float(t(self.param.adamw_decay * float(self.net.params_weight_decay[i])))
        step = self.iter + 1
        step_size = local_rate / (1.0 - b1 ** step)
        correction2 = math.sqrt(1.0 - b2 ** step)
        if decay != 0:
            blob.data[...] = blob.data.astype(np.float64) * (1.0 - local_rate * decay)
        g = blob.diff.astype(np.float64)
        m64 = mom.astype(np.float64) * b1 + g * (1.0 - b1)
        v64 = v.astype(np.float64) * b2 + g * g * (1.0 - b2)
        blob.diff[...] = step_size * m64 / (blob.xp.sqrt(v64) / correction2 + eps)
        mom[...] = m64
        v[...] = v64


SOLVERS = {cls.type: cls for cls in (SGDSolver, NesterovSolver, AdaGradSolver, RMSPropSolver, AdaDeltaSolver,
                                     AdamSolver, AdamWSolver)}
