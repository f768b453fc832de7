"""The CuPy backend: every reference case again on the GPU. Runs only where CuPy sees a CUDA device."""
from __future__ import annotations

import numpy as np
import pytest

import pycaffe_norm as caffe
from pycaffe_norm import backend

from .test_reference import CASES, check, items, kind, load, tol

pytestmark = pytest.mark.skipif(not backend.cupy_available(), reason="needs CuPy and a CUDA device")


@pytest.fixture
def gpu_mode():
    import cupy

    # TF32 would break float32 fidelity (see tests/reference/README.md)
    cupy.cuda.set_allocator(None)
    caffe.set_mode_gpu()
    yield cupy
    caffe.set_mode_cpu()


@pytest.mark.parametrize("d", [d for d in CASES if kind(d) != "solver"], ids=lambda d: d.name)
def test_reference_case_on_gpu(d, gpu_mode):
    meta, A = load(d)
    net = caffe.Net(str(d / "net.prototxt"), getattr(caffe, meta["phase"]))
    assert backend.is_gpu_array(net.blobs[meta["inputs"][0]].data)
    for k, layer, i in items(A, "param/"):
        net.params[layer][i].data[...] = gpu_mode.asarray(A[k])
    for b in meta["inputs"]:
        net.blobs[b].data[...] = gpu_mode.asarray(A["in/" + b])
    net.forward()
    for k in A:
        if k.startswith("out/"):
            check(gpu_mode.asnumpy(net.blobs[k[4:]].data), A[k], tol(meta, k), k)
    if meta["backward"]:
        for k in A:
            if k.startswith("topdiff/"):
                net.blobs[k[8:]].diff[...] = gpu_mode.asarray(A[k])
        net.backward()
        for k in A:
            if k.startswith("grad/"):
                check(gpu_mode.asnumpy(net.blobs[k[5:]].diff), A[k], tol(meta, k), k)
        for k, layer, i in items(A, "pgrad/"):
            check(gpu_mode.asnumpy(net.params[layer][i].diff), np.asarray(A[k]), tol(meta, k), k)
