"""Caffe's DataTransformer: ``transform_param`` (crop, mirror, mean, scale) applied to a batch of images.

The order and arithmetic are Caffe's: crop and mirror first, then ``(x - mean) * scale`` in float32, with a
``mean_file`` cropped at the same offsets as the image. In TRAIN each sample gets a random crop; in TEST the
crop is centred. As in Caffe, ``mirror: true`` flips a random half of the samples in *either* phase (Caffe's
``Transform`` draws the mirror coin without looking at the phase), so TEST nets normally leave it off.

A whole batch is transformed with one gather (fancy indexing), not a loop over samples. Random draws come from
a generator seeded once from :func:`pycaffe_norm.random.rng` (Caffe seeds its transformer's RNG from
``caffe_rng_rand()`` the same way, and only when it needs one), so runs are reproducible under ``random_seed``
and a resumed solver can replay the draws (:meth:`DataTransformer.skip`).
"""
from __future__ import annotations

import logging
import os
from typing import List, Optional, Tuple

import numpy as np

from ..errors import NetError
from ..proto import caffe_pb2
from ..random import rng
from .paths import resolve_path

log = logging.getLogger("pycaffe_norm")

TRAIN = caffe_pb2.TRAIN


class DataTransformer:
    """Applies one layer's ``transform_param`` to (N, C, H, W) batches; ``where`` names the layer in errors."""

    def __init__(self, param: caffe_pb2.TransformationParameter, phase: int, where: str = "transform_param"):
        self.where = where
        self.phase = phase
        self.scale = np.float32(param.scale)
        self.mirror = bool(param.mirror)
        self.crop_size = int(param.crop_size)
        self.force_color = bool(param.force_color)
        self.force_gray = bool(param.force_gray)
        if self.force_color and self.force_gray:
            raise NetError("%s: cannot set both force_color and force_gray" % where)
        if param.HasField("mean_file") and len(param.mean_value):
            raise NetError("%s: cannot specify mean_file and mean_value at the same time" % where)
        self.mean_file: Optional[np.ndarray] = None
        if param.HasField("mean_file"):
            self.mean_file = self._load_mean(param.mean_file)
        self.mean_values = np.array(param.mean_value, dtype=np.float32) if len(param.mean_value) else None
        # MyCaffe's color_order RGB: the net wants RGB while Caffe's databases and mean files hold BGR, so the
        # channels of a 3-channel result are reversed last (after the mean, which is in the data's order).
        self.to_rgb = param.color_order == caffe_pb2.TransformationParameter.RGB
        # Caffe's InitRand: a generator only when some draw is needed, seeded from the global RNG.
        self.needs_rand = self.mirror or (phase == TRAIN and self.crop_size > 0)
        self._seed = int(rng().randint(0, 2**31 - 1)) if self.needs_rand else 0
        self._rng = np.random.RandomState(self._seed)

    def _load_mean(self, path: str) -> np.ndarray:
        from ..io.arrays import load_binaryproto

        found = resolve_path(path)
        if found is None:
            raise NetError("%s: mean_file not found: %s (working directory: %s)" % (self.where, path, os.getcwd()))
        log.info("Loading mean file from: %s", found)
        mean = load_binaryproto(found).astype(np.float32)
        if mean.ndim == 4 and mean.shape[0] == 1:
            mean = mean[0]
        elif mean.ndim == 2:
            mean = mean[None]
        if mean.ndim != 3:
            raise NetError("%s: mean_file %s holds a blob of shape %s; expected (1, C, H, W)"
                           % (self.where, found, mean.shape))
        return np.ascontiguousarray(mean)

    # --- shapes -------------------------------------------------------------------------------------------
    def output_shape(self, chw: Tuple[int, int, int]) -> Tuple[int, int, int]:
        """The transformed shape of one (C, H, W) sample (Caffe's InferBlobShape); checks the mean and crop fit."""
        c, h, w = (int(d) for d in chw)
        if c <= 0:
            raise NetError("%s: data has %d channels" % (self.where, c))
        if self.crop_size and (h < self.crop_size or w < self.crop_size):
            raise NetError("%s: crop_size %d is larger than the %dx%d data" % (self.where, self.crop_size, h, w))
        if self.mean_file is not None and self.mean_file.shape != (c, h, w):
            raise NetError("%s: mean_file has shape %s but the data is %s (C, H, W); the mean must match the "
                           "uncropped data" % (self.where, self.mean_file.shape, (c, h, w)))
        if self.mean_values is not None and self.mean_values.size not in (1, c):
            raise NetError("%s: %d mean_value entries for %d channels; specify either 1 mean_value or as many "
                           "as channels" % (self.where, self.mean_values.size, c))
        if self.crop_size:
            return c, self.crop_size, self.crop_size
        return c, h, w

    # --- random draws -------------------------------------------------------------------------------------
    def _draw(self, n: int, h: int, w: int):
        """Per-sample (mirror, h_off, w_off) for a batch of ``n``; a fixed number of draws per batch size."""
        mirror = self._rng.randint(0, 2, size=n).astype(bool) if self.mirror else np.zeros(n, dtype=bool)
        cs = self.crop_size
        if cs and self.phase == TRAIN:
            h_off = self._rng.randint(0, h - cs + 1, size=n)
            w_off = self._rng.randint(0, w - cs + 1, size=n)
        elif cs:
            h_off = np.full(n, (h - cs) // 2)
            w_off = np.full(n, (w - cs) // 2)
        else:
            h_off = w_off = np.zeros(n, dtype=np.int64)
        return mirror, h_off, w_off

    def reset(self) -> None:
        """Back to the draws right after construction."""
        self._rng = np.random.RandomState(self._seed)

    def skip(self, batches: int, batch_size: int, h: int, w: int) -> None:
        """Replays the draws of ``batches`` batches of ``batch_size`` (HxW) samples from :meth:`reset`."""
        self.reset()
        if self.needs_rand:
            for _ in range(int(batches)):
                self._draw(batch_size, h, w)

    # --- the transform ------------------------------------------------------------------------------------
    def transform(self, x: np.ndarray) -> np.ndarray:
        """(N, C, H, W) uint8 or float samples -> float32 (N, C, h, w): crop/mirror, then (x - mean) * scale."""
        n, c, h, w = x.shape
        oc, oh, ow = self.output_shape((c, h, w))
        mirror, h_off, w_off = self._draw(n, h, w)
        if oh != h or ow != w or mirror.any():
            rows = h_off[:, None] + np.arange(oh)                      # (N, oh)
            cols = w_off[:, None] + np.arange(ow)                      # (N, ow)
            cols = np.where(mirror[:, None], cols[:, ::-1], cols)      # a mirrored sample reads its crop right to left
            idx = (rows[:, None, :, None], cols[:, None, None, :])
            x = x[(np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None]) + idx]
            mean = self.mean_file[(np.arange(c)[None, :, None, None],) + idx] if self.mean_file is not None else None
        else:
            mean = self.mean_file[None] if self.mean_file is not None else None
        out = x.astype(np.float32)
        if mean is not None:
            out -= mean
        elif self.mean_values is not None:
            out -= np.broadcast_to(self.mean_values, (c,)).reshape(1, c, 1, 1)
        out *= self.scale
        if self.to_rgb and c == 3:
            out = np.ascontiguousarray(out[:, ::-1])
        return out


# --- image decoding (Caffe reads images with OpenCV; pcn with Pillow) ---------------------------------------
def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise NetError("decoding images (encoded Datums, ImageData, convert_imageset) needs Pillow: "
                       "pip install 'pycaffe_norm[image]'") from None
    return Image


def decode_image(source, color: Optional[bool] = True, what: str = "image") -> np.ndarray:
    """An image file (path) or its bytes -> uint8 (C, H, W) in OpenCV's channel order (BGR, BGRA).

    ``color`` True gives 3 channels, False 1 (Pillow's ITU-R 601 luma, OpenCV's weights), None the file's own
    channels (OpenCV's IMREAD_UNCHANGED: grey stays 1 channel, alpha is kept). Only 8-bit images: Caffe's
    transformer rejects other depths.
    """
    import io

    Image = _pillow()
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source) as im:
            im.load()
            mode = im.mode
            if mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                raise NetError("%s: %s-mode (16/32-bit) images are not supported; Caffe's data layers read 8-bit "
                               "images" % (what, mode))
            if color is True:
                im = im.convert("RGB")
            elif color is False:
                im = im.convert("L")
            elif mode == "1":
                im = im.convert("L")
            elif mode in ("LA", "PA") or (mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
            elif mode not in ("L", "RGB", "RGBA"):
                im = im.convert("RGB")
            a = np.asarray(im, dtype=np.uint8)
    except OSError as e:  # unreadable or not an image (PIL.UnidentifiedImageError is an OSError)
        raise NetError("%s: cannot decode image: %s" % (what, e)) from None
    if a.ndim == 2:
        return np.ascontiguousarray(a[None])
    a = a[:, :, [2, 1, 0, 3][:a.shape[2]]]  # RGB(A) -> BGR(A), the order Caffe's Datums and mean files use
    return np.ascontiguousarray(a.transpose(2, 0, 1))


def resize_uint8(chw: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a uint8 (C, H, W) image to (height, width), rounded back to uint8.

    Same sampling as OpenCV's INTER_LINEAR (half-pixel centres, clamped edges, no anti-aliasing when shrinking),
    via :func:`pycaffe_norm.io.transform.resize_image`; where OpenCV's 11-bit fixed-point weights are inexact the
    result can differ from OpenCV's by one grey level.
    """
    from ..io.transform import resize_image

    if chw.shape[1:] == (height, width):
        return chw
    out = resize_image(chw.transpose(1, 2, 0), (height, width))
    # halves round up, as OpenCV's fixed-point (+ 1/2, shift) does
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8).transpose(2, 0, 1).copy()


def read_image(path: str, height: int = 0, width: int = 0, color: Optional[bool] = True,
               what: Optional[str] = None) -> np.ndarray:
    """Caffe's ReadImageToCVMat: decode ``path`` and resize when both ``height`` and ``width`` are > 0.
    ``what`` names the image in errors (default: the path)."""
    img = decode_image(path, color, what=what or path)
    if height > 0 and width > 0:
        img = resize_uint8(img, height, width)
    return img


def read_image_list(list_file: str, where: str = "") -> List[Tuple[str, int]]:
    """The (path, label) pairs of an image list file, one ``path label`` per line, as Caffe's ImageData layer and
    convert_imageset read it; the last space separates the label, so paths may contain spaces. ``where`` prefixes
    error messages (e.g. the layer)."""
    lines = []
    with open(list_file) as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            path, _, label = line.rpartition(" ")
            try:
                lines.append((path.rstrip(), int(label)))
            except ValueError:
                raise NetError("%s%s:%d: expected 'path label', got %r" % (where, list_file, number, line)) from None
    return lines
