"""Structural layers that move or combine data without arithmetic of their own."""
from __future__ import annotations

import numpy as np

from ..blob import Blob
from ..errors import NetError
from ..proto import caffe_pb2
from .base import Layer, register


@register("Split")
class SplitLayer(Layer):
    """One bottom read by several tops; backward sums the tops' diffs. The Net inserts these itself.

    As Caffe's (``ShareData``), the tops' data are views of the bottom's, so forward copies nothing: a split top is
    never written in place (the Net refuses a net where it would be, as Caffe does)."""

    exact_num_bottom = 1
    min_top = 1

    def reshape(self, bottom, top):
        for t in top:
            if t is not bottom[0]:
                t.reshape(bottom[0].shape)
                t.share_data(bottom[0])

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        diff = bottom[0].diff
        if len(top) == 1:
            diff[...] = top[0].diff
            return
        bottom[0].xp.add(top[0].diff, top[1].diff, out=diff)
        for t in top[2:]:
            diff += t.diff


def _axis(layer: Layer, blob: Blob, axis: int) -> int:
    try:
        return blob.canonical_axis(axis)
    except ValueError as e:
        raise NetError("layer %r (%s): %s" % (layer.name, layer.type, e)) from None


def _legacy_axis(layer: Layer, blob: Blob, p, legacy: str) -> int:
    """``axis``, or the old non-negative ``concat_dim``/``slice_dim`` when that is given instead."""
    if p.HasField(legacy):
        if p.HasField("axis"):
            raise NetError("layer %r (%s): give either axis or %s, not both" % (layer.name, layer.type, legacy))
        axis = int(getattr(p, legacy))
        if axis >= blob.num_axes:
            raise NetError("layer %r (%s): %s %d out of range for a %d-D bottom %s"
                           % (layer.name, layer.type, legacy, axis, blob.num_axes, blob.shape))
        return axis
    return _axis(layer, blob, p.axis)


def _along(axis: int, start: int, stop: int) -> tuple:
    """Index selecting [start, stop) along ``axis``."""
    return (slice(None),) * axis + (slice(start, stop),)


@register("Concat")
class ConcatLayer(Layer):
    """Joins the bottoms along ``axis`` (or the legacy ``concat_dim``); all other dimensions must agree."""

    min_bottom = 1
    exact_num_top = 1
    allow_in_place = False

    def reshape(self, bottom, top):
        self.axis = _legacy_axis(self, bottom[0], self.layer_param.concat_param, "concat_dim")
        shape = list(bottom[0].shape)
        for i, b in enumerate(bottom[1:], 1):
            if b.num_axes != len(shape) or any(b.shape[j] != shape[j] for j in range(len(shape)) if j != self.axis):
                expect = ["*" if j == self.axis else d for j, d in enumerate(bottom[0].shape)]
                raise self.shape_error("bottom %d (all dimensions but the concat axis %d must match bottom 0)"
                                       % (i, self.axis), b.shape, expect)
            shape[self.axis] += b.shape[self.axis]
        top[0].reshape(shape)

    def forward(self, bottom, top):
        offset = 0
        for b in bottom:
            n = b.shape[self.axis]
            top[0].data[_along(self.axis, offset, offset + n)] = b.data
            offset += n

    def backward(self, top, propagate_down, bottom):
        offset = 0
        for b, down in zip(bottom, propagate_down):
            n = b.shape[self.axis]
            if down:
                b.diff[...] = top[0].diff[_along(self.axis, offset, offset + n)]
            offset += n


@register("Slice")
class SliceLayer(Layer):
    """Cuts the bottom along ``axis`` (or legacy ``slice_dim``) at ``slice_point``s, or into equal parts."""

    exact_num_bottom = 1
    min_top = 1
    allow_in_place = False

    def reshape(self, bottom, top):
        p = self.layer_param.slice_param
        self.axis = _legacy_axis(self, bottom[0], p, "slice_dim")
        length = bottom[0].shape[self.axis]
        points = [int(s) for s in p.slice_point]
        if points:
            if len(points) != len(top) - 1:
                raise NetError("layer %r (Slice): %d slice_point(s) for %d tops (need one fewer than tops)"
                               % (self.name, len(points), len(top)))
            bounds = [0] + points + [length]
            if any(b >= e for b, e in zip(bounds, bounds[1:])):
                raise NetError("layer %r (Slice): slice points %s must increase strictly inside (0, %d) along "
                               "axis %d of %s" % (self.name, points, length, self.axis, bottom[0].shape))
        else:
            if length % len(top):
                raise NetError("layer %r (Slice): axis %d of %s (size %d) cannot be split equally into %d tops"
                               % (self.name, self.axis, bottom[0].shape, length, len(top)))
            step = length // len(top)
            bounds = [i * step for i in range(len(top) + 1)]
        self.bounds = bounds
        for t, b, e in zip(top, bounds, bounds[1:]):
            shape = list(bottom[0].shape)
            shape[self.axis] = e - b
            t.reshape(shape)

    def forward(self, bottom, top):
        for t, b, e in zip(top, self.bounds, self.bounds[1:]):
            t.data[...] = bottom[0].data[_along(self.axis, b, e)]

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            for t, b, e in zip(top, self.bounds, self.bounds[1:]):
                bottom[0].diff[_along(self.axis, b, e)] = t.diff


@register("Eltwise")
class EltwiseLayer(Layer):
    """Element-wise PROD, SUM (with per-bottom ``coeff``) or MAX of bottoms of one shape."""

    min_bottom = 2
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.eltwise_param
        self.op = p.operation
        if p.coeff and len(p.coeff) != len(bottom):
            raise NetError("layer %r (Eltwise): %d coeff values for %d bottoms (give one per bottom)"
                           % (self.name, len(p.coeff), len(bottom)))
        if p.coeff and self.op != caffe_pb2.EltwiseParameter.SUM:
            raise NetError("layer %r (Eltwise): coeff is only allowed with operation SUM" % self.name)
        self.coeffs = [float(c) for c in p.coeff] if p.coeff else [1.0] * len(bottom)
        self.stable_prod_grad = bool(p.stable_prod_grad)

    def reshape(self, bottom, top):
        for i, b in enumerate(bottom[1:], 1):
            if b.shape != bottom[0].shape:
                raise self.shape_error("bottom %d" % i, b.shape, bottom[0].shape)
        if all(top[0] is not b for b in bottom):
            top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        xp = bottom[0].xp
        E = caffe_pb2.EltwiseParameter
        if self.op == E.PROD:
            # In place, backward needs the overwritten bottom's input.
            self._saved = {i: b.data.copy() for i, b in enumerate(bottom) if b is top[0]}
            out = bottom[0].data * bottom[1].data
            for b in bottom[2:]:
                out *= b.data
        elif self.op == E.SUM:
            out = bottom[0].data * self.coeffs[0] if self.coeffs[0] != 1 else bottom[0].data.copy()
            for c, b in zip(self.coeffs[1:], bottom[1:]):
                out += b.data if c == 1 else b.data * c
        elif self.op == E.MAX:
            # Caffe's tie rule: bottom 1 wins a tie with bottom 0, later bottoms must be strictly larger.
            a, b = bottom[0].data, bottom[1].data
            first = a > b
            out = xp.where(first, a, b)
            mask = xp.where(first, 0, 1).astype(xp.int32)
            for k, blob in enumerate(bottom[2:], 2):
                upd = blob.data > out
                out = xp.where(upd, blob.data, out)
                mask[upd] = k
            self.mask = mask
        else:
            raise NetError("layer %r (Eltwise): unknown operation %r" % (self.name, self.op))
        top[0].data[...] = out

    def backward(self, top, propagate_down, bottom):
        xp = bottom[0].xp
        E = caffe_pb2.EltwiseParameter
        dy = top[0].diff
        if self.op == E.SUM:
            self._sum_backward(xp, top, propagate_down, bottom)
            return
        data = [self._saved.get(i, b.data) if self.op == E.PROD else b.data for i, b in enumerate(bottom)]
        grads = {}
        for i, down in enumerate(propagate_down):
            if not down:
                continue
            if self.op == E.PROD:
                if self.stable_prod_grad:
                    others = [d for j, d in enumerate(data) if j != i]
                    g = others[0] * others[1] if len(others) > 1 else others[0]
                    for d in others[2:]:
                        g *= d
                else:
                    g = top[0].data / data[i] if all(top[0] is not b for b in bottom) else None
                    if g is None:  # top overwrote a bottom: rebuild the product from the saved inputs
                        prod = data[0] * data[1]
                        for d in data[2:]:
                            prod = prod * d
                        g = prod / data[i]
                grads[i] = g * dy
            else:
                grads[i] = xp.where(self.mask == i, dy, 0)
        # Written after all are computed: in place, one bottom diff is the top diff.
        for i, g in grads.items():
            bottom[i].diff[...] = g

    def _sum_backward(self, xp, top, propagate_down, bottom) -> None:
        """bottom_i.diff = coeff_i * dy, written straight into each diff (no temporaries); in place, the bottom
        whose diff is the top's is scaled last, after the others have read it."""
        dy = top[0].diff
        for i, down in enumerate(propagate_down):
            if not down or bottom[i] is top[0]:
                continue
            if self.coeffs[i] != 1:
                xp.multiply(dy, dy.dtype.type(self.coeffs[i]), out=bottom[i].diff)
            else:
                bottom[i].diff[...] = dy
        for i, down in enumerate(propagate_down):
            if down and bottom[i] is top[0] and self.coeffs[i] != 1:
                dy *= dy.dtype.type(self.coeffs[i])


@register("Flatten")
class FlattenLayer(Layer):
    """Merges axes ``axis`` .. ``end_axis`` (inclusive) into one."""

    exact_num_bottom = 1
    exact_num_top = 1
    allow_in_place = False

    def reshape(self, bottom, top):
        p = self.layer_param.flatten_param
        s = bottom[0].shape
        start = _axis(self, bottom[0], p.axis)
        end = _axis(self, bottom[0], p.end_axis)
        if end < start:
            raise NetError("layer %r (Flatten): end_axis %d comes before axis %d for bottom %s"
                           % (self.name, p.end_axis, p.axis, s))
        top[0].reshape(s[:start] + (bottom[0].count_range(start, end + 1),) + s[end + 1:])

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data.reshape(top[0].shape)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff.reshape(bottom[0].shape)


@register("Reshape")
class ReshapeLayer(Layer):
    """Changes the shape of axes [axis, axis + num_axes) to ``shape``: 0 copies a bottom dimension, one -1 is
    inferred. The data is copied unchanged (Caffe shares it; the values are the same)."""

    exact_num_bottom = 1
    exact_num_top = 1
    allow_in_place = False

    def setup(self, bottom, top):
        dims = [int(d) for d in self.layer_param.reshape_param.shape.dim]
        inferred = [i for i, d in enumerate(dims) if d == -1]
        if len(inferred) > 1:
            raise NetError("layer %r (Reshape): at most one dimension may be -1, got shape %s" % (self.name, dims))
        if any(d < -1 for d in dims):
            raise NetError("layer %r (Reshape): dimensions must be >= -1, got shape %s" % (self.name, dims))
        self.dims = dims

    def reshape(self, bottom, top):
        p = self.layer_param.reshape_param
        s = bottom[0].shape
        n = len(s)
        start = p.axis if p.axis >= 0 else n + p.axis + 1
        if not 0 <= start <= n:
            raise NetError("layer %r (Reshape): axis %d out of range for a %d-D bottom %s" % (self.name, p.axis, n, s))
        if p.num_axes < -1:
            raise NetError("layer %r (Reshape): num_axes must be >= -1, got %d" % (self.name, p.num_axes))
        end = n if p.num_axes == -1 else start + p.num_axes
        if end > n:
            raise NetError("layer %r (Reshape): axis %d + num_axes %d exceeds the %d axes of bottom %s"
                           % (self.name, start, p.num_axes, n, s))
        new = []
        for i, d in enumerate(self.dims):
            if d == 0:
                if start + i >= n:
                    raise NetError("layer %r (Reshape): dim %d is 0 (copy) but bottom %s has no axis %d"
                                   % (self.name, i, s, start + i))
                d = s[start + i]
            new.append(d)
        shape = list(s[:start]) + new + list(s[end:])
        count = bottom[0].count
        if -1 in shape:
            known = int(np.prod([d for d in shape if d != -1], dtype=np.int64))
            if known == 0 or count % known:
                raise NetError("layer %r (Reshape): cannot infer the -1 dimension of %s from bottom %s (count %d)"
                               % (self.name, self.dims, s, count))
            shape[shape.index(-1)] = count // known
        if int(np.prod(shape, dtype=np.int64)) != count:
            raise NetError("layer %r (Reshape): output shape %s has %d elements, bottom %s has %d"
                           % (self.name, tuple(shape), int(np.prod(shape, dtype=np.int64)), s, count))
        top[0].reshape(shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data.reshape(top[0].shape)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff.reshape(bottom[0].shape)


@register("Silence")
class SilenceLayer(Layer):
    """Consumes bottoms so they are not net outputs; their gradient is zero."""

    min_bottom = 1
    exact_num_top = 0

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        for b, down in zip(bottom, propagate_down):
            if down:
                b.diff[...] = 0


@register("Tile")
class TileLayer(Layer):
    """Repeats the bottom ``tiles`` times along ``axis`` (the block from ``axis`` on is copied whole)."""

    exact_num_bottom = 1
    exact_num_top = 1
    allow_in_place = False

    def setup(self, bottom, top):
        p = self.layer_param.tile_param
        if not p.HasField("tiles") or p.tiles < 1:
            raise NetError("layer %r (Tile): tile_param.tiles must be given and >= 1" % self.name)
        self.tiles = int(p.tiles)

    def reshape(self, bottom, top):
        self.axis = _axis(self, bottom[0], self.layer_param.tile_param.axis)
        self.outer = bottom[0].count_range(0, self.axis)
        self.inner = bottom[0].count_range(self.axis)
        shape = list(bottom[0].shape)
        shape[self.axis] *= self.tiles
        top[0].reshape(shape)

    def forward(self, bottom, top):
        src = bottom[0].data.reshape(self.outer, 1, self.inner)
        top[0].data.reshape(self.outer, self.tiles, self.inner)[...] = src

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            g = top[0].diff.reshape(self.outer, self.tiles, self.inner).sum(axis=1)
            bottom[0].diff[...] = g.reshape(bottom[0].shape)


@register("Reduction")
class ReductionLayer(Layer):
    """Reduces all axes from ``axis`` on by SUM, ASUM, SUMSQ or MEAN, times ``coeff``; top shape is
    bottom.shape[:axis]."""

    exact_num_bottom = 1
    exact_num_top = 1
    allow_in_place = False

    def setup(self, bottom, top):
        self.op = self.layer_param.reduction_param.operation

    def reshape(self, bottom, top):
        p = self.layer_param.reduction_param
        self.axis = _axis(self, bottom[0], p.axis) if bottom[0].num_axes else 0
        self.num = bottom[0].count_range(0, self.axis)
        self.dim = bottom[0].count_range(self.axis)
        top[0].reshape(bottom[0].shape[:self.axis])
        self.coeff = float(p.coeff)
        if self.op == caffe_pb2.ReductionParameter.MEAN:
            self.coeff /= max(self.dim, 1)

    def forward(self, bottom, top):
        xp = bottom[0].xp
        R = caffe_pb2.ReductionParameter
        x = bottom[0].data.reshape(self.num, self.dim)
        if self.op in (R.SUM, R.MEAN):
            r = x.sum(axis=1)
        elif self.op == R.ASUM:
            r = xp.abs(x).sum(axis=1)
        elif self.op == R.SUMSQ:
            r = (x * x).sum(axis=1)
        else:
            raise NetError("layer %r (Reduction): unknown operation %r" % (self.name, self.op))
        if self.coeff != 1:
            r *= self.coeff
        top[0].data[...] = r.reshape(top[0].shape)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = bottom[0].xp
        R = caffe_pb2.ReductionParameter
        x = bottom[0].data.reshape(self.num, self.dim)
        dy = (top[0].diff.reshape(self.num, 1) * self.coeff)
        if self.op in (R.SUM, R.MEAN):
            g = xp.broadcast_to(dy, x.shape)
        elif self.op == R.ASUM:
            g = xp.sign(x) * dy
        else:
            g = x * (2 * dy)
        bottom[0].diff[...] = g.reshape(bottom[0].shape)


def scatter_add_rows(xp, target, idx, values) -> None:
    """``target[idx[i]] += values[i]`` with repeated indices summed (a plain fancy-index ``+=`` keeps only one).
    CuPy >= 13 has ``add.at`` too (an atomic add on the device), in place of the deprecated cupyx.scatter_add."""
    xp.add.at(target, idx, values)


@register("Crop")
class CropLayer(Layer):
    """Crops bottom 0 to the shape of bottom 1 on the axes from ``crop_param.axis`` on, starting at ``offset``
    (none: 0; one: every cropped axis; else one per cropped axis). Bottom 1 only gives the shape."""

    exact_num_bottom = 2
    exact_num_top = 1
    allow_in_place = False

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index == 0

    def reshape(self, bottom, top):
        p = self.layer_param.crop_param
        b0, b1 = bottom
        n = b0.num_axes
        start = _axis(self, b0, p.axis)
        offsets = [int(o) for o in p.offset]
        if len(offsets) > 1 and start + len(offsets) != n:
            raise NetError("layer %r (Crop): %d offsets given for the %d axes from axis %d of bottom %s (give one, "
                           "or one per cropped axis)" % (self.name, len(offsets), n - start, start, b0.shape))
        if b1.num_axes < n:
            raise self.shape_error("bottom 1 (the crop reference needs at least the axes of bottom 0)",
                                   b1.shape, b0.shape)
        shape, self.offsets = list(b0.shape), [0] * n
        for i in range(start, n):
            off = offsets[0] if len(offsets) == 1 else (offsets[i - start] if offsets else 0)
            if b0.shape[i] - off < b1.shape[i]:
                raise self.shape_error("bottom 0 (axis %d: crop size %d at offset %d is out of bounds)"
                                       % (i, b1.shape[i], off), b0.shape,
                                       b0.shape[:i] + (">=%d" % (b1.shape[i] + off),) + b0.shape[i + 1:])
            shape[i], self.offsets[i] = b1.shape[i], off
        self.window = tuple(slice(o, o + s) for o, s in zip(self.offsets, shape))
        top[0].reshape(shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data[self.window]

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = 0
            bottom[0].diff[self.window] = top[0].diff
        if propagate_down[1]:  # the output does not depend on the reference's values
            bottom[1].diff[...] = 0


@register("ArgMax")
class ArgMaxLayer(Layer):
    """Indices (or with ``out_max_val`` the values) of the ``top_k`` largest entries along ``axis``; without an
    axis, over each item's flattened data, and ``out_max_val`` gives (N, 2, top_k): indices, then values.
    Ties go to the larger index, as Caffe's partial sort of (value, index) pairs. No backward."""

    exact_num_bottom = 1
    exact_num_top = 1
    allow_in_place = False

    def allow_force_backward(self, bottom_index: int) -> bool:
        return False

    def setup(self, bottom, top):
        p = self.layer_param.argmax_param
        self.out_max_val = bool(p.out_max_val)
        self.top_k = int(p.top_k)
        self.has_axis = p.HasField("axis")
        if self.top_k < 1:
            raise NetError("layer %r (ArgMax): top_k must be at least 1" % self.name)

    def reshape(self, bottom, top):
        b = bottom[0]
        if self.has_axis:
            self.axis = _axis(self, b, self.layer_param.argmax_param.axis)
            self.dims = (b.count_range(0, self.axis), b.shape[self.axis], b.count_range(self.axis + 1))
        else:
            if b.num_axes < 1:
                raise self.shape_error("bottom (ArgMax needs a batch axis)", b.shape, ("N", "..."))
            self.dims = (b.shape[0], b.count_range(1), 1)
        if self.top_k > self.dims[1]:
            raise NetError("layer %r (ArgMax): top_k %d is larger than the %d values it chooses from (bottom %s)"
                           % (self.name, self.top_k, self.dims[1], b.shape))
        if self.has_axis:
            shape = list(b.shape)
            shape[self.axis] = self.top_k
        else:
            shape = [1] * max(b.num_axes, 3)
            shape[0], shape[2] = b.shape[0], self.top_k
            if self.out_max_val:
                shape[1] = 2
        top[0].reshape(shape)

    def forward(self, bottom, top):
        xp = bottom[0].xp
        x3 = bottom[0].data.reshape(self.dims)
        dim, k = self.dims[1], self.top_k
        # A stable sort of the reversed values puts the larger index first among equal values (CuPy's sort is
        # always stable and takes no other kind).
        stable = {"kind": "stable"} if xp is np else {}
        order = xp.argsort(-x3[:, ::-1, :], axis=1, **stable)[:, :k, :]
        idx = (dim - 1) - order
        if self.has_axis:
            out = xp.take_along_axis(x3, idx, axis=1) if self.out_max_val else idx
            top[0].data.reshape(self.dims[0], k, self.dims[2])[...] = out
        elif self.out_max_val:
            y = top[0].data.reshape(self.dims[0], 2, k)
            y[:, 0, :] = idx[:, :, 0]
            y[:, 1, :] = xp.take_along_axis(x3, idx, axis=1)[:, :, 0]
        else:
            top[0].data.reshape(self.dims[0], k)[...] = idx[:, :, 0]


@register("BatchReindex")
class BatchReindexLayer(Layer):
    """top[i] = bottom0[index[i]] along the first axis; index (bottom 1) is 1-D and may repeat or omit items.
    Backward sums the diffs of repeated items."""

    exact_num_bottom = 2
    exact_num_top = 1
    allow_in_place = False

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index == 0

    def reshape(self, bottom, top):
        if bottom[1].num_axes != 1:
            raise self.shape_error("bottom 1 (the index blob must be 1-D)", bottom[1].shape, ("K",))
        if bottom[0].num_axes < 1:
            raise self.shape_error("bottom 0 (needs a batch axis)", bottom[0].shape, ("N", "..."))
        top[0].reshape((bottom[1].shape[0],) + bottom[0].shape[1:])

    def _index(self, bottom):
        idx = bottom[1].data.astype(np.int64)  # Caffe's static_cast<int>
        bad = (idx < 0) | (idx >= bottom[0].shape[0])
        if bool(bad.any()):
            raise NetError("layer %r (BatchReindex): index %d is outside the batch [0, %d) of bottom 0 %s"
                           % (self.name, int(idx[bad][0]), bottom[0].shape[0], bottom[0].shape))
        return idx

    def forward(self, bottom, top):
        self._idx = self._index(bottom)
        top[0].data[...] = bottom[0].data[self._idx]

    def backward(self, top, propagate_down, bottom):
        if propagate_down[1]:
            raise NetError("layer %r (BatchReindex) cannot backpropagate to the index input" % self.name)
        if propagate_down[0]:
            bottom[0].diff[...] = 0
            scatter_add_rows(bottom[0].xp, bottom[0].diff, self._idx, top[0].diff)


@register("Filter")
class FilterLayer(Layer):
    """Keeps the items (first-axis entries) whose selector value (last bottom, shape (N, 1, ...)) is non-zero;
    top i is bottom i filtered. As in Caffe, the first reshape (at setup) keeps all N items, because the selector
    holds no data yet."""

    min_bottom = 2
    min_top = 1
    allow_in_place = False

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != len(self.layer_param.bottom) - 1

    def setup(self, bottom, top):
        if len(top) != len(bottom) - 1:
            raise NetError("layer %r (Filter): %d bottoms need %d tops (one per bottom but the selector), got %d"
                           % (self.name, len(bottom), len(bottom) - 1, len(top)))
        self._first = True

    def reshape(self, bottom, top):
        sel = bottom[-1]
        if sel.num_axes < 1 or sel.count_range(1) != 1:
            raise self.shape_error("selector (last bottom; all axes but the first must be 1)", sel.shape,
                                   (sel.shape[0] if sel.num_axes else "N",) + (1,) * max(sel.num_axes - 1, 0))
        for i, b in enumerate(bottom[:-1]):
            if b.num_axes < 1 or b.shape[0] != sel.shape[0]:
                raise self.shape_error("bottom %d (first axis must match the selector's %d items)"
                                       % (i, sel.shape[0]), b.shape, (sel.shape[0],) + b.shape[1:])
        xp = sel.xp
        self._idx = xp.nonzero(sel.data.reshape(-1) != 0)[0]
        n = sel.shape[0] if self._first else int(self._idx.shape[0])
        self._first = False
        for t, b in zip(top, bottom):
            t.reshape((n,) + b.shape[1:])

    def forward(self, bottom, top):
        for t, b in zip(top, bottom):
            t.data[...] = b.data[self._idx]

    def backward(self, top, propagate_down, bottom):
        if propagate_down[-1]:
            raise NetError("layer %r (Filter) cannot backpropagate to the selector input" % self.name)
        for t, b, down in zip(top, bottom, propagate_down):
            if down:
                b.diff[...] = 0
                b.diff[self._idx] = t.diff


@register("Parameter")
class ParameterLayer(Layer):
    """A learnable blob of ``parameter_param.shape`` (zeros until trained or loaded) as the top; no bottoms."""

    exact_num_bottom = 0
    exact_num_top = 1
    allow_in_place = False

    def setup(self, bottom, top):
        shape = tuple(int(d) for d in self.layer_param.parameter_param.shape.dim)
        if any(d < 0 for d in shape):
            raise NetError("layer %r (Parameter): parameter_param.shape %s has a negative dimension"
                           % (self.name, shape))
        if self.blobs:
            if tuple(self.blobs[0].shape) != shape:
                raise self.shape_error("parameter blob", self.blobs[0].shape, shape)
        else:
            self.blobs = [Blob(shape, dtype=top[0].dtype, xp=top[0].xp)]
        self.param_propagate_down = [True]

    def reshape(self, bottom, top):
        top[0].reshape(self.blobs[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.blobs[0].data

    def backward(self, top, propagate_down, bottom):
        # Caffe shares the diff instead (overwritten by the consumer); accumulating keeps iter_size > 1 exact.
        if self.param_propagate_down[0]:
            self.blobs[0].diff += top[0].diff
