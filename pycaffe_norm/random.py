"""The one random number generator of pcn (Caffe's ``Caffe::rng``), seeded by ``set_random_seed``.

Fillers, data shuffling and Dropout draw from it on the CPU, so a seeded run is reproducible on either backend.
"""
from __future__ import annotations

import numpy as np

_rng = np.random.RandomState()


def set_random_seed(seed: int) -> None:
    global _rng
    _rng = np.random.RandomState(int(seed) & 0xFFFFFFFF)


def rng() -> np.random.RandomState:
    return _rng
