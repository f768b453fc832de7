"""The compiled CPU loops (pycaffe_norm/layers/cpu_kernels.py, Numba) against the layers' NumPy code: the same bits
for every pooling mode, dtype, tie and NaN; and the BVLC reference cases pass on the NumPy path too."""
from __future__ import annotations

import numpy as np
import pytest

from pycaffe_norm import parallel
from pycaffe_norm.layers import cpu_kernels
from tests.layers.test_vision import POOL_MODES, gaussian, setup_layer
from tests.test_reference import CASES, run_case

needs_numba = pytest.mark.skipif(not cpu_kernels.available(), reason="Numba is not installed")

EXTRA_MODES = {
    # CIFAR-10's pool1 geometry at a small size (ceil mode, overlapping windows), and a window larger than stride
    "cifar_max": ("pool: MAX kernel_size: 3 stride: 2", (3, 4, 9, 9)),
    "cifar_ave": ("pool: AVE kernel_size: 3 stride: 2", (3, 4, 9, 9)),
    "max_k5s1p2": ("pool: MAX kernel_size: 5 stride: 1 pad: 2", (2, 3, 6, 5)),
    "ave_k5s3p2": ("pool: AVE kernel_size: 5 stride: 3 pad: 2", (2, 3, 8, 7)),
    "max_k1": ("pool: MAX kernel_size: 1 stride: 2", (2, 2, 5, 5)),
}
MODES = {name: POOL_MODES[name][:2] for name in POOL_MODES}
MODES.update(EXTRA_MODES)


def _run(text, x, dy_seed, dtype, compiled, monkeypatch):
    monkeypatch.setattr(cpu_kernels, "USE_KERNELS", compiled)
    ntop = 2 if "MAX" in text else 1
    layer, b, t = setup_layer('type: "Pooling" pooling_param { %s }' % text, x, dtype=dtype, ntop=ntop)
    layer.forward(b, t)
    t[0].diff[...] = gaussian(t[0].shape, dy_seed)
    layer.backward(t, [True], b)
    return [a.data.copy() for a in t] + [b[0].diff.copy()]


def _same(a, b):
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", sorted(MODES))
def test_pooling_loops_give_the_numpy_bits(mode, dtype, monkeypatch):
    text, shape = MODES[mode]
    x = gaussian(shape, 3)
    _same(_run(text, x, 4, dtype, True, monkeypatch), _run(text, x, 4, dtype, False, monkeypatch))


@needs_numba
@pytest.mark.parametrize("mode", ["cifar_max", "max_pad", "max_overlap_s1", "cifar_ave"])
def test_pooling_loops_ties_nan_and_inf(mode, monkeypatch):
    """Ties keep the first offset in scan order; NaN propagates to the output without moving the argmax."""
    text, shape = MODES[mode]
    x = np.round(gaussian(shape, 5))  # many ties
    x.flat[::7] = np.nan
    x.flat[3::11] = -np.inf
    x.flat[5::13] = np.inf
    with np.errstate(invalid="ignore"):
        _same(_run(text, x, 6, np.float32, True, monkeypatch), _run(text, x, 6, np.float32, False, monkeypatch))


@needs_numba
def test_pooling_loops_on_threads(monkeypatch):
    monkeypatch.setenv("PCN_THREADS", "3")
    monkeypatch.setattr(parallel, "MIN_ELEMENTS", 0)
    text, shape = MODES["cifar_max"]
    x = gaussian((7,) + shape[1:], 8)
    threaded = _run(text, x, 9, np.float32, True, monkeypatch)
    monkeypatch.setenv("PCN_THREADS", "1")
    _same(threaded, _run(text, x, 9, np.float32, True, monkeypatch))


def test_switches(monkeypatch):
    a = np.zeros(3, np.float32)
    monkeypatch.setenv("PCN_NUMBA", "0")
    assert not cpu_kernels.enabled(a)
    monkeypatch.delenv("PCN_NUMBA")
    assert cpu_kernels.enabled(a) == cpu_kernels.available()
    assert not cpu_kernels.enabled(a.astype(np.int32))
    monkeypatch.setattr(cpu_kernels, "USE_KERNELS", False)
    assert not cpu_kernels.enabled(a)


@pytest.mark.parametrize("d", [d for d in CASES if d.name.startswith("pool_")], ids=lambda d: d.name)
def test_reference_pooling_on_the_numpy_path(d, monkeypatch):
    monkeypatch.setattr(cpu_kernels, "USE_KERNELS", False)
    run_case(d)
