"""`pcn port` and `pcn upgrade` (pycaffe_norm/port.py): canonical output, idempotence, faithfulness, the one-line
error naming every unsupported type and field, MyCaffe's data layers, and MyCaffe-style nets trained after porting."""
import logging
import re
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

import pycaffe_norm as caffe
from pycaffe_norm import port, prototxt
from pycaffe_norm.cli import main
from pycaffe_norm.proto import caffe_pb2
from tests.support import load_tool, write_lmdb

HERE = Path(__file__).parent / "mycaffe"
ROOT = Path(__file__).resolve().parents[1]


def _port(tmp_path, src, *args, name="out.prototxt"):
    out = tmp_path / name
    assert main(["port", str(src), "-o", str(out)] + list(args)) == 0
    return out


def _error_line(capsys) -> str:
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("pcn: error:")]
    assert len(lines) == 1
    return lines[0]


@pytest.mark.parametrize("name", ["dialect_tour.prototxt", "normalization_tour.prototxt",
                                  "lenet_mycaffe.prototxt", "alexnet_cifar_mycaffe.prototxt",
                                  "solver_mycaffe.prototxt"])
def test_output_is_protobuf_text_and_porting_it_again_changes_nothing(tmp_path, name):
    out = _port(tmp_path, HERE / name)
    text = out.read_text()
    kind = caffe_pb2.SolverParameter if "solver" in name else caffe_pb2.NetParameter
    text_format.Parse(text, kind())   # protobuf's own parser reads it
    again = _port(tmp_path, out, name="again.prototxt")
    assert again.read_text() == text


def _copy_weights(src, dst):
    for name, layer in src.layer_dict.items():
        for a, b in zip(layer.blobs, dst.layer_dict[name].blobs):
            b.data[...] = a.data


@pytest.mark.parametrize("name", ["dialect_tour.prototxt", "normalization_tour.prototxt"])
def test_loading_the_ported_file_builds_the_same_net(tmp_path, name):
    out = _port(tmp_path, HERE / name)
    caffe.set_random_seed(3)
    net_in = caffe.Net(str(HERE / name), caffe.TRAIN)
    net_out = caffe.Net(str(out), caffe.TRAIN)
    assert [(n, type(lay).type) for n, lay in net_in.layer_dict.items()] == \
           [(n, type(lay).type) for n, lay in net_out.layer_dict.items()]
    assert [p.shape for p in net_in.learnable_params] == [p.shape for p in net_out.learnable_params]
    assert net_in.params_lr == net_out.params_lr
    _copy_weights(net_in, net_out)
    rs = np.random.RandomState(0)
    for inp in net_in.inputs:
        value = rs.randint(0, 3, net_in.blobs[inp].shape) if inp == "label" else rs.uniform(
            0.1, 1, net_in.blobs[inp].shape)
        net_in.blobs[inp].data[...] = value
        net_out.blobs[inp].data[...] = value
    a, b = net_in.forward(), net_out.forward()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    net_in.backward()
    net_out.backward()
    for p, q in zip(net_in.learnable_params, net_out.learnable_params):
        np.testing.assert_array_equal(p.diff, q.diff)


def test_dialect_tour_is_mapped_to_caffe_fields(tmp_path):
    param = prototxt.read_text(_port(tmp_path, HERE / "dialect_tour.prototxt"), caffe_pb2.NetParameter())
    layers = {lp.name: lp for lp in param.layer}
    # freeze_learning: every parameter blob gets lr_mult 0 (and decay 0), as BVLC writes it
    assert [(s.lr_mult, s.decay_mult) for s in layers["conv1"].param] == [(0, 0), (0, 0)]
    assert not layers["conv1"].HasField("freeze_learning")
    # min_top_axes: a Reshape appends two size-1 axes to the InnerProduct's (N, 8)
    reshape = layers["ip1_min_top_axes"]
    assert reshape.type == "Reshape" and list(reshape.top) == ["ip1"]
    assert list(reshape.reshape_param.shape.dim) == [1, 1]
    net = caffe.Net(str(HERE / "dialect_tour.prototxt"), caffe.TRAIN)
    assert net.blobs["ip1"].shape == (2, 8, 1, 1)
    assert net.params_lr[:2] == [0, 0]
    # MyCaffe's default fillers and the filler without a type (gaussian)
    assert layers["ip1"].inner_product_param.weight_filler.type == "gaussian"
    assert layers["ip1"].inner_product_param.bias_filler.value == pytest.approx(0.1)
    assert layers["pool1"].pooling_param.round_mode == caffe_pb2.PoolingParameter.FLOOR
    assert not param.HasField("enable_memory_stats") and not param.HasField("model_type")
    assert layers["relu0"].type == "ReLU"


def test_frozen_layer_is_not_updated_by_the_solver(tmp_path):
    solver_file = tmp_path / "s.prototxt"
    solver_file.write_text('net: "%s"\nbase_lr: 0.1\nlr_policy: "fixed"\nmax_iter: 2\nweight_decay: 0.1\n'
                           'momentum: 0.9\n' % (HERE / "dialect_tour.prototxt"))
    solver = caffe.SGDSolver(str(solver_file))
    net = solver.net
    before = {k: [b.data.copy() for b in net.layer_dict[k].blobs] for k in ("conv1", "ip1")}
    for name in net.inputs:
        net.blobs[name].data[...] = np.random.RandomState(1).uniform(0, 1, net.blobs[name].shape)
    solver.step(2)
    for a, b in zip(before["conv1"], net.layer_dict["conv1"].blobs):
        np.testing.assert_array_equal(a, b.data)
    assert any(not np.array_equal(a, b.data) for a, b in zip(before["ip1"], net.layer_dict["ip1"].blobs))


UNSUPPORTED = """name: "bad"
layer
{
   name: "data"
   type: "Input"
   top: "data"
   input_param
   {
      shape
      {
         dim: 1
         dim: 2
      }
   }
}
layer
{
   name: "temporal"
   type: "DataTemporal"
   bottom: "data"
   top: "temporal"
}
layer
{
   name: "blk"
   type: "TransformerBlock"
   bottom: "data"
   top: "blk"
}
layer
{
   name: "ip"
   type: "InnerProduct"
   bottom: "data"
   top: "ip"
   inner_product_param
   {
      num_output: 2
      enable_noise: True
      frobnicate: 3
   }
}
layer
{
   name: "flat"
   type: "Flatten"
   bottom: "ip"
   top: "flat"
   use_halfsize: True
}
"""


def test_one_line_names_every_unsupported_type_and_field(tmp_path, capsys):
    src = tmp_path / "bad.prototxt"
    src.write_text(UNSUPPORTED)
    assert main(["port", str(src), "-o", str(tmp_path / "out.prototxt")]) == 2
    line = _error_line(capsys)
    for word in ("DataTemporal", "Temporal Fusion Transformer", "TransformerBlock", "GPT", "frobnicate",
                 "use_halfsize", "bad.prototxt:40:7"):
        assert word in line, word
    assert not (tmp_path / "out.prototxt").exists()


@pytest.mark.parametrize("text, words", [
    ("layer {\n  name: 'x'\n  type \"ReLU\"\n}\n", ["bad.prototxt:3:"]),
    ("base_lr: 0.1\ncustom_trainer: RL.Trainer\n", ["custom_trainer"]),
])
def test_other_refusals_are_one_line(tmp_path, capsys, text, words):
    src = tmp_path / "bad.prototxt"
    src.write_text(text)
    assert main(["port", str(src), "-o", str(tmp_path / "o.prototxt")]) == 2
    line = _error_line(capsys)
    assert all(w in line for w in words)


def test_mycaffe_adamw_becomes_pcn_adamw(tmp_path):
    src = tmp_path / "s.prototxt"
    src.write_text("base_lr: 0.1\nlr_policy: fixed\ntype: ADAMW\nadamw_decay: 0.05\n")
    solver = text_format.Parse(_port(tmp_path, src).read_text(), caffe_pb2.SolverParameter())
    assert solver.type == "AdamW" and solver.adamw_decay == 0.05


def test_mycaffe_solver_gets_caffe_type_names_and_mycaffe_defaults(tmp_path):
    src = tmp_path / "s.prototxt"
    src.write_text("base_lr: 0.05\ntype: RMSPROP\nlr_policy: fixed\nsnapshot_include_state: True\n")
    solver = text_format.Parse(_port(tmp_path, src).read_text(), caffe_pb2.SolverParameter())
    assert solver.type == "RMSProp" and solver.base_lr == pytest.approx(0.05)
    # MyCaffe's defaults, written out: rms_decay 0.95 (Caffe 0.99), snapshot_after_train False (Caffe True), ...
    assert solver.rms_decay == pytest.approx(0.95) and solver.HasField("snapshot_after_train")
    assert not solver.snapshot_after_train and solver.max_iter == 500000 and solver.weight_decay == pytest.approx(5e-4)


def test_image_database_becomes_lmdb_with_data_paths_and_placeholders(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="pycaffe_norm"):
        out = _port(tmp_path, HERE / "lenet_mycaffe.prototxt")
    assert "make_mnist_lmdb.py" in caplog.text
    param = prototxt.read_text(out, caffe_pb2.NetParameter())
    sources = [(lp.data_param.source, lp.data_param.backend) for lp in param.layer if lp.type == "Data"]
    assert sources == [("mnist_train_lmdb", caffe_pb2.DataParameter.LMDB),
                       ("mnist_test_lmdb", caffe_pb2.DataParameter.LMDB)]
    (tmp_path / "mnist" / "mnist_train_lmdb").mkdir(parents=True)
    (tmp_path / "mnist" / "mnist_test_lmdb").mkdir()
    out = _port(tmp_path, HERE / "alexnet_cifar_mycaffe.prototxt", "--data", "CIFAR-10.training=/db/train",
                "--data", "CIFAR-10.testing=/db/test", "--data", "CIFAR-10.mean=/db/mean.binaryproto")
    param = prototxt.read_text(out, caffe_pb2.NetParameter())
    data = [lp for lp in param.layer if lp.type == "Data"]
    assert [lp.data_param.source for lp in data] == ["/db/train", "/db/test"]
    assert all(lp.transform_param.mean_file == "/db/mean.binaryproto" for lp in data)
    assert all(lp.transform_param.color_order == caffe_pb2.TransformationParameter.RGB for lp in data)
    out = _port(tmp_path, HERE / "lenet_mycaffe.prototxt", "--data", "MNIST=%s" % (tmp_path / "mnist"))
    param = prototxt.read_text(out, caffe_pb2.NetParameter())
    assert [Path(lp.data_param.source).name for lp in param.layer if lp.type == "Data"] == \
           ["mnist_train_lmdb", "mnist_test_lmdb"]


V1_NET = """name: "v1"
input: "data"
input_dim: 2
input_dim: 1
input_dim: 6
input_dim: 6
layers {
  name: "conv"
  type: CONVOLUTION
  bottom: "data"
  top: "conv"
  blobs_lr: 1
  blobs_lr: 2
  weight_decay: 1
  weight_decay: 0
  convolution_param { num_output: 2 kernel_size: 3 }
}
layers { name: "relu" type: RELU bottom: "conv" top: "conv" }
"""


def test_upgrade_v1_net_and_old_solver(tmp_path):
    src = tmp_path / "v1.prototxt"
    src.write_text(V1_NET)
    out = tmp_path / "v2.prototxt"
    assert main(["upgrade", str(src), "-o", str(out)]) == 0
    param = text_format.Parse(out.read_text(), caffe_pb2.NetParameter())
    assert [(lp.name, lp.type) for lp in param.layer] == [("input", "Input"), ("conv", "Convolution"),
                                                          ("relu", "ReLU")]
    assert list(param.layer[0].input_param.shape[0].dim) == [2, 1, 6, 6]
    assert [(s.lr_mult, s.decay_mult) for s in param.layer[1].param] == [(1, 1), (2, 0)]
    old = tmp_path / "solver.prototxt"
    old.write_text('net: "v1.prototxt"\nbase_lr: 0.1\nlr_policy: "fixed"\nsolver_type: ADAM\n')
    assert main(["upgrade", str(old), "-o", str(tmp_path / "s2.prototxt")]) == 0
    solver = text_format.Parse((tmp_path / "s2.prototxt").read_text(), caffe_pb2.SolverParameter())
    assert solver.type == "Adam" and not solver.HasField("solver_type")


def _cifar_like_lmdb(path, n, rs):
    datums = [caffe_pb2.Datum(channels=3, height=32, width=32, label=int(rs.randint(10)),
                              data=rs.randint(0, 256, 3 * 32 * 32).astype(np.uint8).tobytes()) for _ in range(n)]
    return write_lmdb(path, datums)


def _train(tmp_path, net_file, solver_src, capsys) -> str:
    solver = tmp_path / (net_file.stem + "_solver.prototxt")
    _port(tmp_path, solver_src, name=solver.name)
    text = re.sub(r"snapshot_prefix: .*\n", "", solver.read_text())
    solver.write_text(text + 'net: "%s"\nsnapshot_prefix: "%s"\n' % (net_file, tmp_path / "snap"))
    assert main(["train", "--solver", str(solver)]) == 0
    return capsys.readouterr().err


def test_mycaffe_lenet_and_alexnet_cifar_train_after_porting(tmp_path, capsys):
    pytest.importorskip("lmdb")
    mnist = load_tool("make_mnist_lmdb")
    assert mnist.main(["--out", str(tmp_path / "mnist"), "--limit", "64"]) == 0
    lenet = _port(tmp_path, HERE / "lenet_mycaffe.prototxt", "--data", "MNIST=%s" % (tmp_path / "mnist"),
                  name="lenet.prototxt")
    log = _train(tmp_path, lenet, HERE / "solver_mycaffe.prototxt", capsys)
    losses = [float(x) for x in re.findall(r"Iteration \d+, loss = ([-\d.e+]+)", log)]
    assert len(losses) >= 4 and all(np.isfinite(losses))

    rs = np.random.RandomState(0)
    train = _cifar_like_lmdb(tmp_path / "cifar_train_lmdb", 32, rs)
    test = _cifar_like_lmdb(tmp_path / "cifar_test_lmdb", 20, rs)
    mean = tmp_path / "mean.binaryproto"
    assert load_tool("compute_image_mean").main([train, str(mean)]) == 0
    alexnet = _port(tmp_path, HERE / "alexnet_cifar_mycaffe.prototxt", "--data", "CIFAR-10.training=" + train,
                    "--data", "CIFAR-10.testing=" + test, "--data", "CIFAR-10.mean=%s" % mean, name="alexnet.prototxt")
    log = _train(tmp_path, alexnet, HERE / "solver_mycaffe.prototxt", capsys)
    losses = [float(x) for x in re.findall(r"Iteration \d+, loss = ([-\d.e+]+)", log)]
    assert len(losses) >= 4 and all(np.isfinite(losses))
    assert "Test net output" in log or "accuracy" in log


def test_port_file_reports_kind():
    assert port.port_file(str(HERE / "solver_mycaffe.prototxt"))[0] == "solver"
    assert port.port_file(str(HERE / "dialect_tour.prototxt"))[0] == "net"


def test_docs_layer_table_claims_only_registered_types():
    text = (ROOT / "docs" / "mycaffe.md").read_text()
    claimed = re.findall(r"^\| [A-Z0-9_]+ \| `[^`]+` \| .*?pcn `([^`]+)`", text, flags=re.M)
    assert len(claimed) > 50
    assert set(claimed) <= set(caffe.layer_type_list())


SEGMENTATION = """name: "seg"
layer
{
   name: "data"
   type: "Data"
   top: "data"
   top: "label"
   transform_param
   {
      scale: 0.5
      %s
   }
   data_param
   {
      source: "VOC.training"
      batch_size: 3
      backend: IMAGEDB
      label_type: MULTIPLE
   }
}
layer
{
   name: "score"
   type: "Convolution"
   bottom: "data"
   top: "score"
   convolution_param
   {
      num_output: 2
      kernel_size: 1
   }
}
layer
{
   name: "loss"
   type: "SoftmaxWithLoss"
   bottom: "score"
   bottom: "label"
   top: "loss"
}
"""


def test_label_arrays_come_from_an_aligned_label_database(tmp_path, capsys):
    src = tmp_path / "seg.prototxt"
    src.write_text(SEGMENTATION % "")
    out = _port(tmp_path, src, "--data", "VOC.training=/db/img", "--data", "VOC.training.label=/db/lbl")
    param = prototxt.read_text(out, caffe_pb2.NetParameter())
    data, label = param.layer[0], param.layer[1]
    assert (list(data.top), data.data_param.source) == (["data"], "/db/img")
    assert (label.name, list(label.top), label.data_param.source, label.data_param.batch_size) == \
           ("data_label", ["label"], "/db/lbl", 3)
    assert not label.HasField("transform_param") and not data.data_param.HasField("label_type")
    with pytest.raises(caffe.errors.NetError, match="pcn port"):
        caffe.Net(str(src), caffe.TRAIN)
    src.write_text(SEGMENTATION % "crop_size: 2")
    assert main(["port", str(src), "-o", str(tmp_path / "o2.prototxt")]) == 2
    assert "cannot be kept aligned" in _error_line(capsys)


V0_NET = """name: "v0"
input: "data"
input_dim: 1
input_dim: 1
input_dim: 8
input_dim: 8
layers { layer { name: "pad1" type: "padding" pad: 2 } bottom: "data" top: "pad1" }
layers {
  layer {
    name: "conv1" type: "conv" num_output: 4 kernelsize: 5 stride: 1
    weight_filler { type: "gaussian" std: 0.01 } blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  }
  bottom: "pad1" top: "conv1"
}
layers { layer { name: "relu1" type: "relu" } bottom: "conv1" top: "conv1" }
layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 2 stride: 2 } bottom: "conv1" top: "pool1" }
layers { layer { name: "fc" type: "innerproduct" num_output: 3 %s } bottom: "pool1" top: "fc" }
"""


def test_upgrade_v0_net_as_caffe_does(tmp_path, capsys):
    src = tmp_path / "v0.prototxt"
    src.write_text(V0_NET % "")
    out = tmp_path / "v0_up.prototxt"
    assert main(["upgrade", str(src), "-o", str(out)]) == 0
    param = text_format.Parse(out.read_text(), caffe_pb2.NetParameter())
    assert [(lp.name, lp.type) for lp in param.layer] == [
        ("input", "Input"), ("conv1", "Convolution"), ("relu1", "ReLU"), ("pool1", "Pooling"),
        ("fc", "InnerProduct")]
    conv = param.layer[1]
    # the padding layer is folded into the convolution, which reads the padding layer's input
    assert list(conv.bottom) == ["data"] and list(conv.convolution_param.pad) == [2]
    assert list(conv.convolution_param.kernel_size) == [5] and conv.convolution_param.num_output == 4
    assert conv.convolution_param.weight_filler.std == pytest.approx(0.01)
    assert [(s.lr_mult, s.decay_mult) for s in conv.param] == [(1, 1), (2, 0)]
    pool = param.layer[3].pooling_param
    assert (pool.pool, pool.kernel_size, pool.stride) == (caffe_pb2.PoolingParameter.AVE, 2, 2)
    net = caffe.Net(str(out), caffe.TEST)
    assert net.blobs["conv1"].shape == (1, 4, 8, 8) and net.blobs["fc"].shape == (1, 3)
    src.write_text(V0_NET % "dropout_ratio: 0.5 local_size: 3")
    assert main(["upgrade", str(src), "-o", str(out)]) == 2
    line = _error_line(capsys)
    assert "dropout_ratio" in line and "local_size" in line


def test_windows_path_survives_porting_twice(tmp_path):
    src = tmp_path / "w.prototxt"
    src.write_text('layer\n{\n   name: "d"\n   type: "ImageData"\n   top: "d"\n   top: "l"\n   image_data_param\n'
                   '   {\n      source: C:\\ProgramData\\list.txt\n   }\n}\nenable_memory_stats: False\n')
    out = _port(tmp_path, src)
    assert prototxt.read_text(out, caffe_pb2.NetParameter()).layer[0].image_data_param.source == \
        "C:\\ProgramData\\list.txt"
    assert _port(tmp_path, out, name="again.prototxt").read_text() == out.read_text()
