#!/usr/bin/env python
"""Regenerates pycaffe_norm/proto/caffe_pb2.py from proto/caffe.proto with grpc_tools.protoc.

Usage: python tools/compile_proto.py [--out DIR]
"""
from __future__ import annotations

import argparse
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def compile_proto(out_dir: pathlib.Path, descriptor_set: pathlib.Path | None = None) -> None:
    from grpc_tools import protoc

    args = ["protoc", "-I%s" % (ROOT / "proto"), "--python_out=%s" % out_dir]
    if descriptor_set is not None:
        args.append("--descriptor_set_out=%s" % descriptor_set)
    args.append(str(ROOT / "proto" / "caffe.proto"))
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed on proto/caffe.proto")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "pycaffe_norm" / "proto"))
    args = parser.parse_args(argv)
    compile_proto(pathlib.Path(args.out))
    print("wrote %s" % (pathlib.Path(args.out) / "caffe_pb2.py"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
