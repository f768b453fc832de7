#!/usr/bin/env python
"""Computes the per-pixel mean image of an LMDB or LevelDB of Datum records (BVLC Caffe's compute_image_mean).

    python tools/compute_image_mean.py [--backend lmdb|leveldb] INPUT_DB [OUTPUT_FILE.binaryproto]

Without ``--backend`` the type is read from the folder (``data.mdb``: LMDB, ``CURRENT``: LevelDB; Caffe's default
is lmdb); a given ``--backend`` must match it. LevelDB needs ``pip install 'pycaffe_norm[leveldb]'`` (plyvel).

Every record (raw ``data`` bytes, ``float_data``, or an encoded JPEG/PNG decoded with its own channels, as
Caffe's DecodeDatumNative does) must have the shape of the first. The sums are accumulated record by record in
float32 and divided by the count in float32, as Caffe does, and written as a BlobProto with num 1 and the
records' channels, height and width -- the ``mean_file`` that ``transform_param`` reads. The file is written
through a temporary file and a rename. The per-channel means (the ``mean_value``s a prototxt can use instead) are
printed to stderr in Caffe's log format.
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

from pycaffe_norm.data.db import open_reader  # noqa: E402
from pycaffe_norm.data.transformer import decode_image  # noqa: E402
from pycaffe_norm.errors import PcnError  # noqa: E402
from pycaffe_norm.proto import caffe_pb2  # noqa: E402
from pycaffe_norm.prototxt import atomic_write  # noqa: E402


def _log(msg: str) -> None:
    print(msg, file=sys.stderr)


def datum_array(datum: caffe_pb2.Datum, where: str) -> np.ndarray:
    """One record as float32 (C, H, W)."""
    if datum.encoded:
        return decode_image(datum.data, None, what=where).astype(np.float32)
    shape = (datum.channels, datum.height, datum.width)
    values = np.frombuffer(datum.data, dtype=np.uint8) if len(datum.data) else np.asarray(datum.float_data)
    if values.size != int(np.prod(shape)) or values.size == 0:
        raise PcnError("%s: incorrect data field size %d for channels %d, height %d, width %d"
                       % ((where, values.size) + shape))
    return values.astype(np.float32).reshape(shape)


def compute_mean(db_path: str, backend: Optional[str] = None) -> caffe_pb2.BlobProto:
    """The mean of every record of the database ``db_path`` as a BlobProto (1, C, H, W); ``backend`` (lmdb or
    leveldb) must match the database, None reads whichever it is."""
    reader = open_reader(db_path, backend)
    total: Optional[np.ndarray] = None
    count = 0
    datum = caffe_pb2.Datum()
    try:
        wrapped = False
        while not wrapped:  # every record once, in key order
            key, value = reader.key(), reader.value()
            where = "%s record %r" % (db_path, key.decode(errors="replace"))
            try:
                datum.ParseFromString(value)
            except Exception:
                raise PcnError("%s is not a Datum" % where) from None
            if total is None and datum.encoded:
                _log("Decoding Datum")
            arr = datum_array(datum, where)
            if total is None:
                total = np.zeros(arr.shape, dtype=np.float32)
                _log("Starting Iteration")
            elif arr.shape != total.shape:
                raise PcnError("%s: incorrect data field size: shape %s, the first record's is %s"
                               % (where, arr.shape, total.shape))
            total += arr  # float32, record by record, as Caffe's sum_blob
            count += 1
            if count % 10000 == 0:
                _log("Processed %d files." % count)
            wrapped = reader.next()
    finally:
        reader.close()
    if count == 0:
        raise PcnError("%s holds no records" % db_path)
    if count % 10000:
        _log("Processed %d files." % count)
    mean = total / np.float32(count)
    c, h, w = mean.shape
    blob = caffe_pb2.BlobProto(num=1, channels=c, height=h, width=w)
    blob.data.extend(mean.ravel().tolist())
    return blob


def channel_means(blob: caffe_pb2.BlobProto) -> np.ndarray:
    """The mean of each channel of a mean image, summed in float32 as Caffe sums it."""
    data = np.asarray(blob.data, dtype=np.float32).reshape(blob.channels, -1)
    sums = np.zeros(blob.channels, dtype=np.float32)
    for column in data.T:
        sums += column
    return sums / np.float32(data.shape[1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input_db", help="the LMDB or LevelDB folder of Datum records")
    ap.add_argument("output_file", nargs="?", help="the .binaryproto to write (left out: only print the means)")
    ap.add_argument("--backend", default=None, type=str.lower, choices=("lmdb", "leveldb"),
                    help="the database type (default: read from the folder); it must match the folder")
    args = ap.parse_args(argv)
    try:
        blob = compute_mean(args.input_db, args.backend)
        if args.output_file:
            _log("Write to %s" % args.output_file)
            atomic_write(args.output_file, blob.SerializeToString())
    except (PcnError, OSError) as e:
        print("compute_image_mean: error: %s" % e, file=sys.stderr)
        return 2
    _log("Number of channels: %d" % blob.channels)
    for c, m in enumerate(channel_means(blob)):
        _log("mean_value channel [%d]:%.6g" % (c, m))
    return 0


if __name__ == "__main__":
    sys.exit(main())
