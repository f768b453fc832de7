"""pycaffe_norm.parallel: batch chunks cover the batch once, run on threads, nest serially, raise errors."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from pycaffe_norm import parallel


@pytest.fixture
def threads(monkeypatch):
    monkeypatch.setenv("PCN_THREADS", "3")
    monkeypatch.setattr(parallel, "MIN_ELEMENTS", 0)


def test_chunks_cover_the_batch_once_on_several_threads(threads):
    seen, names = [], set()
    barrier = threading.Barrier(3)

    def fn(n0, n1):
        seen.append((n0, n1))
        names.add(threading.current_thread().name)
        barrier.wait(timeout=10)   # all three chunks run at the same time

    parallel.over_batch(10, fn, elements=1)
    assert sorted(seen) == [(0, 3), (3, 6), (6, 10)]
    assert len(names) == 3


def test_small_work_and_single_thread_run_on_the_caller(monkeypatch):
    seen = []
    parallel.over_batch(8, lambda a, b: seen.append((a, b)), elements=10)   # below MIN_ELEMENTS
    monkeypatch.setenv("PCN_THREADS", "1")
    parallel.over_batch(8, lambda a, b: seen.append((a, b)), elements=1 << 30)
    assert seen == [(0, 8), (0, 8)]


def test_nested_calls_run_serially(threads):
    inner = []
    parallel.over_batch(4, lambda a, b: parallel.over_batch(b - a, lambda c, d: inner.append((c, d)), 1), 1)
    assert sorted(inner) == [(0, 1), (0, 1), (0, 2)]


def test_an_error_in_a_chunk_is_raised(threads):
    def fn(n0, n1):
        if n0 > 0:
            raise ValueError("chunk %d" % n0)

    with pytest.raises(ValueError, match="chunk"):
        parallel.over_batch(6, fn, elements=1)


def test_pcn_threads_parses(monkeypatch):
    monkeypatch.setenv("PCN_THREADS", "2")
    assert parallel.num_threads() == 2
    monkeypatch.setenv("PCN_THREADS", "zero")
    assert 1 <= parallel.num_threads() <= 4


def test_blocks_split_each_threads_part(threads):
    seen = []
    parallel.over_batch(9, lambda a, b: seen.append((a, b)), elements=90, block=20)   # 10 per image: 2 per block
    assert sorted(seen) == [(0, 2), (2, 3), (3, 5), (5, 6), (6, 8), (8, 9)]


def _blas_threads():
    """Threads of the BLAS libraries pcn drives (those loaded with NumPy; others tests load later are not ours)."""
    parallel.single_threaded_blas()  # finds them on first use
    return [lib["num_threads"] for lib in parallel._blas.info() if lib["user_api"] == "blas"]


def test_blas_runs_single_threaded_inside_the_pool_and_in_a_net_pass(threads):
    pytest.importorskip("threadpoolctl")
    seen = []
    parallel.over_batch(3, lambda a, b: seen.append(_blas_threads()), elements=1)
    assert seen and all(n == [1] * len(n) for n in seen)
    with parallel.pass_context(numpy=True):
        assert all(n == 1 for n in _blas_threads())


def test_pass_context_leaves_blas_alone_on_one_thread_or_the_gpu(monkeypatch):
    pytest.importorskip("threadpoolctl")
    before = _blas_threads()
    monkeypatch.setenv("PCN_THREADS", "1")
    with parallel.pass_context(numpy=True):
        assert _blas_threads() == before
    monkeypatch.setenv("PCN_THREADS", "3")
    with parallel.pass_context(numpy=False):
        assert _blas_threads() == before


@pytest.mark.parametrize("shape", [(37, 5, 11), (3, 40, 90), (1, 7, 1)])
def test_matmul_split_over_threads_equals_numpy(threads, shape):
    m, k, n = shape
    rng = np.random.RandomState(0)
    a, b = rng.randn(m, k), rng.randn(k, n)
    out = np.full((m, n), np.nan)
    parallel.matmul(a, b, out)
    np.testing.assert_allclose(out, a @ b, rtol=1e-13, atol=1e-13)
