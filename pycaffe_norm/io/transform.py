"""Deploy-side image handling with pycaffe's API: ``Transformer``, ``load_image``, ``resize_image``, ``oversample``.

Images are HxWxK float arrays (as pycaffe's ``caffe.io`` produces them); net inputs are KxHxW. Resizing is NumPy
only, so any number of channels works without scikit-image or SciPy; decoding files needs Pillow.
"""
from __future__ import annotations

import os
from typing import Dict, Iterable, Sequence

import numpy as np

from ..errors import PcnError

# skimage's rgb2gray weights (ITU-R BT.709), which pycaffe's load_image(color=False) applies to colour images
_GRAY_WEIGHTS = np.array([0.2125, 0.7154, 0.0721], dtype=np.float64)


class TransformError(PcnError, ValueError):
    """A Transformer setting or image that does not fit the net input (a ValueError, as pycaffe raises)."""


class Transformer:
    """Turns HxWxK images into net input (``preprocess``) and back (``deprocess``), per input blob.

    ``Transformer({'data': net.blobs['data'].data.shape})``; the steps run in pycaffe's order: resize to the input's
    HxW, transpose, channel swap, ``* raw_scale``, ``- mean``, ``* input_scale``.
    """

    def __init__(self, inputs: Dict[str, Sequence[int]]):
        self.inputs = {name: tuple(int(d) for d in shape) for name, shape in inputs.items()}
        self.transpose: Dict[str, tuple] = {}
        self.channel_swap: Dict[str, tuple] = {}
        self.raw_scale: Dict[str, float] = {}
        self.mean: Dict[str, np.ndarray] = {}
        self.input_scale: Dict[str, float] = {}

    def _check_input(self, in_: str) -> tuple:
        if in_ not in self.inputs:
            raise TransformError("%r is not one of the Transformer's inputs %s" % (in_, list(self.inputs)))
        return self.inputs[in_]

    def set_transpose(self, in_: str, order: Sequence[int]) -> None:
        """Axis order from the image layout to the net's, e.g. (2, 0, 1) for HxWxK -> KxHxW."""
        shape = self._check_input(in_)
        order = tuple(int(a) for a in order)
        if sorted(order) != list(range(len(shape) - 1)):
            raise TransformError("set_transpose(%r): the order must be a permutation of %s (one axis per dimension "
                                 "of a %d-D image), got %s" % (in_, tuple(range(len(shape) - 1)), len(shape) - 1,
                                                               order))
        self.transpose[in_] = order

    def set_channel_swap(self, in_: str, order: Sequence[int]) -> None:
        """Channel order taken after the transpose, e.g. (2, 1, 0) for RGB -> BGR."""
        shape = self._check_input(in_)
        order = tuple(int(c) for c in order)
        if len(order) != shape[1]:
            raise TransformError("set_channel_swap(%r): input has %d channels, the order %s has %d entries"
                                 % (in_, shape[1], order, len(order)))
        self.channel_swap[in_] = order

    def set_raw_scale(self, in_: str, scale: float) -> None:
        """Factor applied before the mean, e.g. 255 for models trained on [0, 255] pixels fed [0, 1] images."""
        self._check_input(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_: str, mean) -> None:
        """Mean subtracted after raw scaling: a per-channel vector (K,) or a mean image (K, H, W) / (H, W) for K=1.

        A mean image must match the input's KxHxW exactly (as in pycaffe): crop it, or pass ``mean.mean(1).mean(1)``.
        """
        shape = self._check_input(in_)
        mean = np.array(mean)  # a copy, so later edits of the caller's array do not leak in
        if mean.ndim == 1:
            if mean.shape[0] != shape[1]:
                raise TransformError("set_mean(%r): a per-channel mean needs %d values (one per input channel), "
                                     "got %d" % (in_, shape[1], mean.shape[0]))
            mean = mean[:, None, None]
        else:
            ms = (1,) + mean.shape if mean.ndim == 2 else mean.shape
            if len(ms) != 3:
                raise TransformError("set_mean(%r): the mean must be (K,), (K, H, W) or (H, W); got shape %s"
                                     % (in_, mean.shape))
            if ms != shape[1:]:
                raise TransformError("set_mean(%r): the mean image has shape %s (as KxHxW: %s) but the input is %s; "
                                     "crop or resize it to the input, or use the per-channel mean "
                                     "mean.mean(1).mean(1)" % (in_, mean.shape, ms, shape[1:]))
        self.mean[in_] = mean

    def set_input_scale(self, in_: str, scale: float) -> None:
        """Factor applied last, after the mean (e.g. 0.017 for std scaling)."""
        self._check_input(in_)
        self.input_scale[in_] = scale

    def preprocess(self, in_: str, data) -> np.ndarray:
        """One HxWxK image -> float32 net input (KxHxW with the usual transpose). ``data`` is never modified."""
        shape = self._check_input(in_)
        x = np.array(data, dtype=np.float32)  # a copy: pycaffe scales in place and could alter the caller's image
        if x.shape[:2] != shape[2:]:
            x = resize_image(x, shape[2:])
        if in_ in self.transpose:
            x = x.transpose(self.transpose[in_])
        if in_ in self.channel_swap:
            x = x[list(self.channel_swap[in_])]
        if self.raw_scale.get(in_) is not None:
            x *= self.raw_scale[in_]
        if self.mean.get(in_) is not None:
            x -= self.mean[in_]
        if self.input_scale.get(in_) is not None:
            x *= self.input_scale[in_]
        return x

    def deprocess(self, in_: str, data) -> np.ndarray:
        """Inverts ``preprocess`` (except the resize) for one input (KxHxW or 1xKxHxW), e.g. to display it."""
        shape = self._check_input(in_)
        x = np.asarray(data)
        x = x.astype(np.result_type(x.dtype, np.float32))  # a float copy: the inverse steps divide in place
        if x.ndim == len(shape) and x.shape[0] == 1:
            x = x[0]
        if x.ndim != len(shape) - 1:
            raise TransformError("deprocess(%r): expected one %d-D input (or a batch of one), got shape %s"
                                 % (in_, len(shape) - 1, x.shape))
        if self.input_scale.get(in_) is not None:
            x /= self.input_scale[in_]
        if self.mean.get(in_) is not None:
            x += self.mean[in_]
        if self.raw_scale.get(in_) is not None:
            x /= self.raw_scale[in_]
        if in_ in self.channel_swap:
            x = x[list(np.argsort(self.channel_swap[in_]))]
        if in_ in self.transpose:
            x = x.transpose(np.argsort(self.transpose[in_]))
        return x


def load_image(filename: str, color: bool = True) -> np.ndarray:
    """Reads an image file as float32 HxWxK in [0, 1]: K=3 (RGB) when ``color``, else K=1 (intensity).

    Grayscale files are tiled to 3 channels when ``color``; alpha is dropped; colour files read with
    ``color=False`` are converted with skimage's rgb2gray weights, as pycaffe does.
    """
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("load_image needs Pillow: pip install pycaffe_norm[image]") from None
    filename = os.fspath(filename)
    if not os.path.isfile(filename):
        raise FileNotFoundError("load_image: no image file at %r" % filename)
    try:
        with Image.open(filename) as im:
            img = _pil_to_float(im)
    except OSError as e:  # not an image (PIL.UnidentifiedImageError), truncated or corrupt
        raise PcnError("load_image: %r is not an image file Pillow can read: %s" % (filename, e)) from None
    if img.ndim == 3 and img.shape[2] == 4:  # RGBA -> RGB, as pycaffe (no compositing)
        img = img[:, :, :3]
    if img.ndim == 3 and not color:
        img = img @ _GRAY_WEIGHTS
    if img.ndim == 2:
        img = img[:, :, None]
        if color:
            img = np.tile(img, (1, 1, 3))
    return np.ascontiguousarray(img, dtype=np.float32)


def _pil_to_float(im) -> np.ndarray:
    """A Pillow image as float64 in [0, 1] (skimage's img_as_float scaling): HxW, HxWx3 or HxWx4."""
    mode = im.mode
    if mode in ("P", "PA"):
        im = im.convert("RGBA" if mode == "PA" or "transparency" in im.info else "RGB")
    elif mode == "LA":
        im = im.getchannel("L")
    elif mode not in ("1", "L", "RGB", "RGBA", "F") and not mode.startswith("I"):
        im = im.convert("RGB")  # CMYK, YCbCr, LAB, HSV ...
    a = np.asarray(im)
    if im.mode == "F":
        return a.astype(np.float64)
    if im.mode.startswith("I"):  # 16-bit files (PNG/TIFF) open as I or I;16: full scale is 65535
        return a.astype(np.float64) / 65535.0
    if a.dtype == bool:
        return a.astype(np.float64)
    return a.astype(np.float64) / 255.0


def _axis_weights(n_in: int, n_out: int, interp_order: int):
    """Source indices and weights along one axis, with half-pixel centres (output pixel i covers input
    [i, i+1) * n_in / n_out) and edges clamped."""
    centres = (np.arange(n_out) + 0.5) * (n_in / n_out)
    if interp_order == 0:
        i0 = np.minimum(np.floor(centres).astype(np.int64), n_in - 1)
        return i0, i0, np.zeros(n_out)
    pos = np.clip(centres - 0.5, 0, n_in - 1)
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, pos - i0


def resize_image(im, new_dims: Sequence[int], interp_order: int = 1) -> np.ndarray:
    """Resizes an HxW(xK...) image to ``new_dims`` (height, width): bilinear (order 1) or nearest (order 0).

    Separable and vectorised over all trailing axes, so any channel count works. Returns float32.
    """
    im = np.asarray(im)
    if interp_order not in (0, 1):
        raise TransformError("resize_image: interp_order must be 0 (nearest) or 1 (bilinear), got %r"
                             % (interp_order,))
    if im.ndim < 2 or len(new_dims) != 2:
        raise TransformError("resize_image: expected an HxWxK image and (height, width), got shapes %s and %s"
                             % (im.shape, tuple(new_dims)))
    h, w = (int(d) for d in new_dims)
    if h < 1 or w < 1 or im.shape[0] < 1 or im.shape[1] < 1:
        raise TransformError("resize_image: cannot resize shape %s to %s" % (im.shape, (h, w)))
    x = im.astype(np.float64)
    extra = (1,) * (im.ndim - 2)  # broadcast the weights over channel axes
    r0, r1, wr = _axis_weights(im.shape[0], h, interp_order)
    wr = wr.reshape((h, 1) + extra)
    x = x[r0] * (1 - wr) + x[r1] * wr
    c0, c1, wc = _axis_weights(im.shape[1], w, interp_order)
    wc = wc.reshape((1, w) + extra)
    x = x[:, c0] * (1 - wc) + x[:, c1] * wc
    return x.astype(np.float32)


def _crop_starts(size: int, crop: int):
    # pycaffe's centre start (size/2 - crop/2, truncated) equals (size - crop) // 2 for crop <= size
    return 0, (size - crop) // 2, size - crop


def oversample(images: Iterable, crop_dims: Sequence[int]) -> np.ndarray:
    """Ten crops per HxWxK image: top-left, top-right, bottom-left, bottom-right, centre, then the same five
    mirrored left-right. Returns float32 (10 * N, crop_h, crop_w, K), each image's ten crops together."""
    try:
        ims = np.asarray(images if isinstance(images, np.ndarray) else list(images), dtype=np.float32)
    except ValueError:
        raise TransformError("oversample: all images must have the same shape") from None
    if ims.ndim != 4:
        raise TransformError("oversample: expected N images of HxWxK (an N x H x W x K array), got shape %s"
                             % (ims.shape,))
    ch, cw = (int(d) for d in crop_dims)
    n, h, w = ims.shape[:3]
    if not (0 < ch <= h and 0 < cw <= w):
        raise TransformError("oversample: crop %s does not fit images of %s" % ((ch, cw), (h, w)))
    top, mid_y, bottom = _crop_starts(h, ch)
    left, mid_x, right = _crop_starts(w, cw)
    corners = [(top, left), (top, right), (bottom, left), (bottom, right), (mid_y, mid_x)]
    crops = np.stack([ims[:, y:y + ch, x:x + cw] for y, x in corners], axis=1)  # N x 5 x ch x cw x K
    crops = np.concatenate([crops, crops[:, :, :, ::-1]], axis=1)
    return np.ascontiguousarray(crops.reshape((10 * n, ch, cw) + ims.shape[3:]))


__all__ = ["Transformer", "TransformError", "load_image", "resize_image", "oversample"]
