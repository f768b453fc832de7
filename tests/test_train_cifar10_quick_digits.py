"""tools/train_cifar10_quick_digits.py (CIFAR-10-quick variants fed the bundled digits padded to 3x32x32) for two
iterations on one variant, and the CIFAR-10-quick tables of tools/plot_normalization_curves.py from its curve."""
from __future__ import annotations

import csv
import json
import pathlib

import numpy as np

from tests.support import load_tool

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_digits_padded_to_cifar_shape():
    tool = load_tool("train_cifar10_quick_digits")
    images, labels, mean = tool.load_digits(str(ROOT / "data/mnist/mnist_test.h5"))
    assert images.shape == (1000, 3, 32, 32) and images.dtype == np.float32 and labels.shape == (1000,)
    assert mean.shape == (1, 32, 32)
    np.testing.assert_array_equal(images[:, 0], images[:, 1])          # the grey channel three times
    np.testing.assert_array_equal(images[:, 0], images[:, 2])
    assert np.all(images[:, :, :2] == 0) and np.all(images[:, :, :, 30:] == 0)     # zero padding stays 0
    raw = images[:, 0] + mean[0]                                        # the raw grey levels 0..255
    np.testing.assert_array_equal(raw, np.round(raw))
    assert raw.min() == 0 and raw.max() == 255
    np.testing.assert_allclose(images.mean(axis=0), 0, atol=1e-3)       # minus this set's own mean image


def test_tool_trains_one_variant_and_writes_its_curve(tmp_path, capsys):
    tool = load_tool("train_cifar10_quick_digits")
    out = tmp_path / "curves"
    assert tool.main(["--models", "cifar10_quick_layernorm", "--iters", "2", "--test-interval", "1",
                      "--test-digits", "100", "--out", str(out)]) == 0
    info = json.loads((out / "cifar10_quick_layernorm.json").read_text())
    assert info["complete"] and info["iterations"] == 2 and info["batch"] == 100 and info["test_digits"] == 100
    assert "not CIFAR-10" in info["data"]
    assert [t[0] for t in info["test"]] == [0, 1, 2]
    assert all(0 <= t[1] <= 1 and np.isfinite(t[2]) for t in info["test"])
    assert info["wall_s"] > 0 and info["cpu_s"] > 0
    with open(out / "cifar10_quick_layernorm.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["iteration", "test_accuracy", "test_loss"] and len(rows) == 4
    assert "cifar10_quick_layernorm" in capsys.readouterr().out

    plot = load_tool("plot_normalization_curves")
    curves = plot.load_cifar_digits(str(out), plot.CIFAR_MODELS)
    assert list(curves) == ["cifar10_quick_layernorm"]
    table = plot.table_cifar_digits(curves, columns=(1,))
    assert "`cifar10_quick_layernorm`" in table and "(2)" in table
    full = plot.table_cifar_digits_all(curves).splitlines()
    assert full[0] == "| iteration | layernorm |" and len(full) == 2 + 3
