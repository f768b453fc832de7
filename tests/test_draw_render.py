"""pycaffe_norm.draw_render: PNG, SVG and PDF drawings without Graphviz (caffe.draw.draw_net falls back to it)."""
from __future__ import annotations

import builtins
import io
import pathlib

import pytest

import pycaffe_norm as caffe
from pycaffe_norm import draw_render
from pycaffe_norm.errors import PcnError
from pycaffe_norm.proto import caffe_pb2
from pycaffe_norm.prototxt import read_text

ROOT = pathlib.Path(__file__).resolve().parents[1]
LENET = ROOT / "models" / "lenet" / "lenet_train_test.prototxt"


def lenet() -> caffe_pb2.NetParameter:
    return read_text(str(LENET), caffe_pb2.NetParameter(), "net prototxt")


@pytest.fixture
def no_graphviz(monkeypatch):
    monkeypatch.setattr(caffe.draw.shutil, "which", lambda name: None)


def test_graph_has_every_layer_and_blob_of_the_phase():
    nodes, edges = draw_render.net_graph(lenet(), caffe_pb2.TRAIN)
    assert nodes["conv1_Convolution"][0] == ["conv1", "(Convolution)", "kernel size: 5", "stride: 1", "pad: 0"]
    assert nodes["relu1_ReLU"][1] == caffe.draw.NEURON_LAYER_STYLE["fillcolor"]  # in place: green
    assert nodes["label_blob"][2] and not nodes["loss_SoftmaxWithLoss"][2]
    assert "accuracy_Accuracy" not in nodes  # TEST only
    assert ("conv1_Convolution", "conv1_blob", "20") in edges
    ranks = draw_render._ranks(nodes, edges)
    assert ranks["data_blob"] < ranks["conv1_Convolution"] < ranks["conv1_blob"] < ranks["pool1_Pooling"]
    # the in-place ReLU sits between ip1 and the layer that reads its output
    assert ranks["ip1_blob"] < ranks["relu1_ReLU"] < ranks["ip2_InnerProduct"]


def test_png_without_graphviz(no_graphviz):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    data = caffe.draw.draw_net(lenet(), "LR")
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = imread(io.BytesIO(data)).shape[:2]
    assert width > 2 * height  # left to right: long along x
    tall = imread(io.BytesIO(caffe.draw.draw_net(lenet(), "TB"))).shape
    assert tall[0] > 2 * tall[1]


def test_svg_and_pdf_files_without_graphviz(tmp_path, no_graphviz):
    pytest.importorskip("matplotlib")
    caffe.draw.draw_net_to_file(lenet(), str(tmp_path / "net.svg"), phase=caffe_pb2.TEST)
    svg = (tmp_path / "net.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    caffe.draw.draw_net_to_file(lenet(), str(tmp_path / "net.pdf"))
    assert (tmp_path / "net.pdf").read_bytes()[:5] == b"%PDF-"


def test_without_matplotlib_or_graphviz_the_error_says_what_to_install(monkeypatch, no_graphviz):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(PcnError, match=r"needs Graphviz's 'dot' program or matplotlib.*pycaffe_norm\[plot\]"):
        caffe.draw.draw_net(lenet(), "LR")
