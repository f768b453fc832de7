"""Every SSD-Caffe reference case in tests/reference_ssd (outputs of SSD-Caffe itself: Normalize, Permute, PriorBox,
MultiBoxLoss, DetectionOutput and an SSD head net), driven exactly as tests/test_reference.py drives the BVLC cases."""
from __future__ import annotations

import pathlib

import pytest

from tests import test_reference as bvlc

REF = pathlib.Path(__file__).parent / "reference_ssd"
CASES = sorted(p.parent for p in REF.glob("*/case.json"))


def test_all_cases_present():
    assert len(CASES) == 22


@pytest.mark.parametrize("d", CASES, ids=lambda d: d.name)
def test_ssd_case(d):
    bvlc.test_forward_backward(d)
