"""A bounded mutation fuzzer: pcn must answer every damaged input with a result or a one-line error, never a traceback.

Text cases mutate the bundled models and solvers (line deletions, duplications and swaps; numbers, enum values and
strings replaced); binary cases flip bits in and truncate a .caffemodel, a .caffemodel.h5, .solverstate and
.solverstate.h5 files, a .binaryproto and an HDF5 data file. Each case runs the command line in this process
(``pcn time``, ``pcn test``, ``pcn train``) or ``caffe.io.load_binaryproto`` inside a copy of models/ under tmp_path,
so nothing is written into the repository. Anything but exit status 0 or 2 with a ``pcn: error:`` line (an uncaught
exception) is a finding.

The default run is small and seeded. A longer one (docs/reliability.md)::

    PCN_FUZZ_CASES=3000 PCN_FUZZ_SEED=1 PCN_FUZZ_HEAVY=1 python -m pytest -q tests/test_fuzz.py
"""
from __future__ import annotations

import faulthandler
import os
import pathlib
import random
import re
import shutil
import signal
import sys
import time
import traceback

import h5py
import numpy as np
import pytest

import pycaffe_norm as caffe
from pycaffe_norm import blob
from pycaffe_norm.cli import main
from pycaffe_norm.errors import PcnError

ROOT = pathlib.Path(__file__).resolve().parent.parent
SEED = int(os.environ.get("PCN_FUZZ_SEED", "8"))
CASES = int(os.environ.get("PCN_FUZZ_CASES", "100"))
# CPU seconds (not wall time: the machine may be shared) after which a case is stopped and not judged.
CASE_SECONDS = float(os.environ.get("PCN_FUZZ_CASE_SECONDS", "3"))
# Bundled models too slow for the default run (seconds a case); PCN_FUZZ_HEAVY=1 includes them.
HEAVY = () if os.environ.get("PCN_FUZZ_HEAVY") == "1" else ("ssd_tiny",)
# Wall seconds after which a case that hangs inside C code (where the CPU timer cannot stop it) ends the run
# with the stacks of all threads, instead of hanging the test suite.
HANG_SECONDS = 120
# Blobs beyond this are refused by the memory estimate, so mutated shapes stay cheap on a shared CI machine.
MEMORY_CAP = 256 << 20

# Bundled files shrunk before mutation (small batches, few iterations), so a case takes a fraction of a second.
SHRINK = [(re.compile(r"^(\s*batch_size:\s*)\d+", re.M), r"\g<1>2"),
          (re.compile(r"^(\s*test_iter:\s*)\d+", re.M), r"\g<1>1"),
          (re.compile(r"^(\s*max_iter:\s*)\d+", re.M), r"\g<1>2"),
          (re.compile(r"^(\s*(?:test_interval|snapshot|display|stepsize):\s*)[1-9]\d*", re.M), r"\g<1>2"),
          (re.compile(r"(shape:?\s*\{\s*dim:\s*)\d+"), r"\g<1>2")]

NUMBERS = ["0", "-1", "1", "2", "3", "7", "0.5", "-0.5", "1e6", "1e30", "-1e30", "1e-30", "nan", "inf", "-inf",
           "2147483647", "2147483648", "4294967296", "99999999999", "1.5", "33"]
ENUMS = ["MAX", "AVE", "STOCHASTIC", "TRAIN", "TEST", "CPU", "GPU", "HDF5", "BINARYPROTO", "LMDB", "LEVELDB",
         "CAFFE", "CUDNN", "DEFAULT", "ACROSS_CHANNELS", "WITHIN_CHANNEL", "SUM", "PROD", "FULL", "VALID",
         "BATCH_SIZE", "NONE", "NOPE", "SGD"]
# No string names a writable place outside the workspace (/proc refuses folders, even to root).
STRINGS = ['""', '"x"', '"data"', '"label"', '"loss"', '"conv1"', '"ip1"', '"pool1"', '"Convolution"', '"ReLU"',
           '"InnerProduct"', '"Pooling"', '"SoftmaxWithLoss"', '"Input"', '"Accuracy"', '"BatchNorm"', '"LRN"',
           '"Split"', '"Python"', '"gaussian"', '"xavier"', '"constant"', '"step"', '"sigmoid"', '"poly"',
           '"Adam"', '"AdaDelta"', '"Nesterov"', '"nope.txt"', '"sub/dir/x"', '"/proc/nonexistent/x"', '"data/mnist"',
           '"\\xff\\x00"']


class CaseTimeout(BaseException):
    """A case ran past its time: not a finding (a mutated max_iter may ask for a long training)."""


def _on_alarm(signum, frame):
    raise CaseTimeout()


# ----------------------------------------------------------------------------------------------------
# mutations
# ----------------------------------------------------------------------------------------------------

def mutate_text(text: str, rng: random.Random) -> tuple:
    lines = text.split("\n")
    done = []
    wanted = rng.choice([1, 1, 2, 3])
    while len(done) < wanted:
        i = rng.randrange(len(lines))
        line = lines[i]
        kind = rng.choice(["delete", "duplicate", "swap", "number", "number", "enum", "string", "string"])
        if kind == "delete":
            del lines[i]
        elif kind == "duplicate":
            lines.insert(i, line)
        elif kind == "swap" and i + 1 < len(lines):
            lines[i], lines[i + 1] = lines[i + 1], line
        else:
            pattern = {"number": r"(?<![\w.\"])-?\d+(?:\.\d+)?(?:e[+-]?\d+)?(?![\w\"])",
                       "enum": r"(?<=:\s)[A-Z][A-Z0-9_]+\b", "string": r'"[^"\n]*"'}.get(kind)
            spots = list(re.finditer(pattern, line)) if pattern else []
            if not spots:
                continue
            m = rng.choice(spots)
            new = rng.choice({"number": NUMBERS, "enum": ENUMS, "string": STRINGS}[kind])
            lines[i] = line[:m.start()] + new + line[m.end():]
            kind = "%s %s->%s" % (kind, m.group(0), new)
        done.append("%s@%d" % (kind, i + 1))
        if not lines:
            lines = [""]
    return "\n".join(lines), ", ".join(done)


def mutate_binary(data: bytes, rng: random.Random) -> tuple:
    if rng.random() < 0.35 or len(data) < 16:
        cut = rng.randrange(len(data) + 1)
        return data[:cut], "truncate@%d/%d" % (cut, len(data))
    out = bytearray(data)
    region = rng.choice(["anywhere", "head", "tail"])
    flips = []
    for _ in range(rng.choice([1, 2, 4, 8, 32])):
        if region == "head":
            pos = rng.randrange(min(len(out), 2048))
        elif region == "tail":
            pos = len(out) - 1 - rng.randrange(min(len(out), 2048))
        else:
            pos = rng.randrange(len(out))
        bit = rng.randrange(8)
        out[pos] ^= 1 << bit
        flips.append(pos)
    return bytes(out), "bitflip-%s@%s" % (region, ",".join(map(str, flips[:4])))


# ----------------------------------------------------------------------------------------------------
# the workspace: shrunk copies of the bundled files and binary files to damage
# ----------------------------------------------------------------------------------------------------

TINY_NET = """name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 4 dim: 6 } shape { dim: 4 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1" inner_product_param { num_output: 5
  weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "bn" type: "BatchNorm" bottom: "ip1" top: "bn" }
layer { name: "ip2" type: "InnerProduct" bottom: "bn" top: "ip2" inner_product_param { num_output: 3
  weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    ws = tmp_path_factory.mktemp("fuzz")
    for path in (ROOT / "data").rglob("*"):   # real folders, linked files: a snapshot_prefix mutated to
        if path.is_file():                      # "data/mnist" writes into the workspace, not the repository
            target = ws / path.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(path, target)
    texts = []
    for path in sorted((ROOT / "models").glob("*/*.prototxt")):
        if path.parent.name in HEAVY:
            continue
        text = path.read_text()
        for pattern, repl in SHRINK:
            text = pattern.sub(repl, text)
        target = ws / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        texts.append(str(target.relative_to(ws)))
    old = os.getcwd()
    os.chdir(ws)
    try:
        deploy = "models/lenet/lenet_deploy.prototxt"
        net = caffe.Net(deploy, caffe.TEST)
        net.save("lenet.caffemodel")
        net.save_hdf5("lenet.caffemodel.h5")
        pathlib.Path("tiny.prototxt").write_text(TINY_NET)
        for fmt, suffix in (("BINARYPROTO", ""), ("HDF5", ".h5")):
            pathlib.Path("tiny_solver%s.prototxt" % suffix).write_text(
                'net: "tiny.prototxt"\nbase_lr: 0.1\nmomentum: 0.9\nlr_policy: "fixed"\nmax_iter: 4\nsnapshot: 2\n'
                'snapshot_after_train: false\nsnapshot_format: %s\nsnapshot_prefix: "state/tiny"\ndisplay: 1\n'
                'random_seed: 5\ntype: "Adam"\n' % fmt)
            assert main(["train", "--solver", "tiny_solver%s.prototxt" % suffix]) == 0
        with h5py.File("tiny_data.h5", "w") as f:
            f["data"] = np.linspace(-1, 1, 8 * 6, dtype=np.float32).reshape(8, 6)
            f["label"] = np.arange(8, dtype=np.float32) % 3
        pathlib.Path("h5_list.txt").write_text("fuzz_tiny_data.h5\n")
        pathlib.Path("h5net.prototxt").write_text(re.sub(r"layer \{ name: \"data\".*?\} \} \}", (
            'layer { name: "data" type: "HDF5Data" top: "data" top: "label" '
            'hdf5_data_param { source: "h5_list.txt" batch_size: 4 } }'), TINY_NET, flags=re.S))
        pathlib.Path("mean.binaryproto").write_bytes(
            caffe.io.array_to_blobproto(np.linspace(0, 1, 192, dtype=np.float32).reshape(1, 3, 8, 8))
            .SerializeToString())
    finally:
        os.chdir(old)
    binaries = {
        "lenet.caffemodel": ["test", "--model", deploy, "--weights", "{}", "--iterations", "1"],
        "lenet.caffemodel.h5": ["test", "--model", deploy, "--weights", "{}", "--iterations", "1"],
        "state/tiny_iter_2.solverstate": ["train", "--solver", "tiny_solver.prototxt", "--snapshot", "{}"],
        "state/tiny_iter_2.solverstate.h5": ["train", "--solver", "tiny_solver.h5.prototxt", "--snapshot", "{}"],
        "state/tiny_iter_2.caffemodel": ["test", "--model", "tiny.prototxt", "--weights", "{}", "--iterations", "1"],
        "mean.binaryproto": None,
        "tiny_data.h5": ["time", "--model", "h5net.prototxt", "--iterations", "1"],
    }
    pristine = {path: (ws / path).read_bytes() for path in binaries}   # cases may overwrite snapshots
    texts = {path: (ws / path).read_text() for path in texts}
    return ws, texts, binaries, pristine


def command_for_text(path: str) -> list:
    if path.endswith("_solver.prototxt"):
        return ["train", "--solver", "{}"]
    return ["time", "--model", "{}", "--iterations", "1"]


# ----------------------------------------------------------------------------------------------------
# running the cases
# ----------------------------------------------------------------------------------------------------

def run_case(argv, target: str):
    """None when pcn answered properly, else a description of the finding."""
    try:
        if argv is None:
            caffe.io.load_binaryproto(target)
            return None
        status = main([a.replace("{}", target) for a in argv])
    except CaseTimeout:
        return "timeout"
    except PcnError:
        return None if argv is None else "PcnError escaped the command line"
    except Exception as e:  # the finding: a traceback a user would see
        frame = traceback.extract_tb(e.__traceback__)[-1]
        return "%s: %s (at %s:%d)" % (type(e).__name__, " ".join(str(e).split())[:200],
                                      os.path.relpath(frame.filename, ROOT), frame.lineno)
    if status not in (0, 2):
        return "exit status %s" % status
    return None


def fuzz(workspace, cases: int, seed: int, capsys=None):
    ws, texts, binaries, pristine = workspace
    findings, timeouts = [], []
    old_dir = os.getcwd()
    old_handler = signal.signal(signal.SIGPROF, _on_alarm)
    real_available = blob.available_memory
    blob.available_memory = lambda: min(real_available() or MEMORY_CAP, MEMORY_CAP)
    os.chdir(ws)
    try:
        for case in range(cases):
            rng = random.Random("%d/%d" % (seed, case))
            if case % 5 in (0, 2):
                source = rng.choice(sorted(texts))
                text, what = mutate_text(texts[source], rng)
                target = source.replace(".prototxt", "_fuzz.prototxt")
                (ws / target).write_text(text)
                argv = command_for_text(source)
            else:
                source = rng.choice(sorted(binaries))
                data, what = mutate_binary(pristine[source], rng)
                target = os.path.join(os.path.dirname(source), "fuzz_" + os.path.basename(source))
                (ws / target).write_bytes(data)
                argv = binaries[source]
            started = time.perf_counter()
            faulthandler.dump_traceback_later(HANG_SECONDS, exit=True, file=sys.__stderr__)   # seen with -s
            signal.setitimer(signal.ITIMER_PROF, CASE_SECONDS)
            try:
                finding = run_case(argv, target)
            finally:
                signal.setitimer(signal.ITIMER_PROF, 0)
                faulthandler.cancel_dump_traceback_later()
            if capsys is not None:
                capsys.readouterr()   # the logs of thousands of runs are not kept
            if os.environ.get("PCN_FUZZ_VERBOSE"):
                print("case %d %.2fs %s [%s] %s" % (case, time.perf_counter() - started, source, what, finding),
                      file=sys.__stderr__)
            if finding == "timeout":
                timeouts.append(case)
            elif finding:
                findings.append("case %d: %s [%s] -> %s" % (case, source, what, finding))
            for leftover in ("snapshots", "sub"):
                shutil.rmtree(ws / leftover, ignore_errors=True)
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, old_handler)
        blob.available_memory = real_available
        os.chdir(old_dir)
    assert len(timeouts) <= max(cases // 10, 1), "cases %s ran past %gs" % (timeouts, CASE_SECONDS)
    return findings


def test_mutated_files_give_results_or_one_line_errors(workspace, capsys):
    findings = fuzz(workspace, CASES, SEED, capsys)
    assert not findings, "\n".join(findings)


def test_mutations_are_deterministic():
    text = (ROOT / "models/lenet/lenet_solver.prototxt").read_text()
    assert mutate_text(text, random.Random("1/2")) == mutate_text(text, random.Random("1/2"))
    data = bytes(range(256)) * 4
    assert mutate_binary(data, random.Random("3")) == mutate_binary(data, random.Random("3"))
    assert mutate_binary(data, random.Random("3"))[0] != data
