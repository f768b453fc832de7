"""Finite-difference gradient checker with Caffe's conventions (``GradientChecker`` in Caffe's tests).

Every element of every checked bottom and parameter blob is perturbed (exhaustive), central differences
with ``step``, and an element passes when ``|analytic - numeric| <= threshold * max(|a|, |n|, 1)``.
The objective is ``sum(top * R)`` over all tops with a fixed random ``R``, so every top element contributes.

Inputs must be float64 blobs, and the defaults fit float64 rather than Caffe's float32 values (step 1e-2,
threshold 1e-3..2e-2, which let a 0.1% gradient error pass): with step 1e-6 the central difference's truncation
error is about step**2 * |f'''| ~ 1e-12 and its rounding error about 1e-16 * |f| / step ~ 1e-9, so a threshold
of 1e-6 leaves a wide margin for exact gradients and still catches any error above one part in a million.
"""
from __future__ import annotations

import numpy as np
from google.protobuf import text_format

from pycaffe_norm.blob import Blob
from pycaffe_norm.layers import create_layer
from pycaffe_norm.proto import caffe_pb2


def make_blob(array, dtype=np.float64) -> Blob:
    a = np.asarray(array, dtype=dtype)
    b = Blob(a.shape, dtype=dtype)
    b.data[...] = a
    return b


def layer_from_text(text: str, phase: int = caffe_pb2.TRAIN, name: str = "l"):
    """A layer built from the text of a LayerParameter without its name (``'type: "ReLU"'``)."""
    p = caffe_pb2.LayerParameter()
    text_format.Parse('name: "%s" ' % name + text, p)
    return create_layer(p, phase)


def run_layer(layer, inputs, n_tops: int = 1, top_diffs=None, propagate=None):
    """Sets up and forwards ``layer`` on float64 blobs of ``inputs`` (reshaping first, as the Net does); with
    ``top_diffs``, also runs backward. Returns (layer, bottom, top)."""
    bottom = [make_blob(a) for a in inputs]
    top = [Blob((), dtype=np.float64) for _ in range(n_tops)]
    layer.initialize(bottom, top)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    if top_diffs is not None:
        for t, d in zip(top, top_diffs):
            t.diff[...] = d
        layer.backward(top, propagate if propagate is not None else [True] * len(bottom), bottom)
    return layer, bottom, top


class GradientChecker:
    def __init__(self, step: float = 1e-6, threshold: float = 1e-6, seed: int = 1701,
                 kink: float = 0.0, kink_range: float = -1.0):
        self.step = step
        self.threshold = threshold
        self.seed = seed
        self.kink = kink
        self.kink_range = kink_range

    def check(self, layer, bottom, top, check_bottom=None, check_params: bool = True,
              already_set_up: bool = False) -> int:
        """Checks ``layer``'s backward against finite differences; returns the number of elements checked.

        ``check_bottom``: indices of the bottoms to check (default: all). Raises AssertionError on a mismatch.
        """
        if not already_set_up:
            layer.initialize(bottom, top)
        if check_bottom is None:
            check_bottom = list(range(len(bottom)))
        saved = [b.data.copy() for b in bottom]   # in-place layers overwrite their bottom

        def restore():
            for b, s in zip(bottom, saved):
                if b.data.shape != s.shape:
                    b.reshape(s.shape)
                b.data[...] = s

        rng = np.random.RandomState(self.seed)
        restore()
        layer.reshape(bottom, top)
        layer.forward(bottom, top)
        weights = [rng.uniform(-1.0, 1.0, t.shape) for t in top]

        def objective() -> float:
            restore()
            layer.reshape(bottom, top)
            layer.forward(bottom, top)
            return float(sum(np.sum(np.asarray(t.data, np.float64) * w) for t, w in zip(top, weights)))

        # analytic gradient
        objective()
        for t, w in zip(top, weights):
            t.diff[...] = w
        for p in layer.blobs:
            p.diff[...] = 0
        propagate = [i in check_bottom for i in range(len(bottom))]
        layer.backward(top, propagate, bottom)
        targets = [("bottom %d" % i, bottom[i], saved[i], bottom[i].diff.copy()) for i in check_bottom]
        if check_params:
            targets += [("param %d" % i, p, None, p.diff.copy()) for i, p in enumerate(layer.blobs)
                        if i < len(layer.param_propagate_down) and layer.param_propagate_down[i]]
        n_checked = 0
        for label, blob, source, analytic in targets:
            values = source if source is not None else blob.data
            flat = values.reshape(-1)
            a_flat = analytic.reshape(-1)
            for j in range(flat.size):
                x0 = float(flat[j])
                if self.kink_range >= 0 and abs(x0 - self.kink) < self.kink_range:
                    continue
                flat[j] = x0 + self.step
                plus = objective()
                flat[j] = x0 - self.step
                minus = objective()
                flat[j] = x0
                numeric = (plus - minus) / (2.0 * self.step)
                a = float(a_flat[j])
                scale = max(abs(a), abs(numeric), 1.0)
                if abs(a - numeric) > self.threshold * scale:
                    raise AssertionError(
                        "%s (%s) %s element %d: analytic %.8g vs numeric %.8g (threshold %.1e x %.3g)"
                        % (layer.name, layer.type, label, j, a, numeric, self.threshold, scale))
                n_checked += 1
        objective()
        assert n_checked > 0, "gradient check compared no element"
        return n_checked
