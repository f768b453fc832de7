"""Reliability (issue #8): weights files that set nothing, training lost late, divergence, bad files that must give
one-line errors, ``python -m pycaffe_norm`` and non-UTF-8 prototxt comments. Each case runs the command line (or the
API) on the bad input and checks the one-line error or the correct result."""
from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest

import pycaffe_norm as caffe
from pycaffe_norm.cli import main
from pycaffe_norm.errors import DivergenceError, NetError, PcnError, PrototxtError
from pycaffe_norm.proto import caffe_pb2

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Two layers with parameters, so that a file can cover one of them.
NET = """name: "two"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 8 dim: 5 } shape { dim: 8 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  inner_product_param { num_output: 6 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("pcn: error: ")]
    assert len(errors) == 1, err
    return errors[0]


@pytest.fixture
def two(tmp_path):
    """The net above, its weights as .caffemodel and .caffemodel.h5."""
    model = tmp_path / "two.prototxt"
    model.write_text(NET)
    net = caffe.Net(str(model), caffe.TEST)
    net.save(str(tmp_path / "two.caffemodel"))
    net.save_hdf5(str(tmp_path / "two.caffemodel.h5"))
    return str(model), str(tmp_path / "two.caffemodel"), str(tmp_path / "two.caffemodel.h5")


def write_solver(tmp_path, extra: str = "", net: str = NET) -> str:
    (tmp_path / "net.prototxt").write_text(net)
    base = {"net": '"%s"' % (tmp_path / "net.prototxt"), "base_lr": "0.1", "lr_policy": '"fixed"', "max_iter": "6",
            "display": "1", "random_seed": "3", "snapshot_prefix": '"%s"' % (tmp_path / "snap" / "two"),
            "snapshot_after_train": "false"}
    for line in extra.strip().splitlines():
        base.pop(line.split(":")[0].strip(), None)
    path = tmp_path / "solver.prototxt"
    path.write_text("".join("%s: %s\n" % kv for kv in base.items()) + extra)
    return str(path)


# --- 1. weights files that set nothing -------------------------------------------------------------------------

def test_empty_caffemodel_is_an_error(two, tmp_path, capsys):
    model, _, _ = two
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    assert main(["test", "--model", model, "--weights", str(empty), "--iterations", "1"]) == 2
    line = error_line(capsys)
    assert "empty.caffemodel sets no parameter" in line and "ip1, ip2" in line


def test_weights_of_another_net_are_an_error(two, tmp_path, capsys):
    model, _, _ = two
    other = caffe_pb2.NetParameter(name="other")
    other.layer.add(name="conv9", type="Convolution").blobs.add().data.extend([1.0])
    path = tmp_path / "other.caffemodel"
    path.write_bytes(other.SerializeToString())
    assert main(["train", "--solver", write_solver(tmp_path), "--weights", str(path)]) == 2
    assert "sets no parameter of net 'two'" in error_line(capsys)


def test_caffemodel_cut_at_a_layer_boundary_warns_with_a_count(two, tmp_path, capsys):
    model, weights, _ = two
    full = caffe_pb2.NetParameter()
    full.ParseFromString(pathlib.Path(weights).read_bytes())
    cut = caffe_pb2.NetParameter()
    cut.CopyFrom(full)
    del cut.layer[2:]   # data, ip1: ip2 is gone
    path = tmp_path / "cut.caffemodel"
    path.write_bytes(cut.SerializeToString())
    assert main(["test", "--model", model, "--weights", str(path), "--iterations", "1"]) == 0
    err = capsys.readouterr().err
    assert "Copying source layer ip1" in err and "Copying source layer ip2" not in err
    warning = [line for line in err.splitlines() if line.startswith("W")]
    assert len(warning) == 1 and "1 of 2 layers with parameters" in warning[0] and warning[0].endswith(": ip2")


def test_unmatched_source_layers_are_logged_as_ignored(two, tmp_path, capsys):
    model, weights, _ = two
    full = caffe_pb2.NetParameter()
    full.ParseFromString(pathlib.Path(weights).read_bytes())
    full.layer.add(name="extra", type="ReLU")
    path = tmp_path / "extra.caffemodel"
    path.write_bytes(full.SerializeToString())
    assert main(["test", "--model", model, "--weights", str(path), "--iterations", "1"]) == 0
    err = capsys.readouterr().err
    assert "Ignoring source layer extra" in err and "Copying source layer ip2" in err
    assert not [line for line in err.splitlines() if line.startswith("W")]


def test_full_weights_load_exactly_through_the_api(two):
    model, weights, h5 = two
    ref = caffe.Net(model, weights, caffe.TEST)
    for path in (weights, h5):
        net = caffe.Net(model, caffe.TEST)
        net.copy_from(path)
        for name in ("ip1", "ip2"):
            for a, b in zip(net.params[name], ref.params[name]):
                np.testing.assert_array_equal(a.data, b.data)


def test_hdf5_weights_that_set_nothing_are_an_error(two, tmp_path):
    model, _, _ = two
    path = tmp_path / "nothing.caffemodel.h5"
    with h5py.File(path, "w") as f:
        f.create_group("data").create_group("conv9").create_dataset("0", data=np.zeros(3))
    with pytest.raises(PcnError, match="sets no parameter"):
        caffe.Net(model, str(path), caffe.TEST)


def test_hdf5_weights_shape_is_checked_before_reading(two, tmp_path, capsys):
    model, _, _ = two
    path = tmp_path / "huge.caffemodel.h5"
    with h5py.File(path, "w") as f:   # 4 TB of float32 declared, nothing stored: reading it would need them all
        ip1 = f.create_group("data").create_group("ip1")
        ip1.create_dataset("0", shape=(10 ** 6, 10 ** 6), dtype="f4", chunks=(1, 1000))
        ip1.create_dataset("1", data=np.zeros(6, np.float32))
    assert main(["test", "--model", model, "--weights", str(path), "--iterations", "1"]) == 2
    line = error_line(capsys)
    assert "layer 'ip1' parameter 0 has shape (6, 5) in the net but (1000000, 1000000) in the weights file" in line


def test_data_h5_given_as_weights(two, tmp_path, capsys):
    model, _, _ = two
    path = tmp_path / "train.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=np.zeros((4, 5), np.float32))
        f.create_dataset("label", data=np.zeros(4, np.float32))
    assert main(["test", "--model", model, "--weights", str(path), "--iterations", "1"]) == 2
    line = error_line(capsys)
    assert "train.h5" in line and "data .h5" in line


@pytest.mark.parametrize("damage", ["truncate", "garbage", "odd structure", "string blob"])
def test_damaged_hdf5_weights_give_one_line(two, tmp_path, capsys, damage):
    model, _, h5 = two
    path = tmp_path / "bad.caffemodel.h5"
    raw = pathlib.Path(h5).read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[:len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(raw[:8] + bytes(range(256)) * 8)
    elif damage == "odd structure":
        with h5py.File(path, "w") as f:
            f.create_group("data").create_group("ip1").create_dataset("3", data=np.zeros(3))
    else:
        with h5py.File(path, "w") as f:
            f.create_group("data").create_group("ip1").create_dataset("0", data="not numbers")
    assert main(["test", "--model", model, "--weights", str(path), "--iterations", "1"]) == 2
    assert "bad.caffemodel.h5" in error_line(capsys)


# --- 2. training lost late -------------------------------------------------------------------------------------

def test_unwritable_snapshot_prefix_fails_before_iteration_0(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")   # as root, permissions stop nothing: a file in the path does
    solver = write_solver(tmp_path, 'snapshot: 3\nsnapshot_prefix: "%s"\n' % (blocker / "snaps" / "two"))
    assert main(["train", "--solver", solver]) == 2
    err = capsys.readouterr().err
    assert "Iteration 0" not in err and "Creating training net" not in err
    assert "cannot write to snapshot_prefix" in err and "a_file" in err


def test_snapshot_after_train_checks_the_prefix_before_iteration_0(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    solver = write_solver(tmp_path, 'snapshot_after_train: true\nsnapshot_prefix: "%s"\n' % (blocker / "x"))
    assert main(["train", "--solver", solver]) == 2
    err = capsys.readouterr().err
    assert "Iteration 0" not in err and "cannot write to snapshot_prefix" in err


@pytest.mark.parametrize("fmt", ["BINARYPROTO", "HDF5"])
def test_missing_snapshot_folder_is_created_in_both_formats(tmp_path, fmt):
    prefix = tmp_path / "new" / "deeper" / "two"
    solver = write_solver(tmp_path, 'snapshot: 3\nsnapshot_format: %s\nsnapshot_prefix: "%s"\n' % (fmt, prefix))
    assert main(["train", "--solver", solver]) == 0
    suffix = ".h5" if fmt == "HDF5" else ""
    names = sorted(os.listdir(prefix.parent))
    assert names == sorted("two_iter_%d.%s%s" % (i, kind, suffix) for i in (3, 6)
                           for kind in ("caffemodel", "solverstate"))
    # each snapshot loads back and resumes
    assert main(["train", "--solver", solver, "--snapshot", str(prefix) + "_iter_3.solverstate" + suffix]) == 0


def test_stale_snapshot_temporaries_are_removed(tmp_path, capsys):
    folder = tmp_path / "snap"
    folder.mkdir()
    stale = [folder / ".tmp_two_iter_3.caffemodel.h5abc123", folder / "two_iter_3.solverstate.h5.tmp"]
    keep = [folder / "two_iter_3.caffemodel", folder / ".tmp_other_iter_3.caffemodel"]
    for p in stale + keep:
        p.write_bytes(b"half")
    assert main(["train", "--solver", write_solver(tmp_path, "snapshot: 100\nmax_iter: 1\n")]) == 0
    assert not any(p.exists() for p in stale) and all(p.exists() for p in keep)
    assert "left by an interrupted snapshot" in capsys.readouterr().err


def test_duplicate_names_of_layers_with_parameters_are_refused(tmp_path, capsys):
    dup = NET.replace('name: "ip2"', 'name: "ip1"')
    assert main(["train", "--solver", write_solver(tmp_path, net=dup)]) == 2
    line = error_line(capsys)
    assert "layers #1 (InnerProduct) and #2 (InnerProduct) are both named 'ip1'" in line


def test_duplicate_names_of_layers_without_parameters_stay_allowed(tmp_path):
    net = NET.replace('layer { name: "loss"', 'layer { name: "r" type: "ReLU" bottom: "ip2" top: "a" }\n'
                      'layer { name: "r" type: "ReLU" bottom: "ip2" top: "b" }\nlayer { name: "loss"')
    (tmp_path / "n.prototxt").write_text(net)
    caffe.Net(str(tmp_path / "n.prototxt"), caffe.TRAIN)
    with pytest.raises(NetError, match="both named 'ip1'"):
        (tmp_path / "d.prototxt").write_text(NET.replace('name: "ip2"', 'name: "ip1"'))
        caffe.Net(str(tmp_path / "d.prototxt"), caffe.TRAIN)


def test_training_twice_with_a_seed_gives_the_same_bytes(tmp_path):
    outputs = []
    for run in ("a", "b"):
        folder = tmp_path / run
        folder.mkdir()
        solver = write_solver(folder, 'type: "Adam"\nsnapshot_after_train: true\n')
        assert main(["train", "--solver", solver]) == 0
        outputs.append([(folder / "snap" / ("two_iter_6." + kind)).read_bytes() for kind in ("caffemodel",
                                                                                          "solverstate")])
    assert outputs[0][0] == outputs[1][0]
    # the state differs only in the learned_net path it names
    assert outputs[0][1].replace(b"/a/", b"/b/") == outputs[1][1]


# --- 3. divergence ---------------------------------------------------------------------------------------------

DIVERGING = 'base_lr: 1e6\nmax_iter: 20\nsnapshot: 1\nsnapshot_after_train: true\n'


def test_divergence_stops_naming_iteration_and_layer(tmp_path, capsys):
    assert main(["train", "--solver", write_solver(tmp_path, DIVERGING)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = [x for x in err.splitlines() if x.startswith("pcn: error: ")][0]
    m = re.search(r"training diverged at iteration (\d+): the loss is (\S+) and the first non-finite value is in "
                  r"(.*?); ", line)
    assert m, line
    it = int(m.group(1))
    assert 0 < it < 20 and "layer '" in m.group(3) and "--allow_nan" in line
    # every snapshot written holds finite weights; none was written at or after the diverged iteration
    snaps = sorted((tmp_path / "snap").glob("two_iter_*.caffemodel"))
    assert snaps and len(snaps) == it
    for path in snaps:
        net = caffe.Net(str(tmp_path / "net.prototxt"), str(path), caffe.TEST)
        assert all(np.isfinite(b.data).all() for blobs in net.params.values() for b in blobs)


def test_allow_nan_trains_on_as_caffe(tmp_path, capsys):
    assert main(["train", "--solver", write_solver(tmp_path, DIVERGING), "--allow_nan"]) == 0
    err = capsys.readouterr().err
    assert "Iteration 19, loss = nan" in err and "Optimization Done." in err
    assert (tmp_path / "snap" / "two_iter_20.caffemodel").exists()


def test_allow_nan_never_overwrites_a_snapshot_with_non_finite_weights(tmp_path, caplog):
    solver = caffe.get_solver(write_solver(tmp_path, "max_iter: 4\n"))
    solver.step(2)
    good = solver.snapshot()
    saved = (tmp_path / "snap" / "two_iter_2.caffemodel").read_bytes()
    solver.net.params["ip1"][0].data[0, 0] = np.nan
    assert solver.snapshot() == good
    assert (tmp_path / "snap" / "two_iter_2.caffemodel").read_bytes() == saved
    assert "Not snapshotting: the weights are not finite" in caplog.text


def test_divergence_through_the_api(tmp_path):
    solver = caffe.get_solver(write_solver(tmp_path, DIVERGING))
    with pytest.raises(DivergenceError, match="iteration"):
        solver.step(20)
    solver.allow_nan = True
    solver.step(2)


def test_an_update_that_overflows_names_the_parameter(tmp_path):
    solver = caffe.get_solver(write_solver(tmp_path, "max_iter: 1\nmomentum: 0.9\n"))
    solver.net.layers[1].blobs[1].data[...] = np.inf   # what an overflowing update leaves
    message = solver._divergence_message(1.5, in_update=True)
    assert re.search(r"iteration 0: the loss is 1.5 and the first non-finite value is in parameter 1 of layer 'ip1' "
                     r"\(InnerProduct\), made so by the update \(learning rate 0.1, momentum 0.9", message), message


def test_non_finite_gradient_is_named_when_outputs_are_finite(tmp_path):
    solver = caffe.get_solver(write_solver(tmp_path, "max_iter: 1\n"))
    solver.net.layers[2].blobs[0].diff[...] = np.nan   # what a broken backward would leave
    message = solver._divergence_message(float("nan"))
    assert "the gradient of parameter 0 of layer 'ip2' (InnerProduct)" in message


# --- 4. one-line errors instead of tracebacks ------------------------------------------------------------------

def test_shapes_too_large_for_memory_are_refused_with_the_estimate(tmp_path, capsys):
    model = tmp_path / "huge.prototxt"
    model.write_text(NET.replace("dim: 8 dim: 5", "dim: 800000 dim: 50000"))   # 2 x 149 GiB
    assert main(["time", "--model", str(model), "--iterations", "1"]) == 2
    line = error_line(capsys)
    assert re.search(r"layer 'data' \(DummyData\): with a blob of shape \(800000, 50000\) the net needs at least "
                     r"298\.0 GiB .* of memory free", line), line


def test_memory_estimate_counts_the_whole_net(tmp_path, monkeypatch):
    # every blob fits alone (at most 800 bytes); together they need 31 KB
    from pycaffe_norm import blob

    monkeypatch.setattr(blob, "available_memory", lambda: 16 << 10)
    layers = "".join('layer { name: "ip%d" type: "InnerProduct" bottom: "x%d" top: "x%d" '
                     'inner_product_param { num_output: 10 } }\n' % (i, i, i + 1) for i in range(20))
    model = tmp_path / "deep.prototxt"
    model.write_text('layer { name: "in" type: "Input" top: "x0" input_param { shape { dim: 8 dim: 10 } } }\n'
                     + layers)
    with pytest.raises(blob.MemoryLimitError, match=r"layer 'ip\d+' \(InnerProduct\): .*16\.0 KiB of memory free"):
        caffe.Net(str(model), caffe.TEST)


def test_dev_zero_as_model(capsys):
    assert main(["time", "--model", "/dev/zero", "--iterations", "1"]) == 2
    assert "not a regular file: /dev/zero" in error_line(capsys)


def test_dev_zero_through_the_api():
    with pytest.raises(PcnError, match="not a regular file"):
        caffe.Net("/dev/zero", caffe.TEST)


def test_test_iter_zero(tmp_path, capsys):
    solver = write_solver(tmp_path, "test_iter: 0\ntest_interval: 2\n")
    assert main(["train", "--solver", solver]) == 2
    assert "test_iter must be > 0" in error_line(capsys)


def test_sigmoid_policy_overflow_gives_caffes_rate(tmp_path):
    solver = caffe.get_solver(write_solver(tmp_path, 'lr_policy: "sigmoid"\ngamma: -1000\nstepsize: 1\n'))
    assert solver.learning_rate(10)[0] == 0.0   # C's exp overflows to inf: 1 / (1 + inf) = 0
    assert solver.learning_rate(0)[0] == pytest.approx(0.1)
    solver.step(2)


@pytest.mark.parametrize("extra", ['lr_policy: "inv"\ngamma: -0.5\npower: 0.75\n',
                                   'lr_policy: "exp"\ngamma: 1e30\n',
                                   'lr_policy: "step"\ngamma: 1e30\nstepsize: 1\n'])
def test_lr_policy_without_a_finite_rate_fails_before_iteration_0(tmp_path, capsys, extra):
    assert main(["train", "--solver", write_solver(tmp_path, extra)]) == 2
    err = capsys.readouterr().err
    assert "Iteration 0" not in err
    line = error_line_of(err)
    assert re.search(r"lr_policy '(inv|exp|step)' gives the learning rate \S+ at iteration \d+", line), line


def error_line_of(err: str) -> str:
    assert "Traceback" not in err
    lines = [x for x in err.splitlines() if x.startswith("pcn: error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("damage", ["missing iter", "truncate", "history of strings"])
def test_damaged_hdf5_solverstate(tmp_path, capsys, damage):
    solver = write_solver(tmp_path, "snapshot: 3\nsnapshot_format: HDF5\n")
    assert main(["train", "--solver", solver]) == 0
    capsys.readouterr()
    state = tmp_path / "snap" / "two_iter_3.solverstate.h5"
    if damage == "truncate":
        raw = state.read_bytes()
        state.write_bytes(raw[:len(raw) // 3])
    else:
        with h5py.File(state, "a") as f:
            if damage == "missing iter":
                del f["iter"]
            else:
                del f["history"]["0"]
                f["history"].create_dataset("0", data="abc")
    assert main(["train", "--solver", solver, "--snapshot", str(state)]) == 2
    assert "two_iter_3.solverstate.h5" in error_line(capsys)


@pytest.mark.parametrize("damage", ["learned_net not UTF-8", "negative iter"])
def test_damaged_binary_solverstate(tmp_path, capsys, damage):
    solver = write_solver(tmp_path, "snapshot: 3\n")
    assert main(["train", "--solver", solver]) == 0
    capsys.readouterr()
    state = tmp_path / "snap" / "two_iter_3.solverstate"
    msg = caffe_pb2.SolverState()
    msg.ParseFromString(state.read_bytes())
    if damage == "negative iter":
        msg.iter = -7
        raw = msg.SerializeToString()
    else:
        msg.learned_net = "X" + msg.learned_net[1:]
        raw = msg.SerializeToString().replace(b"X", b"\xff", 1)
    state.write_bytes(raw)
    assert main(["train", "--solver", solver, "--snapshot", str(state)]) == 2
    line = error_line(capsys)
    assert "two_iter_3.solverstate" in line and ("not UTF-8" in line or "cannot be negative" in line)


def test_binaryproto_whose_values_do_not_fill_its_shape_names_the_file(tmp_path):
    blob = caffe.io.array_to_blobproto(np.zeros((1, 3, 4, 4), np.float32))
    blob.shape.dim[3] = 5   # a flipped bit in a dimension
    path = tmp_path / "mean.binaryproto"
    path.write_bytes(blob.SerializeToString())
    with pytest.raises(PcnError, match=r"mean\.binaryproto: BlobProto holds 48 values but its shape"):
        caffe.io.load_binaryproto(str(path))


# --- 6. non-UTF-8 bytes in a prototxt --------------------------------------------------------------------------

def test_non_utf8_byte_in_a_comment_is_read(tmp_path, capsys):
    model = tmp_path / "latin1.prototxt"
    model.write_bytes(("# r\xe9seau de d\xe9monstration (Latin-1)\n" + NET.replace(
        'name: "ip1" type', 'name: "ip1"  # \xe9tape 1\n type')).encode("latin-1"))
    net = caffe.Net(str(model), caffe.TEST)
    assert list(net.params) == ["ip1", "ip2"]
    assert main(["time", "--model", str(model), "--iterations", "1"]) == 0


def test_hash_inside_a_string_is_not_a_comment(tmp_path):
    model = tmp_path / "m.prototxt"
    model.write_bytes(NET.replace('name: "two"', 'name: "two # \xe9"').encode("latin-1"))
    with pytest.raises(PrototxtError, match=r"m\.prototxt:1:\d+: byte 0xe9 is not UTF-8"):
        caffe.Net(str(model), caffe.TEST)


def test_non_utf8_byte_outside_comments_names_byte_and_position(tmp_path, capsys):
    model = tmp_path / "m.prototxt"
    model.write_bytes(NET.replace('name: "ip2"', 'name: "ip\xff"').encode("latin-1"))
    assert main(["time", "--model", str(model)]) == 2
    line = error_line(capsys)
    assert re.search(r"m\.prototxt:7:18: byte 0xff is not UTF-8", line), line


def test_binary_file_as_prototxt_keeps_its_hint(two, capsys):
    _, weights, _ = two
    assert main(["time", "--model", weights]) == 2
    assert "binary .caffemodel" in error_line(capsys)


# --- 5. python -m pycaffe_norm and the working directory -------------------------------------------------------

LAYER = """import pycaffe_norm as caffe


class Double(caffe.Layer):
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = 2 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = 2 * top[0].diff
"""


def test_python_m_does_not_let_the_working_directory_shadow_a_layer_module(tmp_path):
    real, cwd = tmp_path / "real", tmp_path / "cwd"
    real.mkdir()
    cwd.mkdir()
    (real / "my_layers.py").write_text(LAYER)
    (cwd / "my_layers.py").write_text("raise SystemExit('the working directory shadowed my_layers')\n")
    model = real / "net.prototxt"
    model.write_text(NET.replace('layer { name: "loss"', 'layer { name: "double" type: "Python" bottom: "ip2" '
                                 'top: "d" python_param { module: "my_layers" layer: "Double" } }\n'
                                 'layer { name: "loss"').replace('bottom: "ip2" bottom: "label"',
                                                                 'bottom: "d" bottom: "label"'))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(real), str(ROOT)]))
    run = subprocess.run([sys.executable, "-m", "pycaffe_norm", "time", "--model", str(model), "--iterations", "1"],
                         cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "shadowed" not in run.stderr and "double\tforward" in run.stderr


# --- 4. a truncated LMDB is refused before it is mapped --------------------------------------------------------

def lmdb_net(tmp_path, damage):
    from tests.support import write_lmdb

    datums = [caffe.io.array_to_datum(np.full((1, 16, 16), i % 256, np.uint8), label=i % 3) for i in range(600)]
    db = write_lmdb(tmp_path / "db", datums)
    data_file = pathlib.Path(db) / "data.mdb"
    raw = data_file.read_bytes()
    if damage == "truncate":
        data_file.write_bytes(raw[:len(raw) // 2])
    elif damage == "header":
        data_file.write_bytes(b"\0" * 64 + raw[64:])
    model = tmp_path / "lmdb.prototxt"
    model.write_text('layer { name: "data" type: "Data" top: "data" top: "label" data_param { source: "%s" '
                     'batch_size: 4 backend: LMDB } }\n' % db)
    return model


@pytest.mark.parametrize("damage", ["truncate", "header"])
def test_damaged_lmdb_gives_one_line_not_sigbus(tmp_path, damage):
    model = lmdb_net(tmp_path, damage)
    run = subprocess.run([sys.executable, "-m", "pycaffe_norm", "time", "--model", str(model), "--iterations", "50"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert run.returncode == 2, run.stderr   # SIGBUS would be -7
    line = error_line_of(run.stderr)
    assert "data.mdb" in line and ("truncated" if damage == "truncate" else "not an LMDB data file") in line


def test_intact_lmdb_still_reads(tmp_path):
    net = caffe.Net(str(lmdb_net(tmp_path, None)), caffe.TEST)
    net.forward()
    assert net.blobs["data"].data.shape == (4, 1, 16, 16)


def test_damaged_hdf5_data_file_names_layer_and_file(tmp_path, capsys, monkeypatch):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        f["data"] = np.zeros((8, 5), np.float32)
        f["label"] = np.zeros(8, np.float32)
    (tmp_path / "list.txt").write_text("bad.h5\n")
    model = tmp_path / "h5.prototxt"
    model.write_text(NET.replace(NET[NET.index("layer {"):NET.index('layer { name: "ip1"')],
                                 'layer { name: "data" type: "HDF5Data" top: "data" top: "label" '
                                 'hdf5_data_param { source: "%s" batch_size: 4 } }\n' % (tmp_path / "list.txt")))

    def corrupt(self, name, default=None):   # what h5py raises for a flipped bit in a group's B-tree
        raise RuntimeError("Unable to get group info (bad symbol table node signature)")

    monkeypatch.setattr(h5py.File, "get", corrupt)
    assert main(["time", "--model", str(model), "--iterations", "1"]) == 2
    line = error_line(capsys)
    assert "layer 'data' (HDF5Data): cannot read HDF5 file" in line and "bad.h5" in line
    assert "bad symbol table node signature" in line
