#!/usr/bin/env python
"""Generates a small synthetic detection set: coloured circles, squares and triangles on textured backgrounds,
several per image, with their boxes, so an SSD-style detector can be trained on any machine.

    python tools/make_synthetic_detection.py [--out data/ssd_tiny] [--train 1500 --test 300 --size 64 --seed 1]

Writes OUT/images/*.png, OUT/annotations/*.json (SSD's JSON box format), OUT/labelmap.prototxt,
OUT/train.txt and OUT/test.txt (``image annotation`` lines), then, unless ``--no-lmdb``, OUT/train_lmdb and
OUT/test_lmdb through tools/create_annoset.py. The same seed gives the same set.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

CLASSES = ("circle", "square", "triangle")


def _texture(rs: np.random.RandomState, size: int) -> np.ndarray:
    """A muted background: a smooth random field per channel, stripes and pixel noise (H, W, 3) float."""
    coarse = rs.uniform(40, 200, (5, 5, 3))
    idx = np.linspace(0, 4, size)
    i0 = np.minimum(np.floor(idx).astype(int), 3)
    f = (idx - i0)[:, None]
    rows = coarse[i0] * (1 - f[..., None]) + coarse[i0 + 1] * f[..., None]
    field = rows[:, i0] * (1 - f.T[..., None]) + rows[:, i0 + 1] * f.T[..., None]
    angle, period = rs.uniform(0, np.pi), rs.uniform(4, 12)
    yy, xx = np.mgrid[0:size, 0:size]
    stripes = 18 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    return field + stripes[..., None] + rs.normal(0, 8, (size, size, 3))


def _mask(kind: str, box, size: int) -> np.ndarray:
    x0, y0, x1, y1 = box
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    if kind == "square":
        return (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    if kind == "circle":
        return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
    # triangle: apex at the top centre, base along the bottom edge
    inside = (yy >= y0) & (yy < y1)
    half = (yy - y0) / max(y1 - y0, 1e-6) * rx
    return inside & (np.abs(xx - cx) <= half)


def make_image(rs: np.random.RandomState, size: int, max_objects: int = 4):
    """One image (H, W, 3) uint8 RGB and its objects [(class name, [x, y, w, h])]."""
    img = _texture(rs, size)
    objects, boxes = [], []
    for _ in range(rs.randint(1, max_objects + 1)):
        for _attempt in range(20):
            side = rs.uniform(0.18, 0.5) * size
            w = side * rs.uniform(0.8, 1.25)
            h = side * rs.uniform(0.8, 1.25)
            x0, y0 = rs.uniform(0, size - w), rs.uniform(0, size - h)
            box = np.array([x0, y0, x0 + w, y0 + h])
            if all(_iou(box, b) < 0.2 for b in boxes):
                break
        else:
            continue
        kind = CLASSES[rs.randint(len(CLASSES))]
        colour = rs.uniform(0, 255, 3)
        colour[rs.randint(3)] = rs.choice([15, 240])          # saturated: one channel at an extreme
        img[_mask(kind, box, size)] = colour
        boxes.append(box)
        objects.append((kind, [float(x0), float(y0), float(w), float(h)]))
    return np.clip(np.round(img), 0, 255).astype(np.uint8), objects


def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def write_labelmap(path: str) -> None:
    items = ['item {\n  name: "background"\n  label: 0\n  display_name: "background"\n}\n']
    items += ['item {\n  name: "%s"\n  label: %d\n  display_name: "%s"\n}\n' % (c, i + 1, c)
              for i, c in enumerate(CLASSES)]
    with open(path, "w") as f:
        f.write("".join(items))


def generate(out: str, n_train: int, n_test: int, size: int, seed: int, lmdb: bool = True) -> None:
    from PIL import Image

    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    os.makedirs(os.path.join(out, "annotations"), exist_ok=True)
    write_labelmap(os.path.join(out, "labelmap.prototxt"))
    rs = np.random.RandomState(seed)
    for split, count, start in (("train", n_train, 0), ("test", n_test, n_train)):
        lines = []
        for k in range(start, start + count):
            img, objects = make_image(rs, size)
            name = "%s_%05d" % (split, k)
            Image.fromarray(img).save(os.path.join(out, "images", name + ".png"))
            doc = {"image": {"width": size, "height": size},
                   "annotation": [{"bbox": bbox, "category_id": kind, "iscrowd": 0} for kind, bbox in objects]}
            with open(os.path.join(out, "annotations", name + ".json"), "w") as f:
                json.dump(doc, f)
            lines.append("images/%s.png annotations/%s.json\n" % (name, name))
        with open(os.path.join(out, split + ".txt"), "w") as f:
            f.writelines(lines)
    if lmdb:
        spec = importlib.util.spec_from_file_location("create_annoset", os.path.join(ROOT, "tools",
                                                                                     "create_annoset.py"))
        tool = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(tool)
        for split in ("train", "test"):
            db = os.path.join(out, split + "_lmdb")
            if os.path.exists(db):
                import shutil
                shutil.rmtree(db)
            tool.convert(out + "/", os.path.join(out, split + ".txt"), db, os.path.join(out, "labelmap.prototxt"),
                         "json", encoded=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "data", "ssd_tiny"))
    ap.add_argument("--train", type=int, default=1500, help="training images (default %(default)s)")
    ap.add_argument("--test", type=int, default=300, help="test images (default %(default)s)")
    ap.add_argument("--size", type=int, default=64, help="image side in pixels (default %(default)s)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-lmdb", action="store_true", help="write the images and boxes only")
    args = ap.parse_args(argv)
    generate(args.out, args.train, args.test, args.size, args.seed, not args.no_lmdb)
    print("wrote %s" % args.out, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
