"""Loading and saving net parameters: binary .caffemodel (NetParameter) and Caffe's HDF5 weights format."""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile

import numpy as np

from .. import backend, prototxt
from ..errors import PcnError, ShapeError
from ..proto import caffe_pb2
from ..upgrade import upgrade_v1_layer
from .arrays import array_to_blobproto, blobproto_shape, blobproto_to_array

log = logging.getLogger("pycaffe_norm")


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
            try:
                values = blobproto_to_array(src).reshape(blob.shape)
            except PcnError as e:
                raise PcnError("%s: layer %r parameter %d: %s" % (source, layer_name, i, e)) from None
        else:
            shape = tuple(getattr(src, "shape", np.shape(src)))   # an h5py dataset: checked before it is read
            if shape != blob.shape:
                raise ShapeError("%s: layer %r parameter %d has shape %s in the net but %s in the weights file"
                                 % (source, layer_name, i, blob.shape, shape))
            values = np.asarray(src)
        blob.data[...] = blob.xp.asarray(values, dtype=blob.dtype)


def load_weights(net, path: str) -> None:
    """Copies parameters of same-named layers from a .caffemodel (or .h5); other layers are left as they are.

    As Caffe's CopyTrainedLayersFrom, logs each layer copied and each source layer ignored; then warns about the
    net's parameter layers the file did not set. A file that sets none of them is an error: the net would run on
    its random initial weights without a word.
    """
    path = os.fspath(path)
    if path.endswith(".h5"):
        load_hdf5(net, path)
        return
    param = prototxt.read_binary(path, caffe_pb2.NetParameter(), "weights file")
    layers = list(param.layer) if param.layer else [upgrade_v1_layer(v1) for v1 in param.layers]
    names = net.layer_dict
    copied = set()
    for lp in layers:
        if lp.name not in names:
            log.info("Ignoring source layer %s", lp.name)
            continue
        log.info("Copying source layer %s", lp.name)
        _copy_into(net, lp.name, list(lp.blobs), path)
        if lp.blobs:
            copied.add(lp.name)
    _check_coverage(net, copied, path)


def _check_coverage(net, copied: set, path: str) -> None:
    """Warns about parameter layers left at their initialisation; refuses a file that set none of them."""
    owners = [name for name, layer in net.layer_dict.items() if layer.blobs]
    missing = [name for name in owners if name not in copied]
    if owners and len(missing) == len(owners):
        raise PcnError("%s sets no parameter of net %r: none of its layers with parameters (%s) is in the file "
                       "(an empty or truncated file, or weights of another net?)"
                       % (path, net.name, ", ".join(owners)))
    if missing:
        log.warning("%d of %d layers with parameters are not in %s and keep their initial values: %s",
                    len(missing), len(owners), path, ", ".join(missing))


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


@contextlib.contextmanager
def atomic_hdf5(path: str):
    """Yields an h5py file open for writing that replaces ``path`` only once it is complete and on disk.

    The temporary file sits next to ``path`` (``.tmp_<name>...``, as prototxt.atomic_write names its own), in a
    folder created when missing; a failed write removes it. One left by a killed process is stale and is removed by
    the solver at its next start (see ``solvers.solver.remove_stale_temporaries``).
    """
    import h5py

    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_" + os.path.basename(path), dir=directory)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            yield f
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_hdf5(net, path: str) -> None:
    """Caffe's HDF5 weights layout: /data/<layer>/<i> (and /diff/<layer>/<i> when asked), written atomically."""
    with atomic_hdf5(path) as f:
        data = f.create_group("data")
        for name, blobs in net.params.items():
            g = data.create_group(name)
            for i, b in enumerate(blobs):
                g.create_dataset(str(i), data=backend.to_numpy(b.data))


def load_hdf5(net, path: str) -> None:
    """Copies parameters from Caffe's HDF5 weights layout (/data/<layer>/<i>); errors name the file."""
    import h5py

    path = os.fspath(path)
    if not os.path.exists(path):
        raise PcnError("weights file not found: %s" % path)
    if not os.path.isfile(path):
        raise PcnError("weights file is not a regular file: %s" % path)
    names = net.layer_dict
    copied = set()
    try:
        with h5py.File(path, "r") as f:
            data = f.get("data")
            if not isinstance(data, h5py.Group):
                found = "no /data group" if data is None else "/data is a dataset, not a group: a data .h5 file?"
                raise PcnError("%s: not a Caffe HDF5 weights file (%s)" % (path, found))
            for name in data:
                if name not in names:
                    log.info("Ignoring source layer %s", name)
                    continue
                group = data[name]
                if not isinstance(group, h5py.Group):
                    raise PcnError("%s: /data/%s is not a group of parameter blobs" % (path, name))
                log.info("Copying source layer %s", name)
                arrays = []
                for i in range(len(group)):
                    if str(i) not in group:
                        raise PcnError("%s: /data/%s has no blob %d (its blobs are named 0, 1, ...)" % (path, name, i))
                    arrays.append(group[str(i)])   # read by _copy_into once its shape is checked
                _copy_into(net, name, arrays, path)
                if arrays:
                    copied.add(name)
    except (OSError, KeyError, ValueError, TypeError, RuntimeError, AttributeError) as e:
        raise PcnError("%s: cannot read as Caffe HDF5 weights (%s)" % (path, _one_line(e))) from None
    _check_coverage(net, copied, path)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
