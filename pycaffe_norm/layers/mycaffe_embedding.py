"""MyCaffe's embedding layers: Decode, AccuracyDecode, AccuracyEncoding, Knn and Debug.

They turn the embeddings of a siamese or triplet net into per-label distances, accuracies and class scores, as
MyCaffe's C# layers (MyCaffe.layers.beta.DecodeLayer, AccuracyDecodeLayer, AccuracyEncodingLayer, KnnLayer and
MyCaffe.layers.DebugLayer) do. None of them passes a gradient to its bottoms except Debug (an identity):
asked for one, they write zeros, which is what MyCaffe's empty backward leaves in a split branch.

Running label centroids (Decode's CENTROID target, AccuracyEncoding) follow MyCaffe's per-item update exactly,
including its quirks: the first item of a label starts the centroid at item * alpha, later items blend with
1 / (count + 1) until ``batch * cache_size`` items, then with the alpha the previous blend in the batch left,
(1 / (batch * cache_size) when there was none). Every item sees the centroids as updated up to and including
itself. The per-item recurrence is evaluated in closed form (products of the blend factors) so that no Python
loop runs over the batch.
"""
from __future__ import annotations

import logging
from typing import List

import numpy as np

from ..backend import array_module
from ..blob import Blob
from ..errors import NetError
from ..proto import caffe_pb2
from .base import Layer, register

log = logging.getLogger("pycaffe_norm")

_DP = caffe_pb2.DecodeParameter
_FLT_MAX = float(np.finfo(np.float32).max)


def _first_labels(blob: Blob, num: int, what: str):
    """The first label of each item (MyCaffe reads label[i * label_dim]), truncated to int like a C cast."""
    if blob.num_axes < 1 or blob.shape[0] != num:
        raise NetError("%s: the label blob %s needs one row per item (%d)" % (what, blob.shape, num))
    return blob.data.reshape(num, -1)[:, 0].astype(np.int64)


def running_centroids(x, lab, counts, centroids, item_count: int):
    """MyCaffe's per-item centroid update over one batch, vectorised.

    x (N, D) float64; lab (N,) labels in [0, L); counts (L,) items seen per label before the batch; centroids
    (L, D) before the batch. Returns (seen, final, saturated): seen[i, l] is label l's centroid as item i sees
    it (after the updates of items 0..i), final the centroids after the batch, saturated[i] whether item i's
    label had reached ``item_count`` items before it (MyCaffe's third branch).
    """
    xp = array_module(x)
    num, n_labels = lab.shape[0], centroids.shape[0]
    positions = xp.arange(num)
    onehot = lab[:, None] == xp.arange(n_labels)[None, :]
    running = xp.cumsum(onehot, axis=0)                      # items of each label up to and including i
    count_before = counts[lab] + running[positions, lab] - 1
    first = count_before == 0
    middle = (count_before > 0) & (count_before < item_count)
    own = 1.0 / (count_before + 1.0)
    # The blend factor of a first or saturated item is the one the last middle item before it (any label) set.
    n_middle = xp.cumsum(middle)
    middle_at = xp.nonzero(middle)[0]
    if middle_at.size:
        alpha = xp.where(n_middle > 0, own[middle_at[xp.maximum(n_middle - 1, 0)]], 1.0 / item_count)
    else:
        alpha = xp.full(num, 1.0 / item_count)
    alpha = xp.where(middle, own, alpha)
    keep = xp.where(first, 0.0, 1.0 - alpha)                  # weight of the old centroid
    reset = keep <= 0
    same = (lab[:, None] == lab[None, :]) & (positions[:, None] >= positions[None, :])   # j <= i, same label
    same_f = same.astype(np.float64)
    resets_up_to = same_f @ reset.astype(np.float64)
    log_keep = same_f @ xp.where(reset, 0.0, xp.log(xp.where(reset, 1.0, keep)))
    links = same & (resets_up_to[:, None] == resets_up_to[None, :])
    weights = xp.where(links, xp.exp(xp.minimum(log_keep[:, None] - log_keep[None, :], 0.0)), 0.0)
    after = weights @ (alpha[:, None] * x)
    untouched = (resets_up_to == 0)[:, None]
    after += xp.where(untouched, xp.exp(log_keep)[:, None] * centroids[lab], 0.0)
    # Label l's centroid as item i sees it: after its last item j <= i, or the batch's starting value.
    order = xp.argsort(lab, kind="stable")
    starts = xp.cumsum(onehot.sum(axis=0)) - onehot.sum(axis=0)
    last = order[xp.clip(starts[None, :] + running - 1, 0, num - 1)]
    seen = xp.where((running > 0)[:, :, None], after[last], centroids[None, :, :])
    saturated = count_before >= item_count
    return seen, seen[-1].copy(), saturated


class _NoGradientLayer(Layer):
    """A MyCaffe layer whose top has no gradient with respect to its bottoms: never forced to run backward."""

    allow_in_place = False

    def allow_force_backward(self, bottom_index: int) -> bool:
        return False


class _RunningStateLayer(_NoGradientLayer):
    """A _NoGradientLayer whose blobs are running state (centroids, stored items), not learned parameters: the
    solver never updates them."""

    def fixed_param_indices(self) -> List[int]:
        return list(range(len(self.blobs)))


def _check_labels(layer: Layer, lab, n_labels: int, hint: str) -> None:
    bad = (lab < 0) | (lab >= n_labels)
    if bool(bad.any()):
        raise NetError("layer %r (%s): label %d is outside [0, %d)%s"
                       % (layer.name, layer.type, int(lab[bad][0]), n_labels, hint))


@register("Decode")
class DecodeLayer(_RunningStateLayer):
    """Squared distances from each embedding to per-label targets: top (N, L, 1, 1), smallest = decoded label.

    Targets (``decode_param.target``): CENTROID, running centroids of the training embeddings; PREGEN, targets
    generated once and spread at least 2 * pregen_alpha apart (squared); KNN, the mean of the k smallest
    squared distances to the cached training embeddings of each label (MyCaffe fills that cache but, as its
    status never completes in KNN mode, outputs zeros; so does this layer). Parameter blobs, saved with the
    weights and shared with test nets: centroids (L, D, 1, 1), status (L, 1, 1, 1), counts (L, 1, 1, 1) and,
    for KNN, the cache (L, N * cache_size, D, 1). The solver never updates them. Ignored labels get FLT_MAX.

    L is fixed when the net is built: ``pregen_label_count`` when set, else 2 (MyCaffe's initial size; MyCaffe
    grows the table to the largest training label + 1 on the first batch, which would break the solver's
    history and the sharing with test nets). A larger label is an error naming that field.
    """

    min_bottom = 1
    max_bottom = 2
    min_top = 1
    max_top = 2

    def setup(self, bottom, top):
        p = self.layer_param.decode_param
        self.target = p.target
        self.ignore = [int(v) for v in p.ignore_label]
        self.k = int(p.k)
        self.cache_size = int(p.cache_size)
        if self.cache_size <= 0:
            raise NetError("layer %r (Decode): decode_param.cache_size must be > 0" % self.name)
        self.output_iteration = 300
        if self.target == _DP.PREGEN:
            self.output_iteration = 0
        elif p.enable_centroid_update:
            self.output_iteration = int(p.centroid_output_iteration)
            if self.output_iteration < 10:
                log.warning("layer %r (Decode): centroid_output_iteration %d; a value above 10 is recommended",
                            self.name, self.output_iteration)
        self.enc_dim = bottom[0].count_range(1)
        self.batch = bottom[0].shape[0]
        dtype, xp = bottom[0].dtype, bottom[0].xp
        n_labels = int(p.pregen_label_count) if p.pregen_label_count > 0 else 2
        if not self.blobs:
            self.blobs = [Blob((n_labels, self.enc_dim, 1, 1), dtype=dtype, xp=xp),
                          Blob((n_labels, 1, 1, 1), dtype=dtype, xp=xp),
                          Blob((n_labels, 1, 1, 1), dtype=dtype, xp=xp)]
            if self.target == _DP.KNN:
                self.blobs.append(Blob((n_labels, self.batch * self.cache_size, self.enc_dim, 1), dtype=dtype,
                                       xp=xp))
        n_labels = self.blobs[0].shape[0]
        expected = [(n_labels, self.enc_dim, 1, 1), (n_labels, 1, 1, 1), (n_labels, 1, 1, 1)]
        if self.target == _DP.KNN:
            expected.append((n_labels, self.batch * self.cache_size, self.enc_dim, 1))
        if [b.count for b in self.blobs] != [int(np.prod(e)) for e in expected]:
            raise NetError("layer %r (Decode): parameter blobs have shapes %s, expected %s"
                           % (self.name, [b.shape for b in self.blobs], expected))
        for b, e in zip(self.blobs, expected):
            b.reshape(e)
        self.n_labels = n_labels
        bad = [v for v in self.ignore if not 0 <= v < n_labels]
        if bad:
            raise NetError("layer %r (Decode): ignore_label %d is outside the %d labels" % (self.name, bad[0],
                                                                                          n_labels))
        self.param_propagate_down = [False] * len(self.blobs)
        self.iteration = 0
        self.pregen_pending = self.target == _DP.PREGEN
        self.pregen_alpha = float(p.pregen_alpha)
        self.enable_update = bool(p.enable_centroid_update)

    def reshape(self, bottom, top):
        num = bottom[0].shape[0]
        if bottom[0].count_range(1) != self.enc_dim:
            raise self.shape_error("bottom 0 (the encoding size is fixed at setup)", bottom[0].shape,
                                   (num, self.enc_dim))
        if len(bottom) > 1 and (bottom[1].num_axes < 1 or bottom[1].shape[0] != num):
            raise self.shape_error("bottom 1 (one label row per item)", bottom[1].shape, (num, "..."))
        if self.target == _DP.KNN and num != self.batch:
            raise self.shape_error("bottom 0 (the KNN cache is sized for the batch at setup)", bottom[0].shape,
                                   (self.batch, self.enc_dim))
        top[0].reshape((num, self.n_labels, 1, 1))
        if len(top) > 1:
            top[1].reshape(self.blobs[0].shape)

    def forward(self, bottom, top):
        xp = bottom[0].xp
        num = bottom[0].shape[0]
        x = bottom[0].data.reshape(num, -1).astype(np.float64)
        centroids = self.blobs[0].data.reshape(self.n_labels, -1)
        status = self.blobs[1].data.reshape(-1)
        counts = self.blobs[2].data.reshape(-1)
        item_count = num * self.cache_size
        seen = None
        training = self.phase == caffe_pb2.TRAIN
        if training:
            if len(bottom) < 2:
                raise NetError("layer %r (Decode): in TRAIN the labels (bottom 1) are needed" % self.name)
            lab = _first_labels(bottom[1], num, "layer %r (Decode)" % self.name)
            _check_labels(self, lab, self.n_labels, "; the centroid table is sized when the net is built: "
                          "set decode_param.pregen_label_count to the number of labels")
            if self.target == _DP.PREGEN and self.pregen_pending:
                centroids[...] = xp.asarray(self._pregen_targets(self.n_labels, self.enc_dim))
                self.pregen_pending = False
            old_counts = counts.astype(np.int64)
            if self.target == _DP.CENTROID and self.enable_update:
                seen, final, saturated = running_centroids(x, lab, old_counts, centroids.astype(np.float64),
                                                           item_count)
                centroids[...] = final
                done = lab[saturated]
                if self.ignore:
                    done = done[~xp.isin(done, xp.asarray(self.ignore))]
                status[done] = 1
            elif self.target in (_DP.CENTROID, _DP.PREGEN):
                status[...] = 1
            elif self.target == _DP.KNN:
                cache = self.blobs[3].data.reshape(self.n_labels, item_count, -1)
                onehot = lab[:, None] == xp.arange(self.n_labels)[None, :]
                rank = xp.cumsum(onehot, axis=0)[xp.arange(num), lab] - 1
                cache[lab, (old_counts[lab] + rank) % item_count] = bottom[0].data.reshape(num, -1)
            counts += xp.bincount(lab, minlength=self.n_labels).astype(counts.dtype)
        active = self.n_labels - len(self.ignore)
        if active <= 0:
            active = self.n_labels
        complete = int(round(float(status.sum()))) == active
        if self.target == _DP.KNN:
            dist = self._knn_distances(x) if complete else xp.zeros((num, self.n_labels))
        elif seen is not None:
            dist = ((x[:, None, :] - seen) ** 2).sum(axis=2)
        else:
            c = centroids.astype(np.float64)
            dist = ((x[:, None, :] - c[None, :, :]) ** 2).sum(axis=2)
        if self.ignore:
            dist[:, xp.asarray(self.ignore)] = _FLT_MAX
        top[0].data[...] = dist.reshape(top[0].shape)
        if len(top) > 1:
            if self.iteration >= self.output_iteration and complete:
                top[1].data[...] = self.blobs[0].data
            else:
                if not training:
                    log.warning("layer %r (Decode): the centroids are not complete; train the model first",
                                self.name)
                top[1].data[...] = 0
        self.iteration += 1

    def _knn_distances(self, x):
        """Mean of the k smallest squared distances from each item to the cached encodings of each label."""
        xp = array_module(x)
        cache = self.blobs[3].data.reshape(self.n_labels, -1, self.enc_dim).astype(np.float64)
        k = max(1, min(self.k, cache.shape[1]))
        out = xp.empty((x.shape[0], self.n_labels))
        for label in range(self.n_labels):     # a handful of labels; each step is one (N, cache) block
            d = ((x[:, None, :] - cache[label][None, :, :]) ** 2).sum(axis=2)
            out[:, label] = xp.sort(d, axis=1)[:, :k].mean(axis=1)
        return out

    def _pregen_targets(self, n_labels: int, dim: int) -> np.ndarray:
        """MyCaffe's createPreGenTargets: from zeros, push apart (uniform steps below min / 4) every target
        closer than min = 2 * pregen_alpha (squared distance) to an earlier one, until all pairs are farther."""
        from ..random import rng
        data = np.zeros((n_labels, dim))
        min_dist = 2.0 * self.pregen_alpha
        if n_labels < 2 or min_dist <= 0:
            return data
        generator = rng()
        while True:
            closest = np.inf
            for i in range(n_labels):     # setup-time, over labels only; each pass moves targets apart
                for j in range(n_labels):
                    if i == j:
                        continue
                    d = float(((data[i] - data[j]) ** 2).sum())
                    closest = min(closest, d)
                    if d < min_dist:
                        data[j] += generator.uniform(0.0, min_dist / 4, size=dim)
            if closest > min_dist:
                return data

    def backward(self, top, propagate_down, bottom):
        for blob, down in zip(bottom, propagate_down):
            if down:
                blob.diff[...] = 0


@register("AccuracyDecode")
class AccuracyDecodeLayer(_NoGradientLayer):
    """Accuracy of decoded distances (N, L): the label with the smallest distance against the first label of
    each item; accuracy_param.ignore_label skips items. top_k must be 1 and axis 1, as in MyCaffe."""

    exact_num_bottom = 2
    exact_num_top = 1

    def setup(self, bottom, top):
        ap = self.layer_param.accuracy_param
        if ap.top_k != 1 or ap.axis != 1:
            raise NetError("layer %r (AccuracyDecode): only top_k 1 and axis 1 are supported, got top_k %d axis %d"
                           % (self.name, ap.top_k, ap.axis))
        self.ignore_label = int(ap.ignore_label) if ap.HasField("ignore_label") else None

    def reshape(self, bottom, top):
        if bottom[0].num_axes < 2 or bottom[1].num_axes < 1 or bottom[0].shape[0] != bottom[1].shape[0]:
            raise self.shape_error("bottom 1 (one label row per decoded item)", bottom[1].shape,
                                   (bottom[0].shape[0], "..."))
        top[0].reshape(())

    def forward(self, bottom, top):
        xp = bottom[0].xp
        num = bottom[0].shape[0]
        dist = bottom[0].data.reshape(num, -1).astype(np.float32)
        lab = _first_labels(bottom[1], num, "layer %r (AccuracyDecode)" % self.name)
        decoded = xp.where(dist.min(axis=1) < _FLT_MAX, dist.argmin(axis=1), -1)
        counted = xp.ones(num, dtype=bool) if self.ignore_label is None else lab != self.ignore_label
        total = int(counted.sum())
        top[0].data[...] = float((counted & (decoded == lab)).sum()) / total if total else 0.0

    def backward(self, top, propagate_down, bottom):
        for blob, down in zip(bottom, propagate_down):
            if down:
                blob.diff[...] = 0


@register("AccuracyEncoding")
class AccuracyEncodingLayer(_NoGradientLayer):
    """Accuracy of embeddings against running centroids it builds itself (MyCaffe's AccuracyEncodingLayer).

    Each item updates its label's centroid (the same rule as Decode's CENTROID target, with
    decode_param.cache_size) and counts as correct when its nearest centroid, as updated so far, is its own
    label's. The table resets when a label above the largest seen arrives, as in MyCaffe. Labels: the first
    value of each row of bottom 1. top_k must be 1 and axis 1.
    """

    exact_num_bottom = 2
    exact_num_top = 1

    def setup(self, bottom, top):
        ap = self.layer_param.accuracy_param
        if ap.top_k != 1 or ap.axis != 1:
            raise NetError("layer %r (AccuracyEncoding): only top_k 1 and axis 1 are supported, got top_k %d "
                           "axis %d" % (self.name, ap.top_k, ap.axis))
        if ap.HasField("ignore_label"):
            log.warning("layer %r (AccuracyEncoding): ignore_label is not used by this layer", self.name)
        self.cache_size = int(self.layer_param.decode_param.cache_size)
        if self.cache_size <= 0:
            raise NetError("layer %r (AccuracyEncoding): decode_param.cache_size must be > 0" % self.name)
        self.enc_dim = bottom[0].count_range(1)
        xp = bottom[0].xp
        self.centroids = xp.zeros((2, self.enc_dim))
        self.counts = xp.zeros(2, dtype=np.int64)
        self.max_key = 0

    def reshape(self, bottom, top):
        num = bottom[0].shape[0]
        if bottom[0].count_range(1) != self.enc_dim:
            raise self.shape_error("bottom 0 (the encoding size is fixed at setup)", bottom[0].shape,
                                   (num, self.enc_dim))
        if bottom[1].num_axes < 1 or bottom[1].shape[0] != num:
            raise self.shape_error("bottom 1 (one label row per item)", bottom[1].shape, (num, "..."))
        top[0].reshape(())

    def forward(self, bottom, top):
        xp = bottom[0].xp
        num = bottom[0].shape[0]
        x = bottom[0].data.reshape(num, -1).astype(np.float64)
        lab = _first_labels(bottom[1], num, "layer %r (AccuracyEncoding)" % self.name)
        if bool((lab < 0).any()):
            raise NetError("layer %r (AccuracyEncoding): label %d is negative" % (self.name, int(lab.min())))
        top_label = int(lab.max())
        if top_label > self.max_key:
            self.centroids = xp.zeros((top_label + 1, self.enc_dim))
            self.counts = xp.zeros(top_label + 1, dtype=np.int64)
        _check_labels(self, lab, self.centroids.shape[0], "")
        seen, self.centroids, _ = running_centroids(x, lab, self.counts, self.centroids, num * self.cache_size)
        self.counts += xp.bincount(lab, minlength=self.counts.shape[0])
        self.max_key = max(self.max_key, top_label)
        dist = ((x[:, None, :] - seen) ** 2).sum(axis=2)
        top[0].data[...] = float((dist.argmin(axis=1) == lab).sum()) / num

    def backward(self, top, propagate_down, bottom):
        for blob, down in zip(bottom, propagate_down):
            if down:
                blob.diff[...] = 0


@register("Knn")
class KnnLayer(_RunningStateLayer):
    """k-nearest-neighbour class scores from stored training embeddings (MyCaffe's KnnLayer).

    TRAIN: stores the last ``max_stored_batches`` batches of (embedding, label) in its parameter blobs (info,
    then data_i, label_i pairs; saved with the weights, shared with test nets, never updated by the solver) and
    outputs zeros. TEST: for each item, the mean Euclidean distance to its k nearest stored items of each label
    (all of them when k <= 0 or too few), labels in ascending order in columns 0.., min-max scaled over the
    labels and inverted (1 = nearest): top (N, num_output, 1, 1). Where all labels are equally near (or only one
    is stored) every column is 1; MyCaffe divides 0 by 0 there.
    """

    min_bottom = 1
    max_bottom = 2
    min_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.knn_param
        if len(bottom) != 2:
            raise NetError("layer %r (Knn): needs two bottoms, the embeddings and the labels" % self.name)
        self.num_output, self.k, self.max_batches = int(p.num_output), int(p.k), int(p.max_stored_batches)
        if self.max_batches <= 0 or self.num_output <= 0:
            raise NetError("layer %r (Knn): num_output and max_stored_batches must be > 0" % self.name)
        self.batch = bottom[0].shape[0]
        dtype, xp = bottom[0].dtype, bottom[0].xp
        expected = [(1, 1, 1, 1)]
        for _ in range(self.max_batches):
            expected += [bottom[0].shape, bottom[1].shape]
        if not self.blobs:
            self.blobs = [Blob(shape, dtype=dtype, xp=xp) for shape in expected]
        if [b.count for b in self.blobs] != [int(np.prod(s)) for s in expected]:
            raise NetError("layer %r (Knn): parameter blobs have shapes %s, expected %s"
                           % (self.name, [b.shape for b in self.blobs], expected))
        for b, shape in zip(self.blobs, expected):
            b.reshape(shape)
        self.param_propagate_down = [False] * len(self.blobs)
        self.cursor = 0
        self.full = False

    def reshape(self, bottom, top):
        if bottom[0].shape != self.blobs[1].shape or bottom[1].count != self.blobs[2].count:
            raise self.shape_error("bottom 0 (the stored batches are sized at setup)", bottom[0].shape,
                                   self.blobs[1].shape)
        top[0].reshape((self.batch, self.num_output, 1, 1))

    def forward(self, bottom, top):
        if self.phase == caffe_pb2.TRAIN:
            if self.cursor == self.max_batches:
                self.full, self.cursor = True, 0
            self.blobs[1 + 2 * self.cursor].data[...] = bottom[0].data
            self.blobs[2 + 2 * self.cursor].data[...] = bottom[1].data
            self.cursor += 1
            self.blobs[0].data[...] = self.max_batches if self.full else self.cursor
            top[0].data[...] = 0
            return
        top[0].data[...] = 0
        stored = int(float(self.blobs[0].data.reshape(-1)[0]))
        if stored <= 0:
            return
        xp = bottom[0].xp
        num = bottom[0].shape[0]
        x = bottom[0].data.reshape(num, -1).astype(np.float64)
        items = xp.concatenate([self.blobs[1 + 2 * i].data.reshape(self.batch, -1) for i in range(stored)])
        labels = xp.concatenate([self.blobs[2 + 2 * i].data.reshape(-1) for i in range(stored)]).astype(np.int64)
        dist = xp.sqrt(((x[:, None, :] - items[None, :, :].astype(np.float64)) ** 2).sum(axis=2))
        keys = sorted(int(v) for v in set(labels.tolist()))
        if len(keys) > self.num_output:
            raise NetError("layer %r (Knn): the stored items hold %d labels, more than num_output %d"
                           % (self.name, len(keys), self.num_output))
        per_label = xp.empty((num, len(keys)))
        for column, key in enumerate(keys):     # over labels only
            d = xp.sort(dist[:, labels == key], axis=1)
            k = d.shape[1] if self.k <= 0 or self.k > d.shape[1] else self.k
            per_label[:, column] = d[:, :k].mean(axis=1)
        low, high = per_label.min(axis=1, keepdims=True), per_label.max(axis=1, keepdims=True)
        span = high - low
        scaled = xp.where(span > 0, (per_label - low) / xp.where(span > 0, span, 1), 0.0)
        top[0].data.reshape(num, -1)[:, :len(keys)] = 1.0 - scaled

    def backward(self, top, propagate_down, bottom):
        for blob, down in zip(bottom, propagate_down):
            if down:
                blob.diff[...] = 0


@register("Debug")
class DebugLayer(Layer):
    """Passes bottom 0 through unchanged (gradient too) and keeps copies of the last ``max_stored_batches``
    batches of data and labels, for inspection from Python: ``layer.data``, ``layer.labels`` (oldest first),
    ``layer.diffs`` and ``layer.load_count``. A batch is stored once per label row height (bottom 1's axis 2,
    1 for flat labels) when ``item_index`` is -1, or once when it names one of those rows, as in MyCaffe."""

    min_bottom = 2
    max_bottom = 3
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.debug_param
        self.max_batches = int(p.max_stored_batches)
        self.item_index = int(p.item_index)
        if self.max_batches <= 0:
            raise NetError("layer %r (Debug): debug_param.max_stored_batches must be > 0" % self.name)
        self.label_items = bottom[1].shape[2] if bottom[1].num_axes > 2 else 1
        self._data: list = []
        self._labels: list = []
        self._diffs: list = []
        self._cursor = 0
        self._last = 0

    def reshape(self, bottom, top):
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        stores = self.label_items if self.item_index < 0 else int(0 <= self.item_index < self.label_items)
        for _ in range(stores):     # at most the label height (usually 1): copies, not arithmetic
            if self._cursor == self.max_batches:
                self._cursor = 0
            data, labels = bottom[0].data.copy(), bottom[1].data.copy()
            if self._cursor < len(self._data):
                self._data[self._cursor], self._labels[self._cursor] = data, labels
                self._diffs[self._cursor] = None
            else:
                self._data.append(data)
                self._labels.append(labels)
                self._diffs.append(None)
            self._last = self._cursor
            self._cursor += 1
        if top[0] is not bottom[0]:
            top[0].data[...] = bottom[0].data

    def backward(self, top, propagate_down, bottom):
        if self.label_items == 1 and self._data:
            self._diffs[self._last] = top[0].diff.copy()
        if propagate_down[0] and top[0] is not bottom[0]:
            bottom[0].diff[...] = top[0].diff
        for blob, down in zip(bottom[1:], propagate_down[1:]):
            if down:
                raise NetError("layer %r (Debug) cannot backpropagate to the labels" % self.name)

    def _ordered(self, items: list) -> list:
        if len(items) < self.max_batches:
            return list(items)
        return items[self._cursor:] + items[:self._cursor]

    @property
    def data(self) -> list:
        """The stored data batches, oldest first."""
        return self._ordered(self._data)

    @property
    def labels(self) -> list:
        return self._ordered(self._labels)

    @property
    def diffs(self) -> list:
        """Top gradients of the stored batches (None until a backward pass reaches them)."""
        return self._ordered(self._diffs)

    @property
    def load_count(self) -> int:
        return len(self._data)
