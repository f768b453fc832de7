"""SSD-Caffe's AnnotatedData layer: batches of AnnotatedDatum records (an image and its boxes) from an LMDB or
LevelDB, augmented as SSD trains (distortion, expansion, batch samplers, resize, crop, mirror) on a prefetch
thread."""
from __future__ import annotations

import logging
import os
import queue
import threading

import numpy as np

from ..data import annotation as aug
from ..data.db import open_reader
from ..data.paths import candidates
from ..data.transformer import decode_image, resize_uint8
from ..errors import NetError, PcnError
from ..proto import caffe_pb2
from ..random import rng
from .base import Layer, register

log = logging.getLogger("pycaffe_norm")
_RP = caffe_pb2.ResizeParameter


def _read_datum(record: caffe_pb2.AnnotatedDatum, color, where: str) -> np.ndarray:
    """The image of an AnnotatedDatum as uint8 (H, W, C), BGR."""
    d = record.datum
    if d.encoded:
        chw = decode_image(d.data, color, what=where)
    else:
        shape = (d.channels, d.height, d.width)
        raw = np.frombuffer(d.data, np.uint8) if len(d.data) else np.asarray(d.float_data, np.float32)
        if raw.size != int(np.prod(shape)) or raw.size == 0:
            raise PcnError("%s holds %d values for its shape %s (channels, height, width)" % (where, raw.size, shape))
        chw = np.clip(np.round(raw), 0, 255).astype(np.uint8).reshape(shape) if raw.dtype != np.uint8 \
            else raw.reshape(shape)
    return np.ascontiguousarray(chw.transpose(1, 2, 0))


@register("AnnotatedData")
class AnnotatedDataLayer(Layer):
    """Top 0: (batch_size, C, H, W) images after ``transform_param``; top 1 (optional): ground truth
    (1, 1, K, 8), rows ``[item, label, instance, xmin, ymin, xmax, ymax, difficult]`` (one row of -1 when no box
    survives). Per image, as SSD's ``load_batch``: distort, expand, pick one window from the batch samplers' boxes
    and crop to it, resize (WARP), crop to crop_size, mirror, then ``(x - mean_value) * scale``. Records are read
    in key order, cycling; random draws come from a generator seeded once from pcn's RNG."""

    exact_num_bottom = 0
    min_top = 1
    max_top = 2

    def setup(self, bottom, top):
        lp = self.layer_param
        dp, tp, ap = lp.data_param, lp.transform_param, lp.annotated_data_param
        where = "layer %r (AnnotatedData)" % self.name
        if dp.batch_size <= 0:
            raise NetError("%s: data_param.batch_size must be > 0, got %d" % (where, dp.batch_size))
        if tp.HasField("mean_file"):
            raise NetError("%s: transform_param.mean_file is not supported here; give mean_value" % where)
        if tp.HasField("noise_param"):
            raise NetError("%s: transform_param.noise_param (SSD's OpenCV noise policies) is not supported" % where)
        if tp.force_color and tp.force_gray:
            raise NetError("%s: cannot set both force_color and force_gray" % where)
        if tp.HasField("resize_param"):
            r = tp.resize_param
            if r.resize_mode != _RP.WARP:
                raise NetError("%s: resize_mode %s is not supported (WARP is)" % (where, _RP.Resize_mode.Name(
                    r.resize_mode)))
            if any(m != _RP.LINEAR for m in r.interp_mode):
                raise NetError("%s: only LINEAR interp_mode is supported" % where)
            if r.height <= 0 or r.width <= 0:
                raise NetError("%s: resize_param needs height and width" % where)
        if ap.HasField("anno_type") and ap.anno_type != caffe_pb2.AnnotatedDatum.BBOX:
            raise NetError("%s: only BBOX annotations exist" % where)
        self.where = where
        self.batch_size = int(dp.batch_size)
        self.color = True if tp.force_color else False if tp.force_gray else None
        self.crop_hw = (int(tp.crop_size), int(tp.crop_size)) if tp.crop_size else (int(tp.crop_h), int(tp.crop_w))
        self.source = self._resolve(dp.source)
        backend = None
        if dp.HasField("backend"):
            backend = "leveldb" if dp.backend == caffe_pb2.DataParameter.LEVELDB else "lmdb"
        try:
            self._reader = open_reader(self.source, backend)
        except PcnError as e:
            raise NetError("%s: %s" % (where, e)) from None
        first = self._record()
        image = _read_datum(first, self.color, where)
        self.channels = image.shape[2]
        if len(tp.mean_value) not in (0, 1, self.channels):
            raise NetError("%s: give one mean_value or %d, got %d" % (where, self.channels, len(tp.mean_value)))
        self.mean = np.resize(np.asarray(tp.mean_value, np.float32), self.channels) if len(tp.mean_value) \
            else np.zeros(self.channels, np.float32)
        h, w = (tp.resize_param.height, tp.resize_param.width) if tp.HasField("resize_param") else image.shape[:2]
        if self.crop_hw[0] and self.crop_hw[1]:
            if self.crop_hw[0] > h or self.crop_hw[1] > w:
                raise NetError("%s: crop %s is larger than the image %s" % (where, self.crop_hw, (h, w)))
            h, w = self.crop_hw
        self.out_hw = (int(h), int(w))
        top[0].reshape(self.batch_size, self.channels, *self.out_hw)
        if len(top) > 1:
            top[1].reshape(1, 1, 1, 8)
        log.info("output data size: %d,%d,%d,%d", self.batch_size, self.channels, *self.out_hw)
        self._rs = np.random.RandomState(int(rng().randint(0, 2**31 - 1)))
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, int(dp.prefetch)))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._prefetch, name="pcn-prefetch-%s" % self.name, daemon=True)
        self._thread.start()

    def _resolve(self, source: str) -> str:
        if not source:
            raise NetError("%s: data_param.source is empty; give the LMDB or LevelDB folder" % self.where)
        for c in candidates(source):
            if os.path.isdir(c) or os.path.isfile(c):
                return c
        raise NetError("%s: data source not found: %s (working directory: %s)" % (self.where, source, os.getcwd()))

    def _record(self) -> caffe_pb2.AnnotatedDatum:
        key, value = self._reader.key(), self._reader.value()
        try:
            return caffe_pb2.AnnotatedDatum.FromString(value)
        except Exception:
            raise NetError("%s: record %r in %s is not an AnnotatedDatum" % (self.where, key, self.source)) from None

    # --- one image ----------------------------------------------------------------------------------------
    def augment(self, record: caffe_pb2.AnnotatedDatum, rs: np.random.RandomState):
        """One record through SSD's pipeline: (C, H, W) float32 image and its Boxes."""
        tp = self.layer_param.transform_param
        emit = tp.emit_constraint if tp.HasField("emit_constraint") else None
        img = _read_datum(record, self.color, self.where)
        boxes = aug.Boxes.from_datum(record)
        if tp.HasField("distort_param"):
            img = aug.distort(img, tp.distort_param, rs)
        if tp.HasField("expand_param"):
            img, boxes = aug.expand(img, boxes, tp.expand_param, self.mean, rs, emit)
        samplers = self.layer_param.annotated_data_param.batch_sampler
        if len(samplers):
            windows = aug.generate_samples(samplers, boxes.xyxy, rs)
            if len(windows):
                window = windows[rs.randint(len(windows))]
                img, boxes = aug.crop(img, boxes, window, emit)
        if tp.HasField("resize_param"):
            img = resize_uint8(img.transpose(2, 0, 1), tp.resize_param.height, tp.resize_param.width)
            img = img.transpose(1, 2, 0)
        h, w = img.shape[:2]
        ch, cw = self.out_hw
        if (h, w) != (ch, cw) and not (self.crop_hw[0] and self.crop_hw[1]):
            raise NetError("%s: an augmented image is %dx%d, the batch is %dx%d; give resize_param (SSD's "
                           "samplers need it)" % (self.where, h, w, ch, cw))
        if self.phase == caffe_pb2.TRAIN:
            y0, x0 = rs.randint(h - ch + 1), rs.randint(w - cw + 1)
        else:
            y0, x0 = (h - ch) // 2, (w - cw) // 2
        mirror = bool(tp.mirror) and bool(rs.randint(2))
        img = img[y0:y0 + ch, x0:x0 + cw]
        boxes = aug.project(np.array([x0 / w, y0 / h, (x0 + cw) / w, (y0 + ch) / h]), boxes, emit)
        if mirror:
            img = img[:, ::-1]
            boxes.xyxy[:, [0, 2]] = 1.0 - boxes.xyxy[:, [2, 0]]
        out = (img.astype(np.float32) - self.mean) * np.float32(tp.scale)
        return out.transpose(2, 0, 1), boxes

    # --- the prefetch thread ------------------------------------------------------------------------------
    def _batch(self):
        images, rows = [], []
        for item in range(self.batch_size):
            record = self._record()
            self._reader.next()
            image, boxes = self.augment(record, self._rs)
            images.append(image)
            k = len(boxes.label)
            rows.append(np.column_stack([np.full(k, item), boxes.label, boxes.instance, boxes.xyxy,
                                         boxes.difficult]).reshape(-1, 8))
        labels = np.concatenate(rows)
        if labels.shape[0] == 0:
            labels = np.full((1, 8), -1.0)
        return np.stack(images), labels

    def _prefetch(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._batch()
            except Exception as e:  # noqa: BLE001 - handed to forward(), which raises it in the caller
                item = e
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, Exception):
                return

    # --- verbs --------------------------------------------------------------------------------------------
    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        item = self._queue.get()
        if isinstance(item, Exception):
            if isinstance(item, PcnError):
                raise item
            raise NetError("%s: reading a batch failed: %s" % (self.where, item)) from item
        images, labels = item
        top[0].data[...] = top[0].xp.asarray(images)
        if len(top) > 1:
            top[1].reshape(1, 1, labels.shape[0], 8)
            top[1].data[...] = top[1].xp.asarray(labels.reshape(top[1].shape))

    def backward(self, top, propagate_down, bottom):
        pass

    def __del__(self):
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
