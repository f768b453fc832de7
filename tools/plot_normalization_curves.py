#!/usr/bin/env python
"""Test-accuracy curves of LeNet and its normalization variants, from ``pcn train`` logs (and of CIFAR-10-quick's).

Run from the repository root::

    # train every model with its committed solver (test_interval 500); logs in snapshots/normalization_logs/
    python tools/plot_normalization_curves.py --train
    # the figure in docs/: the same training with a test every 100 iterations (temporary solver copies)
    python tools/plot_normalization_curves.py --train --test-interval 100 --logs snapshots/normalization_curves

Without ``--train`` the logs already in ``--logs`` are parsed. The script reads the Caffe log lines
``Iteration N, Testing net (#0)``, ``Test net output #k: accuracy = Y`` and ``Iteration N, loss = L``, draws
test accuracy and training loss against the iteration, and prints a Markdown table (final and best test
accuracy, wall and CPU time of each run). Needs matplotlib (``pip install pycaffe_norm[plot]``).

``--cifar-digits DIR`` draws the second figure instead: CIFAR-10-quick and its variants trained on the bundled
MNIST digits (padded to 3x32x32; not CIFAR-10) by ``tools/train_cifar10_quick_digits.py``, from the
``<model>.json`` curves that tool writes into DIR::

    python tools/train_cifar10_quick_digits.py --iters 1500 --out snapshots/cifar10_quick_digits
    python tools/plot_normalization_curves.py --cifar-digits snapshots/cifar10_quick_digits
    # the figure in docs/ from the curves committed next to it
    python tools/plot_normalization_curves.py --cifar-digits docs/figures/normalization_cifar10_quick_digits
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from typing import Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (folder under models/, legend label); plain LeNet first, as the baseline.
MODELS: List[Tuple[str, str]] = [
    ("lenet", "LeNet (no normalization)"),
    ("lenet_bn", "BatchNorm + Scale"),
    ("lenet_lrn_across", "LRN ACROSS_CHANNELS"),
    ("lenet_lrn_within", "LRN WITHIN_CHANNEL"),
    ("lenet_mvn", "MVN"),
    ("lenet_normalization1", "Normalization1 (+ scalar Scale)"),
    ("lenet_grn", "GRN"),
    ("lenet_layernorm", "LayerNorm (C, H, W; affine)"),
    ("lenet_groupnorm", "GroupNorm (5 channels per group)"),
    ("lenet_instancenorm", "InstanceNorm (affine)"),
    ("lenet_rmsnorm", "RMSNorm (C, H, W)"),
    ("lenet_convnext_grn", "ConvNeXt-V2 GRN"),
    ("lenet_batchrenorm", "BatchNorm + Batch Renorm + Scale"),
]

# tools/train_cifar10_quick_digits.py's models, in the figure's order (the labels come from its JSON files).
CIFAR_MODELS: List[str] = ["cifar10_quick", "cifar10_quick_layernorm", "cifar10_quick_groupnorm",
                           "cifar10_quick_instancenorm", "cifar10_quick_rmsnorm", "cifar10_quick_convnext_grn",
                           "cifar10_quick_batchrenorm"]
CIFAR_FIGURE = os.path.join("docs", "figures", "normalization_cifar10_quick_digits_curves.png")

_TESTING = re.compile(r"Iteration (\d+), Testing net \(#(\d+)\)")
_TEST_OUT = re.compile(r"Test net output #\d+: (\S+) = ([-+0-9.eEinfa]+)")
# Newer Caffe writes "Iteration 100 (2.5 iter/s, 40s/100 iters), loss = ..."
_TRAIN_LOSS = re.compile(r"Iteration (\d+)(?: \([^)]*\))?, loss = ([-+0-9.eEinfa]+)")


def parse_log(text: str, output: str = "accuracy") -> Dict[str, List[Tuple[int, float]]]:
    """``{"test": [(iteration, value of output)], "loss": [(iteration, smoothed training loss)]}`` for net #0."""
    test: List[Tuple[int, float]] = []
    loss: List[Tuple[int, float]] = []
    current: Optional[int] = None
    for line in text.splitlines():
        m = _TESTING.search(line)
        if m:
            current = int(m.group(1)) if m.group(2) == "0" else None
            continue
        m = _TEST_OUT.search(line)
        if m:
            if current is not None and m.group(1) == output:
                test.append((current, float(m.group(2))))
            continue
        m = _TRAIN_LOSS.search(line)
        if m:
            loss.append((int(m.group(1)), float(m.group(2))))
            current = None
    return {"test": test, "loss": loss}


def solver_path(model: str) -> str:
    return os.path.join("models", model, "%s_solver.prototxt" % model)


def write_solver_copy(model: str, logs: str, test_interval: int) -> str:
    """A copy of the model's solver with another test_interval, its snapshots under ``logs``."""
    from pycaffe_norm.proto import caffe_pb2
    from pycaffe_norm.solvers import read_solver_param

    param = read_solver_param(solver_path(model))
    param.test_interval = test_interval
    param.net = os.path.join(ROOT, param.net) if not os.path.isabs(param.net) else param.net
    param.snapshot_prefix = os.path.abspath(os.path.join(logs, "snapshots", model))
    path = os.path.join(logs, "%s_solver_ti%d.prototxt" % (model, test_interval))
    from google.protobuf import text_format

    assert isinstance(param, caffe_pb2.SolverParameter)
    with open(path, "w") as f:
        f.write(text_format.MessageToString(param))
    return path


def train(model: str, logs: str, test_interval: Optional[int]) -> dict:
    """Runs ``pcn train`` on one model from the repository root; writes <model>.log and <model>.json."""
    solver = solver_path(model) if test_interval is None else write_solver_copy(model, logs, test_interval)
    log_path = os.path.join(logs, "%s.log" % model)
    load_before = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(log_path, "w") as f:
        rc = subprocess.call([sys.executable, "-m", "pycaffe_norm", "train", "--solver", solver],
                             cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if rc != 0:
        raise SystemExit("pcn train failed for %s (exit %d); see %s" % (model, rc, log_path))
    # The load average says whether other processes shared the CPUs (timings are only comparable without).
    info = {"model": model, "solver": solver, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "test_interval": test_interval, "loadavg_1min": [load_before, os.getloadavg()[0]]}
    with open(os.path.join(logs, "%s.json" % model), "w") as f:
        json.dump(info, f, indent=1)
    print("%-22s %7.1f s wall %7.1f s CPU  (load average %.1f -> %.1f)"
          % (model, wall, cpu, load_before, info["loadavg_1min"][1]), flush=True)
    return info


def plot(curves: Dict[str, dict], labels: Dict[str, str], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(12, 5))
    colours = iter(plt.get_cmap("tab20").colors)       # 13 curves: more than the default cycle's 10 colours
    for model, c in curves.items():
        style = dict(color="black", lw=2.2, ls="--") if model == "lenet" else dict(lw=1.3, color=next(colours))
        if c["test"]:
            it, acc = zip(*c["test"])
            ax_acc.plot(it, [100 * a for a in acc], label=labels.get(model, model), marker=".", ms=4, **style)
        if c["loss"]:
            it, loss = zip(*c["loss"])
            ax_loss.plot(it, loss, label=labels.get(model, model), **style)
    ax_acc.set_ylim(90, 98)
    ax_acc.axhline(96, color="grey", lw=0.8, ls=":")
    ax_acc.set_xlabel("iteration")
    ax_acc.set_ylabel("test accuracy, 1,000 digits (%)")
    ax_acc.set_title("Test accuracy (iteration 0, about 10%, is off the axis)", fontsize=10)
    ax_acc.grid(alpha=0.3)
    ax_acc.legend(fontsize=7, loc="lower right", ncol=2)
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("training loss (one batch of 64)")
    ax_loss.set_title("Training loss", fontsize=10)
    ax_loss.grid(alpha=0.3, which="both")
    fig.suptitle("LeNet on the bundled MNIST digits (4,000 train): normalization variants, pcn train", fontsize=11)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=90)
    print("wrote %s (%d bytes)" % (out, os.path.getsize(out)))


def table(curves: Dict[str, dict], logs: str) -> str:
    rows = ["| model | final test accuracy | best (iteration) | final training loss | wall time | CPU time |",
            "|---|---|---|---|---|---|"]
    for model, c in curves.items():
        info_path = os.path.join(logs, "%s.json" % model)
        info = json.load(open(info_path)) if os.path.exists(info_path) else {}
        final = "%.1f%% (iteration %d)" % (100 * c["test"][-1][1], c["test"][-1][0]) if c["test"] else "-"
        best = max(c["test"], key=lambda t: t[1]) if c["test"] else None
        best_s = "%.1f%% (%d)" % (100 * best[1], best[0]) if best else "-"
        loss = "%.4g" % c["loss"][-1][1] if c["loss"] else "-"
        wall = "%.0f s" % info["wall_s"] if "wall_s" in info else "-"
        cpu = "%.0f s" % info["cpu_s"] if "cpu_s" in info else "-"
        rows.append("| %s | %s | %s | %s | %s | %s |" % (model, final, best_s, loss, wall, cpu))
    return "\n".join(rows)


# --- CIFAR-10-quick on the digits: the JSON curves of tools/train_cifar10_quick_digits.py ----------------------

def load_cifar_digits(folder: str, models: List[str]) -> Dict[str, dict]:
    """``{model: the tool's JSON}`` for the models that have a ``<model>.json`` in ``folder``."""
    curves = {}
    for model in models:
        path = os.path.join(folder, "%s.json" % model)
        if os.path.exists(path):
            with open(path) as f:
                curves[model] = json.load(f)
        else:
            print("no curve for %s (%s); run tools/train_cifar10_quick_digits.py" % (model, path), file=sys.stderr)
    return curves


def table_cifar_digits(curves: Dict[str, dict], columns: Tuple[int, ...] = (100, 200, 500, 1000)) -> str:
    """Markdown: test accuracy at some iterations, the final and best, wall and CPU time of each run."""
    rows = ["| model | %s | final (iteration) | best (iteration) | wall time | CPU time | ms / iteration |"
            % " | ".join("iter %d" % c for c in columns),
            "|---|%s---|---|---|---|---|" % ("---|" * len(columns))]
    for model, c in curves.items():
        acc = {it: a for it, a, _ in c["test"]}
        final = "**%.1f%%** (%d)" % (100 * c["test"][-1][1], c["test"][-1][0]) if c["test"] else "-"
        if not c.get("complete", False):
            final += ", unfinished"
        best = max(c["test"], key=lambda t: t[1]) if c["test"] else None
        cells = ["%.1f%%" % (100 * acc[it]) if it in acc else "-" for it in columns]
        rows.append("| `%s` | %s | %s | %s | %.0f s | %.0f s | %.0f |"
                    % (model, " | ".join(cells), final, "%.1f%% (%d)" % (100 * best[1], best[0]) if best else "-",
                       c["wall_s"], c["cpu_s"], c["ms_per_iter"]))
    return "\n".join(rows)


def table_cifar_digits_all(curves: Dict[str, dict]) -> str:
    """Markdown: the test accuracy of every model at every test point (one row per iteration)."""
    its = sorted({t[0] for c in curves.values() for t in c["test"]})
    short = {m: m.replace("cifar10_quick_", "").replace("cifar10_quick", "plain") for m in curves}
    rows = ["| iteration | %s |" % " | ".join(short[m] for m in curves), "|---|%s" % ("---|" * len(curves))]
    for it in its:
        cells = []
        for c in curves.values():
            acc = {t[0]: t[1] for t in c["test"]}
            cells.append("%.1f" % (100 * acc[it]) if it in acc else "-")
        rows.append("| %d | %s |" % (it, " | ".join(cells)))
    return "\n".join(rows)


def plot_cifar_digits(curves: Dict[str, dict], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(12, 5))
    colours = iter(plt.get_cmap("tab10").colors)
    for model, c in curves.items():
        style = dict(color="black", lw=2.2, ls="--") if model == "cifar10_quick" else dict(lw=1.3, color=next(colours))
        if c["test"]:
            it, acc = [t[0] for t in c["test"]], [100 * t[1] for t in c["test"]]
            ax_acc.plot(it, acc, label=c.get("label", model), marker=".", ms=4, **style)
        if c["train_loss"]:
            it, loss = zip(*c["train_loss"])
            ax_loss.plot(it, loss, label=c.get("label", model), **style)
    any_c = next(iter(curves.values()))
    ax_acc.set_ylim(80, 100)
    ax_acc.set_xlabel("iteration (batch %d)" % any_c["batch"])
    ax_acc.set_ylabel("test accuracy, %d digits (%%)" % any_c["test_digits"])
    ax_acc.set_title("Test accuracy (iteration 0, 10 to 13%, is below the axis)", fontsize=10)
    ax_acc.grid(alpha=0.3)
    ax_acc.legend(fontsize=7, loc="lower right")
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("training loss (mean of 20 iterations)")
    ax_loss.set_title("Training loss", fontsize=10)
    ax_loss.grid(alpha=0.3, which="both")
    fig.suptitle("CIFAR-10-quick's architecture on the bundled MNIST digits (4,000 train; padded to 32x32, grey "
                 "repeated to 3 channels): NOT CIFAR-10", fontsize=11)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=90)
    print("wrote %s (%d bytes)" % (out, os.path.getsize(out)))


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--logs", default="snapshots/normalization_logs",
                    help="folder of the <model>.log files (written with --train; default %(default)s)")
    ap.add_argument("--train", action="store_true", help="run pcn train for every model first (sequentially)")
    ap.add_argument("--test-interval", type=int, default=None,
                    help="with --train: train from temporary solver copies with this test_interval")
    ap.add_argument("--models", default=None,
                    help="comma-separated model folders (default: the LeNet models, or with --cifar-digits the "
                         "CIFAR-10-quick models)")
    ap.add_argument("--out", default=None,
                    help="the PNG to write (default: docs/figures/normalization_lenet_curves.png, or with "
                         "--cifar-digits %s; 'none' to skip)" % CIFAR_FIGURE)
    ap.add_argument("--cifar-digits", default=None, metavar="DIR",
                    help="draw CIFAR-10-quick on the digits from DIR/<model>.json "
                         "(written by tools/train_cifar10_quick_digits.py)")
    args = ap.parse_args(argv)

    if args.cifar_digits is not None:
        if args.train or args.test_interval is not None:
            ap.error("--cifar-digits reads curves only; train them with tools/train_cifar10_quick_digits.py")
        folder = os.path.abspath(args.cifar_digits)
        os.chdir(ROOT)
        curves = load_cifar_digits(folder, [m for m in (args.models or ",".join(CIFAR_MODELS)).split(",") if m])
        if not curves:
            return 1
        print(table_cifar_digits(curves))
        print()
        print(table_cifar_digits_all(curves))
        out = args.out or CIFAR_FIGURE
        if out != "none":
            plot_cifar_digits(curves, out)
        return 0
    if args.models is None:
        args.models = ",".join(m for m, _ in MODELS)

    os.chdir(ROOT)          # the solvers name their nets and data relative to the repository root, as in Caffe
    sys.path.insert(0, ROOT)
    models = [m for m in args.models.split(",") if m]
    os.makedirs(args.logs, exist_ok=True)
    if args.test_interval is not None and not args.train:
        ap.error("--test-interval only applies with --train")
    if args.train:
        for model in models:
            train(model, args.logs, args.test_interval)
    curves = {}
    for model in models:
        path = os.path.join(args.logs, "%s.log" % model)
        if not os.path.exists(path):
            print("no log for %s (%s); run with --train" % (model, path), file=sys.stderr)
            continue
        with open(path) as f:
            curves[model] = parse_log(f.read())
    if not curves:
        return 1
    print(table(curves, args.logs))
    out = args.out or os.path.join("docs", "figures", "normalization_lenet_curves.png")
    if out != "none":
        plot(curves, dict(MODELS), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
