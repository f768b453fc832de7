#!/usr/bin/env python
"""Training speed of pcn: ms per SGD iteration (forward + backward + update through the solver) for LeNet and
CIFAR-10-quick, with the arithmetic rate it reaches and how that compares with NumPy's own float32 GEMM.

    python benchmarks/bench_train.py [--iterations 50] [--warmup 5] [--models lenet,cifar10_quick] [--threads N]

Each model, and the GEMM reference, runs in its own subprocess with the same BLAS thread setting, so its peak
resident memory is its own. On a busy machine pass ``--threads 1``: OpenBLAS threads that wait for a core can
slow small matrix products a hundredfold. LeNet (batch 64) reads the
bundled MNIST digits through its HDF5Data layer; CIFAR-10-quick (batch 100) gets random images in its Input
layers. FLOPs count 2 per multiply-add of Convolution and InnerProduct layers: the forward pass, the weight
gradient, and the bottom gradient wherever the net computes one (not for the first layer, whose bottom is data).
Other layers (pooling, ReLU, softmax, the update) are not counted but are timed. It prints a table and asserts
nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

MODELS = {
    "lenet": ("models/lenet/lenet_solver.prototxt", 64),
    "cifar10_quick": ("models/cifar10_quick/cifar10_quick_solver.prototxt", 100),
}


def gemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    """NumPy's float32 matrix-multiply rate on this machine (best of ``repeats``), in GFLOP/s."""
    import numpy as np

    r = np.random.RandomState(0)
    a, b = r.rand(n, n).astype(np.float32), r.rand(n, n).astype(np.float32)
    c = np.empty((n, n), np.float32)
    np.matmul(a, b, out=c)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.matmul(a, b, out=c)
        best = min(best, time.perf_counter() - t)
    return 2.0 * n ** 3 / best / 1e9


def training_flops(net) -> float:
    """FLOPs of one training iteration's Convolution and InnerProduct layers (see the module docstring)."""
    total = 0.0
    for i, layer in enumerate(net.layers):
        if layer.type not in ("Convolution", "InnerProduct") or not layer.blobs:
            continue
        top = net.top_vecs[i][0]
        w = layer.blobs[0]
        if layer.type == "Convolution":
            # each output value sums over (C_in / group) * kernel elements = the weight blob's count per filter
            macs = top.count * (w.count // w.shape[0])
        else:
            transpose = layer.layer_param.inner_product_param.transpose
            n_out = w.shape[1] if transpose else w.shape[0]
            macs = top.count * (w.count // n_out)
        flops = 2.0 * macs  # forward
        if net.layer_need_backward[i]:
            if layer.param_propagate_down and layer.param_propagate_down[0]:
                flops += 2.0 * macs  # weight gradient
            if net.bottom_need_backward[i] and net.bottom_need_backward[i][0]:
                flops += 2.0 * macs  # bottom gradient
        total += flops
    return total


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB (resource on Unix; psutil's peak working set on Windows)."""
    try:
        import resource
    except ImportError:
        import psutil  # pip install 'pycaffe_norm[bench]'

        info = psutil.Process().memory_info()
        return getattr(info, "peak_wset", info.rss) / 2.0 ** 20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2.0 ** 20 if sys.platform == "darwin" else rss / 1024.0  # bytes on macOS, KiB on Linux


def worker(model: str, iterations: int, warmup: int) -> dict:
    """Runs in the subprocess: builds the solver, warms up, times ``iterations`` steps."""
    import numpy as np

    import pycaffe_norm as caffe
    from pycaffe_norm.solvers import read_solver_param

    os.chdir(ROOT)
    solver_file, batch = MODELS[model]
    param = read_solver_param(solver_file)
    param.net = os.path.join(ROOT, param.net)
    del param.test_iter[:]  # training speed only: no test nets, no logs, no snapshots
    param.test_interval = 0
    param.display = 0
    param.snapshot = 0
    param.snapshot_after_train = False
    solver = caffe.get_solver(param)
    net = solver.net
    for name in net.inputs:  # Input layers (CIFAR-10-quick): random images and labels, fixed for the run
        blob = net.blobs[name]
        r = np.random.RandomState(1)
        blob.data[...] = r.randint(0, 10, blob.shape) if name == "label" else r.uniform(-1, 1, blob.shape)
    solver.step(warmup)
    t = time.perf_counter()
    solver.step(iterations)
    seconds = time.perf_counter() - t
    return {"model": model, "batch": batch, "ms_per_iter": 1e3 * seconds / iterations,
            "flops_per_iter": training_flops(net), "peak_rss_mib": peak_rss_mib(),
            "loss": float(net.blobs["loss"].data)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=50, help="timed iterations per model (default: 50)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed iterations first (default: 5)")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of: %s" % ", ".join(MODELS))
    ap.add_argument("--gemm-size", type=int, default=2048, help="n of the n x n float32 GEMM (default: 2048)")
    ap.add_argument("--threads", type=int, help="BLAS threads (sets OPENBLAS/OMP/MKL_NUM_THREADS); default: as set")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker == "gemm":
        print(json.dumps({"gflops": gemm_gflops(args.gemm_size)}))
        return 0
    if args.worker:
        print(json.dumps(worker(args.worker, args.iterations, args.warmup)))
        return 0
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        ap.error("unknown model(s) %s; choose from %s" % (", ".join(unknown), ", ".join(MODELS)))

    import numpy as np

    env = dict(os.environ)
    if args.threads:
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(args.threads)

    def run(job: str) -> dict:
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", job, "--iterations",
                              str(args.iterations), "--warmup", str(args.warmup), "--gemm-size", str(args.gemm_size)],
                             cwd=ROOT, capture_output=True, text=True, env=env)
        if out.returncode != 0:
            raise RuntimeError("%s failed:\n%s" % (job, out.stderr))
        return json.loads(out.stdout.strip().splitlines()[-1])

    try:
        gemm = run("gemm")["gflops"]
        rows = [run(m) for m in models]
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1

    threads = env.get("OPENBLAS_NUM_THREADS") or env.get("OMP_NUM_THREADS") or "default"
    print("pcn training benchmark: %s, Python %s, NumPy %s, %d CPU(s), BLAS threads %s, %d timed + %d warm-up "
          "iterations" % (platform.machine(), platform.python_version(), np.__version__, os.cpu_count() or 0,
                          threads, args.iterations, args.warmup))
    print("NumPy float32 GEMM (%d x %d): %.1f GFLOP/s" % (args.gemm_size, args.gemm_size, gemm))
    header = "%-15s %5s %10s %11s %9s %9s %10s" % ("model", "batch", "ms/iter", "GFLOP/iter", "GFLOP/s",
                                                     "% GEMM", "peak MiB")
    print(header)
    print("-" * len(header))
    for r in rows:
        gflop = r["flops_per_iter"] / 1e9
        rate = gflop / (r["ms_per_iter"] / 1e3)
        print("%-15s %5d %10.2f %11.3f %9.1f %8.1f%% %10.0f" % (r["model"], r["batch"], r["ms_per_iter"], gflop,
                                                                 rate, 100.0 * rate / gemm, r["peak_rss_mib"]))
    if "lenet" in models:
        print("For scale (issue #2): BVLC Caffe (CPU, OpenBLAS, 2 cores) trains LeNet for 2,000 iterations with "
              "5 tests in 47 s, about 23.5 ms per iteration.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
