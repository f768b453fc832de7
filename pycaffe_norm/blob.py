"""Blob: an N-d array of data and its gradient (diff), as in Caffe."""
from __future__ import annotations

import contextlib
from typing import Optional, Sequence

import numpy as np

from . import backend
from .errors import PcnError

# Below this size an allocation is not checked against the free memory (reading it costs more than the risk).
_CHECKED_BYTES = 64 << 20


class MemoryLimitError(PcnError):
    """A blob (or the net being built) would need more memory than the machine has free: names the estimate."""


def available_memory() -> Optional[int]:
    """Bytes the process can still allocate: Linux's MemAvailable, capped by a cgroup v2 memory limit; None when
    neither can be read (then nothing is checked)."""
    free = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        if limit != "max":
            left = max(int(limit) - used, 0)
            free = left if free is None else min(free, left)
    except (OSError, ValueError):
        pass
    return free


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return ("%d %s" if unit == "B" else "%.1f %s") % (n, unit)
        n /= 1024.0
    return "%d B" % n


# The bytes still free for the net being built (see memory_budget), or None outside a build.
_budget: Optional[list] = None


@contextlib.contextmanager
def memory_budget():
    """While a Net is built, every CPU blob allocation is counted against the memory free at the start, so a net
    too large for the machine is refused with an estimate before the allocation that would not fit (NumPy's
    zeros are lazily mapped: without this, the process would be killed later, when the pages are touched)."""
    global _budget
    outer = _budget
    free = available_memory()
    _budget = None if free is None else [free, 0]
    try:
        yield
    finally:
        _budget = outer


def _check_allocation(shape: tuple, nbytes: int) -> None:
    if _budget is not None:
        _budget[1] += nbytes
        if _budget[1] > _budget[0]:
            raise MemoryLimitError("with a blob of shape %s the net needs at least %s for its blobs (data and "
                                   "diff), more than the %s of memory free" % (shape, format_bytes(_budget[1]),
                                                                               format_bytes(_budget[0])))
    elif nbytes >= _CHECKED_BYTES:
        free = available_memory()
        if free is not None and nbytes > free:
            raise MemoryLimitError("a blob of shape %s needs %s (data and diff), more than the %s of memory free"
                                   % (shape, format_bytes(nbytes), format_bytes(free)))


class Blob:
    """Holds ``data`` and ``diff`` of one shape and dtype (float32 by default, float64 for gradient checks).

    ``data`` and ``diff`` are persistent arrays: assigning to them copies into the existing memory, so views
    that users or layers keep stay valid, as with pycaffe.
    """

    def __init__(self, shape: Sequence[int] = (), dtype=np.float32, xp=None):
        self._xp = xp if xp is not None else backend.xp_for_mode()
        self.dtype = np.dtype(dtype)
        self._shape: tuple = ()
        self._data = None
        self._diff = None
        self.reshape(shape)

    # --- shape -----------------------------------------------------------------------------------------
    def reshape(self, *shape) -> None:
        if len(shape) == 1 and not isinstance(shape[0], (int, np.integer)):
            shape = tuple(shape[0])
        shape = tuple(int(s) for s in shape)
        if any(s < 0 for s in shape):
            raise ValueError("blob dimensions must be >= 0, got %s" % (shape,))
        if self._data is not None and shape == self._shape:
            return
        count = int(np.prod(shape, dtype=np.int64))
        if self._data is not None and self._data.size == count:
            self._data = self._data.reshape(shape)
            self._diff = self._diff.reshape(shape)
        else:
            if self._xp is np:
                _check_allocation(shape, 2 * count * self.dtype.itemsize)
            try:
                self._data = self._xp.zeros(shape, dtype=self.dtype)
                self._diff = self._xp.zeros(shape, dtype=self.dtype)
            except (MemoryError, ValueError) as e:  # NumPy: "array is too big" is a ValueError
                raise MemoryLimitError("cannot allocate a blob of shape %s (%s for data and diff): %s"
                                       % (shape, format_bytes(2 * count * self.dtype.itemsize),
                                          " ".join(str(e).split()))) from None
        self._shape = shape

    def reshape_like(self, other: "Blob") -> None:
        self.reshape(other.shape)

    @property
    def shape(self) -> tuple:
        return self._shape

    @property
    def count(self) -> int:
        return int(self._data.size)

    def count_range(self, start: int, end: int | None = None) -> int:
        return int(np.prod(self._shape[start:end], dtype=np.int64))

    @property
    def num_axes(self) -> int:
        return len(self._shape)

    def canonical_axis(self, axis: int) -> int:
        n = len(self._shape)
        if not -n <= axis < max(n, 1):
            raise ValueError("axis %d out of range for a %d-D blob %s" % (axis, n, self._shape))
        return axis + n if axis < 0 else axis

    def _legacy(self, i: int) -> int:
        # Caffe's num/channels/height/width: missing trailing axes count as 1.
        if len(self._shape) > 4:
            raise ValueError("legacy dimension accessors need a blob of at most 4 axes, not %s" % (self._shape,))
        return self._shape[i] if i < len(self._shape) else 1

    num = property(lambda self: self._legacy(0))
    channels = property(lambda self: self._legacy(1))
    height = property(lambda self: self._legacy(2))
    width = property(lambda self: self._legacy(3))

    # --- data ------------------------------------------------------------------------------------------
    @property
    def data(self):
        return self._data

    @data.setter
    def data(self, value) -> None:
        self._data[...] = value

    @property
    def diff(self):
        return self._diff

    @diff.setter
    def diff(self, value) -> None:
        self._diff[...] = value

    @property
    def xp(self):
        return self._xp

    def share_data(self, other: "Blob") -> None:
        if other.count != self.count:
            raise ValueError("share_data: counts differ (%d vs %d)" % (self.count, other.count))
        self._data = other._data.reshape(self._shape)

    def share_diff(self, other: "Blob") -> None:
        if other.count != self.count:
            raise ValueError("share_diff: counts differ (%d vs %d)" % (self.count, other.count))
        self._diff = other._diff.reshape(self._shape)

    def __repr__(self) -> str:
        return "Blob(shape=%s, dtype=%s)" % (self._shape, self.dtype)
