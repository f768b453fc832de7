#!/usr/bin/env python
"""Forward + backward time of pcn's normalization layers on CIFAR-sized float32 blobs, next to the equivalent
PyTorch CPU operation when torch is importable.

    python benchmarks/bench_normalization.py [--shapes 100x32x16x16,100x32x32x32] [--repeat 15]
    python benchmarks/bench_normalization.py --layers LRN,BatchNorm   # the cases whose names contain these

Each case times one ``forward`` and one ``backward`` (bottom gradient, and parameter gradients where the layer has
parameters) and reports the best (minimum) of ``--repeat`` runs after two warm-up runs, which is the figure least
disturbed by other processes, and also the ratio of the medians; the PyTorch side times ``y = op(x); y.backward(dy)``
the same way, alternating with pcn's forward + backward in turns of ``TURN`` runs (both see the same load), with
``torch.set_num_threads`` set to the number of threads NumPy's BLAS uses. ``--threads N`` gives pcn's pool
(``PCN_THREADS``), BLAS and PyTorch N threads each; ``--clock cpu`` times with the process's CPU time instead of the
wall clock (steadier on a shared machine; with ``--threads 1`` it is the time of the one thread that works). The pcn
layers run in Caffe's semantics (BatchNorm in TRAIN also updates its running sums); the PyTorch equivalents are
listed in ``CASES``. The forward outputs of both are compared (``max|diff|``) so that the pairs are known to compute
the same thing. Targets from the project: LRN at most 0.5x PyTorch's ``local_response_norm``, BatchNorm at most 1.5x
PyTorch's ``batch_norm``, and LayerNorm, GroupNorm, InstanceNorm, RMSNorm, ConvNeXtGRN and Batch Renormalization at
most 1.5x their PyTorch operations. It prints a table and asserts nothing.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time
from typing import Callable, List, Optional, Tuple

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from google.protobuf import text_format  # noqa: E402

from pycaffe_norm.blob import Blob  # noqa: E402
from pycaffe_norm.layers import create_layer  # noqa: E402
from pycaffe_norm.proto import caffe_pb2  # noqa: E402

# (name, pcn layer prototxt, target ratio pcn/torch or None, torch equivalent (a key of _torch_ops))
CASES: List[Tuple[str, str, Optional[float], str]] = [
    ("BatchNorm TRAIN", 'type: "BatchNorm"', 1.5, "batch_norm"),
    ("Scale (bias_term)", 'type: "Scale" scale_param { bias_term: true }', None, "scale"),
    ("LRN ACROSS_CHANNELS", 'type: "LRN" lrn_param { local_size: 5 alpha: 1 beta: 0.75 k: 1 }', 0.5,
     "local_response_norm"),
    ("LRN WITHIN_CHANNEL", 'type: "LRN" lrn_param { local_size: 5 alpha: 1 beta: 0.75 norm_region: WITHIN_CHANNEL }',
     None, "lrn_within"),
    ("MVN", 'type: "MVN"', None, "mvn"),
    ("Normalization1 (L2)", 'type: "Normalization1"', None, "normalize_sample"),
    ("GRN", 'type: "GRN"', None, "normalize_channels"),
    ("Normalize (per position, per-channel scale)",
     'type: "Normalize" norm_param { across_spatial: false channel_shared: false '
     'scale_filler { type: "constant" value: 20 } }', None, "normalize_scaled"),
    ("LayerNorm (C, H, W; affine)", 'type: "LayerNorm" layer_norm_param { axis: 1 epsilon: 1e-5 '
     'elementwise_affine: true }', 1.5, "layer_norm"),
    ("GroupNorm (8 groups, affine)", 'type: "GroupNorm" group_norm_param { num_groups: 8 }', 1.5, "group_norm"),
    ("InstanceNorm (affine, running stats)", 'type: "InstanceNorm" instance_norm_param { affine: true '
     'track_running_stats: true }', 1.5, "instance_norm"),
    ("RMSNorm (C, H, W; weight)", 'type: "RMSNorm" rms_norm_param { axis: 1 }', 1.5, "rms_norm"),
    ("ConvNeXtGRN", 'type: "ConvNeXtGRN" convnext_grn_param { gamma_filler { type: "constant" value: 0.5 } '
     'beta_filler { type: "constant" value: 0.1 } }', 1.5, "convnext_grn"),
    ("BatchNorm TRAIN, Batch Renormalization", 'type: "BatchNorm" batch_norm_param { renorm: true }', 1.5,
     "batch_renorm"),
]

# What each PyTorch column computes (printed under the table).
TORCH_DOC = {
    "batch_norm": "F.batch_norm(x, running_mean, running_var, training=True, eps=1e-5) (no affine)",
    "scale": "x * w[None, :, None, None] + b[None, :, None, None] (w, b require grad)",
    "local_response_norm": "F.local_response_norm(x, 5, alpha=1, beta=0.75, k=1)",
    "lrn_within": "x * (1 + avg_pool2d(x^2, 5, stride 1, pad 2, count_include_pad))^-0.75 (no torch op)",
    "mvn": "(x - mean) / (std + 1e-9) over H, W, written with torch ops (F.instance_norm puts eps in the sqrt)",
    "normalize_sample": "F.normalize(x.flatten(1), p=2, dim=1, eps=0)",
    "normalize_channels": "F.normalize(x, p=2, dim=1, eps=0)",
    "normalize_scaled": "x / sqrt(sum_c x^2 + 1e-10) * w[None, :, None, None] (w requires grad)",
    "layer_norm": "F.layer_norm(x, x.shape[1:], w, b, eps=1e-5) (w, b require grad)",
    "group_norm": "F.group_norm(x, 8, w, b, eps=1e-5) (w, b require grad)",
    "instance_norm": "F.instance_norm(x, running_mean, running_var, w, b, use_input_stats=True) (w, b require grad)",
    "rms_norm": "F.rms_norm(x, x.shape[1:], w, eps=1e-5) (w requires grad)",
    "convnext_grn": "ConvNeXt-V2's GRN: gamma * (x * Nx) + beta + x, Nx from torch.norm over H, W (gamma, beta require "
                    "grad)",
    "batch_renorm": "Ioffe's algorithm in torch ops, r and d detached, running statistics 0 and 1 (pcn's are the "
                    "data's, so max|diff| is not 0)",
}


def blas_threads() -> Tuple[int, str]:
    """The number of threads NumPy's BLAS uses, and how it was found."""
    try:
        from threadpoolctl import threadpool_info

        blas = [i for i in threadpool_info() if i.get("internal_api") in ("openblas", "mkl", "blis")]
        if blas:
            return int(blas[0]["num_threads"]), "threadpoolctl"
    except ImportError:
        pass
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(var, "").strip().isdigit():
            return int(os.environ[var]), var
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return n, "usable CPUs (OpenBLAS's default)"


CLOCK = time.perf_counter


def _median_ms(fn: Callable[[], None], repeat: int, warmup: int = 2) -> Tuple[float, float]:
    """(median, best) time of ``fn`` in ms."""
    return _alternating_ms([fn], repeat, warmup)[0]


# Runs of one function back to back per turn when several alternate. Measured on the 2-core VM (GroupNorm
# 100x32x16x16): after PyTorch's turn, pcn's pooled layers run at one core's speed for 10-20 ms (PyTorch's OpenMP
# threads spin on the other core) and the first run takes 4x as long; afterwards, as in a training loop, they run
# at two cores' speed (0.59 against 0.93 ms). Turns of 25 runs let each framework reach the state it has in a
# training loop; the best time is that state's, the median still includes the first runs of each turn.
TURN = 25


def _alternating_ms(fns: List[Callable[[], None]], repeat: int, warmup: int = 2) -> List[Tuple[float, float]]:
    """(median, best) time in ms of each of ``fns`` over ``repeat`` timed runs each; with several functions they
    take turns of ``TURN`` consecutive runs (each turn starting with one untimed run)."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: List[List[float]] = [[] for _ in fns]
    turn = TURN if len(fns) > 1 else repeat
    while len(times[0]) < repeat:
        for fn, ts in zip(fns, times):
            if len(fns) > 1:
                fn()
            for _ in range(min(turn, repeat - len(ts))):
                t = CLOCK()
                fn()
                ts.append((CLOCK() - t) * 1e3)
    return [(statistics.median(ts), min(ts)) for ts in times]


def pcn_case(spec: str, x: np.ndarray, dy: np.ndarray):
    """A pcn layer set up on ``x`` in TRAIN; returns (run forward+backward, run forward, run backward, top)."""
    param = caffe_pb2.LayerParameter()
    text_format.Parse('name: "bench" ' + spec, param)
    layer = create_layer(param, caffe_pb2.TRAIN)
    bottom, top = Blob(x.shape), Blob(x.shape)
    bottom.data[...] = x
    layer.initialize([bottom], [top])
    top.diff[...] = dy

    def fwd():
        layer.forward([bottom], [top])

    def bwd():
        layer.backward([top], [True], [bottom])

    def both():
        fwd()
        bwd()

    return both, fwd, bwd, top


def _torch_ops(torch, shape: Tuple[int, ...]):
    F = torch.nn.functional
    c = shape[1]
    w = torch.full((c,), 20.0, requires_grad=True)
    s = torch.ones(c, requires_grad=True)
    b = torch.zeros(c, requires_grad=True)
    rm, rv = torch.zeros(c), torch.ones(c)

    def lrn_within(x):
        p = F.avg_pool2d(x * x, 5, stride=1, padding=2, count_include_pad=True)
        return x * (1 + p).pow(-0.75)

    def mvn(x):
        xc = x - x.mean(dim=(2, 3), keepdim=True)
        return xc / ((xc * xc).mean(dim=(2, 3), keepdim=True).sqrt() + 1e-9)

    irm, irv = torch.zeros(c), torch.ones(c)
    wl = torch.ones(shape[1:], requires_grad=True)
    bl = torch.zeros(shape[1:], requires_grad=True)
    gamma, beta = torch.full((c,), 0.5, requires_grad=True), torch.full((c,), 0.1, requires_grad=True)

    def convnext_grn(x):
        gx = torch.norm(x, p=2, dim=(2, 3), keepdim=True)
        nx = gx / (gx.mean(dim=1, keepdim=True) + 1e-6)
        return gamma[None, :, None, None] * (x * nx) + beta[None, :, None, None] + x

    def batch_renorm(x):
        mu, var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)
        sigma = (var + 1e-5).sqrt()
        r = torch.clamp((sigma / (rv + 1e-5).sqrt()).detach(), 1 / 3.0, 3.0)
        d = torch.clamp(((mu - rm) / (rv + 1e-5).sqrt()).detach(), -5.0, 5.0)
        return ((x - mu[None, :, None, None]) / sigma[None, :, None, None] * r[None, :, None, None]
                + d[None, :, None, None])

    return {
        "layer_norm": lambda x: F.layer_norm(x, x.shape[1:], wl, bl, eps=1e-5),
        "group_norm": lambda x: F.group_norm(x, 8, s, b, eps=1e-5),
        "instance_norm": lambda x: F.instance_norm(x, irm, irv, s, b, use_input_stats=True),
        "rms_norm": lambda x: F.rms_norm(x, x.shape[1:], wl, eps=1e-5),
        "convnext_grn": convnext_grn,
        "batch_renorm": batch_renorm,
        "batch_norm": lambda x: F.batch_norm(x, rm, rv, training=True, momentum=0.001, eps=1e-5),
        "scale": lambda x: x * s[None, :, None, None] + b[None, :, None, None],
        "local_response_norm": lambda x: F.local_response_norm(x, 5, alpha=1.0, beta=0.75, k=1.0),
        "lrn_within": lrn_within,
        "mvn": mvn,
        "normalize_sample": lambda x: F.normalize(x.flatten(1), p=2.0, dim=1, eps=0.0).view_as(x),
        "normalize_channels": lambda x: F.normalize(x, p=2.0, dim=1, eps=0.0),
        "normalize_scaled": lambda x: x / ((x * x).sum(dim=1, keepdim=True) + 1e-10).sqrt() * w[None, :, None, None],
    }


def torch_case(torch, op: Callable, x: np.ndarray, dy: np.ndarray):
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    dyt = torch.from_numpy(dy.copy())
    out = {}

    def both():
        xt.grad = None
        y = op(xt)
        y.backward(dyt)
        out["y"] = y

    both()
    return both, lambda: out["y"].detach().numpy()


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="100x32x16x16,100x32x32x32", help="comma-separated NxCxHxW")
    ap.add_argument("--repeat", type=int, default=15, help="timed runs per case (median reported)")
    ap.add_argument("--layers", default="", help="comma-separated substrings of the case names to run")
    ap.add_argument("--no-torch", action="store_true", help="time pcn only")
    ap.add_argument("--threads", type=int, default=0,
                    help="threads for pcn's pool, BLAS and PyTorch (default: PCN_THREADS and BLAS's own)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall clock, or the process's CPU time (use with --threads 1)")
    args = ap.parse_args(argv)

    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    limits = None
    if args.threads > 0:
        os.environ["PCN_THREADS"] = str(args.threads)
        try:
            from threadpoolctl import threadpool_limits
            limits = threadpool_limits(limits=args.threads, user_api="blas")  # noqa: F841 (held until exit)
        except ImportError:
            pass
    from pycaffe_norm import parallel

    threads, how = blas_threads()
    torch = None
    if not args.no_torch:
        try:
            import torch
            torch.set_num_threads(threads)
        except ImportError:
            torch = None
    from pycaffe_norm.layers import numba_kernels

    kernels = "Numba %s" % __import__("numba").__version__ if numba_kernels.available() else "NumPy passes"
    print("NumPy %s, BLAS threads %d (%s), pcn pool threads %d, row-norm layers on %s; %s; Python %s; %s; %s clock" % (
        np.__version__, threads, how, parallel.num_threads(), kernels, "torch %s, %d threads" % (
            torch.__version__, torch.get_num_threads()) if torch else "torch not importable",
        platform.python_version(), platform.processor() or platform.machine(), args.clock))
    wanted = [w.strip().lower() for w in args.layers.split(",") if w.strip()]
    cases = [c for c in CASES if not wanted or any(w in c[0].lower() for w in wanted)]

    header = "%-44s %-15s %8s %8s %8s %9s %7s %9s %12s %9s" % (
        "layer", "shape", "pcn fwd", "pcn bwd", "pcn f+b", "torch f+b", "ratio", "(median)", "target", "max|diff|")
    print(header)
    print("-" * len(header))
    # pcn's layers run as inside a Net's pass (net.py): BLAS on one thread per call while pcn's pool splits the
    # batch. Switching BLAS's threads on and off around every layer call instead leaves OpenBLAS's threads spinning
    # on the cores that PyTorch's threads (and pcn's) need next (PyTorch's group_norm then took 17 ms, not 0.7).
    context = contextlib.ExitStack()
    context.enter_context(parallel.pass_context())
    rs = np.random.RandomState(0)
    for shape_text in args.shapes.split(","):
        shape = tuple(int(d) for d in shape_text.lower().split("x"))
        x = rs.randn(*shape).astype(np.float32)
        dy = rs.randn(*shape).astype(np.float32)
        for name, spec, target, torch_key in cases:
            both, fwd, bwd, top = pcn_case(spec, x, dy)
            if torch is not None:
                op = _torch_ops(torch, shape)[torch_key]
                t_run, y_of = torch_case(torch, op, x, dy)
                (med_both, t_both), (med_torch, t_torch) = _alternating_ms([both, t_run], args.repeat)
            else:
                med_both, t_both = _median_ms(both, args.repeat)
            _, t_fwd = _median_ms(fwd, args.repeat)
            # backward alone: forward once so every cache matches, then time backward only
            fwd()
            _, t_bwd = _median_ms(bwd, args.repeat)
            row = "%-44s %-15s %8.2f %8.2f %8.2f" % (name, shape_text, t_fwd, t_bwd, t_both)
            if torch is not None:
                fwd()   # pcn's forward on the same input (BatchNorm: batch statistics either way)
                diff = float(np.abs(top.data - y_of()).max())
                ratio = t_both / t_torch
                verdict = ""
                if target is not None:
                    verdict = ("<= %.1fx %s" % (target, "ok" if ratio <= target else "MISS"))
                row += " %9.2f %6.2fx %8.2fx %12s %9.1e" % (t_torch, ratio, med_both / med_torch, verdict, diff)
            print(row, flush=True)
    context.close()
    print("times in ms (%s clock), best of %d; ratio = pcn f+b / torch f+b (best; then medians); target: on the best"
          % (args.clock, args.repeat))
    if torch is not None:
        print("PyTorch equivalents:")
        for _, _, _, key in cases:
            print("  %-20s %s" % (key, TORCH_DOC[key]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
