"""The one random number generator of pcn (Caffe's ``Caffe::rng``), seeded by ``set_random_seed``.

Fillers, data shuffling and Dropout on the CPU draw from it; on the GPU Dropout draws its mask from CuPy's generator,
seeded here too (so a seeded GPU run is reproducible, with masks other than the CPU's, as in Caffe).
"""
from __future__ import annotations

import numpy as np

from . import backend

_rng = np.random.RandomState()


def set_random_seed(seed: int) -> None:
    global _rng
    _rng = np.random.RandomState(int(seed) & 0xFFFFFFFF)
    backend.seed_device(seed)  # Dropout draws its GPU masks from CuPy's generator


def rng() -> np.random.RandomState:
    return _rng
