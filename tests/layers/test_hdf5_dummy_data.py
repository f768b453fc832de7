"""Data layers: HDF5Data (order, wrap-around, shuffling, resume position, path lookup, errors) and DummyData."""
from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
from google.protobuf import text_format

import pycaffe_norm as caffe
from pycaffe_norm.blob import Blob
from pycaffe_norm.errors import NetError, ShapeError
from pycaffe_norm.layers import create_layer
from pycaffe_norm.proto import caffe_pb2

TRAIN = caffe_pb2.TRAIN


def make_layer(text: str, phase=TRAIN):
    p = caffe_pb2.LayerParameter()
    text_format.Parse(text, p)
    return create_layer(p, phase)


def write_h5(path, n, start=0, item=(2, 3), **extra):
    """Rows whose values encode their global index: data[i] == start + i everywhere, label[i] == start + i."""
    rows = np.arange(start, start + n, dtype=np.float64)
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=np.broadcast_to(rows.reshape((n,) + (1,) * len(item)), (n,) + item))
        f.create_dataset("label", data=rows)
        for k, v in extra.items():
            f.create_dataset(k, data=v)
    return str(path)


def write_list(path, entries):
    path.write_text("".join(e + "\n" for e in entries))
    return str(path)


def hdf5_layer(source, batch_size, shuffle=False, tops=("data", "label"), dtype=np.float32):
    text = 'name: "h5" type: "HDF5Data" %s hdf5_data_param { source: "%s" batch_size: %d shuffle: %s }' % (
        " ".join('top: "%s"' % t for t in tops), source, batch_size, "true" if shuffle else "false")
    layer = make_layer(text)
    top = [Blob((), dtype=dtype) for _ in tops]
    layer.initialize([], top)
    return layer, top


def labels_of(layer, top, batches):
    out = [np.zeros(0)]
    for _ in range(batches):
        layer.forward([], top)
        out.append(top[1].data.copy())
    return np.concatenate(out)


@pytest.fixture
def one_file(tmp_path):
    write_h5(tmp_path / "a.h5", 10)
    return write_list(tmp_path / "list.txt", [str(tmp_path / "a.h5")])


@pytest.fixture
def two_files(tmp_path):
    write_h5(tmp_path / "a.h5", 3, start=0)
    write_h5(tmp_path / "b.h5", 5, start=100)
    return write_list(tmp_path / "list.txt", ["a.h5", "b.h5"])  # relative to the list file's folder


# --- HDF5Data: order and wrap-around ------------------------------------------------------------------------

def test_hdf5_shapes_and_first_batch(one_file):
    layer, top = hdf5_layer(one_file, 4)
    assert top[0].shape == (4, 2, 3) and top[1].shape == (4,)
    layer.forward([], top)
    np.testing.assert_array_equal(top[1].data, [0, 1, 2, 3])
    np.testing.assert_array_equal(top[0].data, np.broadcast_to(np.arange(4.0).reshape(4, 1, 1), (4, 2, 3)))
    assert top[0].dtype == np.float32


def test_hdf5_wraps_around_within_a_batch(one_file):
    layer, top = hdf5_layer(one_file, 4)
    got = labels_of(layer, top, 4)
    np.testing.assert_array_equal(got, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5])


def test_hdf5_batch_larger_than_file(one_file):
    layer, top = hdf5_layer(one_file, 25)
    layer.forward([], top)
    np.testing.assert_array_equal(top[1].data, np.arange(25) % 10)


def test_hdf5_walks_files_in_list_order(two_files):
    layer, top = hdf5_layer(two_files, 3)
    got = labels_of(layer, top, 4)
    np.testing.assert_array_equal(got, [0, 1, 2, 100, 101, 102, 103, 104, 0, 1, 2, 100])


def test_hdf5_float64_tops_and_integer_dataset(tmp_path):
    with h5py.File(tmp_path / "i.h5", "w") as f:
        f.create_dataset("data", data=np.arange(12, dtype=np.int32).reshape(6, 2))
        f.create_dataset("label", data=np.arange(6, dtype=np.uint8))
    source = write_list(tmp_path / "l.txt", ["i.h5"])
    layer, top = hdf5_layer(source, 2, dtype=np.float64)
    layer.forward([], top)
    assert top[0].dtype == np.float64
    np.testing.assert_array_equal(top[0].data, [[0, 1], [2, 3]])


def test_hdf5_top_names_pick_datasets(tmp_path):
    write_h5(tmp_path / "a.h5", 4, extra_w=np.arange(8.0).reshape(4, 2))
    source = write_list(tmp_path / "l.txt", ["a.h5"])
    layer, top = hdf5_layer(source, 2, tops=("extra_w", "label"))
    layer.forward([], top)
    np.testing.assert_array_equal(top[0].data, [[0, 1], [2, 3]])


# --- HDF5Data: shuffling ------------------------------------------------------------------------------------

def test_hdf5_shuffle_is_a_fresh_permutation_every_epoch(tmp_path):
    write_h5(tmp_path / "a.h5", 20)
    source = write_list(tmp_path / "l.txt", ["a.h5"])
    caffe.set_random_seed(11)
    layer, top = hdf5_layer(source, 5, shuffle=True)
    epochs = labels_of(layer, top, 12).reshape(3, 20)
    for e in epochs:
        np.testing.assert_array_equal(np.sort(e), np.arange(20))  # every row once per epoch
    assert not np.array_equal(epochs[0], np.arange(20))
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    # data and label rows stay together
    np.testing.assert_array_equal(top[0].data[:, 0, 0], top[1].data)


def test_hdf5_shuffle_is_reproducible_with_a_seed(two_files):
    runs = []
    for seed in (5, 5, 6):
        caffe.set_random_seed(seed)
        layer, top = hdf5_layer(two_files, 3, shuffle=True)
        runs.append(labels_of(layer, top, 16))
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_hdf5_shuffle_visits_every_file_each_pass(two_files):
    caffe.set_random_seed(3)
    layer, top = hdf5_layer(two_files, 4, shuffle=True)
    got = labels_of(layer, top, 10)  # 40 rows = 5 passes over 8 rows
    for p in got.reshape(5, 8):
        np.testing.assert_array_equal(np.sort(p), [0, 1, 2, 100, 101, 102, 103, 104])


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("done", [0, 1, 2, 5, 7])
def test_hdf5_restore_position_continues_like_an_uninterrupted_run(two_files, shuffle, done):
    caffe.set_random_seed(9)
    a, ta = hdf5_layer(two_files, 3, shuffle=shuffle)
    labels_of(a, ta, done)
    expected = labels_of(a, ta, 6)
    caffe.set_random_seed(9)
    b, tb = hdf5_layer(two_files, 3, shuffle=shuffle)
    labels_of(b, tb, 4)  # a position restore must not depend on where the layer was
    b.restore_position(done)
    np.testing.assert_array_equal(labels_of(b, tb, 6), expected)


def test_hdf5_shuffle_draws_are_independent_of_other_rng_users(one_file):
    caffe.set_random_seed(4)
    a, ta = hdf5_layer(one_file, 4, shuffle=True)
    ref = labels_of(a, ta, 5)
    caffe.set_random_seed(4)
    b, tb = hdf5_layer(one_file, 4, shuffle=True)
    caffe.random.rng().uniform(size=100)  # e.g. Dropout drawing between batches
    np.testing.assert_array_equal(labels_of(b, tb, 5), ref)


# --- HDF5Data: finding files --------------------------------------------------------------------------------

def test_hdf5_relative_paths_from_another_working_directory(tmp_path, monkeypatch):
    root = tmp_path / "repo"
    (root / "data").mkdir(parents=True)
    (root / "models" / "net").mkdir(parents=True)
    write_h5(root / "data" / "a.h5", 4)
    write_list(root / "data" / "list.txt", ["data/a.h5"])  # repository-relative, as Caffe run from the root needs
    for cwd in (root, root / "models" / "net"):
        monkeypatch.chdir(cwd)
        layer, top = hdf5_layer("data/list.txt", 2)
        layer.forward([], top)
        np.testing.assert_array_equal(top[1].data, [0, 1])
        assert os.path.samefile(layer.files[0], root / "data" / "a.h5")


def test_hdf5_working_directory_wins_as_in_caffe(tmp_path, monkeypatch):
    (tmp_path / "d").mkdir()
    write_h5(tmp_path / "a.h5", 4, start=0)
    write_h5(tmp_path / "d" / "a.h5", 4, start=50)
    write_list(tmp_path / "d" / "l.txt", ["a.h5"])
    monkeypatch.chdir(tmp_path)
    layer, top = hdf5_layer("d/l.txt", 2)
    layer.forward([], top)
    np.testing.assert_array_equal(top[1].data, [0, 1])


def test_hdf5_net_integration(two_files):
    text = ('name: "n" layer { name: "h" type: "HDF5Data" top: "data" top: "label" '
            'hdf5_data_param { source: "%s" batch_size: 4 } }' % two_files)
    param = text_format.Parse(text, caffe_pb2.NetParameter())
    net = caffe.Net(param, caffe.TEST)
    net.forward()
    np.testing.assert_array_equal(net.blobs["label"].data, [0, 1, 2, 100])
    assert net.blobs["data"].shape == (4, 2, 3)


# --- HDF5Data: errors ---------------------------------------------------------------------------------------

def test_hdf5_error_missing_list(tmp_path):
    with pytest.raises(NetError, match="source list file not found: .*nope.txt"):
        hdf5_layer(str(tmp_path / "nope.txt"), 2)


def test_hdf5_error_missing_h5(tmp_path):
    source = write_list(tmp_path / "l.txt", ["missing_file.h5"])
    with pytest.raises(NetError, match=r"'h5'.*missing_file\.h5.*l\.txt"):
        hdf5_layer(source, 2)


def test_hdf5_error_missing_dataset(tmp_path):
    write_h5(tmp_path / "a.h5", 4)
    source = write_list(tmp_path / "l.txt", ["a.h5"])
    with pytest.raises(NetError, match=r"a\.h5 has no dataset 'labels'.*datasets: data, label"):
        hdf5_layer(source, 2, tops=("data", "labels"))


def test_hdf5_error_row_counts_differ(tmp_path):
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f.create_dataset("data", data=np.zeros((5, 2)))
        f.create_dataset("label", data=np.zeros(4))
    source = write_list(tmp_path / "l.txt", ["a.h5"])
    with pytest.raises(NetError, match="different numbers of rows: data 5, label 4"):
        hdf5_layer(source, 2)


def test_hdf5_error_item_shapes_differ_between_files(tmp_path):
    write_h5(tmp_path / "a.h5", 2, item=(2, 3))
    write_h5(tmp_path / "b.h5", 2, item=(3, 3))
    source = write_list(tmp_path / "l.txt", ["a.h5", "b.h5"])
    layer, top = hdf5_layer(source, 2)
    with pytest.raises(ShapeError, match=r"b\.h5.*\(3, 3\), expected \(2, 3\)"):
        layer.forward([], top)  # the next file is loaded as soon as the last row of a.h5 is served


@pytest.mark.parametrize("text, match", [
    ("", "lists no .h5 files"),
    ("\n\n", "lists no .h5 files"),
])
def test_hdf5_error_empty_list(tmp_path, text, match):
    (tmp_path / "l.txt").write_text(text)
    with pytest.raises(NetError, match=match):
        hdf5_layer(str(tmp_path / "l.txt"), 2)


def test_hdf5_error_bad_params(one_file):
    with pytest.raises(NetError, match="batch_size must be > 0"):
        hdf5_layer(one_file, 0)
    with pytest.raises(NetError, match="does not transform data"):
        make_layer('name: "h" type: "HDF5Data" top: "data" transform_param { scale: 2 } '
                   'hdf5_data_param { source: "%s" batch_size: 2 }' % one_file).initialize([], [Blob(())])


def test_hdf5_error_not_hdf5(tmp_path):
    (tmp_path / "a.h5").write_text("not hdf5")
    source = write_list(tmp_path / "l.txt", ["a.h5"])
    with pytest.raises(NetError, match=r"cannot read HDF5 file .*a\.h5"):
        hdf5_layer(source, 2)


# --- DummyData ----------------------------------------------------------------------------------------------

def dummy(text, ntop=1, dtype=np.float64):
    layer = make_layer('name: "d" type: "DummyData" %s dummy_data_param { %s }'
                       % (" ".join('top: "t%d"' % i for i in range(ntop)), text))
    top = [Blob((), dtype=dtype) for _ in range(ntop)]
    layer.initialize([], top)
    return layer, top


def test_dummy_default_is_zeros_and_constant_fills_once():
    layer, top = dummy("shape { dim: 2 dim: 3 }")
    assert top[0].shape == (2, 3) and not top[0].data.any()
    layer, top = dummy('shape { dim: 4 } data_filler { type: "constant" value: 7 }')
    np.testing.assert_array_equal(top[0].data, 7)
    top[0].data[...] = -1
    layer.forward([], top)  # constant tops are filled once, at setup, as in Caffe
    np.testing.assert_array_equal(top[0].data, -1)


def test_dummy_random_fillers_refill_every_forward():
    caffe.set_random_seed(2)
    layer, top = dummy('shape { dim: 500 } data_filler { type: "uniform" min: 1 max: 3 }')
    layer.forward([], top)
    first = top[0].data.copy()
    layer.forward([], top)
    assert not np.array_equal(first, top[0].data)
    assert 1 <= top[0].data.min() and top[0].data.max() <= 3
    caffe.set_random_seed(2)
    layer2, top2 = dummy('shape { dim: 500 } data_filler { type: "uniform" min: 1 max: 3 }')
    layer2.forward([], top2)
    np.testing.assert_array_equal(top2[0].data, first)


def test_dummy_per_top_fillers_and_legacy_shapes():
    caffe.set_random_seed(1)
    layer, top = dummy('num: 2 channels: 3 height: 4 width: 5 num: 6 channels: 1 height: 1 width: 1 '
                       'data_filler { type: "gaussian" std: 2 } data_filler { type: "constant" value: 3 }', ntop=2)
    assert top[0].shape == (2, 3, 4, 5) and top[1].shape == (6, 1, 1, 1)
    layer.forward([], top)
    np.testing.assert_array_equal(top[1].data, 3)
    assert 1.0 < top[0].data.std() < 3.0


def test_dummy_one_shape_for_all_tops():
    _, top = dummy("shape { dim: 3 dim: 1 }", ntop=3)
    assert [t.shape for t in top] == [(3, 1)] * 3


@pytest.mark.parametrize("text, match", [
    ('shape { dim: 2 } data_filler { type: "constant" } data_filler { type: "constant" }', "2 data_filler"),
    ("shape { dim: 2 } shape { dim: 3 }", "2 shape entries for 3 tops"),
    ("shape { dim: 2 } num: 3 channels: 1 height: 1 width: 1", "either shape or num"),
    ("num: 3 num: 4 channels: 1 height: 1 width: 1", "2 num entries for 3 tops"),
])
def test_dummy_errors(text, match):
    with pytest.raises(NetError, match=match):
        dummy(text, ntop=3)
