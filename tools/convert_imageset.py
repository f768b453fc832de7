#!/usr/bin/env python
"""Converts a list of images and labels into an LMDB or LevelDB of Datum records (BVLC Caffe's convert_imageset).

    python tools/convert_imageset.py [options] [--backend lmdb|leveldb] ROOTFOLDER/ LISTFILE DB_NAME

LISTFILE has lines ``subfolder1/file1.JPEG 7``; each image is read from ROOTFOLDER + path (plain concatenation,
as in Caffe). Records are keyed ``%08d_<path>`` in list order (after ``--shuffle``), so the Data layer reads them in
that order. Colour pixels are stored in OpenCV's BGR order, as Caffe stores them. Decoding uses Pillow. The
database is written into a temporary folder next to DB_NAME and renamed at the end. LevelDB needs
``pip install 'pycaffe_norm[leveldb]'`` (plyvel).
"""
from __future__ import annotations

import argparse
import io
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # runnable from a checkout without installing the package
    sys.path.insert(0, ROOT)

from pycaffe_norm.data.db import write_db  # noqa: E402
from pycaffe_norm.data.transformer import decode_image, read_image, read_image_list  # noqa: E402
from pycaffe_norm.errors import PcnError  # noqa: E402
from pycaffe_norm.proto import caffe_pb2  # noqa: E402

_FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "bmp": "BMP", "tif": "TIFF", "tiff": "TIFF"}


def image_datum(path: str, label: int, height: int, width: int, color: bool, encoding: str) -> caffe_pb2.Datum:
    """Caffe's ReadImageToDatum: raw BGR/grey bytes, or with ``encoding`` an encoded image (the file's own bytes
    when it needs no change: same format, no resize, and the channel count that ``color`` asks for)."""
    img = read_image(path, height, width, color)
    if encoding:
        ext = os.path.splitext(path)[1][1:].lower()
        same_format = _FORMATS.get(ext, ext) == _FORMATS.get(encoding, encoding)
        native_channels = decode_image(path, None, what=path).shape[0]
        if same_format and not height and not width and (native_channels == 3) == color:
            with open(path, "rb") as f:
                return caffe_pb2.Datum(data=f.read(), label=label, encoded=True)
        return caffe_pb2.Datum(data=encode(img, encoding), label=label, encoded=True)
    c, h, w = img.shape
    return caffe_pb2.Datum(channels=c, height=h, width=w, data=img.tobytes(), label=label)


def encode(chw: np.ndarray, encoding: str) -> bytes:
    """A uint8 (C, H, W) BGR or grey image as the bytes of an image file of format ``encoding`` (jpg, png, ...)."""
    from PIL import Image

    fmt = _FORMATS.get(encoding.lower())
    if fmt is None:
        raise PcnError("unknown encode_type %r (use one of %s)" % (encoding, ", ".join(sorted(_FORMATS))))
    hwc = chw.transpose(1, 2, 0)
    im = Image.fromarray(hwc[:, :, 0] if hwc.shape[2] == 1 else np.ascontiguousarray(hwc[:, :, 2::-1]))
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def convert(root_folder: str, list_file: str, db_name: str, gray: bool = False, shuffle: bool = False,
            resize_height: int = 0, resize_width: int = 0, check_size: bool = False, encoded: bool = False,
            encode_type: str = "", seed: int = 0, backend: str = "lmdb") -> int:
    """Writes the database ``db_name`` (``backend`` lmdb or leveldb); returns the number of records."""
    lines = read_image_list(list_file)
    if shuffle:
        np.random.RandomState(seed).shuffle(lines)  # Caffe shuffles with its unseeded RNG: a new order each run
    print("A total of %d images." % len(lines), file=sys.stderr)
    if encode_type and not encoded:
        print("encode_type specified, assuming encoded=true.", file=sys.stderr)
        encoded = True
    size = [None]

    def records():
        for line_id, (name, label) in enumerate(lines):
            path = root_folder + name
            enc = encode_type or (os.path.splitext(name)[1][1:].lower() if encoded else "")
            try:
                if not os.path.isfile(path):
                    raise PcnError("no such file")
                datum = image_datum(path, label, resize_height, resize_width, not gray, enc)
            except PcnError as e:  # missing or undecodable: skipped, as Caffe's ReadImageToDatum failing is
                print("Could not open or find file %s (%s)" % (path, e), file=sys.stderr)
                continue
            if check_size and not encoded:
                if size[0] is None:
                    size[0] = len(datum.data)
                elif len(datum.data) != size[0]:
                    raise PcnError("%s: incorrect data field size %d (the first image has %d)"
                                   % (path, len(datum.data), size[0]))
            yield ("%08d_%s" % (line_id, name)).encode(), datum.SerializeToString()

    count = write_db(db_name, records(), backend, on_commit=progress)
    print("Processed %d files." % count, file=sys.stderr)
    return count


def progress(count: int) -> None:
    print("Processed %d files." % count, file=sys.stderr)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root_folder", help="prefix of every path in LISTFILE (e.g. 'images/', with the slash)")
    ap.add_argument("list_file")
    ap.add_argument("db_name", help="the database folder to create")
    ap.add_argument("--gray", action="store_true", help="read images as grey (1 channel)")
    ap.add_argument("--shuffle", action="store_true", help="shuffle the order of the lines")
    ap.add_argument("--seed", type=int, default=0, help="seed of --shuffle (default %(default)s)")
    ap.add_argument("--backend", default="lmdb", type=str.lower, choices=("lmdb", "leveldb"),
                    help="the database type to write (default %(default)s; leveldb needs plyvel)")
    ap.add_argument("--resize_height", type=int, default=0)
    ap.add_argument("--resize_width", type=int, default=0)
    ap.add_argument("--check_size", action="store_true", help="check that all raw datums have the same size")
    ap.add_argument("--encoded", action="store_true", help="store encoded images (JPEG/PNG bytes) in the datums")
    ap.add_argument("--encode_type", default="", help="re-encode to this format (jpg, png, ...)")
    args = ap.parse_args(argv)
    if (args.resize_height > 0) != (args.resize_width > 0):
        print("convert_imageset: error: give --resize_height and --resize_width together", file=sys.stderr)
        return 2
    try:
        convert(args.root_folder, args.list_file, args.db_name, args.gray, args.shuffle, args.resize_height,
                args.resize_width, args.check_size, args.encoded, args.encode_type, args.seed, args.backend)
    except (PcnError, OSError) as e:
        print("convert_imageset: error: %s" % e, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
