"""Layer families. Importing this package registers every layer type with the registry in ``base``."""
from __future__ import annotations

from ..proto import caffe_pb2

# One module per layer family; each registers its classes on import.
from . import (
    annotated_data,  # noqa: F401,E402  AnnotatedData (SSD)
    common,  # noqa: F401,E402  Split, Concat, Slice, Eltwise, Flatten, Reshape, Silence
    data,  # noqa: F401,E402  Input, HDF5Data
    detection,  # noqa: F401,E402  Permute, PriorBox, SmoothL1Loss, MultiBoxLoss, DetectionOutput, DetectionEvaluate
    inner_product,  # noqa: F401,E402  InnerProduct
    loss,  # noqa: F401,E402  Softmax, SoftmaxWithLoss, EuclideanLoss, Accuracy
    mycaffe_data,  # noqa: F401,E402  DataSequence
    mycaffe_embedding,  # noqa: F401,E402  Decode, AccuracyDecode, AccuracyEncoding, Knn, Debug
    mycaffe_loss,  # noqa: F401,E402  TripletLoss, MemoryLoss
    mycaffe_recurrent,  # noqa: F401,E402  LSTM engine CUDNN, LstmSimple, LstmAttention
    mycaffe_vision,  # noqa: F401,E402  UnPooling
    neuron,  # noqa: F401,E402  ReLU, Sigmoid, TanH, AbsVal, ELU, Power, PReLU, Dropout
    normalization,  # noqa: F401,E402  BatchNorm, LRN, MVN, Normalization1, GRN, Normalize
    python_layer,  # noqa: F401,E402  Python (user layer classes, as in pycaffe)
    recurrent,  # noqa: F401,E402  RNN, LSTM, LSTMUnit
    scale,  # noqa: F401,E402  Scale, Bias
    vision,  # noqa: F401,E402  Convolution, Deconvolution, Pooling
)
from .base import TEST, TRAIN, Layer, layer_class, layer_type_list, register  # noqa: F401


def create_layer(param: caffe_pb2.LayerParameter, phase: int = TRAIN) -> Layer:
    """Builds the layer that ``param.type`` names."""
    cls = layer_class(param.type, param.name)
    return cls(param, phase)


def __getattr__(name: str):
    # pycaffe's ``from caffe import layers as L`` is net_spec's layer factory; here ``layers`` is also this
    # package, so a capitalised name (a layer type: ``L.Convolution(...)``) falls through to net_spec.
    if name[:1].isupper():
        from ..net_spec import layers as net_spec_layers
        return getattr(net_spec_layers, name)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
