"""MyCaffe-style model definitions (pcn's own files in tests/mycaffe/) load, build, run forward and backward,
and each MyCaffe-only field is mapped, ignored with a log line, or refused with a one-line error."""
import logging
from pathlib import Path

import numpy as np
import pytest

import pycaffe_norm as caffe
from pycaffe_norm import prototxt
from pycaffe_norm.errors import NetError, PcnError
from pycaffe_norm.proto import caffe_pb2
from pycaffe_norm.upgrade import is_mycaffe, upgrade_net

HERE = Path(__file__).parent / "mycaffe"

# fixture -> (data shape, number of classes) for the Input layer that replaces its Data layers
FIXTURES = {
    "lenet_mycaffe.prototxt": ((2, 1, 28, 28), 10),
    "alexnet_cifar_mycaffe.prototxt": ((2, 3, 28, 28), 10),
    "normalization_tour.prototxt": (None, 3),
}


def _read(name: str) -> caffe_pb2.NetParameter:
    return prototxt.read_text(HERE / name, caffe_pb2.NetParameter())


def _with_input(name: str, tmp_path) -> Path:
    """The fixture with its Data layers replaced by one Input layer giving "data" and "label"."""
    param = _read(name)
    shape, _ = FIXTURES[name]
    if shape is None:
        return HERE / name
    layers = [lp for lp in param.layer if lp.type != "Data"]
    del param.layer[:]
    inp = param.layer.add(name="data", type="Input", top=["data", "label"])
    inp.input_param.shape.add(dim=shape)
    inp.input_param.shape.add(dim=shape[:1])
    for lp in layers:
        param.layer.add().CopyFrom(lp)
    path = tmp_path / name
    prototxt.write_text(path, param)
    return path


def _fill(net, classes):
    rs = np.random.RandomState(0)
    net.blobs["data"].data[...] = rs.uniform(0.1, 1.0, net.blobs["data"].shape)
    net.blobs["label"].data[...] = rs.randint(0, classes, net.blobs["label"].shape)


@pytest.mark.parametrize("name", sorted(FIXTURES))
@pytest.mark.parametrize("phase", [caffe.TRAIN, caffe.TEST])
def test_fixture_loads_and_runs(name, phase, tmp_path):
    net = caffe.Net(str(_with_input(name, tmp_path)), phase)
    classes = FIXTURES[name][1]
    _fill(net, classes)
    out = net.forward()
    assert np.isfinite(float(out["loss"]))
    if phase == caffe.TEST and "accuracy" in out:
        assert 0.0 <= float(out["accuracy"]) <= 1.0
    if phase == caffe.TRAIN:
        net.backward()
        diffs = [p.diff for p in net.learnable_params]
        assert all(np.all(np.isfinite(d)) for d in diffs)
        assert any(np.any(d != 0) for d in diffs)


@pytest.mark.parametrize("name", ["lenet_mycaffe.prototxt", "alexnet_cifar_mycaffe.prototxt"])
def test_imagedb_data_layer_is_refused_in_one_line(name):
    with pytest.raises(NetError) as e:
        caffe.Net(str(HERE / name), caffe.TRAIN)
    msg = str(e.value)
    assert "data_param.backend IMAGEDB" in msg and "pcn port" in msg and "\n" not in msg


def test_every_fixture_parses_and_is_recognised():
    for name in FIXTURES:
        param = _read(name)
        assert len(param.layer) > 3
        assert is_mycaffe(param)
    plain = prototxt.read_text(Path(__file__).parents[1] / "models" / "lenet" / "lenet_train_test.prototxt",
                               caffe_pb2.NetParameter())
    assert not is_mycaffe(plain)


def test_lrn_values_written_by_mycaffe_are_used(tmp_path):
    net = caffe.Net(str(_with_input("alexnet_cifar_mycaffe.prototxt", tmp_path)), caffe.TEST)
    lrn = net.layer_dict["norm1"].layer_param.lrn_param
    assert lrn.alpha == pytest.approx(1e-4) and lrn.k == 2 and lrn.local_size == 3


def _net_text(layers: str, tail: str = "") -> caffe_pb2.NetParameter:
    text = ('name: "t" layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 dim: 3 '
            'dim: 3 } } } ' + layers + tail)
    return prototxt.parse_text(text, caffe_pb2.NetParameter())


LRN_BARE = 'layer { name: "lrn" type: "LRN" bottom: "data" top: "lrn" lrn_param { local_size: 3 } } '


def test_lrn_defaults_are_mycaffes_in_a_mycaffe_net_only(caplog):
    with caplog.at_level(logging.WARNING, logger="pycaffe_norm"):
        mycaffe = upgrade_net(_net_text(LRN_BARE, "enable_memory_stats: False"))
    lrn = mycaffe.layer[1].lrn_param
    assert lrn.alpha == pytest.approx(1e-4) and lrn.k == 2
    assert "MyCaffe's default" in caplog.text
    bvlc = upgrade_net(_net_text(LRN_BARE)).layer[1].lrn_param
    assert bvlc.alpha == 1 and bvlc.k == 1


def test_tour_fields(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="pycaffe_norm"):
        net = caffe.Net(str(HERE / "normalization_tour.prototxt"), caffe.TRAIN)
    assert "accepted and ignored" in caplog.text and "cudnn_enable_tensor_cores" in caplog.text
    # reshape_algorithm ONNX is floor rounding: 9 -> 4 (Caffe's ceil gives 5)
    assert net.blobs["pool1"].shape == (2, 4, 4, 4)
    assert net.layer_dict["pool1"].layer_param.pooling_param.round_mode == caffe_pb2.PoolingParameter.FLOOR
    assert type(net.layer_dict["exp1"]).type == "Exp"
    _fill(net, 3)
    net.forward()
    # active: False is the identity in TRAIN
    np.testing.assert_array_equal(net.blobs["drop1"].data, net.blobs["exp1"].data)
    # scale_bias on the cuDNN engine gives the two learned blobs; Normalization2 reads "esp"
    assert len(net.layer_dict["bn1"].blobs) == 5
    assert net.layer_dict["norm2"].blobs[0].shape == (4,)
    # exclude { phase: RUN } never excludes in TRAIN/TEST
    assert "loss" in net.blobs


@pytest.mark.parametrize("layer, field", [
    ('layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 2 '
     'tranpose: True } }', "tranpose"),
    ('layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" use_halfsize: True '
     'inner_product_param { num_output: 2 } }', "use_halfsize"),
    ('layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { kernel_size: 2 round_mode: CEIL '
     'reshape_algorithm: ONNX } }', "reshape_algorithm"),
    ('layer { name: "d" type: "ImageData" top: "d" top: "l" transform_param { use_imagedb_mean: True } '
     'image_data_param { source: "x" } }', "use_imagedb_mean"),
])
def test_numeric_mycaffe_fields_are_refused_by_name(layer, field):
    with pytest.raises(PcnError) as e:
        caffe.Net(_net_text(layer, "model_type: DEFAULT"), caffe.TRAIN)
    assert field in str(e.value) and "\n" not in str(e.value)


def test_run_phase_rules():
    net = caffe.Net(_net_text('layer { name: "r" type: "ReLU" bottom: "data" top: "r" include { phase: RUN } } '
                              'layer { name: "s" type: "Sigmoid" bottom: "data" top: "s" exclude { phase: RUN } }'),
                    caffe.TEST)
    assert "r" not in net.blobs and "s" in net.blobs


def test_mycaffe_type_spellings():
    param = upgrade_net(_net_text('layer { name: "e" type: "EXP" bottom: "data" top: "e" } '
                                  'layer { name: "r" type: "relu" bottom: "e" top: "r" } '
                                  'layer { name: "s" type: "Softmax_Loss" bottom: "r" bottom: "data" top: "s" }'))
    assert [lp.type for lp in param.layer[1:]] == ["Exp", "ReLU", "SoftmaxWithLoss"]
    unit = upgrade_net(_net_text('layer { name: "u" type: "Lstm_Unit" bottom: "data" bottom: "data" bottom: "data" '
                                 'top: "c" top: "h" }'))
    assert unit.layer[1].type == "LSTMUnit"  # MyCaffe's LSTMUnit kernels are BVLC's
