"""The LeNet normalization variants in models/: each trains (the loss falls in a few dozen iterations), and a
BatchNorm net trained and snapshotted by the solver gives, in TEST, the output computed by hand from the
statistics blobs of the saved .caffemodel."""
from __future__ import annotations

import pathlib

import h5py
import numpy as np
import pytest
from google.protobuf import text_format

import pycaffe_norm as caffe
from pycaffe_norm.proto import caffe_pb2
from pycaffe_norm.solvers import get_solver, read_solver_param

ROOT = pathlib.Path(__file__).resolve().parent.parent

VARIANTS = ["lenet_bn", "lenet_lrn_across", "lenet_lrn_within", "lenet_mvn", "lenet_normalization1", "lenet_grn",
            "lenet_layernorm", "lenet_groupnorm", "lenet_instancenorm", "lenet_rmsnorm", "lenet_convnext_grn",
            "lenet_batchrenorm"]
# The layer types each variant must contain: the test fails if a model stops exercising its layer.
LAYER_TYPES = {
    "lenet_bn": {"BatchNorm", "Scale"},
    "lenet_lrn_across": {"LRN"},
    "lenet_lrn_within": {"LRN"},
    "lenet_mvn": {"MVN"},
    "lenet_normalization1": {"Normalization1"},
    "lenet_grn": {"GRN"},
    "lenet_layernorm": {"LayerNorm"},
    "lenet_groupnorm": {"GroupNorm"},
    "lenet_instancenorm": {"InstanceNorm"},
    "lenet_rmsnorm": {"RMSNorm"},
    "lenet_convnext_grn": {"ConvNeXtGRN"},
    "lenet_batchrenorm": {"BatchNorm", "Scale"},
}
ITERS = 40


def _solver_path(variant: str) -> str:
    return "models/%s/%s_solver.prototxt" % (variant, variant)


def _short_solver(variant: str, tmp_path: pathlib.Path, iters: int) -> caffe_pb2.SolverParameter:
    """The committed solver, read from the repository root, cut to ``iters`` iterations without tests/snapshots."""
    param = read_solver_param(_solver_path(variant))
    param.max_iter = iters
    param.test_interval = 0
    del param.test_iter[:]
    param.display = 0
    param.average_loss = 1
    param.snapshot = 0
    param.snapshot_after_train = False
    param.snapshot_prefix = str(tmp_path / variant)
    return param


@pytest.fixture
def at_root(monkeypatch):
    """Caffe reads the solver's net and the data sources relative to the working directory."""
    monkeypatch.chdir(ROOT)


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_solver_matches_lenet(variant, at_root):
    lenet = read_solver_param("models/lenet/lenet_solver.prototxt")
    param = read_solver_param(_solver_path(variant))
    for field in ("test_iter", "test_interval", "base_lr", "momentum", "weight_decay", "lr_policy", "gamma",
                  "power", "max_iter", "random_seed", "solver_mode"):
        assert getattr(param, field) == getattr(lenet, field), field
    assert param.net == "models/%s/%s_train_test.prototxt" % (variant, variant)
    assert param.snapshot_prefix.startswith("snapshots/%s/" % variant)   # git-ignored
    net = caffe_pb2.NetParameter()
    text_format.Parse((ROOT / param.net).read_text(), net)
    types = {layer.type for layer in net.layer}
    assert LAYER_TYPES[variant] <= types
    # These layers read their own top in backward (as in Caffe): a later in-place layer must not overwrite it.
    for i, layer in enumerate(net.layer):
        if layer.type in ("LRN", "MVN", "Normalization1", "GRN"):
            for later in net.layer[i + 1:]:
                assert not (layer.top[0] in later.bottom and layer.top[0] in later.top), (layer.name, later.name)
    if variant in ("lenet_bn", "lenet_batchrenorm"):
        for layer in net.layer:
            if layer.type == "BatchNorm":
                assert not layer.batch_norm_param.HasField("use_global_stats")
                assert layer.batch_norm_param.renorm == (variant == "lenet_batchrenorm")
                assert [p.lr_mult for p in layer.param] == [0, 0, 0]
            if layer.type == "Scale":
                assert layer.scale_param.bias_term


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_loss_falls(variant, tmp_path, at_root):
    solver = get_solver(_short_solver(variant, tmp_path, ITERS))
    losses = []
    for _ in range(ITERS):
        solver.step(1)
        losses.append(solver.smoothed_loss)      # average_loss 1: this iteration's loss
    assert np.all(np.isfinite(losses))
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert first > 2.0                           # starts near chance, ln(10) = 2.30
    assert last < first - 0.3 and last < 0.85 * first, (first, last)


# --- BatchNorm: snapshot, reload in TEST, compare with the statistics by hand --------------------------------

def _rewire(net: caffe_pb2.NetParameter, batch: int) -> caffe_pb2.NetParameter:
    """lenet_bn with an Input layer instead of the HDF5 layers and BatchNorm / Scale out of place, so that the
    BatchNorm input (conv*) and output (conv*_bn) are both visible."""
    out = caffe_pb2.NetParameter()
    out.name = net.name
    data = out.layer.add()
    text_format.Parse('name: "input" type: "Input" top: "data" top: "label" '
                      'input_param { shape { dim: %d dim: 1 dim: 28 dim: 28 } shape { dim: %d } }'
                      % (batch, batch), data)
    current = {}        # blob name in lenet_bn -> the blob that now holds its latest value
    for layer in net.layer:
        if layer.type == "HDF5Data":
            continue
        new = out.layer.add()
        new.CopyFrom(layer)
        for i, b in enumerate(new.bottom):
            new.bottom[i] = current.get(b, b)
        if layer.type in ("BatchNorm", "Scale"):
            new.top[0] = layer.top[0] + ("_bn" if layer.type == "BatchNorm" else "_scaled")
            current[layer.top[0]] = new.top[0]
    return out


def _blob_array(blob: caffe_pb2.BlobProto) -> np.ndarray:
    return np.asarray(blob.data, dtype=np.float64)


def test_batchnorm_snapshot_test_phase_uses_saved_statistics(tmp_path, at_root):
    param = _short_solver("lenet_bn", tmp_path, 30)
    solver = get_solver(param)
    solver.solve()
    solver.snapshot()
    model = tmp_path / "lenet_bn_iter_30.caffemodel"
    assert model.is_file()

    saved = caffe_pb2.NetParameter()
    saved.ParseFromString(model.read_bytes())
    stats = {layer.name: [_blob_array(b) for b in layer.blobs] for layer in saved.layer if layer.type == "BatchNorm"}
    assert sorted(stats) == ["bn_conv1", "bn_conv2"]

    spec = caffe_pb2.NetParameter()
    text_format.Parse((ROOT / param.net).read_text(), spec)
    batch = 50
    spec = _rewire(spec, batch)
    with h5py.File(ROOT / "data" / "mnist" / "mnist_test.h5", "r") as f:
        images, labels = f["data"][:batch], f["label"][:batch]
    out = {}
    for phase in (caffe_pb2.TEST, caffe_pb2.TRAIN):
        net = caffe.Net(spec, phase)
        net.copy_from(str(model))
        net.forward(data=images, label=labels)
        out[phase] = {name: net.blobs[name].data.astype(np.float64).copy()
                      for name in ("conv1", "conv1_bn", "conv2", "conv2_bn")}
        # Forward passes never write the saved statistics back: TRAIN updates only this net's copy.
        if phase == caffe_pb2.TEST:
            for name, blobs in stats.items():
                for got, want in zip(net.params[name], blobs):
                    np.testing.assert_array_equal(got.data.ravel(), want.astype(np.float32))

    eps = 1e-5
    for conv, bn in (("conv1", "bn_conv1"), ("conv2", "bn_conv2")):
        sum_mean, sum_var, s = stats[bn]
        assert s[0] > 1 and np.abs(sum_mean).max() > 0 and sum_var.min() > 0    # 30 decayed updates
        mean, var = sum_mean / s[0], sum_var / s[0]
        x = out[caffe_pb2.TEST][conv]
        by_hand = (x - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + eps)
        np.testing.assert_allclose(out[caffe_pb2.TEST][conv + "_bn"], by_hand, rtol=1e-4, atol=1e-4)

        # TRAIN normalises with this batch's own statistics: per channel mean 0 and (biased) variance 1 ...
        x_train, y_train = out[caffe_pb2.TRAIN][conv], out[caffe_pb2.TRAIN][conv + "_bn"]
        if conv == "conv1":
            np.testing.assert_array_equal(x_train, x)          # the same input to the first BatchNorm
        np.testing.assert_allclose(y_train.mean(axis=(0, 2, 3)), 0, atol=1e-4)
        np.testing.assert_allclose(y_train.var(axis=(0, 2, 3)), 1, atol=2e-3)
        batch_mean = x_train.mean(axis=(0, 2, 3))
        batch_var = x_train.var(axis=(0, 2, 3))
        want = (x_train - batch_mean[None, :, None, None]) / np.sqrt(batch_var[None, :, None, None] + eps)
        np.testing.assert_allclose(y_train, want, rtol=1e-4, atol=1e-4)
        # ... so TRAIN and TEST outputs differ.
        assert np.abs(y_train - out[caffe_pb2.TEST][conv + "_bn"]).max() > 1e-2


# --- CIFAR-10-quick variants: Input layers, fed here with a small synthetic batch ------------------------------

CIFAR_VARIANTS = {
    "cifar10_quick_layernorm": "LayerNorm",
    "cifar10_quick_groupnorm": "GroupNorm",
    "cifar10_quick_instancenorm": "InstanceNorm",
    "cifar10_quick_rmsnorm": "RMSNorm",
    "cifar10_quick_convnext_grn": "ConvNeXtGRN",
    "cifar10_quick_batchrenorm": "BatchNorm",
}


@pytest.mark.parametrize("variant,layer_type", sorted(CIFAR_VARIANTS.items()))
def test_cifar10_quick_variant_trains(variant, layer_type, at_root):
    """The variant differs from models/cifar10_quick only by its normalization layers, and three SGD steps on a
    batch of 8 give finite losses and move every learned blob of those layers."""
    base = caffe_pb2.NetParameter()
    text_format.Parse((ROOT / "models/cifar10_quick/cifar10_quick_train_test.prototxt").read_text(), base)
    param = read_solver_param("models/%s/%s_solver.prototxt" % (variant, variant))
    assert param.net == "models/%s/%s_train_test.prototxt" % (variant, variant)
    net = caffe_pb2.NetParameter()
    text_format.Parse((ROOT / param.net).read_text(), net)
    added = [lp for lp in net.layer if lp.type in (layer_type, "Scale")]
    assert len([lp for lp in added if lp.type == layer_type]) == 3
    assert [lp.name for lp in net.layer if lp not in added] == [lp.name for lp in base.layer]
    for lp in net.layer:
        if lp.type == "Input":
            lp.input_param.shape[0].dim[0] = 8
    param.ClearField("net")
    param.net_param.CopyFrom(net)
    param.display = 0
    solver = get_solver(param)
    rng = np.random.RandomState(0)
    labels = np.arange(8) % 10
    images = rng.randn(8, 3, 32, 32).astype(np.float32) * 10 + labels[:, None, None, None] * 5
    before = {lp.name: [b.data.copy() for b in solver.net.params[lp.name]] for lp in added if lp.name in
              solver.net.params}
    for _ in range(3):
        solver.net.blobs["data"].data[...] = images
        solver.net.blobs["label"].data[...] = labels
        solver.step(1)
        assert np.isfinite(float(solver.net.blobs["loss"].data))
    for name, old in before.items():
        for i, (b, o) in enumerate(zip(solver.net.params[name], old)):
            assert np.abs(b.data - o).max() > 0, (name, i)


def test_lenet_batchrenorm_with_renormalization_from_the_start(tmp_path, at_root):
    """lenet_batchrenorm's ramp starts at iteration 100; with r_max 3 and d_max 5 from iteration 0 the loss falls
    as well, r and d leave 1 and 0, and each BatchNorm's counter blob counts the iterations."""
    param = _short_solver("lenet_batchrenorm", tmp_path, ITERS)
    net = caffe_pb2.NetParameter()
    text_format.Parse((ROOT / param.net).read_text(), net)
    for layer in net.layer:
        if layer.type == "BatchNorm":
            p = layer.batch_norm_param
            p.renorm_ramp_start = p.r_max_ramp_end = p.d_max_ramp_end = 0
    param.ClearField("net")
    param.net_param.CopyFrom(net)
    solver = get_solver(param)
    losses, moved = [], 0
    for _ in range(ITERS):
        solver.step(1)
        losses.append(solver.smoothed_loss)
        for layer in solver.net.layers:
            if layer.type == "BatchNorm" and layer._rd is not None:
                moved += int(np.abs(layer._rd[0] - 1).max() > 1e-3 or np.abs(layer._rd[1]).max() > 1e-3)
    assert np.all(np.isfinite(losses)) and np.mean(losses[-5:]) < 0.85 * np.mean(losses[:5])
    assert moved > ITERS // 2
    counters = [layer.blobs[-1].data[0] for layer in solver.net.layers if layer.type == "BatchNorm"]
    assert counters == [ITERS, ITERS]
