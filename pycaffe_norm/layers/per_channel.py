"""Per-channel arithmetic on (N, C, S) arrays (channel axis 1, S the positions after it): the 2-D views and
broadcast rows that NumPy runs fast, and per-channel sums. Shared by BatchNorm, Scale and Bias."""
from __future__ import annotations

from . import cuda_kernels

# Rows of about this many elements for the per-channel broadcasts: NumPy's broadcasting loop costs ~0.2 us per
# row, so a multiply over (100, 2048) takes 45 us and over (10, 20480) 27 us (measured on x86, NumPy 2.4).
BROADCAST_ROW = 1 << 15


def rows(a):
    """A C-contiguous (N, C, S) array, or a channel range of one, as the 2-D view the per-channel broadcasts run
    on: (N, C * S), or with whole arrays k samples per row, (N / k, k * C * S), so that rows are long. Both reshape
    without a copy (a channel range spans whole rows of S)."""
    n = a.shape[0]
    row = a.size // max(n, 1)
    k = 1
    if a.flags.c_contiguous and row:
        k = max(d for d in range(1, min(n, max(1, BROADCAST_ROW // row)) + 1) if n % d == 0)
    return a.reshape(n // k, k * row)


def channel_row(xp, v, s: int, row: int):
    """A per-channel vector (C,) repeated over the S positions of each channel, as one row of ``row`` elements
    (the row length of the ``rows`` view it broadcasts against, a multiple of C * S)."""
    c = v.shape[0]
    if row == 0 or c * s == 0:  # an empty blob
        return xp.empty((1, row), dtype=v.dtype)
    r = xp.empty((row // (c * s), c, s), dtype=v.dtype)
    r[...] = v.reshape(1, c, 1)
    return r.reshape(1, row)


def channel_sum(xp, a):
    """Sum over axes 0 and 2 of an (N, C, S) array -> (C,): per-(n, c) sums over S (einsum's loop: 1.5x faster
    than BLAS dot products with ones at S = 64), then over n."""
    if cuda_kernels.enabled(xp):  # one block per channel
        return cuda_kernels.chan_dot(a)
    if a.shape[2] == 1:
        return a[:, :, 0].sum(axis=0)
    return xp.einsum("ncs->nc", a).sum(axis=0)


def channel_dot(xp, a, b):
    """Sum over axes 0 and 2 of a*b for (N, C, S) arrays -> (C,): per-(n, c) dot products, then over n."""
    if cuda_kernels.enabled(xp):
        return cuda_kernels.chan_dot(a, b)
    if a.shape[2] == 1:
        return xp.einsum("nc,nc->c", a[:, :, 0], b[:, :, 0])
    return xp.matmul(a[:, :, None, :], b[:, :, :, None])[:, :, 0, 0].sum(axis=0)
