"""Decode, AccuracyDecode, AccuracyEncoding, Knn and Debug (MyCaffe's embedding layers).

Forward values are compared with item-by-item transcriptions of MyCaffe's C# loops written here.
"""
from __future__ import annotations

import numpy as np
import pytest

from pycaffe_norm.blob import Blob
from pycaffe_norm.errors import NetError
from pycaffe_norm.layers.mycaffe_embedding import running_centroids
from pycaffe_norm.proto import caffe_pb2
from tests.gradient_check import GradientChecker, layer_from_text, make_blob

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST
FLT_MAX = float(np.finfo(np.float32).max)


def gaussian(shape, seed):
    return np.random.RandomState(seed).randn(*shape)


def build(text, inputs, phase=TRAIN, n_tops=1, name="l"):
    layer = layer_from_text(text, phase=phase, name=name)
    bottom = [make_blob(a) for a in inputs]
    top = [Blob((), dtype=np.float64) for _ in range(n_tops)]
    layer.initialize(bottom, top)
    return layer, bottom, top


def centroid_loop(x, lab, counts, centroids, item_count, status=None, ignore=()):
    """MyCaffe's DecodeLayer/AccuracyEncodingLayer centroid loop, one item at a time (alpha carries over)."""
    alpha = 1.0 / item_count
    seen = []
    for i in range(len(lab)):
        label = int(lab[i])
        count = int(counts[label])
        if count == 0:
            centroids[label] = x[i] * alpha
        elif count < item_count:
            alpha = 1.0 / (count + 1)
            centroids[label] = alpha * x[i] + (1 - alpha) * centroids[label]
        else:
            centroids[label] = alpha * x[i] + (1 - alpha) * centroids[label]
            if status is not None and status[label] == 0 and label not in ignore:
                status[label] = 1
        counts[label] = count + 1
        seen.append(centroids.copy())
    return np.array(seen)


def test_running_centroids_match_mycaffes_item_loop_over_several_batches():
    rng = np.random.RandomState(0)
    n_labels, dim, num, cache = 3, 4, 6, 1          # item_count 6: every branch is reached within 4 batches
    counts, centroids = np.zeros(n_labels, np.int64), np.zeros((n_labels, dim))
    ref_counts, ref_centroids = counts.copy(), centroids.copy()
    saw_saturated = False
    for batch in range(5):
        x = rng.randn(num, dim)
        lab = rng.randint(0, n_labels, size=num)
        seen, final, saturated = running_centroids(x, lab, counts, centroids, num * cache)
        expected = centroid_loop(x, lab, ref_counts, ref_centroids, num * cache)
        np.testing.assert_allclose(seen, expected, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(final, ref_centroids, rtol=1e-10, atol=1e-13)
        counts = counts + np.bincount(lab, minlength=n_labels)
        centroids = final
        saw_saturated |= bool(saturated.any())
    assert saw_saturated


def test_running_centroids_match_the_loop_for_small_random_configurations():
    """Batches of one item and cache_size 1 (a blend factor of 1 restarts a centroid), single labels, ..."""
    rng = np.random.RandomState(11)
    for _ in range(60):
        num, cache, n_labels = rng.randint(1, 9), rng.randint(1, 3), rng.randint(1, 4)
        counts, centroids = np.zeros(n_labels, np.int64), np.zeros((n_labels, 2))
        ref_counts, ref_centroids = counts.copy(), centroids.copy()
        for _ in range(rng.randint(1, 6)):
            x, lab = rng.randn(num, 2), rng.randint(0, n_labels, num)
            seen, centroids, _ = running_centroids(x, lab, counts, centroids, num * cache)
            expected = centroid_loop(x, lab, ref_counts, ref_centroids, num * cache)
            np.testing.assert_allclose(seen, expected, rtol=1e-10, atol=1e-12)
            counts = counts + np.bincount(lab, minlength=n_labels)


# --- Decode ------------------------------------------------------------------------------------------------------
DECODE = 'type: "Decode" decode_param { target: CENTROID cache_size: 1 pregen_label_count: 3 %s }'


def test_decode_train_distances_and_state_match_mycaffe():
    rng = np.random.RandomState(1)
    num, dim = 6, 3
    x = rng.randn(num, dim)
    lab = np.array([[0, 1, 2], [1, 0, 2], [0, 2, 1], [2, 1, 0], [0, 1, 2], [1, 0, 2]], dtype=np.float64)
    layer, bottom, top = build(DECODE % "", [x, lab])
    counts, centroids, status = np.zeros(3), np.zeros((3, dim)), np.zeros(3)
    for step in range(8):        # label 2 comes once a batch: it saturates (6 items) in batch 7
        x = rng.randn(num, dim)
        bottom[0].data[...] = x
        layer.forward(bottom, top)
        seen = centroid_loop(x, lab[:, 0], counts, centroids, num, status)
        expected = ((x[:, None, :] - seen) ** 2).sum(axis=2)
        np.testing.assert_allclose(top[0].data.reshape(num, 3), expected, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(layer.blobs[0].data.reshape(3, dim), centroids, rtol=1e-10, atol=1e-13)
        np.testing.assert_array_equal(layer.blobs[2].data.reshape(-1), counts)
        np.testing.assert_array_equal(layer.blobs[1].data.reshape(-1), status)
    assert top[0].shape == (num, 3, 1, 1)
    assert status.sum() == 3


def test_decode_test_phase_uses_fixed_centroids_and_ignores_labels():
    x = gaussian((4, 2), 2)
    layer, bottom, top = build(DECODE % "ignore_label: 1", [x], phase=TEST)
    c = gaussian((3, 2), 3)
    layer.blobs[0].data[...] = c.reshape(3, 2, 1, 1)
    layer.forward(bottom, top)
    expected = ((x[:, None, :] - c[None]) ** 2).sum(axis=2)
    expected[:, 1] = FLT_MAX
    np.testing.assert_allclose(top[0].data.reshape(4, 3), expected, rtol=1e-12)
    np.testing.assert_array_equal(layer.blobs[0].data.reshape(3, 2), c)       # TEST never updates


def test_decode_centroid_output_waits_for_iteration_and_completion():
    x = gaussian((6, 2), 4)
    lab = np.tile([0.0, 1.0, 2.0], 2)
    layer, bottom, top = build(DECODE % "output_centroids: true centroid_output_iteration: 2", [x, lab],
                               n_tops=2)
    outputs = []
    for _ in range(4):
        layer.forward(bottom, top)
        outputs.append(top[1].data.copy())
    assert not outputs[0].any() and not outputs[1].any()          # iteration < 2
    np.testing.assert_array_equal(outputs[3], layer.blobs[0].data)  # complete: 6 items per label seen
    assert top[1].shape == (3, 2, 1, 1)


def test_decode_pregen_targets_are_spread_and_fixed():
    x = gaussian((5, 3), 5)
    lab = np.array([0.0, 1, 2, 3, 0])
    layer, bottom, top = build('type: "Decode" decode_param { target: PREGEN pregen_alpha: 2 '
                               'pregen_label_count: 4 }', [x, lab])
    layer.forward(bottom, top)
    targets = layer.blobs[0].data.reshape(4, 3).copy()
    d2 = ((targets[:, None] - targets[None]) ** 2).sum(axis=2)
    assert (d2[~np.eye(4, dtype=bool)] > 4.0).all()
    np.testing.assert_allclose(top[0].data.reshape(5, 4), ((x[:, None] - targets[None]) ** 2).sum(axis=2),
                               rtol=1e-12)
    layer.forward(bottom, top)
    np.testing.assert_array_equal(layer.blobs[0].data.reshape(4, 3), targets)
    assert layer.blobs[1].data.sum() == 4


def test_decode_knn_fills_its_cache_and_outputs_zeros_until_complete():
    x = gaussian((4, 2), 6)
    lab = np.array([0.0, 1, 0, 1])
    layer, bottom, top = build('type: "Decode" decode_param { target: KNN cache_size: 2 k: 2 }', [x, lab])
    layer.forward(bottom, top)
    cache = layer.blobs[3].data.reshape(2, 8, 2)
    np.testing.assert_array_equal(cache[0, :2], x[[0, 2]])
    np.testing.assert_array_equal(cache[1, :2], x[[1, 3]])
    assert not top[0].data.any()
    layer.blobs[1].data[...] = 1                                   # status complete (e.g. loaded weights)
    layer.forward(bottom, top)
    for i in range(4):
        for label in range(2):
            d = np.sort(((x[i] - cache[label]) ** 2).sum(axis=1))[:2].mean()
            assert top[0].data[i, label, 0, 0] == pytest.approx(d, rel=1e-12)


def test_decode_label_outside_the_table_names_pregen_label_count():
    layer, bottom, top = build('type: "Decode"', [gaussian((2, 2), 7), np.array([0.0, 5.0])])
    with pytest.raises(NetError, match="pregen_label_count"):
        layer.forward(bottom, top)


def test_decode_passes_no_gradient():
    layer, bottom, top = build(DECODE % "", [gaussian((3, 2), 8), np.array([0.0, 1, 2])])
    layer.forward(bottom, top)
    bottom[0].diff[...] = 5
    layer.backward(top, [True, False], bottom)
    assert not bottom[0].diff.any()
    assert not layer.allow_force_backward(0)


# --- AccuracyDecode ----------------------------------------------------------------------------------------------
def test_accuracy_decode_counts_nearest_labels():
    dist = np.array([[0.5, 2.0, 3.0], [1.0, 0.2, 0.2], [FLT_MAX, FLT_MAX, FLT_MAX], [4.0, 3.0, 1.0]])
    lab = np.array([[0, 9], [1, 9], [0, 9], [1, 9]], dtype=np.float64)
    layer, bottom, top = build('type: "AccuracyDecode"', [dist, lab])
    layer.forward(bottom, top)
    assert float(top[0].data) == pytest.approx(2 / 4)     # rows 0 and 1 (first minimum wins); row 2 decodes -1
    layer = build('type: "AccuracyDecode" accuracy_param { ignore_label: 1 }', [dist, lab])[0]
    layer.forward(bottom, top)
    assert float(top[0].data) == pytest.approx(1 / 2)


def test_accuracy_decode_refuses_top_k():
    with pytest.raises(NetError, match="top_k"):
        build('type: "AccuracyDecode" accuracy_param { top_k: 2 }', [np.zeros((2, 3)), np.zeros(2)])


# --- AccuracyEncoding --------------------------------------------------------------------------------------------
def test_accuracy_encoding_matches_mycaffes_loop_with_a_table_reset():
    rng = np.random.RandomState(9)
    num, dim = 6, 3
    layer, bottom, top = build('type: "AccuracyEncoding" decode_param { cache_size: 1 }',
                               [rng.randn(num, dim), np.zeros((num, 2))], phase=TEST)
    counts, centroids, max_key = {}, np.zeros((2, dim)), 0
    for step, n_labels in enumerate([2, 2, 3, 3, 3]):      # label 2 first appears at step 2: MyCaffe resets
        x = rng.randn(num, dim) + np.arange(num)[:, None] % n_labels * 2
        lab = np.stack([np.arange(num) % n_labels, np.zeros(num)], axis=1).astype(np.float64)
        bottom[0].data[...] = x
        bottom[1].data[...] = lab
        layer.forward(bottom, top)
        top_label = int(lab[:, 0].max())
        if top_label > max_key:
            centroids, counts = np.zeros((top_label + 1, dim)), {}
        count_arr = np.array([counts.get(label, 0) for label in range(centroids.shape[0])])
        seen = centroid_loop(x, lab[:, 0], count_arr, centroids, num)
        counts = {label: int(c) for label, c in enumerate(count_arr) if c}
        max_key = max(max_key, top_label)
        correct = (((x[:, None] - seen) ** 2).sum(axis=2).argmin(axis=1) == lab[:, 0]).sum()
        assert float(top[0].data) == pytest.approx(correct / num), step


# --- Knn ---------------------------------------------------------------------------------------------------------
def knn_loop(x, items, labels, k, num_output):
    out = np.zeros((len(x), num_output))
    keys = sorted(set(labels.astype(int).tolist()))
    for i in range(len(x)):
        means = []
        for key in keys:
            d = sorted(np.sqrt(((x[i] - items[j]) ** 2).sum()) for j in range(len(items)) if labels[j] == key)
            kk = len(d) if k <= 0 or k > len(d) else k
            means.append(sum(d[:kk]) / kk)
        lo, hi = min(means), max(means)
        for j, m in enumerate(means):
            out[i, j] = 1.0 - (m - lo) / (hi - lo)
    return out


@pytest.mark.parametrize("k", [2, 0, 50])
def test_knn_stores_train_batches_and_scores_test_items(k):
    rng = np.random.RandomState(10)
    text = 'type: "Knn" knn_param { num_output: 4 k: %d max_stored_batches: 2 }' % k
    train, tb, tt = build(text, [rng.randn(5, 3), np.zeros(5)], phase=TRAIN, name="knn")
    test, sb, st = build(text, [rng.randn(5, 3), np.zeros(5)], phase=TEST, name="knn")
    for mine, theirs in zip(test.blobs, train.blobs):
        mine.share_data(theirs)
    batches = []
    for step in range(3):                                # three batches into a ring of two
        x, lab = rng.randn(5, 3), rng.randint(0, 3, size=5).astype(np.float64)
        tb[0].data[...], tb[1].data[...] = x, lab
        train.forward(tb, tt)
        batches.append((x, lab))
    assert not tt[0].data.any()
    assert float(train.blobs[0].data.reshape(-1)[0]) == 2
    items = np.concatenate([batches[2][0], batches[1][0]])    # slot 0 holds batch 2, slot 1 batch 1
    labels = np.concatenate([batches[2][1], batches[1][1]])
    sb[0].data[...] = rng.randn(5, 3)
    test.forward(sb, st)
    expected = knn_loop(sb[0].data, items, labels, k, 4)
    np.testing.assert_allclose(st[0].data.reshape(5, 4), expected, rtol=1e-10, atol=1e-12)


def test_knn_test_without_stored_batches_outputs_zeros_and_too_many_labels_is_an_error():
    test, sb, st = build('type: "Knn" knn_param { num_output: 2 max_stored_batches: 1 }',
                         [gaussian((3, 2), 1), np.zeros(3)], phase=TEST)
    test.forward(sb, st)
    assert not st[0].data.any()
    test.blobs[0].data[...] = 1
    test.blobs[2].data[...] = np.array([0.0, 1.0, 2.0])
    with pytest.raises(NetError, match="num_output"):
        test.forward(sb, st)


# --- Debug -------------------------------------------------------------------------------------------------------
def test_debug_passes_data_and_gradient_through_and_keeps_the_last_batches():
    layer, bottom, top = build('type: "Debug" debug_param { max_stored_batches: 2 }',
                               [gaussian((3, 4), 1), np.array([0.0, 1, 2])])
    seen = []
    for step in range(3):
        bottom[0].data[...] = gaussian((3, 4), 20 + step)
        bottom[1].data[...] = step
        layer.forward(bottom, top)
        np.testing.assert_array_equal(top[0].data, bottom[0].data)
        seen.append(bottom[0].data.copy())
    assert layer.load_count == 2
    np.testing.assert_array_equal(layer.data[0], seen[1])
    np.testing.assert_array_equal(layer.data[1], seen[2])
    assert [float(lab[0]) for lab in layer.labels] == [1.0, 2.0]
    top[0].diff[...] = 3.0
    layer.backward(top, [True, False], bottom)
    np.testing.assert_array_equal(layer.diffs[1], top[0].diff)
    assert layer.diffs[0] is None
    assert GradientChecker().check(layer, bottom, top, check_bottom=[0], already_set_up=True) == 12


def test_debug_item_index_outside_the_label_rows_stores_nothing():
    layer, bottom, top = build('type: "Debug" debug_param { item_index: 3 }', [gaussian((2, 2), 1), np.zeros(2)])
    layer.forward(bottom, top)
    assert layer.load_count == 0
