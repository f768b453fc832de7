"""The pcn command line: train (with resume and fine-tuning), test and time output in Caffe's formats, and
one-line errors with exit status 2."""
from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

import pycaffe_norm as caffe
from pycaffe_norm import backend
from pycaffe_norm.cli import main

ROOT = pathlib.Path(__file__).resolve().parent.parent
GLOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ \S+:\d+\] ")

TINY = """name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 8 dim: 5 } shape { dim: 8 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: %d weight_filler { type: "gaussian" std: 1 } } }
layer { name: "accuracy" type: "Accuracy" bottom: "ip" bottom: "label" top: "accuracy" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


@pytest.fixture
def tiny(tmp_path):
    """A DummyData net and weights for it."""
    model = tmp_path / "tiny.prototxt"
    model.write_text(TINY % 3)
    caffe.set_random_seed(7)
    caffe.Net(str(model), caffe.TEST).save(str(tmp_path / "tiny.caffemodel"))
    return str(model), str(tmp_path / "tiny.caffemodel")


def messages(err: str):
    """Log messages without glog's prefix (every log line must carry it)."""
    out = []
    for line in err.splitlines():
        if line.startswith("pcn: "):
            continue
        assert GLOG.match(line), line
        out.append(GLOG.sub("", line))
    return out


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("pcn: error: ")]
    assert len(errors) == 1, err
    return errors[0]


# --- pcn test / pcn time ------------------------------------------------------------------------------------

def test_test_prints_batches_and_means(tiny, capsys):
    model, weights = tiny
    assert main(["test", "--model", model, "--weights", weights, "--iterations", "4"]) == 0
    msgs = messages(capsys.readouterr().err)
    assert "Running for 4 iterations." in msgs
    batches = [m for m in msgs if m.startswith("Batch ")]
    assert len(batches) == 8
    assert batches[0].startswith("Batch 0, accuracy = ") and batches[1].startswith("Batch 0, loss")
    acc = [float(m.split(" = ")[1]) for m in batches if ", accuracy = " in m]
    loss = [float(m.split(" = ")[1]) for m in batches if ", loss = " in m]
    assert len(set(loss)) > 1  # DummyData's gaussian filler draws new data every batch
    mean_acc = [m for m in msgs if m.startswith("accuracy = ")]
    mean_loss = [m for m in msgs if m.startswith("loss = ")]
    assert len(mean_acc) == len(mean_loss) == 1
    assert float(mean_acc[0].split(" = ")[1]) == pytest.approx(np.mean(acc), rel=1e-5)
    m = re.fullmatch(r"loss = (\S+) \(\* 1 = (\S+) loss\)", mean_loss[0])
    assert m and float(m.group(1)) == pytest.approx(np.mean(loss), rel=1e-5) and m.group(1) == m.group(2)
    assert [x for x in msgs if x.startswith("Loss: ")] == ["Loss: " + m.group(1)]


def test_test_comma_separated_weights(tiny, capsys):
    model, weights = tiny
    assert main(["test", "--model", model, "--weights", weights + "," + weights, "--iterations", "1"]) == 0
    assert sum(m.startswith("Finetuning from") for m in messages(capsys.readouterr().err)) == 2


def test_time_prints_caffe_layer_table(tiny, capsys):
    model, _ = tiny
    assert main(["time", "--model", model, "--iterations", "3"]) == 0
    msgs = messages(capsys.readouterr().err)
    assert "*** Benchmark begins ***" in msgs and "*** Benchmark ends ***" in msgs
    assert sum(bool(re.fullmatch(r"Iteration: \d forward-backward time: \S+ ms\.", m)) for m in msgs) == 3
    for layer in ("data", "ip", "accuracy", "loss"):
        assert any(re.fullmatch(r" *%s\tforward: \S+ ms\." % layer, m) for m in msgs), layer
        assert any(re.fullmatch(r" *%s\tbackward: \S+ ms\." % layer, m) for m in msgs), layer
    for what in ("Average Forward pass", "Average Backward pass", "Average Forward-Backward", "Total Time"):
        assert any(re.fullmatch(r"%s: [\d.e+-]+ ms\." % what, m) for m in msgs), what


STAGED = TINY % 3 + """
layer { name: "acc_stage" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc_stage" include { stage: "s" } }
layer { name: "acc_level" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc_level" include { min_level: 2 } }
layer { name: "acc_train" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc_train" include { phase: TRAIN } }
"""


@pytest.mark.parametrize("extra, outputs", [
    ([], {"accuracy", "loss"}),
    (["--stage", "x,s"], {"accuracy", "loss", "acc_stage"}),
    (["--level", "2"], {"accuracy", "loss", "acc_level"}),
    (["--phase", "TRAIN", "--level", "3", "--stage", "s"], {"accuracy", "loss", "acc_stage", "acc_level",
                                                           "acc_train"}),
])
def test_test_and_time_take_phase_level_and_stage(tiny, tmp_path, capsys, extra, outputs):
    _, weights = tiny
    model = tmp_path / "staged.prototxt"
    model.write_text(STAGED)
    assert main(["test", "--model", str(model), "--weights", weights, "--iterations", "1"] + extra) == 0
    means = {m.split(" = ")[0] for m in messages(capsys.readouterr().err) if re.fullmatch(r"\w+ = .*", m)}
    assert means == outputs
    assert main(["time", "--model", str(model), "--iterations", "1"] + extra) == 0
    timed = {m.split("\t")[0].strip() for m in messages(capsys.readouterr().err) if "\tforward: " in m}
    assert outputs <= timed


@pytest.mark.parametrize("extra, outputs", [([], ["acc_train", "accuracy", "loss"]),
                                            (["--stage", "s", "--level", "2"],
                                             ["acc_level", "acc_stage", "acc_train", "accuracy", "loss"])])
def test_train_level_and_stage_shape_the_training_net(tmp_path, capsys, extra, outputs):
    (tmp_path / "staged.prototxt").write_text(STAGED)
    solver = tmp_path / "solver.prototxt"
    solver.write_text('net: "%s"\nbase_lr: 0.1\nlr_policy: "fixed"\nmax_iter: 1\ndisplay: 1\n'
                      'snapshot_after_train: false\n' % (tmp_path / "staged.prototxt"))
    assert main(["train", "--solver", str(solver)] + extra) == 0
    shown = [m.group(1) for m in map(re.compile(r" +Train net output #\d+: (\w+) = .*").fullmatch,
                                     messages(capsys.readouterr().err)) if m]
    assert shown == outputs


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == "pcn version %s" % caffe.__version__


# --- errors -------------------------------------------------------------------------------------------------

def test_error_missing_model(tmp_path, capsys):
    missing = str(tmp_path / "nope.prototxt")
    assert main(["test", "--model", missing, "--weights", "w.caffemodel"]) == 2
    assert missing in error_line(capsys)


def test_error_missing_weights(tiny, tmp_path, capsys):
    model, _ = tiny
    assert main(["test", "--model", model, "--weights", str(tmp_path / "gone.caffemodel")]) == 2
    assert "gone.caffemodel" in error_line(capsys)


def test_error_missing_solver(tmp_path, capsys):
    assert main(["train", "--solver", str(tmp_path / "s.prototxt")]) == 2
    assert "s.prototxt" in error_line(capsys)


def test_error_syntax_names_file_line_column(tmp_path, capsys):
    bad = tmp_path / "bad.prototxt"
    bad.write_text('name: "x"\nlayer {\n  name: "a"\n  type "Input"\n}\n')
    assert main(["time", "--model", str(bad)]) == 2
    assert re.search(r"bad\.prototxt:4:\d+", error_line(capsys))


def test_error_unknown_field(tmp_path, capsys):
    bad = tmp_path / "bad.prototxt"
    bad.write_text('layer { name: "a" type: "Input" top: "x" frobnication_param { } }\n')
    assert main(["time", "--model", str(bad)]) == 2
    line = error_line(capsys)
    assert "frobnication_param" in line and "fork" in line and "did you mean" not in line
    bad.write_text('layer { name: "a" type: "Input" top: "x" input_param { shape { dim: 1 } } }\n'
                   'layer { name: "b" type: "Convolution" botom: "x" top: "y" }\n')
    assert main(["time", "--model", str(bad)]) == 2
    line = error_line(capsys)
    assert "bad.prototxt:2:" in line and "botom" in line and "(did you mean 'bottom'?)" in line and "fork" not in line
    bad.write_text('layer { name: "b" type: "Convolution" convolution_param { num_outptu: 3 } }\n')
    assert main(["time", "--model", str(bad)]) == 2
    assert "(did you mean 'num_output'?)" in error_line(capsys)


def test_error_stray_closing_brace_at_its_own_line(tmp_path, capsys):
    bad = tmp_path / "bad.prototxt"
    bad.write_text('name: "x"\nlayer { name: "a" type: "Input" top: "d" input_param { shape { dim: 1 } } }\n}\n'
                   'layer { name: "b" type: "ReLU" bottom: "d" top: "e" }\n')
    assert main(["time", "--model", str(bad)]) == 2
    line = error_line(capsys)
    assert "bad.prototxt:3:1: a '}' that closes no open block" in line and "field" not in line


def test_error_unknown_layer_type(tmp_path, capsys):
    bad = tmp_path / "bad.prototxt"
    bad.write_text('layer { name: "mystery" type: "Frobnicate" top: "x" }\n')
    assert main(["time", "--model", str(bad)]) == 2
    line = error_line(capsys)
    assert "Frobnicate" in line and "mystery" in line and "did you mean" not in line
    assert "InnerProduct" not in line  # not the list of every type
    bad.write_text('layer { name: "conv" type: "Convolutoin" top: "x" }\n')
    assert main(["time", "--model", str(bad)]) == 2
    assert "unknown layer type 'Convolutoin' (did you mean 'Convolution'?)" in error_line(capsys)


def test_error_shape_mismatch_names_layer_and_shapes(tiny, tmp_path, capsys):
    _, weights = tiny
    other = tmp_path / "wide.prototxt"
    other.write_text(TINY % 4)
    assert main(["test", "--model", str(other), "--weights", weights, "--iterations", "1"]) == 2
    line = error_line(capsys)
    assert "'ip'" in line and "(4, 5)" in line and "(3, 5)" in line


def test_error_hdf5_source_missing(tmp_path, capsys):
    bad = tmp_path / "net.prototxt"
    bad.write_text('layer { name: "d" type: "HDF5Data" top: "data" '
                   'hdf5_data_param { source: "no/such/list.txt" batch_size: 2 } }\n')
    assert main(["time", "--model", str(bad)]) == 2
    assert "no/such/list.txt" in error_line(capsys)


def test_error_weights_and_snapshot_together(tmp_path, capsys):
    solver = tmp_path / "s.prototxt"
    solver.write_text('net: "n.prototxt"\n')
    assert main(["train", "--solver", str(solver), "--weights", "a", "--snapshot", "b"]) == 2
    assert "not both" in error_line(capsys)


@pytest.mark.parametrize("argv", [["train"], ["frobnicate"], [], ["test", "--model", "m"]])
def test_usage_errors_exit_2(argv, capsys):
    assert main(argv) == 2
    assert "pcn: error:" in capsys.readouterr().err


@pytest.mark.parametrize("extra, match", [(["--phase", "VAL"], "--phase"), (["--iterations", "0"], "--iterations")])
def test_error_bad_options(tiny, capsys, extra, match):
    model, weights = tiny
    assert main(["test", "--model", model, "--weights", weights] + extra) == 2
    assert match in error_line(capsys)


@pytest.mark.skipif(backend.cupy_available(), reason="a GPU is present")
def test_error_gpu_without_cupy(tiny, capsys):
    model, weights = tiny
    assert main(["test", "--model", model, "--weights", weights, "--gpu", "0"]) == 2
    assert "CUDA" in error_line(capsys)


def test_subprocess_error_has_no_traceback(tmp_path):
    bad = tmp_path / "bad.prototxt"
    bad.write_text("layer { name: \n")
    out = subprocess.run([sys.executable, "-m", "pycaffe_norm", "test", "--model", str(bad), "--weights", "w"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("pcn: error: %s:" % bad)


# --- pcn train ----------------------------------------------------------------------------------------------

def lenet_solver(tmp_path, max_iter=50, extra=""):
    """LeNet on the bundled data, with absolute paths so the test runs from any directory."""
    net = (ROOT / "models" / "lenet" / "lenet_train_test.prototxt").read_text()
    net = net.replace('source: "data/mnist/', 'source: "%s/' % (ROOT / "data" / "mnist"))
    (tmp_path / "net.prototxt").write_text(net)
    solver = tmp_path / ("solver_%d.prototxt" % max_iter)
    solver.write_text("""net: "%s"
test_iter: 2
test_interval: 25
base_lr: 0.01
momentum: 0.9
weight_decay: 0.0005
lr_policy: "inv"
gamma: 0.0001
power: 0.75
display: 5
max_iter: %d
snapshot: 25
snapshot_prefix: "%s"
solver_mode: CPU
random_seed: 1701
%s""" % (tmp_path / "net.prototxt", max_iter, tmp_path / "out" / "lenet", extra))
    return str(solver)


def test_train_lenet_loss_falls_and_resume_matches(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    solver = lenet_solver(tmp_path)
    assert main(["train", "--solver", solver]) == 0
    msgs = messages(capsys.readouterr().err)
    losses = [float(m.group(1)) for m in map(re.compile(r"Iteration \d+, loss = (\S+)").fullmatch, msgs) if m]
    assert len(losses) >= 10
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:2]), losses
    assert any(re.fullmatch(r"    Train net output #0: loss = \S+ \(\* 1 = \S+ loss\)", m) for m in msgs)
    assert any(re.fullmatch(r"Iteration \d+, lr = \S+", m) for m in msgs)
    assert any(re.fullmatch(r"Iteration 50, Testing net \(#0\)", m) for m in msgs)
    acc = [float(m.split(" = ")[1]) for m in msgs if m.startswith("    Test net output #0: accuracy = ")]
    assert acc and acc[-1] > 0.5
    final = tmp_path / "out" / "lenet_iter_50.caffemodel"
    assert (tmp_path / "out" / "lenet_iter_25.solverstate").is_file() and final.is_file()
    uninterrupted = final.read_bytes()
    final.unlink()

    # Resuming at iteration 25 (with shuffled training data) ends with the same weights as the uninterrupted run.
    state = str(tmp_path / "out" / "lenet_iter_25.solverstate")
    assert main(["train", "--solver", solver, "--snapshot", state]) == 0
    assert "Resuming from %s" % state in messages(capsys.readouterr().err)
    net = caffe.Net(str(ROOT / "models" / "lenet" / "lenet_deploy.prototxt"), str(final), caffe.TEST)
    (tmp_path / "u.caffemodel").write_bytes(uninterrupted)
    ref = caffe.Net(str(ROOT / "models" / "lenet" / "lenet_deploy.prototxt"), str(tmp_path / "u.caffemodel"),
                    caffe.TEST)
    for name, blobs in ref.params.items():
        for a, b in zip(blobs, net.params[name]):
            np.testing.assert_array_equal(a.data, b.data)

    # Fine-tuning from the trained weights starts from them: the first displayed loss is already low.
    tune = lenet_solver(tmp_path, max_iter=1, extra="snapshot_after_train: false\n")
    assert main(["train", "--solver", tune, "--weights", str(final)]) == 0
    msgs = messages(capsys.readouterr().err)
    assert "Finetuning from %s" % final in msgs
    first = [float(m.split(" = ")[1]) for m in msgs if re.fullmatch(r"Iteration 0, loss = \S+", m)]
    assert first and first[0] < losses[0] * 0.6


SIGNAL_LAYER = '''
import os
import signal

import pycaffe_norm as caffe


class SignalAt(caffe.Layer):
    """Passes its bottom through and sends this process a signal at the forward pass named in param_str."""

    def setup(self, bottom, top):
        name, at = self.param_str.split()
        self.signum, self.at, self.calls = getattr(signal, name), int(at), 0

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)

    def forward(self, bottom, top):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), self.signum)
        top[0].data[...] = bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = top[0].diff
'''


def _signal_solver(tmp_path, monkeypatch, signal_name: str, at: int) -> str:
    (tmp_path / "signal_layer_for_cli.py").write_text(SIGNAL_LAYER)
    monkeypatch.syspath_prepend(str(tmp_path))
    signal_layer = ('layer { name: "signal" type: "Python" bottom: "data" top: "signalled" python_param { '
                    'module: "signal_layer_for_cli" layer: "SignalAt" param_str: "%s %d" } }\n' % (signal_name, at))
    net = (TINY % 3).replace('layer { name: "ip"', signal_layer + 'layer { name: "ip"')
    net = net.replace('bottom: "data" top: "ip"', 'bottom: "signalled" top: "ip"')
    (tmp_path / "net.prototxt").write_text(net)
    solver = tmp_path / "solver.prototxt"
    solver.write_text('net: "%s"\nbase_lr: 0.01\nlr_policy: "fixed"\nmax_iter: 100\ndisplay: 0\n'
                      'solver_mode: CPU\nsnapshot_prefix: "%s"\n' % (tmp_path / "net.prototxt", tmp_path / "snap"))
    return str(solver)


def test_train_ctrl_c_stops_after_a_snapshot_like_caffe(tmp_path, monkeypatch, capsys):
    solver = _signal_solver(tmp_path, monkeypatch, "SIGINT", 5)
    assert main(["train", "--solver", solver]) == 0
    err = capsys.readouterr().err
    assert "Caught SIGINT: requesting stop" in err and "Optimization stopped early." in err
    # the signal came during iteration 4's forward pass: Caffe finishes that iteration, then snapshots
    assert [p.name for p in tmp_path.glob("snap_iter_*.caffemodel")] == ["snap_iter_5.caffemodel"]


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGHUP"), reason="no SIGHUP on this platform")
def test_train_sighup_snapshots_and_goes_on(tmp_path, monkeypatch, capsys):
    solver = _signal_solver(tmp_path, monkeypatch, "SIGHUP", 3)
    assert main(["train", "--solver", solver, "--sigint_effect", "none"]) == 0
    assert "Optimization Done." in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.glob("snap_iter_*.caffemodel")) == ["snap_iter_100.caffemodel",
                                                                            "snap_iter_3.caffemodel"]
