"""Every reference case in tests/reference (BVLC Caffe outputs, or float64 formulas for MyCaffe-only layers),
driven through the pycaffe API exactly as tests/reference/README.md describes."""
from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

import pycaffe_norm as caffe
from tests.reference_check import check, load, tol

REF = pathlib.Path(__file__).parent / "reference"
CASES = sorted(p.parent for p in REF.glob("*/case.json"))
LOAD_TOL = {"rtol": 1e-6, "floor": 0.0, "atol": 1e-30}


def items(arrays, prefix):
    for k in arrays:
        if k.startswith(prefix):
            name, i = k[len(prefix):].rsplit("/", 1)
            yield k, name, int(i)


def kind(d):
    return json.loads((d / "case.json").read_text())["kind"]


@pytest.mark.parametrize("d", [d for d in CASES if kind(d) != "solver"], ids=lambda d: d.name)
def test_forward_backward(d):
    run_case(d)


def run_case(d, host=lambda a: a) -> None:
    """Loads, forwards and backwards one case through the pycaffe API and checks every stored array; ``host``
    turns a blob's array into a NumPy one (the identity on the CPU; a device copy in GPU-mode tests)."""
    meta, A = load(d)
    phase = getattr(caffe, meta["phase"])
    if meta.get("weights"):
        net = caffe.Net(str(d / "net.prototxt"), str(d / meta["weights"]), phase)
        for k, layer, i in items(A, "param/"):
            check(host(net.params[layer][i].data), A[k], LOAD_TOL, "load:" + k)
    else:
        net = caffe.Net(str(d / "net.prototxt"), phase)
    for k, layer, i in items(A, "param/"):
        net.params[layer][i].data[...] = A[k]
    for b in meta["inputs"]:
        net.blobs[b].data[...] = A["in/" + b]
    net.forward()
    for k in A:
        if k.startswith("out/"):
            check(host(net.blobs[k[4:]].data), A[k], tol(meta, k), k)
    for k, layer, i in items(A, "after/"):
        check(host(net.params[layer][i].data), A[k], tol(meta, k), k)
    if meta["backward"]:
        for k in A:
            if k.startswith("topdiff/"):
                net.blobs[k[8:]].diff[...] = A[k]
        net.backward()
        for k in A:
            if k.startswith("grad/"):
                check(host(net.blobs[k[5:]].diff), A[k], tol(meta, k), k)
        for k, layer, i in items(A, "pgrad/"):
            check(host(net.params[layer][i].diff), A[k], tol(meta, k), k)


@pytest.mark.parametrize("d", [d for d in CASES if kind(d) == "solver"], ids=lambda d: d.name)
def test_solver(d, tmp_path):
    meta, A = load(d)
    sp = tmp_path / "solver.prototxt"
    sp.write_text('net: "%s"\nsnapshot_prefix: "%s"\n' % (d / "net.prototxt", tmp_path / "snap")
                  + (d / "solver.prototxt").read_text())
    solver = caffe.get_solver(str(sp))
    assert type(solver).__name__ == {"SGD": "SGDSolver", "NESTEROV": "NesterovSolver", "ADAGRAD": "AdaGradSolver",
                                     "RMSPROP": "RMSPropSolver", "ADADELTA": "AdaDeltaSolver",
                                     "ADAM": "AdamSolver"}[meta["solver_type"].upper()]
    for k, layer, i in items(A, "param/"):
        solver.net.params[layer][i].data[...] = A[k]
    losses, lrs, step1 = [], [], {}
    for it in range(meta["n_iter"]):
        for b in meta["inputs"]:
            solver.net.blobs[b].data[...] = A["in/%s/%d" % (b, it)]
        lrs.append(solver.lr)
        solver.step(1)
        losses.append(float(solver.net.blobs[meta["loss_blob"]].data))
        if it == 0:
            step1 = {k: np.array(solver.net.params[layer][i].data) for k, layer, i in items(A, "step1/")}
    assert solver.iter == meta["n_iter"]
    check(np.array(losses), A["loss/iter"], tol(meta, "loss/iter"), "loss/iter")
    check(np.array(lrs), A["lr/iter"], tol(meta, "lr/iter"), "lr/iter")
    finals = {k: solver.net.params[layer][i].data for k, layer, i in items(A, "final/")}
    for k, got in list(step1.items()) + list(finals.items()):
        p = A["param/" + k.split("/", 1)[1]].astype(np.float64)
        check(np.asarray(got, np.float64) - p, A[k].astype(np.float64) - p, tol(meta, k), k)
