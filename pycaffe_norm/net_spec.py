"""pycaffe's net specification: write a net in Python, get a ``NetParameter``.

``n = NetSpec(); n.data, n.label = layers.Data(..., ntop=2); n.conv1 = layers.Convolution(n.data, num_output=20)``;
``n.to_proto()`` then lists every layer needed for the assigned tops. Naming and keyword rules follow BVLC Caffe's
``python/caffe/net_spec.py`` so that existing generator scripts give the same prototxt; a keyword or value that does
not fit the schema raises :class:`NetSpecError` naming the layer type and the field.
"""
from __future__ import annotations

import difflib
from collections import Counter, OrderedDict
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from .errors import PcnError
from .proto import caffe_pb2

__all__ = ["NetSpec", "NetSpecError", "Top", "Function", "Layers", "Parameters", "layers", "params", "to_proto",
           "param_name_dict"]


class NetSpecError(PcnError, ValueError):
    """A layer keyword or value that does not fit Caffe's schema; names the layer type and the field."""


class _MissingTop(AttributeError, KeyError):
    """``n.foo`` for an unassigned top: pycaffe raised KeyError, Python code expects AttributeError."""

    def __str__(self) -> str:
        return str(self.args[0])


_LAYER = caffe_pb2.LayerParameter.DESCRIPTOR
_TYPE_NAMES = {v: k[len("TYPE_"):].lower() for k, v in vars(FieldDescriptor).items() if k.startswith("TYPE_")}

# Layer types whose parameter message is not named after them, so the schema scan cannot pair them.
# (The scan pairs NormalizeParameter with its first field, norm_param, as SSD-Caffe's pycaffe does.)
_ALIASES = {"Deconvolution": "convolution", "Normalize": "norm", "Normalization2": "normalization2"}


def param_name_dict() -> Dict[str, str]:
    """Layer type -> prefix of its ``<prefix>_param`` field, from the schema (``{"Convolution": "convolution"}``).

    Like pycaffe, every ``XxxParameter`` message held by a LayerParameter field ``yyy_param`` gives ``Xxx -> yyy``
    (some entries, such as ``Transformation``, are not layer types; they are harmless).
    """
    out: Dict[str, str] = {}
    for f in _LAYER.fields:
        if f.name.endswith("_param") and f.message_type is not None and f.message_type.name.endswith("Parameter"):
            out.setdefault(f.message_type.name[:-len("Parameter")], f.name[:-len("_param")])
    out.update(_ALIASES)
    return out


_param_names = param_name_dict()


# --------------------------------------------------------------------------------------------------------
# Assigning Python values to protobuf fields
# --------------------------------------------------------------------------------------------------------
def _type_name(field: FieldDescriptor) -> str:
    if field.message_type is not None:
        return field.message_type.name + " (a dict)"
    if field.enum_type is not None:
        return "%s (one of %s)" % (field.enum_type.name, ", ".join(v.name for v in field.enum_type.values))
    return _TYPE_NAMES.get(field.type, "value")


def _scalar(field: FieldDescriptor, val: Any, where: str) -> Any:
    if field.enum_type is not None and isinstance(val, str):
        ev = field.enum_type.values_by_name.get(val)
        if ev is None:
            raise NetSpecError("%s: %r is not a value of %s" % (where, val, _type_name(field)))
        return ev.number
    if hasattr(val, "item") and not isinstance(val, (str, bytes)):
        val = val.item()  # NumPy scalars
    return val


def _unknown_field(msg: Message, key: str, where: str) -> NetSpecError:
    names = list(msg.DESCRIPTOR.fields_by_name)
    close = difflib.get_close_matches(key, names, n=3)
    hint = " (did you mean %s?)" % " or ".join(close) if close else ""
    return NetSpecError("%s: %s has no field %r%s" % (where, msg.DESCRIPTOR.name, key, hint))


def _assign(msg: Message, key: str, val: Any, where: str) -> None:
    """Sets ``msg.key`` from a Python value: lists (or tuples) fill repeated fields, a single value becomes a
    one-element list, dicts fill submessages, enum fields take the number or the name."""
    field = msg.DESCRIPTOR.fields_by_name.get(key)
    if field is None:
        raise _unknown_field(msg, key, where)
    here = "%s.%s" % (where, key)
    if field.is_repeated:
        items = list(val) if isinstance(val, (list, tuple)) else [val]
        container = getattr(msg, key)
        for item in items:
            if field.message_type is not None:
                _fill_message(container.add(), item, field, "%s[%d]" % (here, len(container) - 1))
            else:
                _set(lambda v: container.append(v), field, item, here)
    elif field.message_type is not None:
        _fill_message(getattr(msg, key), val, field, here)
    else:
        _set(lambda v: setattr(msg, key, v), field, val, here)


def _fill_message(sub: Message, val: Any, field: FieldDescriptor, where: str) -> None:
    if isinstance(val, Message) and val.DESCRIPTOR is field.message_type:
        sub.CopyFrom(val)
    elif isinstance(val, dict):
        sub.SetInParent()  # dict() marks the submessage present, as "x {}" does in a prototxt
        for k, v in val.items():
            _assign(sub, k, v, where)
    else:
        raise NetSpecError("%s: expected %s, got %r" % (where, _type_name(field), val))


def _set(setter, field: FieldDescriptor, val: Any, where: str) -> None:
    if isinstance(val, (dict, list, tuple)):
        raise NetSpecError("%s: expected a single %s, got %r" % (where, _type_name(field), val))
    try:
        setter(_scalar(field, val, where))
    except (TypeError, ValueError) as e:
        if isinstance(e, NetSpecError):
            raise
        raise NetSpecError("%s: expected %s, got %r (%s)" % (where, _type_name(field), val, e)) from None


# --------------------------------------------------------------------------------------------------------
# The graph: Tops produced by Functions
# --------------------------------------------------------------------------------------------------------
class Top:
    """One output blob of a layer (``fn``), the ``n``-th of its tops."""

    def __init__(self, fn: "Function", n: int):
        self.fn = fn
        self.n = n

    def to_proto(self) -> caffe_pb2.NetParameter:
        """The layers needed to compute this top, with generated names."""
        return to_proto(self)

    def _to_proto(self, layers, names, autonames) -> None:
        self.fn._to_proto(layers, names, autonames)

    def __repr__(self) -> str:
        return "<Top %d of %s>" % (self.n, self.fn.type_name)


class Function:
    """A layer: its type, its bottoms (Tops of other layers) and its keyword parameters."""

    def __init__(self, type_name: str, inputs: Iterable[Top], params: Dict[str, Any]):
        self.type_name = type_name
        self.inputs = tuple(inputs)
        for i, inp in enumerate(self.inputs):
            if not isinstance(inp, Top):
                # pycaffe's exact text, which its tests assert (a tuple comes from a layer with ntop > 1)
                raise TypeError("%s input %d is not a Top (type is %s)" % (type_name, i, type(inp)))
        self.params = dict(params)
        self.ntop = self.params.pop("ntop", 1)
        self.in_place = self.params.pop("in_place", False)
        if isinstance(self.ntop, bool) or not isinstance(self.ntop, int) or self.ntop < 0:
            raise NetSpecError("layers.%s: ntop must be an integer >= 0, got %r" % (type_name, self.ntop))
        if self.in_place and len(self.inputs) < self.ntop:
            raise NetSpecError("layers.%s: in_place=True needs a bottom for each of its %d top(s), got %d"
                               % (type_name, self.ntop, len(self.inputs)))
        self.tops = tuple(Top(self, n) for n in range(self.ntop))
        # Check the keywords now, where the user wrote them; to_proto builds them again (pycaffe scripts may edit
        # fn.params in between).
        self._fill(caffe_pb2.LayerParameter())

    def __repr__(self) -> str:
        return "<Function %s>" % self.type_name

    def _get_name(self, names, autonames) -> str:
        # A layer is named after its first top; a layer without tops gets "<Type><count>".
        if self not in names:
            if self.ntop > 0:
                names[self] = self._get_top_name(self.tops[0], names, autonames)
            else:
                autonames[self.type_name] += 1
                names[self] = self.type_name + str(autonames[self.type_name])
        return names[self]

    def _get_top_name(self, top: Top, names, autonames) -> str:
        if top not in names:
            autonames[top.fn.type_name] += 1
            names[top] = top.fn.type_name + str(autonames[top.fn.type_name])
        return names[top]

    def _fill(self, layer: caffe_pb2.LayerParameter) -> None:
        where = "layers.%s" % self.type_name
        prefix = _param_names.get(self.type_name)
        own = getattr(layer, prefix + "_param") if prefix else None
        for key, val in self.params.items():
            # Keywords ending in "param" (param=, transform_param=, convolution_param=, ...) belong to the layer
            # itself; the others go to the type's own parameter message first, then to the layer (name=,
            # include=, loss_weight=, propagate_down=, phase=, ...), as in pycaffe.
            if key.endswith("param") or own is None or key not in own.DESCRIPTOR.fields_by_name:
                if key not in _LAYER.fields_by_name:
                    raise self._unknown(key, prefix)
                _assign(layer, key, val, where)
            else:
                _assign(own, key, val, "%s: %s_param" % (where, prefix))

    def _unknown(self, key: str, prefix: Optional[str]) -> NetSpecError:
        where = "%s_param (%s) nor of LayerParameter" % (prefix, _LAYER.fields_by_name[prefix + "_param"]
                                                         .message_type.name) if prefix else "LayerParameter"
        msg = "layers.%s: unknown keyword %r: not a field of %s" % (self.type_name, key, where)
        homes = [f.name for f in _LAYER.fields if f.message_type is not None and f.name.endswith("_param")
                 and key in f.message_type.fields_by_name]
        if homes and not key.endswith("param"):
            msg += "; it is a field of %s: write %s=dict(%s=...)" % (", ".join(homes), homes[0], key)
        else:
            fields = list(_LAYER.fields_by_name)
            if prefix:
                fields += list(_LAYER.fields_by_name[prefix + "_param"].message_type.fields_by_name)
            close = difflib.get_close_matches(key, fields, n=3)
            if close:
                msg += " (did you mean %s?)" % " or ".join(close)
        return NetSpecError(msg)

    def _make_layer(self, layers, names, autonames) -> caffe_pb2.LayerParameter:
        layer = caffe_pb2.LayerParameter()
        layer.type = self.type_name
        layer.bottom.extend(layers[inp.fn].top[inp.n] for inp in self.inputs)
        if self.in_place:
            layer.top.extend(layer.bottom)
        else:
            layer.top.extend(self._get_top_name(top, names, autonames) for top in self.tops)
        layer.name = self._get_name(names, autonames)
        self._fill(layer)  # after naming, so name= / top= act as in pycaffe (override / append)
        return layer

    def _to_proto(self, layers, names, autonames) -> None:
        # Depth-first, bottoms before the layer, in the order pycaffe's recursion gives; a loop rather than
        # recursion so that very deep nets do not hit Python's recursion limit.
        stack: List[Tuple[Function, bool]] = [(self, False)]
        while stack:
            fn, ready = stack.pop()
            if fn in layers:
                continue
            if ready:
                layers[fn] = fn._make_layer(layers, names, autonames)
                continue
            stack.append((fn, True))
            stack.extend((inp.fn, False) for inp in reversed(fn.inputs) if inp.fn not in layers)


def _check_top(where: str, value: Any) -> Union[Top, Function]:
    if isinstance(value, (Top, Function)):
        return value
    hint = " (a layer with ntop > 1 gives a tuple: n.a, n.b = layers.X(..., ntop=2))" \
        if isinstance(value, tuple) else ""
    raise TypeError("%s: expected a Top (or a Function for ntop=0), got %s%s" % (where, type(value).__name__, hint))


def to_proto(*tops: Union[Top, Function]) -> caffe_pb2.NetParameter:
    """A NetParameter with every layer needed to compute ``tops``; all names are generated (``Convolution1``)."""
    layers: "OrderedDict[Function, caffe_pb2.LayerParameter]" = OrderedDict()
    names: dict = {}
    autonames: Counter = Counter()
    for i, top in enumerate(tops):
        _check_top("to_proto argument %d" % i, top)._to_proto(layers, names, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers.values())
    return net


class NetSpec:
    """Named tops, assigned as attributes (or items); ``to_proto()`` names each top after its attribute and each
    layer after its first top, and lists the layers in the order that computes them."""

    def __init__(self):
        object.__setattr__(self, "tops", OrderedDict())

    def __setattr__(self, name: str, value: Union[Top, Function]) -> None:
        self.tops[name] = _check_top("NetSpec." + name, value)

    def __getattr__(self, name: str) -> Union[Top, Function]:
        tops = self.__dict__.get("tops")
        if tops is None or name not in tops:
            raise _MissingTop("NetSpec has no top %r" % name)
        return tops[name]

    def __setitem__(self, name: str, value: Union[Top, Function]) -> None:
        self.__setattr__(name, value)

    def __getitem__(self, name: str) -> Union[Top, Function]:
        return self.__getattr__(name)

    def __delitem__(self, name: str) -> None:
        del self.tops[name]

    def __contains__(self, name: str) -> bool:
        return name in self.tops

    def keys(self) -> List[str]:
        return list(self.tops.keys())

    def vals(self) -> List[Union[Top, Function]]:
        return list(self.tops.values())

    def to_proto(self) -> caffe_pb2.NetParameter:
        # A top assigned under two names takes the later one, as in pycaffe.
        names: dict = {v: k for k, v in self.tops.items()}
        autonames: Counter = Counter()
        layers: "OrderedDict[Function, caffe_pb2.LayerParameter]" = OrderedDict()
        for top in self.tops.values():
            top._to_proto(layers, names, autonames)
        net = caffe_pb2.NetParameter()
        net.layer.extend(layers.values())
        return net


# --------------------------------------------------------------------------------------------------------
# The pseudo-modules ``layers`` (L) and ``params`` (P)
# --------------------------------------------------------------------------------------------------------
class Layers:
    """``layers.Convolution(bottom, kernel_size=3)``: any attribute is a layer type; calling it gives its Top,
    a tuple of Tops for ``ntop > 1``, or the Function itself for ``ntop=0``."""

    def __getattr__(self, type_name: str):
        if type_name.startswith("__"):
            raise AttributeError(type_name)

        def layer_fn(*args: Top, **kwargs: Any):
            fn = Function(type_name, args, kwargs)
            if fn.ntop == 0:
                return fn
            if fn.ntop == 1:
                return fn.tops[0]
            return fn.tops

        layer_fn.__name__ = layer_fn.__qualname__ = type_name
        return layer_fn


class _ParamConstants:
    def __init__(self, name: str, message):
        self._name, self._message = name, message

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        try:
            return getattr(self._message, attr)
        except AttributeError:
            raise AttributeError("params.%s has no constant %r (%sParameter defines no such enum value)"
                                 % (self._name, attr, self._name)) from None


class Parameters:
    """``params.Pooling.MAX``: the enum constants of ``<Name>Parameter`` (``caffe_pb2.PoolingParameter.MAX``)."""

    def __getattr__(self, name: str) -> _ParamConstants:
        if name.startswith("__"):
            raise AttributeError(name)
        message = getattr(caffe_pb2, name + "Parameter", None)
        if message is None:
            raise AttributeError("params.%s: the schema has no message %sParameter" % (name, name))
        return _ParamConstants(name, message)


layers = Layers()
params = Parameters()
