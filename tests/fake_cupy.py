"""A stand-in for CuPy on the CPU: arrays that behave like device arrays, so a hidden NumPy call fails in CI.

``module()`` builds a module-like object with CuPy's namespace (the names recorded in ``cupy_namespace.json``,
from CuPy 14.2) whose functions compute with NumPy but take and return :class:`DeviceArray`. A DeviceArray refuses
what a CuPy array refuses: implicit conversion (``np.asarray(a)``, ``np.array(a)``, ``float(np_array[a])``...),
mixing with NumPy arrays in arithmetic, and the ndarray methods CuPy lacks; and, stricter than CuPy (which forwards
the NumPy functions it implements to its own), any NumPy function called on it (``np.concatenate([a, b])``).
The fake has no ``RawModule``, so the layers take their generic path; tests/cuda_emulator.py gives it one that runs
the CUDA kernels on the CPU.

With ``backend._cupy`` set to it, ``set_mode_gpu`` "works" and every blob lives in DeviceArrays.
"""
from __future__ import annotations

import json
import pathlib
import types

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

NAMESPACE = json.loads((pathlib.Path(__file__).parent / "cupy_namespace.json").read_text())
# What the fake refuses although CuPy has it: the kernels need a device.
_NO_KERNELS = {"RawModule", "RawKernel", "ElementwiseKernel", "ReductionKernel", "fuse"}


class DeviceArrayError(TypeError):
    """What CuPy raises (a TypeError) when host and device arrays meet without an explicit copy."""


def _refuse_numpy(x, where: str):
    raise DeviceArrayError("%s: a NumPy array of shape %s met a device array; CuPy refuses this (copy it with "
                           "xp.asarray first)" % (where, x.shape))


def unwrap(x, where: str = "", allow_numpy: bool = False):
    """DeviceArray -> its NumPy buffer (recursively in lists, tuples and dicts); NumPy arrays refused."""
    if isinstance(x, DeviceArray):
        return x._a
    if isinstance(x, np.ndarray):
        if allow_numpy or x.ndim == 0:
            return x
        _refuse_numpy(x, where)
    if isinstance(x, (list, tuple)):
        return type(x)(unwrap(v, where, allow_numpy) for v in x)
    if isinstance(x, dict):
        return {k: unwrap(v, where, allow_numpy) for k, v in x.items()}
    return x


def wrap(x):
    """NumPy results -> DeviceArrays (reductions give 0-d arrays, as CuPy's do)."""
    if isinstance(x, np.ndarray):
        return DeviceArray(x)
    if isinstance(x, np.generic) and not isinstance(x, (np.str_, np.bytes_)):
        return DeviceArray(np.asarray(x))
    if isinstance(x, tuple):
        return tuple(wrap(v) for v in x)
    if isinstance(x, list):
        return [wrap(v) for v in x]
    return x


def _index(key):
    # CuPy takes NumPy index arrays (it copies them over); device arrays index too
    return unwrap(key, allow_numpy=True)


class DeviceArray(NDArrayOperatorsMixin):
    """An array "on the device": a NumPy buffer that NumPy itself may not touch."""

    __slots__ = ("_a",)

    def __init__(self, a: np.ndarray) -> None:
        self._a = a

    # --- what CuPy refuses -----------------------------------------------------------------------------------
    def __array__(self, *args, **kwargs):
        raise DeviceArrayError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to "
                               "construct a NumPy array explicitly.")

    def __array_function__(self, func, types_, args, kwargs):
        raise DeviceArrayError("numpy.%s called on a device array: compute with the array module (xp.%s)"
                               % (func.__name__, func.__name__))

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        where = "numpy.%s.%s" % (ufunc.__name__, method)
        out = kwargs.get("out")
        ins = unwrap(inputs, where)
        kw = unwrap(kwargs, where)
        result = getattr(ufunc, method)(*ins, **kw)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return wrap(result)

    # --- the ndarray surface ---------------------------------------------------------------------------------
    def get(self, stream=None, order="C", out=None):
        return self._a.copy()

    def __getitem__(self, key):
        return wrap(self._a[_index(key)])

    def __setitem__(self, key, value) -> None:
        self._a[_index(key)] = unwrap(value, allow_numpy=True)  # CuPy copies host values over

    def __len__(self) -> int:
        return len(self._a)

    def __iter__(self):
        for i in range(len(self._a)):
            yield self[i]

    def __float__(self) -> float:
        return float(self._a)

    def __int__(self) -> int:
        return int(self._a)

    def __complex__(self) -> complex:
        return complex(self._a)

    def __bool__(self) -> bool:
        return bool(self._a)

    def __repr__(self) -> str:
        return "DeviceArray(%r)" % (self._a,)

    def __dlpack__(self, *args, **kwargs):
        raise DeviceArrayError("__dlpack__ of a fake device array")

    def __getattr__(self, name: str):
        if name.startswith("__") or name not in NAMESPACE["ndarray"]:
            raise AttributeError("'cupy.ndarray' object has no attribute %r" % name)
        attr = getattr(self._a, name)
        if not callable(attr):
            return wrap(attr) if isinstance(attr, np.ndarray) else attr
        where = "cupy.ndarray.%s" % name

        def method(*args, **kwargs):
            return wrap(attr(*unwrap(args, where), **unwrap(kwargs, where)))

        return method

    @property
    def shape(self):
        return self._a.shape

    @shape.setter
    def shape(self, value) -> None:
        self._a.shape = value

    @property
    def dtype(self):
        return self._a.dtype

    @property
    def size(self) -> int:
        return self._a.size

    @property
    def ndim(self) -> int:
        return self._a.ndim

    @property
    def T(self):
        return DeviceArray(self._a.T)

    @property
    def flags(self):
        return self._a.flags

    @property
    def data(self):
        raise DeviceArrayError("the device pointer of a fake device array")


class _Ufunc:
    """A ufunc of the fake module: calls, reduce, accumulate, outer and at on DeviceArrays."""

    def __init__(self, uf: np.ufunc) -> None:
        self._uf = uf
        self.__name__ = uf.__name__
        self.nin, self.nout = uf.nin, uf.nout

    def _call(self, method: str, args, kwargs):
        where = "cupy.%s%s" % (self._uf.__name__, "" if method == "__call__" else "." + method)
        out = kwargs.get("out")
        result = getattr(self._uf, method)(*unwrap(args, where), **unwrap(kwargs, where))
        if out is not None:
            return out
        return wrap(result)

    def __call__(self, *args, **kwargs):
        return self._call("__call__", args, kwargs)

    def __getattr__(self, method: str):
        if method not in ("reduce", "accumulate", "outer", "at", "reduceat"):
            raise AttributeError(method)
        if method == "at":
            def at(a, indices, b=None):
                if b is None:
                    self._uf.at(unwrap(a), _index(indices))
                else:
                    self._uf.at(unwrap(a), _index(indices), unwrap(b, "cupy.%s.at" % self.__name__))
            return at
        return lambda *args, **kwargs: self._call(method, args, kwargs)


def _function(name: str, fn, allow_numpy: bool = False):
    where = "cupy." + name

    def call(*args, **kwargs):
        return wrap(fn(*unwrap(args, where, allow_numpy), **unwrap(kwargs, where, allow_numpy)))

    call.__name__ = name
    return call


def _asarray(a, dtype=None, order=None, *, blocking=False):
    return DeviceArray(np.array(unwrap(a, allow_numpy=True), dtype=dtype, order=order or "K"))


def _asnumpy(a, stream=None, order="C", out=None, *, blocking=True):
    return np.array(a._a if isinstance(a, DeviceArray) else a, order=order)


class _Device:
    def __init__(self, device=None) -> None:
        self.id = 0 if device is None else int(device)
        if self.id != 0:
            raise RuntimeError("cudaErrorInvalidDevice: invalid device ordinal")

    def use(self) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def _properties(device: int) -> dict:
    return {"name": b"Fake CuPy device (NumPy)", "totalGlobalMem": 1 << 30, "major": 9, "minor": 0,
            "multiProcessorCount": 1, "clockRate": 1000000, "sharedMemPerBlock": 49152, "warpSize": 32,
            "maxThreadsPerBlock": 1024}


class _Event:
    def __init__(self, *args, **kwargs) -> None:
        import time
        self._t = time.perf_counter

    def record(self, stream=None) -> None:
        self.t = self._t()

    def synchronize(self) -> None:
        pass


def _elapsed(start: _Event, end: _Event) -> float:
    return (end.t - start.t) * 1000.0


def module() -> types.SimpleNamespace:
    """A fresh fake CuPy module."""
    fake = types.ModuleType("cupy")
    fake.__version__ = NAMESPACE["version"] + "+fake"
    fake.ndarray = DeviceArray
    fake.asarray = fake.array = fake.asanyarray = _asarray
    fake.asnumpy = _asnumpy
    fake.get_array_module = lambda *arrays: fake if any(isinstance(a, DeviceArray) for a in arrays) else np
    runtime = types.SimpleNamespace(getDeviceCount=lambda: 1, getDeviceProperties=_properties,
                                    runtimeGetVersion=lambda: 12090, driverGetVersion=lambda: 12090,
                                    memGetInfo=lambda: (1 << 29, 1 << 30))
    fake.cuda = types.SimpleNamespace(runtime=runtime, Device=_Device, Event=_Event,
                                      get_elapsed_time=_elapsed, Stream=types.SimpleNamespace(null=None),
                                      set_allocator=lambda allocator=None: None,
                                      set_pinned_memory_allocator=lambda allocator=None: None)
    state = {"rng": np.random.RandomState(0)}

    def seed(s=None):
        state["rng"] = np.random.RandomState(s)

    def random_sample(size=None, dtype=float):
        return DeviceArray(state["rng"].random_sample(size).astype(dtype))

    fake.random = types.SimpleNamespace(seed=seed, random_sample=random_sample, random=random_sample,
                                        rand=lambda *shape: random_sample(shape))
    for name, entry in NAMESPACE["functions"].items():
        if hasattr(fake, name) or name in _NO_KERNELS or not hasattr(np, name):
            continue
        obj = getattr(np, name)
        if entry["kind"] == "ufunc" and isinstance(obj, np.ufunc):
            setattr(fake, name, _Ufunc(obj))
        elif entry["kind"] == "function" and callable(obj):
            setattr(fake, name, _function(name, obj, allow_numpy=False))
        elif entry["kind"] in ("class", "other"):
            setattr(fake, name, obj)  # dtypes (float32...), constants (newaxis, inf, pi)
    return fake
