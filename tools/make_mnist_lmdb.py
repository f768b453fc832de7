#!/usr/bin/env python
"""Writes the bundled MNIST digits (data/mnist/*.h5) as LMDBs (or LevelDBs) of raw uint8 Datums (convert_mnist_data).

    python tools/make_mnist_lmdb.py [--out data/mnist] [--limit N] [--backend lmdb|leveldb]

Creates ``mnist_train_lmdb`` and ``mnist_test_lmdb`` in ``--out`` (``mnist_*_leveldb`` with ``--backend leveldb``,
as create_mnist.sh names them): one Datum per digit (channels 1, height 28,
width 28, the grey bytes, the label), keyed ``%08d`` in file order, as BVLC's examples/mnist/create_mnist.sh makes
them. The .h5 files hold grey / 256 exactly, so the bytes are recovered without loss and a Data layer with
``scale: 0.00390625`` feeds LeNet the same values as the HDF5Data layer. The databases are build outputs: keep
them out of git.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # runnable from a checkout without installing the package
    sys.path.insert(0, ROOT)

from pycaffe_norm.data.db import write_db  # noqa: E402
from pycaffe_norm.errors import PcnError  # noqa: E402
from pycaffe_norm.proto import caffe_pb2  # noqa: E402


def mnist_h5_to_lmdb(h5_path: str, db_path: str, limit: Optional[int] = None, backend: str = "lmdb") -> int:
    """Converts one bundled .h5 file (``data`` = grey / 256, ``label``) into the database ``db_path`` (an LMDB, or a
    LevelDB with ``backend="leveldb"``); returns the count."""
    import h5py

    with h5py.File(h5_path, "r") as f:
        data, labels = f["data"][:limit], f["label"][:limit]
    grey = data * 256.0
    images = np.rint(grey).astype(np.uint8)
    if data.ndim != 4 or data.shape[1] != 1 or not np.array_equal(images, grey):
        raise PcnError("%s: expected data (N, 1, H, W) holding grey levels / 256" % h5_path)

    def records():
        for i, (img, label) in enumerate(zip(images, labels)):
            datum = caffe_pb2.Datum(channels=1, height=img.shape[1], width=img.shape[2], data=img.tobytes(),
                                    label=int(label))
            yield ("%08d" % i).encode(), datum.SerializeToString()

    return write_db(db_path, records(), backend)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.join(ROOT, "data", "mnist"), help="folder of the .h5 files")
    ap.add_argument("--out", default=os.path.join(ROOT, "data", "mnist"), help="where the database folders go")
    ap.add_argument("--limit", type=int, default=None, help="only the first N digits of each split")
    ap.add_argument("--backend", default="lmdb", type=str.lower, choices=("lmdb", "leveldb"),
                    help="the database type to write (default %(default)s; leveldb needs plyvel)")
    args = ap.parse_args(argv)
    for split in ("train", "test"):
        h5 = os.path.join(args.data, "mnist_%s.h5" % split)
        db = os.path.join(args.out, "mnist_%s_%s" % (split, args.backend))
        try:
            n = mnist_h5_to_lmdb(h5, db, args.limit, args.backend)
        except (PcnError, OSError) as e:
            print("make_mnist_lmdb: error: %s" % e, file=sys.stderr)
            return 2
        print("%s: %d digits" % (db, n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
