"""SSD-Caffe's detection layers (Wei Liu's SSD fork of Caffe, branch ``ssd``): Permute, PriorBox, SmoothL1Loss,
MultiBoxLoss, DetectionOutput and DetectionEvaluate.

Blob layouts are SSD's: priors are (1, 2, P*4) (boxes, then variances), ground truth is (1, 1, G, 8) with rows
``[item_id, label, instance_id, xmin, ymin, xmax, ymax, difficult]``, detections are (1, 1, D, 7) with rows
``[item_id, label, score, xmin, ymin, xmax, ymax]``. The box arithmetic lives in ``bbox_util``.
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from ..errors import NetError
from ..proto import caffe_pb2
from . import bbox_util as bu
from .base import Layer, register

_MB = caffe_pb2.MultiBoxLossParameter
_LP = caffe_pb2.LossParameter


def _host(blob) -> np.ndarray:
    return np.asarray(backend.to_numpy(blob.data), dtype=np.float64)


def _put(blob, attr: str, value: np.ndarray) -> None:
    getattr(blob, attr)[...] = blob.xp.asarray(value.astype(blob.dtype, copy=False))


class _DetectionLayer(Layer):
    def error(self, message: str) -> NetError:
        return NetError("layer %r (%s): %s" % (self.name, self.type, message))


@register("Permute")
class PermuteLayer(_DetectionLayer):
    """Reorders the axes of the bottom to ``permute_param.order``; axes not named follow in their order."""

    exact_num_bottom = 1
    exact_num_top = 1
    allow_in_place = False

    def reshape(self, bottom, top):
        n = bottom[0].num_axes
        order = []
        for o in self.layer_param.permute_param.order:
            if o >= n:
                raise self.error("order %d should be less than the bottom's %d axes %s" % (o, n, bottom[0].shape))
            if o in order:
                raise self.error("order %s repeats axis %d" % (list(self.layer_param.permute_param.order), o))
            order.append(int(o))
        order += [i for i in range(n) if i not in order]
        self.order = tuple(order)
        self.inverse = tuple(int(i) for i in np.argsort(order))
        top[0].reshape(tuple(bottom[0].shape[o] for o in order))

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data.transpose(self.order)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff.transpose(self.inverse)


@register("PriorBox")
class PriorBoxLayer(_DetectionLayer):
    """Default boxes of one feature map for every image: per cell and per min_size the min box, the
    sqrt(min*max) box, then one box per aspect ratio (and its flip). Sizes are truncated to whole pixels, as
    SSD does. Top: (1, 2, H*W*num_priors*4), the boxes and their variances."""

    exact_num_bottom = 2
    exact_num_top = 1
    allow_in_place = False

    def _hw_pair(self, p, both: str, h: str, w: str) -> tuple:
        """(h, w) from ``both`` or from ``h``/``w`` (SSD's img_size|img_h/img_w and step|step_h/step_w); (0, 0)
        when none is set, meaning "from the bottoms' shapes"."""
        if p.HasField(h) or p.HasField(w):
            if p.HasField(both):
                raise self.error("give either %s or %s/%s, not both" % (both, h, w))
            if getattr(p, h) <= 0 or getattr(p, w) <= 0:
                raise self.error("%s and %s must both be positive" % (h, w))
            return getattr(p, h), getattr(p, w)
        if p.HasField(both):
            if getattr(p, both) <= 0:
                raise self.error("%s must be positive" % both)
            return getattr(p, both), getattr(p, both)
        return 0, 0

    def setup(self, bottom, top):
        p = self.layer_param.prior_box_param
        if not p.min_size:
            raise self.error("prior_box_param must give min_size")
        if any(m <= 0 for m in p.min_size):
            raise self.error("min_size must be positive, got %s" % list(p.min_size))
        self.min_sizes = [int(m) for m in p.min_size]
        ratios = [1.0]
        for ar in p.aspect_ratio:
            if any(abs(ar - r) < 1e-6 for r in ratios):
                continue
            ratios.append(float(ar))
            if p.flip:
                ratios.append(1.0 / ar)
        self.aspect_ratios = ratios
        self.max_sizes = []
        if p.max_size:
            if len(p.max_size) != len(p.min_size):
                raise self.error("give one max_size per min_size (%d min_size, %d max_size)"
                                 % (len(p.min_size), len(p.max_size)))
            for lo, hi in zip(p.min_size, p.max_size):
                if hi <= lo:
                    raise self.error("max_size %g must be greater than min_size %g" % (hi, lo))
            self.max_sizes = [int(m) for m in p.max_size]
        self.num_priors = len(ratios) * len(self.min_sizes) + len(self.max_sizes)
        if len(p.variance) > 1 and len(p.variance) != 4:
            raise self.error("give one variance or four, got %d" % len(p.variance))
        if any(v <= 0 for v in p.variance):
            raise self.error("variances must be positive, got %s" % list(p.variance))
        self.variance = [float(v) for v in p.variance] or [0.1]
        self.img_hw = tuple(int(v) for v in self._hw_pair(p, "img_size", "img_h", "img_w"))
        self.step_hw = tuple(float(v) for v in self._hw_pair(p, "step", "step_h", "step_w"))
        self.offset = float(p.offset)

    def reshape(self, bottom, top):
        if bottom[0].num_axes < 2 or bottom[1].num_axes < 2:
            raise self.error("bottoms must be feature map and image blobs (N, C, H, W), got %s and %s"
                             % (bottom[0].shape, bottom[1].shape))
        top[0].reshape(1, 2, bottom[0].height * bottom[0].width * self.num_priors * 4)

    def box_sizes(self):
        """(widths, heights) in pixels of the priors of one cell, in SSD's order."""
        ws, hs = [], []
        for s, m in enumerate(self.min_sizes):
            ws.append(m)
            hs.append(m)
            if self.max_sizes:
                side = math.sqrt(m * self.max_sizes[s])
                ws.append(side)
                hs.append(side)
            for ar in self.aspect_ratios:
                if abs(ar - 1.0) < 1e-6:
                    continue
                r = float(np.sqrt(np.float32(ar)))
                ws.append(m * r)
                hs.append(m / r)
        return np.float32(ws).astype(np.float64), np.float32(hs).astype(np.float64)

    def forward(self, bottom, top):
        fh, fw = bottom[0].height, bottom[0].width
        img_h, img_w = self.img_hw if self.img_hw[0] and self.img_hw[1] else (bottom[1].height, bottom[1].width)
        if self.step_hw[0] and self.step_hw[1]:
            step_h, step_w = np.float32(self.step_hw[0]), np.float32(self.step_hw[1])
        else:
            step_h, step_w = np.float32(img_h) / np.float32(fh), np.float32(img_w) / np.float32(fw)
        cx = ((np.arange(fw, dtype=np.float32) + np.float32(self.offset)) * step_w).astype(np.float64)
        cy = ((np.arange(fh, dtype=np.float32) + np.float32(self.offset)) * step_h).astype(np.float64)
        bw, bh = self.box_sizes()
        shape = (fh, fw, bw.size)
        cx = np.broadcast_to(cx[None, :, None], shape)
        cy = np.broadcast_to(cy[:, None, None], shape)
        boxes = np.stack([(cx - bw / 2.0) / img_w, (cy - bh / 2.0) / img_h,
                          (cx + bw / 2.0) / img_w, (cy + bh / 2.0) / img_h], axis=-1).reshape(-1)
        if self.layer_param.prior_box_param.clip:
            boxes = np.clip(boxes, 0.0, 1.0)
        var = np.resize(np.asarray(self.variance, np.float64), boxes.size)
        _put(top[0], "data", np.stack([boxes, var])[None])

    def backward(self, top, propagate_down, bottom):
        # The priors depend on the bottoms' shapes only.
        for b, down in zip(bottom, propagate_down):
            if down:
                b.diff[...] = 0


@register("SmoothL1Loss")
class SmoothL1LossLayer(_DetectionLayer):
    """SSD's SmoothL1Loss: sum of 0.5*d^2 (|d| < 1) or |d| - 0.5 over d = w*(x0 - x1), divided by the batch
    size. With the optional weights bottom, SSD's backward does not multiply by w again (exact for 0/1 weights)."""

    min_bottom = 2
    max_bottom = 3
    exact_num_top = 1
    is_loss = True
    allow_in_place = False

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index == 0

    def reshape(self, bottom, top):
        for i in range(1, len(bottom)):
            if bottom[i].count != bottom[0].count or bottom[i].shape[:1] != bottom[0].shape[:1]:
                raise self.shape_error("bottom %d" % i, bottom[i].shape, bottom[0].shape)
        top[0].reshape(())

    def forward(self, bottom, top):
        d = bottom[0].data - bottom[1].data.reshape(bottom[0].shape)
        if len(bottom) == 3:
            d = d * bottom[2].data.reshape(bottom[0].shape)
        self._d = d
        a = abs(d)
        err = bottom[0].xp.where(a < 1, 0.5 * d * d, a - 0.5)
        top[0].data[...] = err.sum() / bottom[0].shape[0]

    def backward(self, top, propagate_down, bottom):
        xp = bottom[0].xp
        g = xp.where(abs(self._d) < 1, self._d, xp.sign(self._d))
        for i in range(2):
            if propagate_down[i]:
                sign = 1.0 if i == 0 else -1.0
                bottom[i].diff[...] = (sign * top[0].diff / bottom[i].shape[0] * g).reshape(bottom[i].shape)


def _normalizer(mode: int, num: int, num_priors: int, valid: int) -> float:
    """Caffe's LossLayer::GetNormalizer, floored at 1."""
    if mode == _LP.FULL:
        n = num * num_priors
    elif mode == _LP.VALID:
        n = num * num_priors if valid == -1 else valid
    elif mode == _LP.BATCH_SIZE:
        n = num
    else:
        n = 1
    return float(max(1, n))


def ground_truth(gt: np.ndarray, background: int, use_difficult: bool, layer: _DetectionLayer,
                 stop_at_padding: bool = False):
    """SSD's GetGroundTruth: {item_id: (boxes (G, 4), labels (G,), difficult (G,))} from (1, 1, G, 8) rows.
    Rows with item_id -1 are padding (skipped, or with ``stop_at_padding`` the end of the list)."""
    rows = gt.reshape(-1, 8)
    item = np.trunc(rows[:, 0]).astype(np.int64)
    if stop_at_padding and (item == -1).any():
        rows, item = rows[:int(np.argmax(item == -1))], item[:int(np.argmax(item == -1))]
    label = np.trunc(rows[:, 1]).astype(np.int64)
    difficult = rows[:, 7] != 0
    keep = item != -1
    if bool((keep & (label == background)).any()):
        raise layer.error("found the background label %d in the ground truth" % background)
    if not use_difficult:
        keep &= ~difficult
    out = {}
    for i in np.unique(item[keep]):
        sel = keep & (item == i)
        out[int(i)] = (rows[sel, 3:7], label[sel], difficult[sel])
    return out


@register("MultiBoxLoss")
class MultiBoxLossLayer(_DetectionLayer):
    """SSD's training loss: priors are matched to ground truth (bipartite, then per prediction), negatives are
    mined, and the loss is loc_weight * (SmoothL1 or L2 of the matched offsets) plus the softmax or logistic
    confidence loss of positives and mined negatives, both divided by the normalizer (VALID: the number of
    matches). Bottoms: loc (N, P*L*4), conf (N, P*C), priors (1, 2, P*4), ground truth (1, 1, G, 8)."""

    exact_num_bottom = 4
    exact_num_top = 1
    is_loss = True
    allow_in_place = False

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index < 2

    def setup(self, bottom, top):
        lp = self.layer_param
        p = lp.multibox_loss_param
        if not p.HasField("num_classes") or p.num_classes < 1:
            raise self.error("multibox_loss_param.num_classes must be given and >= 1")
        self.p = p
        self.num_classes = int(p.num_classes)
        self.loc_classes = 1 if p.share_location else self.num_classes
        self.background = int(p.background_label_id)
        if p.HasField("do_neg_mining") and p.do_neg_mining != (p.mining_type != _MB.NONE):
            raise self.error("do_neg_mining %s contradicts mining_type %s (do_neg_mining is deprecated)"
                             % (p.do_neg_mining, _MB.MiningType.Name(p.mining_type)))
        self.mining = p.mining_type
        if self.mining != _MB.NONE and not p.share_location:
            raise self.error("negative mining needs share_location true")
        if self.mining == _MB.HARD_EXAMPLE and p.sample_size <= 0:
            raise self.error("HARD_EXAMPLE mining needs sample_size > 0")
        if p.conf_loss_type == _MB.SOFTMAX and not 0 <= self.background < self.num_classes:
            raise self.error("background_label_id %d must be in [0, %d) for SOFTMAX"
                             % (self.background, self.num_classes))
        if p.map_object_to_agnostic and self.num_classes != 2:
            raise self.error("map_object_to_agnostic needs num_classes 2 (background and object)")
        if lp.loss_param.HasField("normalization") or not lp.loss_param.HasField("normalize"):
            self.normalization = lp.loss_param.normalization
        else:
            self.normalization = _LP.VALID if lp.loss_param.normalize else _LP.BATCH_SIZE
        pd = list(lp.propagate_down) or [True, True, False, False]
        if len(pd) == 4 and (pd[2] or pd[3]):
            raise self.error("cannot backpropagate to the prior or label inputs (set propagate_down "
                             "true, true, false, false)")
        self.counted = pd[:2] if len(pd) >= 2 else [True, True]

    def reshape(self, bottom, top):
        if bottom[2].num_axes < 3 or bottom[2].shape[2] % 4:
            raise self.shape_error("priors", bottom[2].shape, (1, 2, "P*4"))
        self.num = bottom[0].shape[0]
        self.num_priors = bottom[2].shape[2] // 4
        if bottom[1].shape[0] != self.num:
            raise self.shape_error("conf", bottom[1].shape, (self.num, "P*C"))
        if bottom[0].count_range(1) != self.num_priors * self.loc_classes * 4:
            raise self.error("loc %s does not hold %d priors x %d x 4 predictions (priors %s)"
                             % (bottom[0].shape, self.num_priors, self.loc_classes, bottom[2].shape))
        if bottom[1].count_range(1) != self.num_priors * self.num_classes:
            raise self.error("conf %s does not hold %d priors x %d classes (priors %s)"
                             % (bottom[1].shape, self.num_priors, self.num_classes, bottom[2].shape))
        if bottom[3].count % 8:
            raise self.shape_error("ground truth", bottom[3].shape, (1, 1, "G", 8))
        top[0].reshape(())

    # --- matching and mining ----------------------------------------------------------------------------
    def _match(self, loc, priors, var, gts):
        """{label: (indices (P,), overlaps (P,))} for one image, labels in SSD's (std::map) order."""
        p = self.p
        boxes, labels, _ = gts
        per_pred = p.match_type == _MB.PER_PREDICTION
        out = {}
        if p.use_prior_for_matching:
            idx, ov = bu.match(boxes, priors, per_pred, p.overlap_threshold, p.ignore_cross_boundary_bbox)
            if p.share_location:
                return {-1: (idx, ov)}
            for c in range(self.loc_classes):
                if c == self.background:
                    continue
                hit = idx > -1
                own = np.full_like(idx, -1)
                own[hit] = np.where(labels[idx[hit]] == c, idx[hit], -1)
                out[c] = (own, ov)
            return out
        for c in range(self.loc_classes):
            label = -1 if p.share_location else c
            if not p.share_location and label == self.background:
                continue
            pred = bu.decode(priors, var, loc[:, c], p.code_type, p.encode_variance_in_target)
            sel = np.arange(labels.size) if label == -1 else np.flatnonzero(labels == label)
            idx, ov = bu.match(boxes[sel], pred, per_pred, p.overlap_threshold, p.ignore_cross_boundary_bbox)
            out[label] = (np.where(idx > -1, sel[np.maximum(idx, 0)], idx), ov)
        return out

    def _conf_loss(self, conf, labels):
        """Per-prior confidence loss against ``labels`` (P,), used to rank negatives."""
        if self.p.conf_loss_type == _MB.SOFTMAX:
            prob = bu.softmax_rows(conf)[np.arange(labels.size), labels]
            return -np.log(np.maximum(prob, bu.FLT_MIN))
        t = np.zeros_like(conf)
        t[np.arange(labels.size), labels] = 1.0
        return bu.logistic_loss(conf, t).sum(axis=1)

    def _encode_rows(self, loc, priors, var, gts, matches):
        """Matched (prediction, encoded ground truth) rows of one image and their (prior, loc class) places."""
        p = self.p
        preds, targets, places = [], [], []
        for label, (idx, _) in matches.items():
            j = np.flatnonzero(idx > -1)
            if j.size == 0:
                continue
            lc = 0 if p.share_location else label
            enc = bu.encode(priors[j], var[j], gts[0][idx[j]], p.code_type, p.encode_variance_in_target)
            pred = loc[j, lc].copy()
            if p.bp_inside:
                mb = priors[j]
                if not p.use_prior_for_matching:
                    mb = bu.decode(priors[j], var[j], loc[j, lc], p.code_type, p.encode_variance_in_target)
                outside = (mb < 0) | (mb > 1)
                pred[outside] = enc[outside]
            if p.encode_variance_in_target:
                pred = pred / var[j]
                enc = enc / var[j]
            preds.append(pred)
            targets.append(enc)
            places.append(np.stack([j, np.full_like(j, lc)], axis=1))
        if not preds:
            return np.zeros((0, 4)), np.zeros((0, 4)), np.zeros((0, 2), np.int64)
        return np.concatenate(preds), np.concatenate(targets), np.concatenate(places)

    def _loc_loss(self, d):
        if self.p.loc_loss_type == _MB.SMOOTH_L1:
            return bu.smooth_l1(d)
        return 0.5 * d * d

    def _mine(self, i, conf, loc, priors, var, gts, matches):
        """SSD's MineHardExamples for image i: updates ``matches`` (HARD_EXAMPLE drops unselected positives)
        and returns the selected negative priors."""
        p = self.p
        labels = np.full(self.num_priors, self.background, dtype=np.int64)
        for idx, _ in reversed(list(matches.values())):        # the first label with a match wins
            hit = idx > -1
            labels[hit] = gts[1][idx[hit]]
        loss = self._conf_loss(conf, labels)
        if self.mining == _MB.HARD_EXAMPLE:
            pred, enc, places = self._encode_rows(loc, priors, var, gts, matches)
            loc_loss = np.zeros(self.num_priors)
            loc_loss[places[:, 0]] = self._loc_loss(pred - enc).sum(axis=1)
            loss = loss + loc_loss
        loss = loss.astype(np.float32).astype(np.float64)
        negatives = []
        for label, (idx, ov) in matches.items():
            if self.mining == _MB.MAX_NEGATIVE:
                eligible = np.flatnonzero((idx == -1) & (ov < p.neg_overlap))
                n_pos = int((idx > -1).sum())
                n_sel = min(int(np.float32(n_pos) * np.float32(p.neg_pos_ratio)), eligible.size)
            else:
                eligible = np.arange(self.num_priors)
                n_sel = min(int(p.sample_size), eligible.size)
            if p.HasField("nms_param") and p.nms_param.nms_threshold > 0:
                if p.use_prior_for_nms:
                    boxes = priors[eligible]
                else:
                    lc = 0 if p.share_location else label
                    boxes = bu.decode(priors, var, loc[:, lc], p.code_type, p.encode_variance_in_target)[eligible]
                top_k = int(p.nms_param.top_k) if p.nms_param.HasField("top_k") else -1
                kept = bu.nms(boxes, loss[eligible], p.nms_param.nms_threshold, top_k)
                chosen = eligible[kept[:n_sel]]
            else:
                chosen = eligible[np.argsort(-loss[eligible], kind="stable")[:n_sel]]
            selected = np.zeros(self.num_priors, dtype=bool)
            selected[chosen] = True
            if self.mining == _MB.HARD_EXAMPLE:
                idx[(idx > -1) & ~selected] = -1
            negatives.append(np.flatnonzero((idx == -1) & selected))
        return np.concatenate(negatives) if negatives else np.zeros(0, np.int64)

    # --- forward and backward -----------------------------------------------------------------------------
    def forward(self, bottom, top):
        p = self.p
        n, n_pri, n_cls = self.num, self.num_priors, self.num_classes
        loc = _host(bottom[0]).reshape(n, n_pri, self.loc_classes, 4)
        conf = _host(bottom[1]).reshape(n, n_pri, n_cls)
        prior_data = _host(bottom[2]).reshape(-1)
        priors = prior_data[:n_pri * 4].reshape(n_pri, 4)
        var = prior_data[n_pri * 4:n_pri * 8].reshape(n_pri, 4)
        all_gt = ground_truth(_host(bottom[3]), self.background, p.use_difficult_gt, self)

        loc_pred, loc_gt, loc_places = [], [], []
        conf_rows, conf_targets = [], []
        mining = self.mining != _MB.NONE
        positives_target = np.full((n, n_pri), -1, dtype=np.int64)
        for i in range(n):
            if i not in all_gt:
                continue                      # no ground truth: every prior negative, none mined
            gts = all_gt[i]
            matches = self._match(loc[i], priors, var, gts)
            negatives = self._mine(i, conf[i], loc[i], priors, var, gts, matches) if mining else None
            pred, enc, places = self._encode_rows(loc[i], priors, var, gts, matches)
            loc_pred.append(pred)
            loc_gt.append(enc)
            loc_places.append(np.column_stack([np.full(len(places), i), places]))
            for idx, _ in matches.values():
                j = np.flatnonzero(idx > -1)
                lab = np.full(j.size, self.background + 1) if p.map_object_to_agnostic else gts[1][idx[j]]
                if mining:
                    conf_rows.append(np.column_stack([np.full(j.size, i), j]))
                    conf_targets.append(lab)
                else:
                    positives_target[i, j] = lab
            if mining:
                conf_rows.append(np.column_stack([np.full(negatives.size, i), negatives]))
                conf_targets.append(np.full(negatives.size, -1))        # -1: the background row
        self.num_matches = int(sum(len(a) for a in loc_pred))
        self._norm = _normalizer(self.normalization, n, n_pri, self.num_matches)

        # localisation
        loc_loss = 0.0
        self._loc_places = np.concatenate(loc_places).astype(np.int64) if loc_places else np.zeros((0, 3), np.int64)
        if self.num_matches:
            d = np.concatenate(loc_pred) - np.concatenate(loc_gt)
            loc_loss = float(self._loc_loss(d).sum())
            grad = bu.smooth_l1_grad(d) if p.loc_loss_type == _MB.SMOOTH_L1 else d
            self._loc_grad = p.loc_weight * grad
        # confidence
        if mining:
            rows = np.concatenate(conf_rows).astype(np.int64) if conf_rows else np.zeros((0, 2), np.int64)
            pos_label = np.concatenate(conf_targets).astype(np.int64) if conf_targets else np.zeros(0, np.int64)
            x = conf[rows[:, 0], rows[:, 1]]
        else:
            rows = None
            x = conf.reshape(-1, n_cls)
            pos_label = positives_target.reshape(-1)
        self._conf_rows = rows
        conf_loss = 0.0
        if x.shape[0]:
            if p.conf_loss_type == _MB.SOFTMAX:
                target = np.where(pos_label >= 0, pos_label, self.background)
                prob = bu.softmax_rows(x)
                pt = prob[np.arange(target.size), target]
                conf_loss = float(-np.log(np.maximum(pt, bu.FLT_MIN)).sum())
                prob[np.arange(target.size), target] -= 1.0
                self._conf_grad = prob
            else:
                # SSD fills the logistic targets with the background id, then sets 1 at each row's label
                t = np.full(x.shape, float(self.background))
                pos = pos_label >= 0
                t[np.flatnonzero(pos), pos_label[pos]] = 1.0
                if mining and 0 <= self.background < n_cls:
                    t[np.flatnonzero(~pos), self.background] = 1.0
                conf_loss = float(bu.logistic_loss(x, t).sum())
                self._conf_grad = bu.sigmoid(x) - t
        self._n_conf = x.shape[0]
        loss = 0.0
        if self.counted[0]:
            loss += p.loc_weight * loc_loss / self._norm
        if self.counted[1]:
            loss += conf_loss / self._norm
        top[0].data[...] = loss

    def backward(self, top, propagate_down, bottom):
        n, n_pri = self.num, self.num_priors
        scale = float(backend.to_numpy(top[0].diff)) / self._norm
        if propagate_down[0]:
            diff = np.zeros((n, n_pri, self.loc_classes, 4))
            if self.num_matches:
                pl = self._loc_places
                diff[pl[:, 0], pl[:, 1], pl[:, 2]] = self._loc_grad * scale
            _put(bottom[0], "diff", diff.reshape(bottom[0].shape))
        if propagate_down[1]:
            diff = np.zeros((n, n_pri, self.num_classes))
            if self._n_conf:
                if self._conf_rows is None:
                    diff = self._conf_grad.reshape(diff.shape) * scale
                else:
                    diff[self._conf_rows[:, 0], self._conf_rows[:, 1]] = self._conf_grad * scale
            _put(bottom[1], "diff", diff.reshape(bottom[1].shape))


@register("DetectionOutput")
class DetectionOutputLayer(_DetectionLayer):
    """Decodes the boxes, runs per-class NMS (top_k before, keep_top_k per image after) and writes
    (1, 1, D, 7) rows ``[image, label, score, xmin, ymin, xmax, ymax]`` ordered by image, label, score; with
    no detection at all, one row ``[i, -1, ..., -1]`` per image."""

    exact_num_bottom = 3
    exact_num_top = 1
    allow_in_place = False

    def setup(self, bottom, top):
        p = self.layer_param.detection_output_param
        if not p.HasField("num_classes"):
            raise self.error("detection_output_param.num_classes must be given")
        self.p = p
        self.num_classes = int(p.num_classes)
        self.loc_classes = 1 if p.share_location else self.num_classes
        self.threshold = float(p.confidence_threshold) if p.HasField("confidence_threshold") else -np.inf
        self.nms_threshold = float(p.nms_param.nms_threshold)
        if self.nms_threshold < 0:
            raise self.error("nms_threshold must be non-negative, got %g" % self.nms_threshold)
        self.eta = float(p.nms_param.eta)
        if not 0 < self.eta <= 1:
            raise self.error("nms_param.eta must be in (0, 1], got %g" % self.eta)
        self.top_k = int(p.nms_param.top_k) if p.nms_param.HasField("top_k") else -1
        if p.save_output_param.output_directory:
            raise self.error("save_output_param (writing detections to VOC/COCO/ILSVRC files) is not supported; "
                             "read the layer's top instead")
        if p.visualize:
            raise self.error("visualize is not supported (it needs SSD's OpenCV windows)")

    def reshape(self, bottom, top):
        if bottom[2].num_axes < 3 or bottom[2].shape[2] % 4:
            raise self.shape_error("priors", bottom[2].shape, (1, 2, "P*4"))
        self.num_priors = bottom[2].shape[2] // 4
        if bottom[0].shape[0] != bottom[1].shape[0]:
            raise self.error("loc %s and conf %s have different batch sizes" % (bottom[0].shape, bottom[1].shape))
        if bottom[0].count_range(1) != self.num_priors * self.loc_classes * 4:
            raise self.error("loc %s does not hold %d priors x %d x 4 predictions (priors %s)"
                             % (bottom[0].shape, self.num_priors, self.loc_classes, bottom[2].shape))
        if bottom[1].count_range(1) != self.num_priors * self.num_classes:
            raise self.error("conf %s does not hold %d priors x %d classes (priors %s)"
                             % (bottom[1].shape, self.num_priors, self.num_classes, bottom[2].shape))
        top[0].reshape(1, 1, 1, 7)

    def forward(self, bottom, top):
        p = self.p
        n, n_pri = bottom[0].shape[0], self.num_priors
        loc = _host(bottom[0]).reshape(n, n_pri, self.loc_classes, 4)
        conf = _host(bottom[1]).reshape(n, n_pri, self.num_classes)
        prior_data = _host(bottom[2]).reshape(-1)
        priors = prior_data[:n_pri * 4].reshape(n_pri, 1, 4)
        var = prior_data[n_pri * 4:n_pri * 8].reshape(n_pri, 1, 4)
        boxes = bu.decode(priors, var, loc, p.code_type, p.variance_encoded_in_target)
        rows = []
        for i in range(n):
            found = []                                         # (label, kept prior indices)
            for c in range(self.num_classes):
                if c == p.background_label_id:
                    continue
                b = boxes[i, :, 0 if p.share_location else c]
                found.append((c, bu.nms_fast(b, conf[i, :, c], self.threshold, self.nms_threshold, self.eta,
                                             self.top_k)))
            total = sum(k.size for _, k in found)
            if p.keep_top_k > -1 and total > p.keep_top_k:
                labels = np.concatenate([np.full(k.size, c) for c, k in found])
                index = np.concatenate([k for _, k in found])
                score = conf[i, index, labels]
                best = np.argsort(-score, kind="stable")[:p.keep_top_k]
                found = [(c, index[best][labels[best] == c]) for c, _ in found]
            for c, k in found:
                if k.size:
                    b = boxes[i, k, 0 if p.share_location else c]
                    rows.append(np.column_stack([np.full(k.size, i), np.full(k.size, c), conf[i, k, c], b]))
        if rows:
            out = np.concatenate(rows)
        else:
            out = np.full((n, 7), -1.0)
            out[:, 0] = np.arange(n)
        top[0].reshape(1, 1, out.shape[0], 7)
        _put(top[0], "data", out.reshape(top[0].shape))


@register("DetectionEvaluate")
class DetectionEvaluateLayer(_DetectionLayer):
    """Marks each detection true or false positive against the ground truth (greedy by score, IoU >=
    overlap_threshold, each ground truth used once). Top rows ``[image, label, score, tp, fp]``, after one row
    ``[-1, label, num_positives, -1, -1]`` per class; the solver turns them into mAP (eval_type "detection")."""

    exact_num_bottom = 2
    exact_num_top = 1
    allow_in_place = False

    def setup(self, bottom, top):
        p = self.layer_param.detection_evaluate_param
        if not p.HasField("num_classes"):
            raise self.error("detection_evaluate_param.num_classes must be given")
        if p.overlap_threshold <= 0:
            raise self.error("overlap_threshold must be positive, got %g" % p.overlap_threshold)
        if p.name_size_file:
            raise self.error("name_size_file (evaluating in original image sizes) is not supported; "
                             "pcn evaluates normalised boxes")
        self.p = p
        self.num_classes = int(p.num_classes)
        self.background = int(p.background_label_id)

    def _rows_needed(self, bottom) -> int:
        det = _host(bottom[0]).reshape(-1, 7)
        classes = self.num_classes if self.background == -1 else self.num_classes - 1
        return classes + int((det[:, 1] != -1).sum())

    def reshape(self, bottom, top):
        if bottom[0].count % 7 or bottom[1].count % 8:
            raise self.error("bottoms must be detections (1, 1, D, 7) and ground truth (1, 1, G, 8), got %s and %s"
                             % (bottom[0].shape, bottom[1].shape))
        top[0].reshape(1, 1, self._rows_needed(bottom), 5)

    def forward(self, bottom, top):
        p = self.p
        det = _host(bottom[0]).reshape(-1, 7)
        all_gt = ground_truth(_host(bottom[1]), self.background, True, self, stop_at_padding=True)
        rows = []
        for c in range(self.num_classes):
            if c == self.background:
                continue
            count = 0
            for boxes, labels, difficult in all_gt.values():
                mine = labels == c
                count += int(mine.sum() if p.evaluate_difficult_gt else (mine & ~difficult).sum())
            rows.append([-1, c, count, -1, -1])
        item = np.trunc(det[:, 0]).astype(np.int64)
        label = np.trunc(det[:, 1]).astype(np.int64)
        valid = item != -1
        if bool((valid & (label == self.background)).any()):
            raise self.error("found the background label %d in the detections" % self.background)
        for i in np.unique(item[valid]):
            for c in np.unique(label[valid & (item == i) & (label != -1)]):
                d = det[valid & (item == i) & (label == c)]
                d = d[np.argsort(-d[:, 2], kind="stable")]
                tp = np.zeros(len(d))
                fp = np.ones(len(d))
                gt = all_gt.get(int(i))
                if gt is not None and (gt[1] == c).any():
                    g_boxes, g_diff = gt[0][gt[1] == c], gt[2][gt[1] == c]
                    iou = bu.jaccard(d[:, 3:7], g_boxes)
                    best = np.argmax(iou, axis=1)
                    best_iou = iou[np.arange(len(d)), best]
                    used = np.zeros(len(g_boxes), dtype=bool)
                    for k in range(len(d)):            # greedy by score: each ground truth counts once
                        if best_iou[k] < p.overlap_threshold:
                            continue
                        if not p.evaluate_difficult_gt and g_diff[best[k]]:
                            fp[k] = 0                  # neither: a difficult box is not evaluated
                        elif not used[best[k]]:
                            tp[k], fp[k] = 1, 0
                            used[best[k]] = True
                rows.extend(np.column_stack([np.full(len(d), i), np.full(len(d), c), d[:, 2], tp, fp]))
        out = np.asarray(rows, np.float64).reshape(-1, 5)
        top[0].reshape(1, 1, out.shape[0], 5)
        _put(top[0], "data", out.reshape(top[0].shape))


def mean_average_precision(results, version: str = "Integral", per_class: dict | None = None) -> float:
    """SSD's Solver::TestDetection over the DetectionEvaluate tops of a test run: each class's AP from its
    pooled [image, label, score, tp, fp] rows, averaged over every class that has a count row (a class with
    no detection counts as 0). ``per_class``, when given, receives {label: AP}."""
    num_pos: dict = {}
    scores: dict = {}
    tps: dict = {}
    for r in results:
        r = np.asarray(r, np.float64).reshape(-1, 5)
        head = r[:, 0] == -1
        for label, count in zip(r[head, 1].astype(np.int64), r[head, 2].astype(np.int64)):
            num_pos[int(label)] = num_pos.get(int(label), 0) + int(count)
        body = r[~head]
        body = body[(body[:, 3] != 0) | (body[:, 4] != 0)]
        for label in np.unique(body[:, 1].astype(np.int64)):
            sel = body[:, 1].astype(np.int64) == label
            scores.setdefault(int(label), []).append(body[sel, 2].astype(np.float32))
            tps.setdefault(int(label), []).append(body[sel, 3].astype(np.int64))
    if not num_pos:
        return 0.0
    total = 0.0
    for label in sorted(num_pos):
        if label not in scores:
            continue
        ap = bu.average_precision(np.concatenate(scores[label]), np.concatenate(tps[label]), num_pos[label],
                                  version)
        if per_class is not None:
            per_class[label] = ap
        total += ap
    return total / len(num_pos)
