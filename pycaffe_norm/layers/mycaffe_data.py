"""MyCaffe's DataSequence layer: anchor, positive and negative items for siamese and triplet nets.

Its bottoms are the data and labels of any labelled source (a Data layer over an LMDB or LevelDB, HDF5Data, ...);
it keeps a per-label cache of the items it has seen (``cache_size`` per label, newest first) and, for each
anchor of the batch, copies a cached item of the same label (positive) and items of other labels (negatives)
into its tops, as MyCaffe's DataSequenceLayer does with its copy_batch / copy_sequence kernels.
"""
from __future__ import annotations

import numpy as np

from ..errors import NetError
from ..random import rng
from .base import Layer, register

_TRIES = 10    # MyCaffe draws a different index or label at most ten times before giving up


@register("DataSequence")
class DataSequenceLayer(Layer):
    """Tops: the anchors (the data itself), then a positive when k > 0, then k negatives (one when k = 0), then,
    with ``output_labels``, the labels (N, 2 + k, 1, 1): anchor, positive, negatives.

    With ``balance_matches`` and k = 0 (a siamese pair), the second top alternates: positives on even rows,
    negatives on odd rows, and the label row holds (anchor, that item's label). Random choices (MyCaffe's
    round((n - 1) * uniform) over cache slots or labels) come from pcn's generator, seeded by the solver's
    ``random_seed``. Labels are ``label_start .. label_start + label_count - 1``; with label_count 0 they are
    found in the first batch, which must then hold every label. No gradient flows to the bottoms.
    """

    exact_num_bottom = 2
    allow_in_place = False

    def allow_force_backward(self, bottom_index: int) -> bool:
        return False

    def setup(self, bottom, top):
        p = self.layer_param.data_sequence_param
        self.k = int(p.k)
        self.cache_size = int(p.cache_size)
        self.balance = bool(p.balance_matches)
        self.output_labels = bool(p.output_labels)
        self.label_count = int(p.label_count)
        self.label_start = int(p.label_start)
        if self.k < 0 or self.cache_size <= 0:
            raise NetError("layer %r (DataSequence): k must be >= 0 and cache_size > 0" % self.name)
        expected = self.k + 2 + int(self.output_labels)
        if len(top) != expected:
            raise NetError("layer %r (DataSequence): k %d%s needs %d tops (anchor, %s%s), got %d"
                           % (self.name, self.k, " with output_labels" if self.output_labels else "", expected,
                              "positive, %d negative(s)" % self.k if self.k else "negative",
                              ", labels" if self.output_labels else "", len(top)))
        self.cache = None

    def reshape(self, bottom, top):
        data, labels = bottom
        if data.num_axes < 1 or labels.count != data.shape[0]:
            raise self.shape_error("bottom 1 (one label per item)", labels.shape, (data.shape[0] if data.shape
                                                                                   else "N",))
        for t in top[:self.k + 2]:
            t.reshape(data.shape)
        if self.output_labels:
            top[-1].reshape((data.shape[0], 2 + self.k, 1, 1))

    def _start_cache(self, labels, xp, dim: int, dtype) -> None:
        if self.label_count == 0:
            found = sorted(set(int(v) for v in labels.tolist()))
            self.label_count, self.label_start = len(found), found[0]
        self.cache = xp.zeros((self.label_count, self.cache_size, dim), dtype=dtype)
        self.active = xp.zeros(self.label_count, dtype=np.int64)

    def forward(self, bottom, top):
        data, labels = bottom
        xp = data.xp
        num = data.shape[0]
        x = data.data.reshape(num, -1)
        lab = labels.data.reshape(-1).astype(np.int64)
        if self.cache is None:
            self._start_cache(lab, xp, x.shape[1], x.dtype)
        offset = lab - self.label_start
        bad = (offset < 0) | (offset >= self.label_count)
        if bool(bad.any()):
            raise NetError("layer %r (DataSequence): label %d is outside label_start %d .. %d"
                           % (self.name, int(lab[bad][0]), self.label_start,
                              self.label_start + self.label_count - 1))
        self._add_batch(x, offset, xp)
        top[0].data[...] = data.data
        label_rows = top[-1].data.reshape(num, -1) if self.output_labels else None
        generator = rng()
        if self.k > 0 or self.balance:
            target = top[1].data.reshape(num, -1)
            rows = xp.arange(num) if not self.balance else xp.arange(0, num, 2)
            target[rows] = self._positives(offset[rows], generator, xp)
            if label_rows is not None:
                label_rows[rows, 0] = lab[rows]
                label_rows[rows, 1] = lab[rows]
        # The first round of negatives goes to the next top (k > 0) or the shared second top (balanced pair);
        # further rounds (k > 1) fill tops 3.. and continue the same slot cursors.
        first_rows = xp.arange(1, num, 2) if self.balance else xp.arange(num)
        rounds = [(first_rows, 2 if self.k > 0 else 1)] + [(xp.arange(num), 2 + r) for r in range(1, self.k)]
        picks = [self._negative_labels(offset[rows], generator, xp) for rows, _ in rounds]
        slots = self._negative_slots(picks, xp)
        for r, ((rows, top_index), chosen, slot) in enumerate(zip(rounds, picks, slots)):
            top[top_index].data.reshape(num, -1)[rows] = self.cache[chosen, slot]
            if label_rows is not None:
                label_rows[rows, 0] = lab[rows]
                # A balanced first round overlays the positive's column, as MyCaffe does.
                column = 1 if (r == 0 and self.balance) else top_index
                label_rows[rows, column] = chosen + self.label_start

    def _add_batch(self, x, offset, xp) -> None:
        """MyCaffe's copy_batch: shift each seen label's cache down by its items in this batch, then write the
        batch's items at the top (in batch order; a label with more than cache_size items keeps its last ones)."""
        size = self.cache_size
        n_per_label = xp.bincount(offset, minlength=self.label_count)
        shift = n_per_label % (size + 1)          # MyCaffe's running count restarts at 0 past cache_size
        for label in xp.nonzero((self.active > 0) & (shift > 0))[0].tolist():   # over labels, not items
            s = int(shift[label])
            self.cache[label, s:] = self.cache[label, :size - s].copy()
        onehot = offset[:, None] == xp.arange(self.label_count)[None, :]
        rank = xp.cumsum(onehot, axis=0)[xp.arange(offset.shape[0]), offset] - 1
        kept = rank >= n_per_label[offset] - size
        self.cache[offset[kept], rank[kept] % size] = x[kept]
        self.active = xp.minimum(self.active + n_per_label, size)

    def _positives(self, offset, generator, xp):
        """A cached item of the anchor's label other than the anchor's own slot."""
        num = offset.shape[0]
        available = self.active[offset]
        onehot = offset[:, None] == xp.arange(self.label_count)[None, :]
        own = (xp.cumsum(onehot, axis=0)[xp.arange(num), offset] - 1) % available
        draws = xp.asarray(generator.uniform(0.0, 1.0, size=(num, _TRIES)))
        candidates = xp.rint((available[:, None] - 1) * draws).astype(np.int64)
        differs = candidates != own[:, None]
        if not bool(differs.any(axis=1).all()):
            raise NetError("layer %r (DataSequence): the cache holds a single item of label %d, so no positive "
                           "differs from the anchor; use a larger batch or cache_size"
                           % (self.name, int(offset[~differs.any(axis=1)][0]) + self.label_start))
        slot = candidates[xp.arange(num), differs.argmax(axis=1)]
        return self.cache[offset, slot]

    def _negative_labels(self, offset, generator, xp):
        """A label other than the anchor's for each row."""
        num = offset.shape[0]
        draws = xp.asarray(generator.uniform(0.0, 1.0, size=(num, _TRIES)))
        candidates = xp.rint((self.label_count - 1) * draws).astype(np.int64)
        differs = candidates != offset[:, None]
        if not bool(differs.any(axis=1).all()):
            raise NetError("layer %r (DataSequence): no label other than %d to draw a negative from (label_count "
                           "%d)" % (self.name, int(offset[0]) + self.label_start, self.label_count))
        return candidates[xp.arange(num), differs.argmax(axis=1)]

    def _negative_slots(self, picks, xp):
        """Each label's slot cursor, advancing over all rounds in order and wrapping at the label's item count."""
        chosen = xp.concatenate(picks)
        onehot = chosen[:, None] == xp.arange(self.label_count)[None, :]
        rank = xp.cumsum(onehot, axis=0)[xp.arange(chosen.shape[0]), chosen] - 1
        available = self.active[chosen]
        slot = xp.where(available > 0, rank % xp.maximum(available, 1), rank % self.cache_size)
        bounds = np.cumsum([0] + [int(p.shape[0]) for p in picks])
        return [slot[bounds[i]:bounds[i + 1]] for i in range(len(picks))]

    def backward(self, top, propagate_down, bottom):
        for blob, down in zip(bottom, propagate_down):
            if down:
                blob.diff[...] = 0
