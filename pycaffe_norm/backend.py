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


def cupy_module():
    """The CuPy module when it imports (with or without a device), else None."""
    return _cupy


def set_mode_gpu() -> None:
    """Allocates new blobs on the current device (``set_device``); the mode stays unchanged when that fails."""
    global _mode
    if not cupy_available():
        raise RuntimeError("set_mode_gpu: CuPy with a CUDA device is needed (pip install 'pycaffe_norm[gpu]')")
    try:
        _cupy.cuda.Device(_device).use()
    except Exception as e:  # noqa: BLE001 - CUDARuntimeError (bad id, device busy...) as a one-line error
        raise RuntimeError("set_mode_gpu: cannot use CUDA device %d: %s"
                           % (_device, " ".join(str(e).split()))) from None
    _mode = "gpu"


def set_device(device_id: int) -> None:
    global _device
    if cupy_available() and not 0 <= int(device_id) < _cupy.cuda.runtime.getDeviceCount():
        raise RuntimeError("set_device: no CUDA device %d (%d present)"
                           % (int(device_id), _cupy.cuda.runtime.getDeviceCount()))
    if _mode == "gpu":
        try:
            _cupy.cuda.Device(int(device_id)).use()
        except Exception as e:  # noqa: BLE001
            raise RuntimeError("set_device: cannot use CUDA device %d: %s" % (int(device_id),
                                                                               " ".join(str(e).split()))) from None
    _device = int(device_id)


def seed_device(seed: int) -> None:
    """Seeds CuPy's generator (Dropout's masks on the device) when CuPy is there."""
    if _cupy is not None and cupy_available():
        _cupy.random.seed(int(seed) & 0xFFFFFFFF)


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
