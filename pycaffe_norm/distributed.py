"""Data-parallel training over MPI: Caffe's multi-GPU semantics (P2PSync / NCCL) across processes and machines.

Every rank builds the same solver and runs the solver's full batch on its own share of the data (the data layers
read ``solver_count()`` and ``solver_rank()``, as Caffe's do); after each iteration's backward pass the gradients
of the learnable parameters are summed across ranks and scaled by ``1 / solver_count()`` (Caffe's
``NCCL::on_gradients_ready``), so K ranks with batch B follow one process with batch K*B. Rank 0 alone tests,
logs and snapshots. The sums go through mpi4py (``pip install 'pycaffe_norm[mpi]'``), imported only when a launcher
(``mpirun``, ``mpiexec``, ``srun``) started more than one rank. This module is not :mod:`pycaffe_norm.parallel`,
the thread pool for array work inside one process.
"""
from __future__ import annotations

import logging
import os
import time
import uuid
from typing import Callable, List, Optional, Tuple

import numpy as np

from . import backend
from .errors import PcnError

log = logging.getLogger("pycaffe_norm")

MPI_HINT = "pip install 'pycaffe_norm[mpi]'"
# Gradients are summed in buckets of about this many bytes; a bucket's sum starts as soon as the backward pass has
# produced all of its gradients (PCN_BUCKET_MB overrides).
DEFAULT_BUCKET_BYTES = 4 << 20

# Caffe's process-wide solver count and rank (Caffe::solver_count, Caffe::solver_rank, Caffe::multiprocess).
_solver_count = 1
_solver_rank = 0
_multiprocess = False
_comm: Optional["Communicator"] = None


def solver_count() -> int:
    """The number of solvers training together (Caffe::solver_count); 1 without data parallelism."""
    return _solver_count


def solver_rank() -> int:
    """This solver's rank, 0 to ``solver_count() - 1`` (Caffe::solver_rank)."""
    return _solver_rank


def set_solver_count(count: int) -> None:
    global _solver_count
    if int(count) < 1:
        raise PcnError("solver count must be >= 1, got %d" % int(count))
    _solver_count = int(count)


def set_solver_rank(rank: int) -> None:
    global _solver_rank
    if int(rank) < 0:
        raise PcnError("solver rank must be >= 0, got %d" % int(rank))
    _solver_rank = int(rank)


def set_multiprocess(multiprocess: bool) -> None:
    """Caffe::set_multiprocess: each solver in its own process. Under a launcher (``mpirun -n K python
    script.py``) ``set_multiprocess(True)`` also joins the K ranks, setting solver count and rank from MPI, so a
    script can call it before it builds its solver (the data layers read count and rank when they are built)."""
    global _multiprocess
    _multiprocess = bool(multiprocess)
    if _multiprocess:
        init()


def multiprocess() -> bool:
    return _multiprocess


def root_solver() -> bool:
    """Whether this is rank 0, the solver that logs, tests and snapshots (Caffe::root_solver)."""
    return _solver_rank == 0


def sharded(phase: int) -> bool:
    """Whether a data layer of ``phase`` reads a share of its records: TRAIN nets of more than one solver (only rank
    0 runs test nets, on all their records, as in Caffe)."""
    from .proto import caffe_pb2

    return _solver_count > 1 and phase == caffe_pb2.TRAIN


def launcher_world() -> Tuple[int, int]:
    """(rank, size) that an MPI launcher or Slurm's srun put into the environment; (0, 1) when there is none.

    Open MPI sets OMPI_COMM_WORLD_*, MPICH and Intel MPI PMI_*, srun SLURM_STEP_NUM_TASKS and SLURM_PROCID (a
    batch script's own step has no SLURM_STEP_NUM_TASKS, so ``sbatch`` alone is one process)."""
    env = os.environ
    for size_var, rank_var in (("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"), ("PMI_SIZE", "PMI_RANK"),
                               ("PMIX_SIZE", "PMIX_RANK"), ("SLURM_STEP_NUM_TASKS", "SLURM_PROCID")):
        size, rank = env.get(size_var, "").strip(), env.get(rank_var, "").strip()
        if size.isdigit() and rank.isdigit() and int(size) >= 1:
            return int(rank), int(size)
    return 0, 1


class Communicator:
    """The collectives data parallelism needs, over an mpi4py communicator. Arrays are NumPy; CuPy arrays are
    copied to the host and back (no CUDA-aware MPI is assumed)."""

    def __init__(self, comm):
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()

    def allreduce_sum(self, buf: np.ndarray) -> None:
        """Sums ``buf`` (a contiguous NumPy array) over all ranks, in place."""
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)

    def iallreduce_sum(self, buf: np.ndarray):
        """Starts summing ``buf`` in place; returns the request to wait for."""
        return self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)

    def wait_all(self, requests) -> None:
        self.MPI.Request.Waitall(requests)

    def test_all(self, requests) -> None:
        """Lets outstanding requests progress (MPI moves non-blocking collectives forward inside its calls)."""
        if requests:
            self.MPI.Request.Testall(requests)

    def bcast_array(self, arr, root: int = 0) -> None:
        host = np.ascontiguousarray(backend.to_numpy(arr))
        self.comm.Bcast(host, root=root)
        if host is not arr:
            arr[...] = backend.array_module(arr).asarray(host)

    def bcast_object(self, obj, root: int = 0):
        return self.comm.bcast(obj, root=root)

    def barrier(self) -> None:
        self.comm.Barrier()

    def idle_barrier(self, interval: float = 0.002) -> None:
        """A barrier that sleeps while it waits (MPI's own spins on a core that a busy rank may need)."""
        request = self.comm.Ibarrier()
        while not request.Test():
            time.sleep(interval)


def communicator() -> Optional[Communicator]:
    """The communicator that :func:`init` set up, or None in a single process."""
    return _comm


def init(required: bool = False) -> Optional[Communicator]:
    """Joins the ranks a launcher started: sets solver count and rank from MPI_COMM_WORLD and returns the
    communicator; None when no launcher started more than one rank (then mpi4py is never imported). Launched
    ranks without mpi4py are a one-line error saying what to install. ``required``: use MPI_COMM_WORLD even when
    the environment names no launcher (a script that set the solver count itself)."""
    global _comm
    if _comm is not None:
        return _comm
    rank, size = launcher_world()
    if size <= 1 and not required:
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        if size <= 1:
            raise PcnError("data parallelism (caffe.NCCL) needs mpi4py: %s" % MPI_HINT) from None
        raise PcnError("started as %d ranks (by mpirun, mpiexec or srun), but mpi4py is not installed, so they "
                       "cannot train together: %s (or pip install mpi4py built for your MPI)"
                       % (size, MPI_HINT)) from None
    comm = MPI.COMM_WORLD
    if comm.Get_size() != size and size > 1:
        raise PcnError("the launcher started %d ranks but MPI sees %d: mpi4py is built for a different MPI than the "
                       "mpirun used (use the mpirun of the MPI that mpi4py was built with)" % (size, comm.Get_size()))
    _comm = Communicator(comm)
    set_solver_count(_comm.size)
    set_solver_rank(_comm.rank)
    set_multiprocess(True)
    return _comm


def shared_seed(comm: Communicator, seed: int) -> int:
    """Rank 0's ``seed``, or when it is negative a seed rank 0 draws, on every rank: the data layers' shuffles must
    be the same on all ranks for their shares to be disjoint."""
    if seed < 0 and comm.rank == 0:
        seed = int(np.random.SeedSequence().generate_state(1)[0] & 0x7FFFFFFF)
    return int(comm.bcast_object(int(seed)))


_ACTIONS = ("none", "snapshot", "stop")


class DataParallel:
    """Caffe's ``NCCL<Dtype>`` solver callback over MPI: broadcasts rank 0's parameters, sums the gradients of
    the learnable parameters in buckets (started during the backward pass when it is registered with
    ``net.after_backward``), scales them by ``1 / solver_count()``, averages the loss over ranks and makes every
    rank act on a Ctrl-C or SIGHUP request after the same iteration.

    The pycaffe names work as in BVLC's ``python/train.py``: ``nccl.bcast()``, ``solver.add_callback(nccl)``,
    ``solver.net.after_backward(nccl)``."""

    def __init__(self, solver, comm: Optional[Communicator] = None, bucket_bytes: Optional[int] = None):
        comm = comm if comm is not None else init(required=True)
        self.solver = solver
        self.comm = comm
        if bucket_bytes is None:
            mb = os.environ.get("PCN_BUCKET_MB", "").strip()
            try:
                bucket_bytes = int(float(mb) * (1 << 20)) if mb else DEFAULT_BUCKET_BYTES
            except ValueError:
                raise PcnError("PCN_BUCKET_MB must be a number of MiB, not %r" % mb) from None
        self.params = list(solver.net.learnable_params)
        self._buckets = self._make_buckets(solver.net, max(int(bucket_bytes), 1))
        self._pending: List = []      # (request, bucket) of sums in flight this iteration
        self._started = 0             # buckets started this iteration
        solver.parallel = self

    # --- buckets ------------------------------------------------------------------------------------------
    def _make_buckets(self, net, bucket_bytes: int) -> List[dict]:
        """Groups the learnable parameters into buckets in the order the backward pass finishes them: a parameter
        is ready after the first layer (in forward order) that uses it has run backward."""
        ready_at = {}
        for i, layer in enumerate(net.layers):
            for b in layer.blobs:
                if id(b) not in ready_at:
                    ready_at[id(b)] = i
        order = sorted(range(len(self.params)), key=lambda k: (-ready_at.get(id(self.params[k]), 0), k))
        buckets, current, size = [], [], 0
        for k in order:
            current.append(k)
            size += self.params[k].count * self.params[k].dtype.itemsize
            if size >= bucket_bytes:
                buckets.append(current)
                current, size = [], 0
        if current:
            buckets.append(current)
        out = []
        for ids in buckets:
            dtype = np.result_type(*[self.params[k].dtype for k in ids])
            n = sum(self.params[k].count for k in ids)
            out.append({"ids": ids, "buf": np.empty(n, dtype=dtype),
                        "ready_at": min(ready_at.get(id(self.params[k]), 0) for k in ids)})
        return out

    def _pack(self, bucket: dict) -> None:
        buf, o = bucket["buf"], 0
        for k in bucket["ids"]:
            p = self.params[k]
            buf[o:o + p.count] = backend.to_numpy(p.diff).ravel()
            o += p.count

    def _unpack(self, bucket: dict) -> None:
        buf, o = bucket["buf"], 0
        for k in bucket["ids"]:
            p = self.params[k]
            part = buf[o:o + p.count].reshape(p.shape)
            p.diff[...] = p.xp.asarray(part) if p.xp is not np else part
            o += p.count

    def _start(self, bucket: dict) -> None:
        self._pack(bucket)
        self._pending.append((self.comm.iallreduce_sum(bucket["buf"]), bucket))
        self._started += 1

    # --- callbacks ----------------------------------------------------------------------------------------
    def bcast(self) -> None:
        """Copies rank 0's parameters (learnable or not, BatchNorm's statistics included) to every rank."""
        for blobs in self.solver.net.params.values():
            for b in blobs:
                self.comm.bcast_array(b.data)

    def on_start(self) -> None:
        self._pending, self._started = [], 0

    def __call__(self, layer: int) -> None:
        """``net.after_backward``: starts the sum of every bucket whose gradients are complete once ``layer``'s
        backward pass has run (only in the last of ``iter_size`` passes), and lets the started ones progress."""
        if self._in_last_pass():
            while self._started < len(self._buckets) and self._buckets[self._started]["ready_at"] >= layer:
                self._start(self._buckets[self._started])
        self.comm.test_all([r for r, _ in self._pending])

    def _in_last_pass(self) -> bool:
        return getattr(self.solver, "_pass_index", 0) == max(int(self.solver.param.iter_size), 1) - 1

    def on_gradients_ready(self) -> None:
        """Finishes the sums (starting those the backward pass did not), then scales by 1 / solver_count()."""
        while self._started < len(self._buckets):
            self._start(self._buckets[self._started])
        self.comm.wait_all([r for r, _ in self._pending])
        inv = 1.0 / self.comm.size
        for _, bucket in self._pending:
            bucket["buf"] *= bucket["buf"].dtype.type(inv)
            self._unpack(bucket)
        self._pending, self._started = [], 0

    def agree(self, loss: float, action: Callable[[], str]) -> Tuple[float, str]:
        """The loss averaged over ranks and the action all ranks take after this iteration: "stop" when any rank
        was asked to stop, else "snapshot" when any was asked to, else "none". ``action`` polls this rank's
        requests; all pending ones are taken."""
        flags = [0.0, 0.0]
        request = action()
        while request != "none":
            if request in _ACTIONS:
                flags[_ACTIONS.index(request) - 1] = 1.0
            request = action()
        buf = np.array([float(loss)] + flags, dtype=np.float64)
        self.comm.allreduce_sum(buf)
        agreed = "stop" if buf[2] else "snapshot" if buf[1] else "none"
        return float(buf[0] / self.comm.size), agreed

    def wait_idle(self) -> None:
        """Waits, sleeping, for every rank (while rank 0 tests, the others would spin in the next sum)."""
        self.comm.idle_barrier()

    def mean(self, value: float) -> float:
        buf = np.array([float(value)], dtype=np.float64)
        self.comm.allreduce_sum(buf)
        return float(buf[0] / self.comm.size)


class NCCL(DataParallel):
    """pycaffe's ``caffe.NCCL(solver, uid)``: BVLC's ``python/train.py`` pattern, with MPI underneath. The ranks are
    those an MPI launcher started (``mpirun -n K python train.py ...``); ``uid`` is accepted and not needed."""

    def __init__(self, solver, uid=None):
        count, rank = _solver_count, _solver_rank
        comm = init(required=True)
        if (count, rank) not in ((1, 0), (comm.size, comm.rank)):
            raise PcnError("caffe.NCCL: set_solver_count(%d) and set_solver_rank(%d) do not match the MPI launch "
                           "(rank %d of %d); start one process per solver with mpirun -n %d" % (
                               count, rank, comm.rank, comm.size, count))
        super().__init__(solver, comm)

    @staticmethod
    def new_uid() -> bytes:
        return uuid.uuid4().bytes


class Timer:
    """pycaffe's ``caffe.Timer`` (BVLC's ``python/train.py --timing`` times layers and the gradient sums with it):
    ``start()``, ``stop()``, and ``ms``, the milliseconds between the last start and stop."""

    def __init__(self):
        self._start = None
        self._ms = 0.0

    def start(self) -> None:
        self._start = time.perf_counter()

    def stop(self) -> None:
        if self._start is not None:
            self._ms = (time.perf_counter() - self._start) * 1e3
            self._start = None

    @property
    def ms(self) -> float:
        return self._ms
