"""Layer families. Importing this package registers every layer type with the registry in ``base``; each
module registers its classes under the ``type:`` strings a prototxt uses (MyCaffe's spellings included):

- ``annotated_data``: AnnotatedData (SSD)
- ``common``: ArgMax, BatchReindex, Concat, Crop, Eltwise, Filter, Flatten, Parameter, Reduction, Reshape, Silence,
  Slice, Split, Tile
- ``data_layers``: Data, DummyData, HDF5Data, HDF5Output, ImageData, Input, MemoryData
- ``detection``: DetectionEvaluate, DetectionOutput, MultiBoxLoss, Permute, PriorBox, SmoothL1Loss (SSD)
- ``inner_product``: Embed, InnerProduct
- ``loss``: Accuracy, ContrastiveLoss, EuclideanLoss, HingeLoss, InfogainLoss, MultinomialLogisticLoss,
  SigmoidCrossEntropyLoss, Softmax, SoftmaxWithLoss
- ``modern_normalization``: ConvNeXtGRN, GroupNorm, InstanceNorm, LayerNorm, RMSNorm
- ``mycaffe_data``: DataSequence
- ``mycaffe_embedding``: AccuracyDecode, AccuracyEncoding, Debug, Decode, Knn
- ``mycaffe_loss``: MemoryLoss, TripletLoss
- ``mycaffe_recurrent``: LstmAttention, LstmSimple
- ``mycaffe_vision``: UnPooling
- ``neuron``: AbsVal, BNLL, Clip, Dropout, ELU, Exp, Log, Power, PReLU, ReLU, Sigmoid, Swish, TanH, Threshold
- ``normalization``: BatchNorm, globresnet, GlobResNorm, GRN, LRN, MVN, Normalization1, Normalization2, Normalize
- ``python_layer``: Python (user layer classes, as in pycaffe)
- ``recurrent``: LSTM, LSTMUnit, RNN
- ``scale``: Bias, Scale
- ``vision``: Convolution, Deconvolution, Im2col, Pooling, SPP
"""
from __future__ import annotations

from ..proto import caffe_pb2

# One module per layer family (the docstring lists their types); each registers its classes on import.
from . import (
    annotated_data,  # noqa: F401,E402
    common,  # noqa: F401,E402
    data_layers,  # noqa: F401,E402
    detection,  # noqa: F401,E402
    inner_product,  # noqa: F401,E402
    loss,  # noqa: F401,E402
    modern_normalization,  # noqa: F401,E402
    mycaffe_data,  # noqa: F401,E402
    mycaffe_embedding,  # noqa: F401,E402
    mycaffe_loss,  # noqa: F401,E402
    mycaffe_recurrent,  # noqa: F401,E402
    mycaffe_vision,  # noqa: F401,E402
    neuron,  # noqa: F401,E402
    normalization,  # noqa: F401,E402
    python_layer,  # noqa: F401,E402
    recurrent,  # noqa: F401,E402
    scale,  # noqa: F401,E402
    vision,  # noqa: F401,E402
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
