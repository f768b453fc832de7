#!/usr/bin/env python
"""Converts images and their box files into an LMDB or LevelDB of AnnotatedDatum records (SSD-Caffe's
convert_annoset, which its create_annoset.py wraps).

    python tools/create_annoset.py --labelmap_file labelmap.prototxt [options] ROOTFOLDER/ LISTFILE DB_NAME

LISTFILE has lines ``images/0001.jpg annotations/0001.xml``: both paths are ROOTFOLDER + path. Box files are
PASCAL VOC XML (``--label_type xml``, the default) or SSD's JSON (``--label_type json``: ``{"image": {"width",
"height"}, "annotation": [{"bbox": [x, y, w, h], "category_id": NAME}]}``); names map to labels through the
labelmap (a LabelMap prototxt: ``item { name: "cat" label: 1 display_name: "cat" }``). Boxes are stored
normalised by the image size, grouped by label. Records are keyed ``%08d_<image path>`` in list order (after
``--shuffle``). Images are stored raw (BGR) or, with ``--encoded``, as their file bytes.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # runnable from a checkout without installing the package
    sys.path.insert(0, ROOT)

import importlib.util  # noqa: E402

from pycaffe_norm.data.annoset import annotated_datum, name_to_label, read_labelmap  # noqa: E402
from pycaffe_norm.data.db import write_db  # noqa: E402
from pycaffe_norm.errors import PcnError  # noqa: E402


def _image_datum():
    """convert_imageset's ReadImageToDatum (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location("convert_imageset", os.path.join(ROOT, "tools",
                                                                                   "convert_imageset.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.image_datum


def read_pairs(list_file: str):
    pairs = []
    with open(list_file) as f:
        for number, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise PcnError("%s:%d: expected 'image_path annotation_path', got %r" % (list_file, number,
                                                                                        line.strip()))
            pairs.append((parts[0], parts[1]))
    return pairs


def convert(root_folder: str, list_file: str, db_name: str, labelmap_file: str, label_type: str = "xml",
            gray: bool = False, shuffle: bool = False, resize_height: int = 0, resize_width: int = 0,
            encoded: bool = False, encode_type: str = "", seed: int = 0, backend: str = "lmdb") -> int:
    """Writes the database ``db_name``; returns the number of records."""
    labels = name_to_label(read_labelmap(labelmap_file))
    pairs = read_pairs(list_file)
    if shuffle:
        np.random.RandomState(seed).shuffle(pairs)
    print("A total of %d images." % len(pairs), file=sys.stderr)
    image_datum = _image_datum()
    encoded = encoded or bool(encode_type)

    def records():
        for line_id, (image, anno) in enumerate(pairs):
            path = root_folder + image
            enc = encode_type or (os.path.splitext(image)[1][1:].lower() if encoded else "")
            if not os.path.isfile(path):
                raise PcnError("%s: no such image file" % path)
            datum = image_datum(path, -1, resize_height, resize_width, not gray, enc)
            h, w = _original_size(path)
            record = annotated_datum(datum, root_folder + anno, label_type, labels, h, w)
            yield ("%08d_%s" % (line_id, image)).encode(), record.SerializeToString()

    count = write_db(db_name, records(), backend)
    print("Processed %d files." % count, file=sys.stderr)
    return count


def _original_size(path: str):
    from pycaffe_norm.data.transformer import decode_image

    shape = decode_image(path, None, what=path).shape
    return shape[1], shape[2]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root_folder", help="prefix of every path in LISTFILE (e.g. 'data/', with the slash)")
    ap.add_argument("list_file")
    ap.add_argument("db_name", help="the database folder to create")
    ap.add_argument("--labelmap_file", required=True, help="LabelMap prototxt mapping names to labels")
    ap.add_argument("--label_type", default="xml", choices=("xml", "json"))
    ap.add_argument("--anno_type", default="detection", choices=("detection",),
                    help="only detection (boxes) exists, as in SSD")
    ap.add_argument("--gray", action="store_true")
    ap.add_argument("--shuffle", action="store_true")
    ap.add_argument("--seed", type=int, default=0, help="seed of --shuffle (default %(default)s)")
    ap.add_argument("--backend", default="lmdb", type=str.lower, choices=("lmdb", "leveldb"))
    ap.add_argument("--resize_height", type=int, default=0)
    ap.add_argument("--resize_width", type=int, default=0)
    ap.add_argument("--encoded", action="store_true", help="store encoded images (their file bytes)")
    ap.add_argument("--encode_type", default="", help="re-encode to this format (jpg, png, ...)")
    args = ap.parse_args(argv)
    if (args.resize_height > 0) != (args.resize_width > 0):
        print("create_annoset: error: give --resize_height and --resize_width together", file=sys.stderr)
        return 2
    try:
        convert(args.root_folder, args.list_file, args.db_name, args.labelmap_file, args.label_type, args.gray,
                args.shuffle, args.resize_height, args.resize_width, args.encoded, args.encode_type, args.seed,
                args.backend)
    except (PcnError, OSError) as e:
        print("create_annoset: error: %s" % e, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
