"""tools/run_bvlc_pycaffe_tests.py on a stand-in BVLC tree: BVLC-style tests import ``caffe`` and its submodules and
get pcn; test_nccl.py is left out; pytest's status is the tool's."""
from __future__ import annotations

import pytest

from tests.support import load_tool

PYCAFFE_STYLE_TEST = '''
import os
import unittest

import caffe
from caffe import layers as L
from caffe.coord_map import coord_map_from_to
from caffe.proto import caffe_pb2


class TestAlias(unittest.TestCase):
    def test_caffe_is_pcn(self):
        self.assertEqual(caffe.__name__, "pycaffe_norm")
        self.assertIs(caffe_pb2, caffe.proto.caffe_pb2)
        n = caffe.NetSpec()
        n.data = L.Input(shape=dict(dim=[1, 1, 8, 8]))
        n.conv = L.Convolution(n.data, num_output=1, kernel_size=3, pad=1)
        self.assertEqual(coord_map_from_to(n.conv, n.data)[1:], (1, 0))

    def test_tree_beside_the_tests(self):
        root = os.path.join(os.path.dirname(__file__), "..", "..", "..")
        self.assertTrue(os.path.isfile(os.path.join(root, "models", "m", "deploy.prototxt")))
'''


@pytest.fixture
def bvlc_tree(tmp_path):
    tests = tmp_path / "caffe" / "python" / "caffe" / "test"
    tests.mkdir(parents=True)
    (tmp_path / "caffe" / "python" / "caffe" / "__init__.py").write_text("raise ImportError('BVLC pycaffe')\n")
    (tests / "test_alias.py").write_text(PYCAFFE_STYLE_TEST)
    (tests / "test_nccl.py").write_text("import caffe\nassert caffe.NCCL\n")
    (tmp_path / "caffe" / "models" / "m").mkdir(parents=True)
    (tmp_path / "caffe" / "models" / "m" / "deploy.prototxt").write_text('name: "m"\n')
    (tmp_path / "caffe" / "examples").mkdir()
    return tmp_path / "caffe"


def test_runs_bvlc_style_tests_against_pcn(bvlc_tree, capfd):
    tool = load_tool("run_bvlc_pycaffe_tests")
    assert tool.main([str(bvlc_tree), "-q"]) == 0
    out = capfd.readouterr().out
    assert "2 passed" in out and "nccl" not in out.lower()
    (bvlc_tree / "python" / "caffe" / "test" / "test_fails.py").write_text("def test_no():\n    assert False\n")
    assert tool.main([str(bvlc_tree), "-q"]) == 1


def test_not_a_bvlc_checkout(tmp_path):
    with pytest.raises(SystemExit, match="not a BVLC Caffe checkout"):
        load_tool("run_bvlc_pycaffe_tests").main([str(tmp_path)])
