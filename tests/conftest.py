"""Every test starts from the same global random state, so results never depend on test order."""
from __future__ import annotations

import pytest

import pycaffe_norm as caffe


@pytest.fixture(autouse=True)
def _seeded_rng():
    caffe.set_random_seed(1701)
    yield
