#!/usr/bin/env python
"""Data-parallel throughput: CIFAR-10-quick trained by one process with 2 threads against 2 MPI ranks with 1
thread each (``mpirun -n 2 pcn train``), the same global batch (100 = 2 x 50) and so the same trajectory; one
process with 1 thread is the reference.

    python benchmarks/bench_distributed.py [--iterations 30] [--warmup 5] [--repeats 3] [--batch 100]

Random images (3x32x32, 10 classes) go into an HDF5 file in a temporary folder, read by an HDF5Data layer in
place of the model's Input layers; each configuration runs ``pcn train`` in a subprocess, alternating, and the
best of ``--repeats`` runs is kept. The time is taken from the log's timestamps between the display lines of the
first and the last timed iteration (start-up, net construction and warm-up excluded). Needs mpi4py and mpirun
(``pip install 'pycaffe_norm[mpi]'``). It prints a table and asserts nothing.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "cifar10_quick")


def write_data(folder: str, n: int) -> str:
    import h5py

    r = np.random.RandomState(0)
    path = os.path.join(folder, "train.h5")
    with h5py.File(path, "w") as f:
        f["data"] = r.rand(n, 3, 32, 32).astype(np.float32)
        f["label"] = r.randint(0, 10, n).astype(np.float32)
    listing = os.path.join(folder, "train.txt")
    with open(listing, "w") as f:
        f.write(path + "\n")
    return listing


def write_solver(folder: str, listing: str, batch: int, iters: int) -> str:
    net = open(os.path.join(MODEL, "cifar10_quick_train_test.prototxt")).read()
    start, end = net.index("layer {"), net.index('layer {\n  name: "conv1"')
    data = ('layer {\n  name: "data"\n  type: "HDF5Data"\n  top: "data"\n  top: "label"\n'
            '  hdf5_data_param { source: "%s" batch_size: %d }\n}\n' % (listing, batch))
    net_path = os.path.join(folder, "net_%d.prototxt" % batch)
    with open(net_path, "w") as f:
        f.write(net[:start] + data + net[end:])
    solver = open(os.path.join(MODEL, "cifar10_quick_solver.prototxt")).read()
    solver = re.sub(r'net: ".*"', 'net: "%s"' % net_path, solver)
    solver = re.sub(r"\ndisplay: .*", "\ndisplay: 1", solver)
    solver = re.sub(r"\nmax_iter: .*", "\nmax_iter: %d" % iters, solver)
    path = os.path.join(folder, "solver_%d.prototxt" % batch)
    with open(path, "w") as f:
        f.write(solver)
    return path


def mpirun() -> str:
    here = os.path.join(os.path.dirname(sys.executable), "mpirun")
    return here if os.access(here, os.X_OK) else (shutil.which("mpirun") or "")


def run(solver: str, ranks: int, threads: int, warmup: int, iters: int) -> float:
    """Seconds between the display lines of iterations ``warmup`` and ``warmup + iters``."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads), PCN_THREADS=str(threads),
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    cmd = [sys.executable, "-m", "pycaffe_norm", "train", "--solver", solver]
    if ranks > 1:
        cmd = [mpirun(), "-n", str(ranks), "--oversubscribe", "--bind-to", "none"] + cmd
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if r.returncode:
        sys.exit("failed: %s\n%s" % (" ".join(cmd), r.stderr[-2000:]))
    stamps = {}
    for m in re.finditer(r"^I\d{4} (\d\d):(\d\d):(\d\d\.\d+) .*\] Iteration (\d+), loss", r.stderr, re.M):
        stamps[int(m.group(4))] = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
    return (stamps[warmup + iters] - stamps[warmup]) % 86400


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=100, help="the global batch (default: CIFAR-10-quick's 100)")
    args = ap.parse_args()
    if not mpirun():
        sys.exit("needs mpirun and mpi4py: pip install 'pycaffe_norm[mpi]'")
    folder = tempfile.mkdtemp(prefix="pcn_bench_dp_")
    try:
        listing = write_data(folder, args.batch * 20)
        total = args.warmup + args.iterations
        whole = write_solver(folder, listing, args.batch, total)
        configs = [("1 process x 2 threads", 1, 2, whole),
                   ("2 ranks x 1 thread", 2, 1, write_solver(folder, listing, args.batch // 2, total)),
                   ("1 process x 1 thread (reference)", 1, 1, whole)]
        best = {name: float("inf") for name, *_ in configs}
        for _ in range(args.repeats):
            for name, ranks, threads, solver in configs:
                best[name] = min(best[name], run(solver, ranks, threads, args.warmup, args.iterations))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print("CIFAR-10-quick, global batch %d, %d timed iterations after %d, best of %d (%s, %s, %d CPUs, Python %s)"
          % (args.batch, args.iterations, args.warmup, args.repeats, datetime.date.today(), platform.machine(),
             os.cpu_count(), platform.python_version()))
    print("| configuration | ms/iter | images/s | speed-up |")
    print("|---|---|---|---|")
    base = best[configs[0][0]]
    for name, *_ in configs:
        t = best[name]
        print("| %s | %.1f | %.0f | %.2fx |" % (name, t / args.iterations * 1e3, args.batch * args.iterations / t,
                                                base / t))


if __name__ == "__main__":
    main()
