"""Protocol buffer bindings generated from ``proto/caffe.proto`` (pycaffe's ``caffe.proto``)."""
from . import caffe_pb2  # noqa: F401
