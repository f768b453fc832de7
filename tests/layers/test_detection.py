"""SSD detection layers: Permute, PriorBox, SmoothL1Loss, MultiBoxLoss, DetectionOutput, DetectionEvaluate and the
box utilities behind them.

SSD-Caffe's own outputs are compared in tests/test_reference_ssd.py; here: exhaustive float64 gradient checks of
every layer with a backward pass in each of its modes, forward values against small independent computations,
and the errors a user sees.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from pycaffe_norm.blob import Blob
from pycaffe_norm.errors import NetError
from pycaffe_norm.layers import bbox_util as bu
from pycaffe_norm.layers.detection import mean_average_precision
from tests.gradient_check import GradientChecker, layer_from_text, make_blob

CHECK = GradientChecker(step=1e-6, threshold=1e-6)


def run(text, inputs, propagate=None, top_diff=1.0):
    layer = layer_from_text(text)
    bottom = [make_blob(a) for a in inputs]
    top = [Blob((), dtype=np.float64)]
    layer.initialize(bottom, top)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    if propagate is not None:
        top[0].diff[...] = top_diff
        layer.backward(top, propagate, bottom)
    return layer, bottom, top


def grid_priors(fmap=3, sizes=((0.3, 0.3), (0.45, 0.3), (0.3, 0.45)), var=(0.1, 0.1, 0.2, 0.2)):
    """A (1, 2, P*4) prior blob: boxes of ``sizes`` centred on a fmap x fmap grid (written out independently
    of PriorBoxLayer)."""
    c = (np.arange(fmap) + 0.5) / fmap
    boxes = [[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2] for cy in c for cx in c for w, h in sizes]
    boxes = np.asarray(boxes)
    return np.stack([boxes.ravel(), np.resize(var, boxes.size)])[None]


GT = np.array([[0, 1, 0, 0.10, 0.12, 0.42, 0.45, 0],
               [0, 2, 1, 0.55, 0.50, 0.90, 0.95, 1],
               [1, 2, 0, 0.30, 0.28, 0.70, 0.62, 0],
               [-1, 0, 0, 0, 0, 0, 0, 0]])[None, None]


# --- box utilities ---------------------------------------------------------------------------------------------
def test_jaccard_matches_a_direct_computation():
    rng = np.random.RandomState(0)
    a = np.sort(rng.rand(7, 2, 2), axis=1).transpose(0, 2, 1).reshape(7, 4)[:, [0, 2, 1, 3]]
    b = np.sort(rng.rand(5, 2, 2), axis=1).transpose(0, 2, 1).reshape(5, 4)[:, [0, 2, 1, 3]]
    got = bu.jaccard(a, b)
    for i, j in itertools.product(range(7), range(5)):
        w = max(0.0, min(a[i, 2], b[j, 2]) - max(a[i, 0], b[j, 0]))
        h = max(0.0, min(a[i, 3], b[j, 3]) - max(a[i, 1], b[j, 1]))
        area = (a[i, 2] - a[i, 0]) * (a[i, 3] - a[i, 1]) + (b[j, 2] - b[j, 0]) * (b[j, 3] - b[j, 1])
        assert got[i, j] == pytest.approx(w * h / (area - w * h), abs=1e-15)
    assert bu.jaccard(np.array([[0, 0, 0.5, 0.5]]), np.array([[0.5, 0, 1, 0.5]]))[0, 0] == 0.0   # touching


@pytest.mark.parametrize("code", [bu.CORNER, bu.CENTER_SIZE, bu.CORNER_SIZE])
@pytest.mark.parametrize("in_target", [False, True])
def test_decode_inverts_encode(code, in_target):
    rng = np.random.RandomState(1)
    prior = np.array([[0.1, 0.2, 0.4, 0.6], [0.5, 0.5, 0.9, 0.7]])
    var = np.array([[0.1, 0.1, 0.2, 0.2]] * 2)
    gt = prior + rng.uniform(-0.05, 0.05, prior.shape)
    enc = bu.encode(prior, var, gt, code, in_target)
    np.testing.assert_allclose(bu.decode(prior, var, enc, code, in_target), gt, rtol=0, atol=1e-14)


def test_center_size_encoding_by_hand():
    prior = np.array([[0.2, 0.2, 0.6, 0.4]])      # centre (0.4, 0.3), size 0.4 x 0.2
    gt = np.array([[0.3, 0.2, 0.5, 0.6]])         # centre (0.4, 0.4), size 0.2 x 0.4
    enc = bu.encode(prior, np.array([[0.1, 0.1, 0.2, 0.2]]), gt, bu.CENTER_SIZE, False)
    np.testing.assert_allclose(enc, [[0.0, 0.1 / 0.2 / 0.1, np.log(0.5) / 0.2, np.log(2.0) / 0.2]], rtol=1e-12)


def test_bipartite_then_per_prediction_matching():
    gt = np.array([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])
    preds = np.array([[0.0, 0.0, 0.5, 0.5],      # IoU 1 with gt 0
                      [0.0, 0.0, 0.5, 0.6],      # IoU 0.83 with gt 0
                      [0.5, 0.4, 1.0, 1.0],      # IoU 0.83 with gt 1: the best for gt 1
                      [0.6, 0.6, 1.0, 1.0],      # IoU 0.64 with gt 1
                      [0.9, 0.0, 1.0, 0.1]])     # no overlap
    idx, ov = bu.match(gt, preds, per_prediction=False, overlap_threshold=0.5)
    np.testing.assert_array_equal(idx, [0, -1, 1, -1, -1])
    idx, ov = bu.match(gt, preds, per_prediction=True, overlap_threshold=0.7)
    np.testing.assert_array_equal(idx, [0, 0, 1, -1, -1])
    np.testing.assert_allclose(ov, [1.0, 0.25 / 0.3, 0.25 / 0.3, 0.64 / 1.0 * 0.25 / 0.25, 0.0], rtol=1e-12)


def test_nms_fast_keeps_the_best_of_each_cluster():
    boxes = np.array([[0, 0, 1, 1], [0, 0, 1, 0.9], [2, 2, 3, 3], [0, 0.05, 1, 1], [2.1, 2, 3, 3]], float)
    scores = np.array([0.9, 0.95, 0.5, 0.3, 0.6])
    np.testing.assert_array_equal(bu.nms_fast(boxes, scores, 0.1, 0.45, 1.0, -1), [1, 4])
    np.testing.assert_array_equal(bu.nms_fast(boxes, scores, 0.55, 0.45, 1.0, -1), [1, 4])
    np.testing.assert_array_equal(bu.nms_fast(boxes, scores, 0.1, 0.45, 1.0, 1), [1])
    np.testing.assert_array_equal(bu.nms_fast(boxes, scores, 0.1, 0.99, 1.0, -1), [1, 0, 4, 2, 3])


# --- Permute ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("order", [(0, 2, 3, 1), (3, 1), (), (0, 1, 2, 3)])
def test_permute_forward_and_gradient(order):
    x = np.random.RandomState(2).randn(2, 3, 4, 5)
    text = 'type: "Permute" permute_param { %s }' % " ".join("order: %d" % o for o in order)
    _, _, (t,) = run(text, [x])
    full = list(order) + [i for i in range(4) if i not in order]
    np.testing.assert_array_equal(t.data, np.transpose(x, full))
    layer = layer_from_text(text)
    CHECK.check(layer, [make_blob(x)], [Blob((), dtype=np.float64)])


@pytest.mark.parametrize("order, message", [("order: 4", "less than"), ("order: 1 order: 1", "repeats")])
def test_permute_bad_order(order, message):
    with pytest.raises(NetError, match=message):
        run('type: "Permute" permute_param { %s }' % order, [np.zeros((2, 3, 4, 5))])


# --- PriorBox --------------------------------------------------------------------------------------------------
def test_prior_box_by_hand():
    text = ('type: "PriorBox" prior_box_param { min_size: 10.7 max_size: 40.2 aspect_ratio: 2 aspect_ratio: 2 '
            'aspect_ratio: 0.5 flip: true variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 }')
    _, _, (t,) = run(text, [np.zeros((1, 1, 1, 2)), np.zeros((1, 3, 20, 40))])
    # one row of two cells, step 20 x 20, centres (10, 10) and (30, 10); sizes 10 (truncated), sqrt(10*40) = 20,
    # then ratio 2 (14.14 x 7.07) and its flip 0.5; the repeated 2 and the given 0.5 are duplicates
    r = np.sqrt(2.0)
    sizes = [(10, 10), (20, 20), (10 * r, 10 / r), (10 / r, 10 * r)]
    want = [[(cx - w / 2) / 40, (10 - h / 2) / 20, (cx + w / 2) / 40, (10 + h / 2) / 20]
            for cx in (10, 30) for w, h in sizes]
    assert t.shape == (1, 2, 32)
    np.testing.assert_allclose(t.data[0, 0], np.ravel(want), rtol=1e-6)
    np.testing.assert_allclose(t.data[0, 1], np.tile([0.1, 0.1, 0.2, 0.2], 8), rtol=1e-7)


@pytest.mark.parametrize("param, message", [
    ("max_size: 10", "min_size"), ("min_size: 10 max_size: 5", "greater than"),
    ("min_size: 10 img_size: 30 img_h: 30 img_w: 30", "not both"), ("min_size: 10 step: 8 step_h: 8 step_w: 8",
                                                                     "not both"),
    ("min_size: 10 variance: 0.1 variance: 0.2", "one variance or four"),
])
def test_prior_box_bad_parameters(param, message):
    with pytest.raises(NetError, match=message):
        run('type: "PriorBox" prior_box_param { %s }' % param, [np.zeros((1, 1, 2, 2)), np.zeros((1, 3, 8, 8))])


# --- SmoothL1Loss ----------------------------------------------------------------------------------------------
def test_smooth_l1_forward_and_gradients():
    rng = np.random.RandomState(4)
    a, b = rng.randn(3, 8) * 1.5, rng.randn(3, 8)
    d = a - b
    d[np.abs(np.abs(d) - 1) < 0.01] += 0.05
    a = b + d
    _, _, (t,) = run('type: "SmoothL1Loss"', [a, b])
    want = np.where(np.abs(d) < 1, 0.5 * d * d, np.abs(d) - 0.5).sum() / 3
    assert float(t.data) == pytest.approx(want, rel=1e-14)
    layer = layer_from_text('type: "SmoothL1Loss"')
    CHECK.check(layer, [make_blob(a), make_blob(b)], [Blob((), dtype=np.float64)])
    w = (rng.rand(3, 8) > 0.4).astype(np.float64)     # 0/1 weights: SSD's backward is then exact
    layer = layer_from_text('type: "SmoothL1Loss"')
    CHECK.check(layer, [make_blob(a), make_blob(b), make_blob(w)], [Blob((), dtype=np.float64)],
                check_bottom=[0, 1])


# --- MultiBoxLoss ----------------------------------------------------------------------------------------------
def mbox_inputs(num_classes=3, loc_classes=1, seed=7, priors=None):
    priors = grid_priors() if priors is None else priors
    n_pri = priors.shape[2] // 4
    rng = np.random.RandomState(seed)
    loc = rng.randn(2, n_pri * loc_classes * 4) * 0.5
    conf = rng.randn(2, n_pri * num_classes)
    return [loc, conf, priors, GT]


def mbox_text(extra="", loss_param=""):
    return ('type: "MultiBoxLoss" propagate_down: true propagate_down: true propagate_down: false '
            'propagate_down: false %s multibox_loss_param { num_classes: 3 %s %s }'
            % (loss_param, "" if "code_type" in extra else "code_type: CENTER_SIZE", extra))


MODES = {
    "ssd300": "",
    "bipartite_l2_corner": "match_type: BIPARTITE loc_loss_type: L2 code_type: CORNER",
    "logistic_corner_size": "conf_loss_type: LOGISTIC code_type: CORNER_SIZE neg_pos_ratio: 2",
    "no_mining_full": "mining_type: NONE",
    "hard_example": "mining_type: HARD_EXAMPLE sample_size: 12 loc_weight: 0.5",
    "hard_example_nms": "mining_type: HARD_EXAMPLE sample_size: 20 nms_param { nms_threshold: 0.5 top_k: 30 }",
    "no_difficult_bp_inside": "use_difficult_gt: false bp_inside: true ignore_cross_boundary_bbox: true",
    "match_decoded": "use_prior_for_matching: false overlap_threshold: 0.3",
    "max_negative_nms": "nms_param { nms_threshold: 0.4 } use_prior_for_nms: true neg_overlap: 0.3",
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_multibox_loss_gradient(mode):
    layer = layer_from_text(mbox_text(MODES[mode]))
    bottom = [make_blob(a) for a in mbox_inputs()]
    CHECK.check(layer, bottom, [Blob((), dtype=np.float64)], check_bottom=[0, 1])
    assert layer.num_matches > 0


@pytest.mark.parametrize("norm", ["FULL", "NONE"])
def test_multibox_loss_gradient_per_class_locations(norm):
    text = ('type: "MultiBoxLoss" loss_param { normalization: %s } multibox_loss_param { num_classes: 3 '
            'share_location: false mining_type: NONE code_type: CENTER_SIZE }' % norm)
    layer = layer_from_text(text)
    bottom = [make_blob(a) for a in mbox_inputs(loc_classes=3)]
    CHECK.check(layer, bottom, [Blob((), dtype=np.float64)], check_bottom=[0, 1])


def test_multibox_loss_variance_in_target_keeps_ssd_gradient():
    """With encode_variance_in_target SSD divides predictions and targets by the variance but copies the
    gradient back without that factor: the loc gradient is the exact one times the variance."""
    text = mbox_text("encode_variance_in_target: true mining_type: NONE")
    layer, bottom, _ = run(text, mbox_inputs(), propagate=[True, True, False, False])
    analytic = bottom[0].diff.copy().reshape(2, -1, 4)
    priors_var = mbox_inputs()[2][0, 1].reshape(-1, 4)
    loc = bottom[0].data.copy()
    numeric = np.zeros_like(loc)
    for k in range(loc.size):
        for s in (1, -1):
            b = [make_blob(a) for a in mbox_inputs()]
            b[0].data.reshape(-1)[k] += s * 1e-6
            top = [Blob((), dtype=np.float64)]
            fresh = layer_from_text(text)
            fresh.initialize(b, top)
            fresh.forward(b, top)
            numeric.reshape(-1)[k] += s * float(top[0].data) / 2e-6
    np.testing.assert_allclose(analytic, numeric.reshape(2, -1, 4) * priors_var[None], rtol=1e-6, atol=1e-9)


def test_multibox_loss_by_hand():
    """One image, one ground truth, two priors; no mining: loss = (SmoothL1 of the matched offsets + the softmax
    loss of both priors) / 1 match."""
    priors = np.array([[[0.1, 0.1, 0.5, 0.5, 0.6, 0.6, 0.9, 0.9], [1, 1, 1, 1, 1, 1, 1, 1]]], float)
    gt = np.array([[[[0, 1, 0, 0.1, 0.15, 0.55, 0.5, 0]]]])
    loc = np.array([[0.05, 0.02, 0.1, -0.1, 0.3, 0.3, 0.3, 0.3]])
    conf = np.array([[0.2, 1.0, -0.5, 0.3]])
    text = ('type: "MultiBoxLoss" multibox_loss_param { num_classes: 2 mining_type: NONE code_type: CORNER }')
    _, bottom, (t,) = run(text, [loc, conf, priors, gt], propagate=[True, True, False, False])
    d = loc[0, :4] - (gt[0, 0, 0, 3:7] - priors[0, 0, :4])
    loc_loss = np.where(np.abs(d) < 1, 0.5 * d * d, np.abs(d) - 0.5).sum()
    p0 = np.exp(conf[0, :2]) / np.exp(conf[0, :2]).sum()
    p1 = np.exp(conf[0, 2:]) / np.exp(conf[0, 2:]).sum()
    assert float(t.data) == pytest.approx(loc_loss - np.log(p0[1]) - np.log(p1[0]), rel=1e-12)
    np.testing.assert_allclose(bottom[0].diff[0, :4], d, rtol=1e-12)
    np.testing.assert_array_equal(bottom[0].diff[0, 4:], 0)
    np.testing.assert_allclose(bottom[1].diff[0], np.concatenate([p0 - [0, 1], p1 - [1, 0]]), rtol=1e-12)


def test_multibox_loss_mines_three_negatives_per_positive():
    layer, bottom, _ = run(mbox_text(), mbox_inputs(), propagate=[True, True, False, False])
    conf_rows = layer._conf_rows
    assert len(conf_rows) == layer.num_matches + min(3 * layer.num_matches, len(conf_rows))
    touched = np.abs(bottom[1].diff.reshape(2, -1, 3)).sum(axis=2) > 0
    assert touched.sum() == len(conf_rows)


def test_multibox_loss_errors():
    with pytest.raises(NetError, match="num_classes"):
        run('type: "MultiBoxLoss"', mbox_inputs())
    with pytest.raises(NetError, match="prior or label"):
        run('type: "MultiBoxLoss" propagate_down: true propagate_down: true propagate_down: true '
            'propagate_down: false multibox_loss_param { num_classes: 3 }', mbox_inputs())
    with pytest.raises(NetError, match="background label"):
        bad = mbox_inputs()
        bad[3] = GT.copy()
        bad[3][0, 0, 0, 1] = 0
        run(mbox_text(), bad)
    with pytest.raises(NetError, match="does not hold"):
        run(mbox_text(), [np.zeros((2, 12)), *mbox_inputs()[1:]])
    with pytest.raises(NetError, match="share_location"):
        run('type: "MultiBoxLoss" multibox_loss_param { num_classes: 3 share_location: false }',
            mbox_inputs(loc_classes=3))


# --- DetectionOutput -------------------------------------------------------------------------------------------
def det_out(text_extra, loc, conf, priors):
    text = ('type: "DetectionOutput" detection_output_param { num_classes: 3 code_type: CORNER '
            'nms_param { nms_threshold: 0.45 } %s }' % text_extra)
    _, _, (t,) = run(text, [loc, conf, priors])
    return t.data.reshape(-1, 7)


def test_detection_output_by_hand():
    priors = np.array([[[0.1, 0.1, 0.5, 0.5, 0.12, 0.1, 0.5, 0.5, 0.6, 0.6, 0.9, 0.9],
                        [1.0] * 12]])
    loc = np.zeros((1, 12))
    loc[0, 8] = 0.05                                      # prior 2 decodes to [0.65, 0.6, 0.9, 0.9]
    conf = np.array([[0.1, 0.8, 0.1,                      # prior 0: class 1
                      0.2, 0.7, 0.1,                      # prior 1: overlaps prior 0, suppressed in class 1
                      0.3, 0.3, 0.4]])                    # prior 2: both classes
    rows = det_out("confidence_threshold: 0.25", loc, conf, priors)
    want = [[0, 1, 0.8, 0.1, 0.1, 0.5, 0.5], [0, 1, 0.3, 0.65, 0.6, 0.9, 0.9], [0, 2, 0.4, 0.65, 0.6, 0.9, 0.9]]
    np.testing.assert_allclose(rows, want, rtol=1e-12)
    rows = det_out("confidence_threshold: 0.25 keep_top_k: 2", loc, conf, priors)
    np.testing.assert_allclose(rows, [want[0], want[2]], rtol=1e-12)
    rows = det_out("confidence_threshold: 0.9", loc, conf, priors)
    np.testing.assert_array_equal(rows, [[0, -1, -1, -1, -1, -1, -1]])


def test_detection_output_refuses_file_output():
    with pytest.raises(NetError, match="save_output_param"):
        det_out('save_output_param { output_directory: "/tmp/x" }', np.zeros((1, 4)), np.zeros((1, 3)),
                np.ones((1, 2, 4)))


# --- DetectionEvaluate and mAP ---------------------------------------------------------------------------------
def evaluate(det, gt, extra=""):
    text = 'type: "DetectionEvaluate" detection_evaluate_param { num_classes: 3 %s }' % extra
    _, _, (t,) = run(text, [np.asarray(det, float)[None, None], np.asarray(gt, float)[None, None]])
    return t.data.reshape(-1, 5)


def test_detection_evaluate_by_hand():
    gt = [[0, 1, 0, 0.1, 0.1, 0.4, 0.4, 0], [0, 1, 1, 0.5, 0.5, 0.9, 0.9, 1], [1, 2, 0, 0.2, 0.2, 0.6, 0.6, 0]]
    det = [[0, 1, 0.9, 0.1, 0.1, 0.4, 0.42],     # tp
           [0, 1, 0.8, 0.12, 0.1, 0.4, 0.4],     # same ground truth again: fp
           [0, 1, 0.7, 0.5, 0.5, 0.9, 0.9],      # the difficult one: tp when evaluated
           [0, 2, 0.6, 0.1, 0.1, 0.4, 0.4],      # no class-2 truth in image 0: fp
           [1, 2, 0.5, 0.0, 0.0, 0.1, 0.1]]      # misses: fp
    rows = evaluate(det, gt)
    np.testing.assert_allclose(rows, [[-1, 1, 2, -1, -1], [-1, 2, 1, -1, -1], [0, 1, 0.9, 1, 0], [0, 1, 0.8, 0, 1],
                                      [0, 1, 0.7, 1, 0], [0, 2, 0.6, 0, 1], [1, 2, 0.5, 0, 1]], rtol=1e-12)
    rows = evaluate(det, gt, "evaluate_difficult_gt: false")
    assert rows[0, 2] == 1 and list(rows[4, 3:]) == [0, 0]


def voc_ap(scores, tps, num_pos, version):
    """Average precision written from the VOC definitions, independently of bbox_util: the 11-point mean of
    interpolated precision (VOC2007), the area under the interpolated curve (VOC2012, "MaxIntegral") or under
    the raw curve ("Integral")."""
    order = sorted(range(len(scores)), key=lambda k: -scores[k])
    tp = fp = 0
    prec, rec = [], []
    for k in order:
        tp += tps[k]
        fp += 1 - tps[k]
        prec.append(tp / (tp + fp))
        rec.append(tp / num_pos)
    if version == "11point":
        return sum(max([p for p, r in zip(prec, rec) if r >= t / 10] or [0]) for t in range(11)) / 11
    if version == "MaxIntegral":
        prec = [max(prec[k:]) for k in range(len(prec))]
    area, last = 0.0, 0.0
    for p, r in zip(prec, rec):
        area += p * (r - last)
        last = r
    return area


@pytest.mark.parametrize("version", ["11point", "Integral", "MaxIntegral"])
def test_map_agrees_with_an_independent_computation(version):
    """DetectionEvaluate rows pooled over batches by mean_average_precision (the solver's detection test) give
    the mAP of a direct greedy VOC evaluation."""
    rng = np.random.RandomState(11)
    batches, found, num_pos = [], {1: [], 2: []}, {1: 0, 2: 0}
    for image in range(6):
        gt, det = [], []
        for label in (1, 2):
            for _ in range(rng.randint(1, 4)):
                x, y = rng.uniform(0, 0.6, 2)
                box = [x, y, x + 0.3, y + 0.3]
                gt.append([image, label, 0, *box, 0])
                if rng.rand() < 0.8:
                    det.append([image, label, rng.rand(), *(np.array(box) + rng.uniform(-0.05, 0.05, 4))])
            for _ in range(rng.randint(0, 3)):
                x, y = rng.uniform(0, 0.6, 2)
                det.append([image, label, rng.rand(), x, y, x + 0.2, y + 0.2])
        batches.append(evaluate(det, gt))
        for label in (1, 2):                   # greedy by score: IoU >= 0.5 with an unused box of the label
            truth = [g[3:7] for g in gt if g[1] == label]
            num_pos[label] += len(truth)
            used = [False] * len(truth)
            for r in sorted([r for r in det if r[1] == label], key=lambda r: -r[2]):
                ious = []
                for t in truth:
                    w = max(0.0, min(r[5], t[2]) - max(r[3], t[0]))
                    h = max(0.0, min(r[6], t[3]) - max(r[4], t[1]))
                    area = (r[5] - r[3]) * (r[6] - r[4]) + (t[2] - t[0]) * (t[3] - t[1])
                    ious.append(w * h / (area - w * h))
                k = int(np.argmax(ious))
                hit = ious[k] >= 0.5 and not used[k]
                used[k] = used[k] or hit
                found[label].append((np.float32(r[2]), int(hit)))
    per_class = {}
    got = mean_average_precision(batches, version, per_class)
    want = [voc_ap([s for s, _ in found[c]], [t for _, t in found[c]], num_pos[c], version) for c in (1, 2)]
    assert [per_class[1], per_class[2]] == pytest.approx(want, abs=1e-6)
    assert got == pytest.approx(np.mean(want), abs=1e-6)
    assert 0.2 < got < 1.0


def test_multibox_loss_without_any_ground_truth_is_zero():
    inputs = mbox_inputs()
    inputs[3] = np.full((1, 1, 1, 8), -1.0)
    layer, bottom, (t,) = run(mbox_text(), inputs, propagate=[True, True, False, False])
    assert float(t.data) == 0.0 and layer.num_matches == 0
    assert not bottom[0].diff.any() and not bottom[1].diff.any()
