"""tools/compute_image_mean.py, tools/draw_net.py and tools/extract_features.py on tiny inputs."""
from __future__ import annotations

import pathlib
import re
import shutil
import subprocess

import h5py
import numpy as np
import pytest

import pycaffe_norm as caffe
from pycaffe_norm.io.arrays import blobproto_to_array
from pycaffe_norm.proto import caffe_pb2
from tests.support import load_tool
from tests.support import write_lmdb as write_db

ROOT = pathlib.Path(__file__).resolve().parents[1]




# --- compute_image_mean ----------------------------------------------------------------------------------

def test_compute_image_mean_of_raw_and_float_records(tmp_path, capsys):
    tool = load_tool("compute_image_mean")
    images = np.random.RandomState(0).randint(0, 256, (7, 3, 4, 5)).astype(np.uint8)
    db = write_db(tmp_path / "raw", [caffe_pb2.Datum(channels=3, height=4, width=5, data=a.tobytes(), label=1)
                                     for a in images])
    out = tmp_path / "mean.binaryproto"
    assert tool.main([db, str(out)]) == 0
    blob = caffe_pb2.BlobProto.FromString(out.read_bytes())
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 3, 4, 5)
    mean = blobproto_to_array(blob)
    assert mean.shape == (1, 3, 4, 5)
    np.testing.assert_allclose(mean[0], images.mean(axis=0), rtol=1e-6)
    err = capsys.readouterr().err
    assert "Processed 7 files." in err and "Number of channels: 3" in err
    for c in range(3):
        assert "mean_value channel [%d]:%.6g" % (c, images[:, c].mean()) in err

    floats = np.random.RandomState(1).randn(3, 1, 2, 2).astype(np.float32)
    db = write_db(tmp_path / "float", [caffe_pb2.Datum(channels=1, height=2, width=2, float_data=a.ravel())
                                       for a in floats])
    assert tool.main([db]) == 0  # no output file: the means are only printed
    assert not list(tmp_path.glob("*.tmp*"))
    np.testing.assert_allclose(blobproto_to_array(tool.compute_mean(db))[0], floats.mean(axis=0), rtol=1e-5,
                               atol=1e-6)


def test_compute_image_mean_of_encoded_records_and_errors(tmp_path, capsys):
    Image = pytest.importorskip("PIL.Image")
    import io

    tool = load_tool("compute_image_mean")
    rgb = np.random.RandomState(2).randint(0, 256, (2, 3, 4, 3)).astype(np.uint8)
    encoded = []
    for a in rgb:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        encoded.append(caffe_pb2.Datum(data=buf.getvalue(), encoded=True))
    db = write_db(tmp_path / "enc", encoded)
    bgr = rgb[..., ::-1].transpose(0, 3, 1, 2)  # stored as OpenCV decodes: BGR
    np.testing.assert_allclose(blobproto_to_array(tool.compute_mean(db))[0], bgr.mean(axis=0), rtol=1e-6)

    mixed = write_db(tmp_path / "mixed", [caffe_pb2.Datum(channels=1, height=1, width=2, data=b"ab"),
                                          caffe_pb2.Datum(channels=1, height=1, width=3, data=b"abc")])
    assert tool.main([mixed, str(tmp_path / "m.binaryproto")]) == 2
    assert tool.main(["--backend", "leveldb", db]) == 2
    assert tool.main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "incorrect data field size" in err and "backend LEVELDB was asked for" in err and "not found" in err
    assert not (tmp_path / "m.binaryproto").exists()


# --- draw_net --------------------------------------------------------------------------------------------

NET = """
name: "tiny"
layer { name: "d" type: "Data" top: "data" top: "label" include { phase: TRAIN }
        data_param { source: "train_lmdb" batch_size: 64 backend: LMDB } }
layer { name: "d" type: "Data" top: "data" top: "label" include { phase: TEST }
        data_param { source: "test_lmdb" batch_size: 100 backend: LMDB } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" param { lr_mult: 1 } param { lr_mult: 2 }
        convolution_param { num_output: 20 kernel_size: 5 stride: 2 pad: 1 } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1" inner_product_param { num_output: 10 } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "acc" type: "Accuracy" bottom: "ip1" bottom: "label" top: "acc" include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" }
"""

STATEMENT = re.compile(r'^  ("(?:[^"\\]|\\.)*")( -> ("(?:[^"\\]|\\.)*"))? \[(\w+=("(?:[^"\\]|\\.)*")(, )?)+\];$')


def check_dot_syntax(text):
    """The subset of DOT the tool writes: a digraph header, attribute and node/edge statements, a closing brace."""
    lines = text.splitlines()
    assert re.match(r'^digraph "(?:[^"\\]|\\.)*" \{$', lines[0]) and lines[-1] == "}"
    assert re.match(r'^  rankdir="(LR|TB|BT|RL)";$', lines[1])
    for line in lines[2:-1]:
        assert STATEMENT.match(line), line


def test_draw_net_dot_text(tmp_path):
    tool = load_tool("draw_net")
    proto = tmp_path / "net.prototxt"
    proto.write_text(NET)
    out = tmp_path / "net.dot"
    assert tool.main([str(proto), str(out)]) == 0
    text = out.read_text()
    check_dot_syntax(text)
    assert '"conv1_Convolution" [label="conv1\\n(Convolution)\\nkernel size: 5\\nstride: 2\\npad: 1", ' \
           'shape="record", style="filled", fillcolor="#FF5050"];' in text
    assert '"pool1_Pooling" [label="pool1\\n(Pooling MAX)\\nkernel size: 2\\nstride: 2\\npad: 0"' in text
    assert '"relu1_ReLU" [label="relu1\\n(ReLU)", shape="record", style="filled", fillcolor="#90EE90"];' in text
    assert '"data_blob" [label="data", shape="octagon", style="filled", fillcolor="#E0E0E0"];' in text
    edges = re.findall(r'^  "(.*)" -> "(.*)" \[label="(.*)"\];$', text, re.M)
    assert ("d_Data", "data_blob", "Batch 64") in edges and ("d_Data", "data_blob", "Batch 100") in edges
    assert ("conv1_Convolution", "conv1_blob", "20") in edges and ("ip1_InnerProduct", "ip1_blob", "10") in edges
    assert ("ip1_blob", "relu1_ReLU", "") in edges and ("relu1_ReLU", "ip1_blob", "") in edges  # in place
    assert text.count('"d_Data" [') == 1  # TRAIN and TEST layers of one name and type share a box, as in Caffe

    assert tool.main(["--phase", "TRAIN", "--rankdir", "TB", "--display_lrm", str(proto), str(out)]) == 0
    train = out.read_text()
    check_dot_syntax(train)
    assert "acc_Accuracy" not in train and "Batch 100" not in train and "Batch 64" in train
    assert 'rankdir="TB"' in train
    assert 'label="conv1 (Convolution) kernel size: 5 stride: 2 pad: 1 lr mult: 1.0, 2.0"' in train
    assert tool.main(["--phase", "TEST", str(proto), str(out)]) == 0
    assert "acc_Accuracy" in out.read_text() and "Batch 64" not in out.read_text()

    if shutil.which("dot"):  # Graphviz parses and renders what the tool wrote
        subprocess.run(["dot", "-Tsvg", "-o", str(tmp_path / "net.svg"), str(out)], check=True)
        assert tool.main([str(proto), str(tmp_path / "net2.svg")]) == 0
        assert b"<svg" in (tmp_path / "net2.svg").read_bytes()


def test_draw_net_escapes_names_and_needs_dot_for_images(tmp_path, capsys, monkeypatch):
    tool = load_tool("draw_net")
    net = caffe_pb2.NetParameter(name='q"uote')
    layer = net.layer.add(name='a|b{c}<d>\\e "f"', type="Input", top=['x"y'])
    layer.input_param.shape.add(dim=[1])
    text = caffe.draw.net_to_dot(net)
    check_dot_syntax(text)
    assert '[label="a\\|b\\{c\\}\\<d\\>\\\\e \\"f\\"\\n(Input)"' in text
    if shutil.which("dot"):
        subprocess.run(["dot", "-Tplain"], input=text.encode(), check=True, capture_output=True)

    monkeypatch.setattr(caffe.draw.shutil, "which", lambda name: None)
    proto = tmp_path / "net.prototxt"
    proto.write_text(NET)
    assert tool.main([str(proto), str(tmp_path / "net.gif")]) == 2  # png, svg, pdf: matplotlib draws them
    assert "install Graphviz" in capsys.readouterr().err
    assert not (tmp_path / "net.gif").exists()


# --- extract_features ------------------------------------------------------------------------------------

FEATURE_NET = """
name: "feat"
layer { name: "in" type: "HDF5Data" top: "data" hdf5_data_param { source: "%s" batch_size: 3 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" }
                              bias_filler { type: "constant" value: 0.5 } } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
"""


def test_extract_features_stores_every_batch(tmp_path, capsys):
    tool = load_tool("extract_features")
    data = np.random.RandomState(3).randn(5, 2, 3).astype(np.float32)
    with h5py.File(tmp_path / "in.h5", "w") as f:
        f["data"] = data
    (tmp_path / "list.txt").write_text("in.h5\n")
    model = tmp_path / "feat.prototxt"
    model.write_text(FEATURE_NET % (tmp_path / "list.txt"))
    caffe.set_random_seed(1)
    net = caffe.Net(str(model), caffe.TEST)
    weights = tmp_path / "w.caffemodel"
    net.save(str(weights))
    expected = {"data": [], "ip": [], "prob": []}
    for _ in range(3):  # the same batches the tool will see: rows 0-2, 3-4 + 0, 1-3 of the file
        net.forward()
        for k in expected:
            expected[k].append(net.blobs[k].data.copy())

    out = tmp_path / "features.h5"
    assert tool.main(["--model", str(model), "--weights", str(weights), "--blobs", "ip,prob,data",
                      "--iterations", "3", "--out", str(out)]) == 0
    with h5py.File(out, "r") as f:
        assert sorted(f.keys()) == ["data", "ip", "prob"]
        for k, arrays in expected.items():
            assert f[k].shape == (9,) + arrays[0].shape[1:] and f[k].dtype == np.float32
            np.testing.assert_array_equal(f[k][...], np.concatenate(arrays))
        np.testing.assert_array_equal(f["data"][3:6], data[[3, 4, 0]])
    assert "Successfully extracted the features!" in capsys.readouterr().err

    assert tool.main(["--model", str(model), "--weights", str(weights), "--blobs", "prob", "--datasets", "p",
                      "--iterations", "1", "--out", str(out)]) == 0
    with h5py.File(out, "r") as f:
        assert list(f.keys()) == ["p"]
        np.testing.assert_array_equal(f["p"][...], expected["prob"][0])

    assert tool.main(["--model", str(model), "--weights", str(weights), "--blobs", "nope", "--iterations", "1",
                      "--out", str(tmp_path / "x.h5")]) == 2
    assert "Unknown feature blob name nope" in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists() and not list(tmp_path.glob(".tmp_*"))


def test_draw_module_is_pycaffes_caffe_draw():
    net = caffe_pb2.NetParameter(name="n")
    net.layer.add(name="in", type="Input", top=["x"]).input_param.shape.add(dim=[1, 2])
    net.layer.add(name="relu", type="ReLU", bottom=["x"], top=["x"])
    text = caffe.draw.draw_net(net, "TB", ext="dot").decode()
    assert text == caffe.draw.net_to_dot(net, "TB") and "rankdir=TB" in text.replace('"', "")
