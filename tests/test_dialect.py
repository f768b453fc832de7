"""MyCaffe's prototxt dialect (pycaffe_norm/dialect.py and its use by prototxt.parse_text)."""
import logging
from pathlib import Path

import pytest
from google.protobuf import text_format

from pycaffe_norm import prototxt
from pycaffe_norm.dialect import parse_tree
from pycaffe_norm.errors import PrototxtError
from pycaffe_norm.proto import caffe_pb2

ROOT = Path(__file__).resolve().parents[1]


def _net(text: str) -> caffe_pb2.NetParameter:
    return prototxt.parse_text(text, caffe_pb2.NetParameter(), "t.prototxt")


def test_tree_keeps_names_values_and_places():
    nodes = parse_tree('name: "n"\nlayer\n{\n   top: x\n   dim: [1, 2]\n}\n', "f")
    assert [n.name for n in nodes] == ["name", "layer"]
    assert (nodes[0].value, nodes[0].quoted) == ("n", True)
    layer = nodes[1]
    assert (layer.line, layer.column) == (2, 1)
    assert (layer.children[0].value, layer.children[0].quoted, layer.children[0].line) == ("x", False, 4)
    assert layer.children[1].values == [("1", False), ("2", False)]


@pytest.mark.parametrize("text", [
    'source: C:\\ProgramData\\MyCaffe\\test_data\\new',
    'source: "C:\\ProgramData\\MyCaffe\\test_data\\new"',
])
def test_windows_paths_keep_their_backslashes(text):
    param = _net('layer { name: "d" type: "ImageData" top: "d" top: "l" image_data_param { %s } } '
                 'enable_memory_stats: False' % text)
    assert param.layer[0].image_data_param.source == "C:\\ProgramData\\MyCaffe\\test_data\\new"


def test_unquoted_strings_bare_and_quoted_enums_and_capitalised_booleans():
    param = _net('name: Net\nlayer\n{\n   name: p\n   type: Pooling\n   pooling_param\n   {\n      pool: "AVE"\n'
                 '      global_pooling: True\n   }\n   bottom: x\n   top: p\n}\nforce_backward: False\n')
    lp = param.layer[0]
    assert (param.name, lp.name, lp.type, list(lp.bottom)) == ("Net", "p", "Pooling", ["x"])
    assert lp.pooling_param.pool == caffe_pb2.PoolingParameter.AVE and lp.pooling_param.global_pooling
    assert param.HasField("force_backward") and not param.force_backward


def test_solver_bare_strings():
    solver = prototxt.parse_text("base_lr: 0.01\nlr_policy: step\nregularization_type: L2\ntype: SGD\n"
                                 "snapshot_prefix: models/x/y\n", caffe_pb2.SolverParameter(), "s")
    assert (solver.lr_policy, solver.regularization_type, solver.type, solver.snapshot_prefix) == \
           ("step", "L2", "SGD", "models/x/y")


@pytest.mark.parametrize("path", sorted((ROOT / "models").rglob("*.prototxt")))
def test_caffe_files_read_the_same_through_the_dialect_reader(path):
    """The dialect reader gives exactly what protobuf's text format gives for Caffe's own files (a solver read as
    MyCaffe's also gets MyCaffe's defaults, so its fields are filled without them here)."""
    from pycaffe_norm.dialect import Problems, fill_message
    from pycaffe_norm.upgrade import mycaffe_extra_field, read_mycaffe_tree

    text = path.read_text()
    tree = parse_tree(text, str(path))
    if "solver" in path.name:
        strict = text_format.Parse(text, caffe_pb2.SolverParameter())
        tolerant = caffe_pb2.SolverParameter()
        problems = Problems(str(path))
        fill_message(tolerant, tree, problems, mycaffe_extra_field)
        assert not problems.items
    else:
        strict = text_format.Parse(text, caffe_pb2.NetParameter())
        tolerant = read_mycaffe_tree(tree, caffe_pb2.NetParameter(), str(path))
    assert tolerant == strict


def test_a_mycaffe_solver_read_directly_gets_caffe_type_names_and_mycaffe_defaults():
    solver = prototxt.parse_text("base_lr: 0.1\nlr_policy: fixed\ntype: ADAM\n", caffe_pb2.SolverParameter(), "s")
    assert solver.type == "Adam" and solver.rms_decay == pytest.approx(0.95) and not solver.snapshot_after_train


def test_syntax_error_names_file_line_and_column():
    with pytest.raises(PrototxtError) as e:
        _net('name: "x"\nlayer {\n  name: "a"\n  top "b"\n}\n')
    msg = str(e.value)
    assert msg.startswith("t.prototxt:4:") and "\n" not in msg


def test_unclosed_block_is_a_syntax_error():
    with pytest.raises(PrototxtError, match=r"t.prototxt:\d+:\d+"):
        _net('layer {\n  name: "a"\n')


def test_every_problem_is_reported_in_one_line():
    with pytest.raises(PrototxtError) as e:
        _net('layer\n{\n   name: "a"\n   type: "ReLU"\n   bogus_one: 1\n}\nlayer\n{\n   name: "b"\n   type: "ReLU"\n'
             '   relu_param\n   {\n      negative_slope: abc\n   }\n}\nlayer\n{\n   name: "c"\n   type: "Frobnicate"\n'
             '   frob_param\n   {\n   }\n}\nenable_memory_stats: False\n')
    msg = str(e.value)
    assert "\n" not in msg
    assert "t.prototxt:5:4" in msg and "bogus_one" in msg
    assert "t.prototxt:13:7" in msg and "negative_slope" in msg and "'abc'" in msg
    assert "Frobnicate" in msg and "'c'" in msg
    assert "frob_param" not in msg   # fields of a layer whose type is refused are not listed


def test_inactive_mycaffe_transform_blocks_are_ignored_active_ones_mapped_or_refused(caplog):
    inactive = ('layer { name: "d" type: "ImageData" top: "d" top: "l" image_data_param { source: x } '
                'transform_param { mask_param { option { active: False } boundary_left: 0 } '
                'distortion_param { active: True brightness_prob: 0 contrast_prob: 0 } '
                'label_mapping { option { active: False } } use_image_mean: True } }')
    with caplog.at_level(logging.INFO, logger="pycaffe_norm"):
        param = _net(inactive)
    assert "mask_param" in caplog.text and param.layer[0].transform_param.use_imagedb_mean
    active = inactive.replace("brightness_prob: 0", "brightness_prob: 0.5")
    assert _net(active).layer[0].transform_param.distort_param.brightness_prob == 0.5   # SSD-Caffe's name
    with pytest.raises(PrototxtError, match="mask_param is active"):
        _net(inactive.replace("option { active: False } boundary_left", "option { active: True } boundary_left"))


def test_known_mycaffe_solver_fields_are_ignored_with_a_log_line(caplog):
    with caplog.at_level(logging.INFO, logger="pycaffe_norm"):
        solver = prototxt.parse_text("base_lr: 0.1\nlr_policy: fixed\nsnapshot_include_weights: True\n"
                                     "accuracy_average_window: 0\n", caffe_pb2.SolverParameter(), "s")
    assert solver.base_lr == pytest.approx(0.1)
    assert "snapshot_include_weights" in caplog.text and "accuracy_average_window" in caplog.text
    with pytest.raises(PrototxtError, match="custom_trainer"):
        prototxt.parse_text("base_lr: 0.1\ncustom_trainer: RL.Trainer\n", caffe_pb2.SolverParameter(), "s")


def test_mixed_v1_and_current_layers_keep_file_order():
    param = _net('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 } } }\n'
                 'layers { name: "r" type: RELU bottom: "x" top: "y" blobs_lr: 1 }\n'
                 'layer { name: "s" type: "Sigmoid" bottom: "y" top: "z" }\n')
    assert [(lp.name, lp.type) for lp in param.layer] == [("in", "Input"), ("r", "ReLU"), ("s", "Sigmoid")]
    assert not param.layers


def test_mycaffe_spelling_of_ssd_blocks():
    param = _net('layer\n{\n   name: "l"\n   type: "MultiBoxLoss"\n   multiboxloss_param\n   {\n      num_classes: 3\n'
                 '      use_gpu: True\n   }\n}\nenable_memory_stats: False\n')
    assert param.layer[0].multibox_loss_param.num_classes == 3
