"""Upgrades of legacy net definitions to the current format, as Caffe's ``upgrade_proto`` does on load.

* ``input`` / ``input_shape`` / ``input_dim`` fields become an ``Input`` layer named "input".
* V1 ``layers { type: CONVOLUTION ... }`` entries become ``layer { type: "Convolution" ... }``.
* MyCaffe's own fields and spellings (see :func:`upgrade_mycaffe`) are mapped to Caffe's, ignored with a log line
  when they only tune MyCaffe's engines, or refused with a one-line error when pcn cannot compute what they ask.
"""
from __future__ import annotations

import logging

from .errors import NetError
from .proto import caffe_pb2

log = logging.getLogger("pycaffe_norm")

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
    """A copy of ``param`` in the current format (``layer`` entries, inputs as an Input layer, MyCaffe's
    fields mapped)."""
    out = _upgrade_format(param)
    mycaffe = is_mycaffe(out)
    types = [_pcn_type(lp.type) for lp in out.layer]
    if mycaffe or any(t != lp.type for t, lp in zip(types, out.layer)):
        if out is param:
            out = caffe_pb2.NetParameter()
            out.CopyFrom(param)
        for lp, t in zip(out.layer, types):
            if t != lp.type:
                log.info("layer %r: type %r (MyCaffe's spelling) read as %r", lp.name, lp.type, t)
                lp.type = t
        if mycaffe:
            upgrade_mycaffe(out)
    return out


def _upgrade_format(param: caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
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


# ----------------------------------------------------------------------------------------------------
# MyCaffe
# ----------------------------------------------------------------------------------------------------

# Type strings MyCaffe writes (LayerParameter.getTypeString) that differ from Caffe's. MyCaffe reads type strings
# case-insensitively and with or without underscores, so other spellings are matched that way (see _pcn_type).
MYCAFFE_TYPE_NAMES = {"EXP": "Exp", "BatchReIndex": "BatchReindex", "Im2Col": "Im2col",
                      "softmax_loss": "SoftmaxWithLoss"}
# MyCaffe layers whose name matches a pcn layer but which compute something else. MyCaffe's Lstm and Rnn are pcn's
# LSTM and RNN: the CAFFE engine is BVLC's, LSTM's CUDNN engine is layers/mycaffe_recurrent.py, RNN refuses CUDNN.
_NOT_MYCAFFE_EQUIVALENT = {"LSTMUnit"}
_RULE_PHASES = (caffe_pb2.RUN, caffe_pb2.NONE)
_NET_FIELDS = ("enable_memory_stats", "enable_lora", "enable_lora_only_load", "model_type")


def _extension_fields(msg, prefix: str = "") -> list:
    """Names (dotted paths) of the MyCaffe extension fields set in ``msg`` and its sub-messages."""
    found = []
    for field, value in msg.ListFields():
        name = prefix + field.name
        limit = 20000 if msg.DESCRIPTOR.name == "LayerParameter" else 1000
        if field.number > limit and field.name not in ("normalization_param", "normalization2_param", "grn_param"):
            found.append(name)
        if field.message_type is not None:
            items = value if _is_repeated(field) else [value]
            for item in items:
                found.extend(_extension_fields(item, name + "."))
        elif field.enum_type is not None:
            values = value if _is_repeated(field) else [value]
            if field.enum_type.name == "Phase" and any(v in _RULE_PHASES for v in values):
                found.append(name)
            elif any(v > 1000 for v in values):
                found.append(name)
    return found


def _is_repeated(field) -> bool:
    return field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED


def is_mycaffe(param: caffe_pb2.NetParameter) -> bool:
    """True when ``param`` uses a field or value that only MyCaffe writes (its net-level fields, engine and
    cuDNN settings, MyCaffe-only phases, ...). Normalization1/Normalization2/GRN blocks alone do not count:
    pcn has those layers whatever wrote the file."""
    if any(param.HasField(f) for f in _NET_FIELDS):
        return True
    return any(_extension_fields(lp) for lp in param.layer)


def _pcn_type(type_name: str) -> str:
    from .layers import layer_type_list

    known = layer_type_list()
    if type_name in known:
        return type_name
    key = type_name.lower().replace("_", "")
    for name, pcn_name in MYCAFFE_TYPE_NAMES.items():
        if name.lower().replace("_", "") == key and pcn_name in known:
            return pcn_name
    for name in known:
        if name not in _NOT_MYCAFFE_EQUIVALENT and name.lower().replace("_", "") == key:
            return name
    return type_name


def upgrade_mycaffe(param: caffe_pb2.NetParameter) -> None:
    """Maps, in place, the MyCaffe fields of a net that uses any (see :func:`is_mycaffe`).

    Each MyCaffe field either changes no number pcn computes (accepted, one log line), has an exact Caffe
    counterpart (mapped, one log line), or is refused with a one-line :class:`NetError` naming it.
    """
    set_net = [f for f in _NET_FIELDS if param.HasField(f)]
    if set_net:
        log.info("net %r: MyCaffe net settings %s accepted and ignored (they change no numbers)",
                 param.name, ", ".join(set_net))
    ignored = []
    for lp in param.layer:
        ignored.extend(_upgrade_mycaffe_layer(lp))
    if ignored:
        log.info("net %r: MyCaffe engine and performance settings accepted and ignored (they change no numbers): %s",
                 param.name, ", ".join(ignored))


def _refuse(lp, field: str, why: str) -> NetError:
    return NetError("layer %r (%s): %s (MyCaffe) %s" % (lp.name, lp.type, field, why))


def _upgrade_mycaffe_layer(lp: caffe_pb2.LayerParameter) -> list:
    """Upgrades one layer in place; returns the "layer.field" names of the settings it ignored."""
    ignored = []
    where = lp.name + "."
    if lp.freeze_learning:
        raise _refuse(lp, "freeze_learning: true", "is not supported; give each parameter blob "
                      "param { lr_mult: 0 } instead")
    if lp.use_halfsize:
        raise _refuse(lp, "use_halfsize: true", "stores blobs in half precision, which pcn does not; remove it "
                      "(pcn computes in float32 or float64)")
    for name in ("group_start", "connect_loss_event", "max_bottom_count"):
        if (lp.HasField(name) if name != "max_bottom_count" else len(lp.max_bottom_count)):
            ignored.append(where + name)
            lp.ClearField(name)
    for block in ("batch_norm_param", "lrn_param", "dropout_param", "pooling_param", "convolution_param",
                  "relu_param", "sigmoid_param", "tanh_param", "softmax_param", "spp_param"):
        if lp.HasField(block) and getattr(lp, block).HasField("engine"):
            ignored.append("%s%s.engine" % (where, block))
    if lp.type == "LRN" or lp.HasField("lrn_param"):
        # MyCaffe's LRNParameter defaults are cuDNN's (alpha 1e-4, k 2); MyCaffe always writes both, but a
        # hand-written MyCaffe net that omits them means MyCaffe's values, not BVLC's (alpha 1, k 1).
        lrn = lp.lrn_param
        for name, value in (("alpha", 1e-4), ("k", 2.0)):
            if not lrn.HasField(name):
                setattr(lrn, name, value)
                log.warning("layer %r (LRN): lrn_param.%s unset in a MyCaffe net; using MyCaffe's default %g "
                            "(BVLC Caffe's is 1)", lp.name, name, value)
    if lp.HasField("convolution_param"):
        conv = lp.convolution_param
        for name in ("cudnn_workspace_limit", "cudnn_worspace_allow_on_groups", "cudnn_enable_tensor_cores"):
            if conv.HasField(name):
                ignored.append(where + "convolution_param." + name)
                conv.ClearField(name)
    if lp.HasField("inner_product_param") and lp.inner_product_param.HasField("tranpose"):
        if lp.inner_product_param.tranpose:
            raise _refuse(lp, "inner_product_param.tranpose: true",
                          "is ambiguous: MyCaffe writes transpose under this misspelling but does not read it back "
                          "(so MyCaffe itself computes without transposing); write transpose: true or remove it")
        lp.inner_product_param.ClearField("tranpose")
    if lp.HasField("pooling_param") and lp.pooling_param.HasField("reshape_algorithm"):
        pool = lp.pooling_param
        mode = _PP.FLOOR if pool.reshape_algorithm == caffe_pb2.ONNX else _PP.CEIL
        if pool.HasField("round_mode") and pool.round_mode != mode:
            raise _refuse(lp, "pooling_param.reshape_algorithm", "contradicts round_mode; give one of them")
        pool.round_mode = mode
        pool.ClearField("reshape_algorithm")
        log.info("layer %r (Pooling): MyCaffe's reshape_algorithm read as round_mode %s", lp.name,
                 _PP.RoundMode.Name(mode))
    if lp.HasField("dropout_param"):
        drop = lp.dropout_param
        if drop.HasField("seed"):
            ignored.append(where + "dropout_param.seed")
            drop.ClearField("seed")
        if drop.HasField("active"):
            if not drop.active:
                drop.dropout_ratio = 0.0
                log.info("layer %r (Dropout): active: false (MyCaffe) read as dropout_ratio 0 (identity)", lp.name)
            drop.ClearField("active")
    if lp.HasField("data_param"):
        data = lp.data_param
        if data.backend == caffe_pb2.DataParameter.IMAGEDB:
            raise _refuse(lp, "data_param.backend IMAGEDB",
                          "is MyCaffe's image database (source %r), which pcn cannot read; replace the layer by an "
                          "Input, HDF5Data or LMDB Data layer" % data.source)
        if data.HasField("enable_random_selection"):
            ignored.append(where + "data_param.enable_random_selection")
            data.ClearField("enable_random_selection")
    if lp.HasField("transform_param"):
        tp = lp.transform_param
        if tp.use_imagedb_mean:
            raise _refuse(lp, "transform_param.use_imagedb_mean: true", "subtracts MyCaffe's image-database mean, "
                          "which pcn cannot read; give mean_file or mean_value instead")
        if tp.HasField("color_order") and tp.color_order != caffe_pb2.TransformationParameter.BGR:
            raise _refuse(lp, "transform_param.color_order: RGB", "is not supported; pcn's data layers give "
                          "Caffe's BGR order")
        tp.ClearField("use_imagedb_mean")
        tp.ClearField("color_order")
    return ignored


_PP = caffe_pb2.PoolingParameter
