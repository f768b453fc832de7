#!/usr/bin/env python
"""Regenerates data/mnist/ (mnist_train.h5, mnist_test.h5 and their list files) from mnist_5k.npz.

    python tools/make_mnist_hdf5.py [--npz ../shared/data/mnist_5k.npz] [--out data/mnist]

The output depends only on the npz, so running it again reproduces the committed files byte for byte.
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # runnable from a checkout without installing the package
    sys.path.insert(0, ROOT)

from pycaffe_norm.data.mnist import write_mnist_hdf5  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--npz", default=os.path.join(os.path.dirname(ROOT), "shared", "data", "mnist_5k.npz"),
                    help="the mnist_5k.npz to convert (default: %(default)s)")
    ap.add_argument("--out", default=os.path.join(ROOT, "data", "mnist"), help="output folder (default: %(default)s)")
    ap.add_argument("--list-prefix", default="data/mnist",
                    help="folder written before each .h5 name in the list files (default: %(default)s)")
    args = ap.parse_args(argv)
    if not os.path.isfile(args.npz):
        print("make_mnist_hdf5: error: npz not found: %s" % args.npz, file=sys.stderr)
        return 2
    for split, path in write_mnist_hdf5(args.npz, args.out, args.list_prefix).items():
        print("%s: %s (%d bytes)" % (split, path, os.path.getsize(path)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
