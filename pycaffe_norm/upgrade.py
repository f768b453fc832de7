"""Upgrades of legacy net definitions to the current format, as Caffe's ``upgrade_proto`` does on load.

* ``input`` / ``input_shape`` / ``input_dim`` fields become an ``Input`` layer named "input".
* V1 ``layers { type: CONVOLUTION ... }`` entries become ``layer { type: "Convolution" ... }``.
* MyCaffe's own fields and spellings (see :func:`upgrade_mycaffe`) are mapped to Caffe's, ignored with a log line
  when they only tune MyCaffe's engines, or refused with a one-line error when pcn cannot compute what they ask.
"""
from __future__ import annotations

import logging
import re
from typing import Optional

from .errors import NetError, PrototxtError, did_you_mean
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


# Caffe's UpgradeV0LayerType: V0's type strings.
_V0_TYPES = {
    "accuracy": _V1.ACCURACY, "bnll": _V1.BNLL, "concat": _V1.CONCAT, "conv": _V1.CONVOLUTION, "data": _V1.DATA,
    "dropout": _V1.DROPOUT, "euclidean_loss": _V1.EUCLIDEAN_LOSS, "flatten": _V1.FLATTEN,
    "hdf5_data": _V1.HDF5_DATA, "hdf5_output": _V1.HDF5_OUTPUT, "im2col": _V1.IM2COL, "images": _V1.IMAGE_DATA,
    "infogain_loss": _V1.INFOGAIN_LOSS, "innerproduct": _V1.INNER_PRODUCT, "lrn": _V1.LRN,
    "multinomial_logistic_loss": _V1.MULTINOMIAL_LOGISTIC_LOSS, "pool": _V1.POOLING, "relu": _V1.RELU,
    "sigmoid": _V1.SIGMOID, "softmax": _V1.SOFTMAX, "softmax_loss": _V1.SOFTMAX_LOSS, "split": _V1.SPLIT,
    "tanh": _V1.TANH, "window_data": _V1.WINDOW_DATA,
}
# Caffe's UpgradeV0LayerParameter: V0 field -> {V0 type: "block.field"} ("*" for every type). A field given to a
# type not listed is an error, as in Caffe.
_V0_FIELDS = {
    "num_output": {"conv": "convolution_param.num_output", "innerproduct": "inner_product_param.num_output"},
    "biasterm": {"conv": "convolution_param.bias_term", "innerproduct": "inner_product_param.bias_term"},
    "weight_filler": {"conv": "convolution_param.weight_filler",
                      "innerproduct": "inner_product_param.weight_filler"},
    "bias_filler": {"conv": "convolution_param.bias_filler", "innerproduct": "inner_product_param.bias_filler"},
    "pad": {"conv": "convolution_param.pad", "pool": "pooling_param.pad"},
    "kernelsize": {"conv": "convolution_param.kernel_size", "pool": "pooling_param.kernel_size"},
    "group": {"conv": "convolution_param.group"},
    "stride": {"conv": "convolution_param.stride", "pool": "pooling_param.stride"},
    "pool": {"pool": "pooling_param.pool"},
    "dropout_ratio": {"dropout": "dropout_param.dropout_ratio"},
    "local_size": {"lrn": "lrn_param.local_size"}, "alpha": {"lrn": "lrn_param.alpha"},
    "beta": {"lrn": "lrn_param.beta"}, "k": {"lrn": "lrn_param.k"},
    "source": {"data": "data_param.source", "hdf5_data": "hdf5_data_param.source",
               "images": "image_data_param.source", "window_data": "window_data_param.source",
               "infogain_loss": "infogain_loss_param.source"},
    "scale": {"*": "transform_param.scale"}, "meanfile": {"*": "transform_param.mean_file"},
    "cropsize": {"*": "transform_param.crop_size"}, "mirror": {"*": "transform_param.mirror"},
    "batchsize": {"data": "data_param.batch_size", "hdf5_data": "hdf5_data_param.batch_size",
                  "images": "image_data_param.batch_size", "window_data": "window_data_param.batch_size"},
    "rand_skip": {"data": "data_param.rand_skip", "images": "image_data_param.rand_skip"},
    "shuffle_images": {"images": "image_data_param.shuffle"},
    "new_height": {"images": "image_data_param.new_height"}, "new_width": {"images": "image_data_param.new_width"},
    "concat_dim": {"concat": "concat_param.concat_dim"},
    "det_fg_threshold": {"window_data": "window_data_param.fg_threshold"},
    "det_bg_threshold": {"window_data": "window_data_param.bg_threshold"},
    "det_fg_fraction": {"window_data": "window_data_param.fg_fraction"},
    "det_context_pad": {"window_data": "window_data_param.context_pad"},
    "det_crop_mode": {"window_data": "window_data_param.crop_mode"},
    "hdf5_output_param": {"hdf5_output": "hdf5_output_param"},
}


def _v0_layer(entry: caffe_pb2.V1LayerParameter, problems: list) -> caffe_pb2.V1LayerParameter:
    """Caffe's UpgradeV0LayerParameter: one V0 ``layers { layer { ... } }`` entry as a V1 entry."""
    v0 = entry.layer
    out = caffe_pb2.V1LayerParameter(bottom=entry.bottom, top=entry.top, name=v0.name)
    if v0.HasField("type"):
        if v0.type not in _V0_TYPES:
            problems.append("V0 layer %r: unknown type %r" % (v0.name, v0.type))
            return out
        out.type = _V0_TYPES[v0.type]
    out.blobs.extend(v0.blobs)
    out.blobs_lr.extend(v0.blobs_lr)
    out.weight_decay.extend(v0.weight_decay)
    for field, value in v0.ListFields():
        if field.name in ("name", "type", "blobs", "blobs_lr", "weight_decay"):
            continue
        targets = _V0_FIELDS.get(field.name, {})
        path = targets.get(v0.type) or targets.get("*")
        if path is None:
            problems.append("V0 layer %r: %s is not a parameter of type %r" % (v0.name, field.name, v0.type))
            continue
        block, name = path.split(".") if "." in path else (path, None)
        target = getattr(out, block)
        if name is None:
            target.CopyFrom(value)
        elif field.message_type is not None:
            getattr(target, name).CopyFrom(value)
        elif _is_repeated(target.DESCRIPTOR.fields_by_name[name]):
            getattr(target, name).append(value)
        else:
            setattr(target, name, value)   # V0's PoolMethod numbers are PoolingParameter's
    return out


def upgrade_v0_net(param: caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    """Caffe's UpgradeV0Net: padding layers folded into the convolution or pooling after them, then each V0
    entry as a V1 entry. Every problem is raised in one NetError."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layers[:]
    problems: list = []
    last_top = {name: None for name in param.input}
    entries = []
    for i, entry in enumerate(param.layers):
        kept = caffe_pb2.V1LayerParameter()
        kept.CopyFrom(entry)
        for j, bottom in enumerate(entry.bottom):
            if bottom not in last_top:
                problems.append("V0 layer %r: unknown bottom %r" % (entry.layer.name, bottom))
                continue
            source = last_top[bottom]
            if source is not None and param.layers[source].layer.type == "padding":
                pad = param.layers[source]
                if entry.layer.type not in ("conv", "pool") or len(entry.bottom) != 1 or len(pad.bottom) != 1:
                    problems.append("V0 padding layer %r feeds %r, which is not a one-input conv or pool layer"
                                    % (pad.layer.name, entry.layer.name))
                    continue
                kept.layer.pad = pad.layer.pad
                kept.bottom[j] = pad.bottom[0]
        if entry.layer.type != "padding":
            entries.append(kept)
        for top in entry.top:
            last_top[top] = i
    for entry in entries:
        out.layers.add().CopyFrom(_v0_layer(entry, problems))
    if problems:
        raise NetError("net %r (V0 format): %s" % (param.name, "; ".join(problems)))
    return out


# Caffe's UpgradeNetDataTransformation: V1 data layers' transformation fields move to transform_param.
_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")


def _move_transform_fields(lp: caffe_pb2.LayerParameter) -> None:
    for block in ("data_param", "image_data_param", "window_data_param"):
        if not lp.HasField(block):
            continue
        sub = getattr(lp, block)
        for name in _TRANSFORM_FIELDS:
            if sub.HasField(name):
                setattr(lp.transform_param, name, getattr(sub, name))
                sub.ClearField(name)


def upgrade_v1_layer(v1: caffe_pb2.V1LayerParameter) -> caffe_pb2.LayerParameter:
    if v1.HasField("layer"):
        raise NetError("layer %r is a V0 entry in a V1 net; upgrade whole V0 nets (pcn upgrade)"
                       % (v1.name or v1.layer.name))
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
    _move_transform_fields(out)
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
    if any(entry.HasField("layer") for entry in param.layers):
        log.info("net %r: V0 layer format upgraded as Caffe's upgrade_net_proto_text does", param.name)
        param = upgrade_v0_net(param)
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
# MyCaffe layers whose name matches a pcn layer but which compute something else: none today. MyCaffe's Lstm and Rnn
# are pcn's LSTM and RNN (the CAFFE engine is BVLC's, LSTM's CUDNN engine is layers/mycaffe_recurrent.py, RNN
# refuses CUDNN), and the kernels of its Lstm_Unit are BVLC's LSTMUnit.
_NOT_MYCAFFE_EQUIVALENT: frozenset = frozenset()
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
    ignored, refusals = [], []
    for lp in param.layer:
        try:
            ignored.extend(_upgrade_mycaffe_layer(lp))
        except NetError as e:
            refusals.append(str(e))
    if refusals:
        raise NetError("; ".join(refusals))
    for lp in param.layer:
        _trim_param_specs(lp)
    _append_min_top_axes(param)
    if ignored:
        log.info("net %r: MyCaffe engine and performance settings accepted and ignored (they change no numbers): %s",
                 param.name, ", ".join(ignored))


def param_blob_count(lp: caffe_pb2.LayerParameter) -> Optional[int]:
    """How many parameter blobs a BVLC layer type creates, or None when pcn cannot tell without building it."""
    t = lp.type
    if t in ("Convolution", "Deconvolution"):
        return 1 + lp.convolution_param.bias_term
    if t == "InnerProduct":
        return 1 + lp.inner_product_param.bias_term
    if t == "Embed":
        return 1 + lp.embed_param.bias_term
    if t == "Scale":
        return (len(lp.bottom) < 2) + lp.scale_param.bias_term
    if t == "Bias":
        return int(len(lp.bottom) < 2)
    if t in ("PReLU", "Parameter", "Normalize", "Normalization2"):
        return 1
    if t == "BatchNorm":
        return 3 + 2 * lp.batch_norm_param.scale_bias
    return None


def _trim_param_specs(lp: caffe_pb2.LayerParameter) -> None:
    """MyCaffe ignores param specs beyond a layer's parameter blobs (e.g. a bias spec with bias_term False);
    BVLC Caffe refuses them, so they are dropped with a log line."""
    n = param_blob_count(lp)
    if n is not None and len(lp.param) > n:
        log.info("layer %r (%s): %d param specs for %d parameter blobs; the extra ones are dropped (MyCaffe "
                 "ignores them)", lp.name, lp.type, len(lp.param), n)
        del lp.param[n:]


def _append_min_top_axes(param: caffe_pb2.NetParameter) -> None:
    """MyCaffe's InnerProduct ``min_top_axes``: size-1 axes appended to the top (so a Deconvolution can follow),
    done by a Reshape layer after the InnerProduct."""
    if not any(lp.inner_product_param.HasField("min_top_axes") for lp in param.layer):
        return
    blobs = {name for lp in param.layer for name in list(lp.top) + list(lp.bottom)}
    layers = []
    for lp in param.layer:
        layers.append(lp)
        ip = lp.inner_product_param
        if not ip.HasField("min_top_axes"):
            continue
        extra = ip.min_top_axes - (ip.axis + 1)
        ip.ClearField("min_top_axes")
        if extra <= 0:
            continue
        if ip.axis < 0 or len(lp.top) != 1:
            raise _refuse(lp, "inner_product_param.min_top_axes", "needs a non-negative axis and one top")
        top = lp.top[0]
        inner = top + "_before_min_top_axes"
        while inner in blobs:
            inner += "_"
        blobs.add(inner)
        lp.top[0] = inner
        reshape = caffe_pb2.LayerParameter(name=lp.name + "_min_top_axes", type="Reshape", bottom=[inner], top=[top])
        reshape.include.extend(lp.include)
        reshape.exclude.extend(lp.exclude)
        reshape.reshape_param.axis = -1
        reshape.reshape_param.num_axes = 0
        reshape.reshape_param.shape.dim.extend([1] * extra)
        layers.append(reshape)
        log.info("layer %r (InnerProduct): min_top_axes (MyCaffe) read as a Reshape layer %r appending %d size-1 "
                 "axes", lp.name, reshape.name, extra)
    del param.layer[:]
    param.layer.extend(layers)


# MyCaffe's default fillers (ConvolutionParameter.cs, InnerProductParameter.cs, ...), where BVLC's are constant 0.
_MYCAFFE_FILLED = {"Convolution": "convolution_param", "Deconvolution": "convolution_param",
                   "InnerProduct": "inner_product_param", "Embed": "embed_param", "LSTM": "recurrent_param",
                   "RNN": "recurrent_param"}


def _mycaffe_fillers(lp: caffe_pb2.LayerParameter) -> None:
    """Writes MyCaffe's default fillers where a MyCaffe layer omits them: weights xavier, biases constant 0.1,
    and a filler block without a type is gaussian (MyCaffe's FillerParameter default), not constant."""
    block_name = _MYCAFFE_FILLED.get(lp.type)
    if block_name is not None:
        block = getattr(lp, block_name)
        if not block.HasField("weight_filler"):
            block.weight_filler.type = "xavier"
            log.info("layer %r (%s): no weight_filler in a MyCaffe net: MyCaffe's default xavier", lp.name, lp.type)
        has_bias = getattr(block, "bias_term", True)
        if has_bias and not block.HasField("bias_filler"):
            block.bias_filler.type = "constant"
            block.bias_filler.value = 0.1
            log.info("layer %r (%s): no bias_filler in a MyCaffe net: MyCaffe's default constant 0.1", lp.name,
                     lp.type)
    for filler in _fillers_in(lp):
        if not filler.HasField("type"):
            filler.type = "gaussian"
            log.info("layer %r (%s): a filler without a type in a MyCaffe net is gaussian (MyCaffe's default)",
                     lp.name, lp.type)


def _fillers_in(msg) -> list:
    found = []
    for field, value in msg.ListFields():
        if field.message_type is None:
            continue
        for item in (value if _is_repeated(field) else [value]):
            if field.message_type.name == "FillerParameter":
                found.append(item)
            else:
                found.extend(_fillers_in(item))
    return found


def _refuse(lp, field: str, why: str) -> NetError:
    return NetError("layer %r (%s): %s (MyCaffe) %s" % (lp.name, lp.type, field, why))


def _upgrade_mycaffe_layer(lp: caffe_pb2.LayerParameter) -> list:
    """Upgrades one layer in place; returns the "layer.field" names of the settings it ignored."""
    ignored = []
    where = lp.name + "."
    _mycaffe_fillers(lp)
    if lp.freeze_learning:
        log.info("layer %r (%s): freeze_learning (MyCaffe): its parameters are not updated (lr_mult 0)", lp.name,
                 lp.type)
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
                          "is MyCaffe's image database (source %r), which pcn cannot read; port the file with "
                          "`pcn port IN -o OUT --data %s=PATH` (an LMDB Data layer), or replace the layer by an "
                          "Input, HDF5Data or LMDB Data layer" % (data.source, dataset_name(data.source)))
        if data.label_type not in (caffe_pb2.DataParameter.SINGLE, caffe_pb2.DataParameter.MULTIPLE):
            raise _refuse(lp, "data_param.label_type %s" % caffe_pb2.DataParameter.LabelType.Name(data.label_type),
                          "(MyCaffe's scored labels) is not supported")
        if data.label_type == caffe_pb2.DataParameter.MULTIPLE and len(lp.top) > 1:
            raise _refuse(lp, "data_param.label_type MULTIPLE", "reads a label array stored with each image; port "
                          "the file with `pcn port`, which reads the labels from a second database")
        data.ClearField("label_type")
        if data.HasField("enable_random_selection"):
            ignored.append(where + "data_param.enable_random_selection")
            data.ClearField("enable_random_selection")
    if lp.HasField("transform_param"):
        tp = lp.transform_param
        if tp.use_imagedb_mean:
            raise _refuse(lp, "transform_param.use_imagedb_mean: true", "subtracts MyCaffe's image-database mean, "
                          "which pcn cannot read; port the file with `pcn port ... --data NAME.mean=MEAN` or give "
                          "mean_file or mean_value instead")
        tp.ClearField("use_imagedb_mean")
    return ignored


_PP = caffe_pb2.PoolingParameter


# ----------------------------------------------------------------------------------------------------
# MyCaffe fields that pcn's schema does not hold (read by the dialect reader, pycaffe_norm.dialect)
# ----------------------------------------------------------------------------------------------------

def _node_flag(node, name: str, default: bool) -> bool:
    """The boolean ``name`` in ``node``'s block (or in its ``option`` block), as MyCaffe reads it."""
    found = node.find(name)
    if found is None and node.find("option") is not None:
        found = node.find("option").find(name)
    if found is None or found.value is None:
        return default
    return found.value.strip().lower() in ("true", "1", "t")


def _is_zero(text: str) -> bool:
    try:
        return float(text) == 0
    except ValueError:
        return False


def _node_text(node) -> str:
    return (node.value or "").strip()


def _ignore(why: str):
    def handle(msg, node):
        log.info("%s.%s (MyCaffe) accepted and ignored: %s", msg.DESCRIPTOR.name, node.name, why)
    return handle


def _inactive_block(what: str):
    """MyCaffe's optional transform blocks: ignored while ``active`` is false, refused when they act."""
    def handle(msg, node):
        if node.children is None:
            return "%s.%s must be a block" % (msg.DESCRIPTOR.name, node.name)
        probabilities = [c for c in node.children if c.name.endswith("_prob") and c.value is not None]
        never = bool(probabilities) and all(_is_zero(c.value) for c in probabilities)
        if _node_flag(node, "active", False) and not never:
            return "%s.%s is active: MyCaffe's %s, which pcn does not implement" % (msg.DESCRIPTOR.name, node.name,
                                                                                  what)
        log.info("%s.%s (MyCaffe) is inactive or has every probability 0; accepted and ignored",
                 msg.DESCRIPTOR.name, node.name)
        return None
    return handle


def _only_value(no_op: str, why: str, refusal: str):
    """A MyCaffe field accepted when it holds its no-op value (case-insensitive), refused otherwise."""
    def handle(msg, node):
        if _node_text(node).lower() == no_op.lower():
            log.info("%s.%s: %s (MyCaffe) accepted and ignored: %s", msg.DESCRIPTOR.name, node.name,
                     _node_text(node), why)
            return None
        return "%s.%s: %s (MyCaffe) %s" % (msg.DESCRIPTOR.name, node.name, _node_text(node), refusal)
    return handle


def _use_image_mean(msg, node):
    # MyCaffe's older name of use_imagedb_mean (TransformationParameter.cs reads both).
    if _node_text(node).lower() in ("true", "1", "t"):
        msg.use_imagedb_mean = True
    log.info("TransformationParameter.use_image_mean (MyCaffe) read as use_imagedb_mean")


def _images_per_blob(msg, node):
    text = _node_text(node)
    if text == "1":
        return None
    if text == "2":
        log.warning("DataParameter.images_per_blob: 2 (MyCaffe's image pairs): the source must hold both images "
                    "of a pair stacked on the channels and the label 1 for a match, 0 otherwise (the database "
                    "Caffe's examples/siamese converter writes)")
        return None
    return "DataParameter.images_per_blob: %s (MyCaffe) is not supported (MyCaffe itself accepts only 1 or 2)" % text


# (message name, field name) -> handler(msg, node) returning None (mapped or ignored, with a log line) or the
# reason the field is refused. Every MyCaffe-only field seen in MyCaffe's model files that pcn's schema lacks.
MYCAFFE_EXTRA_FIELDS = {
    ("SolverParameter", "snapshot_include_weights"): _ignore("what a MyCaffe snapshot file holds; pcn's snapshots "
                                                             "always hold the weights"),
    ("SolverParameter", "snapshot_include_state"): _ignore("what a MyCaffe snapshot file holds; pcn always writes "
                                                           "the .solverstate"),
    ("SolverParameter", "accuracy_average_window"): _ignore("MyCaffe's display of a running accuracy"),
    ("SolverParameter", "output_average_results"): _ignore("MyCaffe's display of averaged test results"),
    ("SolverParameter", "enable_clip_gradient_status"): _ignore("MyCaffe's log line about gradient clipping"),
    ("SolverParameter", "custom_trainer"): lambda msg, node: (
        "SolverParameter.custom_trainer: %s (MyCaffe) selects MyCaffe's reinforcement-learning trainer, which pcn "
        "does not have" % _node_text(node)),
    ("SolverParameter", "custom_trainer_properties"): _ignore("settings of custom_trainer (refused by name)"),
    ("DataParameter", "balance_matches"): _ignore("the order in which MyCaffe's image database serves pairs"),
    ("DataParameter", "images_per_blob"): _images_per_blob,
    ("DataParameter", "output_all_labels"): _only_value(
        "False", "with one label per item",
        "gives both class labels of an image pair, which a Caffe Data layer cannot; write a pair database whose "
        "label is the match (0 or 1) and set it False"),
    ("ContrastiveLossParameter", "output_matches"): _only_value(
        "False", "no match output",
        "adds MyCaffe's match output top, which pcn's ContrastiveLoss does not have"),
    ("EltwiseParameter", "allow_single_batch_input"): _only_value(
        "False", "MyCaffe's default", "broadcasts a batch of one, which pcn's Eltwise does not"),
    ("InnerProductParameter", "output_contains_predictions"): _only_value(
        "False", "MyCaffe's default", "is a Temporal Fusion Transformer setting, which pcn does not implement"),
    ("MemoryDataParameter", "label_type"): lambda msg, node: _memory_label_type(msg, node),
    ("MemoryDataParameter", "label_channels"): _only_value("1", "one label per item", "is not supported"),
    ("MemoryDataParameter", "label_height"): _only_value("1", "one label per item", "is not supported"),
    ("MemoryDataParameter", "label_width"): _only_value("1", "one label per item", "is not supported"),
    ("TransformationParameter", "use_image_mean"): _use_image_mean,
    ("MultiBoxLossParameter", "use_gpu"): _ignore("where MyCaffe computes the matching"),
    ("TransformationParameter", "distortion_param"): _inactive_block("image distortion (brightness, contrast, "
                                                                     "saturation)"),
    ("TransformationParameter", "mask_param"): _inactive_block("image masking"),
    ("TransformationParameter", "label_mapping"): _inactive_block("label mapping"),
    ("TransformationParameter", "expansion_param"): _inactive_block("image expansion (SSD)"),
}
# Blocks of SSD-Caffe messages into which MyCaffe adds an on/off switch.
for _name in ("ResizeParameter", "NoiseParameter", "SaltPepperParameter", "EmitConstraint", "DistortionParameter",
              "ExpansionParameter", "NonMaximumSuppressionParameter", "SaveOutputParameter"):
    MYCAFFE_EXTRA_FIELDS[(_name, "active")] = _ignore("MyCaffe's on/off switch of this block")
    MYCAFFE_EXTRA_FIELDS[(_name, "option")] = _ignore("MyCaffe's on/off switch of this block")


def _memory_label_type(msg, node):
    value = _node_text(node).upper()
    if value == "SINGLE":
        return None
    if value == "NONE":
        # MyCaffe's MemoryData then has the data top only; pcn's MemoryData accepts one top the same way.
        log.info("MemoryDataParameter.label_type: NONE (MyCaffe): the layer gives no label top")
        return None
    return "MemoryDataParameter.label_type: %s (MyCaffe) is not supported (pcn's MemoryData gives one label per " \
           "item)" % _node_text(node)


# MyCaffe's names of SSD-Caffe's parameter blocks.
MYCAFFE_FIELD_ALIASES = {("LayerParameter", "multiboxloss_param"): "multibox_loss_param"}


def mycaffe_extra_field(msg, node, problems) -> None:
    """The dialect reader's handler for a field pcn's schema lacks: MyCaffe's meaning, a log line, or a problem."""
    alias = MYCAFFE_FIELD_ALIASES.get((msg.DESCRIPTOR.name, node.name))
    if alias is not None and node.children is not None:
        from .dialect import fill_message

        target = getattr(msg, alias)
        target.SetInParent()
        fill_message(target, node.children, problems, mycaffe_extra_field)
        log.info("%s.%s (MyCaffe's spelling) read as %s", msg.DESCRIPTOR.name, node.name, alias)
        return
    handler = MYCAFFE_EXTRA_FIELDS.get((msg.DESCRIPTOR.name, node.name))
    if handler is None:
        suggestion = did_you_mean(node.name, [f.name for f in msg.DESCRIPTOR.fields])
        problems.add(node, "%s has no field %r%s" % (msg.DESCRIPTOR.name, node.name, suggestion or (
            " (not in pcn's Caffe schema nor a MyCaffe field pcn knows; it may come from a Caffe fork that pcn does "
            "not know)")))
        return
    refusal = handler(msg, node)
    if refusal:
        problems.add(node, refusal)


def dataset_name(source: str) -> str:
    """MyCaffe's dataset of an image-database source: "CIFAR-10.training" -> "CIFAR-10"."""
    for suffix in (".training", ".testing"):
        if source.endswith(suffix):
            return source[:-len(suffix)]
    return source


# MyCaffe's layer families that pcn does not have yet; port names the family when it refuses one of their types.
MYCAFFE_FAMILIES = {
    "SSD detection": ("AnnotatedData", "MultiBoxLoss", "DetectionOutput", "DetectionEvaluate", "PriorBox",
                      "Permute", "VideoData"),
    "GPT": ("TokenizedData", "TokenizedDataPairs", "TokenizedDataPairsPy", "PreTokenizedData", "TransformerBlock",
            "CausalSelfAttention", "MultiheadAttention", "PositionalEncoder", "SoftmaxCrossEntropy2Loss", "LayerNorm",
            "RMSNorm", "NLLLoss"),
    "Temporal Fusion Transformer": ("DataTemporal", "ChannelEmbedding", "GateAddNorm", "GLU", "VarSelNet",
                                    "ReshapeTemporal", "MultiheadAttentionInterp", "QuantileLoss",
                                    "QuantileAccuracy", "NumericTrans", "CategoricalTrans"),
}


def type_problem(lp: caffe_pb2.LayerParameter) -> Optional[str]:
    """Why pcn cannot build layer ``lp``'s type (None when the live registry has it, under any MyCaffe
    spelling)."""
    from .layers import layer_type_list

    name = _pcn_type(lp.type)
    if lp.type == "GRN" and lp.HasField("grn_param"):
        return "GRN with grn_param (MyCaffe's Temporal Fusion Transformer family, not in pcn yet)"
    if name in layer_type_list():
        return None
    key = lp.type.lower().replace("_", "")
    for family, names in MYCAFFE_FAMILIES.items():
        if key in {n.lower() for n in names}:
            return "%s (MyCaffe's %s family, not in pcn yet)" % (lp.type, family)
    return "%s (not a layer type pcn knows)" % (lp.type or "<no type>")


def read_mycaffe_tree(nodes, msg, source: str):
    """Fills ``msg`` (a NetParameter or SolverParameter) from a dialect tree with MyCaffe's field rules; raises
    one PrototxtError naming every unsupported layer type and field."""
    bad_types, field_problems = collect_mycaffe_tree(nodes, msg, source)
    raise_problems(source, bad_types, field_problems)
    return msg


def collect_mycaffe_tree(nodes, msg, source: str):
    """:func:`read_mycaffe_tree` without raising: returns ({reason: [layer names]}, [field problems])."""
    from .dialect import Problems, fill_message

    problems = Problems(source)
    bad_types: dict = {}
    if msg.DESCRIPTOR.name != "NetParameter":
        fill_message(msg, nodes, problems, mycaffe_extra_field)
        if msg.DESCRIPTOR.name == "SolverParameter":
            problems.items.extend("%s: %s" % (source, p) for p in upgrade_mycaffe_solver(msg))
        return bad_types, problems.items
    from .mycaffe_transform import rewrite_mycaffe_transforms

    rewrite_mycaffe_transforms(nodes, problems)   # MyCaffe's optional SSD transform blocks as SSD-Caffe's
    layer_nodes = [n for n in nodes if n.name in ("layer", "layers") and n.children is not None]
    fill_message(msg, [n for n in nodes if n not in layer_nodes], problems, mycaffe_extra_field)
    if any(n.name == "layers" for n in layer_nodes) and any(n.name == "layer" for n in layer_nodes):
        log.warning("%s mixes V1 'layers' and current 'layer' entries, which BVLC Caffe refuses; read in file order "
                    "as MyCaffe reads it, each V1 entry upgraded as Caffe upgrades it", source)
    for node in layer_nodes:
        mine = Problems(source)
        if node.name == "layers":
            v1 = caffe_pb2.V1LayerParameter()
            fill_message(v1, node.children, mine, mycaffe_extra_field)
            try:
                msg.layer.add().CopyFrom(upgrade_v1_layer(v1))
            except NetError as e:
                mine.add(node, str(e))
                msg.layer.add(name=v1.name)
        else:
            msg.layer.add()
        lp = msg.layer[len(msg.layer) - 1]
        if node.name == "layer":
            fill_message(lp, node.children, mine, mycaffe_extra_field)
        if lp.HasField("type"):
            reason = type_problem(lp)
            if reason is not None:
                bad_types.setdefault(reason, []).append(lp.name)
                continue   # the fields of a layer pcn cannot build are not listed one by one
        problems.items.extend(mine.items)
    return bad_types, problems.items


def raise_problems(source: str, bad_types: dict, field_problems: list) -> None:
    """One PrototxtError line naming every unsupported layer type (with its layers) and every field problem."""
    parts = []
    if bad_types:
        parts.append(source + ": unsupported layer types: " + ", ".join(
            "%s in %s" % (reason, ", ".join(repr(n) for n in names[:3]) + (" and %d more" % (len(names) - 3)
                                                                             if len(names) > 3 else ""))
            for reason, names in bad_types.items()))
    if field_problems:
        parts.append("; ".join(_merge_places(field_problems)))
    if parts:
        raise PrototxtError("; ".join(parts))


def _merge_places(problems: list) -> list:
    """"f:3:5: X" and "f:9:5: X" -> "f:3:5, 9:5: X": one entry per distinct problem, in the order first seen."""
    order, places = [], {}
    for text in problems:
        m = _PLACE.match(text)
        key = m.group(4) if m else text
        if key not in places:
            order.append(key)
            places[key] = []
        if m:
            where = "%s:%s" % m.group(2, 3)
            places[key].append(("%s:%s" % (m.group(1), where)) if not places[key] else where)
    return ["%s: %s" % (", ".join(places[k]), k) if places[k] else k for k in order]


_PLACE = re.compile(r"^(.*?):(\d+):(\d+): (.*)$")


# MyCaffe writes SolverParameter.type as its SolverType enum names.
MYCAFFE_SOLVER_TYPES = {"SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad", "RMSPROP": "RMSProp",
                        "ADADELTA": "AdaDelta", "ADAM": "Adam", "ADAMW": "AdamW"}
# MyCaffe's SolverParameter defaults (SolverParameter.cs) where a field is unset; they differ from BVLC's.
MYCAFFE_SOLVER_DEFAULTS = (("test_interval", 1000), ("base_lr", 0.01), ("max_iter", 500000), ("lr_policy", "step"),
                           ("gamma", 0.1), ("momentum", 0.0), ("weight_decay", 0.0005), ("regularization_type", "L2"),
                           ("stepsize", 100000), ("snapshot", 10000), ("rms_decay", 0.95),
                           ("snapshot_after_train", False), ("display", 0), ("delta", 1e-8), ("momentum2", 0.999))


def upgrade_mycaffe_solver(param: caffe_pb2.SolverParameter) -> list:
    """A solver read in MyCaffe's dialect, in place: MyCaffe's type names as Caffe's and MyCaffe's defaults for
    the unset fields (a MyCaffe solver means MyCaffe's values; ADAMW is pcn's AdamW). Returns the problems
    (none at present)."""
    problems = []
    if param.HasField("type"):
        mapped = MYCAFFE_SOLVER_TYPES.get(param.type.upper())
        if mapped is not None and mapped != param.type:
            log.info("solver type %s (MyCaffe's name) read as %r", param.type, mapped)
            param.type = mapped
    unset = [name for name, _ in MYCAFFE_SOLVER_DEFAULTS if not param.HasField(name)]
    for name, value in MYCAFFE_SOLVER_DEFAULTS:
        if name in unset:
            setattr(param, name, value)
    if param.HasField("test_interval") and not len(param.test_iter):
        param.test_iter.append(300)
        unset.append("test_iter")
    if unset:
        log.info("MyCaffe solver: MyCaffe's defaults for %s", ", ".join(unset))
    return problems
