"""A small thread pool for the array work outside BLAS (pooling, LRN, layout copies).

NumPy releases the GIL inside its loops, so splitting a batch into a few chunks and running them on threads uses
the cores BLAS uses for matrix products. ``PCN_THREADS`` sets the number of threads (default: the CPU count, at
most 4); 1 runs everything on the calling thread. CuPy arrays are never split (the GPU is parallel already).
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional

# Below this many elements per call the thread hand-off (tens of microseconds) costs more than it saves.
MIN_ELEMENTS = 1 << 16

_pool: Optional[ThreadPoolExecutor] = None
_pool_size = 0
_pool_lock = threading.Lock()
_inside = threading.local()


def num_threads() -> int:
    """Threads for array work: ``PCN_THREADS`` when set to a positive integer, else min(CPU count, 4)."""
    value = os.environ.get("PCN_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    return max(1, min(os.cpu_count() or 1, 4))


def _executor(workers: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < workers:
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pcn-array")
            _pool_size = workers
        return _pool


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

    futures = [_executor(threads - 1).submit(run, bounds[t], bounds[t + 1]) for t in range(1, threads)]
    try:
        run(bounds[0], bounds[1])
    finally:
        for f in futures:
            f.result()
