"""Pictures of a net (PNG, SVG, PDF) drawn with matplotlib, for machines without Graphviz's ``dot`` program.

The graph is the one :mod:`pycaffe_norm.draw` writes as DOT (layers as coloured boxes, blobs as grey boxes with
rounded corners, edge labels with batch size or ``num_output``); the layout is a plain layered one: each layer sits
one rank after the latest of its bottoms, each blob one rank after the layer that first writes it, and nodes of a
rank are ordered by the mean position of their predecessors. ``pip install 'pycaffe_norm[plot]'`` provides
matplotlib.
"""
from __future__ import annotations

import io
from typing import Dict, List, Optional, Tuple

from .errors import PcnError
from .proto import caffe_pb2

FORMATS = ("png", "svg", "pdf")
_MAX_PIXELS = 8000  # longest side of a PNG; large nets get a lower resolution instead of a huge image
_RANK_GAP = 2.2     # inches between ranks
_SLOT_GAP = 1.1     # inches between nodes of one rank


def _plain(label: str) -> List[str]:
    """Lines of a DOT record label from draw.layer_label, without DOT's escapes."""
    lines = label.split("\\n")
    out = []
    for line in lines:
        for ch in "{}|<>":
            line = line.replace("\\" + ch, ch)
        out.append(line.replace("\\\\", "\\"))
    return out


def net_graph(net: caffe_pb2.NetParameter, phase: Optional[int] = None, display_lrm: bool = False):
    """Nodes ``{key: (lines, fill colour, is_blob)}`` and edges ``[(src, dst, label)]``, keyed as in the DOT."""
    from . import draw  # draw imports this module lazily: no import cycle at load time

    nodes: Dict[str, Tuple[List[str], str, bool]] = {}
    edges: List[Tuple[str, str, str]] = []
    for layer in net.layer:
        if not draw.in_phase(layer, phase):
            continue
        key = "%s_%s" % (layer.name, layer.type)
        in_place = len(layer.bottom) == 1 and len(layer.top) == 1 and layer.bottom[0] == layer.top[0]
        colour = draw.NEURON_LAYER_STYLE["fillcolor"] if in_place else \
            draw.TYPE_COLORS.get(layer.type, draw.LAYER_STYLE["fillcolor"])
        nodes[key] = (_plain(draw.layer_label(layer, "LR", display_lrm)), colour, False)
        for b in layer.bottom:
            nodes.setdefault(b + "_blob", ([b], draw.BLOB_STYLE["fillcolor"], True))
            edges.append((b + "_blob", key, ""))
        for t in layer.top:
            nodes.setdefault(t + "_blob", ([t], draw.BLOB_STYLE["fillcolor"], True))
            edges.append((key, t + "_blob", draw.edge_label(layer)))
    return nodes, edges


def _ranks(nodes, edges) -> Dict[str, int]:
    """Longest-path ranks in the order the net lists its layers. An edge into an already ranked blob (an in-place
    layer writing its bottom) does not move that blob, but the blob's later readers come after that layer."""
    rank: Dict[str, int] = {}
    ready: Dict[str, int] = {}  # blob -> rank after which its current value exists
    for src, dst, _ in edges:
        rank.setdefault(src, 0)
        after = ready.get(src, rank[src])
        if dst not in rank:
            rank[dst] = after + 1
        elif dst.endswith("_blob"):
            ready[dst] = max(ready.get(dst, rank[dst]), rank[src])
        else:
            rank[dst] = max(rank[dst], after + 1)
    for key in nodes:
        rank.setdefault(key, 0)
    return rank


def _order(rank: Dict[str, int], edges) -> Dict[str, float]:
    """Position of each node within its rank: first appearance, then one sweep by the predecessors' mean slot."""
    by_rank: Dict[int, List[str]] = {}
    for key in rank:
        by_rank.setdefault(rank[key], []).append(key)
    slot = {}
    preds: Dict[str, List[str]] = {}
    for src, dst, _ in edges:
        if rank[src] < rank[dst]:
            preds.setdefault(dst, []).append(src)
    for r in sorted(by_rank):
        keys = by_rank[r]
        for i, key in enumerate(keys):
            slot[key] = float(i)
        keys.sort(key=lambda k: sum(slot[p] for p in preds[k]) / len(preds[k]) if preds.get(k) else slot[k])
        centre = (len(keys) - 1) / 2.0
        for i, key in enumerate(keys):
            slot[key] = i - centre
    return slot


def render(net: caffe_pb2.NetParameter, fmt: str, rankdir: str = "LR", phase: Optional[int] = None,
           display_lrm: bool = False) -> bytes:
    """The drawing as ``fmt`` bytes (png, svg or pdf)."""
    if fmt not in FORMATS:
        raise PcnError("without Graphviz's 'dot' program pcn draws .png, .svg and .pdf (and .dot text), not .%s"
                       % fmt)
    try:
        from matplotlib.figure import Figure  # no pyplot: the caller's backend and figures stay untouched
    except ImportError:
        raise PcnError("writing .%s needs Graphviz's 'dot' program or matplotlib; install one "
                       "(pip install 'pycaffe_norm[plot]', or apt-get install graphviz) or write a .dot file"
                       % fmt) from None
    nodes, edges = net_graph(net, phase, display_lrm)
    rank = _ranks(nodes, edges)
    slot = _order(rank, edges)
    n_ranks = max(rank.values(), default=0) + 1
    n_slots = max((sum(1 for k in rank if rank[k] == r) for r in range(n_ranks)), default=1)
    horizontal = rankdir in ("LR", "RL")
    flip = rankdir in ("RL", "BT")

    def position(key: str) -> Tuple[float, float]:
        along = (n_ranks - 1 - rank[key] if flip else rank[key]) * _RANK_GAP
        across = slot[key] * _SLOT_GAP
        return (along, -across) if horizontal else (across, -along)

    long_side, short_side = (n_ranks - 1) * _RANK_GAP + 2.5, (n_slots - 1) * _SLOT_GAP + 1.5
    width, height = (long_side, short_side) if horizontal else (short_side, long_side)
    dpi = min(100.0, _MAX_PIXELS / max(width, height))
    fig = Figure(figsize=(width, height), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    xs, ys = zip(*(position(k) for k in nodes)) if nodes else ((0.0,), (0.0,))
    ax.set_xlim(min(xs) - 1.25, max(xs) + 1.25)
    ax.set_ylim(min(ys) - 0.75, max(ys) + 0.75)
    ax.set_title(net.name or "Net", fontsize=9)
    boxes = {}
    for key, (lines, colour, is_blob) in nodes.items():
        x, y = position(key)
        style = "round,pad=0.3" if is_blob else "square,pad=0.3"
        boxes[key] = ax.text(x, y, "\n".join(lines), ha="center", va="center", fontsize=7, zorder=3,
                             bbox=dict(boxstyle=style, facecolor=colour, edgecolor="black", linewidth=0.6))
    for src, dst, label in edges:
        backward = rank[src] >= rank[dst]
        ax.annotate("", xy=position(dst), xytext=position(src), zorder=2,
                    arrowprops=dict(arrowstyle="->", linewidth=0.6, patchA=boxes[src], patchB=boxes[dst],
                                    connectionstyle="arc3,rad=%s" % ("0.4" if backward else "0")))
        if label:
            (x0, y0), (x1, y1) = position(src), position(dst)
            ax.text((x0 + x1) / 2, (y0 + y1) / 2, label, fontsize=6, ha="center", va="bottom", zorder=4)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt)
    return buffer.getvalue()
