#!/usr/bin/env python
"""Trains CIFAR-10-quick and its normalization variants on the bundled MNIST digits, not on CIFAR-10.

pcn does not bundle CIFAR-10 and nothing is downloaded, so ``models/cifar10_quick*/`` take their images from Input
layers. This tool feeds those Input layers through pcn's pycaffe API (``caffe.get_solver``,
``solver.net.blobs["data"].data[...] = ...``, ``solver.step(1)``) with the 4,000 training digits of
``data/mnist/mnist_train.h5`` made to look like CIFAR-10 input: each 28x28 digit is zero-padded to 32x32 and its
grey channel repeated three times (3x32x32). As in BVLC Caffe's examples/cifar10 (raw bytes minus
``mean.binaryproto``, no scale) the pixels are the raw grey levels 0..255 minus the mean image of the 4,000
padded training digits. This is CIFAR-10-quick's architecture on digits: far easier than CIFAR-10, and the
accuracies say nothing about CIFAR-10.

Every ``--test-interval`` iterations (and at iteration 0) a TEST-phase copy of the net that shares the trained
weights (as Caffe's solver does for its test nets; BatchNorm and InstanceNorm use their running statistics)
classifies the 1,000 test digits of ``data/mnist/mnist_test.h5``. The solver settings are each model's own
(SGD, base_lr 0.001, momentum 0.9, weight_decay 0.004, fixed rate, batch 100, random_seed 1701) for a fixed
number of iterations; the training digits are visited in a new fixed-seed random order every epoch.

Run from anywhere in the checkout::

    # every model, one after another; curves in snapshots/cifar10_quick_digits/<model>.json and .csv
    OPENBLAS_NUM_THREADS=1 PCN_THREADS=1 python tools/train_cifar10_quick_digits.py --iters 1500
    # some models
    python tools/train_cifar10_quick_digits.py --models cifar10_quick,cifar10_quick_layernorm --iters 200

``tools/plot_normalization_curves.py --cifar-digits <dir>`` draws the curves and prints the results table.
The JSON is rewritten after every test, so an interrupted run leaves the curve so far (``"complete": false``).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from typing import Dict, List, Optional, Tuple

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (folder under models/, legend label); the plain net first, as the baseline.
MODELS: List[Tuple[str, str]] = [
    ("cifar10_quick", "CIFAR-10-quick (no normalization)"),
    ("cifar10_quick_layernorm", "LayerNorm (C, H, W; affine)"),
    ("cifar10_quick_groupnorm", "GroupNorm (8 groups)"),
    ("cifar10_quick_instancenorm", "InstanceNorm (affine)"),
    ("cifar10_quick_rmsnorm", "RMSNorm (C, H, W)"),
    ("cifar10_quick_convnext_grn", "ConvNeXt-V2 GRN"),
    ("cifar10_quick_batchrenorm", "BatchNorm + Batch Renorm + Scale"),
]

DATA_NOTE = ("CIFAR-10-quick's architecture on the bundled MNIST digits (not CIFAR-10): 28x28 digits zero-padded "
             "to 32x32, grey channel repeated 3 times, raw grey levels 0..255 minus the training mean image")


def load_digits(path: str, mean: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(images N x 3 x 32 x 32 float32, labels N float32, mean 1 x 32 x 32)`` from a bundled MNIST HDF5 file.

    The file holds grey level / 256 (exact in float32), so ``* 256`` gives the raw bytes back. ``mean``: the
    training mean image to subtract (computed from these digits when None)."""
    import h5py

    with h5py.File(path, "r") as f:
        data = f["data"][:]
        labels = f["label"][:].astype(np.float32)
    raw = np.zeros((data.shape[0], 1, 32, 32), np.float32)
    raw[:, :, 2:30, 2:30] = data * 256.0                 # zero padding, 2 pixels on each side
    if mean is None:
        mean = raw.mean(axis=0)
    images = np.repeat(raw - mean, 3, axis=1)           # the grey channel three times
    return np.ascontiguousarray(images, np.float32), labels, mean


def _epoch_orders(n: int, seed: int):
    rng = np.random.RandomState(seed)
    while True:
        yield rng.permutation(n)


def evaluate(test_net, images: np.ndarray, labels: np.ndarray, batch: int) -> Tuple[float, float]:
    """Mean accuracy and loss of the TEST net over the test images, ``batch`` at a time."""
    acc, loss = [], []
    for start in range(0, len(images), batch):
        test_net.blobs["data"].data[...] = images[start:start + batch]
        test_net.blobs["label"].data[...] = labels[start:start + batch]
        out = test_net.forward()
        acc.append(float(out["accuracy"]))
        loss.append(float(out["loss"]))
    return float(np.mean(acc)), float(np.mean(loss))


def train_model(model: str, label: str, out_dir: str, iters: int, test_interval: int, train: tuple, test: tuple,
                seed: int, loss_every: int = 20) -> dict:
    """Trains one model with its committed solver, fed from ``train``; writes <model>.json and <model>.csv."""
    import pycaffe_norm as caffe
    from pycaffe_norm.solvers import read_solver_param

    solver_file = os.path.join("models", model, "%s_solver.prototxt" % model)
    param = read_solver_param(solver_file)
    if iters > param.max_iter:
        raise SystemExit("%s: --iters %d is past the solver's max_iter %d" % (model, iters, param.max_iter))
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    load_before = os.getloadavg()[0]
    solver = caffe.get_solver(solver_file)                       # random_seed 1701: the fillers' draws
    test_net = caffe.Net(param.net, caffe.TEST)
    test_net.share_with(solver.net)                              # Caffe's ShareTrainedLayersWith
    batch = solver.net.blobs["data"].data.shape[0]
    if test_net.blobs["data"].data.shape[0] != batch or len(test[0]) % batch:
        raise SystemExit("%s: the test digits (%d) must be whole batches of %d" % (model, len(test[0]), batch))
    x_train, y_train = train
    orders = _epoch_orders(len(x_train), seed)
    order, pos = next(orders), 0
    info = {"model": model, "label": label, "data": DATA_NOTE, "solver": solver_file, "iterations": iters,
            "batch": batch, "test_interval": test_interval, "test_digits": len(test[0]),
            "train_digits": len(x_train), "seed": seed, "base_lr": param.base_lr, "momentum": param.momentum,
            "weight_decay": param.weight_decay, "lr_policy": param.lr_policy, "random_seed": param.random_seed,
            "threads": {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "PCN_THREADS")},
            "test": [], "train_loss": [], "complete": False}
    train_wall = test_wall = 0.0
    losses: List[float] = []

    def write() -> None:
        now_wall, now_cpu = time.perf_counter() - t_wall, time.process_time() - t_cpu
        info.update(wall_s=round(now_wall, 2), cpu_s=round(now_cpu, 2), train_wall_s=round(train_wall, 2),
                    test_wall_s=round(test_wall, 2), loadavg_1min=[load_before, os.getloadavg()[0]],
                    ms_per_iter=round(1000 * train_wall / max(solver.iter, 1), 1))
        tmp = os.path.join(out_dir, "%s.json.tmp" % model)
        with open(tmp, "w") as f:
            json.dump(info, f, indent=1)
        os.replace(tmp, os.path.join(out_dir, "%s.json" % model))
        with open(os.path.join(out_dir, "%s.csv" % model), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["iteration", "test_accuracy", "test_loss"])
            w.writerows(info["test"])

    def run_test() -> None:
        nonlocal test_wall
        start = time.perf_counter()
        acc, loss = evaluate(test_net, test[0], test[1], batch)
        test_wall += time.perf_counter() - start
        info["test"].append([solver.iter, round(acc, 4), round(loss, 5)])
        write()
        print("%-27s iteration %5d  test accuracy %.3f  test loss %.4f  (%.0f s)"
              % (model, solver.iter, acc, loss, time.perf_counter() - t_wall), flush=True)

    run_test()
    while solver.iter < iters:
        if pos + batch > len(order):
            order, pos = next(orders), 0
        idx = order[pos:pos + batch]
        pos += batch
        solver.net.blobs["data"].data[...] = x_train[idx]
        solver.net.blobs["label"].data[...] = y_train[idx]
        start = time.perf_counter()
        try:
            solver.step(1)
        except caffe.errors.DivergenceError as e:
            info["diverged"] = "iteration %d: %s" % (solver.iter, e)
            print("%s diverged at iteration %d" % (model, solver.iter), flush=True)
            break
        train_wall += time.perf_counter() - start
        losses.append(float(solver.net.blobs["loss"].data))
        if solver.iter % loss_every == 0:
            info["train_loss"].append([solver.iter, round(float(np.mean(losses[-loss_every:])), 5)])
        if solver.iter % test_interval == 0 or solver.iter == iters:
            run_test()
    info["complete"] = solver.iter == iters and "diverged" not in info
    write()
    print("%-27s %7.1f s wall %7.1f s CPU  %.0f ms/iteration of training  (load average %.1f -> %.1f)"
          % (model, info["wall_s"], info["cpu_s"], info["ms_per_iter"], *info["loadavg_1min"]), flush=True)
    return info


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(m for m, _ in MODELS), help="comma-separated model folders")
    ap.add_argument("--iters", type=int, default=1500, help="training iterations per model (default %(default)s)")
    ap.add_argument("--test-interval", type=int, default=100, help="test every N iterations (default %(default)s)")
    ap.add_argument("--test-digits", type=int, default=1000,
                    help="the first N of the 1,000 test digits, a multiple of the batch of 100 (default %(default)s)")
    ap.add_argument("--seed", type=int, default=1701, help="seed of the training digits' order (default %(default)s)")
    ap.add_argument("--out", default="snapshots/cifar10_quick_digits",
                    help="folder for <model>.json and <model>.csv (default %(default)s, git-ignored)")
    args = ap.parse_args(argv)

    out_dir = os.path.abspath(args.out)
    os.chdir(ROOT)          # the solvers name their nets relative to the repository root, as in Caffe
    sys.path.insert(0, ROOT)
    os.makedirs(out_dir, exist_ok=True)
    labels: Dict[str, str] = dict(MODELS)
    models = [m for m in args.models.split(",") if m]
    for m in models:
        if not os.path.isdir(os.path.join("models", m)):
            ap.error("no folder models/%s" % m)
    x_train, y_train, mean = load_digits(os.path.join("data", "mnist", "mnist_train.h5"))
    x_test, y_test, _ = load_digits(os.path.join("data", "mnist", "mnist_test.h5"), mean)
    test = (x_test[:args.test_digits], y_test[:args.test_digits])
    for m in models:
        train_model(m, labels.get(m, m), out_dir, args.iters, args.test_interval, (x_train, y_train), test, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
