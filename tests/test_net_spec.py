"""pycaffe's net_spec: LeNet written in Python gives Caffe's prototxt; naming, in_place, ntop, enums, repeated
fields, Python and MyCaffe layers, errors; the generated NetParameter builds a Net that runs."""
from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format

import pycaffe_norm as caffe
from pycaffe_norm.errors import PcnError
from pycaffe_norm.net_spec import Function, NetSpec, NetSpecError, Top, param_name_dict, to_proto
from pycaffe_norm.net_spec import layers as L
from pycaffe_norm.net_spec import params as P
from pycaffe_norm.proto import caffe_pb2

LENET = """
layer { name: "data" type: "HDF5Data" top: "data" top: "label" include { phase: TRAIN }
        hdf5_data_param { source: "train_list.txt" batch_size: 64 shuffle: true } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" param { lr_mult: 1 } param { lr_mult: 2 }
        convolution_param { num_output: 20 kernel_size: 5 stride: 1
                            weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2" param { lr_mult: 1 } param { lr_mult: 2 }
        convolution_param { num_output: 50 kernel_size: 5 stride: 1
                            weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1" param { lr_mult: 1 } param { lr_mult: 2 }
        inner_product_param { num_output: 500 weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2" param { lr_mult: 1 } param { lr_mult: 2 }
        inner_product_param { num_output: 10 weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy" include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""


def parse(text: str) -> caffe_pb2.NetParameter:
    return text_format.Parse(text, caffe_pb2.NetParameter())


def lenet_spec() -> NetSpec:
    # Written the way pycaffe's examples write it (examples/01-learning-lenet.ipynb).
    lr = [dict(lr_mult=1), dict(lr_mult=2)]
    fill = dict(weight_filler=dict(type="xavier"), bias_filler=dict(type="constant"))
    n = NetSpec()
    n.data, n.label = L.HDF5Data(source="train_list.txt", batch_size=64, shuffle=True, ntop=2,
                                 include=dict(phase=caffe.TRAIN))
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20, stride=1, param=lr, **fill)
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.conv2 = L.Convolution(n.pool1, kernel_size=5, num_output=50, stride=1, param=lr, **fill)
    n.pool2 = L.Pooling(n.conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.ip1 = L.InnerProduct(n.pool2, num_output=500, param=lr, **fill)
    n.relu1 = L.ReLU(n.ip1, in_place=True)
    n.ip2 = L.InnerProduct(n.relu1, num_output=10, param=lr, **fill)
    n.accuracy = L.Accuracy(n.ip2, n.label, include=dict(phase=caffe.TEST))
    n.loss = L.SoftmaxWithLoss(n.ip2, n.label)
    return n


def test_lenet_matches_handwritten_prototxt():
    net = lenet_spec().to_proto()
    assert isinstance(net, caffe_pb2.NetParameter)
    assert net == parse(LENET)
    # text_format round trip, as scripts write str(n.to_proto()) to a file
    assert parse(str(net)) == net


def test_param_name_dict_from_schema():
    d = param_name_dict()
    assert d["Convolution"] == "convolution" and d["InnerProduct"] == "inner_product"
    assert d["Python"] == "python" and d["HDF5Data"] == "hdf5_data" and d["PReLU"] == "prelu"
    # MyCaffe/SSD extensions and types whose message is shared or named differently
    assert d["Normalization1"] == "normalization" and d["Normalize"] == "norm"
    assert d["Normalization2"] == "normalization2" and d["Deconvolution"] == "convolution"


def test_automatic_names():
    data = L.Input(shape=dict(dim=[1, 1, 8, 8]))
    c1 = L.Convolution(data, num_output=2, kernel_size=3)
    r = L.ReLU(c1, in_place=True)
    c2 = L.Convolution(r, num_output=2, kernel_size=3)
    net = c2.to_proto()
    assert [lp.name for lp in net.layer] == ["Input1", "Convolution1", "ReLU1", "Convolution2"]
    assert [list(lp.top) for lp in net.layer] == [["Input1"], ["Convolution1"], ["Convolution1"], ["Convolution2"]]
    assert list(net.layer[3].bottom) == ["Convolution1"]
    assert to_proto(c2) == net

    # NetSpec names what it holds; the rest is generated; order follows the bottoms
    n = NetSpec()
    n.data = data
    n.out = c2
    net = n.to_proto()
    assert [lp.name for lp in net.layer] == ["data", "Convolution1", "ReLU1", "out"]
    assert list(net.layer[1].bottom) == ["data"] and list(net.layer[3].top) == ["out"]


def test_name_keyword_overrides_layer_name_only():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 4]))
    n.fc = L.InnerProduct(n.data, num_output=3, name="fc_layer")
    lp = n.to_proto().layer[1]
    assert lp.name == "fc_layer" and list(lp.top) == ["fc"]


def test_in_place_and_item_access():
    n = NetSpec()
    n["data"] = L.Input(shape=dict(dim=[1, 4]))
    n.ip1 = L.InnerProduct(n.data, num_output=3)
    n.relu1 = L.ReLU(n.ip1, in_place=True)
    n.drop = L.Dropout(n["relu1"], dropout_ratio=0.3, in_place=True)
    n.ip2 = L.InnerProduct(n.drop, num_output=2)
    net = n.to_proto()
    relu, drop, ip2 = net.layer[2], net.layer[3], net.layer[4]
    assert (relu.name, list(relu.bottom), list(relu.top)) == ("relu1", ["ip1"], ["ip1"])
    assert (drop.name, list(drop.top)) == ("drop", ["ip1"]) and drop.dropout_param.dropout_ratio == pytest.approx(0.3)
    assert list(ip2.bottom) == ["ip1"]
    assert n.keys() == ["data", "ip1", "relu1", "drop", "ip2"] and len(n.vals()) == 5 and "drop" in n
    del n["ip2"]
    assert [lp.name for lp in n.to_proto().layer] == ["data", "ip1", "relu1", "drop"]


def test_ntop_zero_and_many():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 6]))
    a, b = L.Slice(n.data, slice_point=[2], axis=1, ntop=2)
    assert isinstance(a, Top) and (a.n, b.n) == (0, 1) and a.fn is b.fn
    n.a = a  # b stays unnamed
    sil = L.Silence(b, ntop=0)
    assert isinstance(sil, Function) and sil.tops == ()
    n.silence = sil
    net = n.to_proto()
    sl, si = net.layer[1], net.layer[2]
    assert (sl.name, list(sl.top)) == ("a", ["a", "Slice1"])
    assert sl.slice_param.axis == 1 and list(sl.slice_param.slice_point) == [2]
    assert (si.name, list(si.bottom), list(si.top)) == ("silence", ["Slice1"], [])
    assert to_proto(L.Silence(n.data, ntop=0)).layer[-1].name == "Silence1"


def test_enum_constants_and_strings():
    assert P.Pooling.MAX == caffe_pb2.PoolingParameter.MAX and P.Pooling.AVE == caffe_pb2.PoolingParameter.AVE
    assert P.Eltwise.SUM == caffe_pb2.EltwiseParameter.SUM and P.Normalization1.L1 == 1
    data = L.Input(shape=dict(dim=[1, 1, 4, 4]))
    by_const = L.Pooling(data, pool=P.Pooling.AVE, kernel_size=2).to_proto().layer[1]
    by_name = L.Pooling(data, pool="AVE", kernel_size=2).to_proto().layer[1]
    assert by_const.pooling_param == by_name.pooling_param and by_name.pooling_param.pool == P.Pooling.AVE
    lp = L.Accuracy(data, data, include=dict(phase="TEST")).to_proto().layer[1]
    assert lp.include[0].phase == caffe.TEST
    with pytest.raises(AttributeError, match="NOPE"):
        P.Pooling.NOPE
    with pytest.raises(AttributeError, match="NoSuchParameter"):
        P.NoSuch.X


def test_repeated_fields_and_submessages():
    data = L.Input(shape=[dict(dim=[2, 3, 8, 8]), dict(dim=[2])], ntop=2)[0]
    lp = L.Convolution(data, num_output=4, kernel_size=[3, 5], stride=(1, 2), pad=1, loss_weight=0.5,
                       propagate_down=[True], param=[dict(lr_mult=1, decay_mult=1), dict(lr_mult=2)],
                       exclude=[dict(stage="deploy"), dict(phase=caffe.TEST)],
                       weight_filler=caffe_pb2.FillerParameter(type="msra")).to_proto().layer[1]
    expected = parse("""layer { name: "Convolution1" type: "Convolution" bottom: "Input1" top: "Convolution1"
        loss_weight: 0.5 propagate_down: true param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 }
        exclude { stage: "deploy" } exclude { phase: TEST }
        convolution_param { num_output: 4 kernel_size: 3 kernel_size: 5 stride: 1 stride: 2 pad: 1
                            weight_filler { type: "msra" } } }""").layer[0]
    assert lp == expected
    inp = to_proto(data).layer[0]
    assert [list(s.dim) for s in inp.input_param.shape] == [[2, 3, 8, 8], [2]]
    # numpy scalars are accepted like Python numbers
    assert L.InnerProduct(data, num_output=np.int64(7)).to_proto().layer[1].inner_product_param.num_output == 7


def test_generic_param_keywords_go_on_the_layer():
    data = L.Input(shape=dict(dim=[1, 4]))
    lp = L.InnerProduct(data, inner_product_param=dict(num_output=3, bias_term=False),
                        transform_param=dict(scale=0.5)).to_proto().layer[1]
    assert lp.inner_product_param.num_output == 3 and not lp.inner_product_param.bias_term
    assert lp.transform_param.scale == 0.5
    # dict() marks an empty submessage present, like "relu_param {}" in a prototxt
    assert L.ReLU(data, relu_param=dict()).to_proto().layer[1].HasField("relu_param")


def test_python_layer():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3]))
    n.py = L.Python(n.data, module="my_layers", layer="MyLayer", param_str="{'k': 2}", loss_weight=1)
    lp = n.to_proto().layer[1]
    assert lp == parse("""layer { name: "py" type: "Python" bottom: "data" top: "py" loss_weight: 1
        python_param { module: "my_layers" layer: "MyLayer" param_str: "{'k': 2}" } }""").layer[0]


def test_mycaffe_extension_params():
    x = L.Input(shape=dict(dim=[2, 3, 4, 4]))
    short = L.Normalization1(x, norm=P.Normalization1.L1).to_proto().layer[1]
    long = L.Normalization1(x, normalization_param=dict(norm="L1")).to_proto().layer[1]
    assert short == long and short.normalization_param.norm == caffe_pb2.Normalization1Parameter.L1
    ssd = L.Normalize(x, across_spatial=False, scale_filler=dict(type="constant", value=20)).to_proto().layer[1]
    assert ssd.HasField("norm_param") and not ssd.norm_param.across_spatial
    assert ssd.norm_param.scale_filler.value == 20
    alias = L.Normalization2(x, channel_shared=False).to_proto().layer[1]
    assert alias.HasField("normalization2_param") and not alias.normalization2_param.channel_shared
    deconv = L.Deconvolution(x, num_output=2, kernel_size=2, stride=2).to_proto().layer[1]
    assert deconv.convolution_param.num_output == 2


def test_generated_net_builds_and_runs():
    n = NetSpec()
    n.data, n.label = L.Input(shape=[dict(dim=[2, 1, 12, 12]), dict(dim=[2])], ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=3, num_output=4, weight_filler=dict(type="xavier"))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.bn = L.BatchNorm(n.pool1, use_global_stats=False)
    n.relu1 = L.ReLU(n.bn, in_place=True)
    n.norm = L.Normalization1(n.relu1, norm=P.Normalization1.L2)
    n.ip = L.InnerProduct(n.norm, num_output=3, weight_filler=dict(type="gaussian", std=0.1))
    n.loss = L.SoftmaxWithLoss(n.ip, n.label)
    proto = n.to_proto()
    proto.name = "spec"
    net = caffe.Net(proto, caffe.TRAIN)
    assert list(net.blobs) == ["data", "label", "conv1", "pool1", "bn", "norm", "ip", "loss"]
    net.blobs["data"].data[...] = np.random.RandomState(0).randn(2, 1, 12, 12)
    net.blobs["label"].data[...] = [0, 2]
    loss = float(net.forward()["loss"])
    assert np.isfinite(loss) and loss > 0
    assert net.blobs["ip"].data.shape == (2, 3)


@pytest.mark.parametrize("make, words", [
    (lambda x: L.Convolution(x, kernal_size=3), ["Convolution", "kernal_size", "kernel_size"]),
    (lambda x: L.Convolution(x, num_output="ten"), ["Convolution", "num_output", "ten"]),
    (lambda x: L.Convolution(x, weight_filler=dict(typ="xavier")), ["Convolution", "weight_filler", "typ"]),
    (lambda x: L.Convolution(x, weight_filler="xavier"), ["Convolution", "weight_filler", "FillerParameter"]),
    (lambda x: L.Pooling(x, pool="MAXIMUM"), ["Pooling", "pool", "MAXIMUM", "STOCHASTIC"]),
    (lambda x: L.SoftmaxWithLoss(x, x, ignore_label=0), ["SoftmaxWithLoss", "ignore_label", "loss_param"]),
    (lambda x: L.MyLayer(x, colour=1), ["MyLayer", "colour"]),
    (lambda x: L.ReLU(x, ntop=-1), ["ReLU", "ntop"]),
])
def test_errors_name_layer_type_and_field(make, words):
    x = L.Input(shape=dict(dim=[1, 4]))
    with pytest.raises(NetSpecError) as info:
        make(x)
    assert isinstance(info.value, PcnError) and isinstance(info.value, ValueError)
    for w in words:
        assert w in str(info.value)


def test_errors_on_wrong_objects():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 6]))
    with pytest.raises(TypeError, match="input 0 is not a Top"):
        L.ReLU("data")
    with pytest.raises(TypeError, match="tuple"):
        n.both = L.Slice(n.data, ntop=2)
    with pytest.raises(TypeError, match=r"^Silence input 0 is not a Top \(type is <class 'tuple'>\)$"):
        L.Silence(L.Slice(n.data, ntop=2), ntop=0)  # pycaffe's exact text
    with pytest.raises(AttributeError, match="nothing"):
        n.nothing
    with pytest.raises(KeyError):  # pycaffe raised KeyError here
        n["nothing"]
    assert getattr(n, "nothing", None) is None


def test_edited_params_are_used():
    # pycaffe scripts sometimes tweak a layer after creating it
    top = L.InnerProduct(L.Input(shape=dict(dim=[1, 4])), num_output=3)
    top.fn.params["num_output"] = 5
    assert top.to_proto().layer[1].inner_product_param.num_output == 5


def test_deep_chain_does_not_recurse():
    x = L.Input(shape=dict(dim=[1, 4]))
    for _ in range(3000):
        x = L.ReLU(x)
    net = x.to_proto()
    assert len(net.layer) == 3001 and net.layer[-1].name == "ReLU3000"


def test_pycaffe_import_spellings():
    # pycaffe: ``from caffe import layers as L, params as P``; here ``layers`` is also the layer package.
    from pycaffe_norm import layers as layers_package
    from pycaffe_norm import params as top_level_params

    n = caffe.NetSpec()
    n.data = layers_package.Input(shape=dict(dim=[2, 3, 4, 4]))
    n.pool = caffe.layers.Pooling(n.data, kernel_size=2, pool=top_level_params.Pooling.AVE)
    proto = caffe.to_proto(n.pool)
    assert [layer.type for layer in proto.layer] == ["Input", "Pooling"]
    assert proto.layer[1].pooling_param.pool == caffe_pb2.PoolingParameter.AVE
    assert layers_package.create_layer is not None and layers_package.Layer is caffe.Layer   # package intact
    with pytest.raises(AttributeError):
        layers_package.not_a_layer_type
