"""Caffe's ``type: "Python"`` layer: a layer class the user writes, named by ``python_param { module layer }``.

As in pycaffe, the module is imported from ``sys.path`` (set ``PYTHONPATH``), the class must subclass
``caffe.Layer`` (:class:`~pycaffe_norm.layers.base.Layer`), it is built as ``cls(layer_param)``, and before its
``setup`` runs it gets ``self.param_str`` and ``self.phase``. The Net then holds the user's object itself, so
``net.layers[i]`` and ``net.layer_dict[name]`` are that object, as in pycaffe. Importing the module runs the
user's code, exactly as Caffe does; nothing from the prototxt is ever evaluated. A layer file written for pycaffe
(``import caffe``) runs unchanged where BVLC's pycaffe is not installed: ``caffe`` is then served by pcn.
"""
from __future__ import annotations

import importlib
import logging
import re
import sys
from typing import List, Optional

import numpy as np

from ..blob import Blob
from ..errors import NetError
from ..proto import caffe_pb2
from .base import TRAIN, Layer, register

logger = logging.getLogger("pycaffe_norm")

# Dotted Python identifiers only: a relative or malformed name would give a confusing importlib error.
_DOTTED_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*\Z")


class PythonLayerError(RuntimeError):
    """A ValueError or IndexError raised by the user's ``setup``/``reshape`` while the Net builds the layer.

    The Net reports such errors of its own layers as one-line shape errors; from user code they are bugs whose
    traceback matters, so they arrive chained to this error (``raise ... from``) and the CLI shows it in full.
    """


class BlobVec(list):
    """pycaffe's ``layer.blobs``: a list of parameter Blobs with ``add_blob(*shape)``.

    New blobs are zero-filled and take the dtype and array module of the layer's blobs, so a float64 net
    (gradient checks) or a GPU net gets matching parameters.
    """

    def __init__(self, blobs=(), dtype=np.float32, xp=None):
        super().__init__(blobs)
        self.dtype = np.dtype(dtype)
        self.xp = xp

    def add_blob(self, *shape: int) -> None:
        for s in shape:
            if not isinstance(s, (int, np.integer)):
                raise TypeError("add_blob takes the shape as integers, e.g. add_blob(3, 4); got %r" % (s,))
        self.append(Blob(shape, dtype=self.dtype, xp=self.xp))


def _fail(param: caffe_pb2.LayerParameter, message: str) -> NetError:
    return NetError("layer %r (Python): %s" % (param.name, message))


# pycaffe module names that user layer files import, and the pcn modules that stand in for them.
_CAFFE_ALIASES = {
    "caffe": "pycaffe_norm", "caffe.proto": "pycaffe_norm.proto",
    "caffe.proto.caffe_pb2": "pycaffe_norm.proto.caffe_pb2", "caffe.io": "pycaffe_norm.io",
    "caffe.draw": "pycaffe_norm.draw", "caffe.net_spec": "pycaffe_norm.net_spec",
    "caffe.coord_map": "pycaffe_norm.coord_map", "caffe.classifier": "pycaffe_norm.classifier",
}


def _alias_caffe() -> bool:
    """Lets ``import caffe`` in a user's layer file load pcn, so pycaffe layer files run unchanged.

    Only called after that import failed, i.e. when BVLC's pycaffe is not installed; returns False if the
    aliases were already in place (then the failure has another cause)."""
    if "caffe" in sys.modules:
        return False
    for alias, target in _CAFFE_ALIASES.items():
        sys.modules[alias] = importlib.import_module(target)
    logger.warning("a Python layer module imports 'caffe', which is not installed: pcn serves it as pycaffe_norm "
                   "(write `import pycaffe_norm as caffe` to silence this)")
    return True


def _import_module(param: caffe_pb2.LayerParameter, name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        missing = e.name or ""
        if name == missing or name.startswith(missing + "."):
            raise _fail(param, "cannot import python_param.module %r for layer class %r: no such module on the "
                        "Python path; as with pycaffe, add the folder that holds %r (a .py file or a package) to "
                        "PYTHONPATH" % (name, param.python_param.layer, name.split(".")[0])) from None
        if missing == "caffe" or missing.startswith("caffe."):
            if missing in _CAFFE_ALIASES and _alias_caffe():
                return _import_module(param, name)
            raise _fail(param, "module %r imports %r, which pcn does not provide; write "
                        "`import pycaffe_norm as caffe` in it instead of `import caffe`" % (name, missing)) from None
        raise  # a dependency of the user's module is missing: their traceback says where


def _layer_class(param: caffe_pb2.LayerParameter):
    pp = param.python_param
    for field, value in (("module", pp.module), ("layer", pp.layer)):
        if not value:
            raise _fail(param, "python_param.%s is not set (it names the %s of the layer class)"
                        % (field, "Python module" if field == "module" else "class"))
        if not _DOTTED_NAME.match(value):
            raise _fail(param, "python_param.%s %r is not a Python name" % (field, value))
    module = _import_module(param, pp.module)
    obj = module
    for part in pp.layer.split("."):
        if not hasattr(obj, part):
            found = sorted(n for n, v in vars(module).items()
                           if isinstance(v, type) and issubclass(v, Layer) and v is not Layer)
            raise _fail(param, "module %r (%s) has no class %r (python_param.layer); its caffe.Layer classes: %s"
                        % (pp.module, getattr(module, "__file__", "?"), pp.layer, ", ".join(found) or "none"))
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, Layer)):
        hint = "declare it as `class %s(caffe.Layer)` after `import pycaffe_norm as caffe`" % pp.layer.split(".")[-1]
        if isinstance(obj, type) and any(b.__name__ == "Layer" and b.__module__.split(".")[0] == "caffe"
                                         for b in obj.__mro__):
            hint = "it subclasses BVLC pycaffe's caffe.Layer; " + hint
        raise _fail(param, "%s.%s is not a subclass of caffe.Layer (pycaffe_norm.Layer): %s"
                    % (pp.module, pp.layer, hint))
    return obj


def _require_verbs(layer: Layer) -> None:
    """A class without reshape() or forward() fails once setup has run, as in pycaffe (whose setup may raise)."""
    for verb in ("reshape", "forward"):
        if getattr(type(layer), verb) is getattr(Layer, verb):
            raise _fail(layer.layer_param, "class %s.%s does not define %s(), which every Python layer needs"
                        % (type(layer).__module__, type(layer).__qualname__, verb))


def _initialize(layer: Layer, bottom: List[Blob], top: List[Blob]) -> None:
    """``Layer.initialize`` for a user's layer: give ``blobs`` the net's dtype, then set up as any layer."""
    ref: Optional[Blob] = top[0] if top else (bottom[0] if bottom else None)
    if ref is not None:
        # The Net may have replaced blobs by a plain list (prototxt blobs); add_blob must still work.
        layer.blobs = BlobVec(layer.blobs, ref.dtype, ref.xp)
    try:
        # Layer.initialize, with the check for reshape() and forward() between setup and reshape
        layer.check_blob_counts(bottom, top)
        layer.setup(bottom, top)
        _require_verbs(layer)
        layer.reshape(bottom, top)
        while len(layer.param_propagate_down) < len(layer.blobs):
            layer.param_propagate_down.append(True)
    except (ValueError, IndexError) as e:
        raise PythonLayerError("layer %r (Python, %s.%s) raised %s during setup: %s"
                               % (layer.name, type(layer).__module__, type(layer).__qualname__,
                                  type(e).__name__, e)) from e


@register("Python")
class PythonLayer(Layer):
    """Builds the user's layer: ``PythonLayer(param, phase)`` returns an instance of the class that
    ``python_param`` names (a :class:`Layer` subclass), not of this class; the registry needs one class per type."""

    def __new__(cls, param: caffe_pb2.LayerParameter, phase: int = TRAIN):
        if cls is not PythonLayer:  # a user class that subclasses this one is built normally
            return super().__new__(cls)
        user_cls = _layer_class(param)
        layer = user_cls(param)  # pycaffe's constructor signature: the LayerParameter only
        # A user __init__ that skips Layer.__init__ still gets the attributes the Net relies on.
        defaults = {"layer_param": param, "name": param.name, "param_propagate_down": []}
        for attr, value in defaults.items():
            if attr not in vars(layer):
                setattr(layer, attr, value)
        layer.blobs = BlobVec(getattr(layer, "blobs", ()))
        if getattr(layer, "type", None) is None:
            layer.type = "Python"
        layer.phase = phase
        layer.param_str = param.python_param.param_str
        # An instance attribute, so the user's class and pcn's Layer stay untouched.
        layer.initialize = _initialize.__get__(layer)
        return layer
