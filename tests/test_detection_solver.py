"""The solver's SSD-Caffe detection test: ``eval_type: "detection"`` pools DetectionEvaluate rows into mAP."""
from __future__ import annotations

import logging

import numpy as np
import pytest

import pycaffe_norm as caffe
from pycaffe_norm.errors import PcnError

NET = """
name: "det_eval"
layer { name: "det" type: "Input" top: "det" input_param { shape { dim: 1 dim: 1 dim: 4 dim: 7 } } }
layer { name: "gt" type: "Input" top: "gt" input_param { shape { dim: 1 dim: 1 dim: 3 dim: 8 } } }
layer { name: "w" type: "Parameter" top: "w" parameter_param { shape { dim: 1 dim: 1 } } include { phase: TRAIN } }
layer { name: "t" type: "Input" top: "t" input_param { shape { dim: 1 dim: 1 } } include { phase: TRAIN } }
layer { name: "loss" type: "EuclideanLoss" bottom: "w" bottom: "t" top: "loss" include { phase: TRAIN } }
layer { name: "silence" type: "Silence" bottom: "det" bottom: "gt" include { phase: TRAIN } }
layer { name: "detection_eval" type: "DetectionEvaluate" bottom: "det" bottom: "gt" top: "detection_eval"
        include { phase: TEST } detection_evaluate_param { num_classes: 3 } }
"""

GT = [[0, 1, 0, 0.1, 0.1, 0.4, 0.4, 0], [0, 2, 0, 0.5, 0.5, 0.9, 0.9, 0], [0, 2, 1, 0.0, 0.5, 0.3, 0.9, 0]]
DET = [[0, 1, 0.9, 0.1, 0.1, 0.4, 0.4], [0, 2, 0.3, 0.5, 0.5, 0.9, 0.9], [0, 2, 0.8, 0.6, 0.0, 0.9, 0.2],
       [0, 1, 0.2, 0.1, 0.1, 0.4, 0.4]]


@pytest.fixture
def solver(tmp_path):
    (tmp_path / "net.prototxt").write_text(NET)

    def make(extra=""):
        (tmp_path / "solver.prototxt").write_text(
            'net: "%s" test_iter: 3 test_interval: 100 base_lr: 0.1 lr_policy: "fixed" max_iter: 1 '
            'snapshot_after_train: false snapshot_prefix: "%s" eval_type: "detection" %s'
            % (tmp_path / "net.prototxt", tmp_path / "s", extra))
        s = caffe.get_solver(str(tmp_path / "solver.prototxt"))
        s.test_nets[0].blobs["det"].data[...] = np.asarray(DET)[None, None]
        s.test_nets[0].blobs["gt"].data[...] = np.asarray(GT)[None, None]
        return s
    return make


@pytest.mark.parametrize("version, expected", [
    # Three batches of the same rows are pooled. Class 1: 3 tp at 0.9, then 3 fp at 0.2: AP 1. Class 2 (6 boxes):
    # 3 fp at 0.8, then 3 tp at 0.3, precision 1/4, 2/5, 1/2 at recall 1/6, 2/6, 3/6. Integral: the sum of
    # those times 1/6; MaxIntegral: 1/2 up to recall 1/2; 11point: 6 of 11 recall points reach precision 1/2.
    ("Integral", (1 + (1 / 4 + 2 / 5 + 1 / 2) / 6) / 2), ("MaxIntegral", (1 + 0.25) / 2),
    ("11point", (1 + 6 * 0.5 / 11) / 2),
])
def test_detection_map_is_logged_as_ssd_caffe(solver, caplog, version, expected):
    s = solver('ap_version: "%s" show_per_class_result: true' % version)
    with caplog.at_level(logging.INFO, logger="pycaffe_norm"):
        scores = s.test(0)
    assert scores["detection_eval"] == pytest.approx(expected, rel=1e-6)
    assert "    Test net output #0: detection_eval = %.6g" % scores["detection_eval"] in caplog.text
    assert "class1: 1" in caplog.text


def test_unknown_ap_version_is_a_clear_error(solver):
    with pytest.raises(PcnError, match="ap_version"):
        solver('ap_version: "VOC"').test(0)
