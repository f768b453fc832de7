"""SSD-Caffe's data augmentation for annotated images (its ``sampler.cpp``, ``im_transforms.cpp`` and the annotated
parts of ``data_transformer.cpp``): batch samplers, photometric distortion, expansion, cropping, resizing and
mirroring, each moving the boxes with the image.

Images are uint8 (H, W, C) arrays in OpenCV's BGR order; boxes are (K, 4) float arrays of normalised
``[xmin, ymin, xmax, ymax]``. Every random draw comes from the ``numpy.random.RandomState`` passed in.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import PcnError
from ..layers import bbox_util as bu
from ..proto import caffe_pb2


@dataclass
class Boxes:
    """The boxes of one image with their label, instance id and difficult flag (rows in annotation order)."""

    xyxy: np.ndarray
    label: np.ndarray
    instance: np.ndarray
    difficult: np.ndarray

    def take(self, keep: np.ndarray, xyxy: np.ndarray) -> "Boxes":
        return Boxes(xyxy[keep], self.label[keep], self.instance[keep], self.difficult[keep])

    @staticmethod
    def from_datum(anno: caffe_pb2.AnnotatedDatum) -> "Boxes":
        rows, labels, inst, diff = [], [], [], []
        for group in anno.annotation_group:
            for a in group.annotation:
                b = a.bbox
                rows.append([b.xmin, b.ymin, b.xmax, b.ymax])
                labels.append(group.group_label)
                inst.append(a.instance_id)
                diff.append(b.difficult)
        return Boxes(np.asarray(rows, np.float64).reshape(-1, 4), np.asarray(labels, np.int64),
                     np.asarray(inst, np.int64), np.asarray(diff, bool))


# --- boxes -------------------------------------------------------------------------------------------------------
def project(crop: np.ndarray, boxes: Boxes, emit: caffe_pb2.EmitConstraint | None = None) -> Boxes:
    """SSD's TransformAnnotation for a crop window ``crop`` (4,): boxes that meet the emit constraint and
    overlap the window, in the window's coordinates, clipped to [0, 1] and of non-zero size (ProjectBBox)."""
    b = boxes.xyxy
    keep = np.ones(len(b), dtype=bool)
    if emit is not None:
        if emit.emit_type == caffe_pb2.EmitConstraint.CENTER:
            cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
            keep &= (cx >= crop[0]) & (cx <= crop[2]) & (cy >= crop[1]) & (cy <= crop[3])
        else:
            keep &= bu.coverage(b, crop[None])[:, 0] > emit.emit_overlap
    keep &= ~((b[:, 0] >= crop[2]) | (b[:, 2] <= crop[0]) | (b[:, 1] >= crop[3]) | (b[:, 3] <= crop[1]))
    w, h = crop[2] - crop[0], crop[3] - crop[1]
    proj = np.clip((b - crop[[0, 1, 0, 1]]) / [w, h, w, h], 0.0, 1.0)
    keep &= bu.box_size(proj) > 0
    return boxes.take(keep, proj)


def satisfies(sampled: np.ndarray, objects: np.ndarray, c: caffe_pb2.SampleConstraint) -> np.ndarray:
    """SSD's SatisfySampleConstraint for sampled boxes (T, 4) against the objects (G, 4). As in SSD, a sample
    passes when some object meets the first kind of constraint given (Jaccard overlap, else sample coverage,
    else object coverage); without any constraint every sample passes."""
    if c.HasField("min_jaccard_overlap") or c.HasField("max_jaccard_overlap"):
        value, lo, hi = bu.jaccard(sampled, objects), "min_jaccard_overlap", "max_jaccard_overlap"
    elif c.HasField("min_sample_coverage") or c.HasField("max_sample_coverage"):
        value, lo, hi = bu.coverage(sampled, objects), "min_sample_coverage", "max_sample_coverage"
    elif c.HasField("min_object_coverage") or c.HasField("max_object_coverage"):
        value, lo, hi = bu.coverage(objects, sampled).T, "min_object_coverage", "max_object_coverage"
    else:
        return np.ones(len(sampled), dtype=bool)
    ok = np.ones(value.shape, dtype=bool)
    if c.HasField(lo):
        ok &= value >= getattr(c, lo)
    if c.HasField(hi):
        ok &= value <= getattr(c, hi)
    return ok.any(axis=1)


def generate_samples(samplers, objects: np.ndarray, rs: np.random.RandomState) -> np.ndarray:
    """SSD's GenerateBatchSamples: for each batch sampler, ``max_trials`` boxes of random scale and aspect ratio,
    keeping the first ``max_sample`` that satisfy its constraint. Returns (S, 4) candidate crop windows."""
    found = []
    for bs in samplers:
        if not bs.use_original_image:
            continue
        s = bs.sampler
        if not 0 < s.min_scale <= s.max_scale <= 1:
            raise PcnError("batch_sampler: need 0 < min_scale <= max_scale <= 1, got %g and %g"
                           % (s.min_scale, s.max_scale))
        if not 0 < s.min_aspect_ratio <= s.max_aspect_ratio:
            raise PcnError("batch_sampler: need 0 < min_aspect_ratio <= max_aspect_ratio, got %g and %g"
                           % (s.min_aspect_ratio, s.max_aspect_ratio))
        t = int(bs.max_trials)
        scale = rs.uniform(s.min_scale, s.max_scale, t)
        ratio = np.clip(rs.uniform(s.min_aspect_ratio, s.max_aspect_ratio, t), scale ** 2, 1 / scale ** 2)
        w, h = scale * np.sqrt(ratio), scale / np.sqrt(ratio)
        x0, y0 = rs.uniform(0, 1, t) * (1 - w), rs.uniform(0, 1, t) * (1 - h)
        boxes = np.stack([x0, y0, x0 + w, y0 + h], axis=1)
        good = boxes[satisfies(boxes, objects.reshape(-1, 4), bs.sample_constraint)]
        if bs.HasField("max_sample"):
            good = good[:bs.max_sample]
        found.append(good)
    return np.concatenate(found) if found else np.zeros((0, 4))


# --- images ------------------------------------------------------------------------------------------------------
def crop(img: np.ndarray, boxes: Boxes, window: np.ndarray, emit=None):
    """SSD's CropImage: the pixels of ``window`` (clipped to the image) and the boxes projected into it."""
    h, w = img.shape[:2]
    win = np.clip(window, 0.0, 1.0)
    x0, y0 = int(win[0] * w), int(win[1] * h)
    cw, ch = int(win[2] * w - win[0] * w), int(win[3] * h - win[1] * h)
    return img[y0:y0 + ch, x0:x0 + cw], project(win, boxes, emit)


def expand(img: np.ndarray, boxes: Boxes, p: caffe_pb2.ExpansionParameter, fill, rs: np.random.RandomState,
           emit=None):
    """SSD's ExpandImage ("zoom out"): with probability ``prob`` the image is put at a random whole-pixel place
    of a canvas up to ``max_expand_ratio`` times larger, filled with the mean values."""
    if rs.uniform(0, 1) > p.prob or abs(p.max_expand_ratio - 1.0) < 1e-2:
        return img, boxes
    ratio = rs.uniform(1.0, p.max_expand_ratio)
    h, w, c = img.shape
    eh, ew = int(h * ratio), int(w * ratio)
    y0, x0 = np.floor(rs.uniform(0, eh - h)), np.floor(rs.uniform(0, ew - w))
    canvas = np.empty((eh, ew, c), np.uint8)
    canvas[...] = np.clip(np.round(fill), 0, 255).astype(np.uint8) if len(fill) else 0
    canvas[int(y0):int(y0) + h, int(x0):int(x0) + w] = img
    window = np.array([-x0 / w, -y0 / h, (ew - x0) / w, (eh - y0) / h])
    return canvas, project(window, boxes, emit)


def _bgr_to_hsv(img: np.ndarray) -> np.ndarray:
    """OpenCV's 8-bit BGR -> HSV (H in [0, 180), S and V in [0, 255]), in float."""
    f = img.astype(np.float64)
    b, g, r = f[..., 0], f[..., 1], f[..., 2]
    v = f.max(axis=-1)
    d = v - f.min(axis=-1)
    s = np.where(v > 0, 255.0 * d / np.where(v > 0, v, 1), 0.0)
    dd = np.where(d > 0, d, 1)
    h = np.where(v == r, 60 * (g - b) / dd, np.where(v == g, 120 + 60 * (b - r) / dd, 240 + 60 * (r - g) / dd))
    h = np.where(d > 0, np.mod(h, 360), 0.0)
    return np.stack([np.round(h / 2) % 180, np.round(s), v], axis=-1)


def _hsv_to_bgr(hsv: np.ndarray) -> np.ndarray:
    h = np.mod(hsv[..., 0] * 2.0, 360.0) / 60.0
    s, v = hsv[..., 1] / 255.0, hsv[..., 2]
    i = np.floor(h).astype(int) % 6
    f = h - np.floor(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    return np.clip(np.round(np.stack([b, g, r], axis=-1)), 0, 255).astype(np.uint8)


def _u8(x) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def distort(img: np.ndarray, p: caffe_pb2.DistortionParameter, rs: np.random.RandomState) -> np.ndarray:
    """SSD's ApplyDistort: brightness, contrast, saturation, hue (contrast last in half the cases) and channel
    order, each applied with its probability. Colour conversions follow OpenCV's 8-bit HSV; rounding can differ
    from OpenCV's by a grey level."""
    def brightness(x):
        if rs.uniform(0, 1) < p.brightness_prob:
            delta = rs.uniform(-p.brightness_delta, p.brightness_delta)
            if abs(delta) > 0:
                x = _u8(x.astype(np.float64) + delta)
        return x

    def contrast(x):
        if rs.uniform(0, 1) < p.contrast_prob:
            delta = rs.uniform(p.contrast_lower, p.contrast_upper)
            if abs(delta - 1) > 1e-3:
                x = _u8(x.astype(np.float64) * delta)
        return x

    def saturation(x):
        if rs.uniform(0, 1) < p.saturation_prob and x.shape[-1] == 3:
            hsv = _bgr_to_hsv(x)
            hsv[..., 1] = np.clip(np.round(hsv[..., 1] * rs.uniform(p.saturation_lower, p.saturation_upper)), 0, 255)
            x = _hsv_to_bgr(hsv)
        return x

    def hue(x):
        if rs.uniform(0, 1) < p.hue_prob and x.shape[-1] == 3:
            hsv = _bgr_to_hsv(x)
            hsv[..., 0] = np.clip(np.round(hsv[..., 0] + rs.uniform(-p.hue_delta, p.hue_delta)), 0, 255)
            x = _hsv_to_bgr(hsv)
        return x

    first = rs.uniform(0, 1) > 0.5
    steps = [brightness, contrast, saturation, hue] if first else [brightness, saturation, hue, contrast]
    for step in steps:
        img = step(img)
    if rs.uniform(0, 1) < p.random_order_prob:
        img = img[..., rs.permutation(img.shape[-1])]
    return img
