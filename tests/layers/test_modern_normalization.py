"""LayerNorm, GroupNorm, InstanceNorm, RMSNorm, ConvNeXtGRN and BatchNorm's Batch Renormalization against
PyTorch's CPU implementation (float64 within 1e-5 relative, float32 within 1e-4), on shapes that include N = 1
and 1x1 spatial; exhaustive float64 gradient checks; in-place use, parameters and errors.

The PyTorch reference is computed live when torch is importable and read from tests/reference_modern_norm/
otherwise (tools/make_modern_norm_reference.py wrote those files from PyTorch; see their README).
"""
from __future__ import annotations

import pathlib

import numpy as np
import pytest
from google.protobuf import text_format

import pycaffe_norm as caffe
from pycaffe_norm.errors import NetError, ShapeError
from pycaffe_norm.layers import create_layer
from pycaffe_norm.layers.normalization import renorm_limits
from pycaffe_norm.proto import caffe_pb2
from tests.gradient_check import GradientChecker, make_blob
from tests.support import load_tool

REF = pathlib.Path(__file__).resolve().parents[1] / "reference_modern_norm"
TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST
TOOL = load_tool("make_modern_norm_reference")
CASES = sorted(TOOL.CASES)

try:
    import torch  # noqa: F401
    HAVE_TORCH = True
except ImportError:     # CI: the stored arrays stand in for PyTorch
    HAVE_TORCH = False


try:
    import numba  # noqa: F401
    HAVE_NUMBA = True
except ImportError:
    HAVE_NUMBA = False


@pytest.fixture(autouse=True, params=["numpy", "numba"])
def row_kernels(request, monkeypatch):
    """Every test runs on the NumPy passes and on the compiled Numba kernels (where Numba is installed)."""
    from pycaffe_norm.layers import numba_kernels

    if request.param == "numba" and not HAVE_NUMBA:
        pytest.skip("Numba is not installed (the fast extra)")
    monkeypatch.setattr(numba_kernels, "ENABLED", request.param == "numba")
    return request.param


def layer_of(text: str, phase: int = TRAIN):
    p = caffe_pb2.LayerParameter()
    text_format.Parse('name: "l" ' + text, p)
    return create_layer(p, phase)


def stored(name: str) -> dict:
    with np.load(REF / ("%s.npz" % name), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def case_data(name: str):
    """(inputs, reference): from PyTorch when importable, else the stored arrays."""
    arrays = stored(name)
    inputs = {k: v for k, v in arrays.items() if not k.startswith("ref_")}
    if HAVE_TORCH:
        return inputs, TOOL.torch_reference(name, inputs)
    return inputs, {k[4:]: v for k, v in arrays.items() if k.startswith("ref_")}


def run_case(name: str, inputs: dict, dtype, in_place: bool = False):
    text, shape = TOOL.CASES[name]
    layer = layer_of(text, TEST if "use_global_stats: true" in text else TRAIN)
    bottom = [make_blob(inputs["x"], dtype=dtype)]
    top = bottom if in_place else [caffe.Blob((), dtype=dtype)]
    layer.initialize(bottom, top)
    nparam = len([k for k in inputs if k.startswith("param")])
    assert len(layer.blobs) == nparam, (name, [b.shape for b in layer.blobs])
    for i, blob in enumerate(layer.blobs):
        blob.data[...] = inputs["param%d" % i].reshape(blob.shape)
    layer.forward(bottom, top)
    y = np.array(top[0].data)
    top[0].diff[...] = inputs["dy"]
    layer.backward(top, [True], bottom)
    return layer, y, np.array(bottom[0].diff)


def assert_close(got, want, rtol, what):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    scale = max(float(np.abs(want).max()), 1e-30)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale, err_msg=what)


def check_against_reference(name: str, dtype, rtol: float, in_place: bool = False) -> None:
    inputs, ref = case_data(name)
    layer, y, dx = run_case(name, inputs, dtype, in_place)
    assert y.dtype == dtype and dx.dtype == dtype
    assert_close(y, ref["y"], rtol, name + " y")
    assert_close(dx, ref["dx"], rtol, name + " dx")
    for i, blob in enumerate(layer.blobs):
        if "dparam%d" % i in ref:
            assert_close(blob.diff, ref["dparam%d" % i].reshape(blob.shape), rtol, "%s dparam%d" % (name, i))
        elif "stat%d" % i in ref:
            assert_close(blob.data, ref["stat%d" % i].reshape(blob.shape), rtol, "%s stat%d" % (name, i))
        else:
            assert not layer.param_propagate_down[i] or blob.count == 0, (name, i)


@pytest.mark.parametrize("name", CASES)
def test_matches_pytorch_float64(name):
    check_against_reference(name, np.float64, 1e-5)


@pytest.mark.parametrize("name", CASES)
def test_matches_pytorch_float32(name):
    check_against_reference(name, np.float32, 1e-4)


@pytest.mark.parametrize("name", CASES)
def test_in_place_matches_pytorch(name):
    check_against_reference(name, np.float64, 1e-5, in_place=True)


@pytest.mark.skipif(not HAVE_TORCH, reason="the stored arrays are checked against torch only where it is installed")
@pytest.mark.parametrize("name", CASES)
def test_stored_arrays_are_pytorch_output(name):
    arrays = stored(name)
    inputs = {k: v for k, v in arrays.items() if not k.startswith("ref_")}
    for k, v in TOOL.torch_reference(name, inputs).items():
        np.testing.assert_allclose(arrays["ref_" + k], v, rtol=1e-12, atol=1e-14, err_msg=k)


def test_every_case_is_stored_and_shapes_cover_n1_and_1x1():
    assert sorted(p.stem for p in REF.glob("*.npz")) == CASES
    kinds = {}
    for name, (text, shape) in TOOL.CASES.items():
        kinds.setdefault(text.split('"')[1], []).append(shape)
    assert set(kinds) == {"LayerNorm", "GroupNorm", "InstanceNorm", "RMSNorm", "ConvNeXtGRN", "BatchNorm"}
    for kind, shapes in kinds.items():
        assert any(s[0] == 1 for s in shapes), kind
        assert any(len(s) == 4 and s[2:] == (1, 1) for s in shapes), kind


# --------------------------------------------------------------------------------------------------------
# exhaustive float64 gradient checks
# --------------------------------------------------------------------------------------------------------
GRAD_CASES = [
    ('type: "LayerNorm"', (2, 3, 2, 3)),
    ('type: "LayerNorm" layer_norm_param { axis: 1 elementwise_affine: true epsilon: 1e-5 }', (2, 3, 2, 2)),
    ('type: "LayerNorm" layer_norm_param { axis: -1 elementwise_affine: true bias_term: false }', (1, 3, 5)),
    ('type: "GroupNorm" group_norm_param { num_groups: 2 }', (2, 4, 2, 3)),
    ('type: "GroupNorm" group_norm_param { num_groups: 4 affine: false }', (1, 4, 3, 2)),
    ('type: "InstanceNorm" instance_norm_param { affine: true }', (2, 3, 2, 3)),
    ('type: "InstanceNorm" instance_norm_param { track_running_stats: true }', (2, 3, 3, 2)),
    ('type: "InstanceNorm" instance_norm_param { affine: true track_running_stats: true use_global_stats: true }',
     (2, 3, 2, 2)),
    ('type: "RMSNorm"', (2, 3, 6)),
    ('type: "RMSNorm" rms_norm_param { axis: 1 enable_weights: false epsilon: 1e-6 }', (2, 3, 2, 2)),
    ('type: "ConvNeXtGRN" convnext_grn_param { gamma_filler { type: "uniform" min: -1 max: 1 } '
     'beta_filler { type: "uniform" min: -1 max: 1 } }', (2, 4, 2, 3)),
    ('type: "ConvNeXtGRN"', (1, 3, 1, 1)),
]


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("text,shape", GRAD_CASES)
def test_gradient_exhaustive(text, shape, in_place):
    layer = layer_of(text)
    x = np.random.RandomState(len(text)).randn(*shape) * 1.3 + 0.3
    bottom = [make_blob(x)]
    top = bottom if in_place else [make_blob(np.zeros(0))]
    layer.initialize(bottom, top)
    for blob in layer.blobs[2 if "use_global_stats" in text else 0:]:    # away from the fillers' constants
        blob.data[...] = np.random.RandomState(blob.count).uniform(0.5, 1.5, blob.shape)
    n = GradientChecker().check(layer, bottom, top, already_set_up=True)
    assert n >= x.size


class _FrozenStatistics:
    """Wraps a BatchNorm layer so that every forward starts from the same statistics and counter (the gradient
    checker runs forward once per perturbation; renorm's output depends on the running statistics)."""

    def __init__(self, layer):
        self.layer = layer
        self.saved = [b.data.copy() for b in layer.blobs[:3]] + [layer.blobs[-1].data.copy()]

    def __getattr__(self, name):
        return getattr(self.layer, name)

    def forward(self, bottom, top):
        for blob, data in zip(self.layer.blobs[:3] + [self.layer.blobs[-1]], self.saved):
            blob.data[...] = data
        self.layer.forward(bottom, top)


@pytest.mark.parametrize("scale_bias", [False, True])
def test_batch_renorm_gradient_exhaustive_where_r_and_d_are_clipped(scale_bias):
    """r and d are constants in Batch Renormalization's backward (Ioffe 2017), so its gradient is the derivative
    of the forward exactly where both are clipped; there the finite differences must agree."""
    text = ('type: "BatchNorm" batch_norm_param { renorm: true r_max: 1.2 d_max: 0.1 %s}'
            % ("scale_bias: true " if scale_bias else ""))
    layer = layer_of(text)
    x = np.random.RandomState(5).randn(3, 2, 2, 2) * np.array([3.0, 0.2])[None, :, None, None] + 1.0
    bottom, top = [make_blob(x)], [make_blob(np.zeros(0))]
    layer.initialize(bottom, top)
    layer.blobs[0].data[...] = [-2.0, 3.0]        # running means far from the batch's: d clipped
    layer.blobs[1].data[...] = [1.0, 1.0]         # running std 1, batch std 3 and 0.2: r clipped
    layer.blobs[2].data[...] = 1.0
    if scale_bias:
        layer.blobs[3].data[...] = [0.7, 1.3]
        layer.blobs[4].data[...] = [0.1, -0.2]
    wrapped = _FrozenStatistics(layer)
    wrapped.forward(bottom, top)
    assert np.allclose(layer._rd[0], [1.2, 1 / 1.2]) and np.allclose(layer._rd[1], [0.1, -0.1])
    GradientChecker().check(wrapped, bottom, top, already_set_up=True)


# --------------------------------------------------------------------------------------------------------
# behaviour beyond the reference cases
# --------------------------------------------------------------------------------------------------------
def test_batch_renorm_ramp_schedule():
    sched = (3.0, 5.0, 100, 300, 200)
    assert renorm_limits(sched, 0) == (1.0, 0.0)
    assert renorm_limits(sched, 100) == (1.0, 0.0)
    assert renorm_limits(sched, 200) == pytest.approx((2.0, 5.0))
    assert renorm_limits(sched, 150) == pytest.approx((1.5, 2.5))
    assert renorm_limits(sched, 1000) == pytest.approx((3.0, 5.0))
    assert renorm_limits((3.0, 5.0, 0, 0, 0), 0) == (3.0, 5.0)


def test_batch_renorm_at_ramp_start_is_batchnorm_and_counts_iterations():
    x = np.random.RandomState(2).randn(4, 3, 2, 2)
    plain = layer_of('type: "BatchNorm" batch_norm_param { moving_average_fraction: 0.9 }')
    renorm = layer_of('type: "BatchNorm" batch_norm_param { moving_average_fraction: 0.9 renorm: true '
                      'renorm_ramp_start: 2 r_max_ramp_end: 4 d_max_ramp_end: 4 }')
    outs = []
    for layer in (plain, renorm):
        bottom, top = [make_blob(x)], [make_blob(np.zeros(0))]
        layer.initialize(bottom, top)
        ys = []
        for k in range(4):
            bottom[0].data[...] = x * (1 + k) + k
            layer.forward(bottom, top)
            ys.append(top[0].data.copy())
        outs.append(ys)
    assert len(plain.blobs) == 3 and len(renorm.blobs) == 4
    assert renorm.fixed_param_indices() == [0, 1, 2, 3] and renorm.param_propagate_down == [False] * 4
    assert renorm.blobs[3].data[0] == 4
    for k in range(3):          # iterations 0..2: r_max 1, d_max 0 (iteration 2 is the ramp's start)
        np.testing.assert_allclose(outs[1][k], outs[0][k], rtol=1e-12, atol=1e-12)
    assert np.abs(outs[1][3] - outs[0][3]).max() > 1e-3       # iteration 3: r_max 2, d_max 2.5
    for a, b in zip(plain.blobs, renorm.blobs):                  # the statistics are Caffe's, renorm or not
        np.testing.assert_allclose(a.data, b.data, rtol=1e-12)


def test_batch_renorm_snapshot_keeps_counter_and_plain_batchnorm_keeps_three_blobs(tmp_path):
    proto = ('name: "n" layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 4 dim: 2 } } } '
             'layer { name: "bn" type: "BatchNorm" bottom: "x" top: "y" batch_norm_param { %s } }')
    for extra, count in (("", 3), ("renorm: true", 4)):
        path = tmp_path / "net.prototxt"
        path.write_text(proto % extra)
        net = caffe.Net(str(path), caffe.TRAIN)
        net.forward(x=np.random.RandomState(0).randn(4, 2).astype(np.float32))
        net.forward(x=np.random.RandomState(1).randn(4, 2).astype(np.float32))
        assert len(net.params["bn"]) == count
        net.save(str(tmp_path / "w.caffemodel"))
        again = caffe.Net(str(path), str(tmp_path / "w.caffemodel"), caffe.TRAIN)
        for a, b in zip(net.params["bn"], again.params["bn"]):
            np.testing.assert_array_equal(a.data, b.data)
        if count == 4:
            assert again.params["bn"][3].data[0] == 2


def test_groupnorm_one_group_is_layernorm_and_c_groups_is_instancenorm():
    x = np.random.RandomState(3).randn(2, 4, 3, 3)

    def out(text):
        layer = layer_of(text)
        bottom, top = [make_blob(x)], [make_blob(np.zeros(0))]
        layer.initialize(bottom, top)
        layer.forward(bottom, top)
        return top[0].data.copy()

    np.testing.assert_allclose(out('type: "GroupNorm" group_norm_param { num_groups: 1 }'),
                               out('type: "LayerNorm" layer_norm_param { axis: 1 epsilon: 1e-5 }'), atol=1e-12)
    np.testing.assert_allclose(out('type: "GroupNorm" group_norm_param { num_groups: 4 }'),
                               out('type: "InstanceNorm"'), atol=1e-12)


def test_instancenorm_test_phase_uses_running_statistics_when_tracked():
    x = np.random.RandomState(4).randn(2, 3, 4)
    text = 'type: "InstanceNorm" instance_norm_param { track_running_stats: true }'
    layer = layer_of(text, TEST)
    bottom, top = [make_blob(x)], [make_blob(np.zeros(0))]
    layer.initialize(bottom, top)
    layer.blobs[0].data[...] = [0.5, -1, 2]
    layer.blobs[1].data[...] = [4, 1, 0.25]
    layer.forward(bottom, top)
    want = (x - np.array([0.5, -1, 2])[None, :, None]) / np.sqrt(np.array([4, 1, 0.25]) + 1e-5)[None, :, None]
    np.testing.assert_allclose(top[0].data, want, rtol=1e-12)
    np.testing.assert_array_equal(layer.blobs[0].data, [0.5, -1, 2])     # TEST never updates them
    untracked = layer_of('type: "InstanceNorm"', TEST)
    bottom, top = [make_blob(x)], [make_blob(np.zeros(0))]
    untracked.initialize(bottom, top)
    untracked.forward(bottom, top)
    np.testing.assert_allclose(top[0].data.mean(axis=2), 0, atol=1e-12)


@pytest.mark.skipif(not HAVE_TORCH, reason="compared with torch.nn.InstanceNorm2d where torch is installed")
@pytest.mark.parametrize("track,momentum", [(True, 0.1), (True, 0.3), (False, 0.1)])
def test_instancenorm_train_steps_then_test_match_pytorch_module(track, momentum):
    """Five TRAIN passes (running statistics updated each time) then a TEST pass on a new batch, against
    nn.InstanceNorm2d in train() and eval(): eval uses the running statistics only with track_running_stats,
    and otherwise each sample's own, in pcn's TEST as in PyTorch's eval."""
    text = ('type: "InstanceNorm" instance_norm_param { affine: true track_running_stats: %s momentum: %g }'
            % ("true" if track else "false", momentum))
    rng = np.random.RandomState(11)
    module = torch.nn.InstanceNorm2d(3, affine=True, track_running_stats=track, momentum=momentum).double()
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, 3)))
        module.bias.copy_(torch.from_numpy(rng.uniform(-0.5, 0.5, 3)))
    train = layer_of(text, TRAIN)
    bottom, top = [make_blob(rng.randn(4, 3, 3, 5))], [make_blob(np.zeros(0))]
    train.initialize(bottom, top)
    train.blobs[-2].data[...] = module.weight.detach().numpy()
    train.blobs[-1].data[...] = module.bias.detach().numpy()
    module.train()
    for step in range(5):
        bottom[0].data[...] = rng.randn(4, 3, 3, 5) * (1 + step) + step
        train.forward(bottom, top)
        np.testing.assert_allclose(top[0].data, module(torch.from_numpy(bottom[0].data)).detach().numpy(),
                                   rtol=1e-10, atol=1e-12)
        if track:
            np.testing.assert_allclose(train.blobs[0].data, module.running_mean.numpy(), rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(train.blobs[1].data, module.running_var.numpy(), rtol=1e-12)
    test = layer_of(text, TEST)
    x = rng.randn(2, 3, 3, 5) * 2 - 1
    bottom, top = [make_blob(x)], [make_blob(np.zeros(0))]
    test.blobs = train.blobs                          # as Net.share_with gives a TEST net the trained blobs
    test.initialize(bottom, top)
    test.forward(bottom, top)
    module.eval()
    np.testing.assert_allclose(top[0].data, module(torch.from_numpy(x)).detach().numpy(), rtol=1e-10, atol=1e-12)
    assert torch.nn.InstanceNorm2d(3).track_running_stats is False       # PyTorch's default ...
    assert layer_of('type: "InstanceNorm"', TEST).layer_param.instance_norm_param.track_running_stats is False


@pytest.mark.parametrize("model", ["models/cifar10_quick_instancenorm/cifar10_quick_instancenorm_train_test.prototxt",
                                   "models/lenet_instancenorm/lenet_instancenorm_train_test.prototxt"])
def test_instancenorm_models_test_each_sample_with_its_own_statistics(model):
    """The InstanceNorm models are PyTorch's InstanceNorm2d default (track_running_stats=False): their TEST nets
    normalise each sample by its own statistics, as in TRAIN, one sample's output not depending on the others.
    With running statistics in TEST, models/cifar10_quick_instancenorm scored 87.9 to 94.9% on the digits from
    test to test, against about 98% with each digit's own statistics (docs/normalization_results.md)."""
    net = caffe_pb2.NetParameter()
    text_format.Parse((pathlib.Path(__file__).resolve().parents[2] / model).read_text(), net)
    layers = [lp for lp in net.layer if lp.type == "InstanceNorm"]
    assert len(layers) >= 2
    rng = np.random.RandomState(12)
    for lp in layers:
        assert not lp.instance_norm_param.track_running_stats, lp.name
        x = rng.randn(3, 4, 5, 5) * 3 + 2
        outs = {}
        for phase in (TRAIN, TEST):
            layer = create_layer(lp, phase)
            bottom, top = [make_blob(x)], [make_blob(np.zeros(0))]
            layer.initialize(bottom, top)
            assert len(layer.blobs) == 2 and len(lp.param) == 2, lp.name        # weight and bias, learned
            layer.forward(bottom, top)
            outs[phase] = top[0].data.copy()
            if phase == TEST:                                       # sample 1 alone gives the same
                bottom, top = [make_blob(x[1:2])], [make_blob(np.zeros(0))]
                layer.reshape(bottom, top)
                layer.forward(bottom, top)
                np.testing.assert_allclose(top[0].data[0], outs[TEST][1], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(outs[TEST], outs[TRAIN], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(outs[TEST].mean(axis=(2, 3)), 0, atol=1e-12)


def test_convnext_grn_starts_as_identity_and_differs_from_mycaffe_grn():
    x = np.random.RandomState(6).randn(2, 3, 2, 2)
    layer = layer_of('type: "ConvNeXtGRN"')
    bottom, top = [make_blob(x)], [make_blob(np.zeros(0))]
    layer.initialize(bottom, top)
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, x)       # gamma = beta = 0 at initialisation, as ConvNeXt-V2
    grn = layer_of('type: "GRN"')
    top2 = [make_blob(np.zeros(0))]
    grn.initialize(bottom, top2)
    grn.forward(bottom, top2)
    assert np.abs(top2[0].data - x).max() > 0.1


def test_layernorm_mycaffe_passthrough_and_default_axis():
    x = np.random.RandomState(7).randn(2, 3, 4)
    layer = layer_of('type: "LayerNorm" layer_norm_param { enable_passthrough: true enable_cuda_impl: true }')
    bottom, top = [make_blob(x)], [make_blob(np.zeros(0))]
    layer.initialize(bottom, top)
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, x)
    top[0].diff[...] = 2.0
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, 2.0)
    plain = layer_of('type: "LayerNorm"')
    plain.initialize(bottom, top)
    assert plain.axis == 2 and plain.blobs == []          # MyCaffe: per (n, c) over the last axes, no affine


def test_float32_stays_float32():
    x = np.random.RandomState(8).randn(2, 4, 3, 3).astype(np.float32)
    for text in ('type: "LayerNorm" layer_norm_param { axis: 1 elementwise_affine: true }',
                 'type: "GroupNorm" group_norm_param { num_groups: 2 }', 'type: "RMSNorm"',
                 'type: "InstanceNorm" instance_norm_param { affine: true track_running_stats: true }',
                 'type: "ConvNeXtGRN"', 'type: "BatchNorm" batch_norm_param { renorm: true }'):
        layer = layer_of(text)
        bottom, top = [make_blob(x, dtype=np.float32)], [caffe.Blob((), dtype=np.float32)]
        layer.initialize(bottom, top)
        layer.forward(bottom, top)
        top[0].diff[...] = 1
        layer.backward(top, [True], bottom)
        assert top[0].data.dtype == np.float32 and bottom[0].diff.dtype == np.float32, text
        assert all(b.data.dtype == np.float32 and b.diff.dtype == np.float32 for b in layer.blobs), text


@pytest.mark.parametrize("text,shape,message", [
    ('type: "GroupNorm" group_norm_param { num_groups: 3 }', (2, 4, 2, 2), "num_groups 3 must"),
    ('type: "GroupNorm"', (4,), "bottom[0] has shape"),
    ('type: "InstanceNorm" instance_norm_param { use_global_stats: true }', (2, 3, 2), "track_running_stats"),
    ('type: "RMSNorm" rms_norm_param { axis: 5 }', (2, 3, 2), "axis 5 is out of range"),
    ('type: "LayerNorm" layer_norm_param { axis: -4 }', (2, 3, 2), "axis -4 is out of range"),
])
def test_bad_configuration_is_one_line_naming_the_layer(text, shape, message):
    layer = layer_of(text)
    with pytest.raises((NetError, ShapeError)) as err:
        layer.initialize([make_blob(np.zeros(shape))], [make_blob(np.zeros(0))])
    assert message in str(err.value) and "'l'" in str(err.value) and "\n" not in str(err.value)


def test_channel_change_after_setup_is_a_shape_error():
    for text in ('type: "GroupNorm" group_norm_param { num_groups: 2 }', 'type: "ConvNeXtGRN"',
                 'type: "LayerNorm" layer_norm_param { elementwise_affine: true }'):
        layer = layer_of(text)
        bottom, top = [make_blob(np.zeros((2, 4, 3)))], [make_blob(np.zeros(0))]
        layer.initialize(bottom, top)
        bottom[0].reshape((2, 6, 5))
        with pytest.raises(ShapeError, match="'l'"):
            layer.reshape(bottom, top)


def test_convnext_grn_all_zero_sample_with_eps_0_is_finite():
    layer = layer_of('type: "ConvNeXtGRN" convnext_grn_param { eps: 0 beta_filler { type: "constant" value: 0.5 } '
                     'gamma_filler { type: "constant" value: 2 } }')
    x = np.zeros((2, 3, 2, 2))
    x[1] = np.random.RandomState(9).randn(3, 2, 2)
    bottom, top = [make_blob(x)], [make_blob(np.zeros(0))]
    layer.initialize(bottom, top)
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data[0], 0.5)      # y = beta where the sample is all zero
    top[0].diff[...] = 1
    layer.backward(top, [True], bottom)
    assert np.all(np.isfinite(bottom[0].diff)) and np.all(np.isfinite(top[0].data))


# --------------------------------------------------------------------------------------------------------
# blocks of units on pcn's thread pool (the small shapes above run as one block on the calling thread)
# --------------------------------------------------------------------------------------------------------
ROW_NORM_CASES = [c for c in GRAD_CASES if "ConvNeXtGRN" not in c[0] and "use_global_stats" not in c[0]]


@pytest.fixture
def split_units(monkeypatch):
    """Every unit (row or sample) its own block, on two threads, however small the input."""
    from pycaffe_norm import parallel
    from pycaffe_norm.layers import modern_normalization

    monkeypatch.setattr(modern_normalization, "_BLOCK", 1)
    monkeypatch.setattr(parallel, "MIN_ELEMENTS", 0)
    monkeypatch.setenv("PCN_THREADS", "2")


def _run_twice(text, x, in_place):
    """(y, dx, parameter diffs, parameter data) after forward, backward, forward, backward (diffs accumulate), in
    the dtype of ``x``."""
    layer = layer_of(text)
    bottom = [make_blob(x, x.dtype)]
    top = bottom if in_place else [make_blob(np.zeros(0), x.dtype)]
    layer.initialize(bottom, top)
    for blob, learned in zip(layer.blobs, layer.param_propagate_down):
        if learned:
            blob.data[...] = np.random.RandomState(blob.count).uniform(0.5, 1.5, blob.shape)
    dy = np.random.RandomState(5).randn(*x.shape)
    for _ in range(2):
        bottom[0].data[...] = x
        layer.forward(bottom, top)
        y = np.array(top[0].data)
        top[0].diff[...] = dy
        layer.backward(top, [True], bottom)
    return y, np.array(bottom[0].diff), [np.array(b.diff) for b in layer.blobs], [np.array(b.data) for b in layer.blobs]


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("text,shape", ROW_NORM_CASES)
def test_blocks_on_threads_match_one_block(text, shape, in_place, request):
    x = np.random.RandomState(len(text)).randn(*shape) * 1.3 + 0.3
    one = _run_twice(text, x, in_place)
    request.getfixturevalue("split_units")
    split = _run_twice(text, x, in_place)
    # the same up to rounding (BLAS sums a row in an order that can depend on the rows beside it; parameter
    # gradients are summed per chunk, then the chunks in batch order)
    for a, b in zip([*split[:2], *split[2], *split[3]], [*one[:2], *one[2], *one[3]]):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("text,shape", ROW_NORM_CASES)
def test_gradient_exhaustive_in_blocks_on_threads(text, shape, in_place, split_units):
    test_gradient_exhaustive(text, shape, in_place)


def test_float32_blocks_on_threads_are_deterministic_and_leave_numpy_buffer_size(split_units, monkeypatch):
    text = 'type: "GroupNorm" group_norm_param { num_groups: 2 }'
    x = np.random.RandomState(3).randn(7, 4, 3, 5).astype(np.float32)
    before = np.getbufsize()
    runs = []
    for threads in ("2", "2", "1", "3"):     # parameter gradients: per group of blocks, then the groups in order
        monkeypatch.setenv("PCN_THREADS", threads)
        runs.append(_run_twice(text, x, False))
    assert np.getbufsize() == before
    for run in runs[1:]:
        for a, b in zip([*run[:2], *run[2]], [*runs[0][:2], *runs[0][2]]):
            np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(not HAVE_NUMBA, reason="Numba is not installed (the fast extra)")
@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize("text,shape", ROW_NORM_CASES)
def test_numba_kernels_match_numpy_passes(text, shape, dtype, rtol, monkeypatch, row_kernels):
    """The two paths agree to rounding: forward, input and parameter gradients, running statistics."""
    from pycaffe_norm.layers import numba_kernels

    if row_kernels == "numba":
        pytest.skip("runs once")
    x = (np.random.RandomState(len(text)).randn(*shape) * 1.3 + 0.3).astype(dtype)
    runs = []
    for enabled in (False, True):
        monkeypatch.setattr(numba_kernels, "ENABLED", enabled)
        runs.append(_run_twice(text, x, False))
    assert numba_kernels.available()
    for a, b in zip([*runs[1][:2], *runs[1][2], *runs[1][3]], [*runs[0][:2], *runs[0][2], *runs[0][3]]):
        assert a.dtype == b.dtype == dtype
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * max(1.0, float(np.abs(b).max())))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_non_finite_input_makes_only_its_own_group_nan():
    """A NaN or an inf turns its own row (group) into NaN and leaves the others finite, on either path."""
    x = np.random.RandomState(4).randn(2, 4, 3, 3)
    x[0, 0, 0, 0] = np.nan
    x[1, 2, 1, 1] = np.inf
    layer = layer_of('type: "GroupNorm" group_norm_param { num_groups: 2 }')
    bottom, top = [make_blob(x)], [make_blob(np.zeros(0))]
    layer.initialize(bottom, top)
    layer.forward(bottom, top)
    groups = top[0].data.reshape(2, 2, -1)
    assert np.isnan(groups[0, 0]).all() and np.isnan(groups[1, 1]).all()
    assert np.isfinite(groups[0, 1]).all() and np.isfinite(groups[1, 0]).all()
