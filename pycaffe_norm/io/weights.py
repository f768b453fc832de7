"""Loading and saving net parameters: binary .caffemodel (NetParameter) and Caffe's HDF5 weights format."""
from __future__ import annotations

import os

import numpy as np

from .. import backend, prototxt
from ..errors import PcnError, ShapeError
from ..proto import caffe_pb2
from ..upgrade import upgrade_v1_layer
from .arrays import array_to_blobproto, blobproto_shape, blobproto_to_array


def _shape_matches(target_shape: tuple, blob: caffe_pb2.BlobProto) -> bool:
    if blob.HasField("shape"):
        return tuple(target_shape) == blobproto_shape(blob)
    # Legacy 4-D dims: missing leading axes of the target count as 1 (Caffe's Blob::ShapeEquals).
    if len(target_shape) > 4:
        return False
    padded = (1,) * (4 - len(target_shape)) + tuple(target_shape)
    return padded == (blob.num, blob.channels, blob.height, blob.width)


def _copy_into(net, layer_name: str, arrays_or_protos, source: str) -> None:
    layer = net.layer_dict[layer_name]
    if len(layer.blobs) != len(arrays_or_protos):
        raise ShapeError("%s: layer %r has %d parameter blobs in the net but %d in the weights file"
                         % (source, layer_name, len(layer.blobs), len(arrays_or_protos)))
    for i, (blob, src) in enumerate(zip(layer.blobs, arrays_or_protos)):
        if isinstance(src, caffe_pb2.BlobProto):
            if not _shape_matches(blob.shape, src):
                raise ShapeError("%s: layer %r parameter %d has shape %s in the net but %s in the weights file"
                                 % (source, layer_name, i, blob.shape, blobproto_shape(src)))
            values = blobproto_to_array(src).reshape(blob.shape)
        else:
            values = np.asarray(src)
            if values.shape != blob.shape:
                raise ShapeError("%s: layer %r parameter %d has shape %s in the net but %s in the weights file"
                                 % (source, layer_name, i, blob.shape, values.shape))
        blob.data[...] = blob.xp.asarray(values, dtype=blob.dtype)


def load_weights(net, path: str) -> None:
    """Copies parameters of same-named layers from a .caffemodel (or .h5); other layers are left as they are."""
    path = os.fspath(path)
    if path.endswith(".h5"):
        load_hdf5(net, path)
        return
    param = prototxt.read_binary(path, caffe_pb2.NetParameter(), "weights file")
    layers = list(param.layer) if param.layer else [upgrade_v1_layer(v1) for v1 in param.layers]
    names = net.layer_dict
    for lp in layers:
        if lp.name in names:
            _copy_into(net, lp.name, list(lp.blobs), path)


def net_to_proto(net, write_diff: bool = False) -> caffe_pb2.NetParameter:
    """The net as Caffe's Net::ToProto writes it: every layer's parameter with its blobs."""
    out = caffe_pb2.NetParameter(name=net.name)
    for lp, layer in zip(net.layer_params, net.layers):
        entry = out.layer.add()
        entry.CopyFrom(lp)
        del entry.blobs[:]
        for b in layer.blobs:
            data = backend.to_numpy(b.data)
            diff = backend.to_numpy(b.diff) if write_diff else None
            entry.blobs.add().CopyFrom(array_to_blobproto(data, diff))
    return out


def save_hdf5(net, path: str) -> None:
    """Caffe's HDF5 weights layout: /data/<layer>/<i> (and /diff/<layer>/<i> when asked), written atomically."""
    import h5py

    path = os.fspath(path)
    tmp = path + ".tmp"
    with h5py.File(tmp, "w") as f:
        data = f.create_group("data")
        for name, blobs in net.params.items():
            g = data.create_group(name)
            for i, b in enumerate(blobs):
                g.create_dataset(str(i), data=backend.to_numpy(b.data))
    os.replace(tmp, path)


def load_hdf5(net, path: str) -> None:
    import h5py

    if not os.path.exists(path):
        raise PcnError("weights file not found: %s" % path)
    names = net.layer_dict
    with h5py.File(path, "r") as f:
        if "data" not in f:
            raise PcnError("%s: not a Caffe HDF5 weights file (no /data group)" % path)
        for name in f["data"]:
            if name in names:
                group = f["data"][name]
                _copy_into(net, name, [group[str(i)][...] for i in range(len(group))], path)
