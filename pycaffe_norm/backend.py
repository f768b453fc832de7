"""Array backends: NumPy on the CPU, CuPy on a CUDA GPU.

Layers never import numpy or cupy to compute; they ask ``array_module(x)`` for the module that owns ``x``
(Chainer's pattern), so one source serves both devices.
"""
from __future__ import annotations

import numpy as np

try:  # CuPy is optional: the package and every CPU test work without it.
    import cupy as _cupy
except Exception:  # noqa: BLE001 - a broken CUDA install must not break CPU use
    _cupy = None

_mode = "cpu"
_device = 0


def cupy_available() -> bool:
    if _cupy is None:
        return False
    try:
        return _cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001
        return False


def set_mode_cpu() -> None:
    global _mode
    _mode = "cpu"


def set_mode_gpu() -> None:
    global _mode
    if not cupy_available():
        raise RuntimeError("set_mode_gpu: CuPy with a CUDA device is needed (pip install 'pycaffe_norm[gpu]')")
    _mode = "gpu"
    _cupy.cuda.Device(_device).use()


def set_device(device_id: int) -> None:
    global _device
    _device = int(device_id)
    if _mode == "gpu":
        _cupy.cuda.Device(_device).use()


def mode() -> str:
    return _mode


def xp_for_mode():
    """The array module new blobs are allocated with."""
    return _cupy if _mode == "gpu" else np


def array_module(x):
    """numpy or cupy, whichever owns ``x``."""
    if _cupy is not None and isinstance(x, _cupy.ndarray):
        return _cupy
    return np


def to_numpy(x) -> np.ndarray:
    if _cupy is not None and isinstance(x, _cupy.ndarray):
        return _cupy.asnumpy(x)
    return np.asarray(x)


def is_gpu_array(x) -> bool:
    return _cupy is not None and isinstance(x, _cupy.ndarray)
