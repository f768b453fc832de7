#!/usr/bin/env python
"""Pictures for a trained SSD-style detector: its detections on test images and its training curves.

    python tools/plot_detection_results.py --model models/ssd_tiny/train_test.prototxt \\
        --weights models/ssd_tiny/ssd_tiny_iter_600.caffemodel --log train.log --out docs/figures/ssd_tiny

Writes OUT_detections.png (a grid of the first --images test images of one TEST batch with the boxes
DetectionOutput keeps above --threshold, labelled with the labelmap's names, and the ground truth dashed) and, with
--log, OUT_map.png (the smoothed training loss and the test mAP that ``eval_type: "detection"`` logs). Needs Pillow
and matplotlib.
"""
from __future__ import annotations

import argparse
import os
import re
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

COLOURS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]


def label_names(net) -> dict:
    from pycaffe_norm.data.annoset import read_labelmap

    for layer in net.layers:
        if layer.type == "AnnotatedData" and layer.layer_param.annotated_data_param.label_map_file:
            path = layer.layer_param.annotated_data_param.label_map_file
            if not os.path.isabs(path):
                path = os.path.join(ROOT, path) if not os.path.exists(path) else path
            return {item.label: item.display_name or item.name for item in read_labelmap(path).item}
    return {}


def draw_detections(model: str, weights: str, out: str, images: int, threshold: float, scale: int = 4) -> None:
    from PIL import Image, ImageDraw

    import pycaffe_norm as caffe

    net = caffe.Net(model, weights, caffe.TEST)
    net.forward()
    data = net.layers[0]
    tp = data.layer_param.transform_param
    batch = np.asarray(net.blobs["data"].data)
    dets = np.asarray(net.blobs["detection_out"].data).reshape(-1, 7)
    gt = np.asarray(net.blobs["label"].data).reshape(-1, 8)
    names = label_names(net)
    n = min(images, batch.shape[0])
    h, w = batch.shape[2] * scale, batch.shape[3] * scale
    cols = min(n, 4)
    sheet = Image.new("RGB", (w * cols, h * ((n + cols - 1) // cols)), "white")
    for i in range(n):
        img = batch[i].transpose(1, 2, 0) / tp.scale + data.mean
        pic = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)[:, :, ::-1]).resize((w, h), Image.NEAREST)
        draw = ImageDraw.Draw(pic)
        for row in gt[gt[:, 0] == i]:
            x0, y0, x1, y1 = row[3:7] * [w, h, w, h]
            for k in range(0, int(x1 - x0), 6):
                draw.line([(x0 + k, y0), (min(x0 + k + 3, x1), y0)], fill="white")
                draw.line([(x0 + k, y1), (min(x0 + k + 3, x1), y1)], fill="white")
            for k in range(0, int(y1 - y0), 6):
                draw.line([(x0, y0 + k), (x0, min(y0 + k + 3, y1))], fill="white")
                draw.line([(x1, y0 + k), (x1, min(y0 + k + 3, y1))], fill="white")
        for row in dets[(dets[:, 0] == i) & (dets[:, 2] >= threshold)]:
            colour = COLOURS[int(row[1]) % len(COLOURS)]
            x0, y0, x1, y1 = np.clip(row[3:7], 0, 1) * [w, h, w, h]
            draw.rectangle([x0, y0, x1, y1], outline=colour, width=2)
            draw.text((x0 + 2, y0 + 1), "%s %.2f" % (names.get(int(row[1]), int(row[1])), row[2]), fill=colour)
        sheet.paste(pic, ((i % cols) * w, (i // cols) * h))
    sheet.save(out)


def read_log(path: str):
    """(iterations, smoothed losses), (iterations, mAPs) from a pcn/Caffe training log."""
    loss, maps, testing = [], [], None
    with open(path) as f:
        for line in f:
            m = re.search(r"Iteration (\d+), loss = ([-0-9.e+]+)", line)
            if m:
                loss.append((int(m.group(1)), float(m.group(2))))
            m = re.search(r"Iteration (\d+), Testing net", line)
            if m:
                testing = int(m.group(1))
            m = re.search(r"Test net output #0: \S+ = ([-0-9.e+]+)", line)
            if m and testing is not None:
                maps.append((testing, float(m.group(1))))
    return loss, maps


def plot_curves(log: str, out: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss, maps = read_log(log)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    if loss:
        ax.plot(*zip(*loss), color="tab:blue", label="training loss (smoothed)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("MultiBoxLoss", color="tab:blue")
    ax2 = ax.twinx()
    if maps:
        ax2.plot(*zip(*maps), "o-", color="tab:red", label="test mAP (11point)")
        for it, v in maps:
            ax2.annotate("%.3f" % v, (it, v), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ax2.set_ylabel("test mAP", color="tab:red")
    ax2.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="net with a TEST phase ending in DetectionOutput")
    ap.add_argument("--weights", required=True)
    ap.add_argument("--out", required=True, help="prefix of the PNG files")
    ap.add_argument("--log", help="training log with 'Test net output' mAP lines")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--threshold", type=float, default=0.5)
    args = ap.parse_args(argv)
    draw_detections(args.model, args.weights, args.out + "_detections.png", args.images, args.threshold)
    if args.log:
        plot_curves(args.log, args.out + "_map.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
