"""Every layer's generic (CuPy) path on the CPU, in GPU mode with a fake CuPy whose arrays refuse NumPy.

``tests/fake_cupy.py`` stands in for CuPy: blobs hold DeviceArrays, which raise on implicit conversion
(``np.asarray``), on NumPy functions and on mixing with NumPy arrays, as CuPy's arrays do. Each reference case of
``tests/reference`` (layers and whole nets forward and backward, the six solvers' trajectories) then runs in
"GPU" mode and must match the stored outputs, so a hidden ``np.`` call on blob data fails here, without a GPU.
"""
from __future__ import annotations

import numpy as np
import pytest

import pycaffe_norm as caffe
from pycaffe_norm import backend
from pycaffe_norm.blob import Blob
from pycaffe_norm.layers import cuda_kernels

from . import fake_cupy
from .reference_check import check, load, tol
from .test_reference import CASES, items, kind, run_case


@pytest.fixture
def fake_gpu(monkeypatch):
    fake = fake_cupy.module()
    monkeypatch.setattr(backend, "_cupy", fake)
    caffe.set_device(0)
    caffe.set_mode_gpu()
    caffe.set_random_seed(1701)
    yield fake
    caffe.set_mode_cpu()
    monkeypatch.setattr(backend, "_device", 0)


def host(a) -> np.ndarray:
    assert isinstance(a, fake_cupy.DeviceArray), type(a)
    return backend.to_numpy(a)


def test_fake_arrays_refuse_numpy(fake_gpu):
    a = fake_gpu.ones((2, 3), dtype=np.float32)
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(a)
    with pytest.raises(TypeError, match="numpy.concatenate"):
        np.concatenate([a, a])
    with pytest.raises(TypeError, match="NumPy array"):
        a + np.ones((2, 3), dtype=np.float32)
    with pytest.raises(AttributeError):
        fake_gpu.RawModule
    assert not cuda_kernels.enabled(fake_gpu)
    b = a * 2 + fake_gpu.asarray(np.arange(3, dtype=np.float32))
    assert isinstance(b, fake_cupy.DeviceArray) and float(b.sum()) == 18.0


def test_blobs_live_on_the_fake_device(fake_gpu):
    data = Blob((2, 3)).data
    assert isinstance(data, fake_cupy.DeviceArray)
    assert backend.array_module(data) is fake_gpu
    assert backend.is_gpu_array(data) and isinstance(backend.to_numpy(data), np.ndarray)


@pytest.mark.parametrize("d", [d for d in CASES if kind(d) != "solver"], ids=lambda d: d.name)
def test_reference_case_on_fake_device(d, fake_gpu):
    run_reference_case(d)


@pytest.mark.parametrize("d", [d for d in CASES if kind(d) == "solver"], ids=lambda d: d.name)
def test_solver_case_on_fake_device(d, tmp_path, fake_gpu):
    run_solver_case(d, tmp_path)


def run_reference_case(d) -> None:
    """A reference case in GPU mode (whatever device backend._cupy is), checked against its stored outputs."""
    run_case(d, host)


def run_solver_case(d, tmp_path) -> None:
    """A solver case in GPU mode: its losses and final parameters against the stored trajectory."""
    meta, A = load(d)
    sp = tmp_path / "solver.prototxt"
    sp.write_text('net: "%s"\nsnapshot_prefix: "%s"\n' % (d / "net.prototxt", tmp_path / "snap")
                  + (d / "solver.prototxt").read_text())
    solver = caffe.get_solver(str(sp))
    for k, layer, i in items(A, "param/"):
        solver.net.params[layer][i].data[...] = A[k]
    losses = []
    for it in range(meta["n_iter"]):
        for b in meta["inputs"]:
            solver.net.blobs[b].data[...] = A["in/%s/%d" % (b, it)]
        solver.step(1)
        losses.append(float(solver.net.blobs[meta["loss_blob"]].data))
    check(np.array(losses), A["loss/iter"], tol(meta, "loss/iter"), "loss/iter")
    for k, layer, i in items(A, "final/"):
        p = A["param/" + k.split("/", 1)[1]].astype(np.float64)
        got = host(solver.net.params[layer][i].data).astype(np.float64)
        check(got - p, A[k].astype(np.float64) - p, tol(meta, k), k)


# --- the device plumbing: set_mode_gpu, pcn device_query, --gpu, solver_mode: GPU, pcn time --gpu ------------
CONV_NET = """name: "conv"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 4 dim: 2 dim: 8 dim: 8 } shape { dim: 4 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "lrn" type: "LRN" bottom: "pool" top: "pool" }
layer { name: "drop" type: "Dropout" bottom: "pool" top: "pool" }
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def _solver(tmp_path, extra: str = "") -> str:
    (tmp_path / "net.prototxt").write_text(CONV_NET)
    path = tmp_path / "solver.prototxt"
    path.write_text('net: "%s"\nbase_lr: 0.01\nmomentum: 0.9\nlr_policy: "fixed"\nmax_iter: 3\ndisplay: 1\n'
                    'snapshot_prefix: "%s"\n%s' % (tmp_path / "net.prototxt", tmp_path / "snap", extra))
    return str(path)


def test_set_mode_gpu_keeps_cpu_when_the_device_is_refused(fake_gpu):
    caffe.set_mode_cpu()
    with pytest.raises(RuntimeError, match="device 3"):
        caffe.set_device(3)          # the fake has device 0 only
    backend._device = 3              # as if the device had gone away since
    with pytest.raises(RuntimeError, match="device 3"):
        caffe.set_mode_gpu()
    assert backend.mode() == "cpu"
    caffe.set_device(0)
    caffe.set_mode_gpu()
    assert backend.mode() == "gpu"
    with pytest.raises(RuntimeError, match="device 5"):
        caffe.set_device(5)
    assert backend.mode() == "gpu"


def test_device_query(fake_gpu, caplog):
    from pycaffe_norm.cli import main

    caplog.set_level("INFO", logger="pycaffe_norm")
    assert main(["device_query"]) == 0
    assert "Fake CuPy device" in caplog.text
    assert main(["device_query", "--gpu", "4"]) == 2
    assert main(["device_query", "--gpu", "x"]) == 2


def test_train_with_gpu_flag_runs_on_the_device(fake_gpu, tmp_path, caplog, monkeypatch):
    from pycaffe_norm import solvers
    from pycaffe_norm.cli import main

    seen = []
    original = solvers.SGDSolver.compute_update_value

    def spy(self, i, rate):
        seen.append(backend.array_module(self.net.learnable_params[i].diff))
        return original(self, i, rate)

    monkeypatch.setattr(solvers.SGDSolver, "compute_update_value", spy)
    caplog.set_level("INFO", logger="pycaffe_norm")
    assert main(["train", "--solver", _solver(tmp_path), "--gpu", "0"]) == 0
    assert "Using GPUs 0" in caplog.text and seen and all(m is fake_gpu for m in seen)
    assert main(["train", "--solver", _solver(tmp_path), "--gpu", "2"]) == 2


def test_solver_mode_gpu_and_device_id(fake_gpu, tmp_path, caplog):
    from pycaffe_norm.cli import main

    caplog.set_level("INFO", logger="pycaffe_norm")
    assert main(["train", "--solver", _solver(tmp_path, "solver_mode: GPU\ndevice_id: 0\n")]) == 0
    assert "Using GPUs 0" in caplog.text
    assert main(["train", "--solver", _solver(tmp_path, "solver_mode: GPU\ndevice_id: 1\n")]) == 2


def test_time_on_the_device(fake_gpu, tmp_path, caplog):
    from pycaffe_norm.cli import main

    (tmp_path / "net.prototxt").write_text(CONV_NET)
    caplog.set_level("INFO", logger="pycaffe_norm")
    assert main(["time", "--model", str(tmp_path / "net.prototxt"), "--iterations", "2", "--gpu", "0"]) == 0
    assert "Using GPUs 0" in caplog.text and "Average Forward-Backward" in caplog.text
