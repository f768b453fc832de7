"""models/ssd_tiny: the SSD-style detector builds, trains a few steps on a tiny synthetic set and reports mAP."""
from __future__ import annotations

import logging

import numpy as np
import pytest

import pycaffe_norm as caffe
from tests.support import ROOT, load_tool

pytest.importorskip("PIL")


def test_ssd_tiny_trains_and_tests_with_detection_map(tmp_path, caplog):
    data = tmp_path / "data" / "ssd_tiny"
    load_tool("make_synthetic_detection").generate(str(data), 16, 25, 64, seed=2)
    net = (ROOT / "models" / "ssd_tiny" / "train_test.prototxt").read_text().replace(
        '"data/ssd_tiny/', '"%s/' % data)
    (tmp_path / "net.prototxt").write_text(net)
    solver = (ROOT / "models" / "ssd_tiny" / "solver.prototxt").read_text()
    solver = solver.replace('net: "models/ssd_tiny/train_test.prototxt"', 'net: "%s"' % (tmp_path / "net.prototxt"))
    solver = solver.replace('snapshot_prefix: "models/ssd_tiny/ssd_tiny"', 'snapshot_prefix: "%s"' % (tmp_path / "s"))
    solver = solver.replace("test_iter: 12", "test_iter: 1")
    (tmp_path / "solver.prototxt").write_text(solver)
    caffe.set_random_seed(1)
    s = caffe.get_solver(str(tmp_path / "solver.prototxt"))
    assert s.param.eval_type == "detection"
    s.step(2)
    assert np.isfinite(float(s.net.blobs["mbox_loss"].data))
    assert any(np.abs(p.diff).sum() > 0 for layer in s.net.params.values() for p in layer)
    with caplog.at_level(logging.INFO, logger="pycaffe_norm"):
        scores = s.test(0)
    assert 0.0 <= scores["detection_eval"] <= 1.0
    assert "Test net output #0: detection_eval = " in caplog.text
    dets = s.test_nets[0].blobs["detection_out"].data
    assert dets.shape[-1] == 7 and dets.shape[2] >= 1
