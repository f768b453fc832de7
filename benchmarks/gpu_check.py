#!/usr/bin/env python
"""The GPU backend's acceptance run (issue #13): one command on a machine with a CUDA device and CuPy.

    python benchmarks/gpu_check.py [--out gpu_check.json] [--sections reference,pytest,lenet,speed,layers]
    python benchmarks/gpu_check.py --dry-run     # the CPU half only, on any machine: checks this script

Sections:

* ``reference``: every case of tests/reference on the GPU, once with the CUDA kernels and once with the generic
  CuPy code. Each output, gradient, BatchNorm running statistic and solver trajectory must match the stored Caffe
  output (the case's tolerance) and pcn's own CPU result (float32 rounding: 1e-4 of the array's scale).
* ``pytest``: tests/test_cuda_kernels.py (NVRTC compiles), tests/test_gpu_namespace.py and the device Dropout test.
* ``lenet``: models/lenet trained for ``--lenet-iters`` iterations on the GPU and on the CPU from the same seed;
  the GPU's final test accuracy must be within 1 point of the CPU's.
* ``speed``: CIFAR-10-quick (batch 100) and CaffeNet (batch ``--caffenet-batch``) training iterations (forward,
  backward, SGD update) in pcn and in PyTorch with cuDNN on the same GPU; target: pcn at most 1.5x PyTorch.
* ``layers``: LRN across channels (CaffeNet's norm1 input) and BatchNorm in TRAIN (a ResNet-sized blob), forward
  plus backward, in pcn and PyTorch; target: pcn faster.

Prints a summary, writes every number to ``--out`` (JSON), and exits with status 1 when a correctness check
fails (a missed speed target is reported as MISS; ``--strict-speed`` makes it fail too). ``--dry-run`` runs the
CPU half of each section with few cases and iterations, PyTorch on the CPU, and the GPU half of the reference
section on the fake device of tests/fake_cupy.py (generic code, and the kernels compiled for the CPU).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import pycaffe_norm as caffe  # noqa: E402
from pycaffe_norm import backend  # noqa: E402
from pycaffe_norm.layers import cuda_kernels  # noqa: E402
from tests import cuda_emulator, fake_cupy  # noqa: E402
from tests.reference_check import DEFAULT_TOLERANCE, check, load, tol  # noqa: E402
from tests.test_reference import CASES, items, kind  # noqa: E402

SECTIONS = ("reference", "pytest", "lenet", "speed", "layers")
DRY_RUN_CASES = ("conv_group2", "pool_max_ceil", "lrn_across_size5", "batchnorm_train_running", "softmaxloss_2d",
                 "solver_sgd_step_clip_l1")
# GPU against CPU: float32 rounding, never tighter than the case's own tolerance against Caffe
ROUNDING = dict(DEFAULT_TOLERANCE)

CAFFENET = """name: "CaffeNet"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: %(n)d dim: 3 dim: 227 dim: 227 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: %(n)d } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 96 kernel_size: 11 stride: 4 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 }}
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
layer { name: "conv2" type: "Convolution" bottom: "norm1" top: "conv2"
  convolution_param { num_output: 256 pad: 2 kernel_size: 5 group: 2 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param { pool: MAX kernel_size: 3 stride: 2 }}
layer { name: "norm2" type: "LRN" bottom: "pool2" top: "norm2" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
layer { name: "conv3" type: "Convolution" bottom: "norm2" top: "conv3"
  convolution_param { num_output: 384 pad: 1 kernel_size: 3 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "relu3" type: "ReLU" bottom: "conv3" top: "conv3" }
layer { name: "conv4" type: "Convolution" bottom: "conv3" top: "conv4"
  convolution_param { num_output: 384 pad: 1 kernel_size: 3 group: 2 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "relu4" type: "ReLU" bottom: "conv4" top: "conv4" }
layer { name: "conv5" type: "Convolution" bottom: "conv4" top: "conv5"
  convolution_param { num_output: 256 pad: 1 kernel_size: 3 group: 2 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "relu5" type: "ReLU" bottom: "conv5" top: "conv5" }
layer { name: "pool5" type: "Pooling" bottom: "conv5" top: "pool5" pooling_param { pool: MAX kernel_size: 3 stride: 2 }}
layer { name: "fc6" type: "InnerProduct" bottom: "pool5" top: "fc6"
  inner_product_param { num_output: 4096 weight_filler { type: "gaussian" std: 0.005 } } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "drop6" type: "Dropout" bottom: "fc6" top: "fc6" dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc7" type: "InnerProduct" bottom: "fc6" top: "fc7"
  inner_product_param { num_output: 4096 weight_filler { type: "gaussian" std: 0.005 } } }
layer { name: "relu7" type: "ReLU" bottom: "fc7" top: "fc7" }
layer { name: "drop7" type: "Dropout" bottom: "fc7" top: "fc7" dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc8" type: "InnerProduct" bottom: "fc7" top: "fc8"
  inner_product_param { num_output: 1000 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc8" bottom: "label" top: "loss" }
"""


# --- helpers --------------------------------------------------------------------------------------------------
def set_device(gpu: bool, kernels: bool = True) -> None:
    cuda_kernels.USE_KERNELS = kernels
    if gpu:
        caffe.set_mode_gpu()
    else:
        caffe.set_mode_cpu()
    caffe.set_random_seed(1701)


def sync() -> None:
    if backend.mode() == "gpu":
        backend.cupy_module().cuda.Device().synchronize()


def host(a) -> np.ndarray:
    return backend.to_numpy(a)


def dev(a):
    return backend.xp_for_mode().asarray(a)


# --- 1. reference cases ---------------------------------------------------------------------------------------
def run_case(d) -> dict:
    """A reference case in the current mode: its named result arrays (as the stored keys name them)."""
    meta, A = load(d)
    got = {}
    if kind(d) == "solver":
        with tempfile.TemporaryDirectory() as tmp:
            sp = os.path.join(tmp, "solver.prototxt")
            with open(sp, "w") as f:
                f.write('net: "%s"\nsnapshot_prefix: "%s"\n' % (d / "net.prototxt", os.path.join(tmp, "snap"))
                        + (d / "solver.prototxt").read_text())
            solver = caffe.get_solver(sp)
            for k, layer, i in items(A, "param/"):
                solver.net.params[layer][i].data[...] = dev(A[k])
            losses = []
            for it in range(meta["n_iter"]):
                for b in meta["inputs"]:
                    solver.net.blobs[b].data[...] = dev(A["in/%s/%d" % (b, it)])
                solver.step(1)
                losses.append(float(solver.net.blobs[meta["loss_blob"]].data))
            got["loss/iter"] = np.array(losses)
            for k, layer, i in items(A, "final/"):
                got[k] = host(solver.net.params[layer][i].data)
        return got
    phase = getattr(caffe, meta["phase"])
    net = caffe.Net(str(d / "net.prototxt"), str(d / meta["weights"]), phase) if meta.get("weights") else \
        caffe.Net(str(d / "net.prototxt"), phase)
    for k, layer, i in items(A, "param/"):
        net.params[layer][i].data[...] = dev(A[k])
    for b in meta["inputs"]:
        net.blobs[b].data[...] = dev(A["in/" + b])
    net.forward()
    for k in A:
        if k.startswith("out/"):
            got[k] = host(net.blobs[k[4:]].data)
    for k, layer, i in items(A, "after/"):
        got[k] = host(net.params[layer][i].data)
    if meta["backward"]:
        for k in A:
            if k.startswith("topdiff/"):
                net.blobs[k[8:]].diff[...] = dev(A[k])
        net.backward()
        for k in A:
            if k.startswith("grad/"):
                got[k] = host(net.blobs[k[5:]].diff)
        for k, layer, i in items(A, "pgrad/"):
            got[k] = host(net.params[layer][i].diff)
    return got


def compare(got: dict, want: dict, meta: dict, against_cpu: bool, base: dict = None) -> list:
    """Failure messages of ``got`` against ``want`` (the stored Caffe arrays, or pcn's CPU result)."""
    errors = []
    for k, ref in want.items():
        if k not in got:
            errors.append("%s: missing" % k)
            continue
        t = tol(meta, k)
        if against_cpu:
            t = {key: max(t[key], ROUNDING[key]) for key in t}
        a, b = np.asarray(got[k], np.float64), np.asarray(ref, np.float64)
        if base is not None and k.startswith("final/"):  # a solver's step, not the parameters themselves
            p = base["param/" + k.split("/", 1)[1]].astype(np.float64)
            a, b = a - p, b - p
        try:
            check(a, b, t, k)
        except AssertionError as e:
            errors.append(str(e) or k)
    return errors


def section_reference(args, report: dict) -> bool:
    if args.dry_run and not args.cases:  # a few of each kind: layers, BatchNorm's statistics, a solver
        cases = [d for d in CASES if d.name in DRY_RUN_CASES]
    else:
        cases = CASES[:args.cases] if args.cases else CASES
    ok = True
    rows = report.setdefault("reference", [])
    real_cupy = backend.cupy_module()
    for d in cases:
        meta, A = load(d)
        stored = {k: v for k, v in A.items() if k.split("/")[0] in ("out", "after", "grad", "pgrad", "final")}
        if kind(d) == "solver":
            stored["loss/iter"] = A["loss/iter"]
        row = {"case": d.name}
        set_device(False)
        cpu = run_case(d)
        row["cpu_vs_caffe"] = compare(cpu, stored, meta, False, A)
        # a dry run takes the GPU half's path on tests/fake_cupy.py's stand-in device: the generic code, and the
        # kernels compiled for the CPU by tests/cuda_emulator.py where a C++ compiler is there
        modes = [("kernels", True), ("generic", False)]
        if args.dry_run:
            modes = [("fake_device", False)] + ([("emulated_kernels", True)] if cuda_emulator.COMPILER else [])
        for name, kernels in modes:
            if args.dry_run:
                backend._cupy = fake_cupy.module()
                if kernels:
                    backend._cupy.RawModule = cuda_emulator.EmulatedModule
                    cuda_kernels._cache.clear()
            set_device(True, kernels)
            t = time.perf_counter()
            try:
                gpu = run_case(d)
                row[name + "_vs_caffe"] = compare(gpu, stored, meta, False, A)
                row[name + "_vs_cpu"] = compare(gpu, cpu, meta, True, A)
            except Exception:  # noqa: BLE001 - a crash is a failed check, reported with its traceback
                row[name + "_error"] = traceback.format_exc()
            row[name + "_ms"] = 1e3 * (time.perf_counter() - t)
        set_device(False)
        backend._cupy = real_cupy
        cuda_kernels._cache.clear()
        bad = {k: v for k, v in row.items() if k != "case" and not k.endswith("_ms") and v}
        ok &= not bad
        rows.append(row)
        print("  %-36s %s" % (d.name, "ok" if not bad else "FAIL " + json.dumps(bad)[:300]), flush=True)
    return ok


# --- 2. the GPU tests ---------------------------------------------------------------------------------------------
def section_pytest(args, report: dict) -> bool:
    # the reference section already runs every case of tests/test_gpu.py, and compares with the CPU too
    files = ["tests/test_cuda_kernels.py", "tests/test_gpu_namespace.py"]
    if not args.dry_run:
        files.append("tests/test_gpu.py::test_dropout_mask_on_device")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-rs"] + files, cwd=ROOT,
                         capture_output=True, text=True)
    tail = (out.stdout + out.stderr)[-3000:]
    report["pytest"] = {"returncode": out.returncode, "tail": tail}
    print("  " + "\n  ".join(tail.strip().splitlines()[-5:]))
    return out.returncode == 0


# --- 3. LeNet training ---------------------------------------------------------------------------------------------
def train_lenet(gpu: bool, iters: int) -> dict:
    from pycaffe_norm.solvers import read_solver_param

    set_device(gpu)
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        param = read_solver_param("models/lenet/lenet_solver.prototxt")
        param.max_iter = iters
        param.test_interval = iters
        param.display = 0
        param.snapshot = 0
        param.snapshot_after_train = False
        solver = caffe.get_solver(param)
        t = time.perf_counter()
        solver.step(iters)
        sync()
        seconds = time.perf_counter() - t
        scores = solver.test(0)
    finally:
        os.chdir(cwd)
        set_device(False)
    return {"accuracy": float(scores["accuracy"]), "loss": float(scores["loss"]),
            "ms_per_iter": 1e3 * seconds / iters}


def section_lenet(args, report: dict) -> bool:
    iters = 20 if args.dry_run else args.lenet_iters
    cpu = train_lenet(False, iters)
    row = {"iterations": iters, "cpu": cpu}
    ok = True
    print("  CPU: accuracy %.4f, loss %.4f, %.2f ms/iter" % (cpu["accuracy"], cpu["loss"], cpu["ms_per_iter"]))
    if not args.dry_run:
        gpu = train_lenet(True, iters)
        row["gpu"] = gpu
        ok = gpu["accuracy"] >= cpu["accuracy"] - 0.01
        print("  GPU: accuracy %.4f, loss %.4f, %.2f ms/iter -> %s" % (gpu["accuracy"], gpu["loss"],
                                                                      gpu["ms_per_iter"], "ok" if ok else "FAIL"))
    report["lenet"] = row
    return ok


# --- 4. whole nets against PyTorch --------------------------------------------------------------------------------
def torch_device(args):
    try:
        import torch
    except ImportError:
        return None, None
    if args.dry_run:
        return torch, torch.device("cpu")
    if not torch.cuda.is_available():
        return None, None
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 arithmetic, as pcn's
    torch.backends.cudnn.allow_tf32 = False
    return torch, torch.device("cuda")


def torch_model(torch, name: str):
    nn = torch.nn
    if name == "cifar10_quick":
        return nn.Sequential(
            nn.Conv2d(3, 32, 5, padding=2), nn.MaxPool2d(3, 2, ceil_mode=True), nn.ReLU(),
            nn.Conv2d(32, 32, 5, padding=2), nn.ReLU(), nn.AvgPool2d(3, 2, ceil_mode=True),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.AvgPool2d(3, 2, ceil_mode=True),
            nn.Flatten(), nn.Linear(64 * 4 * 4, 64), nn.Linear(64, 10))
    return nn.Sequential(
        nn.Conv2d(3, 96, 11, stride=4), nn.ReLU(), nn.MaxPool2d(3, 2), nn.LocalResponseNorm(5, 1e-4, 0.75),
        nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(), nn.MaxPool2d(3, 2), nn.LocalResponseNorm(5, 1e-4, 0.75),
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(), nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(), nn.MaxPool2d(3, 2), nn.Flatten(),
        nn.Linear(256 * 6 * 6, 4096), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(4096, 1000))


def time_torch(torch, device, name: str, batch: int, iters: int, warmup: int) -> float:
    model = torch_model(torch, name).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    size = 32 if name == "cifar10_quick" else 227
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 10 if name == "cifar10_quick" else 1000, (batch,), device=device)

    def step():
        opt.zero_grad(set_to_none=False)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 1e3 * (time.perf_counter() - t) / iters


def time_pcn(gpu: bool, name: str, batch: int, iters: int, warmup: int) -> float:
    from pycaffe_norm.proto import caffe_pb2

    set_device(gpu)
    with tempfile.TemporaryDirectory() as tmp:
        if name == "cifar10_quick":
            text = open(os.path.join(ROOT, "models/cifar10_quick/cifar10_quick_train_test.prototxt")).read()
            text = text.replace("dim: 100 ", "dim: %d " % batch).replace("dim: 100 }", "dim: %d }" % batch)
        else:
            text = CAFFENET % {"n": batch}
        net_path = os.path.join(tmp, "net.prototxt")
        with open(net_path, "w") as f:
            f.write(text)
        param = caffe_pb2.SolverParameter(net=net_path, base_lr=1e-3, momentum=0.9, lr_policy="fixed", display=0,
                                          max_iter=iters + warmup, snapshot_prefix=os.path.join(tmp, "s"))
        param.snapshot_after_train = False
        solver = caffe.get_solver(param)
        r = np.random.RandomState(1)
        for b in solver.net.inputs:
            blob = solver.net.blobs[b]
            classes = 10 if name == "cifar10_quick" else 1000
            blob.data[...] = dev(r.randint(0, classes, blob.shape) if b == "label" else r.randn(*blob.shape))
        solver.step(warmup)
        sync()
        t = time.perf_counter()
        solver.step(iters)
        sync()
        ms = 1e3 * (time.perf_counter() - t) / iters
    set_device(False)
    return ms


def section_speed(args, report: dict) -> bool:
    torch, device = torch_device(args)
    rows = []
    ok = True
    nets = [("cifar10_quick", 2 if args.dry_run else 100), ("caffenet", 2 if args.dry_run else args.caffenet_batch)]
    iters, warmup = (1, 1) if args.dry_run else (args.iterations, args.warmup)
    for name, batch in nets:
        row = {"net": name, "batch": batch, "pcn_ms": time_pcn(not args.dry_run, name, batch, iters, warmup)}
        if torch is not None:
            row["torch_ms"] = time_torch(torch, device, name, batch, iters, warmup)
            row["ratio"] = row["pcn_ms"] / row["torch_ms"]
            row["target"] = "pcn <= 1.5x PyTorch"
            row["met"] = row["ratio"] <= 1.5
            ok &= row["met"] or args.dry_run
        rows.append(row)
        print("  %-14s batch %4d: pcn %.2f ms/iter%s" % (
            name, batch, row["pcn_ms"], "" if torch is None else ", PyTorch %.2f ms/iter, ratio %.2f -> %s" % (
                row["torch_ms"], row["ratio"], "met" if row["met"] else "MISS")))
    report["speed"] = rows
    return ok


# --- 5. LRN and BatchNorm against PyTorch -------------------------------------------------------------------------
LAYER_NETS = {
    "lrn": ("layer { name: 'x' type: 'Input' top: 'x' input_param { shape { dim: %d dim: 96 dim: 27 dim: 27 } } }\n"
            "layer { name: 'l' type: 'LRN' bottom: 'x' top: 'y' lrn_param { local_size: 5 alpha: 0.0001 "
            "beta: 0.75 } }", (96, 27, 27)),
    "batchnorm": ("layer { name: 'x' type: 'Input' top: 'x' input_param { shape { dim: %d dim: 64 dim: 56 "
                  "dim: 56 } } }\nlayer { name: 'l' type: 'BatchNorm' bottom: 'x' top: 'y' "
                  "batch_norm_param { use_global_stats: false } }", (64, 56, 56)),
}


def time_layer_pcn(gpu: bool, name: str, batch: int, iters: int) -> float:
    set_device(gpu)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "net.prototxt")
        with open(path, "w") as f:
            f.write("force_backward: true\n" + LAYER_NETS[name][0] % batch)
        net = caffe.Net(path, caffe.TRAIN)
    r = np.random.RandomState(2)
    net.blobs["x"].data[...] = dev(r.randn(*net.blobs["x"].shape))
    net.blobs["y"].diff[...] = dev(r.randn(*net.blobs["y"].shape))
    net.forward()
    net.backward()
    sync()
    t = time.perf_counter()
    for _ in range(iters):
        net.forward()
        net.backward()
    sync()
    set_device(False)
    return 1e3 * (time.perf_counter() - t) / iters


def time_layer_torch(torch, device, name: str, batch: int, iters: int) -> float:
    x = torch.randn((batch,) + LAYER_NETS[name][1], device=device, requires_grad=True)
    dy = torch.randn_like(x)
    if name == "lrn":
        op = torch.nn.LocalResponseNorm(5, 1e-4, 0.75, 1.0)
    else:
        op = torch.nn.BatchNorm2d(x.shape[1], affine=False).to(device).train()

    def once():
        x.grad = None
        op(x).backward(dy)

    once()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        once()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 1e3 * (time.perf_counter() - t) / iters


def section_layers(args, report: dict) -> bool:
    torch, device = torch_device(args)
    batch, iters = (2, 1) if args.dry_run else (128, args.iterations)
    rows, ok = [], True
    for name in LAYER_NETS:
        row = {"layer": name, "batch": batch, "pcn_ms": time_layer_pcn(not args.dry_run, name, batch, iters)}
        if torch is not None:
            row["torch_ms"] = time_layer_torch(torch, device, name, batch, iters)
            row["target"] = "pcn faster than PyTorch"
            row["met"] = row["pcn_ms"] < row["torch_ms"]
            ok &= row["met"] or args.dry_run
        rows.append(row)
        print("  %-10s batch %4d: pcn %.3f ms%s" % (name, batch, row["pcn_ms"], "" if torch is None else
                                                    ", PyTorch %.3f ms -> %s" % (row["torch_ms"],
                                                                                "met" if row["met"] else "MISS")))
    report["layers"] = rows
    return ok


# --- main ------------------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of %s" % ", ".join(SECTIONS))
    ap.add_argument("--out", default="gpu_check.json", help="the JSON report (default: gpu_check.json)")
    ap.add_argument("--dry-run", action="store_true", help="the CPU half only (no GPU needed): checks this script")
    ap.add_argument("--cases", type=int, default=0, help="only the first N reference cases (default: all; a dry "
                    "run takes %d chosen ones)" % len(DRY_RUN_CASES))
    ap.add_argument("--lenet-iters", type=int, default=2000, help="LeNet training iterations (default: 2000)")
    ap.add_argument("--caffenet-batch", type=int, default=128, help="CaffeNet batch (default: 128)")
    ap.add_argument("--iterations", type=int, default=20, help="timed iterations (default: 20)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed iterations first (default: 3)")
    ap.add_argument("--strict-speed", action="store_true", help="a missed speed target fails the run")
    args = ap.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        ap.error("unknown section(s) %s; choose from %s" % (", ".join(unknown), ", ".join(SECTIONS)))
    if not args.dry_run and not backend.cupy_available():
        print("gpu_check: CuPy sees no CUDA device; run it on a GPU machine (or pass --dry-run)", file=sys.stderr)
        return 2
    report = {"machine": platform.node(), "python": platform.python_version(), "numpy": np.__version__,
              "dry_run": args.dry_run, "results": {}}
    if backend.cupy_available():
        cp = backend.cupy_module()
        props = cp.cuda.runtime.getDeviceProperties(0)
        report["cupy"] = cp.__version__
        report["device"] = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    print("gpu_check: %s%s" % (report.get("device", "no GPU"), " (dry run: CPU half only)" if args.dry_run else ""))
    correctness = {"reference": section_reference, "pytest": section_pytest, "lenet": section_lenet}
    speed = {"speed": section_speed, "layers": section_layers}
    failed = []
    for name in sections:
        print("[%s]" % name, flush=True)
        t = time.perf_counter()
        try:
            passed = (correctness.get(name) or speed[name])(args, report)
        except Exception:  # noqa: BLE001 - report the section's crash and go on with the others
            report[name + "_error"] = traceback.format_exc()
            print(report[name + "_error"])
            passed = False
        report["results"][name] = {"passed": passed, "seconds": time.perf_counter() - t}
        if not passed and (name in correctness or args.strict_speed or name + "_error" in report):
            failed.append(name)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1, default=str)
    print("gpu_check: %s; report in %s" % ("FAILED: " + ", ".join(failed) if failed else "all checks passed",
                                          args.out))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
