"""Blob: an N-d array of data and its gradient (diff), as in Caffe."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from . import backend


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
            self._data = self._xp.zeros(shape, dtype=self.dtype)
            self._diff = self._xp.zeros(shape, dtype=self.dtype)
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
