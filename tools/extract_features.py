#!/usr/bin/env python
"""Runs a net and saves named blobs of every batch into one HDF5 file (BVLC Caffe's extract_features).

    python tools/extract_features.py --model M.prototxt --weights W.caffemodel --blobs fc7,prob
                                     --iterations K --out features.h5 [--datasets a,b] [--gpu ID]

The net is built in the TEST phase with the weights loaded, then run forward ``K`` times (its data layers give
the images, as in Caffe). Each blob becomes one dataset (named like the blob, or by ``--datasets``) holding the
rows of all ``K`` batches stacked: shape ``(K * batch, ...)`` with the blob's own per-row shape, in the blob's
dtype. Caffe's tool writes an LMDB or LevelDB per blob, one Datum of ``float_data`` per image keyed ``%010d``;
pcn writes HDF5, which NumPy and h5py read directly. The file appears (through a temporary file and a rename)
only when every batch is written.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # runnable from a checkout without installing the package
    sys.path.insert(0, ROOT)

import pycaffe_norm as caffe  # noqa: E402
from pycaffe_norm import backend  # noqa: E402
from pycaffe_norm.data.paths import search_dirs  # noqa: E402
from pycaffe_norm.errors import PcnError  # noqa: E402


def _log(msg: str) -> None:
    print(msg, file=sys.stderr)


def _split(text: Optional[str]) -> List[str]:
    return [s.strip() for s in (text or "").split(",") if s.strip()]


def extract_features(model: str, weights: Sequence[str], blobs: Sequence[str], iterations: int, out: str,
                     datasets: Optional[Sequence[str]] = None) -> int:
    """Writes ``out``; returns the number of rows stored per blob."""
    import h5py

    datasets = list(datasets or blobs)
    if not blobs:
        raise PcnError("--blobs names no blob")
    if len(datasets) != len(blobs):
        raise PcnError("%d blob names but %d dataset names; give one dataset name per blob"
                       % (len(blobs), len(datasets)))
    if len(set(datasets)) != len(datasets):
        raise PcnError("dataset names repeat: %s" % ", ".join(datasets))
    if iterations <= 0:
        raise PcnError("--iterations must be > 0, got %d" % iterations)
    if not os.path.isfile(model):
        raise PcnError("net prototxt not found: %s" % model)
    with search_dirs(os.path.dirname(os.path.abspath(model))):
        net = caffe.Net(model, caffe.TEST)
        for w in weights:
            if not os.path.isfile(w):
                raise PcnError("weights file not found: %s" % w)
            net.copy_from(w)
        for name in blobs:
            if name not in net.blobs:
                raise PcnError("Unknown feature blob name %s in the network %s" % (name, model))
        directory = os.path.dirname(os.path.abspath(out))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp_" + os.path.basename(out), dir=directory)
        os.close(fd)
        rows: dict = {}
        try:
            with h5py.File(tmp, "w") as f:
                f.attrs["model"] = os.path.abspath(model)
                f.attrs["weights"] = ",".join(os.path.abspath(w) for w in weights)
                f.attrs["blobs"] = ",".join(blobs)
                _log("Extracting Features")
                for _ in range(iterations):
                    net.forward()
                    for name, ds_name in zip(blobs, datasets):
                        arr = backend.to_numpy(net.blobs[name].data)
                        if arr.ndim == 0:
                            arr = arr.reshape(1)
                        ds = f.get(ds_name)
                        if ds is None:
                            row = arr.shape[1:]
                            ds = f.create_dataset(ds_name, shape=(0,) + row, maxshape=(None,) + row, dtype=arr.dtype,
                                                  chunks=True)
                        elif ds.shape[1:] != arr.shape[1:]:
                            raise PcnError("blob %s changed its per-image shape from %s to %s between batches"
                                           % (name, ds.shape[1:], arr.shape[1:]))
                        n = ds.shape[0]
                        ds.resize(n + arr.shape[0], axis=0)
                        ds[n:] = arr
                        if (n + arr.shape[0]) // 1000 > n // 1000:
                            _log("Extracted features of %d query images for feature blob %s"
                                 % (n + arr.shape[0], name))
                rows = {name: int(f[ds_name].shape[0]) for name, ds_name in zip(blobs, datasets)}
            os.replace(tmp, out)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    for name, count in rows.items():
        if count % 1000:
            _log("Extracted features of %d query images for feature blob %s" % (count, name))
    _log("Successfully extracted the features!")
    return min(rows.values())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="the net prototxt (its data layers feed the images)")
    ap.add_argument("--weights", required=True, help="comma-separated .caffemodel (or .h5) weights files")
    ap.add_argument("--blobs", required=True, help="comma-separated names of the blobs to save, e.g. fc7,prob")
    ap.add_argument("--datasets", help="comma-separated dataset names, one per blob (default: the blob names)")
    ap.add_argument("--iterations", type=int, required=True, help="number of forward passes (mini-batches)")
    ap.add_argument("--out", required=True, help="the HDF5 file to write, e.g. features.h5")
    ap.add_argument("--gpu", type=int, help="run on this CUDA device id (needs CuPy); default: the CPU")
    args = ap.parse_args(argv)
    try:
        if args.gpu is not None:
            caffe.set_device(args.gpu)
            caffe.set_mode_gpu()
            _log("Using GPU %d" % args.gpu)
        else:
            caffe.set_mode_cpu()
            _log("Using CPU")
        extract_features(args.model, _split(args.weights), _split(args.blobs), args.iterations, args.out,
                         _split(args.datasets) or None)
    except (PcnError, OSError) as e:
        print("extract_features: error: %s" % e, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
