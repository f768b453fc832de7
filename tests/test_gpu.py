"""The CuPy backend on a real device: every reference case (layers, BatchNorm's running statistics, the six
solvers) on the GPU, with the CUDA kernels and with the generic CuPy code. Runs only where CuPy sees a CUDA device
(benchmarks/gpu_check.py runs this file and more)."""
from __future__ import annotations

import numpy as np
import pytest

import pycaffe_norm as caffe
from pycaffe_norm import backend
from pycaffe_norm.blob import Blob
from pycaffe_norm.layers import cuda_kernels
from pycaffe_norm.layers.neuron import DropoutLayer
from pycaffe_norm.proto import caffe_pb2

from .reference_check import check, load, tol
from .test_reference import CASES, items, kind

pytestmark = pytest.mark.skipif(not backend.cupy_available(), reason="needs CuPy and a CUDA device")


@pytest.fixture(params=[True, False], ids=["kernels", "generic"])
def gpu_mode(request, monkeypatch):
    import cupy

    monkeypatch.setattr(cuda_kernels, "USE_KERNELS", request.param)
    caffe.set_device(0)
    caffe.set_mode_gpu()
    caffe.set_random_seed(1701)
    yield cupy
    caffe.set_mode_cpu()
    cupy.get_default_memory_pool().free_all_blocks()


@pytest.mark.parametrize("d", [d for d in CASES if kind(d) != "solver"], ids=lambda d: d.name)
def test_reference_case_on_gpu(d, gpu_mode):
    cp = gpu_mode
    meta, A = load(d)
    phase = getattr(caffe, meta["phase"])
    if meta.get("weights"):
        net = caffe.Net(str(d / "net.prototxt"), str(d / meta["weights"]), phase)
    else:
        net = caffe.Net(str(d / "net.prototxt"), phase)
    assert backend.is_gpu_array(net.blobs[meta["inputs"][0]].data)
    for k, layer, i in items(A, "param/"):
        net.params[layer][i].data[...] = cp.asarray(A[k])
    for b in meta["inputs"]:
        net.blobs[b].data[...] = cp.asarray(A["in/" + b])
    net.forward()
    for k in A:
        if k.startswith("out/"):
            check(cp.asnumpy(net.blobs[k[4:]].data), A[k], tol(meta, k), k)
    for k, layer, i in items(A, "after/"):        # BatchNorm's running statistics after the forward
        check(cp.asnumpy(net.params[layer][i].data), A[k], tol(meta, k), k)
    if meta["backward"]:
        for k in A:
            if k.startswith("topdiff/"):
                net.blobs[k[8:]].diff[...] = cp.asarray(A[k])
        net.backward()
        for k in A:
            if k.startswith("grad/"):
                check(cp.asnumpy(net.blobs[k[5:]].diff), A[k], tol(meta, k), k)
        for k, layer, i in items(A, "pgrad/"):
            check(cp.asnumpy(net.params[layer][i].diff), np.asarray(A[k]), tol(meta, k), k)


@pytest.mark.parametrize("d", [d for d in CASES if kind(d) == "solver"], ids=lambda d: d.name)
def test_solver_case_on_gpu(d, tmp_path, gpu_mode):
    cp = gpu_mode
    meta, A = load(d)
    sp = tmp_path / "solver.prototxt"
    sp.write_text('net: "%s"\nsnapshot_prefix: "%s"\n' % (d / "net.prototxt", tmp_path / "snap")
                  + (d / "solver.prototxt").read_text())
    solver = caffe.get_solver(str(sp))
    for k, layer, i in items(A, "param/"):
        solver.net.params[layer][i].data[...] = cp.asarray(A[k])
    losses, lrs = [], []
    for it in range(meta["n_iter"]):
        for b in meta["inputs"]:
            solver.net.blobs[b].data[...] = cp.asarray(A["in/%s/%d" % (b, it)])
        lrs.append(solver.lr)
        solver.step(1)
        losses.append(float(solver.net.blobs[meta["loss_blob"]].data))
    check(np.array(losses), A["loss/iter"], tol(meta, "loss/iter"), "loss/iter")
    check(np.array(lrs), A["lr/iter"], tol(meta, "lr/iter"), "lr/iter")
    for k, layer, i in items(A, "final/"):
        p = A["param/" + k.split("/", 1)[1]].astype(np.float64)
        got = cp.asnumpy(solver.net.params[layer][i].data).astype(np.float64)
        check(got - p, A[k].astype(np.float64) - p, tol(meta, k), k)


def test_dropout_mask_on_device(gpu_mode):
    cp = gpu_mode
    lp = caffe_pb2.LayerParameter(name="drop", type="Dropout")
    lp.dropout_param.dropout_ratio = 0.25
    layer = DropoutLayer(lp, caffe.TRAIN)
    x, y = Blob((64, 1000)), Blob((64, 1000))
    x.data[...] = 1
    layer.initialize([x], [y])
    layer.forward([x], [y])
    kept = cp.asnumpy(y.data) != 0
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_allclose(cp.asnumpy(y.data)[kept], 1 / 0.75, rtol=1e-6)
    assert backend.is_gpu_array(layer.mask)
