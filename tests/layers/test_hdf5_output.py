"""HDF5Output (pycaffe_norm/layers/data_layers.py): bottoms 0 and 1 written as datasets ``data`` and ``label``."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

import pycaffe_norm as caffe
from pycaffe_norm.errors import NetError, ShapeError

NET = """
layer { name: "in" type: "Input" top: "x" top: "y" input_param { shape { dim: %d dim: 3 dim: 2 } shape { dim: %d } } }
layer { name: "out" type: "HDF5Output" bottom: "x" bottom: "y" hdf5_output_param { file_name: "%s" } }
"""


def make_net(tmp_path, out, n=4, m=None):
    p = tmp_path / "net.prototxt"
    p.write_text(NET % (n, n if m is None else m, out))
    return caffe.Net(str(p), caffe.TEST)


def test_rows_of_every_pass_are_appended_with_caffes_4d_shapes(tmp_path):
    out = tmp_path / "out.h5"
    out.write_bytes(b"not hdf5")  # truncated at setup, as Caffe's H5F_ACC_TRUNC
    net = make_net(tmp_path, out)
    rs = np.random.RandomState(0)
    xs, ys = [], []
    for _ in range(3):
        x, y = rs.randn(4, 3, 2).astype(np.float32), rs.randint(0, 5, 4).astype(np.float32)
        net.blobs["x"].data[...] = x
        net.blobs["y"].data[...] = y
        net.forward()
        xs.append(x)
        ys.append(y)
        with h5py.File(out, "r") as f:  # flushed after each pass: readable while the net holds the file
            assert f["data"].shape == (4 * len(xs), 3, 2, 1)
    layer = net.layer_dict["out"]
    assert layer.rows == 12 and not layer.blobs
    net.backward()  # no gradient, no error
    layer.close()
    with h5py.File(out, "r") as f:
        assert sorted(f.keys()) == ["data", "label"]
        assert f["data"].dtype == np.float32
        np.testing.assert_array_equal(f["data"][...], np.concatenate(xs).reshape(12, 3, 2, 1))
        np.testing.assert_array_equal(f["label"][...], np.concatenate(ys).reshape(12, 1, 1, 1))
    with pytest.raises(NetError, match="was closed"):
        net.forward()


def test_errors_name_the_layer(tmp_path):
    with pytest.raises(NetError, match="file_name is empty"):
        make_net(tmp_path, "")
    net = make_net(tmp_path, tmp_path / "a.h5", n=4, m=3)
    with pytest.raises(NetError, match="same batch size"):
        net.forward()
    held = make_net(tmp_path, tmp_path / "b.h5")
    with pytest.raises(NetError, match="failed to create HDF5 file"):  # Caffe's H5Fcreate fails the same way
        make_net(tmp_path, tmp_path / "b.h5")
    held.layer_dict["out"].close()
    net = make_net(tmp_path, tmp_path / "c.h5")
    net.forward()
    net.blobs["x"].reshape(4, 2, 2)
    with pytest.raises(ShapeError, match="one row"):
        net.forward()
