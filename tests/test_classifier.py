"""Net.forward_all / forward_backward_all and pycaffe_norm/classifier.py (pycaffe's caffe.Classifier)."""
from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format

import pycaffe_norm as caffe
from pycaffe_norm.classifier import Classifier
from pycaffe_norm.errors import PcnError, ShapeError
from pycaffe_norm.proto import caffe_pb2

DEPLOY = """
name: "tiny"
force_backward: true
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 3 dim: 3 dim: 4 dim: 4 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.3 }
                              bias_filler { type: "gaussian" std: 0.3 } } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
"""
BATCH = 3


def deploy_net() -> caffe.Net:
    return caffe.Net(text_format.Parse(DEPLOY, caffe_pb2.NetParameter()), caffe.TEST)


def one_by_one(net, x, top="prob"):
    """Each sample alone in row 0 of an otherwise zero batch: the reference forward_all must reproduce."""
    rows = []
    for sample in x:
        batch = np.zeros((BATCH,) + sample.shape, np.float32)
        batch[0] = sample
        rows.append(net.forward(data=batch, blobs=[top])[top][0].copy())
    return np.array(rows)


# --- forward_all / forward_backward_all ------------------------------------------------------------------
def test_forward_all_batches_pads_and_trims():
    net = deploy_net()
    x = np.random.RandomState(0).randn(7, 3, 4, 4).astype(np.float32)  # 7 = 3 + 3 + 1 padded
    out = net.forward_all(blobs=["ip"], data=x)
    assert set(out) == {"prob", "ip"} and out["prob"].shape == (7, 5) and out["ip"].shape == (7, 5)
    assert isinstance(out["prob"], np.ndarray)
    np.testing.assert_allclose(out["prob"], one_by_one(net, x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(out["ip"], one_by_one(net, x, "ip"), rtol=1e-6, atol=1e-6)
    # fewer samples than one batch, and an exact multiple
    np.testing.assert_allclose(net.forward_all(data=x[:2])["prob"], out["prob"][:2], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(net.forward_all(data=x[:6])["prob"], out["prob"][:6], rtol=1e-6, atol=1e-7)


def test_forward_all_errors():
    net = deploy_net()
    with pytest.raises(PcnError, match="no blob 'pixels'"):
        net.forward_all(pixels=np.zeros((2, 3, 4, 4)))
    with pytest.raises(ShapeError, match=r"\(3, 3, 4, 4\), the array given has shape \(3, 3, 5, 5\)"):
        net.forward_all(data=np.zeros((2, 3, 5, 5)))
    with pytest.raises(ShapeError, match="lengths .* must each agree"):
        net.forward_backward_all(data=np.zeros((5, 3, 4, 4)), prob=np.zeros((4, 5)))


def test_forward_backward_all_matches_per_sample_backward():
    net = deploy_net()
    rng = np.random.RandomState(1)
    x = rng.randn(5, 3, 4, 4).astype(np.float32)
    d = rng.randn(5, 5).astype(np.float32)
    blobs, diffs = net.forward_backward_all(blobs=["ip"], diffs=["ip"], data=x, prob=d)
    assert blobs["prob"].shape == (5, 5) and diffs["data"].shape == (5, 3, 4, 4) and diffs["ip"].shape == (5, 5)
    np.testing.assert_allclose(blobs["prob"], net.forward_all(data=x)["prob"], rtol=1e-6, atol=1e-7)
    for i in range(5):
        bx = np.zeros((BATCH, 3, 4, 4), np.float32)
        bd = np.zeros((BATCH, 5), np.float32)
        bx[0], bd[0] = x[i], d[i]
        net.forward(data=bx)
        ref = net.backward(diffs=["ip"], prob=bd)
        np.testing.assert_allclose(diffs["data"][i], ref["data"][0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(diffs["ip"][i], ref["ip"][0], rtol=1e-5, atol=1e-6)
    with pytest.raises(PcnError, match="neither inputs"):
        net.forward_backward_all(data=x, ip=d)


def test_batched_runs_refuse_a_blob_without_a_batch_axis():
    text = DEPLOY.replace('type: "Softmax" bottom: "ip"', 'type: "SoftmaxWithLoss" bottom: "ip" bottom: "label"')
    text = text.replace('top: "data" input_param { shape { dim: 3 dim: 3 dim: 4 dim: 4 } }',
                        'top: "data" top: "label" '
                        'input_param { shape { dim: 3 dim: 3 dim: 4 dim: 4 } shape { dim: 3 } }')
    net = caffe.Net(text_format.Parse(text, caffe_pb2.NetParameter()), caffe.TEST)
    assert net.blobs["prob"].shape == ()  # a loss: one value per batch, no batch axis
    with pytest.raises(ShapeError, match=r"blob 'prob' has shape \(\) with no batch axis"):
        net.forward_backward_all(data=np.zeros((5, 3, 4, 4)), label=np.zeros(5), prob=np.ones(5))


# --- Classifier -------------------------------------------------------------------------------------------
@pytest.fixture()
def model(tmp_path):
    proto = tmp_path / "deploy.prototxt"
    proto.write_text(DEPLOY)
    weights = tmp_path / "tiny.caffemodel"
    net = caffe.Net(str(proto), caffe.TEST)
    net.save(str(weights))
    return str(proto), str(weights), net


def reference_input(crop):
    """Classifier(mean=MEAN, raw_scale=255, channel_swap=(2, 1, 0)) preprocessing written out by hand."""
    return crop.transpose(2, 0, 1)[::-1] * 255.0 - MEAN[:, None, None]


MEAN = np.array([100.0, 110.0, 120.0])


def test_classifier_loads_weights_and_oversamples(model):
    proto, weights, net = model
    clf = Classifier(proto, weights, image_dims=(6, 6), mean=MEAN, raw_scale=255.0, channel_swap=(2, 1, 0))
    np.testing.assert_array_equal(clf.params["ip"][0].data, net.params["ip"][0].data)
    images = [np.random.RandomState(s).rand(6, 6, 3).astype(np.float32) for s in (2, 3)]
    pred = clf.predict(images)
    assert pred.shape == (2, 5)
    np.testing.assert_allclose(pred.sum(1), 1.0, rtol=1e-5)
    for im, p in zip(images, pred):
        starts = [(0, 0), (0, 2), (2, 0), (2, 2), (1, 1)]
        crops = [im[y:y + 4, x:x + 4] for y, x in starts]
        crops += [c[:, ::-1] for c in crops]
        probs = one_by_one(net, np.array([reference_input(c) for c in crops]))
        np.testing.assert_allclose(p, probs.mean(0), rtol=1e-5, atol=1e-6)


def test_classifier_centre_crop_and_resize(model):
    proto, weights, net = model
    clf = Classifier(proto, weights, image_dims=(6, 6), mean=MEAN, raw_scale=255.0, channel_swap=(2, 1, 0))
    im = np.random.RandomState(4).rand(9, 12, 3).astype(np.float32)
    pred = clf.predict([im], oversample=False)
    resized = caffe.io.resize_image(im, (6, 6))
    np.testing.assert_allclose(pred, one_by_one(net, reference_input(resized[1:5, 1:5])[None]), rtol=1e-5,
                               atol=1e-6)
    # without image_dims the whole image is resized to the input: centre crop = everything
    whole = Classifier(proto, weights, mean=MEAN, raw_scale=255.0, channel_swap=(2, 1, 0))
    np.testing.assert_array_equal(whole.image_dims, [4, 4])
    np.testing.assert_allclose(whole.predict([im], oversample=False),
                               one_by_one(net, reference_input(caffe.io.resize_image(im, (4, 4)))[None]),
                               rtol=1e-5, atol=1e-6)
