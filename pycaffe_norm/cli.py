"""The ``pcn`` command line: Caffe's ``caffe train | test | time | device_query`` on pcn's public API.

Logs go to stderr with glog's line prefix (``I1125 20:08:12.123456 12345 solver.py:201] ...``) and Caffe's
messages, so log parsers written for Caffe read them. Errors in the user's files or arguments print as one line,
``pcn: error: <message>``, with exit status 2; anything else is a bug in pcn and keeps its traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from typing import Callable, List, Optional, Sequence

from . import backend
from .errors import PcnError

log = logging.getLogger("pycaffe_norm")

EXIT_USER_ERROR = 2


# ----------------------------------------------------------------------------------------------------
# logging
# ----------------------------------------------------------------------------------------------------

class GlogFormatter(logging.Formatter):
    """glog's prefix: severity letter, month and day, time with microseconds, process id, file:line."""

    def format(self, record: logging.LogRecord) -> str:
        t = time.localtime(record.created)
        micros = int((record.created - int(record.created)) * 1e6)
        prefix = "%s%02d%02d %02d:%02d:%02d.%06d %5d %s:%d] " % (
            record.levelname[:1], t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, micros,
            record.process or 0, record.filename, record.lineno)
        text = prefix + record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def _log_level() -> int:
    """INFO, or the level glog's GLOG_minloglevel asks for (0 INFO, 1 WARNING, 2 ERROR, 3 FATAL)."""
    levels = {"0": logging.INFO, "1": logging.WARNING, "2": logging.ERROR, "3": logging.CRITICAL}
    return levels.get(os.environ.get("GLOG_minloglevel", "0").strip(), logging.INFO)


def init_log(level: Optional[int] = None) -> None:
    """pycaffe's ``caffe.init_log()``: the ``pycaffe_norm`` logger prints glog-style lines on stderr (once, however
    often it is called), at INFO or GLOG_minloglevel's level; with data parallelism only rank 0 prints INFO."""
    from . import distributed

    if not any(getattr(h, "_pcn_init_log", False) for h in log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(GlogFormatter())
        handler._pcn_init_log = True
        log.addHandler(handler)
    level = _log_level() if level is None else level
    log.setLevel(level if distributed.root_solver() else max(level, logging.WARNING))


def log_info(message: str) -> None:
    """pycaffe's ``caffe.log(message)``: one INFO line through the pcn logger."""
    log.info("%s", message)


class _Logging:
    """Installs the glog-style handler for one command and takes it away afterwards (main may run many times)."""

    def __enter__(self):
        self.handler = logging.StreamHandler(sys.stderr)
        self.handler.setFormatter(GlogFormatter())
        self.old_level = log.level
        log.addHandler(self.handler)
        log.setLevel(_log_level())
        return self

    def __exit__(self, *exc):
        self.handler.flush()
        log.removeHandler(self.handler)
        log.setLevel(self.old_level)
        return False


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------

def _fmt(x: float) -> str:
    """A number as C++ streams print a float by default (6 significant digits), as Caffe's logs show it."""
    return "%.6g" % float(x)


def _split_list(text: Optional[str]) -> List[str]:
    return [s for s in (text or "").split(",") if s]


def _parse_phase(text: str) -> int:
    from .proto import caffe_pb2

    name = text.strip().upper()
    if name not in ("TRAIN", "TEST"):
        raise PcnError("--phase must be TRAIN or TEST, not %r" % text)
    return getattr(caffe_pb2, name)


def _use_device(gpu: Optional[str], solver_mode_gpu: bool = False, device_id: int = 0) -> None:
    """Caffe's rule: --gpu wins; otherwise the solver's solver_mode (GPU falls back to the CPU if none is there)."""
    if gpu is None and solver_mode_gpu:
        if backend.cupy_available():
            gpu = str(device_id)
        else:
            log.warning("solver_mode is GPU but no CUDA device is usable (CuPy missing or no GPU); running on the CPU")
    if gpu is None:
        backend.set_mode_cpu()
        log.info("Use CPU.")
        return
    ids = _split_list(gpu)
    if len(ids) != 1:
        raise PcnError("--gpu %s: pcn runs on one GPU; give one device id" % gpu)
    if ids[0] == "all":
        ids = ["0"]
    try:
        device = int(ids[0])
    except ValueError:
        raise PcnError("--gpu takes a device id (an integer) or 'all', not %r" % gpu) from None
    if not backend.cupy_available():
        raise PcnError("--gpu %s: no CUDA device is usable (install pycaffe_norm[gpu] and check the driver)" % gpu)
    try:
        backend.set_device(device)
        backend.set_mode_gpu()
    except RuntimeError as e:  # a device id CUDA refuses: the mode stays CPU
        raise PcnError("--gpu %s: %s" % (gpu, e)) from None
    log.info("Using GPUs %d", device)


def _sync() -> None:
    """Waits for queued GPU work, so timers measure it."""
    if backend.mode() == "gpu":
        backend.xp_for_mode().cuda.Device().synchronize()


def _copy_weights(nets: Sequence, weights: str) -> None:
    """Caffe's CopyLayers: each comma-separated weights file is loaded into every net, in order."""
    for path in _split_list(weights):
        log.info("Finetuning from %s", path)
        _need_file(path, "weights file")
        for net in nets:
            net.copy_from(path)


def _data_dirs(*paths: Optional[str]) -> List[str]:
    """Folders of the prototxt files named on the command line: relative data paths are also looked up there."""
    return [os.path.dirname(os.path.abspath(p)) for p in paths if p]


def _need_file(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise PcnError("%s not found: %s" % (what, path))
    if os.path.isdir(path):
        raise PcnError("%s is a directory, not a file: %s" % (what, path))
    if not os.path.isfile(path):  # /dev/zero, a FIFO: reading it would never end
        raise PcnError("%s is not a regular file: %s" % (what, path))


# ----------------------------------------------------------------------------------------------------
# commands
# ----------------------------------------------------------------------------------------------------

def cmd_train(args: argparse.Namespace) -> int:
    try:
        comm = _distributed().init()   # several ranks under mpirun/srun; None in a single process
    except PcnError:
        if _distributed().launcher_world()[0] > 0:
            return EXIT_USER_ERROR     # rank 0 says why, once
        raise
    if comm is None:
        return _train(args, None)
    if comm.rank != 0:      # rank 0 alone logs, as in Caffe; the others report warnings and errors
        log.setLevel(max(log.level, logging.WARNING))
    try:
        return _train(args, comm)
    except BaseException as e:    # the other ranks would wait for this one for ever: end them all
        if isinstance(e, SystemExit) and not e.code:
            raise
        if isinstance(e, (PcnError, OSError)):
            message = _one_line(e if isinstance(e, PcnError) else _os_error_message(e))
            print("pcn: error: rank %d of %d: %s" % (comm.rank, comm.size, message), file=sys.stderr)
        else:
            import traceback

            traceback.print_exc()
        sys.stderr.flush()
        comm.comm.Abort(EXIT_USER_ERROR if isinstance(e, (PcnError, OSError)) else 1)
        raise


def _distributed():
    from . import distributed

    return distributed


def _train(args: argparse.Namespace, comm) -> int:
    from .data.paths import search_dirs
    from .progress import ProgressLine
    from .proto import caffe_pb2
    from .random import set_random_seed
    from .solvers import get_solver, read_solver_param

    if args.weights and args.snapshot:
        raise PcnError("give --snapshot to resume training or --weights to fine-tune, not both")
    _need_file(args.solver, "solver prototxt")
    if args.snapshot:
        _need_file(args.snapshot, "solver state file")
    param = read_solver_param(args.solver)
    # caffe train's --level and --stage go into the solver's train_state (the training net's NetState)
    if args.level is not None:
        param.train_state.level = args.level
    param.train_state.stage.extend(_split_list(args.stage))
    _use_device(args.gpu, param.solver_mode == caffe_pb2.SolverParameter.GPU, param.device_id)
    if comm is not None:    # the same seed everywhere: same initial weights and data shuffles (disjoint shares)
        param.random_seed = _distributed().shared_seed(comm, param.random_seed)
        log.info("Data parallel training: %d ranks, each with batches of the solver's size (solver_count %d)",
                 comm.size, comm.size)
    with search_dirs(*_data_dirs(args.solver)):
        log.info("Starting Optimization")
        solver = get_solver(args.solver, param)
        solver.allow_nan = args.allow_nan
        if args.weights and not args.snapshot:
            _copy_weights([solver.net] + list(solver.test_nets), args.weights)
        if comm is not None:
            parallel = _distributed().DataParallel(solver, comm)
            parallel.bcast()
            solver.add_callback(parallel)
            solver.net.after_backward(parallel)     # Caffe's layer_wise_reduce: sums start during backward
            set_random_seed(param.random_seed + comm.rank)   # per-rank draws from here on (Dropout), as P2PSync
        with _SignalActions(solver, args.sigint_effect, args.sighup_effect, comm), \
                ProgressLine(solver) if comm is None or comm.rank == 0 else contextlib.nullcontext():
            if args.snapshot:
                log.info("Resuming from %s", args.snapshot)
                solver.solve(resume_file=args.snapshot)
            else:
                solver.solve()
    return 0


class _SignalActions:
    """caffe train's signal handling: SIGINT and SIGHUP request "stop", "snapshot" or "none" of the solver,
    which acts on it after the current iteration. A second SIGINT while a stop is pending aborts at once."""

    def __init__(self, solver, sigint_effect: str, sighup_effect: str, comm=None):
        self.solver = solver
        self.effects = {signal.SIGINT: sigint_effect}
        if hasattr(signal, "SIGHUP"):
            self.effects[signal.SIGHUP] = sighup_effect
        if comm is not None:    # Open MPI's mpirun passes a Ctrl-C on to the ranks as SIGTERM
            self.effects[signal.SIGTERM] = sigint_effect
        self.pending: List[str] = []
        self.previous = {}

    def _handle(self, signum, frame) -> None:
        effect = self.effects[signum]
        if signum in (signal.SIGINT, getattr(signal, "SIGTERM", None)) and "stop" in self.pending:
            raise KeyboardInterrupt
        if effect != "none":
            log.info("Caught %s: requesting %s", signal.Signals(signum).name, effect)
            self.pending.append(effect)

    def _next_action(self) -> str:
        return self.pending.pop(0) if self.pending else "none"

    def __enter__(self):
        self.solver.action_request = self._next_action
        if threading.current_thread() is threading.main_thread():   # Python allows handlers only there
            for signum in self.effects:
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.solver.action_request = None


def cmd_test(args: argparse.Namespace) -> int:
    from .data.paths import search_dirs
    from .net import Net

    _need_file(args.model, "net prototxt")
    if args.iterations <= 0:
        raise PcnError("--iterations must be > 0, got %d" % args.iterations)
    _use_device(args.gpu)
    with search_dirs(*_data_dirs(args.model)):
        net = Net(args.model, _parse_phase(args.phase), level=args.level, stages=_split_list(args.stage))
        _copy_weights([net], args.weights)
        log.info("Running for %d iterations.", args.iterations)
        sums: List[float] = []
        ids: List[str] = []
        loss = 0.0
        for i in range(args.iterations):
            loss += net.forward_loss()
            k = 0
            for name in net.outputs:
                for score in backend.to_numpy(net.blobs[name].data).ravel():
                    if i == 0:
                        sums.append(float(score))
                        ids.append(name)
                    else:
                        sums[k] += float(score)
                    k += 1
                    log.info("Batch %d, %s = %s", i, name, _fmt(score))
    log.info("Loss: %s", _fmt(loss / args.iterations))
    weights = net.blob_loss_weights
    for name, total in zip(ids, sums):
        mean = total / args.iterations
        w = weights[name]
        extra = " (* %s = %s loss)" % (_fmt(w), _fmt(w * mean)) if w else ""
        log.info("%s = %s%s", name, _fmt(mean), extra)
    return 0


def cmd_time(args: argparse.Namespace) -> int:
    from .data.paths import search_dirs
    from .net import Net

    _need_file(args.model, "net prototxt")
    if args.iterations <= 0:
        raise PcnError("--iterations must be > 0, got %d" % args.iterations)
    _use_device(args.gpu)
    with search_dirs(*_data_dirs(args.model)):
        net = Net(args.model, _parse_phase(args.phase), level=args.level, stages=_split_list(args.stage))
    if args.weights:
        _copy_weights([net], args.weights)
    layers, names = net.layers, net._layer_names
    log.info("Performing Forward")
    log.info("Initial loss: %s", _fmt(net.forward_loss()))
    log.info("Performing Backward")
    net.backward()
    n = len(layers)
    fwd, bwd = [0.0] * n, [0.0] * n
    fwd_total = bwd_total = 0.0
    log.info("*** Benchmark begins ***")
    log.info("Testing for %d iterations.", args.iterations)
    _sync()
    start = time.perf_counter()
    clock = time.perf_counter
    for j in range(args.iterations):
        t_iter = clock()
        for i in range(n):
            t = clock()
            layers[i].reshape(net.bottom_vecs[i], net.top_vecs[i])
            layers[i].forward(net.bottom_vecs[i], net.top_vecs[i])
            _sync()
            fwd[i] += clock() - t
        t_bwd = clock()
        fwd_total += t_bwd - t_iter
        for i in range(n - 1, -1, -1):
            if not net.layer_need_backward[i]:
                continue
            t = clock()
            layers[i].backward(net.top_vecs[i], net.bottom_need_backward[i], net.bottom_vecs[i])
            _sync()
            bwd[i] += clock() - t
        now = clock()
        bwd_total += now - t_bwd
        log.info("Iteration: %d forward-backward time: %s ms.", j + 1, _fmt((now - t_iter) * 1e3))
    total = clock() - start
    per = 1e3 / args.iterations
    log.info("Average time per layer: ")
    for i in range(n):
        log.info("%10s\tforward: %s ms.", names[i], _fmt(fwd[i] * per))
        log.info("%10s\tbackward: %s ms.", names[i], _fmt(bwd[i] * per))
    log.info("Average Forward pass: %s ms.", _fmt(fwd_total * per))
    log.info("Average Backward pass: %s ms.", _fmt(bwd_total * per))
    log.info("Average Forward-Backward: %s ms.", _fmt(total * per))
    log.info("Total Time: %s ms.", _fmt(total * 1e3))
    log.info("*** Benchmark ends ***")
    return 0


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from .export_onnx import export_onnx

    model = export_onnx(args.model, args.weights, args.out, args.opset)
    log.info("Wrote %s: ONNX opset %d, %d nodes", args.out, args.opset, len(model.graph.node))
    return 0


def cmd_device_query(args: argparse.Namespace) -> int:
    import numpy as np

    log.info("NumPy %s", np.__version__)
    if not backend.cupy_available():
        raise PcnError("no CUDA device is usable (CuPy is not installed or sees no GPU); pcn runs on the CPU")
    cupy = backend.cupy_module()
    count = cupy.cuda.runtime.getDeviceCount()
    try:
        ids = range(count) if args.gpu in (None, "all") else [int(g) for g in _split_list(args.gpu)]
    except ValueError:
        raise PcnError("--gpu takes device ids (integers) or 'all', not %r" % args.gpu) from None
    for d in ids:
        if not 0 <= d < count:
            raise PcnError("--gpu %d: no such CUDA device (%d present: 0..%d)" % (d, count, count - 1))
        props = cupy.cuda.runtime.getDeviceProperties(d)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        log.info("Querying GPUs %d", d)
        log.info("Device id:                     %d", d)
        log.info("Major revision number:         %d", props["major"])
        log.info("Minor revision number:         %d", props["minor"])
        log.info("Name:                          %s", name)
        log.info("Total global memory:           %d", props["totalGlobalMem"])
        log.info("Number of multiprocessors:     %d", props["multiProcessorCount"])
        log.info("Clock rate:                    %d", props["clockRate"])
    return 0


# ----------------------------------------------------------------------------------------------------
# parser and entry point
# ----------------------------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors say ``pcn: error:`` like every other pcn error."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(EXIT_USER_ERROR, "pcn: error: %s\n" % message)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    ap = _Parser(prog="pcn", description="Caffe's command line tool, on pycaffe_norm.")
    ap.add_argument("--version", action="version", version="pcn version %s" % __version__)
    sub = ap.add_subparsers(dest="command", metavar="command", parser_class=_Parser)
    sub.required = True

    def common(p: argparse.ArgumentParser, phase: str) -> None:
        p.add_argument("--gpu", help="run on this CUDA device id (needs CuPy); default: the CPU")
        p.add_argument("--phase", default=phase, help="net phase, TRAIN or TEST (default: %(default)s)")
        p.add_argument("--level", type=int, default=0, help="net state level (default: 0)")
        p.add_argument("--stage", default="", help="comma-separated net state stages")
        p.add_argument("--iterations", type=int, default=50, help="number of iterations (default: 50)")

    p = sub.add_parser("train", help="train or fine-tune a model")
    p.add_argument("--solver", required=True, help="the solver prototxt")
    p.add_argument("--weights", help="comma-separated .caffemodel files to fine-tune from")
    p.add_argument("--snapshot", help="a .solverstate to resume training from")
    p.add_argument("--gpu", help="run on this CUDA device id (needs CuPy); default: the solver's solver_mode")
    p.add_argument("--level", type=int, help="the training net's state level (default: the solver's train_state)")
    p.add_argument("--stage", default="", help="comma-separated stages added to the training net's state")
    effects = ("stop", "snapshot", "none")
    p.add_argument("--sigint_effect", choices=effects, default="stop",
                   help="what Ctrl-C does: stop (after a snapshot, if snapshot_after_train), snapshot, none "
                        "(default: %(default)s)")
    p.add_argument("--sighup_effect", choices=effects, default="snapshot",
                   help="what SIGHUP does (default: %(default)s)")
    p.add_argument("--allow_nan", action="store_true",
                   help="train on through a non-finite loss or parameter, as Caffe does (default: stop with an "
                        "error naming the iteration and the first layer that went non-finite)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("test", help="score a model: average its outputs over --iterations batches")
    p.add_argument("--model", required=True, help="the net prototxt")
    p.add_argument("--weights", required=True, help="comma-separated .caffemodel files")
    common(p, "TEST")
    p.set_defaults(func=cmd_test)

    p = sub.add_parser("time", help="time a model's forward and backward passes, layer by layer")
    p.add_argument("--model", required=True, help="the net prototxt")
    p.add_argument("--weights", help="comma-separated .caffemodel files (optional)")
    common(p, "TRAIN")
    p.set_defaults(func=cmd_time)

    from .export_onnx import DEFAULT_OPSET, MIN_OPSET  # onnx itself is imported only when exporting

    p = sub.add_parser("export", help="export a deploy net with its weights to another format")
    formats = p.add_subparsers(dest="format", metavar="format", parser_class=_Parser)
    formats.required = True
    q = formats.add_parser("onnx", help="an ONNX model (needs pycaffe_norm[onnx]; docs/onnx.md)")
    q.add_argument("model", help="the deploy net prototxt (Input layers, no data or loss layers)")
    q.add_argument("weights", help="the .caffemodel (or .h5) weights")
    q.add_argument("out", help="the .onnx file to write")
    q.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help="ONNX opset version, %d or newer (default: %%(default)s)" % MIN_OPSET)
    q.set_defaults(func=cmd_export_onnx)

    p = sub.add_parser("port", help="rewrite a MyCaffe (or any BVLC) net or solver as current BVLC prototxt")
    p.add_argument("input", help="the net or solver prototxt")
    p.add_argument("-o", "--output", required=True, help="where to write the ported prototxt")
    p.add_argument("--data", action="append", default=[], metavar="NAME=PATH",
                   help="a MyCaffe dataset (CIFAR-10) or source (CIFAR-10.training) and its LMDB (or a folder with "
                        "one *train* and one *test* LMDB); NAME.mean=PATH gives use_imagedb_mean's mean file")
    p.set_defaults(func=lambda a: _port().run_port(a.input, a.output, a.data))

    p = sub.add_parser("upgrade", help="upgrade a BVLC V0/V1 net or an old solver to the current format")
    p.add_argument("input", help="the net or solver prototxt")
    p.add_argument("-o", "--output", required=True, help="where to write the upgraded prototxt")
    p.set_defaults(func=lambda a: _port().run_upgrade(a.input, a.output))

    p = sub.add_parser("device_query", help="show the GPU's properties")
    p.add_argument("--gpu", help="device id (default: all)")
    p.set_defaults(func=cmd_device_query)

    from . import draw, training_log  # subcommands that live with their modules

    draw.register(sub)
    training_log.register(sub)
    return ap


def _port():
    from . import port

    return port


def _one_line(text: str) -> str:
    return " ".join(str(text).split("\n")).strip()


def _os_error_message(e: OSError) -> str:
    if e.filename is not None and e.strerror:
        return "%s: %s" % (e.strerror, e.filename)
    return str(e)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs one pcn command; returns its exit status (0, or 2 for an error in the user's input)."""
    try:
        args = build_parser().parse_args(None if argv is None else list(argv))
    except SystemExit as e:  # usage errors and --help
        return int(e.code or 0) if not isinstance(e.code, str) else EXIT_USER_ERROR
    func: Callable[[argparse.Namespace], int] = args.func
    with _Logging():
        try:
            return func(args)
        except PcnError as e:
            message = _one_line(e)
        except OSError as e:  # a user's path: missing, unreadable, a directory, a full disk
            message = _one_line(_os_error_message(e))
        except MemoryError as e:  # a working buffer beyond the blobs that Net checks before allocating
            message = _one_line("out of memory%s: the model's shapes are too large for this machine"
                                % (" (%s)" % e if str(e) else ""))
        except KeyboardInterrupt:
            print("pcn: interrupted", file=sys.stderr)
            return 130
        finally:
            backend.set_mode_cpu()
    print("pcn: error: %s" % message, file=sys.stderr)
    return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
