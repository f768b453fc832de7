"""Classifier: a TEST-phase Net that predicts class probabilities of HxWxK images (pycaffe's ``caffe.Classifier``)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .io import transform
from .io.transform import Transformer, TransformError, resize_image
from .net import TEST, Net


class Classifier(Net):
    """Resizes images to ``image_dims``, takes the centre crop or ten crops at the input size, preprocesses them
    with a ``Transformer`` (transpose to KxHxW, then ``channel_swap``, ``raw_scale``, ``mean``, ``input_scale``)
    and runs them through the net's first input.

    ``pretrained_file`` may be None to keep the filler-initialised weights (pycaffe requires a file).
    """

    def __init__(self, model_file, pretrained_file: Optional[str], image_dims: Optional[Sequence[int]] = None,
                 mean=None, input_scale: Optional[float] = None, raw_scale: Optional[float] = None,
                 channel_swap: Optional[Sequence[int]] = None):
        Net.__init__(self, model_file, pretrained_file, TEST)
        in_ = self.inputs[0]
        shape = self.blobs[in_].data.shape
        self.transformer = Transformer({in_: shape})
        self.transformer.set_transpose(in_, (2, 0, 1))
        if mean is not None:
            self.transformer.set_mean(in_, mean)
        if input_scale is not None:
            self.transformer.set_input_scale(in_, input_scale)
        if raw_scale is not None:
            self.transformer.set_raw_scale(in_, raw_scale)
        if channel_swap is not None:
            self.transformer.set_channel_swap(in_, channel_swap)
        self.crop_dims = np.array(shape[2:])
        self.image_dims = np.array(image_dims if image_dims is not None and len(image_dims) else self.crop_dims)

    def predict(self, inputs, oversample: bool = True) -> np.ndarray:
        """(N x C) probabilities of the first output for N HxWxK images; with ``oversample`` the mean over the ten
        crops (corners, centre, mirrors), else the centre crop alone."""
        h, w = (int(d) for d in self.image_dims)
        ch, cw = (int(d) for d in self.crop_dims)
        if ch > h or cw > w:
            raise TransformError("Classifier: image_dims %s are smaller than the net input %s"
                                 % ((h, w), (ch, cw)))
        images = np.stack([resize_image(im, (h, w)) for im in inputs])
        if oversample:
            images = transform.oversample(images, (ch, cw))
        else:
            y, x = (h - ch) // 2, (w - cw) // 2  # pycaffe's centre crop, as integers
            images = images[:, y:y + ch, x:x + cw]
        in_ = self.inputs[0]
        caffe_in = np.stack([self.transformer.preprocess(in_, im) for im in images])
        predictions = self.forward_all(**{in_: caffe_in})[self.outputs[0]]
        if oversample:
            predictions = predictions.reshape((len(predictions) // 10, 10, -1)).mean(1)
        return predictions

