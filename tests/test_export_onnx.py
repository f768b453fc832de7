"""ONNX export (pycaffe_norm.export_onnx, ``pcn export onnx``): onnxruntime runs every exported net and must agree
with pcn's forward pass on every blob within 1e-4 relative (max |difference| / max |pcn value|); layers ONNX
cannot express are refused by name; the command's errors are one line with exit status 2."""
from __future__ import annotations

import itertools
import pathlib
import re

import numpy as np
import pytest

import pycaffe_norm as caffe
from pycaffe_norm.cli import main
from pycaffe_norm.errors import PcnError
from pycaffe_norm.net import filter_net
from pycaffe_norm.proto import caffe_pb2
from pycaffe_norm.prototxt import parse_text, read_text

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from pycaffe_norm.export_onnx import DEFAULT_OPSET, check, export_net, export_onnx  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
NETS = ROOT / "tests" / "onnx_nets"
TOLERANCE = 1e-4


def randomize(net, seed: int = 0) -> None:
    """Random weights that keep activations of order one: weights of variance 1/fan_in, biases and per-channel
    parameters around their usual values, BatchNorm statistics of a plausible mean, variance and factor S."""
    rng = np.random.RandomState(seed)
    fast = np.random.default_rng(seed)
    for layer, lp in zip(net.layers, net.layer_params):
        for k, blob in enumerate(layer.blobs):
            shape = blob.shape
            if lp.type == "BatchNorm":      # sums of mean and variance with S = 3; MyCaffe's scale and bias
                value = [rng.randn(*shape) * 1.5, rng.uniform(1.5, 6.0, shape), np.full(shape, 3.0),
                         rng.uniform(0.5, 1.5, shape), rng.randn(*shape) * 0.1][k]
            elif len(shape) >= 2:       # uniform, variance 1 / fan_in: fast to draw for CaffeNet's 61M weights
                value = fast.random(shape, dtype=np.float32)
                value -= 0.5
                value *= np.float32(np.sqrt(12.0 / np.prod(shape[1:])))
            elif lp.type in ("Scale", "Normalize", "Normalization2") and k == 0:
                value = rng.uniform(0.5, 1.5, shape)
            elif lp.type == "PReLU":
                value = rng.uniform(0.05, 0.5, shape)
            else:
                value = rng.randn(*shape) * 0.1
            blob.data[...] = value


def run_both(net, opset: int = DEFAULT_OPSET, seed: int = 1, inputs=None):
    """pcn's and onnxruntime's values of every blob the ONNX graph names like the net (the net's outputs and
    each blob's final value), for the same random inputs: {blob: (pcn, onnxruntime)}."""
    rng = np.random.RandomState(seed)
    feeds = inputs or {n: np.asarray(rng.randn(*net.blobs[n].shape), np.float32) for n in net.inputs}
    net.forward(**feeds)
    model = export_net(net, opset)
    produced = {o for node in model.graph.node for o in node.output}
    declared = {o.name for o in model.graph.output}
    for name, blob in net.blobs.items():
        if name in produced and name not in declared:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT,
                                                                         list(blob.shape)))
    data = model.SerializeToString()
    check(data)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, feeds)
    return {n: (np.array(net.blobs[n].data), v) for n, v in zip(names, values)}


def relative_differences(net, **kwargs):
    """{blob: max |onnxruntime - pcn| / max |pcn|}. Caffe's -FLT_MAX of an empty MAX window must come out exactly
    and is left out of the scale, which it would otherwise swamp."""
    out = {}
    for name, (ref, got) in run_both(net, **kwargs).items():
        assert got.shape == ref.shape, name
        extreme = np.abs(ref) > 1e30
        np.testing.assert_array_equal(got[extreme], ref[extreme])
        ref, got = ref[~extreme], got[~extreme]
        scale = float(np.abs(ref).max()) if ref.size else 0.0
        out[name] = float(np.abs(got - ref).max()) / (scale if scale > 0 else 1.0) if ref.size else 0.0
    return out


def assert_matches(net, **kwargs):
    diffs = relative_differences(net, **kwargs)
    assert diffs, "no blob compared"
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] < TOLERANCE, "blob %r differs by %.3g relative: %s" % (worst, diffs[worst], diffs)
    return diffs


def net_from(text: str, seed: int = 0):
    net = caffe.Net(parse_text(text, caffe_pb2.NetParameter()), caffe.TEST)
    randomize(net, seed)
    return net


def one_layer(layer: str, shape=(2, 4, 7, 7), bottoms=("data",), tops=("out",), shapes=None) -> str:
    """A net of one Input per bottom (of ``shape``, or of ``shapes[i]``) and one layer reading them."""
    shapes = shapes or [shape] * len(bottoms)
    text = "".join('layer { name: "%s" type: "Input" top: "%s" input_param { shape { %s } } }\n'
                   % (b, b, " ".join("dim: %d" % d for d in s)) for b, s in zip(bottoms, shapes))
    wiring = " ".join('bottom: "%s"' % b for b in bottoms) + " " + " ".join('top: "%s"' % t for t in tops)
    return text + 'layer { name: "layer" %s %s }\n' % (wiring, layer)


def deploy_from_train_test(path: pathlib.Path, shape) -> caffe_pb2.NetParameter:
    """A deploy net built from a train/test net of models/: its TEST layers, Input for "data" (shape ``shape``),
    no label, accuracy or loss; a Softmax "prob" on the blob the loss read."""
    param = read_text(str(path), caffe_pb2.NetParameter())
    param.state.phase = caffe.TEST
    param = filter_net(param)
    deploy = caffe_pb2.NetParameter(name=param.name)
    data = deploy.layer.add(name="data", type="Input", top=["data"])
    data.input_param.shape.add(dim=list(shape))
    for lp in param.layer:
        if not lp.bottom:
            continue
        if lp.type == "SoftmaxWithLoss":
            deploy.layer.add(name="prob", type="Softmax", bottom=[lp.bottom[0]], top=["prob"])
        elif lp.type != "Accuracy":
            deploy.layer.add().CopyFrom(lp)
    return deploy


# --- the five nets ---------------------------------------------------------------------------------------------

def five_nets():
    return {
        "LeNet": lambda: caffe.Net(str(ROOT / "models" / "lenet" / "lenet_deploy.prototxt"), caffe.TEST),
        "CIFAR-10 quick": lambda: caffe.Net(deploy_from_train_test(
            ROOT / "models" / "cifar10_quick" / "cifar10_quick_train_test.prototxt", (2, 3, 32, 32)), caffe.TEST),
        "CIFAR-10 full": lambda: caffe.Net(str(NETS / "cifar10_full_deploy.prototxt"), caffe.TEST),
        "CaffeNet": lambda: caffe.Net(str(NETS / "caffenet_deploy.prototxt"), caffe.TEST),
        "ResNet block": lambda: caffe.Net(str(NETS / "resnet_block_deploy.prototxt"), caffe.TEST),
    }


@pytest.mark.parametrize("name", list(five_nets()))
def test_five_nets_match_onnxruntime(name):
    net = five_nets()[name]()
    randomize(net)
    diffs = assert_matches(net)
    assert set(net.outputs) <= set(diffs)
    # every layer's result is compared, not only the net's output (a Split only passes its bottom on)
    assert set(diffs) == {t for lp in net.layer_params if lp.type not in ("Input", "Split") for t in lp.top}


@pytest.mark.parametrize("opset", [13, 18, 21])
def test_other_opsets(opset):
    net = five_nets()["CIFAR-10 full"]()
    randomize(net)
    assert_matches(net, opset=opset)


def test_exported_graph_keeps_caffe_names_and_shapes():
    net = five_nets()["LeNet"]()
    model = export_net(net)
    assert [i.name for i in model.graph.input] == ["data"]
    assert [o.name for o in model.graph.output] == ["prob"]
    dims = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [1, 10]
    assert model.opset_import[0].version == DEFAULT_OPSET
    assert {"conv1/weight", "ip2/bias"} <= {t.name for t in model.graph.initializer}


# --- per layer type ---------------------------------------------------------------------------------------------

POOLING = [
    # (height/width, kernel, stride, pad, round_mode): Caffe's ceil rule, its last-window rule, AVE's divisor
    ((7, 7), 3, 2, 1, "CEIL"),
    ((6, 6), 3, 2, 0, "CEIL"),        # a partial last window: AVE divides by its clipped size
    ((6, 6), 3, 2, 1, "CEIL"),        # the last window would start in the padding: Caffe drops it
    ((5, 8), 2, 2, 1, "CEIL"),
    ((8, 8), 3, 3, 2, "CEIL"),
    ((5, 5), 1, 3, 0, "CEIL"),        # stride > kernel: the last window lies beyond the image
    ((7, 7), 3, 2, 1, "FLOOR"),
    ((9, 6), 4, 3, 2, "FLOOR"),
]


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
@pytest.mark.parametrize("hw,kernel,stride,pad,mode", POOLING)
def test_pooling_geometry_and_divisor(pool, hw, kernel, stride, pad, mode):
    net = net_from(one_layer('type: "Pooling" pooling_param { pool: %s kernel_size: %d stride: %d pad: %d '
                             'round_mode: %s }' % (pool, kernel, stride, pad, mode), shape=(2, 3) + hw))
    assert_matches(net)


@pytest.mark.parametrize("hw", [(7, 8), (5, 3)])
def test_pooling_sweep_of_geometries(hw):
    # every kernel 1..4, stride 1..4, pad < kernel, both roundings and methods, as layers of one net
    text = one_layer('type: "TanH"', shape=(1, 2) + hw)     # negative values: MAX must not see padding
    names = []
    for k, s, mode, pool in itertools.product(range(1, 5), range(1, 5), ("CEIL", "FLOOR"), ("MAX", "AVE")):
        for p in range(k):
            if min(hw) + 2 * p >= k:
                names.append("p_%d_%d_%d_%s_%s" % (k, s, p, mode, pool))
                text += ('layer { name: "%s" type: "Pooling" bottom: "out" top: "%s" pooling_param { pool: %s '
                         'kernel_size: %d stride: %d pad: %d round_mode: %s } }\n' % (names[-1], names[-1], pool, k,
                                                                                       s, p, mode))
    diffs = assert_matches(net_from(text))
    assert set(names) <= set(diffs) and len(names) > 100


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
def test_pooling_rectangular_and_global(pool):
    assert_matches(net_from(one_layer('type: "Pooling" pooling_param { pool: %s kernel_h: 3 kernel_w: 2 '
                                      'stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0 }' % pool, shape=(1, 2, 9, 6))))
    assert_matches(net_from(one_layer('type: "Pooling" pooling_param { pool: %s global_pooling: true }' % pool)))


def test_pooling_average_with_padding_uses_caffes_divisor():
    # a constant input shows the divisor: Caffe counts padding up to the padded edge, so borders are below 1
    net = net_from(one_layer('type: "Pooling" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }',
                             shape=(1, 1, 6, 6)))
    got = run_both(net, inputs={"data": np.ones((1, 1, 6, 6), np.float32)})["out"]
    np.testing.assert_allclose(got[1], got[0], rtol=1e-6)
    assert got[0][0, 0, 0, 0] == pytest.approx(4 / 9) and got[0][0, 0, 1, 1] == pytest.approx(1.0)


@pytest.mark.parametrize("param", [
    "num_output: 6 kernel_size: 3 pad: 1",
    "num_output: 6 kernel_size: 3 group: 2 stride: 2",
    "num_output: 4 kernel_size: 3 dilation: 2 pad: 2",
    "num_output: 8 kernel_h: 3 kernel_w: 1 stride_h: 2 stride_w: 1 pad_h: 0 pad_w: 1 group: 4 bias_term: false",
    "num_output: 4 kernel_size: 2 dilation: 3 stride: 2 group: 4",
])
@pytest.mark.parametrize("kind", ["Convolution", "Deconvolution"])
def test_convolution_and_deconvolution(kind, param):
    net = net_from(one_layer('type: "%s" convolution_param { %s weight_filler { type: "gaussian" } }'
                             % (kind, param)))
    assert_matches(net)


@pytest.mark.parametrize("kind", ["Convolution", "Deconvolution"])
def test_convolution_3d(kind):
    net = net_from(one_layer('type: "%s" convolution_param { num_output: 4 kernel_size: 3 kernel_size: 2 '
                             'kernel_size: 1 stride: 2 pad: 1 group: 2 }' % kind, shape=(1, 2, 5, 4, 6)))
    assert_matches(net)


@pytest.mark.parametrize("param,shape", [
    ("num_output: 5", (2, 4, 3, 3)),
    ("num_output: 5 axis: 2", (2, 3, 4, 5)),
    ("num_output: 5 transpose: true bias_term: false", (2, 4, 3, 3)),
    ("num_output: 3 axis: 0", (6,)),
])
def test_inner_product(param, shape):
    assert_matches(net_from(one_layer('type: "InnerProduct" inner_product_param { %s }' % param, shape=shape)))


@pytest.mark.parametrize("layer", [
    'type: "ReLU"',
    'type: "ReLU" relu_param { negative_slope: 0.1 }',
    'type: "PReLU"',
    'type: "PReLU" prelu_param { channel_shared: true }',
    'type: "ELU" elu_param { alpha: 0.7 }',
    'type: "Sigmoid"',
    'type: "TanH"',
    'type: "Softmax"',
    'type: "Softmax" softmax_param { axis: 2 }',
    'type: "Dropout" dropout_param { dropout_ratio: 0.3 }',
    'type: "Flatten"',
    'type: "Flatten" flatten_param { axis: 2 }',
    'type: "Reshape" reshape_param { shape { dim: 0 dim: -1 dim: 7 } }',
    'type: "Scale" scale_param { bias_term: true }',
    'type: "Scale" scale_param { axis: 2 num_axes: 2 }',
    'type: "Bias"',
    'type: "BatchNorm"',
    'type: "BatchNorm" batch_norm_param { scale_bias: true eps: 0.001 }',
    'type: "BatchNorm" batch_norm_param { use_global_stats: false }',
    'type: "BatchNorm" batch_norm_param { use_global_stats: false scale_bias: true }',
    'type: "AbsVal"',
    'type: "Power" power_param { power: 2 scale: 0.5 shift: 1 }',
    'type: "Power" power_param { power: 3 }',
    'type: "Power" power_param { power: 0.5 scale: 0 shift: 4 }',
    'type: "Exp"',
    'type: "Exp" exp_param { base: 2 scale: 0.5 shift: 1 }',
    'type: "BNLL"',
    'type: "Threshold" threshold_param { threshold: 0.2 }',
    'type: "Clip" clip_param { min: -0.5 max: 0.7 }',
    'type: "Swish"',
    'type: "Swish" swish_param { beta: 1.7 }',
    'type: "Tile" tile_param { axis: 2 tiles: 3 }',
    'type: "Reduction"',
    'type: "Reduction" reduction_param { operation: ASUM axis: 2 coeff: 0.5 }',
    'type: "Reduction" reduction_param { operation: SUMSQ axis: 0 }',
    'type: "Reduction" reduction_param { operation: MEAN axis: -1 coeff: 3 }',
    'type: "SPP" spp_param { pyramid_height: 1 }',
    'type: "SPP" spp_param { pyramid_height: 3 pool: AVE }',
    'type: "SPP" spp_param { pyramid_height: 2 }',
])
def test_element_and_structure_layers(layer):
    assert_matches(net_from(one_layer(layer)))


def test_in_place_layers_chain():
    net = net_from(one_layer('type: "Convolution" convolution_param { num_output: 3 kernel_size: 1 }') +
                   'layer { name: "bn" type: "BatchNorm" bottom: "out" top: "out" }\n'
                   'layer { name: "sc" type: "Scale" bottom: "out" top: "out" scale_param { bias_term: true } }\n'
                   'layer { name: "relu" type: "ReLU" bottom: "out" top: "out" }\n')
    diffs = assert_matches(net)
    assert list(diffs) == ["out"]


@pytest.mark.parametrize("layer", ['type: "Log"', 'type: "Log" log_param { base: 10 scale: 2 shift: 0.5 }'])
def test_log(layer):
    net = net_from(one_layer(layer))
    x = np.random.RandomState(2).uniform(0.1, 3, net.blobs["data"].shape).astype(np.float32)
    assert_matches(net, inputs={"data": x})


@pytest.mark.parametrize("param", ["", "top_k: 3", "out_max_val: true top_k: 2", "axis: 1", "axis: 2 top_k: 2",
                                   "axis: -1 out_max_val: true top_k: 3"])
def test_argmax_breaks_ties_towards_the_larger_index(param):
    net = net_from(one_layer('type: "ArgMax" argmax_param { %s }' % param, shape=(2, 3, 4, 5)))
    x = np.random.RandomState(4).randint(0, 3, size=(2, 3, 4, 5)).astype(np.float32)    # many ties
    for ref, got in run_both(net, inputs={"data": x}).values():
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("param", ["num_output: 4 input_dim: 6", "num_output: 3 input_dim: 5 bias_term: false"])
def test_embed(param):
    net = net_from(one_layer('type: "Embed" embed_param { %s }' % param, shape=(2, 3)))
    x = np.random.RandomState(5).randint(0, 5, size=(2, 3)).astype(np.float32)
    for ref, got in run_both(net, inputs={"data": x}).values():
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("param", ["axis: 2 offset: 1", "axis: 1 offset: 0 offset: 2 offset: 1", "axis: 3"])
def test_crop(param):
    net = net_from(one_layer('type: "Crop" crop_param { %s }' % param, bottoms=("a", "b"),
                             shapes=[(2, 4, 7, 7), (2, 3, 5, 4)]))
    assert_matches(net)


def test_legacy_inputs_in_place_input_and_several_outputs():
    net = net_from('input: "data" input_shape { dim: 2 dim: 3 dim: 5 dim: 5 }\n'
                   'layer { name: "relu" type: "ReLU" bottom: "data" top: "data" }\n'
                   'layer { name: "a" type: "Pooling" bottom: "data" top: "a" pooling_param { kernel_size: 2 } }\n'
                   'layer { name: "b" type: "TanH" bottom: "data" top: "b" }\n')
    model = export_net(net)
    assert [i.name for i in model.graph.input] == ["data"]
    assert sorted(o.name for o in model.graph.output) == ["a", "b"]
    assert set(assert_matches(net)) >= {"a", "b"}


@pytest.mark.parametrize("layer,bottoms,tops", [
    ('type: "Concat"', ("a", "b"), ("out",)),
    ('type: "Concat" concat_param { axis: 2 }', ("a", "b", "c"), ("out",)),
    ('type: "Slice" slice_param { axis: 1 slice_point: 1 slice_point: 3 }', ("a",), ("x", "y", "z")),
    ('type: "Slice" slice_param { axis: 3 }', ("a",), ("x", "y")),
    ('type: "Eltwise" eltwise_param { operation: SUM coeff: 0.5 coeff: -2 coeff: 1 }', ("a", "b", "c"), ("out",)),
    ('type: "Eltwise"', ("a", "b"), ("out",)),
    ('type: "Eltwise" eltwise_param { operation: PROD }', ("a", "b", "c"), ("out",)),
    ('type: "Eltwise" eltwise_param { operation: MAX }', ("a", "b", "c"), ("out",)),
])
def test_multi_blob_layers(layer, bottoms, tops):
    net = net_from(one_layer(layer, shape=(2, 4, 6, 6), bottoms=bottoms, tops=tops))
    assert len(net.inputs) == len(bottoms)
    diffs = assert_matches(net)
    assert set(tops) <= set(diffs)


@pytest.mark.parametrize("layer,shape", [
    ('type: "Scale"', (4,)),
    ('type: "Scale" scale_param { axis: 2 }', (6, 5)),
    ('type: "Scale" scale_param { bias_term: true }', (4, 6)),
    ('type: "Bias"', (4, 6, 5)),
    ('type: "Bias" bias_param { axis: 0 }', ()),
])
def test_scale_and_bias_from_a_second_bottom(layer, shape):
    net = net_from(one_layer(layer, bottoms=("a", "b"), shapes=[(2, 4, 6, 5), shape]))
    assert_matches(net)


# --- normalization layers ---------------------------------------------------------------------------------------

NORMALIZATION = [
    'type: "LRN" lrn_param { local_size: 5 alpha: 0.01 beta: 0.75 k: 2 }',
    'type: "LRN" lrn_param { local_size: 3 alpha: 0.5 beta: 0.6 }',
    'type: "LRN" lrn_param { local_size: 3 alpha: 0.3 beta: 0.75 norm_region: WITHIN_CHANNEL }',
    'type: "LRN" lrn_param { local_size: 5 alpha: 1.5 beta: 0.5 norm_region: WITHIN_CHANNEL }',
    'type: "MVN"',
    'type: "MVN" mvn_param { normalize_variance: false }',
    'type: "MVN" mvn_param { across_channels: true eps: 0.01 }',
    'type: "Normalization1"',
    'type: "Normalization1" normalization_param { norm: L1 }',
    'type: "GRN"',
    'type: "Normalize"',
    'type: "Normalize" norm_param { across_spatial: false }',
    'type: "Normalize" norm_param { channel_shared: true eps: 0.01 }',
    'type: "Normalize" norm_param { across_spatial: false channel_shared: true }',
    'type: "Normalization2" normalization2_param { across_spatial: false }',
]


@pytest.mark.parametrize("opset", [13, DEFAULT_OPSET, 18])
@pytest.mark.parametrize("layer", NORMALIZATION)
def test_normalization_layers(layer, opset):
    assert_matches(net_from(one_layer(layer)), opset=opset)


@pytest.mark.parametrize("layer,shape", [
    ('type: "LRN" lrn_param { local_size: 3 alpha: 0.5 }', (3, 6)),
    ('type: "LRN" lrn_param { local_size: 3 alpha: 0.5 }', (2, 5, 3, 2, 2)),
    ('type: "MVN"', (3, 6)),
    ('type: "GRN"', (3, 6)),
    ('type: "Normalize"', (3, 6)),
    ('type: "Normalization1"', (3, 2, 5)),
])
def test_normalization_layers_other_ranks(layer, shape):
    assert_matches(net_from(one_layer(layer, shape=shape)))


@pytest.mark.parametrize("layer", ['type: "Normalization1"', 'type: "Normalization1" normalization_param { norm: L1 }',
                                   'type: "GRN"'])
def test_normalization_of_zeros_is_zero(layer):
    net = net_from(one_layer(layer, shape=(2, 3, 2, 2)))
    x = np.random.RandomState(3).randn(2, 3, 2, 2).astype(np.float32)
    x[0] = 0            # a zero sample (Normalization1)
    x[1, :, 1, 1] = 0   # a zero position (GRN)
    for ref, got in run_both(net, inputs={"data": x}).values():
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)


def test_docs_list_every_translated_type():
    from pycaffe_norm.export_onnx import supported_layer_types

    table = (ROOT / "docs" / "onnx.md").read_text().split("## How each layer maps")[1].split("## What is refused")[0]
    rows = [line.split("|")[1] for line in table.splitlines() if line.startswith("| `")]
    documented = set(re.findall(r"`(\w+)`", " ".join(rows)))
    assert set(supported_layer_types()) <= documented


# --- refusals and errors ----------------------------------------------------------------------------------------

def test_refuses_every_layer_it_cannot_express_in_one_line():
    text = one_layer('type: "Convolution" convolution_param { num_output: 3 kernel_size: 1 }') + (
        'layer { name: "cols" type: "Im2col" bottom: "out" top: "cols" convolution_param { kernel_size: 2 } }\n'
        'layer { name: "pool" type: "Pooling" bottom: "out" top: "pool" top: "mask" '
        'pooling_param { pool: MAX kernel_size: 2 } }\n'
        'layer { name: "index" type: "Input" top: "index" input_param { shape { dim: 2 } } }\n'
        'layer { name: "reindex" type: "BatchReindex" bottom: "pool" bottom: "index" top: "reindex" }\n')
    net = net_from(text)
    with pytest.raises(PcnError) as e:
        export_net(net)
    message = str(e.value)
    assert "\n" not in message
    for name in ("'cols' (Im2col)", "'pool' (Pooling: a second top", "'reindex' (BatchReindex)"):
        assert name in message
    assert "these 3 layers" in message and "'layer'" not in message and "deploy net" not in message


def test_refuses_train_test_nets_before_opening_their_data(tmp_path):
    weights = tmp_path / "w.caffemodel"
    caffe.Net(str(ROOT / "models" / "lenet" / "lenet_deploy.prototxt"), caffe.TEST).save(str(weights))
    model = ROOT / "models" / "lenet" / "lenet_train_test.prototxt"
    with pytest.raises(PcnError, match=r"'mnist' \(HDF5Data\), 'accuracy' \(Accuracy\), 'loss' \(SoftmaxWithLoss\)"):
        export_onnx(str(model), str(weights), str(tmp_path / "out.onnx"))
    assert not (tmp_path / "out.onnx").exists()


def test_refuses_convolution_over_another_axis():
    net = net_from(one_layer('type: "Convolution" convolution_param { num_output: 2 kernel_size: 1 axis: 2 }',
                             shape=(2, 3, 4, 5)))
    with pytest.raises(PcnError, match=r"'layer' \(Convolution: convolution_param.axis 2"):
        export_net(net)


@pytest.fixture
def lenet_files(tmp_path):
    model = ROOT / "models" / "lenet" / "lenet_deploy.prototxt"
    net = caffe.Net(str(model), caffe.TEST)
    randomize(net, seed=5)
    weights = tmp_path / "lenet.caffemodel"
    net.save(str(weights))
    return net, str(model), str(weights), tmp_path


def test_cli_writes_a_model_that_matches_pcn(lenet_files, capsys):
    net, model, weights, tmp = lenet_files
    out = tmp / "sub" / "lenet.onnx"
    assert main(["export", "onnx", model, weights, str(out), "--opset", "13"]) == 0
    assert "Wrote %s: ONNX opset 13" % out in capsys.readouterr().err
    loaded = onnx.load(str(out))
    onnx.checker.check_model(loaded, full_check=True)
    assert loaded.opset_import[0].version == 13
    x = np.random.RandomState(0).rand(1, 1, 28, 28).astype(np.float32)
    ref = net.forward(data=x)["prob"]
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(["prob"], {"data": x})[0]
    assert np.abs(got - ref).max() / np.abs(ref).max() < TOLERANCE


def error_of(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("pcn: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def test_cli_errors(lenet_files, capsys):
    _, model, weights, tmp = lenet_files
    out = str(tmp / "x.onnx")
    assert "net prototxt not found: nope.prototxt" in error_of(capsys, ["export", "onnx", "nope.prototxt", weights,
                                                                          out])
    assert "weights file not found: nope.caffemodel" in error_of(capsys, ["export", "onnx", model, "nope.caffemodel",
                                                                          out])
    assert "output path is a directory" in error_of(capsys, ["export", "onnx", model, weights, str(tmp)])
    assert "--opset 7: pcn exports ONNX opsets 13 to" in error_of(capsys, ["export", "onnx", model, weights, out,
                                                                           "--opset", "7"])
    assert "invalid int value" in error_of(capsys, ["export", "onnx", model, weights, out, "--opset", "x"])
    assert "invalid choice: 'tflite'" in error_of(capsys, ["export", "tflite", model, weights, out])
    assert "required: weights, out" in error_of(capsys, ["export", "onnx", model])
    bad = tmp / "bad.prototxt"
    bad.write_text('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 } }\n')
    assert "bad.prototxt:" in error_of(capsys, ["export", "onnx", str(bad), weights, out])
    assert not (tmp / "x.onnx").exists()


def test_cli_refused_layers(lenet_files, capsys):
    _, _, weights, tmp = lenet_files
    line = error_of(capsys, ["export", "onnx", str(ROOT / "models" / "lenet" / "lenet_train_test.prototxt"), weights,
                             str(tmp / "x.onnx")])
    assert "ONNX export cannot express these 3 layers: 'mnist' (HDF5Data)" in line


def test_cli_refuses_models_over_protobufs_limit(lenet_files, capsys, monkeypatch):
    import pycaffe_norm.export_onnx as export_module

    _, model, weights, tmp = lenet_files
    monkeypatch.setattr(export_module, "_MAX_PROTO_BYTES", 1000)     # LeNet's weights take 1.7 MB
    line = error_of(capsys, ["export", "onnx", model, weights, str(tmp / "x.onnx")])
    assert re.search(r"lenet_deploy.prototxt: the weights take 0.00[0-9]+ GB; an ONNX file holds at most 2 GB", line)
    assert not (tmp / "x.onnx").exists()
