#!/usr/bin/env python
"""Ports every .prototxt under a folder with `pcn port` and tries each ported net once.

    python tools/port_corpus.py DIR [--out OUTDIR] [--batch 2]

For a net, the ported file's data layers (Data, ImageData, MemoryData, HDF5Data, ...) are replaced by one Input
layer per layer with plausible shapes (the dataset its source names, crop_size, MemoryData's own shape; batch
``--batch``), Input layers keep their shapes with the batch cut to ``--batch``, and the net is built in TRAIN,
fed random inputs (class labels below the number of outputs of the layer that scores them) and run once forward
and backward; the run passes when every loss and every parameter gradient is finite. A table (file, parse, port,
build, run, reason) and the counts are printed. Not run in CI: the folder's files are someone else's (e.g. a
MyCaffe checkout); nothing is downloaded.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from typing import Dict, List, Optional, Tuple

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # runnable from a checkout without installing the package
    sys.path.insert(0, ROOT)

from pycaffe_norm import dialect, port, prototxt  # noqa: E402
from pycaffe_norm.errors import PcnError  # noqa: E402
from pycaffe_norm.proto import caffe_pb2  # noqa: E402

DATA_TYPES = {"Data", "ImageData", "MemoryData", "HDF5Data", "WindowData", "AnnotatedData", "VideoData"}
# (channels, height, width) of the datasets MyCaffe's image-database sources and Caffe's examples name.
DATASET_SHAPES = (("cifar-224", (3, 224, 224)), ("cifar", (3, 32, 32)), ("mnist", (1, 28, 28)),
                  ("imagenet", (3, 256, 256)), ("ilsvrc", (3, 256, 256)), ("voc", (3, 64, 64)),
                  ("pascal", (3, 64, 64)), ("flickr", (3, 256, 256)))


def data_shape(lp: caffe_pb2.LayerParameter, batch: int) -> Tuple[int, ...]:
    """A plausible (N, C, H, W) for what data layer ``lp`` gives on its first top."""
    if lp.type == "MemoryData":
        p = lp.memory_data_param
        return batch, max(p.channels, 1), max(p.height, 1), max(p.width, 1)
    source = (lp.data_param.source or lp.image_data_param.source or lp.hdf5_data_param.source).lower()
    chw = next((shape for key, shape in DATASET_SHAPES if key in source), (3, 32, 32))
    ip = lp.image_data_param
    if ip.new_height and ip.new_width:
        chw = (chw[0], ip.new_height, ip.new_width)
    resize = lp.transform_param.resize_param
    if lp.transform_param.HasField("resize_param") and resize.height and resize.width:
        chw = (chw[0], resize.height, resize.width)
    crop = lp.transform_param.crop_size or lp.data_param.crop_size
    if crop:
        chw = (chw[0], crop, crop)
    return (batch,) + chw


def class_count(param: caffe_pb2.NetParameter, label: str) -> int:
    """The number of outputs of the layers whose output is scored against ``label`` (2 when unknown)."""
    producers = {top: lp for lp in param.layer for top in lp.top}
    counts = []
    for lp in param.layer:
        if label not in lp.bottom:
            continue
        for bottom in lp.bottom:
            src = producers.get(bottom)
            if bottom == label or src is None:
                continue
            n = src.inner_product_param.num_output or src.convolution_param.num_output
            if n:
                counts.append(n)
    return max(2, min(counts)) if counts else 2


def with_inputs(param: caffe_pb2.NetParameter, batch: int) -> Tuple[caffe_pb2.NetParameter, Dict[str, str]]:
    """``param`` with its data layers replaced by Input layers; also {top: "data" | "label"}."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    kinds: Dict[str, str] = {}
    for lp in param.layer:
        if lp.type == "Input":
            new = out.layer.add()
            new.CopyFrom(lp)
            for shape in new.input_param.shape:
                if len(shape.dim) == 4 and shape.dim[0] > batch:   # images: a smaller batch
                    shape.dim[0] = batch
            for top in lp.top:
                kinds[top] = "label" if "label" in top.lower() else "data"
            continue
        if lp.type not in DATA_TYPES:
            out.layer.add().CopyFrom(lp)
            continue
        new = out.layer.add(name=lp.name, type="Input")
        new.top.extend(lp.top)
        new.include.extend(lp.include)
        new.exclude.extend(lp.exclude)
        shape = data_shape(lp, batch)
        is_label = "label" in lp.data_param.source.lower()   # a label-image database (port's label_type MULTIPLE)
        if is_label:
            shape = shape[:1] + (1,) + shape[2:]
        new.input_param.shape.add(dim=shape)
        kinds[lp.top[0]] = "label" if is_label else "data"
        if lp.type == "AnnotatedData" and len(lp.top) > 1:   # one box per image: SSD's (1, 1, boxes, 8) rows
            new.input_param.shape.add(dim=(1, 1, batch, 8))
            kinds[lp.top[1]] = "boxes"
            continue
        for top in lp.top[1:]:
            new.input_param.shape.add(dim=(batch,))
            kinds[top] = "label"
    return out, kinds


def _half_sum_of_squares(args) -> None:
    args.loss = 0.5 * float(sum(np.sum(np.square(np.asarray(b.data, dtype=np.float64))) for b in args.bottom[:1]))


def run_net(path: str, batch: int) -> Tuple[str, str]:
    """(status, reason) of building and running the ported net at ``path`` once."""
    import pycaffe_norm as caffe

    param = prototxt.read_text(path, caffe_pb2.NetParameter())
    sequences = [lp for lp in param.layer if lp.type == "DataSequence"]
    if sequences:   # its anchor/positive/negative sampling needs every label at least twice in a batch
        batch = max(batch, 2 * max(lp.data_sequence_param.label_count for lp in sequences))
    fed, kinds = with_inputs(param, batch)
    try:
        net = caffe.Net(fed, caffe.TRAIN)
    except PcnError as e:
        return "build", str(e)
    rs = np.random.RandomState(0)
    indices = {lp.bottom[0]: lp.embed_param.input_dim for lp in fed.layer if lp.type == "Embed" and lp.bottom}
    recurrent = ("LSTM", "Lstm", "RNN", "Rnn", "LstmSimple", "LstmAttention")
    clips = {lp.bottom[1] for lp in fed.layer if lp.type in recurrent and len(lp.bottom) > 1}
    for name, kind in kinds.items():
        if name not in net.blobs:
            continue
        blob = net.blobs[name]
        if name in indices:
            blob.data[...] = rs.randint(0, max(indices[name], 1), blob.shape)
        elif kind == "boxes":   # item, class 1, instance 0, a box in the middle, not difficult
            blob.data[...] = [[i, 1, 0, 0.2, 0.2, 0.6, 0.7, 0] for i in range(blob.shape[2])]
        elif name in clips:   # sequence continuation: 0 at the first time step, 1 after
            blob.data[...] = 1
            blob.data[:1] = 0
        elif kind == "label":   # every class in turn, so that pair and triplet samplers find matches
            classes = next((lp.data_sequence_param.label_count for lp in sequences if name in lp.bottom),
                           class_count(fed, name))
            blob.data[...] = (np.arange(blob.count) % classes).reshape(blob.shape)
        else:
            blob.data[...] = rs.uniform(0, 1, blob.shape)
    for layer in net.layers:
        if getattr(layer, "type", "") == "MemoryLoss":   # the loss a MyCaffe application would supply
            layer.on_get_loss = _half_sum_of_squares
    try:
        out = net.forward()
        net.backward()
    except PcnError as e:
        return "run", str(e)
    bad = [k for k, v in out.items() if not np.all(np.isfinite(np.asarray(v)))]
    bad += ["gradient of %s" % net._layer_names[i] for i, layer in enumerate(net.layers)
            for b in layer.blobs if not np.all(np.isfinite(caffe.backend.to_numpy(b.diff)))]
    if bad:
        return "run", "non-finite values: " + ", ".join(bad[:5])
    return "ok", ""


def port_one(path: str, out_dir: str, batch: int) -> List[str]:
    """One table row: file, kind, parse, port (and porting the output again gives it unchanged), build, run,
    reason."""
    out = os.path.join(out_dir, path.replace(os.sep, "_").strip("_"))
    text = open(path, "rb").read().decode("utf-8-sig", errors="replace")
    kind = port.file_kind(text, path)
    row = [path, kind, "ok", "-", "-", "-", ""]
    try:
        dialect.parse_tree(text, path)
    except PcnError as e:
        row[2], row[6] = "FAIL", str(e)
        return row
    try:
        port.run_port(path, out)
    except PcnError as e:
        row[3], row[6] = "FAIL", str(e)
        return row
    except Exception as e:  # a bug in pcn: reported, not hidden
        row[3], row[6] = "CRASH", "%s: %s" % (type(e).__name__, e)
        return row
    row[3] = "ok"
    again = out + ".again"
    port.run_port(out, again)
    same = open(out, "rb").read() == open(again, "rb").read()
    os.unlink(again)
    if not same:
        row[3], row[6] = "FAIL", "porting the output again gives a different file"
        return row
    if kind == "solver":
        return row
    try:
        status, reason = run_net(out, batch)
    except Exception as e:  # a bug in pcn: reported, not hidden
        status, reason = "crash", "%s: %s" % (type(e).__name__, e)
    row[4] = "FAIL" if status == "build" else ("CRASH" if status == "crash" else "ok")
    row[5] = "ok" if status == "ok" else ("FAIL" if status == "run" else "-")
    row[6] = reason
    return row


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder")
    ap.add_argument("--out", help="where the ported files go (default: a temporary folder)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--width", type=int, default=110, help="reason column width")
    args = ap.parse_args(argv)
    logging.getLogger("pycaffe_norm").setLevel(logging.ERROR)
    out_dir = args.out or tempfile.mkdtemp(prefix="port_corpus_")
    os.makedirs(out_dir, exist_ok=True)
    paths = sorted(os.path.join(d, f) for d, _, files in os.walk(args.folder) for f in files
                   if f.endswith(".prototxt"))
    print("| file | kind | parse | port | build | run | reason |")
    print("|---|---|---|---|---|---|---|", flush=True)
    rows = []
    for path in paths:   # each row as soon as it is known: a large net takes a while on a CPU
        r = port_one(path, out_dir, args.batch)
        rows.append(r)
        reason = r[6] if len(r[6]) <= args.width else r[6][:args.width - 3] + "..."
        print("| %s | %s |" % (os.path.relpath(r[0], args.folder), " | ".join(r[1:6] + [reason.replace("|", "/")])),
              flush=True)
    nets = [r for r in rows if r[1] == "net"]
    solvers = [r for r in rows if r[1] == "solver"]
    print()
    print("nets: %d, ported %d, built %d, ran %d; solvers: %d, ported %d; crashes: %d" % (
        len(nets), sum(r[3] == "ok" for r in nets), sum(r[4] == "ok" for r in nets), sum(r[5] == "ok" for r in nets),
        len(solvers), sum(r[3] == "ok" for r in solvers), sum("CRASH" in r for r in rows)))
    print("ported files in %s" % out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
