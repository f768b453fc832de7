"""MyCaffe's optional SSD transform blocks (option { active }) read as SSD-Caffe's fields by `pcn port`."""
import logging
from pathlib import Path

import numpy as np
import pytest

import pycaffe_norm as caffe
from pycaffe_norm import prototxt
from pycaffe_norm.cli import main
from pycaffe_norm.errors import PrototxtError
from pycaffe_norm.proto import caffe_pb2

SRC = Path(__file__).parent / "mycaffe" / "ssd_transform_mycaffe.prototxt"


def _ported(tmp_path, text=None):
    src = SRC
    if text is not None:
        src = tmp_path / "in.prototxt"
        src.write_text(text)
    out = tmp_path / "out.prototxt"
    assert main(["port", str(src), "-o", str(out)]) == 0
    return prototxt.read_text(str(out), caffe_pb2.NetParameter(), "net")


def _net(text):
    return prototxt.parse_text(text, caffe_pb2.NetParameter(), "t.prototxt")


def _transform(blocks: str) -> str:
    return ('layer { name: "d" type: "AnnotatedData" top: "d" top: "l" data_param { source: "x" batch_size: 1 } '
            'transform_param { %s } }' % blocks)


def test_active_blocks_take_ssd_caffe_names_inactive_ones_are_dropped(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="pycaffe_norm"):
        param = _ported(tmp_path)
    tp = param.layer[0].transform_param
    # distortion: option says off, the bare active (read after it by MyCaffe) says on
    assert tp.HasField("distort_param")
    d = tp.distort_param
    assert (d.brightness_prob, d.brightness_delta, d.contrast_prob) == (0.25, 16, 0.5)
    assert (d.contrast_lower, d.contrast_upper) == (0.75, 1.25)
    assert (d.saturation_prob, d.saturation_lower, d.saturation_upper) == (0.5, pytest.approx(0.6),
                                                                         pytest.approx(1.4))
    assert d.hue_prob == 0 and d.random_order_prob == 0
    assert "use_gpu" in caplog.text and "random_seed" in caplog.text
    # expansion: MyCaffe reads only option { active }, so the bare "active: False" changes nothing
    assert tp.HasField("expand_param")
    assert (tp.expand_param.prob, tp.expand_param.max_expand_ratio) == (0.5, 2)
    # resize: active by its bare flag; MyCaffe reads every pad_value as the first one
    assert tp.HasField("resize_param")
    r = tp.resize_param
    assert (r.height, r.width, r.prob) == (32, 32, 1) and list(r.pad_value) == [7, 7]
    assert list(r.interp_mode) == [caffe_pb2.ResizeParameter.LINEAR]
    # inactive blocks act in neither MyCaffe nor pcn
    assert not tp.HasField("noise_param") and not tp.HasField("emit_constraint")
    assert "noise_param is inactive" in caplog.text and "mask_param is inactive" in caplog.text
    # anno_type -1 is MyCaffe's NONE: the datum's own type, SSD-Caffe's unset field
    assert not param.layer[0].annotated_data_param.HasField("anno_type")
    assert param.layer[-1].multibox_loss_param.num_classes == 3


def test_switch_rules_follow_each_block(caplog):
    # DistortionParameter reads the bare active after option: here it turns the block off
    tp = _net(_transform("distortion_param { option { active: True } active: False brightness_prob: 1 }")
              ).layer[0].transform_param
    assert not tp.HasField("distort_param")
    # a MyCaffe-only block without any switch is MyCaffe's default: inactive
    tp = _net(_transform("expansion_param { prob: 1 max_expand_ratio: 3 }")).layer[0].transform_param
    assert not tp.HasField("expand_param")
    # an SSD-Caffe block without a switch keeps SSD-Caffe's meaning (present means on)
    tp = _net(_transform("expansion_param { option { active: False } } "
                         "emit_constraint { emit_type: MIN_OVERLAP emit_overlap: 0.5 }")).layer[0].transform_param
    assert tp.emit_constraint.emit_type == caffe_pb2.EmitConstraint.MIN_OVERLAP
    # an active emit_constraint keeps its fields, without the switch
    tp = _net(_transform("emit_constraint { option { active: True } emit_type: MIN_OVERLAP emit_overlap: 0.25 }")
              ).layer[0].transform_param
    assert tp.emit_constraint.emit_overlap == 0.25


def test_anno_type_numbers():
    text = _transform("") + ' layer { name: "e" type: "ReLU" bottom: "d" top: "e" }'
    text = text.replace('batch_size: 1 }', 'batch_size: 1 } annotated_data_param { anno_type: 0 }', 1)
    param = _net(text)
    assert param.layer[0].annotated_data_param.anno_type == caffe_pb2.AnnotatedDatum.BBOX


@pytest.mark.parametrize("block, words", [
    ("noise_param { option { active: True } prob: 0.5 decolorize: True }", "noise_param is active"),
    ("mask_param { option { active: True } boundary_left: 2 }", "mask_param is active"),
])
def test_active_blocks_pcn_lacks_are_refused_by_name(block, words):
    with pytest.raises(PrototxtError, match=words):
        _net(_transform(block))


def test_ported_net_runs_forward_and_backward_with_input_data(tmp_path):
    param = _ported(tmp_path)
    data = param.layer[0]
    assert data.type == "AnnotatedData"
    run = caffe_pb2.NetParameter(name=param.name)
    inp = run.layer.add(name="data", type="Input", top=["data", "label"])
    inp.input_param.shape.add(dim=[2, 3, 32, 32])
    inp.input_param.shape.add(dim=[1, 1, 3, 8])
    run.layer.extend(param.layer[1:])
    param = run
    path = tmp_path / "run.prototxt"
    path.write_text(str(param))
    net = caffe.Net(str(path), caffe.TRAIN)
    rs = np.random.RandomState(0)
    net.blobs["data"].data[...] = rs.randn(2, 3, 32, 32)
    net.blobs["label"].data[...] = [[[[0, 1, 0, 0.1, 0.1, 0.5, 0.5, 0], [0, 2, 1, 0.4, 0.3, 0.9, 0.8, 0],
                                      [1, 1, 0, 0.2, 0.2, 0.7, 0.9, 0]]]]
    out = net.forward()
    assert np.isfinite(out["mbox_loss"]).all() and float(out["mbox_loss"]) > 0
    net.backward()
    grads = [p.diff for ps in net.params.values() for p in ps]
    assert grads and all(np.isfinite(g).all() for g in grads)
    assert any(np.abs(g).sum() > 0 for g in grads)
