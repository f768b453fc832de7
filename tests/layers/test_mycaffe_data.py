"""DataSequence (MyCaffe): compared with a transcription of MyCaffe's copy_batch / copy_sequence kernels that
consumes the same uniform draws, and run behind an HDF5Data source in a net."""
from __future__ import annotations

import numpy as np
import pytest

import pycaffe_norm as caffe
from pycaffe_norm.blob import Blob
from pycaffe_norm.errors import NetError
from pycaffe_norm.proto import caffe_pb2
from tests.gradient_check import layer_from_text, make_blob


class KernelTranscription:
    """MyCaffe's Math::copy_batch and Math::copy_sequence, element by element."""

    def __init__(self, k, cache_size, label_count, label_start, balance, dim):
        self.k, self.cs, self.n, self.start, self.balance = k, cache_size, label_count, label_start, balance
        self.cache = np.zeros((label_count * cache_size, dim))
        self.cursors = np.zeros(2 * label_count, dtype=np.int64)

    def copy_batch(self, x, labels):
        n, cs, cur = self.n, self.cs, self.cursors
        cur[:n] = 0
        for label in labels:
            cur[label - self.start] += 1
            if cur[label - self.start] > cs:
                cur[label - self.start] = 0
        for i in range(n):
            if cur[n + i] > 0:
                count = cur[i]
                move = cs - count
                work = self.cache[i * cs:i * cs + move].copy()
                self.cache[i * cs + count:i * cs + count + move] = work
        cur[:n] = 0
        for i, label in enumerate(labels):
            o = label - self.start
            self.cache[o * cs + cur[o]] = x[i]
            cur[o] += 1
            if cur[o] >= cs:
                cur[o] = 0
            if cur[n + o] < cs:
                cur[n + o] += 1

    def copy_sequence(self, x, labels, tops, label_out, pos_draws, neg_draws):
        n, cs, cur, k = self.n, self.cs, self.cursors, self.k
        tops[0][...] = x
        positives = tops[1] if (k > 0 or self.balance) else None
        negatives = tops[2] if k > 0 else tops[1]
        width = k + 2
        if positives is not None:
            cur[:n] = 0
            j = 0
            for i, label in enumerate(labels):
                if self.balance and i % 2:
                    continue
                o = label - self.start
                count = cur[n + o]
                idx, tries = cur[o], 0
                while idx == cur[o] and tries < 10:
                    idx = int(round((count - 1) * pos_draws[j][tries]))
                    tries += 1
                assert idx != cur[o]
                positives[i] = self.cache[o * cs + idx]
                label_out[i * width] = label
                label_out[i * width + 1] = o + self.start
                cur[o] += 1
                if cur[o] == cur[n + o]:
                    cur[o] = 0
                j += 1
        cur[:n] = 0
        for r in range(max(k, 1)):
            target = negatives if r == 0 else tops[2 + r]
            j = 0
            for i, label in enumerate(labels):
                if r == 0 and self.balance and i % 2 == 0:
                    continue
                own = label - self.start
                o, tries = own, 0
                while o == own and tries < 10:
                    o = int(round((n - 1) * neg_draws[r][j][tries]))
                    tries += 1
                target[i] = self.cache[o * cs + cur[o]]
                if r == 0:
                    label_out[i * width] = label
                    column = 1 if self.balance else 1 + (1 if positives is not None else 0)
                    label_out[i * width + column] = o + self.start
                else:
                    label_out[i * width + 2 + r] = o + self.start
                cur[o] += 1
                if cur[o] == cur[n + o]:
                    cur[o] = 0
                j += 1


def run_case(k, balance, cache_size, label_count, batches, seed=0):
    num, dim = batches[0][0].shape
    text = ('type: "DataSequence" data_sequence_param { k: %d cache_size: %d balance_matches: %s label_count: %d '
            'label_start: 1 }' % (k, cache_size, "true" if balance else "false", label_count))
    layer = layer_from_text(text, name="seq")
    bottom = [make_blob(batches[0][0]), make_blob(batches[0][1])]
    top = [Blob((), dtype=np.float64) for _ in range(k + 3)]
    layer.initialize(bottom, top)
    ref = KernelTranscription(k, cache_size, label_count, 1, balance, dim)
    ref_tops = [np.zeros((num, dim)) for _ in range(k + 2)]
    ref_labels = np.zeros(num * (k + 2))
    for x, labels in batches:
        bottom[0].data[...], bottom[1].data[...] = x, labels
        caffe.set_random_seed(seed)
        layer.forward(bottom, top)
        # the same uniform draws the layer takes: positives (rows, 10), then each negative round (rows, 10)
        caffe.set_random_seed(seed)
        generator = np.random.RandomState(seed)
        pos_rows = (num + 1) // 2 if balance else num
        pos_draws = generator.uniform(0, 1, (pos_rows, 10)) if (k > 0 or balance) else None
        first = num // 2 if balance else num
        neg_draws = [generator.uniform(0, 1, (first if r == 0 else num, 10)) for r in range(max(k, 1))]
        ints = labels.astype(np.int64)
        ref.copy_batch(x, ints)
        ref.copy_sequence(x, ints, ref_tops, ref_labels, pos_draws, neg_draws)
        for t, expected in zip(top, ref_tops):
            np.testing.assert_array_equal(t.data.reshape(num, dim), expected)
        np.testing.assert_array_equal(top[-1].data.reshape(-1), ref_labels)
    return layer, top


def batches_of(num, dim, label_count, n_batches, seed=1):
    rng = np.random.RandomState(seed)
    out = []
    for _ in range(n_batches):
        # every label twice: MyCaffe finds no positive for a label cached only once
        labels = 1 + np.concatenate([np.arange(label_count), np.arange(label_count),
                                     rng.randint(0, label_count, num - 2 * label_count)])
        out.append((rng.randn(num, dim), rng.permutation(labels).astype(np.float64)))
    return out


@pytest.mark.parametrize("k, balance, cache_size", [(1, False, 4), (0, True, 3), (2, False, 5), (0, False, 4),
                                                    (1, True, 4)])
def test_data_sequence_matches_mycaffes_kernels(k, balance, cache_size):
    batches = batches_of(num=8, dim=3, label_count=3, n_batches=4)
    run_case(k, balance, cache_size, 3, batches)


def test_data_sequence_triplets_have_the_right_labels():
    batches = batches_of(num=10, dim=2, label_count=4, n_batches=3, seed=2)
    layer, top = run_case(1, False, 6, 4, batches, seed=5)
    x, labels = batches[-1]
    rows = top[3].data.reshape(10, 3)
    np.testing.assert_array_equal(rows[:, 0], labels)
    np.testing.assert_array_equal(rows[:, 1], labels)
    assert (rows[:, 2] != labels).all()
    seen = np.concatenate([b[0] for b in batches])
    seen_labels = np.concatenate([b[1] for b in batches])
    for t, column in ((top[1], 1), (top[2], 2)):     # each positive and negative is an item of its label
        for row, lab in zip(t.data.reshape(10, 2), rows[:, column]):
            assert any(np.array_equal(row, s) for s in seen[seen_labels == lab])


def test_data_sequence_errors():
    with pytest.raises(NetError, match="needs 4 tops"):
        layer = layer_from_text('type: "DataSequence" data_sequence_param { k: 1 }', name="seq")
        layer.initialize([make_blob(np.zeros((4, 2))), make_blob(np.zeros(4))], [Blob(()) for _ in range(3)])
    layer = layer_from_text('type: "DataSequence" data_sequence_param { k: 1 label_count: 2 }', name="seq")
    bottom = [make_blob(np.zeros((4, 2))), make_blob(np.array([0.0, 1, 5, 1]))]
    top = [Blob((), dtype=np.float64) for _ in range(4)]
    layer.initialize(bottom, top)
    with pytest.raises(NetError, match="label 5"):
        layer.forward(bottom, top)
    bottom[1].data[...] = [0, 1, 1, 1]                     # label 0 has a single cached item: no positive
    with pytest.raises(NetError, match="single item of label 0"):
        layer.forward(bottom, top)


def test_data_sequence_discovers_labels_from_the_first_batch():
    layer = layer_from_text('type: "DataSequence" data_sequence_param { k: 1 cache_size: 4 }', name="seq")
    bottom = [make_blob(np.arange(12.0).reshape(6, 2)), make_blob(np.array([3.0, 4, 5, 3, 4, 5]))]
    top = [Blob((), dtype=np.float64) for _ in range(4)]
    layer.initialize(bottom, top)
    layer.forward(bottom, top)
    assert (layer.label_start, layer.label_count) == (3, 3)


def test_data_sequence_behind_an_hdf5_source(tmp_path):
    import h5py

    rng = np.random.RandomState(3)
    data = rng.randn(12, 1, 2, 2)
    labels = np.arange(12) % 3
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["data"] = data.astype(np.float32)
        f["label"] = labels.astype(np.float32)
    (tmp_path / "list.txt").write_text(str(tmp_path / "d.h5") + "\n")
    net_file = tmp_path / "net.prototxt"
    net_file.write_text(
        'layer { name: "d" type: "HDF5Data" top: "data" top: "label" '
        'hdf5_data_param { source: "%s" batch_size: 6 } }\n'
        'layer { name: "seq" type: "DataSequence" bottom: "data" bottom: "label" top: "a" top: "p" top: "n" '
        'top: "lbl" data_sequence_param { k: 1 cache_size: 8 balance_matches: false label_count: 3 } }\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "a" top: "fa" param { name: "w" } '
        'inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 1 } } }\n'
        'layer { name: "ipp" type: "InnerProduct" bottom: "p" top: "fp" param { name: "w" } '
        'inner_product_param { num_output: 2 } }\n'
        'layer { name: "ipn" type: "InnerProduct" bottom: "n" top: "fn" param { name: "w" } '
        'inner_product_param { num_output: 2 } }\n'
        'layer { name: "loss" type: "TripletLoss" bottom: "fa" bottom: "fp" bottom: "fn" bottom: "lbl" '
        'top: "loss" triplet_loss_param { alpha: 5 } }\n' % (tmp_path / "list.txt"))
    caffe.set_random_seed(1)
    net = caffe.Net(str(net_file), caffe_pb2.TRAIN)
    for _ in range(3):
        loss = net.forward_backward()
        assert np.isfinite(loss) and loss > 0
        lbl = net.blobs["lbl"].data.reshape(6, 3)
        np.testing.assert_array_equal(lbl[:, 0], net.blobs["label"].data)
        assert (lbl[:, 2] != lbl[:, 0]).all()
    assert np.abs(net.params["ip"][0].diff).sum() > 0
