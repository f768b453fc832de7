"""Layer base class and the registry that maps prototxt ``type`` strings to layer classes."""
from __future__ import annotations

from typing import Callable, List

from ..blob import Blob
from ..errors import NetError, ShapeError, did_you_mean
from ..proto import caffe_pb2

TRAIN = caffe_pb2.TRAIN
TEST = caffe_pb2.TEST

_REGISTRY: dict = {}


def register(*type_names: str) -> Callable:
    """Class decorator: ``@register("Convolution")`` makes ``type: "Convolution"`` build that class."""

    def deco(cls):
        for name in type_names:
            if name in _REGISTRY and _REGISTRY[name] is not cls:
                raise RuntimeError("layer type %r registered twice" % name)
            _REGISTRY[name] = cls
        if getattr(cls, "type", None) is None or "type" not in cls.__dict__:
            cls.type = type_names[0]
        return cls

    return deco


def layer_class(type_name: str, layer_name: str = "?"):
    try:
        return _REGISTRY[type_name]
    except KeyError:
        raise NetError("layer %r: unknown layer type %r%s; pycaffe_norm.layer_type_list() gives the %d known types"
                       % (layer_name, type_name, did_you_mean(type_name, _REGISTRY), len(_REGISTRY))) from None


def layer_type_list() -> List[str]:
    return sorted(_REGISTRY)


class Layer:
    """A Caffe layer: ``setup``, ``reshape``, ``forward``, ``backward``.

    ``bottom`` and ``top`` are lists of :class:`Blob`. ``backward`` writes (overwrites) bottom diffs for the
    bottoms whose ``propagate_down`` is true and *accumulates* into parameter diffs (``self.blobs[i].diff``)
    whose ``self.param_propagate_down[i]`` is true, exactly as Caffe does.

    Subclasses set the blob-count class attributes that apply; the Net checks them before ``setup``.
    """

    type: str = None
    exact_num_bottom: int | None = None
    min_bottom: int | None = None
    max_bottom: int | None = None
    exact_num_top: int | None = None
    min_top: int | None = None
    max_top: int | None = None
    # Loss layers: top 0 gets loss_weight 1 unless the prototxt says otherwise.
    is_loss: bool = False
    # Layers whose top may equal their bottom (in-place) do not need to do anything special, but layers that
    # cannot run in place say so here and the Net refuses such a prototxt with a clear error.
    allow_in_place: bool = True
    # Layers whose backward reads their own top data (as Caffe's do): a later layer that overwrites that top in
    # place corrupts their gradients, and the Net warns about such a prototxt.
    backward_reads_top: bool = False

    def __init__(self, param: caffe_pb2.LayerParameter, phase: int = TRAIN):
        self.layer_param = param
        self.name = param.name
        self.phase = phase
        self.blobs: List[Blob] = []
        self.param_propagate_down: List[bool] = []

    # --- the four verbs -----------------------------------------------------------------------------
    def setup(self, bottom: List[Blob], top: List[Blob]) -> None:
        """Read parameters and create parameter blobs (``self.blobs``). Called once."""

    def reshape(self, bottom: List[Blob], top: List[Blob]) -> None:
        raise NotImplementedError

    def forward(self, bottom: List[Blob], top: List[Blob]) -> None:
        raise NotImplementedError

    def backward(self, top: List[Blob], propagate_down: List[bool], bottom: List[Blob]) -> None:
        """Layers without a gradient leave this as is; asking them for one is an error."""
        if any(propagate_down):
            raise NetError("layer %r (%s) cannot backpropagate to its bottoms" % (self.name, self.type))

    # --- helpers ------------------------------------------------------------------------------------
    def initialize(self, bottom: List[Blob], top: List[Blob]) -> None:
        """Caffe's ``Layer::SetUp``: check blob counts, ``setup``, then ``reshape``."""
        self.check_blob_counts(bottom, top)
        self.setup(bottom, top)
        self.reshape(bottom, top)
        while len(self.param_propagate_down) < len(self.blobs):
            self.param_propagate_down.append(True)

    def allow_force_backward(self, bottom_index: int) -> bool:
        return True

    def set_param_propagate_down(self, i: int, value: bool) -> None:
        while len(self.param_propagate_down) <= i:
            self.param_propagate_down.append(True)
        self.param_propagate_down[i] = bool(value)

    def check_blob_counts(self, bottom: List[Blob], top: List[Blob]) -> None:
        def bad(what, n, rule):
            raise NetError("layer %r (%s) takes %s %s blob(s), got %d" % (self.name, self.type, rule, what, n))

        nb, nt = len(bottom), len(top)
        if self.exact_num_bottom is not None and nb != self.exact_num_bottom:
            bad("bottom", nb, "exactly %d" % self.exact_num_bottom)
        if self.min_bottom is not None and nb < self.min_bottom:
            bad("bottom", nb, "at least %d" % self.min_bottom)
        if self.max_bottom is not None and nb > self.max_bottom:
            bad("bottom", nb, "at most %d" % self.max_bottom)
        if self.exact_num_top is not None and nt != self.exact_num_top:
            bad("top", nt, "exactly %d" % self.exact_num_top)
        if self.min_top is not None and nt < self.min_top:
            bad("top", nt, "at least %d" % self.min_top)
        if self.max_top is not None and nt > self.max_top:
            bad("top", nt, "at most %d" % self.max_top)

    def shape_error(self, what: str, got, expected) -> ShapeError:
        """A ShapeError naming this layer and both shapes."""
        return ShapeError("layer %r (%s): %s has shape %s, expected %s"
                          % (self.name, self.type, what, tuple(got), tuple(expected)))

    def make_param_blob(self, shape, dtype, xp=None) -> Blob:
        return Blob(shape, dtype=dtype, xp=xp)

    def __repr__(self) -> str:
        return "<%s layer %r>" % (self.type, self.name)
