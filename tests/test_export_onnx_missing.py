"""``pcn export onnx`` without the onnx package: a one-line error naming the extra to install. Kept apart from
test_export_onnx.py, which is skipped when onnx or onnxruntime is missing, so that this runs either way."""
from __future__ import annotations

import pathlib
import sys

import pycaffe_norm as caffe
from pycaffe_norm.cli import main

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_export_without_onnx_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    model = str(ROOT / "models" / "lenet" / "lenet_deploy.prototxt")
    weights = str(tmp_path / "lenet.caffemodel")
    caffe.Net(model, caffe.TEST).save(weights)
    monkeypatch.setitem(sys.modules, "onnx", None)      # import onnx raises ImportError
    assert main(["export", "onnx", model, weights, str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("pcn: error: ")] == [
        "pcn: error: ONNX export needs the onnx package: pip install 'pycaffe_norm[onnx]'"]
    assert not (tmp_path / "x.onnx").exists()
