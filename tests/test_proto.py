"""The schema: committed bindings match proto/caffe.proto, and Caffe's field numbers are where Caffe has them."""
from __future__ import annotations

import importlib.util
import pathlib
import re

import pytest

from pycaffe_norm.proto import caffe_pb2

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _load_tool():
    spec = importlib.util.spec_from_file_location("compile_proto", ROOT / "tools" / "compile_proto.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _embedded_descriptor(path: pathlib.Path) -> str:
    """The serialized FileDescriptorProto literal that protoc writes into a _pb2 module."""
    m = re.search(r"AddSerializedFile\((b'.*?')\)\n", path.read_text(), re.S)
    assert m, "no serialized descriptor in %s" % path
    return m.group(1)


def test_bindings_are_fresh(tmp_path):
    pytest.importorskip("grpc_tools")
    _load_tool().compile_proto(tmp_path)
    committed = ROOT / "pycaffe_norm" / "proto" / "caffe_pb2.py"
    assert _embedded_descriptor(tmp_path / "caffe_pb2.py") == _embedded_descriptor(committed), (
        "pycaffe_norm/proto/caffe_pb2.py is stale: run `python tools/compile_proto.py` after editing proto/caffe.proto")


@pytest.mark.parametrize("message, field, number", [
    ("BlobProto", "num", 1), ("BlobProto", "data", 5), ("BlobProto", "shape", 7), ("BlobProto", "double_data", 8),
    ("Datum", "float_data", 6), ("Datum", "encoded", 7),
    ("NetParameter", "layer", 100), ("NetParameter", "layers", 2), ("NetParameter", "input_dim", 4),
    ("NetParameter", "input_shape", 8),
    ("SolverParameter", "net", 24), ("SolverParameter", "type", 40), ("SolverParameter", "layer_wise_reduce", 41),
    ("SolverState", "history", 3), ("SolverState", "current_step", 4),
    ("LayerParameter", "batch_norm_param", 139), ("LayerParameter", "lrn_param", 118),
    ("LayerParameter", "mvn_param", 120), ("LayerParameter", "clip_param", 148),
    ("LayerParameter", "swish_param", 147), ("LayerParameter", "norm_param", 206),
    ("V1LayerParameter", "blobs_lr", 7), ("V1LayerParameter", "param", 1001),
    ("V0LayerParameter", "hdf5_output_param", 1001), ("PoolingParameter", "round_mode", 13),
    ("BatchNormParameter", "eps", 3), ("LRNParameter", "engine", 6),
])
def test_caffe_field_numbers(message, field, number):
    assert getattr(caffe_pb2, message).DESCRIPTOR.fields_by_name[field].number == number


def test_extensions_do_not_collide_with_bvlc():
    layer = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    for name in ("normalization_param", "normalization2_param", "grn_param", "freeze_learning",
                 "connect_loss_event", "use_halfsize", "group_start", "max_bottom_count"):
        assert layer[name].number > 20000
    bn = caffe_pb2.BatchNormParameter.DESCRIPTOR.fields_by_name
    for name in ("engine", "scale_bias", "scale_filler", "bias_filler"):
        assert bn[name].number > 1000
    assert caffe_pb2.NormalizeParameter.DESCRIPTOR.fields_by_name["eps"].number == 4


def test_defaults_follow_caffe():
    assert caffe_pb2.LRNParameter().alpha == 1.0 and caffe_pb2.LRNParameter().k == 1.0
    assert caffe_pb2.MVNParameter().eps == pytest.approx(1e-9)
    bn = caffe_pb2.BatchNormParameter()
    assert bn.moving_average_fraction == pytest.approx(0.999) and bn.eps == pytest.approx(1e-5)
    assert caffe_pb2.SolverParameter().clip_gradients == -1
    assert caffe_pb2.Normalization1Parameter().norm == caffe_pb2.Normalization1Parameter.L2


# SSD-Caffe's own numbers (weiliu89/caffe branch ssd, src/caffe/proto/caffe.proto), so SSD binaries load.
SSD_NUMBERS = [
    ("LayerParameter", "annotated_data_param", 200), ("LayerParameter", "multibox_loss_param", 201),
    ("LayerParameter", "permute_param", 202), ("LayerParameter", "prior_box_param", 203),
    ("LayerParameter", "detection_output_param", 204), ("LayerParameter", "detection_evaluate_param", 205),
    ("LayerParameter", "norm_param", 206), ("TransformationParameter", "resize_param", 8),
    ("TransformationParameter", "noise_param", 9), ("TransformationParameter", "emit_constraint", 10),
    ("TransformationParameter", "crop_h", 11), ("TransformationParameter", "crop_w", 12),
    ("TransformationParameter", "distort_param", 13), ("TransformationParameter", "expand_param", 14),
    ("SolverParameter", "show_per_class_result", 44), ("AnnotatedDatum", "annotation_group", 3),
    ("NormalizedBBox", "size", 8), ("MultiBoxLossParameter", "encode_variance_in_target", 16),
    ("MultiBoxLossParameter", "use_prior_for_nms", 23), ("DetectionOutputParameter", "keep_top_k", 7),
    ("DetectionOutputParameter", "variance_encoded_in_target", 8), ("PriorBoxParameter", "offset", 13),
    ("ResizeParameter", "height_scale", 8), ("DistortionParameter", "random_order_prob", 11),
]


@pytest.mark.parametrize("message, field, number", SSD_NUMBERS)
def test_ssd_field_numbers(message, field, number):
    assert getattr(caffe_pb2, message).DESCRIPTOR.fields_by_name[field].number == number


def test_ssd_solver_fields_yield_to_bvlc():
    # SSD-Caffe's eval_type/ap_version were 41/42, which BVLC gave to layer_wise_reduce/weights.
    solver = caffe_pb2.SolverParameter.DESCRIPTOR.fields_by_name
    assert solver["layer_wise_reduce"].number == 41 and solver["weights"].number == 42
    assert solver["eval_type"].number > 1000 and solver["ap_version"].number > 1000
    sp = caffe_pb2.SolverParameter()
    assert (sp.eval_type, sp.ap_version, sp.show_per_class_result) == ("classification", "Integral", False)
    assert caffe_pb2.MultiBoxLossParameter().code_type == caffe_pb2.PriorBoxParameter.CORNER
    assert caffe_pb2.DetectionOutputParameter().keep_top_k == -1
