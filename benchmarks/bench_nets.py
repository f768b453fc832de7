#!/usr/bin/env python
"""pcn against PyTorch CPU on whole nets: forward, backward and a solver step, per layer, peak memory.

    python benchmarks/bench_nets.py [--nets lenet,cifar10_quick,cifar10_full,caffenet,resnet] [--rounds 5]
                                    [--reps 2] [--threads N] [--no-torch] [--no-layers] [--no-normalization]

Nets (random inputs in Input layers; the solver is SGD, momentum 0.9, weight decay 5e-4):

* ``lenet``: models/lenet (batch 64); ``cifar10_quick``: models/cifar10_quick (batch 100);
* ``cifar10_full``: Caffe's CIFAR-10 full (batch 100), LRN WITHIN_CHANNEL (local_size 3, alpha 5e-5);
* ``caffenet``: BVLC CaffeNet at batch 16 (227 x 227, LRN ACROSS_CHANNELS, groups, dropout);
* ``resnet``: a BatchNorm + Scale ResNet stack on 32 x 32 images (batch 64): three stages of two basic blocks.

Each net runs in two worker processes, one pcn and one PyTorch (never both in one process: their thread pools
would compete), which the parent alternates ``--rounds`` times, ``--reps`` iterations a turn, keeping the minimum
of each phase: the figure least disturbed by other processes on a shared machine. The PyTorch net is built from
the pcn net layer by layer with the same shapes and weights (ceil-mode pooling as Caffe's, the same LRN, BatchNorm
in training mode without affine plus Scale) and ``torch.set_num_threads`` equal to the BLAS threads. Printed per
net and phase: ms, pcn/PyTorch, the pcn arithmetic rate (2 FLOPs per multiply-add of Convolution and InnerProduct)
as a fraction of NumPy's float32 GEMM rate measured in the same run, and each worker's peak resident memory
(its interpreter and imports included). Then pcn's per-layer times and, from bench_normalization.py, the LRN and
BatchNorm layers against PyTorch's. It prints tables and asserts nothing.
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

PHASES = ("forward", "backward", "step")
# The workers' clock: wall time, or (--clock cpu) the process's CPU time, which a loaded machine disturbs far less
# (with one thread it is about the time the work takes on an idle core).
clock = time.perf_counter

_CONV = ('layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" convolution_param {{ '
         'num_output: {out} kernel_size: {k} stride: {s} pad: {p} group: {g} bias_term: {bias} '
         'weight_filler {{ type: "msra" }} }} }}\n')


def _conv(name, bottom, out, k, s=1, p=0, g=1, bias="true"):
    return _CONV.format(name=name, bottom=bottom, out=out, k=k, s=s, p=p, g=g, bias=bias)


def _relu(name, blob):
    return 'layer { name: "%s" type: "ReLU" bottom: "%s" top: "%s" }\n' % (name, blob, blob)


def _pool(name, bottom, method, k, s, p=0):
    return ('layer { name: "%s" type: "Pooling" bottom: "%s" top: "%s" pooling_param { pool: %s kernel_size: %d '
            'stride: %d pad: %d } }\n' % (name, bottom, name, method, k, s, p))


def _ip(name, bottom, out):
    return ('layer { name: "%s" type: "InnerProduct" bottom: "%s" top: "%s" inner_product_param { num_output: %d '
            'weight_filler { type: "gaussian" std: 0.01 } } }\n' % (name, bottom, name, out))


def _lrn(name, bottom, size, alpha, beta, within):
    region = " norm_region: WITHIN_CHANNEL" if within else ""
    return ('layer { name: "%s" type: "LRN" bottom: "%s" top: "%s" lrn_param { local_size: %d alpha: %g beta: %g%s '
            '} }\n' % (name, bottom, name, size, alpha, beta, region))


def _input(shape):
    dims = " ".join("dim: %d" % d for d in shape)
    return ('layer { name: "data" type: "Input" top: "data" input_param { shape { %s } } }\n'
            'layer { name: "label" type: "Input" top: "label" input_param { shape { dim: %d } } }\n'
            % (dims, shape[0]))


def _loss(bottom):
    return 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "%s" bottom: "label" top: "loss" }\n' % bottom


def cifar10_full() -> str:
    return ('name: "CIFAR10_full"\n' + _input((100, 3, 32, 32))
            + _conv("conv1", "data", 32, 5, p=2) + _pool("pool1", "conv1", "MAX", 3, 2) + _relu("relu1", "pool1")
            + _lrn("norm1", "pool1", 3, 5e-5, 0.75, True)
            + _conv("conv2", "norm1", 32, 5, p=2) + _relu("relu2", "conv2") + _pool("pool2", "conv2", "AVE", 3, 2)
            + _lrn("norm2", "pool2", 3, 5e-5, 0.75, True)
            + _conv("conv3", "norm2", 64, 5, p=2) + _relu("relu3", "conv3") + _pool("pool3", "conv3", "AVE", 3, 2)
            + _ip("ip1", "pool3", 10) + _loss("ip1"))


def caffenet() -> str:
    return ('name: "CaffeNet"\n' + _input((16, 3, 227, 227))
            + _conv("conv1", "data", 96, 11, s=4) + _relu("relu1", "conv1") + _pool("pool1", "conv1", "MAX", 3, 2)
            + _lrn("norm1", "pool1", 5, 1e-4, 0.75, False)
            + _conv("conv2", "norm1", 256, 5, p=2, g=2) + _relu("relu2", "conv2")
            + _pool("pool2", "conv2", "MAX", 3, 2) + _lrn("norm2", "pool2", 5, 1e-4, 0.75, False)
            + _conv("conv3", "norm2", 384, 3, p=1) + _relu("relu3", "conv3")
            + _conv("conv4", "conv3", 384, 3, p=1, g=2) + _relu("relu4", "conv4")
            + _conv("conv5", "conv4", 256, 3, p=1, g=2) + _relu("relu5", "conv5")
            + _pool("pool5", "conv5", "MAX", 3, 2)
            + _ip("fc6", "pool5", 4096) + _relu("relu6", "fc6")
            + 'layer { name: "drop6" type: "Dropout" bottom: "fc6" top: "fc6" dropout_param { dropout_ratio: 0.5 } }\n'
            + _ip("fc7", "fc6", 4096) + _relu("relu7", "fc7")
            + 'layer { name: "drop7" type: "Dropout" bottom: "fc7" top: "fc7" dropout_param { dropout_ratio: 0.5 } }\n'
            + _ip("fc8", "fc7", 1000) + _loss("fc8"))


def _bn_scale(name, blob):
    return ('layer { name: "%s_bn" type: "BatchNorm" bottom: "%s" top: "%s" }\n'
            'layer { name: "%s_scale" type: "Scale" bottom: "%s" top: "%s" scale_param { bias_term: true } }\n'
            % (name, blob, blob, name, blob, blob))


def resnet(blocks: int = 2) -> str:
    text = 'name: "ResNet_BN_Scale"\n' + _input((64, 3, 32, 32))
    text += _conv("conv0", "data", 16, 3, p=1, bias="false") + _bn_scale("conv0", "conv0") + _relu("relu0", "conv0")
    blob, width = "conv0", 16
    for stage, out in enumerate((16, 32, 64)):
        for b in range(blocks):
            name = "s%db%d" % (stage, b)
            stride = 2 if stage > 0 and b == 0 else 1
            text += _conv(name + "a", blob, out, 3, s=stride, p=1, bias="false") + _bn_scale(name + "a", name + "a")
            text += _relu(name + "a_relu", name + "a")
            text += _conv(name + "b", name + "a", out, 3, p=1, bias="false") + _bn_scale(name + "b", name + "b")
            short = blob
            if stride != 1 or out != width:
                short = name + "_proj"
                text += _conv(short, blob, out, 1, s=stride, bias="false") + _bn_scale(short, short)
            text += ('layer { name: "%s" type: "Eltwise" bottom: "%s" bottom: "%s" top: "%s" }\n'
                     % (name, name + "b", short, name))
            text += _relu(name + "_relu", name)
            blob, width = name, out
    text += ('layer { name: "pool" type: "Pooling" bottom: "%s" top: "pool" pooling_param { pool: AVE '
             'global_pooling: true } }\n' % blob)
    return text + _ip("fc", "pool", 10) + _loss("fc")


def _from_train_test(path: str, shape) -> str:
    """The TRAIN net of a train_test prototxt with its data layers replaced by Input layers of ``shape``."""
    from google.protobuf import text_format

    from pycaffe_norm import prototxt
    from pycaffe_norm.proto import caffe_pb2

    param = prototxt.read_text(os.path.join(ROOT, path), caffe_pb2.NetParameter(), "net prototxt")
    keep = caffe_pb2.NetParameter()
    text_format.Parse(_input(shape), keep)
    keep.name = param.name
    for lp in param.layer:
        if lp.type in ("Input", "Data", "HDF5Data", "ImageData", "MemoryData", "Accuracy"):
            continue
        if any(r.HasField("phase") and r.phase != caffe_pb2.TRAIN for r in lp.include):
            continue
        keep.layer.add().CopyFrom(lp)
    return text_format.MessageToString(keep)


# name: (prototxt builder, number of classes of the random labels)
NETS = {
    "lenet": (lambda: _from_train_test("models/lenet/lenet_train_test.prototxt", (64, 1, 28, 28)), 10),
    "cifar10_quick": (lambda: _from_train_test("models/cifar10_quick/cifar10_quick_train_test.prototxt",
                                               (100, 3, 32, 32)), 10),
    "cifar10_full": (cifar10_full, 10),
    "caffenet": (caffenet, 1000),
    "resnet": (resnet, 10),
}


# --- workers ------------------------------------------------------------------------------------------------
def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB. Linux: VmHWM (ru_maxrss would carry the parent's peak over
    the fork and exec that started this worker)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    try:
        import resource
    except ImportError:
        import psutil  # pip install 'pycaffe_norm[bench]'

        info = psutil.Process().memory_info()
        return getattr(info, "peak_wset", info.rss) / 2.0 ** 20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2.0 ** 20 if sys.platform == "darwin" else rss / 1024.0


def phase_flops(net) -> dict:
    """FLOPs of Convolution and InnerProduct layers: forward, and backward (weight and bottom gradients)."""
    fwd = bwd = 0.0
    for i, layer in enumerate(net.layers):
        if layer.type not in ("Convolution", "InnerProduct") or not layer.blobs:
            continue
        w = net.params[net.layer_params[i].name][0] if net.layer_params[i].name in net.params else layer.blobs[0]
        top = net.top_vecs[i][0]
        if layer.type == "Convolution":
            macs = top.count * (w.count // w.shape[0])
        else:
            n_out = w.shape[1] if layer.layer_param.inner_product_param.transpose else w.shape[0]
            macs = top.count * (w.count // n_out)
        fwd += 2.0 * macs
        if net.layer_need_backward[i]:
            bwd += 2.0 * macs if layer.param_propagate_down and layer.param_propagate_down[0] else 0.0
            bwd += 2.0 * macs if net.bottom_need_backward[i] and net.bottom_need_backward[i][0] else 0.0
    return {"forward": fwd, "backward": bwd, "step": fwd + bwd}


def _solver_param(net_text: str):
    from google.protobuf import text_format

    from pycaffe_norm.proto import caffe_pb2

    p = caffe_pb2.SolverParameter()
    text_format.Parse(net_text, p.net_param)
    p.base_lr, p.momentum, p.weight_decay, p.lr_policy = 0.001, 0.9, 5e-4, "fixed"
    p.max_iter, p.display, p.snapshot, p.snapshot_after_train = 10 ** 9, 0, 0, False
    p.random_seed = 1
    return p


class PcnWorker:
    def __init__(self, net_text: str, classes: int) -> None:
        import numpy as np

        import pycaffe_norm as caffe

        self.solver = caffe.get_solver(_solver_param(net_text))
        self.net = self.solver.net
        r = np.random.RandomState(1)
        for name in self.net.inputs:
            blob = self.net.blobs[name]
            blob.data[...] = r.randint(0, classes, blob.shape) if name == "label" else r.uniform(-1, 1, blob.shape)
        self.solver.step(2)

    def time(self, reps: int) -> dict:
        best = dict.fromkeys(PHASES, float("inf"))
        for _ in range(reps):
            t0 = clock()
            self.net.forward()
            t1 = clock()
            self.net.backward()
            t2 = clock()
            self.solver.step(1)
            t3 = clock()
            for k, v in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2)):
                best[k] = min(best[k], v)
        return best

    def layers(self, reps: int) -> list:
        net, names = self.net, [lp.name for lp in self.net.layer_params]
        best = [[float("inf"), float("inf")] for _ in names]
        for _ in range(reps):
            for i, name in enumerate(names):
                t = clock()
                net.forward(start=name, end=name)
                best[i][0] = min(best[i][0], clock() - t)
            for i in range(len(names) - 1, -1, -1):
                t = clock()
                net.backward(start=names[i], end=names[i])
                best[i][1] = min(best[i][1], clock() - t)
        return [(name, self.net.layers[i].type, f, b) for i, (name, (f, b)) in enumerate(zip(names, best))]

    def info(self) -> dict:
        return {"flops": phase_flops(self.net), "batch": self.net.blobs["data"].shape[0]}


class TorchWorker:
    """The pcn net's layers as PyTorch functional calls on tensors of the same shapes and weights."""

    def __init__(self, net_text: str, classes: int) -> None:
        import torch
        import torch.nn.functional as F  # noqa: N812

        import pycaffe_norm as caffe
        from pycaffe_norm.proto import caffe_pb2

        self.torch, self.F, self.pb = torch, F, caffe_pb2
        net = caffe.get_solver(_solver_param(net_text)).net   # for shapes, weights and wiring only
        self.classes = classes
        self.plan, params = [], []
        for lp, layer in zip(net.layer_params, net.layers):
            weights = [torch.tensor(b.data, requires_grad=True) for b in layer.blobs]
            if lp.type == "BatchNorm":
                weights = [torch.zeros(layer.blobs[0].shape), torch.ones(layer.blobs[1].shape)]
            else:
                params += weights
            self.plan.append((lp, layer, weights))
        r = torch.Generator().manual_seed(1)
        shape = net.blobs["data"].shape
        self.inputs = {"data": torch.rand(shape, generator=r) * 2 - 1,
                       "label": torch.randint(0, self.classes, (shape[0],), generator=r)}
        self.opt = torch.optim.SGD(params, lr=0.001, momentum=0.9, weight_decay=5e-4)
        for _ in range(2):
            self._step()

    def _layer(self, lp, layer, w, bottoms):
        F, x = self.F, bottoms[0] if bottoms else None
        t = lp.type
        if t == "Convolution":
            return F.conv2d(x, w[0], w[1] if len(w) > 1 else None, layer.stride, layer.pad, layer.dilation,
                            layer.group)
        if t == "Pooling":
            if layer.global_pooling:
                return F.adaptive_max_pool2d(x, 1) if layer.method == 0 else F.adaptive_avg_pool2d(x, 1)
            if layer.method == 0:
                return F.max_pool2d(x, layer.kernel, layer.stride, layer.pad, ceil_mode=layer.round_ceil)
            return F.avg_pool2d(x, layer.kernel, layer.stride, layer.pad, ceil_mode=layer.round_ceil,
                                count_include_pad=True)
        if t == "ReLU":
            return F.relu(x, inplace=lp.top[0] == lp.bottom[0])
        if t == "LRN":
            if layer.within:  # Caffe's WITHIN_CHANNEL: AVE pooling of x^2 (divisor size^2), then Power
                s = F.avg_pool2d(x * x, layer.size, 1, layer.size // 2, count_include_pad=True)
                return x * (1 + layer.alpha * s) ** -layer.beta
            return F.local_response_norm(x, layer.size, layer.alpha, layer.beta, layer.k)
        if t == "InnerProduct":
            return F.linear(x.flatten(1), w[0], w[1] if len(w) > 1 else None)
        if t == "BatchNorm":
            return F.batch_norm(x, w[0], w[1], training=True, momentum=0.001, eps=1e-5)
        if t == "Scale":
            y = x * w[0].view(1, -1, 1, 1)
            return y + w[1].view(1, -1, 1, 1) if len(w) > 1 else y
        if t == "Eltwise":
            return bottoms[0] + bottoms[1]
        if t == "Dropout":
            # not in place: autograd needs the ReLU output before it, which Caffe's in-place Dropout overwrites
            return F.dropout(x, lp.dropout_param.dropout_ratio, training=True)
        if t == "Split":
            return x
        if t == "SoftmaxWithLoss":
            return F.cross_entropy(x, bottoms[1])
        raise NotImplementedError("no PyTorch equivalent for layer type %r in this benchmark" % t)

    def _forward(self):
        blobs = dict(self.inputs)
        for lp, layer, w in self.plan:
            if lp.type == "Input":
                continue
            y = self._layer(lp, layer, w, [blobs[b] for b in lp.bottom])
            for top in lp.top:
                blobs[top] = y
        return blobs["loss"]

    def _step(self):
        self.opt.zero_grad(set_to_none=False)
        self._forward().backward()
        self.opt.step()

    def time(self, reps: int) -> dict:
        best = dict.fromkeys(PHASES, float("inf"))
        for _ in range(reps):
            self.opt.zero_grad(set_to_none=False)
            t0 = clock()
            loss = self._forward()
            t1 = clock()
            loss.backward()
            t2 = clock()
            self._step()
            t3 = clock()
            for k, v in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2)):
                best[k] = min(best[k], v)
        return best


def serve(kind: str, net: str, threads: int) -> int:
    """Worker main loop: one JSON answer line per command line (time R | layers R | info | peak | quit)."""
    if kind == "torch":
        import torch

        torch.set_num_threads(threads)
        worker = TorchWorker(NETS[net][0](), NETS[net][1])
    else:
        worker = PcnWorker(NETS[net][0](), NETS[net][1])
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd, *arg = line.split()
        if cmd == "time":
            out = worker.time(int(arg[0]))
        elif cmd == "layers":
            out = worker.layers(int(arg[0]))
        elif cmd == "info":
            out = worker.info()
        elif cmd == "peak":
            out = {"peak_mib": peak_rss_mib()}
        else:
            return 0
        print(json.dumps(out), flush=True)
    return 0


CLOCK_NAME = {time.perf_counter: "wall", time.process_time: "cpu"}


class Worker:
    def __init__(self, kind: str, net: str, threads: int, env: dict) -> None:
        cmd = [sys.executable, os.path.abspath(__file__), "--serve", kind, "--nets", net, "--threads", str(threads),
               "--clock", CLOCK_NAME[clock]]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        self.ask(None)

    def ask(self, cmd):
        if cmd is not None:
            self.proc.stdin.write(cmd + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("worker %s exited (status %s)" % (self.proc.args[3], self.proc.wait()))
        return json.loads(line)

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.wait()


def gemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    """NumPy's float32 n x n matrix-product rate (best of ``repeats``, on ``clock``), GFLOP/s."""
    import numpy as np

    r = np.random.RandomState(0)
    a, b = r.rand(n, n).astype(np.float32), r.rand(n, n).astype(np.float32)
    c = np.empty((n, n), np.float32)
    np.matmul(a, b, out=c)
    best = float("inf")
    for _ in range(repeats):
        t = clock()
        np.matmul(a, b, out=c)
        best = min(best, clock() - t)
    return 2.0 * n ** 3 / best / 1e9


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default=",".join(NETS), help="comma-separated subset of: %s" % ", ".join(NETS))
    ap.add_argument("--rounds", type=int, default=5, help="turns per framework, alternating (default: 5)")
    ap.add_argument("--reps", type=int, default=2, help="iterations per turn (default: 2)")
    ap.add_argument("--threads", type=int, help="BLAS / torch / pcn threads (default: the CPU count)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall time (default) or process CPU time (steadier on a shared machine; use with --threads 1)")
    ap.add_argument("--no-torch", action="store_true", help="pcn only")
    ap.add_argument("--no-layers", action="store_true", help="skip the per-layer table")
    ap.add_argument("--no-normalization", action="store_true", help="skip the LRN/BatchNorm layer comparison")
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    threads = args.threads or os.cpu_count() or 1
    global clock
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.serve:
        return serve(args.serve, args.nets, threads)
    nets = [n for n in args.nets.split(",") if n]
    unknown = [n for n in nets if n not in NETS]
    if unknown:
        ap.error("unknown net(s) %s; choose from %s" % (", ".join(unknown), ", ".join(NETS)))
    use_torch = not args.no_torch
    if use_torch:
        try:
            import torch  # noqa: F401 - only to know whether it is there; the workers use it
        except ImportError:
            print("PyTorch is not importable: pcn only (pip install torch for the comparison)")
            use_torch = False
    env = dict(os.environ)
    if args.threads:
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "PCN_THREADS"):
            env[var] = str(args.threads)
        os.environ.update({k: env[k] for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")})
    import numpy as np

    gemm = gemm_gflops()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print("pcn vs PyTorch: %s, %d CPU(s), load average %.1f, Python %s, NumPy %s, %d thread(s), %s time; %d rounds "
          "x %d reps, minimum; NumPy float32 GEMM %.1f GFLOP/s%s"
          % (platform.machine(), os.cpu_count() or 0, load, platform.python_version(), np.__version__, threads,
             args.clock, args.rounds, args.reps, gemm,
             ", OPENBLAS_CORETYPE=" + env["OPENBLAS_CORETYPE"] if env.get("OPENBLAS_CORETYPE") else ""))
    header = "%-14s %5s %-9s %9s %9s %7s %8s %7s %9s %9s" % ("net", "batch", "phase", "pcn ms", "torch ms", "ratio",
                                                          "GFLOP/s", "% GEMM", "pcn MiB", "torch MiB")
    print(header)
    print("-" * len(header))
    layer_tables = []
    for name in nets:
        pcn = Worker("pcn", name, threads, env)
        torch_w = Worker("torch", name, threads, env) if use_torch else None
        best = {k: dict.fromkeys(PHASES, float("inf")) for k in ("pcn", "torch")}
        try:
            for _ in range(args.rounds):
                for kind, w in (("pcn", pcn), ("torch", torch_w)):
                    if w is not None:
                        for ph, v in w.ask("time %d" % args.reps).items():
                            best[kind][ph] = min(best[kind][ph], v)
            info = pcn.ask("info")
            if not args.no_layers:
                layer_tables.append((name, pcn.ask("layers %d" % max(2, args.reps))))
            peaks = [pcn.ask("peak")["peak_mib"], torch_w.ask("peak")["peak_mib"] if torch_w else float("nan")]
        finally:
            pcn.close()
            if torch_w is not None:
                torch_w.close()
        for ph in PHASES:
            p, t = best["pcn"][ph] * 1e3, best["torch"][ph] * 1e3
            rate = info["flops"][ph] / 1e9 / (p / 1e3)
            print("%-14s %5d %-9s %9.2f %9s %7s %8.1f %6.1f%% %9.0f %9s"
                  % (name, info["batch"], ph, p, "%.2f" % t if torch_w else "-",
                     "%.2fx" % (p / t) if torch_w else "-", rate, 100 * rate / gemm, peaks[0],
                     "%.0f" % peaks[1] if torch_w else "-"))
    print("ratio = pcn / PyTorch (minimum of each); step = forward + backward + SGD update through the solver; "
          "MiB = peak resident memory of that net's worker process")
    for name, rows in layer_tables:
        print("\npcn per layer, %s (ms, minimum): " % name + ", ".join(
            "%s %.2f/%.2f" % (lname, f * 1e3, b * 1e3) for lname, ltype, f, b in rows
            if ltype not in ("Input", "Split") and f + b > 5e-5))
    if not args.no_normalization:
        print()
        cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "bench_normalization.py"), "--layers",
               "LRN,BatchNorm TRAIN", "--shapes", "100x32x16x16,100x32x8x8,16x96x27x27"]
        if not use_torch:
            cmd.append("--no-torch")
        sys.stdout.flush()
        subprocess.run(cmd, env=env, cwd=ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
