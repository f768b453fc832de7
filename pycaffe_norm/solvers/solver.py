"""The Solver: builds the train and test nets, runs iterations, tests, logs and snapshots (Caffe's ``Solver``)."""
from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from typing import Callable, List, Optional

import numpy as np

from .. import backend, distributed, prototxt
from ..blob import Blob
from ..data.paths import resolve_path
from ..errors import DivergenceError, PcnError
from ..io.arrays import array_to_blobproto, blobproto_to_array
from ..io.weights import atomic_hdf5
from ..net import TEST, TRAIN, Net
from ..proto import caffe_pb2
from ..random import set_random_seed

log = logging.getLogger("pycaffe_norm")

_LEGACY_TYPES = {
    caffe_pb2.SolverParameter.SGD: "SGD", caffe_pb2.SolverParameter.NESTEROV: "Nesterov",
    caffe_pb2.SolverParameter.ADAGRAD: "AdaGrad", caffe_pb2.SolverParameter.RMSPROP: "RMSProp",
    caffe_pb2.SolverParameter.ADADELTA: "AdaDelta", caffe_pb2.SolverParameter.ADAM: "Adam",
}


def read_solver_param(path: str) -> caffe_pb2.SolverParameter:
    """Reads a solver prototxt and applies Caffe's upgrades (solver_type enum, default snapshot_prefix)."""
    param = prototxt.read_text(path, caffe_pb2.SolverParameter(), "solver prototxt")
    if param.HasField("solver_type") and not param.HasField("type"):
        param.type = _LEGACY_TYPES[param.solver_type]
    base = os.path.splitext(os.fspath(path))[0]
    if not param.HasField("snapshot_prefix"):
        param.snapshot_prefix = base
    elif param.snapshot_prefix.endswith("/") or os.path.isdir(param.snapshot_prefix):
        param.snapshot_prefix = os.path.join(param.snapshot_prefix, os.path.basename(base))
    return param


def _resolve(path: str, solver_path: Optional[str]) -> str:
    """Caffe reads paths relative to the working directory; pcn also tries the solver file's folder and its parents."""
    anchors = [os.path.dirname(os.path.abspath(solver_path))] if solver_path else []
    return resolve_path(path, anchors) or path


def remove_stale_temporaries(prefix: str) -> List[str]:
    """Removes the temporary files that an interrupted snapshot under ``prefix`` left (a kill during the write):
    ``.tmp_<name>_iter_*`` of the atomic writes, and ``<name>_iter_*.tmp`` of older pcn versions."""
    directory = os.path.dirname(os.path.abspath(prefix)) if prefix else os.getcwd()
    base = os.path.basename(prefix)
    removed = []
    try:
        entries = os.listdir(directory)
    except OSError:
        return removed
    for entry in entries:
        stale = entry.startswith(".tmp_%s_iter_" % base) or (entry.startswith("%s_iter_" % base)
                                                               and entry.endswith(".tmp"))
        path = os.path.join(directory, entry)
        if stale and os.path.isfile(path):
            log.info("Removing %s, left by an interrupted snapshot", path)
            os.unlink(path)
            removed.append(path)
    return removed


def check_snapshot_prefix(prefix: str) -> None:
    """Caffe's CheckSnapshotWritePermissions, before any iteration: the snapshot folder is created when missing
    (as both snapshot formats would) and a probe file written and removed there."""
    directory = os.path.dirname(os.path.abspath(prefix)) if prefix else os.getcwd()
    try:
        os.makedirs(directory, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".tmp_%s_probe" % os.path.basename(prefix), dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        reason = e.strerror or str(e)
        raise PcnError("cannot write to snapshot_prefix %r (%s: %s); make sure its folder can be created and is "
                       "writable" % (prefix, reason, e.filename or directory)) from None
    remove_stale_temporaries(prefix)


def _read_state_hdf5(path: str, sizes: List[int]):
    """(iter, current_step, learned_net, history arrays) of an HDF5 solver state whose history blobs have ``sizes``
    values (checked before they are read); anything unexpected in the file is a one-line error naming it."""
    import h5py

    if not os.path.exists(path):
        raise PcnError("solver state file not found: %s" % path)
    if not os.path.isfile(path):
        raise PcnError("solver state file is not a regular file: %s" % path)
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("iter", "current_step", "learned_net", "history") if k not in f]
            if missing:
                raise PcnError("%s: not a pcn/Caffe HDF5 solver state (no %s)" % (path, ", ".join(missing)))
            it, step = int(f["iter"][()]), int(f["current_step"][()])
            learned = f["learned_net"][()]
            learned = learned.decode() if isinstance(learned, bytes) else str(learned)
            group = f["history"]
            if len(group) != len(sizes):
                raise PcnError("%s: %d history blobs, but this solver and net need %d (a different net or solver "
                               "type?)" % (path, len(group), len(sizes)))
            history = []
            for i, size in enumerate(sizes):
                blob = group[str(i)]
                if blob.size != size:
                    raise PcnError("%s: history blob %d has %d values where the net's parameter has %d"
                                   % (path, i, blob.size, size))
                history.append(np.asarray(blob[...], dtype=np.float64))
    except (OSError, KeyError, ValueError, TypeError, RuntimeError, AttributeError, UnicodeDecodeError) as e:
        raise PcnError("%s: cannot read as an HDF5 solver state (%s)" % (path, " ".join(str(e).split()))) from None
    return it, step, learned, history


class Solver:
    """Base class: subclasses implement ``compute_update_value(param_id, rate)`` (Caffe's update rules)."""

    type = None
    history_multiplier = 1  # history blobs per parameter (AdaDelta and Adam keep two)

    def __init__(self, solver, param: Optional[caffe_pb2.SolverParameter] = None):
        source = None if isinstance(solver, caffe_pb2.SolverParameter) else os.fspath(solver)
        if param is None:
            param = solver if source is None else read_solver_param(source)
        self.param = param
        self.source = source
        if param.random_seed >= 0:
            set_random_seed(param.random_seed)
        self.iter = 0
        self.current_step = 0
        # Caffe's SetActionFunction: polled every iteration; returns "none", "snapshot" or "stop" (pcn train
        # sets it from SIGINT / SIGHUP, as caffe train does).
        self.action_request: Optional[Callable[[], str]] = None
        self.requested_early_exit = False
        self._losses: List[float] = []
        self.smoothed_loss = 0.0
        # Caffe trains on through NaN and infinity; pcn stops at the first non-finite loss or parameter unless
        # this is True (pcn train --allow_nan).
        self.allow_nan = False
        # Data parallelism (pycaffe_norm.distributed): Caffe's Solver::Callback list (on_start,
        # on_gradients_ready) and the DataParallel object that averages the loss and agrees on requests.
        self._callbacks: list = []
        self.parallel = None
        self._pass_index = 0
        self.check_param()
        if param.snapshot > 0:
            check_snapshot_prefix(param.snapshot_prefix)
        self.net = self._init_train_net()
        self.test_nets = self._init_test_nets()
        self.history = [Blob(p.shape, dtype=p.dtype, xp=p.xp)
                        for _ in range(self.history_multiplier) for p in self.net.learnable_params]

    def check_param(self) -> None:
        """Solver-specific checks of the SolverParameter (Caffe's constructors' CHECKs)."""

    # --- nets ---------------------------------------------------------------------------------------------
    def _read_net(self, path: str) -> caffe_pb2.NetParameter:
        return prototxt.read_text(_resolve(path, self.source), caffe_pb2.NetParameter(), "net prototxt")

    def _init_train_net(self) -> Net:
        p = self.param
        given = [f for f in ("train_net_param", "train_net", "net_param", "net") if p.HasField(f)]
        if len(given) != 1:
            raise PcnError("solver: give exactly one of train_net_param, train_net, net_param, net (found %s)"
                           % (", ".join(given) or "none"))
        which = given[0]
        if which == "train_net_param":
            net_param = caffe_pb2.NetParameter()
            net_param.CopyFrom(p.train_net_param)
        elif which == "net_param":
            net_param = caffe_pb2.NetParameter()
            net_param.CopyFrom(p.net_param)
        else:
            net_param = self._read_net(getattr(p, which))
        state = caffe_pb2.NetState(phase=TRAIN)
        state.MergeFrom(net_param.state)
        state.MergeFrom(p.train_state)
        net_param.state.CopyFrom(state)
        log.info("Creating training net from %s", which)
        return Net(net_param, state.phase, level=state.level, stages=list(state.stage))

    def _init_test_nets(self) -> List[Net]:
        p = self.param
        sources = [("test_net_param", np_) for np_ in p.test_net_param]
        sources += [("test_net", self._read_net(f)) for f in p.test_net]
        generic = None
        if p.HasField("net_param"):
            generic = p.net_param
        elif p.HasField("net"):
            generic = self._read_net(p.net)
        n_iters = len(p.test_iter)
        if generic is not None:
            if n_iters < len(sources):
                raise PcnError("solver: test_iter must be given once per test net (%d test nets, %d test_iter)"
                               % (len(sources), n_iters))
            sources += [("net", generic)] * (n_iters - len(sources))
        elif n_iters != len(sources):
            raise PcnError("solver: test_iter must be given once per test net (%d test nets, %d test_iter)"
                           % (len(sources), n_iters))
        if p.test_state and len(p.test_state) != len(sources):
            raise PcnError("solver: test_state must be given once per test net or not at all")
        if sources and p.test_interval <= 0:
            raise PcnError("solver: test nets need test_interval > 0")
        for i, n in enumerate(list(p.test_iter)[:len(sources)]):
            if n <= 0:
                raise PcnError("solver: test_iter must be > 0 (test net #%d has test_iter: %d)" % (i, n))
        nets = []
        for i, (which, net_param) in enumerate(sources):
            param = caffe_pb2.NetParameter()
            param.CopyFrom(net_param)
            state = caffe_pb2.NetState(phase=TEST)
            state.MergeFrom(param.state)
            if p.test_state:
                state.MergeFrom(p.test_state[i])
            param.state.CopyFrom(state)
            log.info("Creating test net (#%d) specified by %s", i, which)
            net = Net(param, state.phase, level=state.level, stages=list(state.stage))
            net.share_with(self.net)
            nets.append(net)
        return nets

    # --- learning rate ------------------------------------------------------------------------------------
    def learning_rate(self, it: Optional[int] = None, current_step: Optional[int] = None):
        """(rate, current_step) at iteration ``it`` under ``lr_policy`` (Caffe's GetLearningRate)."""
        p = self.param
        it = self.iter if it is None else it
        step = self.current_step if current_step is None else current_step
        policy = p.lr_policy
        base, gamma, power = np.float64(np.float32(p.base_lr)), np.float64(np.float32(p.gamma)), \
            np.float64(np.float32(p.power))
        with np.errstate(all="ignore"):  # as in C: overflow gives inf, an undefined power NaN; judged below
            rate, step = self._rate(policy, base, gamma, power, it, step)
            rate32 = np.float32(rate)
        if not np.isfinite(rate32):
            raise PcnError("solver: lr_policy %r gives the learning rate %s at iteration %d (base_lr %g, gamma %g, "
                           "power %g, stepsize %d)" % (policy, float(rate), it, base, gamma, power, p.stepsize))
        return float(rate32), step

    def _rate(self, policy: str, base, gamma, power, it: int, step: int):
        p = self.param
        if policy == "fixed":
            rate = base
        elif policy == "step":
            if p.stepsize <= 0:
                raise PcnError("solver: lr_policy \"step\" needs stepsize > 0")
            step = it // p.stepsize
            rate = base * gamma ** step
        elif policy == "exp":
            rate = base * gamma ** it
        elif policy == "inv":
            rate = base * (1.0 + gamma * it) ** (-power)
        elif policy == "multistep":
            if step < len(p.stepvalue) and it >= p.stepvalue[step]:
                step += 1
            rate = base * gamma ** step
        elif policy == "poly":
            if p.max_iter <= 0:
                raise PcnError("solver: lr_policy \"poly\" needs max_iter > 0")
            rate = base * (1.0 - it / np.float64(p.max_iter)) ** power
        elif policy == "sigmoid":
            rate = base * (1.0 / (1.0 + np.exp(-gamma * (it - np.float64(p.stepsize)))))
        else:
            raise PcnError("solver: unknown lr_policy %r (fixed, step, exp, inv, multistep, poly, sigmoid)" % policy)
        return rate, step

    @property
    def lr(self) -> float:
        """The rate the next step will use (pycaffe's ``solver.lr``)."""
        return self.learning_rate()[0]

    # --- iterations ---------------------------------------------------------------------------------------
    def step(self, iters: int) -> None:
        p = self.param
        start_iter = self.iter
        stop_iter = self.iter + int(iters)
        average_loss = max(int(p.average_loss), 1)
        self._losses = []
        self.smoothed_loss = 0.0
        timer = time.perf_counter()
        last_iter = self.iter
        while self.iter < stop_iter:
            self.net.clear_param_diffs()
            if p.test_interval and self.iter % p.test_interval == 0 and (self.iter > 0 or p.test_initialization):
                if distributed.root_solver():    # as Caffe: only rank 0 tests
                    self.test_all()
                if self.parallel is not None:    # the other ranks wait idle, leaving rank 0 the cores
                    self.parallel.wait_idle()
                if self.requested_early_exit:
                    break
            for cb in self._callbacks:
                cb.on_start()
            display = p.display and self.iter % p.display == 0
            loss = 0.0
            for self._pass_index in range(max(int(p.iter_size), 1)):
                loss += self.net.forward_backward()
            loss /= max(int(p.iter_size), 1)
            if self.parallel is not None:   # the mean over ranks (Caffe shows rank 0's own) and the agreed request
                loss, request = self.parallel.agree(loss, self._requested_action)
            self._update_smoothed_loss(loss, start_iter, average_loss)
            if display:
                lapse = time.perf_counter() - timer
                speed = (self.iter - last_iter) / lapse if lapse > 0 else 0.0
                log.info("Iteration %d, loss = %.6g", self.iter, self.smoothed_loss)
                log.debug("Iteration %d: %.3g iter/s", self.iter, speed)
                timer, last_iter = time.perf_counter(), self.iter
                self._log_outputs(self.net, "Train", None)
            for cb in self._callbacks:
                cb.on_gradients_ready()
            if not self.allow_nan and not (math.isfinite(loss) and self._finite("diff")):
                raise DivergenceError(self._divergence_message(loss))
            self.apply_update()
            if not self.allow_nan and not self._finite("data"):
                raise DivergenceError(self._divergence_message(loss, in_update=True))
            self.iter += 1
            if self.parallel is None:
                request = self._requested_action()
            if (p.snapshot and self.iter % p.snapshot == 0) or request == "snapshot":
                self.snapshot()
            if request == "stop":
                self.requested_early_exit = True
                break

    def _finite(self, which: str) -> bool:
        """Whether the data (or diff) of every learnable parameter is finite. A finite sum proves it (one NaN or
        infinity makes the sum non-finite) at half the cost of a mask; a non-finite sum is checked element-wise
        (a sum can also overflow)."""
        with np.errstate(over="ignore", invalid="ignore"):
            for blob in self.net.learnable_params:
                a, xp = getattr(blob, which), blob.xp
                if not (bool(xp.isfinite(a.sum())) or bool(xp.isfinite(a).all())):
                    return False
        return True

    def _divergence_message(self, loss: float, in_update: bool = False) -> str:
        """Names the iteration and where the first non-finite value appeared: after forward and backward, the first
        layer (in forward order) whose output holds one, else the first parameter gradient (in backward order);
        after the update, the first parameter that the update made non-finite."""
        net = self.net

        def finite(a) -> bool:
            return bool(backend.array_module(a).isfinite(a).all())

        where = None
        for lp, tops in [] if in_update else zip(net.layer_params, net.top_vecs):
            bad = [name for name, t in zip(lp.top, tops) if not finite(t.data)]
            if bad:
                where = "the output %r of layer %r (%s)" % (bad[0], lp.name, lp.type)
                break
        if where is None and not in_update:
            for lp, layer in reversed(list(zip(net.layer_params, net.layers))):
                bad = [i for i, b in enumerate(layer.blobs) if not finite(b.diff)]
                if bad:
                    where = "the gradient of parameter %d of layer %r (%s)" % (bad[0], lp.name, lp.type)
                    break
        if where is None:
            for lp, layer in zip(net.layer_params, net.layers):
                bad = [i for i, b in enumerate(layer.blobs) if not finite(b.data)]
                if bad:
                    where = ("parameter %d of layer %r (%s), made so by the update (learning rate %g, momentum %g: "
                             "too large?)" % (bad[0], lp.name, lp.type, self.learning_rate()[0], self.param.momentum))
                    break
        return ("training diverged at iteration %d: the loss is %.6g and the first non-finite value is in %s; "
                "lower base_lr or clip_gradients, or pass --allow_nan (solver.allow_nan = True) to train on as "
                "Caffe does" % (self.iter, loss, where or "no layer output or parameter"))

    def add_callback(self, on_start, on_gradients_ready=None) -> None:
        """pycaffe's ``solver.add_callback``: an object with ``on_start()`` and ``on_gradients_ready()`` (as
        ``caffe.NCCL``), or two callables; called before each iteration's passes and before its update."""
        if on_gradients_ready is None:
            if not (hasattr(on_start, "on_start") and hasattr(on_start, "on_gradients_ready")):
                raise PcnError("add_callback takes an object with on_start and on_gradients_ready (caffe.NCCL) "
                               "or two callables")
            self._callbacks.append(on_start)
            return

        class _Pair:
            pass

        pair = _Pair()
        pair.on_start, pair.on_gradients_ready = on_start, on_gradients_ready
        self._callbacks.append(pair)

    def _requested_action(self) -> str:
        return self.action_request() if self.action_request is not None else "none"

    def _update_smoothed_loss(self, loss: float, start_iter: int, average_loss: int) -> None:
        if len(self._losses) < average_loss:
            self._losses.append(loss)
            n = len(self._losses)
            self.smoothed_loss = (self.smoothed_loss * (n - 1) + loss) / n
        else:
            idx = (self.iter - start_iter) % average_loss
            self.smoothed_loss += (loss - self._losses[idx]) / average_loss
            self._losses[idx] = loss

    def _log_outputs(self, net: Net, kind: str, scores) -> None:
        weights = net.blob_loss_weights
        k = 0
        for name in net.outputs:
            values = backend.to_numpy(net.blobs[name].data).ravel() if scores is None else scores[name]
            w = weights[name]
            for v in values:
                extra = " (* %g = %g loss)" % (w, w * v) if w else ""
                log.info("    %s net output #%d: %s = %.6g%s", kind, k, name, v, extra)
                k += 1

    def solve(self, resume_file: Optional[str] = None) -> None:
        p = self.param
        log.info("Solving %s", self.net.name)
        log.info("Learning Rate Policy: %s", p.lr_policy)
        if resume_file:
            log.info("Restoring previous solver status from %s", resume_file)
            self.restore(resume_file)
        if p.snapshot > 0 or p.snapshot_after_train:
            check_snapshot_prefix(p.snapshot_prefix)
        for it in (self.iter, max(p.max_iter, self.iter)):   # a rate that overflows fails now, not late
            self.learning_rate(it)
        start_iter = self.iter
        self.step(p.max_iter - self.iter)
        if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0):
            self.snapshot()
        if self.requested_early_exit:
            log.info("Optimization stopped early.")
            return
        if p.display and self.iter % p.display == 0:
            loss = self.net.forward_loss()
            if self.parallel is not None:
                loss = self.parallel.mean(loss)
            self._update_smoothed_loss(loss, start_iter, max(int(p.average_loss), 1))
            log.info("Iteration %d, loss = %.6g", self.iter, self.smoothed_loss)
        if p.test_interval and self.iter % p.test_interval == 0 and distributed.root_solver():
            self.test_all()
        log.info("Optimization Done.")

    def test_all(self) -> List[dict]:
        return [self.test(i) for i in range(len(self.test_nets))]

    def _test_interrupted(self) -> bool:
        """Acts on every pending signal request before the next test batch, as Caffe does; True when testing must
        stop. With data parallelism all ranks act on requests together, after an iteration, not here."""
        request = self._requested_action() if self.parallel is None else "none"
        while request != "none":
            if request == "snapshot":
                self.snapshot()
            elif request == "stop":
                self.requested_early_exit = True
            request = self._requested_action()
        if self.requested_early_exit:
            log.info("Test interrupted.")
        return self.requested_early_exit

    def test(self, test_net_id: int = 0) -> dict:
        """Runs ``test_iter`` forward passes of a test net; logs and returns the mean of each output."""
        p = self.param
        if p.eval_type == "detection":        # SSD-Caffe: outputs are DetectionEvaluate rows, pooled into mAP
            from .detection_eval import test_detection
            return test_detection(self, test_net_id)
        log.info("Iteration %d, Testing net (#%d)", self.iter, test_net_id)
        net = self.test_nets[test_net_id]
        n = int(p.test_iter[test_net_id])
        sums = {}
        loss = 0.0
        for _ in range(n):
            if self._test_interrupted():
                return {}
            it_loss = net.forward_loss()
            loss += it_loss
            for name in net.outputs:
                v = backend.to_numpy(net.blobs[name].data).astype(np.float64).ravel()
                sums[name] = sums.get(name, 0.0) + v
        if p.test_compute_loss and n:
            log.info("Test loss: %.6g", loss / n)
        means = {name: s / max(n, 1) for name, s in sums.items()}
        self._log_outputs(net, "Test", means)
        return {name: (float(m[0]) if m.size == 1 else m) for name, m in means.items()}

    # --- the update (Caffe's SGDSolver::ApplyUpdate) -------------------------------------------------------
    def apply_update(self) -> None:
        p = self.param
        rate, self.current_step = self.learning_rate()
        if p.display and self.iter % p.display == 0:
            log.info("Iteration %d, lr = %.6g", self.iter, rate)
        self.clip_gradients()
        params = self.net.learnable_params
        pending = []
        for i, blob in enumerate(params):
            if p.iter_size > 1:
                blob.diff *= blob.dtype.type(1.0 / p.iter_size)
            if self.update_in_blocks(i, rate):  # regularized, updated and applied in one pass
                continue
            self.regularize(i)
            self.compute_update_value(i, rate)
            pending.append(blob)
        for blob in pending:
            blob.data -= blob.diff

    def update_in_blocks(self, i: int, rate: float) -> bool:
        """Solvers with a fused update apply it to parameter ``i`` (regularization, update value, ``data -=
        diff``, the same bits as the three steps) and return True; the base class does not."""
        return False

    def clip_gradients(self) -> None:
        clip = self.param.clip_gradients
        if clip < 0:
            return
        params = self.net.learnable_params
        # summed on the device, read once (one host sync per iteration, not one per blob)
        sumsq = float(sum((b.diff.astype(np.float64) ** 2).sum() for b in params))
        norm = math.sqrt(sumsq)
        if norm > clip:
            scale = clip / norm
            log.info("Gradient clipping: scaling down gradients (L2 norm %g > %g) by scale factor %g",
                     norm, clip, scale)
            for b in params:
                b.diff *= b.dtype.type(scale)

    def regularize(self, i: int) -> None:
        p = self.param
        blob = self.net.learnable_params[i]
        decay = np.float32(p.weight_decay) * np.float32(self.net.params_weight_decay[i])
        if not decay:
            return
        if p.regularization_type == "L2":
            blob.diff += blob.dtype.type(decay) * blob.data
        elif p.regularization_type == "L1":
            blob.diff += blob.dtype.type(decay) * blob.xp.sign(blob.data)
        else:
            raise PcnError("solver: unknown regularization_type %r (L1 or L2)" % p.regularization_type)

    def compute_update_value(self, i: int, rate: float) -> None:
        raise NotImplementedError

    def local_rate(self, i: int, rate: float):
        return np.float32(rate) * np.float32(self.net.params_lr[i])

    # --- snapshots ----------------------------------------------------------------------------------------
    def snapshot_filename(self, extension: str) -> str:
        return "%s_iter_%d%s" % (self.param.snapshot_prefix, self.iter, extension)

    def snapshot(self) -> str:
        """Writes <prefix>_iter_N.caffemodel and .solverstate (atomically); returns the state file's path."""
        hdf5 = self.param.snapshot_format == caffe_pb2.SolverParameter.HDF5
        model = self.snapshot_filename(".caffemodel.h5" if hdf5 else ".caffemodel")
        state = self.snapshot_filename(".solverstate.h5" if hdf5 else ".solverstate")
        if not distributed.root_solver():   # with data parallelism rank 0 alone writes snapshots
            return state
        if os.path.exists(model) and not self._finite("data"):   # only reachable with allow_nan
            log.warning("Not snapshotting: the weights are not finite and %s already exists", model)
            return state
        if hdf5:
            log.info("Snapshotting to HDF5 file %s", model)
            self.net.save_hdf5(model)
        else:
            log.info("Snapshotting to binary proto file %s", model)
            self.net.save(model, write_diff=self.param.snapshot_diff)
        log.info("Snapshotting solver state to %s file %s", "HDF5" if hdf5 else "binary proto", state)
        if hdf5:
            self._write_state_hdf5(state, model)
        else:
            msg = caffe_pb2.SolverState(iter=self.iter, learned_net=model, current_step=self.current_step)
            for h in self.history:
                msg.history.add().CopyFrom(array_to_blobproto(backend.to_numpy(h.data)))
            prototxt.write_binary(state, msg)
        return state

    def _write_state_hdf5(self, path: str, model: str) -> None:
        with atomic_hdf5(path) as f:
            f.create_dataset("iter", data=self.iter)
            # a fixed-length string, as Caffe's hdf5_save_string writes it (Caffe cannot read a variable-length one)
            f.create_dataset("learned_net", data=np.bytes_(model.encode("utf-8")))
            f.create_dataset("current_step", data=self.current_step)
            g = f.create_group("history")
            for i, h in enumerate(self.history):
                g.create_dataset(str(i), data=backend.to_numpy(h.data))

    def restore(self, state_file: str) -> None:
        """Continues from a .solverstate(.h5): iteration, learning-rate step, history and the learned weights."""
        state_file = os.fspath(state_file)
        if state_file.endswith(".h5"):
            it, step, learned, history = _read_state_hdf5(state_file, [h.count for h in self.history])
        else:
            msg = prototxt.read_binary(state_file, caffe_pb2.SolverState(), "solver state file")
            it, step, learned = msg.iter, msg.current_step, msg.learned_net
            if isinstance(learned, bytes):   # protobuf hands back a string field that is not UTF-8 as bytes
                raise PcnError("%s: learned_net is not UTF-8 text (a damaged file?): %r" % (state_file, learned[:80]))
            try:
                history = [blobproto_to_array(b) for b in msg.history]
            except PcnError as e:
                raise PcnError("%s: %s" % (state_file, e)) from None
        if it < 0 or step < 0:
            raise PcnError("%s: iteration %d and learning-rate step %d cannot be negative (a damaged file?)"
                           % (state_file, it, step))
        if len(history) != len(self.history):
            raise PcnError("%s: %d history blobs, but this solver and net need %d (a different net or solver type?)"
                           % (state_file, len(history), len(self.history)))
        for h, v in zip(self.history, history):
            if h.count != v.size:
                raise PcnError("%s: a history blob has %d values where the net's parameter has %d"
                               % (state_file, v.size, h.count))
            h.data[...] = h.xp.asarray(v.reshape(h.shape))
        if learned:
            if not os.path.exists(learned):
                alt = os.path.join(os.path.dirname(os.path.abspath(state_file)), os.path.basename(learned))
                learned = alt if os.path.exists(alt) else learned
            self.net.copy_from(learned)
        self.iter, self.current_step = it, step
        batches = self.iter * max(int(self.param.iter_size), 1)
        for layer in self.net.layers:
            if hasattr(layer, "restore_position"):
                layer.restore_position(batches)
