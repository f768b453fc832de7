"""SSD-Caffe's detection test (``Solver::TestDetection``), used when the solver says ``eval_type: "detection"``.

Each test net output is a DetectionEvaluate top; its rows are pooled over ``test_iter`` batches and turned into
mAP with ``ap_version``, logged as SSD-Caffe logs it (``Test net output #i: detection_eval = mAP``).
"""
from __future__ import annotations

import logging

import numpy as np

from .. import backend
from ..errors import PcnError
from ..layers.detection import mean_average_precision

log = logging.getLogger("pycaffe_norm")

AP_VERSIONS = ("11point", "MaxIntegral", "Integral")


def test_detection(solver, test_net_id: int = 0) -> dict:
    """Runs ``test_iter`` batches of test net ``test_net_id``; returns {output name: mAP}."""
    p = solver.param
    if p.ap_version not in AP_VERSIONS:
        raise PcnError("solver ap_version %r is not one of %s" % (p.ap_version, ", ".join(AP_VERSIONS)))
    log.info("Iteration %d, Testing net (#%d)", solver.iter, test_net_id)
    net = solver.test_nets[test_net_id]
    n = int(p.test_iter[test_net_id])
    results = {name: [] for name in net.outputs}
    loss = 0.0
    for _ in range(n):
        if solver._test_interrupted():
            return {}
        loss += net.forward_loss()
        for name in net.outputs:
            rows = backend.to_numpy(net.blobs[name].data).astype(np.float64)
            if rows.ndim < 1 or rows.shape[-1] != 5:
                raise PcnError("eval_type \"detection\": test net output %r has shape %s; it must be a "
                               "DetectionEvaluate top (1, 1, K, 5)" % (name, rows.shape))
            results[name].append(rows.reshape(-1, 5))
    if p.test_compute_loss and n:
        log.info("Test loss: %.6g", loss / n)
    scores = {}
    for k, name in enumerate(net.outputs):
        per_class: dict = {}
        m_ap = mean_average_precision(results[name], p.ap_version, per_class)
        if p.show_per_class_result:
            for label in sorted(per_class):
                log.info("class%d: %.6g", label, per_class[label])
        log.info("    Test net output #%d: %s = %.6g", k, name, m_ap)
        scores[name] = m_ap
    return scores
