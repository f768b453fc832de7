#!/usr/bin/env python
"""Runs BVLC Caffe's own pycaffe tests against pcn, through a ``caffe`` package that is pycaffe_norm.

    python tools/run_bvlc_pycaffe_tests.py /path/to/BVLC/caffe [pytest arguments ...]

Nothing of BVLC's is copied into this repository: the script copies ``python/caffe/test`` (without
``test_nccl.py``: NCCL is multi-GPU only), ``examples`` and ``models`` from the given BVLC checkout into a
temporary folder laid out as in Caffe's tree (``test_draw.py`` walks ``../../../models`` and ``examples``), writes
a one-file ``caffe`` alias package next to it and runs pytest there. It prints pytest's summary and exits with
pytest's status. It needs ``pip install -e '.[test]'`` plus ``six`` (BVLC's tests import it).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIPPED_TESTS = ("test_nccl.py",)

# sys.modules entries make ``import caffe.io``, ``from caffe.proto import caffe_pb2`` and friends resolve to
# pcn's modules; ``caffe`` itself becomes the pycaffe_norm package.
ALIAS = '''"""pycaffe's name for pycaffe_norm (written by pcn's tools/run_bvlc_pycaffe_tests.py)."""
import importlib
import sys

import pycaffe_norm

for _name in ("proto", "proto.caffe_pb2", "io", "draw", "net_spec", "coord_map", "classifier", "layers"):
    try:
        sys.modules["caffe." + _name] = importlib.import_module("pycaffe_norm." + _name)
    except ModuleNotFoundError:  # a module pcn lacks: the tests that import it fail by name
        pass
sys.modules["caffe"] = pycaffe_norm
'''


def prepare(bvlc_root: str, work: str) -> str:
    """Copies BVLC's tests, examples and models under ``work`` and writes the alias; returns the test folder."""
    source_tests = os.path.join(bvlc_root, "python", "caffe", "test")
    if not os.path.isdir(source_tests):
        raise SystemExit("run_bvlc_pycaffe_tests: error: %s is not a BVLC Caffe checkout (no python/caffe/test)"
                         % bvlc_root)
    tests = os.path.join(work, "python", "caffe", "test")
    shutil.copytree(source_tests, tests, ignore=shutil.ignore_patterns(*SKIPPED_TESTS, "__pycache__"))
    for folder in ("examples", "models"):
        shutil.copytree(os.path.join(bvlc_root, folder), os.path.join(work, folder), symlinks=True)
    alias = os.path.join(work, "alias", "caffe")
    os.makedirs(alias)
    with open(os.path.join(alias, "__init__.py"), "w") as f:
        f.write(ALIAS)
    return tests


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bvlc_root", help="a BVLC Caffe checkout (holding python/caffe/test, examples, models)")
    ap.add_argument("pytest_args", nargs=argparse.REMAINDER, help="passed on to pytest (e.g. -x, -k draw)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pcn_bvlc_") as work:
        tests = prepare(os.path.abspath(args.bvlc_root), work)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([os.path.join(work, "alias"), ROOT] +
                                            ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--rootdir", tests, tests]
        return subprocess.call(command + args.pytest_args, cwd=tests, env=env)


if __name__ == "__main__":
    sys.exit(main())
