"""A small thread pool that splits a batch over the cores (convolutions, pooling, LRN, layout copies).

NumPy releases the GIL inside its loops and matrix products, so chunks of a batch run in parallel on threads.
While the pool runs, BLAS is held to one thread per call: each core then runs its own chunk's copies and
GEMMs back to back in its cache, instead of BLAS's threads spinning for cores the pool's threads hold (on a 2-core
machine that contention made a CIFAR-10 training step vary between 120 and 220 ms). ``PCN_THREADS`` sets the
number of threads (default: the CPU count, at most 4); 1 runs everything on the calling thread and leaves BLAS
its own threads. CuPy arrays are never split (the GPU is parallel already).
"""
from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional

import numpy as np

# Below this many elements per call the thread hand-off (tens of microseconds) costs more than it saves.
MIN_ELEMENTS = 1 << 16

_pool: Optional[ThreadPoolExecutor] = None
_pool_size = 0
_pool_lock = threading.Lock()
_inside = threading.local()
_blas = None  # threadpoolctl's controller, found on first use; False when threadpoolctl is missing
_held = 0  # depth of the pass contexts holding BLAS to one thread (then the pool need not set it again)
_CPUS = os.cpu_count() or 1  # read once: os.cpu_count() costs ~15 us a call on some Linux VMs


def single_threaded_blas():
    """A context in which BLAS runs each call on the calling thread (threadpoolctl; a no-op without it)."""
    global _blas
    if _held:
        return contextlib.nullcontext()
    if _blas is None:
        try:
            import threadpoolctl
            _blas = threadpoolctl.ThreadpoolController()
        except Exception:  # not installed, or a BLAS it cannot drive: BLAS keeps its threads
            _blas = False
    if _blas is False:
        return contextlib.nullcontext()
    return _blas.limit(limits=1, user_api="blas")


def num_threads() -> int:
    """Threads for array work: ``PCN_THREADS`` when set to a positive integer, else min(CPU count, 4)."""
    value = os.environ.get("PCN_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    return max(1, min(_CPUS, 4))


def _executor(workers: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < workers:
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pcn-array")
            _pool_size = workers
        return _pool


@contextlib.contextmanager
def _holding():
    global _held
    with single_threaded_blas():
        _held += 1
        try:
            yield
        finally:
            _held -= 1


def pass_context(numpy: bool = True):
    """The context a net's forward or backward pass runs in: single-threaded BLAS when the pool splits the work
    (NumPy arrays and more than one thread), so that no BLAS thread spins between the pool's chunks."""
    if numpy and num_threads() > 1:
        return _holding()
    return contextlib.nullcontext()


def matmul(a, b, out) -> None:
    """``out[...] = a @ b`` for 2-D NumPy arrays, the rows of ``a`` (or, when it has few, the columns of ``b``)
    split over the pool, each chunk one single-threaded GEMM."""
    m, n = out.shape
    if m >= n or m >= 64:
        over_batch(m, lambda r0, r1: np.matmul(a[r0:r1], b, out=out[r0:r1]), m * n + a.size + b.size)
    else:
        over_batch(n, lambda c0, c1: np.matmul(a, b[:, c0:c1], out=out[:, c0:c1]), m * n + a.size + b.size)


def dot(a, b):
    """``a @ b`` for 2-D arrays: NumPy's split over the pool by ``matmul``, other backends' as they are."""
    if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
        return a @ b
    out = np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b))
    matmul(a, b, out)
    return out


def over_batch(n: int, fn: Callable[[int, int], None], elements: int = 0, numpy: bool = True,
               block: int = 0) -> None:
    """Calls ``fn(n0, n1)`` for chunks ``[n0, n1)`` covering ``range(n)``, on up to ``num_threads()`` threads, and
    returns when all are done (an exception in any chunk is raised here). ``fn`` must write only its own chunk.
    ``elements``: the size of the work, to run small calls on this thread; ``numpy``: False for CuPy arrays;
    ``block``: elements per call of ``fn`` (each thread walks its part in blocks of about that many elements, so
    that the temporaries of a multi-pass ``fn`` stay in the cache), 0 for one call per thread."""
    per_image = elements / max(n, 1)
    step = max(1, int(block // per_image)) if block and per_image else n

    def blocks(a: int, b: int) -> None:
        for b0 in range(a, b, step):
            fn(b0, min(b, b0 + step))

    threads = min(num_threads(), n)
    if threads <= 1 or not numpy or elements < MIN_ELEMENTS or getattr(_inside, "active", False):
        blocks(0, n)
        return
    bounds = [n * t // threads for t in range(threads + 1)]

    def run(a: int, b: int) -> None:
        _inside.active = True  # a chunk that itself asks for threads runs serially (no pool deadlock)
        try:
            blocks(a, b)
        finally:
            _inside.active = False

    with single_threaded_blas():
        futures = [_executor(threads - 1).submit(run, bounds[t], bounds[t + 1]) for t in range(1, threads)]
        try:
            run(bounds[0], bounds[1])
        finally:
            for f in futures:
                f.result()
