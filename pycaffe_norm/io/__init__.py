"""Caffe's files: BlobProto/Datum conversions and image preprocessing (pycaffe's ``caffe.io``), weights, and solver
snapshots."""
from .arrays import (  # noqa: F401
    array_to_blobproto,
    array_to_datum,
    arraylist_to_blobprotovector_str,
    blobproto_to_array,
    blobprotovector_str_to_arraylist,
    datum_to_array,
    load_binaryproto,
)
from .transform import Transformer, load_image, oversample, resize_image  # noqa: F401
from .weights import load_hdf5, load_weights, net_to_proto, save_hdf5  # noqa: F401
