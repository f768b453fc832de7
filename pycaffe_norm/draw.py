"""Drawing a net as a graph: pycaffe's ``caffe.draw``, as Graphviz DOT text written in pure Python (no pydot).

Layers are boxes labelled with their name and type (Pooling with its method; Convolution, Deconvolution and
Pooling with kernel size, stride and pad), coloured by type; layers that work in place (one bottom that is also
their top) are green. Blobs are grey octagons. Edges from a Data, Convolution, Deconvolution or InnerProduct layer
to its tops are labelled with the batch size or ``num_output``. Formats other than DOT text (``png``, ``svg``,
``pdf``, ...) are made by Graphviz's ``dot`` program when it is on PATH; without it, PNG, SVG and PDF are drawn
with matplotlib (the ``plot`` extra).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from typing import List, Optional, Tuple

from . import draw_render
from .errors import PcnError
from .proto import caffe_pb2
from .prototxt import atomic_write, read_text

# caffe.draw's styles
LAYER_STYLE = {"shape": "record", "style": "filled", "fillcolor": "#6495ED"}
NEURON_LAYER_STYLE = {"shape": "record", "style": "filled", "fillcolor": "#90EE90"}
BLOB_STYLE = {"shape": "octagon", "style": "filled", "fillcolor": "#E0E0E0"}
TYPE_COLORS = {"Convolution": "#FF5050", "Deconvolution": "#FF5050", "Pooling": "#FF9900", "InnerProduct": "#CC33FF"}
TEXT_FORMATS = ("dot", "gv", "raw")


def _quote(text: str) -> str:
    """A DOT quoted string whose label shows ``text`` literally (backslashes and quotes escaped)."""
    return '"%s"' % text.replace("\\", "\\\\").replace('"', '\\"')


def _record_text(text: str) -> str:
    """Escapes backslashes and the characters that structure a record label, so a name shows as written."""
    text = text.replace("\\", "\\\\")
    for ch in "{}|<>":
        text = text.replace(ch, "\\" + ch)
    return text


def _attrs(attrs: dict) -> str:
    return ", ".join("%s=%s" % (k, v if v.startswith('"') else _quote(v)) for k, v in attrs.items())


def lr_mults(layer: caffe_pb2.LayerParameter) -> Tuple[float, float]:
    """The weight and bias ``lr_mult``s of a Convolution, Deconvolution or InnerProduct layer (1 when not given)."""
    ps = list(layer.param)
    if len(ps) > 2:
        raise PcnError("layer %r: could not parse the learning rate multipliers (%d param entries)"
                       % (layer.name, len(ps)))
    values = [p.lr_mult for p in ps] + [1.0] * (2 - len(ps))
    return values[0], values[1]


def layer_label(layer: caffe_pb2.LayerParameter, rankdir: str, display_lrm: bool = False) -> str:
    """Name, type and key parameters, one per line for a horizontal graph, separated by spaces for a vertical one
    (caffe.draw.get_layer_label). Returned as DOT label text: ``\\n`` is a line break there."""
    sep = " " if rankdir in ("TB", "BT") else "\\n"
    parts = [_record_text(layer.name)]
    if layer.type == "Pooling":
        method = caffe_pb2.PoolingParameter.PoolMethod.Name(layer.pooling_param.pool)
        parts.append(_record_text("(%s %s)" % (layer.type, method)))
    else:
        parts.append(_record_text("(%s)" % layer.type))
    if layer.type in ("Convolution", "Deconvolution", "Pooling"):
        if layer.type == "Pooling":
            p = layer.pooling_param
            kernel, stride, pad = p.kernel_size, p.stride, p.pad
        else:
            p = layer.convolution_param
            kernel = p.kernel_size[0] if len(p.kernel_size) else 1
            stride = p.stride[0] if len(p.stride) else 1
            pad = p.pad[0] if len(p.pad) else 0
        parts.append(sep.join(_record_text(s) for s in ("kernel size: %d" % kernel, "stride: %d" % stride,
                                                        "pad: %d" % pad)))
    if display_lrm and layer.type in ("Convolution", "Deconvolution", "InnerProduct"):
        w, b = lr_mults(layer)
        if w or b:
            parts.append(_record_text("lr mult: %.1f, %.1f" % (w, b)))
    return sep.join(parts)


def edge_label(layer: caffe_pb2.LayerParameter) -> str:
    if layer.type == "Data":
        return "Batch %d" % layer.data_param.batch_size
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    return ""


def in_phase(layer: caffe_pb2.LayerParameter, phase: Optional[int]) -> bool:
    """caffe.draw's phase filter: include/exclude rules are judged by their phase alone (stages and levels are
    not drawn apart); a rule without a phase admits every phase, as in a Net."""
    if phase is None:
        return True
    if layer.include and layer.exclude:
        raise PcnError("layer %r has both include and exclude rules" % layer.name)

    def matches(rule):
        return not rule.HasField("phase") or rule.phase == phase

    included = not layer.include or any(matches(r) for r in layer.include)
    return included and not any(matches(r) for r in layer.exclude)


def net_to_dot(net: caffe_pb2.NetParameter, rankdir: str = "LR", phase: Optional[int] = None,
               label_edges: bool = True, display_lrm: bool = False) -> str:
    """The DOT text of ``net`` as caffe.draw builds it: nodes keyed ``<layer>_<type>`` and ``<blob>_blob`` (so a
    TRAIN and a TEST layer of one name and type are one box), an edge per bottom and per top."""
    nodes = {}  # key -> (label, style); later definitions replace earlier ones, as in caffe.draw
    edges: List[Tuple[str, str, str]] = []
    for layer in net.layer:
        if not in_phase(layer, phase):
            continue
        key = "%s_%s" % (layer.name, layer.type)
        in_place = len(layer.bottom) == 1 and len(layer.top) == 1 and layer.bottom[0] == layer.top[0]
        style = dict(NEURON_LAYER_STYLE if in_place else LAYER_STYLE)
        if not in_place:
            style["fillcolor"] = TYPE_COLORS.get(layer.type, LAYER_STYLE["fillcolor"])
        nodes[key] = ('"%s"' % layer_label(layer, rankdir, display_lrm).replace('"', '\\"'), style)
        for b in layer.bottom:
            nodes[b + "_blob"] = (_quote(b), BLOB_STYLE)
            edges.append((b + "_blob", key, ""))
        for t in layer.top:
            nodes[t + "_blob"] = (_quote(t), BLOB_STYLE)
            edges.append((key, t + "_blob", edge_label(layer) if label_edges else ""))
    lines = ["digraph %s {" % _quote(net.name or "Net"), "  rankdir=%s;" % _quote(rankdir)]
    for key, (label, style) in nodes.items():
        lines.append("  %s [label=%s, %s];" % (_quote(key), label, _attrs(style)))
    for src, dst, label in edges:
        lines.append("  %s -> %s [label=%s];" % (_quote(src), _quote(dst), _quote(label)))
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(dot_text: str, fmt: str) -> bytes:
    """Runs Graphviz's ``dot -T<fmt>`` on the DOT text."""
    exe = shutil.which("dot")
    if exe is None:
        raise PcnError("writing .%s needs Graphviz's 'dot' program, which is not on PATH: install Graphviz "
                       "(e.g. apt-get install graphviz, brew install graphviz) or write a .dot file" % fmt)
    proc = subprocess.run([exe, "-T" + fmt], input=dot_text.encode(), capture_output=True)
    if proc.returncode != 0:
        message = proc.stderr.decode(errors="replace").strip().splitlines()
        raise PcnError("dot -T%s failed: %s" % (fmt, message[0] if message else "exit status %d" % proc.returncode))
    return proc.stdout


def draw_net_to_file(net: caffe_pb2.NetParameter, filename: str, rankdir: str = "LR", phase: Optional[int] = None,
                     display_lrm: bool = False) -> None:
    """Writes the drawing in the format that ``filename``'s extension names (caffe.draw.draw_net_to_file)."""
    ext = filename[filename.rfind(".") + 1:].lower() if "." in os.path.basename(filename) else ""
    if not ext:
        raise PcnError("%s has no extension; name the format with one (.dot, .png, .svg, .pdf, ...)" % filename)
    atomic_write(filename, draw_net(net, rankdir, ext, phase, display_lrm))


def draw_net(net: caffe_pb2.NetParameter, rankdir: str = "LR", ext: str = "png", phase: Optional[int] = None,
             display_lrm: bool = False) -> bytes:
    """The drawing as bytes in format ``ext`` (caffe.draw.draw_net): DOT text, Graphviz's rendering, or without
    Graphviz a PNG, SVG or PDF drawn with matplotlib (:mod:`pycaffe_norm.draw_render`)."""
    if ext not in TEXT_FORMATS and shutil.which("dot") is None and ext in draw_render.FORMATS:
        return draw_render.render(net, ext, rankdir, phase, display_lrm)
    text = net_to_dot(net, rankdir, phase, display_lrm=display_lrm)
    return text.encode() if ext in TEXT_FORMATS else render(text, ext)


def cmd_draw(args) -> int:
    """``pcn draw``: tools/draw_net.py as a subcommand."""
    from .upgrade import upgrade_net

    phase = None if args.phase == "ALL" else getattr(caffe_pb2, args.phase)
    net = upgrade_net(read_text(args.net, caffe_pb2.NetParameter(), "net prototxt"))
    draw_net_to_file(net, args.out, args.rankdir, phase, args.display_lrm)
    print("Drew %s" % args.out)
    return 0


def register(sub) -> None:
    """Adds ``draw`` to pcn's subcommands."""
    p = sub.add_parser("draw", help="draw a net as a graph (Caffe's draw_net.py): .png, .svg, .pdf or .dot")
    p.add_argument("net", help="the net prototxt")
    p.add_argument("out", help="the drawing; its extension names the format (.dot text needs nothing else)")
    p.add_argument("--rankdir", default="LR", choices=("LR", "TB", "BT", "RL"),
                   help="direction of the graph (default: %(default)s, left to right)")
    p.add_argument("--phase", default="ALL", type=str.upper, choices=("TRAIN", "TEST", "ALL"),
                   help="draw the layers of this phase only (default: %(default)s, every layer)")
    p.add_argument("--display_lrm", action="store_true", help="show the lr_mult of learnable layers")
    p.set_defaults(func=cmd_draw)
