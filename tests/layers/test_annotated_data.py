"""AnnotatedData (SSD's annotated image batches) and its augmentation helpers in pycaffe_norm/data/annotation.py."""
from __future__ import annotations

import numpy as np
import pytest

import pycaffe_norm as caffe
from pycaffe_norm.data import annotation as aug
from pycaffe_norm.errors import NetError
from pycaffe_norm.proto import caffe_pb2
from tests.support import load_tool

pytest.importorskip("PIL")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    load_tool("make_synthetic_detection").generate(str(out), 6, 2, 32, seed=5)
    return out


def net_file(tmp_path, source, transform="", anno="", phase="TRAIN", batch=3):
    text = ('layer { name: "data" type: "AnnotatedData" top: "data" top: "label" include { phase: %s } '
            'transform_param { %s } data_param { source: "%s" batch_size: %d backend: LMDB } '
            'annotated_data_param { %s } }' % (phase, transform, source, batch, anno))
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    return str(path)


def plain(synth, count=3):
    """The first ``count`` training images (C, H, W) float and their label rows (item = record index), read back
    from the files."""
    import json

    from PIL import Image
    images, rows = [], []
    for item, line in enumerate((synth / "train.txt").read_text().split("\n")[:count]):
        image, anno = line.split()
        images.append(np.asarray(Image.open(synth / image), np.float32)[:, :, ::-1].transpose(2, 0, 1))
        doc = json.loads((synth / anno).read_text())
        groups = {}
        for obj in doc["annotation"]:
            groups.setdefault(obj["category_id"], []).append(obj["bbox"])
        for name, boxes in groups.items():
            label = ["circle", "square", "triangle"].index(name) + 1
            for k, (x, y, w, h) in enumerate(boxes):
                rows.append([item, label, k, x / 32, y / 32, (x + w) / 32, (y + h) / 32, 0])
    return np.stack(images), np.asarray(rows)


def test_batches_without_augmentation_are_the_records(synth, tmp_path):
    net = caffe.Net(net_file(tmp_path, synth / "train_lmdb", "scale: 0.5 mean_value: 10 mean_value: 20 mean_value: 30",
                             phase="TEST"), caffe.TEST)
    net.forward()
    images, rows = plain(synth)
    want = (images - np.array([10, 20, 30], np.float32)[:, None, None]) * 0.5
    np.testing.assert_array_equal(net.blobs["data"].data, want)
    np.testing.assert_allclose(net.blobs["label"].data[0, 0], rows, rtol=1e-6)


def test_mirror_flips_pixels_and_boxes_together(synth, tmp_path):
    caffe.set_random_seed(4)
    net = caffe.Net(net_file(tmp_path, synth / "train_lmdb", "mirror: true"), caffe.TRAIN)
    images, rows = plain(synth, 6)
    flips = []
    for batch in range(4):                      # records cycle: batch k holds records 3k .. 3k + 2 (mod 6)
        net.forward()
        got, labels = net.blobs["data"].data, net.blobs["label"].data[0, 0]
        for i in range(3):
            record = (3 * batch + i) % 6
            flipped = np.array_equal(got[i], images[record][:, :, ::-1])
            assert flipped or np.array_equal(got[i], images[record])
            flips.append(flipped)
            want = rows[rows[:, 0] == record].copy()
            want[:, 0] = i
            if flipped:
                want[:, [3, 5]] = 1 - want[:, [5, 3]]
            np.testing.assert_allclose(labels[labels[:, 0] == i], want, rtol=1e-6, atol=1e-7)
    assert any(flips) and not all(flips)


def test_samplers_expand_and_resize_keep_boxes_inside(synth, tmp_path):
    caffe.set_random_seed(2)
    transform = ('resize_param { resize_mode: WARP height: 24 width: 24 } emit_constraint { emit_type: CENTER } '
                 'expand_param { prob: 1 max_expand_ratio: 2 } mean_value: 127 '
                 'distort_param { brightness_prob: 1 brightness_delta: 20 saturation_prob: 1 saturation_lower: 0.5 '
                 'saturation_upper: 1.5 hue_prob: 1 hue_delta: 10 contrast_prob: 1 contrast_lower: 0.5 '
                 'contrast_upper: 1.5 }')
    anno = ('batch_sampler { sampler { min_scale: 0.3 max_scale: 1 min_aspect_ratio: 0.5 max_aspect_ratio: 2 } '
            'sample_constraint { min_jaccard_overlap: 0.1 } max_sample: 1 max_trials: 50 }')
    net = caffe.Net(net_file(tmp_path, synth / "train_lmdb", transform, anno), caffe.TRAIN)
    for _ in range(3):
        net.forward()
        assert net.blobs["data"].data.shape == (3, 3, 24, 24)
        labels = net.blobs["label"].data[0, 0]
        assert labels.shape[1] == 8
        boxes = labels[labels[:, 0] >= 0, 3:7]
        assert (boxes >= 0).all() and (boxes <= 1).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()


def test_crop_projects_boxes_into_the_window():
    img = np.arange(10 * 20 * 3, dtype=np.uint8).reshape(10, 20, 3)
    boxes = aug.Boxes(np.array([[0.1, 0.2, 0.4, 0.6], [0.8, 0.8, 0.9, 0.9]]), np.array([1, 2]), np.array([0, 0]),
                      np.array([False, True]))
    out, kept = aug.crop(img, boxes, np.array([0.25, 0.0, 0.75, 0.5]))
    np.testing.assert_array_equal(out, img[0:5, 5:15])
    # box 0 seen from the window [0.25, 0.75] x [0, 0.5]: x (0.1 - 0.25) / 0.5 clipped to 0, (0.4 - 0.25) / 0.5
    np.testing.assert_allclose(kept.xyxy, [[0.0, 0.4, 0.3, 1.0]])
    assert list(kept.label) == [1]
    emit = caffe_pb2.EmitConstraint(emit_type=caffe_pb2.EmitConstraint.CENTER)
    window = np.array([0.3, 0.0, 0.8, 0.5])     # box 0's centre (0.25, 0.4) lies left of it
    assert len(aug.crop(img, boxes, window)[1].label) == 1
    assert len(aug.crop(img, boxes, window, emit)[1].label) == 0


def test_expand_places_the_image_where_the_boxes_say():
    img = np.full((8, 10, 3), 200, np.uint8)
    boxes = aug.Boxes(np.array([[0.0, 0.0, 1.0, 1.0]]), np.array([1]), np.array([0]), np.array([False]))
    p = caffe_pb2.ExpansionParameter(prob=1, max_expand_ratio=3)
    out, moved = aug.expand(img, boxes, p, np.array([1.0, 2.0, 3.0]), np.random.RandomState(0))
    h, w = out.shape[:2]
    x0, y0, x1, y1 = moved.xyxy[0] * [w, h, w, h]
    assert (x1 - x0, y1 - y0) == pytest.approx((10, 8))
    np.testing.assert_array_equal(out[round(y0):round(y1), round(x0):round(x1)], 200)
    assert (out == [1, 2, 3]).all(axis=2).sum() == h * w - 80


def test_sample_constraint_uses_the_first_kind_given():
    objects = np.array([[0.0, 0.0, 0.5, 0.5]])
    samples = np.array([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])
    c = caffe_pb2.SampleConstraint(min_jaccard_overlap=0.5, max_sample_coverage=0.1)
    np.testing.assert_array_equal(aug.satisfies(samples, objects, c), [True, False])   # coverage is not asked
    np.testing.assert_array_equal(aug.satisfies(samples, objects, caffe_pb2.SampleConstraint()), [True, True])
    assert not aug.satisfies(samples, np.zeros((0, 4)), c).any()


def test_hsv_round_trip_and_brightness():
    rs = np.random.RandomState(0)
    img = rs.randint(0, 256, (6, 7, 3)).astype(np.uint8)
    back = aug._hsv_to_bgr(aug._bgr_to_hsv(img))
    assert np.abs(back.astype(int) - img).max() <= 4
    p = caffe_pb2.DistortionParameter(brightness_prob=1, brightness_delta=30)
    out = aug.distort(img, p, np.random.RandomState(1)).astype(int)
    delta = out - img
    inside = (out > 0) & (out < 255)
    assert len(set(delta[inside].tolist())) == 1 and abs(delta[inside][0]) <= 30


@pytest.mark.parametrize("transform, message", [
    ("noise_param { prob: 0.5 }", "noise_param"),
    ("resize_param { resize_mode: FIT_SMALL_SIZE height: 8 width: 8 }", "FIT_SMALL_SIZE"),
    ("mean_file: \"m.binaryproto\"", "mean_file"),
])
def test_unsupported_options_are_refused_by_name(synth, tmp_path, transform, message):
    with pytest.raises(NetError, match=message):
        caffe.Net(net_file(tmp_path, synth / "train_lmdb", transform), caffe.TRAIN)


def test_missing_source(tmp_path):
    with pytest.raises(NetError, match="not found"):
        caffe.Net(net_file(tmp_path, tmp_path / "nothing_lmdb"), caffe.TRAIN)
