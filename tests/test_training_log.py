"""pcn parse-log and pcn plot (pycaffe_norm.training_log), and pcn draw: on a log pcn writes while training and on a
Caffe-style log whose rows are known."""
from __future__ import annotations

import builtins
import os

import pytest

from pycaffe_norm.cli import main
from pycaffe_norm.errors import PcnError
from pycaffe_norm.training_log import csv_text, parse_log, plot_logs
from tests.test_cli import TINY, messages

# A Caffe log as glog writes it (times made up): a test at iteration 0 and 20, training output every 10.
CAFFE_LOG = """\
I0105 10:00:00.000000  4242 caffe.cpp:218] Starting Optimization
I0105 10:00:01.000000  4242 solver.cpp:280] Solving LeNet
I0105 10:00:01.500000  4242 solver.cpp:347] Iteration 0, Testing net (#0)
I0105 10:00:02.000000  4242 solver.cpp:414]     Test net output #0: accuracy = 0.1
I0105 10:00:02.000000  4242 solver.cpp:414]     Test net output #1: loss = 2.3 (* 1 = 2.3 loss)
I0105 10:00:02.250000  4242 solver.cpp:219] Iteration 0 (-1.4e-05 iter/s, 1.2s/10 iters), loss = 2.31
I0105 10:00:02.250000  4242 solver.cpp:238]     Train net output #0: loss = 2.31 (* 1 = 2.31 loss)
I0105 10:00:02.250000  4242 sgd_solver.cpp:105] Iteration 0, lr = 0.01
I0105 10:00:03.500000  4242 solver.cpp:219] Iteration 10 (8 iter/s, 1.25s/10 iters), loss = 1.5
I0105 10:00:03.500000  4242 solver.cpp:238]     Train net output #0: loss = 1.5 (* 1 = 1.5 loss)
I0105 10:00:03.500000  4242 sgd_solver.cpp:105] Iteration 10, lr = 0.009
W0105 10:00:04.000000  4242 solver.cpp:99] a line that is not an output
I0105 10:00:05.000000  4242 solver.cpp:347] Iteration 20, Testing net (#0)
I0105 10:00:05.500000  4242 solver.cpp:414]     Test net output #0: accuracy = 0.8
I0105 10:00:05.500000  4242 solver.cpp:414]     Test net output #1: loss = 0.6 (* 1 = 0.6 loss)
I0105 10:00:06.000000  4242 solver.cpp:219] Iteration 20 (8 iter/s, 1.25s/10 iters), loss = 0.7
I0105 10:00:06.000000  4242 solver.cpp:238]     Train net output #0: loss = 0.7 (* 1 = 0.7 loss)
I0105 10:00:06.000000  4242 sgd_solver.cpp:105] Iteration 20, lr = 0.008
"""


@pytest.fixture
def caffe_log(tmp_path):
    path = tmp_path / "caffe.INFO"
    path.write_text(CAFFE_LOG)
    return str(path)


def test_caffe_log_rows(caffe_log):
    train, test = parse_log(caffe_log)
    # Each row carries the last lr printed before its outputs; the first row takes the second row's.
    assert train == [{"NumIters": 0.0, "Seconds": 1.25, "LearningRate": 0.01, "loss": 2.31},
                     {"NumIters": 10.0, "Seconds": 2.5, "LearningRate": 0.01, "loss": 1.5},
                     {"NumIters": 20.0, "Seconds": 5.0, "LearningRate": 0.009, "loss": 0.7}]
    assert test == [{"NumIters": 0.0, "Seconds": 1.0, "LearningRate": 0.009, "accuracy": 0.1, "loss": 2.3},
                    {"NumIters": 20.0, "Seconds": 4.5, "LearningRate": 0.009, "accuracy": 0.8, "loss": 0.6}]
    assert csv_text(test) == ("NumIters,Seconds,LearningRate,accuracy,loss\r\n0.0,1.0,0.009,0.1,2.3\r\n"
                              "20.0,4.5,0.009,0.8,0.6\r\n")


def test_parse_log_command_writes_caffes_two_files(caffe_log, tmp_path, capsys):
    out = tmp_path / "csv"
    out.mkdir()
    assert main(["parse-log", caffe_log, str(out), "--delimiter", ";"]) == 0
    assert sorted(os.listdir(out)) == ["caffe.INFO.test", "caffe.INFO.train"]
    assert (out / "caffe.INFO.train").read_text().splitlines()[1] == "0.0;1.25;0.01;2.31"
    assert main(["parse-log", caffe_log, str(tmp_path / "missing")]) == 2
    assert "output folder not found" in capsys.readouterr().err


def test_a_file_that_is_not_a_training_log(tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("hello\n")
    with pytest.raises(PcnError, match="not a pcn or Caffe training log"):
        parse_log(str(path))
    assert main(["parse-log", str(path), str(tmp_path)]) == 2
    assert "pcn: error:" in capsys.readouterr().err


def test_pcn_training_log_round_trip(tmp_path, capsys):
    (tmp_path / "net.prototxt").write_text(TINY % 3)
    solver = tmp_path / "solver.prototxt"
    solver.write_text('net: "%s"\ntest_net: "%s"\ntest_iter: 1\ntest_interval: 2\nbase_lr: 0.1\nlr_policy: "step"\n'
                      'stepsize: 2\ngamma: 0.5\nmax_iter: 4\ndisplay: 1\nsnapshot_after_train: false\n'
                      % (tmp_path / "net.prototxt", tmp_path / "net.prototxt"))
    assert main(["train", "--solver", str(solver)]) == 0
    err = capsys.readouterr().err
    log = tmp_path / "train.log"
    log.write_text(err)
    train, test = parse_log(str(log))
    shown = [float(m.split(" = ")[1].split()[0]) for m in messages(err) if m.startswith("    Train net output #1")]
    assert [r["NumIters"] for r in train] == [0, 1, 2, 3] and [r["loss"] for r in train] == shown
    assert [r["NumIters"] for r in test] == [0, 2, 4] and all(0 <= r["accuracy"] <= 1 for r in test)
    assert [r["LearningRate"] for r in train] == [0.1, 0.1, 0.1, 0.05]
    assert all(b["Seconds"] >= a["Seconds"] >= 0 for a, b in zip(train, train[1:]))


def test_plot_command(caffe_log, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    out = tmp_path / "curves.png"
    assert main(["plot", caffe_log, caffe_log, "-o", str(out), "--x", "seconds"]) == 0
    height, width = imread(str(out)).shape[:2]
    assert height > width  # three charts stacked
    assert main(["plot", caffe_log, "-o", str(tmp_path / "loss.svg"), "--charts", "loss"]) == 0
    assert "<svg" in (tmp_path / "loss.svg").read_text()
    assert main(["plot", caffe_log, "-o", str(tmp_path / "x.png"), "--charts", "speed"]) == 2
    assert "--charts" in capsys.readouterr().err
    assert main(["plot", caffe_log, "-o", str(tmp_path / "x.gif")]) == 2
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "x.gif").exists()


def test_plot_needs_matplotlib(caffe_log, tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(PcnError, match=r"pycaffe_norm\[plot\]"):
        plot_logs([caffe_log], str(tmp_path / "x.png"))


def test_draw_command(tmp_path, capsys):
    lenet = os.path.join(os.path.dirname(__file__), "..", "models", "lenet", "lenet_train_test.prototxt")
    assert main(["draw", lenet, str(tmp_path / "net.dot"), "--phase", "test", "--rankdir", "TB"]) == 0
    dot = (tmp_path / "net.dot").read_text()
    assert "accuracy_Accuracy" in dot and "rankdir=TB" in dot.replace('"', "")
    assert main(["draw", lenet, str(tmp_path / "net.dot"), "--phase", "TRAIN"]) == 0
    assert "accuracy_Accuracy" not in (tmp_path / "net.dot").read_text()
    assert main(["draw", str(tmp_path / "missing.prototxt"), str(tmp_path / "n.dot")]) == 2
    assert "missing.prototxt" in capsys.readouterr().err


def test_plot_finds_every_loss_of_a_net_with_several(tmp_path):
    pytest.importorskip("matplotlib")
    log = CAFFE_LOG.replace("Train net output #0: loss =", "Train net output #0: loss1/loss1 =")
    log = log.replace("Test net output #1: loss =", "Test net output #1: loss3/loss3 =")
    path = tmp_path / "googlenet.log"
    path.write_text(log)
    from pycaffe_norm import training_log

    train, test = training_log.parse_log(str(path))
    assert training_log._columns(train, "loss") == ["loss1/loss1"]
    assert training_log._columns(test, "loss") == ["loss3/loss3"]
    assert training_log._columns(test, "accuracy") == ["accuracy"]
    assert training_log._columns(train, "LearningRate") == ["LearningRate"]
    plot_logs([str(path)], str(tmp_path / "g.png"), charts=["loss"])
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
