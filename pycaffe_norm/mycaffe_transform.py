"""MyCaffe's SSD transform blocks read as SSD-Caffe's fields, before a MyCaffe file fills pcn's schema.

MyCaffe (``MyCaffe/param.ssd/*.cs``) derives DistortionParameter, ExpansionParameter, ResizeParameter,
NoiseParameter, SaltPepperParameter and EmitConstraint, and ``MyCaffe/param/MaskParameter.cs`` and
DataLabelMappingParameter, from OptionalParameter: a block acts only while it is active (default: not), and its
DataTransformer and AnnotatedDataLayer skip an inactive block entirely. Each block's ``FromProto`` reads
``option { active: ... }``; DistortionParameter and ResizeParameter then read a bare ``active:`` that overrides it,
the others never read a bare ``active``. SSD-Caffe has no switch: a block that is present acts. So here an inactive
block is dropped (a log line), and an active one loses its switch and takes SSD-Caffe's name (``distortion_param``
-> ``distort_param``, ``expansion_param`` -> ``expand_param``); pcn's AnnotatedData implements those fields.
"""
from __future__ import annotations

import logging
from typing import List, Optional

from .dialect import Node, Problems

log = logging.getLogger(__name__)

# MyCaffe block name -> (SSD-Caffe's name, whether MyCaffe's FromProto reads a bare ``active``, whether the block is
# MyCaffe-only, so that without a switch it is MyCaffe's default: inactive).
_BLOCKS = {
    "distortion_param": ("distort_param", True, True),
    "expansion_param": ("expand_param", False, True),
    "resize_param": ("resize_param", True, False),
    "noise_param": ("noise_param", False, False),
    "emit_constraint": ("emit_constraint", False, False),
    "mask_param": ("mask_param", False, True),
    "label_mapping": ("label_mapping", False, True),
}
# MyCaffe-only fields inside an active block that change no number pcn computes.
_DROPPED = {
    "distortion_param": {"use_gpu": "where MyCaffe distorts (GPU or CPU)",
                         "random_seed": "the seed of MyCaffe's GPU distortion (pcn seeds its own prefetch)"},
}


def _flag(node: Optional[Node]) -> Optional[bool]:
    if node is None or node.value is None:
        return None
    return node.value.strip().lower() in ("true", "1", "t")


def block_active(node: Node, reads_bare_active: bool) -> Optional[bool]:
    """MyCaffe's ``Active`` of an optional block (None when it has no switch at all)."""
    option = node.find("option")
    active = _flag(option.find("active")) if option is not None and option.children is not None else None
    if reads_bare_active and node.find("active") is not None:
        active = _flag(node.find("active"))
    return active


def _rewrite_block(node: Node, where: str, problems: Problems) -> Optional[Node]:
    """The block as SSD-Caffe's, or None when MyCaffe would skip it."""
    ssd_name, reads_bare, mycaffe_only = _BLOCKS[node.name]
    if node.children is None:
        return node   # the schema reader reports it
    has_switch = node.find("option") is not None or node.find("active") is not None
    if not has_switch and not mycaffe_only:
        return node   # SSD-Caffe's own block: present means on
    active = bool(block_active(node, reads_bare))
    if not active:
        log.info("%s: transform_param.%s is inactive in MyCaffe's reading (its option { active }); dropped",
                 where, node.name)
        return None
    if node.name in ("mask_param", "label_mapping"):
        return node   # left to the field table, which refuses them by name while active
    if node.name == "noise_param":
        problems.add(node, "TransformationParameter.noise_param is active: MyCaffe's (SSD's) OpenCV noise policies, "
                           "which pcn does not implement")
        return None
    kept: List[Node] = []
    pads = [c for c in node.children if c.name == "pad_value"]
    for child in node.children:
        if child.name in ("option", "active"):
            continue
        why = _DROPPED.get(node.name, {}).get(child.name)
        if why is not None:
            log.info("%s: %s.%s (MyCaffe) accepted and ignored: %s", where, node.name, child.name, why)
            continue
        if child.name == "pad_value" and pads and child.value is not None:
            # MyCaffe's ResizeParameter.FromProto adds the first pad_value once per pad_value entry.
            if child.value != pads[0].value:
                log.warning("%s: resize_param.pad_value %s read as %s: MyCaffe reads every pad_value as the first",
                            where, child.value, pads[0].value)
            child = Node(child.name, child.line, child.column, pads[0].value, pads[0].quoted)
        kept.append(child)
    if ssd_name != node.name:
        log.info("%s: transform_param.%s (MyCaffe, active) read as SSD-Caffe's %s", where, node.name, ssd_name)
    return Node(ssd_name, node.line, node.column, node.value, node.quoted, kept, node.values)


def _rewrite_transform(node: Node, where: str, problems: Problems) -> None:
    out = []
    for child in node.children:
        if child.name in _BLOCKS:
            child = _rewrite_block(child, where, problems)
            if child is None:
                continue
        out.append(child)
    node.children[:] = out


def _rewrite_annotated(node: Node, where: str) -> None:
    """MyCaffe writes AnnotatedDataParameter.anno_type as its ANNOTATION_TYPE number: -1 NONE, 0 BBOX."""
    out = []
    for child in node.children:
        if child.name == "anno_type" and child.value is not None and child.value.strip() in ("-1", "NONE"):
            log.info("%s: annotated_data_param.anno_type: %s (MyCaffe's NONE) read as unset: the type stored in "
                     "each AnnotatedDatum is used, as SSD-Caffe does without anno_type", where, child.value)
            continue
        if child.name == "anno_type" and child.value is not None and child.value.strip() == "0":
            child = Node(child.name, child.line, child.column, "BBOX", False)
        out.append(child)
    node.children[:] = out


def rewrite_mycaffe_transforms(nodes: List[Node], problems: Problems) -> None:
    """In place: every layer's ``transform_param`` and ``annotated_data_param`` in MyCaffe's reading."""
    for layer in nodes:
        if layer.name not in ("layer", "layers") or layer.children is None:
            continue
        name = layer.find("name")
        where = "layer %r" % (name.value if name is not None else "?")
        for child in layer.children:
            if child.children is None:
                continue
            if child.name == "transform_param":
                _rewrite_transform(child, where, problems)
            elif child.name == "annotated_data_param":
                _rewrite_annotated(child, where)
