"""Weight fillers with Caffe's semantics (``include/caffe/filler.hpp``)."""
from __future__ import annotations

import math

import numpy as np

from .blob import Blob
from .errors import NetError
from .proto import caffe_pb2
from .random import rng

_VN = caffe_pb2.FillerParameter


def _fans(shape):
    count = int(np.prod(shape, dtype=np.int64))
    if len(shape) < 1 or shape[0] == 0:
        raise NetError("xavier/msra fillers need a blob with a non-empty first axis, got shape %s" % (shape,))
    fan_in = count / shape[0]
    fan_out = count / shape[1] if len(shape) > 1 else count
    return fan_in, fan_out


def _variance_n(param, shape):
    fan_in, fan_out = _fans(shape)
    if param.variance_norm == _VN.AVERAGE:
        return (fan_in + fan_out) / 2.0
    if param.variance_norm == _VN.FAN_OUT:
        return fan_out
    return fan_in


def fill_array(param: caffe_pb2.FillerParameter, shape) -> np.ndarray:
    """A float64 NumPy array of ``shape`` filled as ``param`` says."""
    shape = tuple(int(s) for s in shape)
    kind = param.type
    r = rng()
    if kind == "constant":
        return np.full(shape, param.value, dtype=np.float64)
    if kind == "uniform":
        return r.uniform(param.min, param.max, shape)
    if kind == "gaussian":
        out = r.normal(param.mean, param.std, shape)
        if param.sparse >= 0:
            if len(shape) < 1 or shape[0] == 0:
                raise NetError("sparse gaussian filler needs a blob with a first axis, got %s" % (shape,))
            p = param.sparse / float(shape[0])
            out *= r.binomial(1, min(max(p, 0.0), 1.0), shape)
        return out
    if kind == "positive_unitball":
        out = r.uniform(0.0, 1.0, shape)
        num = shape[0] if shape else 1
        flat = out.reshape(num, -1)
        flat /= flat.sum(axis=1, keepdims=True)
        return out
    if kind == "xavier":
        scale = math.sqrt(3.0 / _variance_n(param, shape))
        return r.uniform(-scale, scale, shape)
    if kind == "msra":
        std = math.sqrt(2.0 / _variance_n(param, shape))
        return r.normal(0.0, std, shape)
    if kind == "bilinear":
        if len(shape) != 4 or shape[2] != shape[3]:
            raise NetError("bilinear filler needs a 4-D blob with square kernels, got shape %s" % (shape,))
        width = shape[3]
        f = math.ceil(width / 2.0)
        c = (2 * f - 1 - f % 2) / (2.0 * f)
        x = np.arange(width)
        w1 = 1 - np.abs(x / f - c)
        return np.broadcast_to(np.outer(w1, w1), shape).astype(np.float64)
    raise NetError("unknown filler type %r (known: constant, uniform, gaussian, positive_unitball, xavier, "
                   "msra, bilinear)" % kind)


def fill(blob: Blob, param: caffe_pb2.FillerParameter) -> None:
    """Fills ``blob.data`` in place (on whatever device the blob lives)."""
    if param.type == "constant":    # the same values without a float64 copy (CaffeNet's default fc6 filler: 38M)
        blob.data[...] = param.value
        return
    values = fill_array(param, blob.shape)
    blob.data[...] = blob.xp.asarray(values, dtype=blob.dtype)
