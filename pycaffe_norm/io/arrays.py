"""Conversions between NumPy arrays and Caffe's BlobProto / Datum messages (pycaffe's ``caffe.io``)."""
from __future__ import annotations

import numpy as np

from .. import prototxt
from ..errors import PcnError
from ..proto import caffe_pb2


class BlobProtoError(PcnError, ValueError):
    """A BlobProto whose values do not fill its shape (a ValueError, as pycaffe's reshape raises)."""


def blobproto_shape(blob: caffe_pb2.BlobProto) -> tuple:
    """The blob's shape as Caffe's Blob::FromProto reads it: the legacy (num, channels, height, width) when any of
    them is set, else ``shape.dim`` (no dims at all: a scalar)."""
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        return (blob.num, blob.channels, blob.height, blob.width)
    return tuple(int(d) for d in blob.shape.dim)


def blobproto_to_array(blob: caffe_pb2.BlobProto, return_diff: bool = False) -> np.ndarray:
    """The data (or diff) of ``blob`` as an array of its shape; double_data wins over data, as in Caffe."""
    shape = blobproto_shape(blob)
    if return_diff:
        values = blob.double_diff if len(blob.double_diff) else blob.diff
    else:
        values = blob.double_data if len(blob.double_data) else blob.data
    dtype = np.float64 if (len(blob.double_diff) if return_diff else len(blob.double_data)) else np.float32
    arr = np.array(values, dtype=dtype)
    count = int(np.prod(shape, dtype=np.int64))
    if arr.size != count:
        raise BlobProtoError("BlobProto holds %d values but its shape %s needs %d" % (arr.size, shape, count))
    return arr.reshape(shape)


def array_to_blobproto(arr, diff=None) -> caffe_pb2.BlobProto:
    """A BlobProto with ``shape`` and float data (double_data for float64 arrays)."""
    arr = np.asarray(arr)
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(arr.shape)
    if arr.dtype == np.float64:
        blob.double_data.extend(arr.ravel().tolist())
    else:
        blob.data.extend(arr.astype(np.float32).ravel().tolist())
    if diff is not None:
        d = np.asarray(diff)
        if d.dtype == np.float64:
            blob.double_diff.extend(d.ravel().tolist())
        else:
            blob.diff.extend(d.astype(np.float32).ravel().tolist())
    return blob


def arraylist_to_blobprotovector_str(arraylist) -> bytes:
    vec = caffe_pb2.BlobProtoVector()
    vec.blobs.extend([array_to_blobproto(a) for a in arraylist])
    return vec.SerializeToString()


def blobprotovector_str_to_arraylist(data: bytes) -> list:
    vec = caffe_pb2.BlobProtoVector()
    vec.ParseFromString(data)
    return [blobproto_to_array(b) for b in vec.blobs]


def array_to_datum(arr, label=None) -> caffe_pb2.Datum:
    """A Datum from a (C, H, W) array: uint8 goes to ``data`` bytes, anything else to ``float_data``."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise PcnError("a Datum holds a 3-D (channels, height, width) array, got shape %s" % (arr.shape,))
    datum = caffe_pb2.Datum(channels=arr.shape[0], height=arr.shape[1], width=arr.shape[2])
    if arr.dtype == np.uint8:
        datum.data = arr.tobytes()
    else:
        datum.float_data.extend(arr.astype(np.float32).ravel().tolist())
    if label is not None:
        datum.label = int(label)
    return datum


def datum_to_array(datum: caffe_pb2.Datum) -> np.ndarray:
    shape = (datum.channels, datum.height, datum.width)
    if datum.encoded:
        raise PcnError("encoded (JPEG/PNG) Datum values are not decoded by pcn")
    if len(datum.data):
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape)
    return np.array(datum.float_data, dtype=np.float32).reshape(shape)


def load_binaryproto(path: str) -> np.ndarray:
    """Reads a .binaryproto BlobProto file (e.g. a mean image) as an array."""
    try:
        return blobproto_to_array(prototxt.read_binary(path, caffe_pb2.BlobProto(), "binaryproto file"))
    except PcnError as e:
        message = str(e)
        raise PcnError(message if str(path) in message else "%s: %s" % (path, message)) from None
