"""Upgrades of legacy net definitions to the current format, as Caffe's ``upgrade_proto`` does on load.

* ``input`` / ``input_shape`` / ``input_dim`` fields become an ``Input`` layer named "input".
* V1 ``layers { type: CONVOLUTION ... }`` entries become ``layer { type: "Convolution" ... }``.
"""
from __future__ import annotations

from .errors import NetError
from .proto import caffe_pb2

_V1 = caffe_pb2.V1LayerParameter
V1_TYPE_NAMES = {
    _V1.NONE: "", _V1.ABSVAL: "AbsVal", _V1.ACCURACY: "Accuracy", _V1.ARGMAX: "ArgMax", _V1.BNLL: "BNLL",
    _V1.CONCAT: "Concat", _V1.CONTRASTIVE_LOSS: "ContrastiveLoss", _V1.CONVOLUTION: "Convolution",
    _V1.DECONVOLUTION: "Deconvolution", _V1.DATA: "Data", _V1.DROPOUT: "Dropout", _V1.DUMMY_DATA: "DummyData",
    _V1.EUCLIDEAN_LOSS: "EuclideanLoss", _V1.ELTWISE: "Eltwise", _V1.EXP: "Exp", _V1.FLATTEN: "Flatten",
    _V1.HDF5_DATA: "HDF5Data", _V1.HDF5_OUTPUT: "HDF5Output", _V1.HINGE_LOSS: "HingeLoss", _V1.IM2COL: "Im2col",
    _V1.IMAGE_DATA: "ImageData", _V1.INFOGAIN_LOSS: "InfogainLoss", _V1.INNER_PRODUCT: "InnerProduct",
    _V1.LRN: "LRN", _V1.MEMORY_DATA: "MemoryData", _V1.MULTINOMIAL_LOGISTIC_LOSS: "MultinomialLogisticLoss",
    _V1.MVN: "MVN", _V1.POOLING: "Pooling", _V1.POWER: "Power", _V1.RELU: "ReLU", _V1.SIGMOID: "Sigmoid",
    _V1.SIGMOID_CROSS_ENTROPY_LOSS: "SigmoidCrossEntropyLoss", _V1.SILENCE: "Silence", _V1.SOFTMAX: "Softmax",
    _V1.SOFTMAX_LOSS: "SoftmaxWithLoss", _V1.SPLIT: "Split", _V1.SLICE: "Slice", _V1.TANH: "TanH",
    _V1.WINDOW_DATA: "WindowData", _V1.THRESHOLD: "Threshold",
}
# V1 fields handled explicitly; every other V1 field with a namesake in LayerParameter is copied as is.
_V1_SPECIAL = {"layer", "type", "blobs_lr", "weight_decay", "param", "blob_share_mode"}


def upgrade_v1_layer(v1: caffe_pb2.V1LayerParameter) -> caffe_pb2.LayerParameter:
    if v1.HasField("layer"):
        raise NetError("layer %r uses the V0 layer format (2014), which pcn does not read; upgrade the file with "
                       "Caffe's upgrade_net_proto_text tool" % (v1.name or v1.layer.name))
    out = caffe_pb2.LayerParameter()
    layer_fields = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    for field, value in v1.ListFields():
        if field.name in _V1_SPECIAL:
            continue
        target = layer_fields.get(field.name)
        if target is None:
            raise NetError("V1 layer %r: field %r has no counterpart in the current format" % (v1.name, field.name))
        repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
        if repeated:
            getattr(out, field.name).extend(value)
        elif field.message_type is not None:
            getattr(out, field.name).CopyFrom(value)
        else:
            setattr(out, field.name, value)
    out.type = V1_TYPE_NAMES.get(v1.type, "")
    n = max(len(v1.blobs_lr), len(v1.weight_decay), len(v1.param), len(v1.blob_share_mode))
    for i in range(n):
        spec = out.param.add()
        if i < len(v1.param):
            spec.name = v1.param[i]
        if i < len(v1.blob_share_mode):
            spec.share_mode = v1.blob_share_mode[i]
        if i < len(v1.blobs_lr):
            spec.lr_mult = v1.blobs_lr[i]
        if i < len(v1.weight_decay):
            spec.decay_mult = v1.weight_decay[i]
    return out


def upgrade_net(param: caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    """A copy of ``param`` in the current format (``layer`` entries, inputs as an Input layer)."""
    if param.layers and param.layer:
        raise NetError("net %r mixes V1 'layers' and current 'layer' entries; use one format" % param.name)
    if not param.layers and not (param.input or param.input_shape or param.input_dim):
        return param
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    if param.layers:
        del out.layers[:]
        del out.layer[:]
        for v1 in param.layers:
            out.layer.add().CopyFrom(upgrade_v1_layer(v1))
    if param.input:
        n = len(param.input)
        if param.input_shape and len(param.input_shape) != n:
            raise NetError("net %r: %d input names but %d input_shape entries"
                           % (param.name, n, len(param.input_shape)))
        if param.input_dim and len(param.input_dim) != 4 * n:
            raise NetError("net %r: input_dim needs 4 values per input (%d inputs, %d values)"
                           % (param.name, n, len(param.input_dim)))
        layer = caffe_pb2.LayerParameter(name="input", type="Input")
        layer.top.extend(param.input)
        for i in range(n):
            shape = layer.input_param.shape.add()
            if param.input_shape:
                shape.CopyFrom(param.input_shape[i])
            elif param.input_dim:
                shape.dim.extend(param.input_dim[4 * i:4 * i + 4])
        layers = [layer] + list(out.layer)
        del out.layer[:]
        for lp in layers:
            out.layer.add().CopyFrom(lp)
        out.ClearField("input")
        out.ClearField("input_shape")
        out.ClearField("input_dim")
    elif param.input_shape or param.input_dim:
        raise NetError("net %r: input_shape/input_dim given without input names" % param.name)
    return out
