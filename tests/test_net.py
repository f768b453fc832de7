"""Net construction and running: state rules, splits, in-place, backward pruning, sharing, weights files."""
from __future__ import annotations

import pathlib

import numpy as np
import pytest
from google.protobuf import text_format

import pycaffe_norm as caffe
from pycaffe_norm.errors import NetError, PcnError, PrototxtError, ShapeError
from pycaffe_norm.proto import caffe_pb2

REF = pathlib.Path(__file__).parent / "reference"

MLP = """
name: "mlp"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip2" bottom: "label" top: "acc" include { phase: TEST } }
"""


def net_from(text: str, phase=caffe.TRAIN, **kw) -> caffe.Net:
    return caffe.Net(text_format.Parse(text, caffe_pb2.NetParameter()), phase, **kw)


def test_phase_rules_and_outputs():
    train, test = net_from(MLP, caffe.TRAIN), net_from(MLP, caffe.TEST)
    assert train._layer_names == ["data", "ip1", "relu1", "ip2", "loss"]
    assert train.outputs == ["loss"] and train.inputs == ["data", "label"]
    # ip2 and label are read twice in TEST: Caffe's split layers and names appear
    assert "ip2_ip2_0_split" in test._layer_names and "data_label_1_split" in test._layer_names
    assert test.outputs == ["acc", "loss"]
    assert "ip2_ip2_0_split_1" in test.blobs


def test_level_and_stage_rules():
    text = MLP + """
    layer { name: "lvl" type: "ReLU" bottom: "ip2" top: "lvl" include { min_level: 2 } }
    layer { name: "stg" type: "ReLU" bottom: "ip2" top: "stg" include { stage: "deploy" } }
    layer { name: "nostg" type: "ReLU" bottom: "ip2" top: "nostg" include { not_stage: "deploy" } }
    layer { name: "excl" type: "ReLU" bottom: "ip2" top: "excl" exclude { phase: TRAIN } }"""
    names = net_from(text)._layer_names
    assert "lvl" not in names and "stg" not in names and "nostg" in names and "excl" not in names
    names = net_from(text, level=2, stages=["deploy"])._layer_names
    assert "lvl" in names and "stg" in names and "nostg" not in names


def test_loss_layer_without_top_gets_an_automatic_one():
    # Caffe's AutoTopBlobs: the loss counts (weight 1) and is backpropagated, but is no net output.
    text = MLP.replace('bottom: "label" top: "loss" }', 'bottom: "label" }')
    net, named = net_from(text), net_from(MLP)
    for name in ("ip1", "ip2"):
        for a, b in zip(net.params[name], named.params[name]):
            a.data[...] = b.data
    rng = np.random.RandomState(0)
    feed = dict(data=rng.randn(4, 3), label=np.array([0, 1, 2, 1]))
    assert net.outputs == [] and "loss (automatic)" in net.blobs
    net.forward(**feed)
    expected = float(named.forward(**feed)["loss"])
    assert float(net.blobs["loss (automatic)"].data) == pytest.approx(expected, rel=1e-6)
    net.backward()
    named.backward()
    np.testing.assert_allclose(net.params["ip1"][0].diff, named.params["ip1"][0].diff, rtol=1e-6)
    assert np.abs(net.params["ip1"][0].diff).sum() > 0


def test_forward_backward_and_pruning():
    net = net_from(MLP)
    rng = np.random.RandomState(0)
    out = net.forward(data=rng.randn(4, 3), label=np.array([0, 1, 2, 1]))
    assert out["loss"].shape == () and float(out["loss"]) > 0
    # no force_backward: the data layer needs no backward, ip1 does (it has learnable params)
    assert net.layer_need_backward == [False, True, True, True, True]
    assert net.bottom_need_backward[1] == [False]
    net.backward()
    assert np.all(net.blobs["data"].diff == 0)
    assert np.any(net.params["ip1"][0].diff != 0)


def test_force_backward_and_lr_mult_zero():
    frozen = MLP.replace('top: "ip1"\n', 'top: "ip1" param { lr_mult: 0 } param { lr_mult: 0 }\n', 1)
    net = net_from("force_backward: true\n" + frozen)
    net.forward(data=np.random.RandomState(2).randn(4, 3), label=np.zeros(4))
    net.backward()
    assert np.any(net.blobs["data"].diff != 0)
    assert net.bottom_need_backward[4] == [True, False]  # labels never get a gradient
    plain = net_from(frozen)
    assert plain.layer_need_backward[1] is False and plain.params_lr[:2] == [0.0, 0.0]


def test_split_sums_gradients_into_shared_bottom():
    text = """force_backward: true
    layer { name: "d" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "a" type: "Power" bottom: "x" top: "a" power_param { scale: 2 } }
    layer { name: "b" type: "Power" bottom: "x" top: "b" power_param { scale: 3 } }"""
    net = net_from(text)
    net.forward(x=np.ones((2, 3)))
    net.backward(a=np.ones((2, 3)), b=np.ones((2, 3)))
    np.testing.assert_allclose(net.blobs["x"].diff, 5.0)


def test_loss_weight_and_forward_return_value():
    net = net_from(MLP.replace('top: "loss" }', 'top: "loss" loss_weight: 2.5 }'))
    net.blobs["data"].data[...] = np.random.RandomState(1).randn(4, 3)
    loss = net.forward_loss()
    assert loss == pytest.approx(2.5 * float(net.blobs["loss"].data), rel=1e-6)
    assert float(net.blobs["loss"].diff) == 2.5
    assert net.blob_loss_weights["loss"] == 2.5


def test_weight_sharing_by_param_name():
    text = """
    layer { name: "d" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "a" type: "InnerProduct" bottom: "x" top: "a" param { name: "w" } param { name: "bias" }
            inner_product_param { num_output: 3 weight_filler { type: "gaussian" } } }
    layer { name: "b" type: "InnerProduct" bottom: "a" top: "b" param { name: "w" } param { name: "bias" }
            inner_product_param { num_output: 3 weight_filler { type: "gaussian" } } }
    layer { name: "l" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "l" }"""
    net = net_from(text)
    net.params["a"][0].data[...] = 7
    assert np.all(net.params["b"][0].data == 7)
    assert len(net.learnable_params) == 2


def test_shared_param_shape_mismatch_names_layers():
    text = """
    layer { name: "d" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "a" type: "InnerProduct" bottom: "x" top: "a" param { name: "w" }
            inner_product_param { num_output: 3 } }
    layer { name: "b" type: "InnerProduct" bottom: "a" top: "b" param { name: "w" }
            inner_product_param { num_output: 4 } }"""
    with pytest.raises(ShapeError, match="'b'.*'w'"):
        net_from(text)


def test_legacy_input_fields_become_an_input_layer():
    net = net_from('input: "data" input_dim: 2 input_dim: 3 input_dim: 4 input_dim: 5\n'
                   'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }')
    assert net._layer_names[0] == "input" and net.blobs["data"].shape == (2, 3, 4, 5)
    net = net_from('input: "data" input_shape { dim: 6 dim: 2 }\n'
                   'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }')
    assert net.inputs == ["data"] and net.blobs["data"].shape == (6, 2)


def test_v1_layers_are_upgraded():
    text = """input: "data" input_dim: 2 input_dim: 3 input_dim: 1 input_dim: 1
    layers { name: "ip" type: INNER_PRODUCT bottom: "data" top: "ip" blobs_lr: 1 blobs_lr: 2 weight_decay: 1
             weight_decay: 0 inner_product_param { num_output: 4 } }
    layers { name: "relu" type: RELU bottom: "ip" top: "ip" }"""
    net = net_from(text)
    assert [l.type for l in net.layers] == ["Input", "InnerProduct", "ReLU"]
    assert net.params_lr == [1.0, 2.0] and net.params_weight_decay == [1.0, 0.0]


def test_caffemodel_written_by_caffe_loads_and_saves_bit_identically(tmp_path):
    d = REF / "lenet_train"
    net = caffe.Net(str(d / "net.prototxt"), str(d / "init.caffemodel"), caffe.TRAIN)
    with np.load(d / "data.npz") as z:
        for name in ("conv1", "conv2", "ip1", "ip2"):
            for i in range(2):
                np.testing.assert_array_equal(net.params[name][i].data, z["param/%s/%d" % (name, i)])
    out = tmp_path / "w.caffemodel"
    net.save(str(out))
    again = caffe.Net(str(d / "net.prototxt"), caffe.TRAIN, weights=str(out))
    for name, blobs in net.params.items():
        for a, b in zip(blobs, again.params[name]):
            assert a.data.tobytes() == b.data.tobytes()
    again.save(str(tmp_path / "w2.caffemodel"))
    assert out.read_bytes() == (tmp_path / "w2.caffemodel").read_bytes()
    assert not list(tmp_path.glob(".tmp*")), "atomic write left a temporary file"


def test_hdf5_weights_roundtrip(tmp_path):
    net = net_from(MLP)
    net.save_hdf5(str(tmp_path / "w.caffemodel.h5"))
    other = net_from(MLP)
    other.copy_from(str(tmp_path / "w.caffemodel.h5"))
    for name, blobs in net.params.items():
        for a, b in zip(blobs, other.params[name]):
            np.testing.assert_array_equal(a.data, b.data)


def test_copy_from_shape_mismatch_names_layer_and_shapes(tmp_path):
    net = net_from(MLP)
    net.save(str(tmp_path / "w.caffemodel"))
    wider = net_from(MLP.replace("num_output: 5", "num_output: 6"))
    with pytest.raises(ShapeError, match=r"'ip1'.*\(6, 3\).*\(5, 3\)"):
        wider.copy_from(str(tmp_path / "w.caffemodel"))


def test_blob_proto_conversions():
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(caffe.io.blobproto_to_array(caffe.io.array_to_blobproto(a)), a)
    legacy = caffe_pb2.BlobProto(num=1, channels=2, height=1, width=3, data=[1, 2, 3, 4, 5, 6])
    assert caffe.io.blobproto_to_array(legacy).shape == (1, 2, 1, 3)
    s = caffe.io.arraylist_to_blobprotovector_str([a, a[0]])
    back = caffe.io.blobprotovector_str_to_arraylist(s)
    assert back[1].shape == (3, 4)
    d = caffe.io.array_to_datum(np.ones((1, 2, 2), np.uint8), label=3)
    assert d.label == 3 and caffe.io.datum_to_array(d).shape == (1, 2, 2)


def test_blob_proto_without_shape_is_a_scalar_or_a_value_error():
    # pycaffe: no shape and no legacy dims reshape to (), so one value is a scalar and more are a ValueError.
    one = caffe.io.blobproto_to_array(caffe_pb2.BlobProto(data=[7.5]))
    assert one.shape == () and float(one) == 7.5
    with pytest.raises(ValueError, match="holds 6 values but its shape \\(\\) needs 1"):
        caffe.io.blobproto_to_array(caffe_pb2.BlobProto(data=[0] * 6))
    # Any legacy field set means (num, channels, height, width), as in Caffe's Blob::FromProto.
    legacy = caffe_pb2.BlobProto(height=2, width=3, num=1, channels=1, data=range(6))
    legacy.shape.dim.extend([6])
    assert caffe.io.blobproto_to_array(legacy).shape == (1, 1, 2, 3)


@pytest.mark.parametrize("text, error, pattern", [
    ('layer { name: "x" type: "Nope" top: "x" }', NetError, "unknown layer type 'Nope'"),
    ('layer { name: "x" type: "ReLU" bottom: "missing" top: "x" }', NetError, "unknown bottom blob 'missing'"),
    ('layer { name: "a" type: "Input" top: "x" input_param { shape { dim: 1 } } }\n'
     'layer { name: "b" type: "Input" top: "x" input_param { shape { dim: 1 } } }', NetError, "more than one layer"),
    ('layer { name: "a" type: "Input" top: "x" include { phase: TRAIN } exclude { phase: TEST } }', NetError,
     "either include or exclude"),
])
def test_bad_nets_give_clear_errors(text, error, pattern):
    with pytest.raises(error, match=pattern):
        net_from(text)


def test_prototxt_errors_name_file_line_and_field(tmp_path):
    bad = tmp_path / "bad.prototxt"
    bad.write_text('name: "n"\nlayer {\n  name: "a"\n  frobnicate: 3\n}\n')
    with pytest.raises(PrototxtError, match=r"bad.prototxt:4:\d+: .*frobnicate.*Caffe fork"):
        caffe.Net(str(bad), caffe.TEST)
    with pytest.raises(PcnError, match="not found: .*nothere.prototxt"):
        caffe.Net(str(tmp_path / "nothere.prototxt"), caffe.TEST)


def test_shape_mismatch_names_layer_and_both_shapes():
    text = """
    layer { name: "d" type: "Input" top: "a" top: "b" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 4 } } }
    layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "c" }"""
    with pytest.raises(ShapeError, match=r"'sum'.*\(2, 4\).*\(2, 3\)|'sum'.*\(2, 3\).*\(2, 4\)"):
        net_from(text)


def test_float64_nets_and_reshape():
    net = net_from(MLP, dtype=np.float64)
    assert net.blobs["ip1"].data.dtype == np.float64
    net.blobs["data"].reshape(7, 3)
    net.blobs["label"].reshape(7)
    net.reshape()
    assert net.blobs["ip2"].shape == (7, 3)


@pytest.mark.parametrize("producer", ["LRN", "MVN", "Normalization1", "GRN", "Sigmoid", "TanH"])
def test_warns_when_in_place_layer_overwrites_a_top_read_in_backward(producer, caplog):
    text = """
    force_backward: true
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } } }
    layer { name: "norm" type: "%s" bottom: "data" top: "norm" }
    layer { name: "scale" type: "Scale" bottom: "norm" top: "%s" scale_param { bias_term: true } }
    """
    with caplog.at_level("WARNING", logger="pycaffe_norm"):
        net_from(text % (producer, "norm"))
    assert any("'scale' (Scale) computes in place on blob 'norm'" in r.getMessage() and "'norm' (%s)" % producer
               in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="pycaffe_norm"):
        net_from(text % (producer, "scaled"))           # out of place: nothing to warn about
    assert not [r for r in caplog.records if "in place" in r.getMessage()]


def test_no_in_place_warning_where_it_is_harmless(caplog):
    # BatchNorm keeps its own normalised copy for backward, so BatchNorm + in-place Scale is the usual, safe idiom;
    # without backward (no force_backward, no parameters before) the top is never read again.
    with caplog.at_level("WARNING", logger="pycaffe_norm"):
        net_from("""
        force_backward: true
        layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } } }
        layer { name: "bn" type: "BatchNorm" bottom: "data" top: "data" }
        layer { name: "scale" type: "Scale" bottom: "data" top: "data" scale_param { bias_term: true } }
        """)
        net_from("""
        layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } } }
        layer { name: "lrn" type: "LRN" bottom: "data" top: "lrn" }
        layer { name: "relu" type: "ReLU" bottom: "lrn" top: "lrn" }
        """)
    assert not [r for r in caplog.records if "in place" in r.getMessage()]


def test_unknown_blob_names_in_forward_and_backward_are_clear_errors():
    net = net_from(MLP, caffe.TRAIN)
    for call in (lambda: net.forward(blobs=["nope"]), lambda: net.backward(diffs=["nope"]),
                 lambda: net.forward(nope=np.zeros(3))):
        with pytest.raises(PcnError, match="net 'mlp' has no blob 'nope'"):
            call()
    assert set(net.forward(blobs=["ip1"])) == {"loss", "ip1"}
    assert set(net.backward(diffs=["ip1"])) == {"data", "label", "ip1"}


@pytest.mark.parametrize("word, suggestion", [("Convolutoin", "Convolution"), ("InnerProdcut", "InnerProduct"),
                                              ("Poolling", "Pooling"), ("Frobnicate", None)])
def test_unknown_layer_type_suggests_the_closest(word, suggestion):
    with pytest.raises(NetError) as info:
        net_from('layer { name: "l" type: "%s" top: "x" }' % word)
    message = str(info.value)
    assert "unknown layer type %r" % word in message and "layer_type_list()" in message
    if suggestion:
        assert message.count("did you mean") == 1 and "(did you mean %r?)" % suggestion in message
    else:
        assert "did you mean" not in message
