"""Box arithmetic of SSD-Caffe (its ``bbox_util.cpp``), vectorised over boxes with NumPy.

Boxes are ``(..., 4)`` arrays of ``[xmin, ymin, xmax, ymax]`` in coordinates normalised by the image size.
The detection layers run their discrete steps (matching, mining, NMS) on the host in float64, as SSD-Caffe runs
them on the CPU; the loops that remain are over images, classes or greedy selection steps, never over priors.
"""
from __future__ import annotations

import numpy as np

from ..proto import caffe_pb2

CORNER = caffe_pb2.PriorBoxParameter.CORNER
CENTER_SIZE = caffe_pb2.PriorBoxParameter.CENTER_SIZE
CORNER_SIZE = caffe_pb2.PriorBoxParameter.CORNER_SIZE
FLT_MIN = float(np.finfo(np.float32).tiny)


def box_size(b: np.ndarray) -> np.ndarray:
    """Area of normalised boxes; 0 for an invalid box (xmax < xmin or ymax < ymin), as SSD's BBoxSize."""
    w = b[..., 2] - b[..., 0]
    h = b[..., 3] - b[..., 1]
    return np.where((w < 0) | (h < 0), 0.0, w * h)


def jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (N, 4) with every box in ``b`` (M, 4): an (N, M) array (SSD's JaccardOverlap)."""
    a = a[:, None, :]
    b = b[None, :, :]
    iw = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    ih = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    hit = (iw > 0) & (ih > 0)
    inter = np.where(hit, iw * ih, 0.0)
    union = box_size(a) + box_size(b) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(hit, inter / np.where(hit, union, 1.0), 0.0)


def coverage(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Fraction of each box of ``a`` (N, 4) covered by each box of ``b`` (M, 4) (SSD's BBoxCoverage)."""
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.where((iw >= 0) & (ih >= 0), iw * ih, 0.0)
    size = box_size(a)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(inter > 0, inter / np.where(size > 0, size, 1.0), 0.0)


def _centre_size(b):
    w = b[..., 2] - b[..., 0]
    h = b[..., 3] - b[..., 1]
    return (b[..., 0] + b[..., 2]) / 2.0, (b[..., 1] + b[..., 3]) / 2.0, w, h


def encode(prior: np.ndarray, var: np.ndarray, gt: np.ndarray, code_type: int,
           variance_in_target: bool) -> np.ndarray:
    """SSD's EncodeBBox for matched (prior, variance, ground truth) rows, each (K, 4)."""
    v = np.ones_like(var) if variance_in_target else var
    if code_type == CORNER:
        return (gt - prior) / v
    pcx, pcy, pw, ph = _centre_size(prior)
    if code_type == CENTER_SIZE:
        gcx, gcy, gw, gh = _centre_size(gt)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.stack([(gcx - pcx) / pw, (gcy - pcy) / ph, np.log(gw / pw), np.log(gh / ph)], axis=-1)
        return out / v
    if code_type == CORNER_SIZE:
        scale = np.stack([pw, ph, pw, ph], axis=-1)
        return (gt - prior) / scale / v
    raise ValueError("unknown code_type %r" % code_type)


def decode(prior: np.ndarray, var: np.ndarray, loc: np.ndarray, code_type: int,
           variance_in_target: bool) -> np.ndarray:
    """SSD's DecodeBBox: boxes from the offsets ``loc`` (..., 4) predicted against ``prior`` (..., 4)."""
    v = np.ones_like(var) if variance_in_target else var
    if code_type == CORNER:
        return prior + v * loc
    pcx, pcy, pw, ph = _centre_size(prior)
    if code_type == CENTER_SIZE:
        cx = v[..., 0] * loc[..., 0] * pw + pcx
        cy = v[..., 1] * loc[..., 1] * ph + pcy
        w = np.exp(v[..., 2] * loc[..., 2]) * pw
        h = np.exp(v[..., 3] * loc[..., 3]) * ph
        return np.stack([cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0], axis=-1)
    if code_type == CORNER_SIZE:
        scale = np.stack([pw, ph, pw, ph], axis=-1)
        return prior + v * loc * scale
    raise ValueError("unknown code_type %r" % code_type)


def is_cross_boundary(b: np.ndarray) -> np.ndarray:
    return ((b < 0) | (b > 1)).any(axis=-1)


def match(gt: np.ndarray, preds: np.ndarray, per_prediction: bool, overlap_threshold: float,
          ignore_cross_boundary: bool = False):
    """SSD's MatchBBox against all ``gt`` (G, 4): a greedy bipartite match (the best remaining pair first),
    then, with ``per_prediction``, every still unmatched prediction to its best ground truth of IoU >=
    ``overlap_threshold``. Returns (indices, overlaps), each (P,): the matched ground truth (-1 none, -2
    ignored as crossing the image boundary) and the overlap SSD records for mining."""
    n_pred = preds.shape[0]
    indices = np.full(n_pred, -1, dtype=np.int64)
    overlaps = np.zeros(n_pred)
    if gt.shape[0] == 0:
        return indices, overlaps
    iou = jaccard(preds, gt)
    if ignore_cross_boundary:
        ignored = is_cross_boundary(preds)
        indices[ignored] = -2
        iou[ignored] = 0.0
    iou = np.where(iou > 1e-6, iou, -1.0)       # SSD keeps only overlaps above 1e-6
    has = iou > 0
    overlaps = np.where(has.any(axis=1), iou.max(axis=1), 0.0)
    work = iou.copy()
    work[indices != -1] = -1.0
    for _ in range(gt.shape[0]):               # one ground truth leaves the pool per step
        flat = int(np.argmax(work))
        i, j = divmod(flat, work.shape[1])
        if work[i, j] <= 0:
            break
        indices[i] = j
        overlaps[i] = work[i, j]
        work[i, :] = -1.0
        work[:, j] = -1.0
    if per_prediction:
        rest = (indices == -1) & has.any(axis=1)
        cand = np.where(iou >= overlap_threshold, iou, -1.0)
        best = np.argmax(cand, axis=1)
        ok = rest & (cand[np.arange(n_pred), best] > 0)
        indices[ok] = best[ok]
        overlaps[ok] = cand[ok, best[ok]]
    return indices, overlaps


def nms_fast(boxes: np.ndarray, scores: np.ndarray, score_threshold: float, nms_threshold: float,
             eta: float, top_k: int) -> np.ndarray:
    """SSD's ApplyNMSFast: the boxes scoring above ``score_threshold``, best ``top_k`` first (stable order),
    each kept when its IoU with every kept box is <= the (eta-adapted) threshold. Returns kept indices."""
    cand = np.flatnonzero(scores > score_threshold)
    cand = cand[np.argsort(-scores[cand], kind="stable")]
    if top_k > -1:
        cand = cand[:top_k]
    if cand.size == 0:
        return cand
    iou = jaccard(boxes[cand], boxes[cand])
    kept: list = []
    threshold = nms_threshold
    for k in range(cand.size):                 # greedy: each step depends on the boxes kept before it
        if not kept or bool((iou[k, kept] <= threshold).all()):
            kept.append(k)
            if eta < 1 and threshold > 0.5:
                threshold *= eta
    return cand[kept]


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, top_k: int) -> np.ndarray:
    """SSD's ApplyNMS (used by hard-example mining): tiny boxes (area < 1e-5) are dropped, and selection
    stops after ``top_k`` kept boxes. Returns kept indices in descending score."""
    order = np.argsort(-scores, kind="stable")
    if top_k > -1:
        order = order[:top_k]
    order = order[box_size(boxes[order]) >= 1e-5]
    if order.size == 0:
        return order
    iou = jaccard(boxes[order], boxes[order])
    alive = np.ones(order.size, dtype=bool)
    kept: list = []
    for k in range(order.size):
        if not alive[k]:
            continue
        kept.append(k)
        if top_k > -1 and len(kept) >= top_k:
            break
        alive[k + 1:] &= iou[k, k + 1:] <= threshold
    return order[kept]


def smooth_l1(d: np.ndarray) -> np.ndarray:
    a = np.abs(d)
    return np.where(a < 1.0, 0.5 * d * d, a - 0.5)


def smooth_l1_grad(d: np.ndarray) -> np.ndarray:
    return np.where(np.abs(d) < 1.0, d, np.sign(d))


def softmax_rows(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def logistic_loss(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Stable sigmoid cross entropy, elementwise (Caffe's SigmoidCrossEntropyLoss)."""
    pos = (x >= 0).astype(x.dtype)
    return -(x * (t - pos) - np.log1p(np.exp(x - 2.0 * x * pos)))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def average_precision(scores: np.ndarray, tp: np.ndarray, num_pos: int, version: str) -> float:
    """SSD's ComputeAP: ``scores`` and ``tp`` (1 true positive, 0 false positive) of one class's detections;
    ``version`` is "11point" (VOC2007), "MaxIntegral" (VOC2012/ILSVRC) or "Integral"."""
    if scores.size == 0 or num_pos == 0:
        return 0.0
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    tp = np.asarray(tp, np.int64)[order]
    tp_cum = np.cumsum(tp)
    fp_cum = np.cumsum(1 - tp)
    prec = (tp_cum / (tp_cum + fp_cum)).astype(np.float32).astype(np.float64)
    rec = (tp_cum / num_pos).astype(np.float32).astype(np.float64)
    eps = 1e-6
    if version == "11point":
        ap = 0.0
        for t in np.arange(11) / 10.0:
            above = prec[rec >= t]
            ap += (above.max() if above.size else 0.0) / 11.0
        return float(ap)
    if version == "MaxIntegral":
        # SSD walks back from the last detection: the recall step from i to i + 1 is weighted with the best
        # precision at i or later, and the first step (from recall 0) is always counted.
        run_max = np.maximum.accumulate(prec[::-1])[::-1]
        weight = np.concatenate([run_max[:1], run_max[:-1]])
        step = np.abs(rec - np.concatenate([[0.0], rec[:-1]]))
        step[1:][step[1:] <= eps] = 0.0
        return float((weight * step).sum())
    if version == "Integral":
        prev = np.concatenate([[0.0], rec[:-1]])
        step = np.abs(rec - prev)
        step[step <= eps] = 0.0
        return float((prec * step).sum())
    raise ValueError("unknown ap_version %r (11point, MaxIntegral or Integral)" % version)
