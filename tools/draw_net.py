#!/usr/bin/env python
"""Draws a net prototxt as a graph (BVLC Caffe's python/draw_net.py and caffe.draw), without pydot.

    python tools/draw_net.py [--rankdir LR|TB|BT|RL] [--phase TRAIN|TEST|ALL] [--display_lrm] NET.prototxt OUT

Layers are boxes labelled with their name and type (Pooling with its method; Convolution, Deconvolution and
Pooling with kernel size, stride and pad), coloured by type; layers that work in place (one bottom that is also
their top) are green. Blobs are grey octagons. Edges from a Data, Convolution, Deconvolution or InnerProduct layer
to its tops are labelled with the batch size or ``num_output``. ``OUT`` ending in ``.dot``, ``.gv`` or ``.raw``
gets the Graphviz DOT text, written in pure Python; any other extension (``png``, ``svg``, ``pdf``, ...) is the
output format of Graphviz's ``dot`` program when it is on PATH; without it, ``png``, ``svg`` and ``pdf`` are
drawn with matplotlib (pycaffe_norm.draw_render). ``pcn draw`` is the same command.
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # runnable from a checkout without installing the package
    sys.path.insert(0, ROOT)

from pycaffe_norm.draw import draw_net_to_file  # noqa: E402
from pycaffe_norm.errors import PcnError  # noqa: E402
from pycaffe_norm.proto import caffe_pb2  # noqa: E402
from pycaffe_norm.prototxt import read_text  # noqa: E402
from pycaffe_norm.upgrade import upgrade_net  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input_net_proto_file", help="the net prototxt")
    ap.add_argument("output_image_file", help="the drawing: .dot (text), or .png, .svg, .pdf (Graphviz or matplotlib)")
    ap.add_argument("--rankdir", default="LR", choices=("LR", "TB", "BT", "RL"),
                    help="direction of the graph (default: %(default)s, left to right)")
    ap.add_argument("--phase", default="ALL", type=str.upper, choices=("TRAIN", "TEST", "ALL"),
                    help="draw the layers of this phase only (default: %(default)s, every layer)")
    ap.add_argument("--display_lrm", action="store_true", help="show the lr_mult of learnable layers")
    args = ap.parse_args(argv)
    phase = None if args.phase == "ALL" else getattr(caffe_pb2, args.phase)
    try:
        net = upgrade_net(read_text(args.input_net_proto_file, caffe_pb2.NetParameter(), "net prototxt"))
        print("Drawing net to %s" % args.output_image_file)
        draw_net_to_file(net, args.output_image_file, args.rankdir, phase, args.display_lrm)
    except (PcnError, OSError) as e:
        print("draw_net: error: %s" % e, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
