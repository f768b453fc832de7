"""pycaffe_norm/io/transform.py: Transformer, load_image, resize_image, oversample (pycaffe's caffe.io)."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from pycaffe_norm.errors import PcnError
from pycaffe_norm.io.transform import Transformer, TransformError, load_image, oversample, resize_image

SHAPE = (1, 3, 4, 5)  # net input N x K x H x W


def caffenet_style() -> Transformer:
    t = Transformer({"data": SHAPE})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255.0)
    t.set_mean("data", np.array([10.0, 20.0, 30.0]))
    t.set_input_scale("data", 0.5)
    return t


# --- Transformer ------------------------------------------------------------------------------------------
def test_preprocess_applies_pycaffe_steps_in_order():
    im = np.random.RandomState(0).rand(4, 5, 3).astype(np.float32)
    before = im.copy()
    out = caffenet_style().preprocess("data", im)
    expected = (im.transpose(2, 0, 1)[::-1] * 255.0 - np.array([10.0, 20.0, 30.0])[:, None, None]) * 0.5
    assert out.dtype == np.float32 and out.shape == (3, 4, 5)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-4)
    np.testing.assert_array_equal(im, before)  # the caller's image is never scaled in place


def test_preprocess_deprocess_round_trip():
    t = caffenet_style()
    im = np.random.RandomState(1).rand(4, 5, 3).astype(np.float32)
    back = t.deprocess("data", t.preprocess("data", im))
    assert back.shape == (4, 5, 3)
    np.testing.assert_allclose(back, im, atol=1e-6)
    # a batch of one (net.blobs['data'].data) is accepted too
    np.testing.assert_allclose(t.deprocess("data", t.preprocess("data", im)[None]), im, atol=1e-6)


def test_channel_swap_alone_reverses_channels():
    t = Transformer({"data": SHAPE})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 0, 1))
    im = np.stack([np.full((4, 5), c, np.float32) for c in (1.0, 2.0, 3.0)], axis=2)
    out = t.preprocess("data", im)
    assert [out[k, 0, 0] for k in range(3)] == [3.0, 1.0, 2.0]  # new channel k is old channel order[k]
    np.testing.assert_array_equal(t.deprocess("data", out), im)


def test_mean_image_and_grayscale_mean():
    t = Transformer({"data": SHAPE})
    t.set_transpose("data", (2, 0, 1))
    mean = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    t.set_mean("data", mean)
    im = np.ones((4, 5, 3), np.float32)
    np.testing.assert_array_equal(t.preprocess("data", im), 1.0 - mean)

    g = Transformer({"data": (2, 1, 4, 5)})
    g.set_transpose("data", (2, 0, 1))
    g.set_mean("data", mean[0])  # (H, W) is a mean for a one-channel input
    np.testing.assert_array_equal(g.preprocess("data", np.ones((4, 5, 1))), (1.0 - mean[:1]))
    assert g.deprocess("data", g.preprocess("data", np.ones((4, 5, 1)))).shape == (4, 5, 1)


def test_preprocess_resizes_to_the_input_size():
    t = Transformer({"data": SHAPE})
    t.set_transpose("data", (2, 0, 1))
    im = np.random.RandomState(2).rand(8, 10, 3).astype(np.float32)  # preprocess casts first, as pycaffe
    np.testing.assert_array_equal(t.preprocess("data", im), resize_image(im, (4, 5)).transpose(2, 0, 1))


def test_setting_errors_are_clear():
    t = Transformer({"data": SHAPE})
    with pytest.raises(TransformError, match="'label' is not one of the Transformer's inputs"):
        t.set_raw_scale("label", 255)
    with pytest.raises(TransformError, match="needs 3 values .* got 4"):
        t.set_mean("data", np.zeros(4))
    with pytest.raises(TransformError, match=r"mean image has shape \(3, 8, 8\).*input is \(3, 4, 5\)"
                                             r".*mean\.mean\(1\)\.mean\(1\)"):
        t.set_mean("data", np.zeros((3, 8, 8)))
    with pytest.raises(ValueError, match="must be \\(K,\\)"):  # a ValueError, as pycaffe raises
        t.set_mean("data", np.zeros((1, 3, 4, 5)))
    with pytest.raises(TransformError, match="3 channels, the order \\(1, 0\\) has 2"):
        t.set_channel_swap("data", (1, 0))
    with pytest.raises(TransformError, match="permutation"):
        t.set_transpose("data", (2, 0, 0))


# --- resize_image -----------------------------------------------------------------------------------------
def test_bilinear_upsampling_matches_hand_computed_values():
    im = np.array([[0.0, 1.0], [2.0, 3.0]])[:, :, None]
    # half-pixel centres: output i samples input (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25, clamped to [0, 1]
    r = np.array([0.0, 0.25, 0.75, 1.0])
    out = resize_image(im, (4, 4))
    assert out.shape == (4, 4, 1) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, :, 0], 2 * r[:, None] + r[None, :], rtol=0, atol=1e-7)


def test_bilinear_downsampling_and_any_channel_count():
    row = np.array([0.0, 10.0, 20.0])
    im = row[None, :, None] * np.arange(1, 6)[None, None, :]  # 1 x 3 x 5 channels
    out = resize_image(im, (1, 2))  # samples input x = 0.25 and 1.75
    np.testing.assert_allclose(out[0], np.outer([2.5, 17.5], np.arange(1, 6)), rtol=1e-6)


def test_nearest_and_identity():
    im = np.arange(4.0)[None, :, None]
    np.testing.assert_array_equal(resize_image(im, (1, 2), interp_order=0)[0, :, 0], [1.0, 3.0])
    np.testing.assert_array_equal(resize_image(im[:, :2], (1, 4), interp_order=0)[0, :, 0], [0, 0, 1, 1])
    x = np.random.RandomState(3).rand(3, 4, 7)
    np.testing.assert_array_equal(resize_image(x, (3, 4)), x.astype(np.float32))
    with pytest.raises(TransformError, match="interp_order"):
        resize_image(x, (2, 2), interp_order=3)


# --- oversample -------------------------------------------------------------------------------------------
def test_oversample_crop_positions_and_mirrors():
    y, x, k = np.meshgrid(np.arange(5), np.arange(6), np.arange(2), indexing="ij")
    im = (100 * y + x + 1000 * k).astype(np.float32)  # each value names its pixel
    crops = oversample([im, im + 10000], (3, 4))
    assert crops.shape == (20, 3, 4, 2) and crops.dtype == np.float32
    # corners TL, TR, BL, BR, then the centre at ((5 - 3) // 2, (6 - 4) // 2)
    starts = [(0, 0), (0, 2), (2, 0), (2, 2), (1, 1)]
    for i, (y0, x0) in enumerate(starts):
        np.testing.assert_array_equal(crops[i], im[y0:y0 + 3, x0:x0 + 4])
        np.testing.assert_array_equal(crops[5 + i], im[y0:y0 + 3, x0:x0 + 4][:, ::-1])
        np.testing.assert_array_equal(crops[10 + i], im[y0:y0 + 3, x0:x0 + 4] + 10000)
    with pytest.raises(TransformError, match="does not fit"):
        oversample([im], (6, 4))


# --- load_image -------------------------------------------------------------------------------------------
def test_load_image_rgb_gray_and_alpha(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rgb = np.array([[[0, 51, 255], [102, 0, 0], [1, 2, 3]],
                    [[255, 255, 255], [0, 0, 0], [200, 100, 50]]], np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    img = load_image(str(tmp_path / "rgb.png"))
    assert img.dtype == np.float32 and img.shape == (2, 3, 3)
    np.testing.assert_array_equal(img, (rgb / 255.0).astype(np.float32))
    gray_of_rgb = load_image(tmp_path / "rgb.png", color=False)
    assert gray_of_rgb.shape == (2, 3, 1)
    np.testing.assert_allclose(gray_of_rgb[..., 0], rgb / 255.0 @ [0.2125, 0.7154, 0.0721], rtol=1e-6)

    gray = np.array([[0, 128], [255, 64]], np.uint8)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    tiled = load_image(str(tmp_path / "gray.png"))
    assert tiled.shape == (2, 2, 3)
    for c in range(3):
        np.testing.assert_array_equal(tiled[..., c], (gray / 255.0).astype(np.float32))
    np.testing.assert_array_equal(load_image(str(tmp_path / "gray.png"), color=False)[..., 0], tiled[..., 0])

    rgba = np.concatenate([rgb, np.full((2, 3, 1), 7, np.uint8)], axis=2)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(load_image(str(tmp_path / "rgba.png")), img)


def test_load_image_16_bit(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    Image.fromarray(np.array([[0, 65535]], np.uint16)).save(tmp_path / "g16.png")
    np.testing.assert_array_equal(load_image(str(tmp_path / "g16.png"), color=False)[0, :, 0], [0.0, 1.0])


def test_load_image_errors(tmp_path, monkeypatch):
    pytest.importorskip("PIL.Image")
    missing = str(tmp_path / "nope.jpg")
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        load_image(missing)
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(PcnError, match="text.png"):
        load_image(str(tmp_path / "text.png"))
    Image = pytest.importorskip("PIL.Image")
    Image.fromarray(np.random.RandomState(0).randint(0, 256, (32, 32, 3)).astype(np.uint8)).save(tmp_path / "t.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "t.png").read_bytes()[:300])  # a truncated download
    with pytest.raises(PcnError, match="cut.png.*truncated"):
        load_image(str(tmp_path / "cut.png"))
    monkeypatch.setitem(sys.modules, "PIL", None)  # as if Pillow were not installed
    with pytest.raises(ImportError, match=r"pip install pycaffe_norm\[image\]"):
        load_image(missing)
