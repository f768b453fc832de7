"""tools/create_annoset.py (SSD's convert_annoset) and tools/make_synthetic_detection.py."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pycaffe_norm.data.db import open_reader
from pycaffe_norm.proto import caffe_pb2
from tests.support import load_tool

pytest.importorskip("PIL")

LABELMAP = ('item { name: "background" label: 0 display_name: "background" }\n'
            'item { name: "cat" label: 1 display_name: "cat" }\nitem { name: "dog" label: 2 display_name: "dog" }\n')
VOC = """<annotation><size><width>40</width><height>20</height><depth>3</depth></size>
<object><name>dog</name><difficult>0</difficult><bndbox><xmin>4</xmin><ymin>2</ymin><xmax>20</xmax><ymax>10</ymax>
</bndbox></object>
<object><name>cat</name><difficult>1</difficult><bndbox><xmin>0</xmin><ymin>0</ymin><xmax>40</xmax><ymax>20</ymax>
</bndbox></object>
<object><name>dog</name><difficult>0</difficult><bndbox><xmin>30</xmin><ymin>5</ymin><xmax>38</xmax><ymax>15</ymax>
</bndbox></object></annotation>"""


@pytest.fixture
def folder(tmp_path):
    from PIL import Image
    rs = np.random.RandomState(0)
    Image.fromarray(rs.randint(0, 255, (20, 40, 3)).astype(np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "a.xml").write_text(VOC)
    (tmp_path / "a.json").write_text(json.dumps({"image": {"width": 40, "height": 20}, "annotation": [
        {"bbox": [4, 2, 16, 8], "category_id": "dog"}, {"bbox": [0, 0, 40, 20], "category_id": "cat"}]}))
    (tmp_path / "labelmap.prototxt").write_text(LABELMAP)
    return tmp_path


def read_all(db):
    r = open_reader(str(db))
    out = []
    for _ in range(r.count()):
        out.append((r.key(), caffe_pb2.AnnotatedDatum.FromString(r.value())))
        r.next()
    return out


def test_voc_xml_boxes_are_grouped_and_normalised(folder):
    (folder / "list.txt").write_text("a.png a.xml\n")
    tool = load_tool("create_annoset")
    assert tool.main([str(folder) + "/", str(folder / "list.txt"), str(folder / "db"),
                      "--labelmap_file", str(folder / "labelmap.prototxt")]) == 0
    [(key, anno)] = read_all(folder / "db")
    assert key == b"00000000_a.png"
    assert (anno.datum.channels, anno.datum.height, anno.datum.width) == (3, 20, 40)
    assert [g.group_label for g in anno.annotation_group] == [2, 1]       # order of first appearance
    dogs = anno.annotation_group[0].annotation
    assert [a.instance_id for a in dogs] == [0, 1]
    b = dogs[0].bbox
    assert (b.xmin, b.ymin, b.xmax, b.ymax) == pytest.approx((0.1, 0.1, 0.5, 0.5))
    assert anno.annotation_group[1].annotation[0].bbox.difficult


def test_json_boxes_and_encoded_images(folder):
    (folder / "list.txt").write_text("a.png a.json\n")
    tool = load_tool("create_annoset")
    assert tool.main([str(folder) + "/", str(folder / "list.txt"), str(folder / "db"), "--label_type", "json",
                      "--encoded", "--labelmap_file", str(folder / "labelmap.prototxt")]) == 0
    [(_, anno)] = read_all(folder / "db")
    assert anno.datum.encoded and anno.datum.data == (folder / "a.png").read_bytes()
    b = anno.annotation_group[0].annotation[0].bbox
    assert (b.xmin, b.ymin, b.xmax, b.ymax) == pytest.approx((0.1, 0.1, 0.5, 0.5))


def test_unknown_name_is_a_one_line_error(folder, capsys):
    (folder / "labelmap.prototxt").write_text('item { name: "cat" label: 1 }')
    (folder / "list.txt").write_text("a.png a.xml\n")
    code = load_tool("create_annoset").main([str(folder) + "/", str(folder / "list.txt"), str(folder / "db"),
                                             "--labelmap_file", str(folder / "labelmap.prototxt")])
    assert code == 2
    assert "unknown name 'dog'" in capsys.readouterr().err
    assert not (folder / "db").exists()


def test_synthetic_set_boxes_cover_their_shapes(tmp_path):
    gen = load_tool("make_synthetic_detection")
    rs = np.random.RandomState(3)
    for _ in range(10):
        img, objects = gen.make_image(rs, 48)
        assert 1 <= len(objects) <= 4
        for kind, (x, y, w, h) in objects:
            assert kind in gen.CLASSES and 0 <= x and x + w <= 48 and 0 <= y and y + h <= 48
    gen.generate(str(tmp_path), 3, 2, 32, seed=1)
    assert len(read_all(tmp_path / "train_lmdb")) == 3 and len(read_all(tmp_path / "test_lmdb")) == 2
    assert "triangle" in (tmp_path / "labelmap.prototxt").read_text()
