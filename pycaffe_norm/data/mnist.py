"""The bundled MNIST digits: conversion of ``mnist_5k.npz`` into HDF5 files that Caffe's HDF5Data layer reads too.

Pixels are scaled by 1/256 (BVLC's LeNet ``scale: 0.00390625``) rather than 1/255, so a net trained here sees
exactly the values BVLC's LeNet sees; every value k/256 is exact in float32.
"""
from __future__ import annotations

import os
from typing import Dict

import numpy as np

SCALE = np.float32(1.0 / 256.0)
SPLITS = {"train": ("train_images", "train_labels"), "test": ("test_images", "test_labels")}


def bundled_mnist_dir() -> str:
    """``data/mnist`` of the source checkout this package was imported from (where ``pip install -e .`` points)."""
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.join(os.path.dirname(os.path.dirname(here)), "data", "mnist")


def _write_split(path: str, images: np.ndarray, labels: np.ndarray) -> None:
    import h5py

    data = images.astype(np.float32) * SCALE
    label = labels.astype(np.float32)
    n = data.shape[0]
    tmp = path + ".tmp"
    # track_times=False keeps the bytes a function of the data alone, so regeneration is reproducible.
    with h5py.File(tmp, "w", libver="earliest", track_order=False) as f:
        f.create_dataset("data", data=data, chunks=(min(64, n),) + data.shape[1:], compression="gzip",
                         compression_opts=9, shuffle=True, track_times=False)
        f.create_dataset("label", data=label, chunks=(min(1000, n),), compression="gzip", compression_opts=9,
                         shuffle=True, track_times=False)
    os.replace(tmp, path)


def write_mnist_hdf5(npz_path: str, out_dir: str, list_prefix: str = "data/mnist") -> Dict[str, str]:
    """Writes ``mnist_{train,test}.h5`` and ``{train,test}_list.txt`` into ``out_dir``; returns the .h5 paths.

    Each .h5 holds ``data`` float32 (N, 1, 28, 28) = pixel / 256 and ``label`` float32 (N,), gzip-compressed
    and chunked. The list files name the .h5 files as ``<list_prefix>/mnist_<split>.h5``: relative to the
    repository root, where Caffe itself would be run (pcn also finds them relative to the list file's folder).
    """
    os.makedirs(out_dir, exist_ok=True)
    written = {}
    with np.load(npz_path, allow_pickle=False) as z:
        for split, (img_key, lab_key) in SPLITS.items():
            missing = [k for k in (img_key, lab_key) if k not in z.files]
            if missing:
                raise KeyError("%s has no array(s) %s (it has %s)" % (npz_path, ", ".join(missing), ", ".join(z.files)))
            images, labels = z[img_key], z[lab_key]
            if images.ndim != 4 or images.shape[1:] != (1, 28, 28) or labels.shape != images.shape[:1]:
                raise ValueError("%s: %s %s and %s %s are not (N, 1, 28, 28) images with (N,) labels"
                                 % (npz_path, img_key, images.shape, lab_key, labels.shape))
            if images.dtype != np.uint8:
                raise ValueError("%s: %s must be uint8 grey levels, not %s" % (npz_path, img_key, images.dtype))
            h5 = os.path.join(out_dir, "mnist_%s.h5" % split)
            _write_split(h5, images, labels)
            entry = "%s/mnist_%s.h5" % (list_prefix, split) if list_prefix else "mnist_%s.h5" % split
            with open(os.path.join(out_dir, "%s_list.txt" % split), "w") as f:
                f.write(entry + "\n")
            written[split] = h5
    return written
