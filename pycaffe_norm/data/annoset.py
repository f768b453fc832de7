"""Reading detection annotations as SSD-Caffe's ``convert_annoset`` does: a labelmap (LabelMap prototxt), VOC XML
or SSD's JSON box files, turned into AnnotatedDatum records with boxes normalised by the image size."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import Dict, List, Tuple

from google.protobuf import text_format

from ..errors import PcnError
from ..proto import caffe_pb2


def read_labelmap(path: str) -> caffe_pb2.LabelMap:
    try:
        with open(path) as f:
            return text_format.Parse(f.read(), caffe_pb2.LabelMap())
    except OSError as e:
        raise PcnError("labelmap %s: %s" % (path, e.strerror)) from None
    except text_format.ParseError as e:
        raise PcnError("labelmap %s: %s" % (path, e)) from None


def name_to_label(labelmap: caffe_pb2.LabelMap) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for item in labelmap.item:
        if item.name in out:
            raise PcnError("labelmap: name %r appears twice" % item.name)
        out[item.name] = item.label
    return out


def _read_xml(path: str) -> Tuple[int, int, List[tuple]]:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        raise PcnError("%s: cannot read VOC XML: %s" % (path, e)) from None
    size = root.find("size")
    width = int(size.findtext("width", "0")) if size is not None else 0
    height = int(size.findtext("height", "0")) if size is not None else 0
    objects = []
    for obj in root.iter("object"):
        box = obj.find("bndbox")
        if box is None:
            raise PcnError("%s: an <object> has no <bndbox>" % path)
        coords = [float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
        objects.append((obj.findtext("name", "").strip(), coords, obj.findtext("difficult", "0").strip() == "1"))
    return width, height, objects


def _read_json(path: str) -> Tuple[int, int, List[tuple]]:
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise PcnError("%s: cannot read JSON boxes: %s" % (path, e)) from None
    image = doc.get("image", {})
    objects = []
    for obj in doc.get("annotation", []):
        x, y, w, h = (float(v) for v in obj["bbox"])
        objects.append((str(obj["category_id"]), [x, y, x + w, y + h], bool(obj.get("iscrowd", 0))))
    return int(image.get("width", 0)), int(image.get("height", 0)), objects


def annotated_datum(datum: caffe_pb2.Datum, anno_path: str, label_type: str, labels: Dict[str, int],
                    img_height: int, img_width: int) -> caffe_pb2.AnnotatedDatum:
    """SSD's ReadXMLToAnnotatedDatum / ReadJSONToAnnotatedDatum: boxes grouped by label in order of first
    appearance, instance ids counted per group, corners divided by the image width and height (the file's own
    size when it gives one). JSON boxes are [x, y, width, height] with the label name in ``category_id``."""
    if label_type == "xml":
        width, height, objects = _read_xml(anno_path)
    elif label_type == "json":
        width, height, objects = _read_json(anno_path)
    else:
        raise PcnError("label_type %r is not supported (xml or json)" % label_type)
    width, height = width or img_width, height or img_height
    if width <= 0 or height <= 0:
        raise PcnError("%s: no valid image width/height" % anno_path)
    out = caffe_pb2.AnnotatedDatum(datum=datum, type=caffe_pb2.AnnotatedDatum.BBOX)
    groups: Dict[int, caffe_pb2.AnnotationGroup] = {}
    for name, (x0, y0, x1, y1), difficult in objects:
        if name not in labels:
            raise PcnError("%s: unknown name %r (not in the labelmap)" % (anno_path, name))
        label = labels[name]
        if label not in groups:
            groups[label] = out.annotation_group.add(group_label=label)
        group = groups[label]
        anno = group.annotation.add(instance_id=len(group.annotation))
        anno.bbox.xmin, anno.bbox.ymin = x0 / width, y0 / height
        anno.bbox.xmax, anno.bbox.ymax = x1 / width, y1 / height
        anno.bbox.difficult = difficult
    return out
