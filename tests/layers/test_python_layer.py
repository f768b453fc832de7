"""Python layers (``type: "Python"``): user classes run as in pycaffe, learn through the solver, and fail clearly."""
from __future__ import annotations

import importlib.util
import itertools
import json
import sys
import textwrap
import traceback

import numpy as np
import pytest

import pycaffe_norm as caffe
from pycaffe_norm.blob import Blob
from pycaffe_norm.cli import main
from pycaffe_norm.errors import NetError
from pycaffe_norm.layers import create_layer
from pycaffe_norm.layers.python_layer import PythonLayerError
from pycaffe_norm.proto import caffe_pb2
from tests.gradient_check import GradientChecker, make_blob

# User layers as a pycaffe user writes them, apart from the import line.
LAYERS = '''
import json

import numpy as np
import pycaffe_norm as caffe


class TimesTen(caffe.Layer):
    """Multiplies by ten (pycaffe's own test layer)."""

    def setup(self, bottom, top):
        if len(bottom) != 1:
            raise Exception("TimesTen takes one bottom")

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = 10 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = 10 * top[0].diff


class ElemwiseScalar(caffe.Layer):
    """Adds or multiplies a scalar, chosen by param_str (JSON)."""

    def setup(self, bottom, top):
        self.params = json.loads(self.param_str)
        self.value = self.params["value"]

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)

    def forward(self, bottom, top):
        if self.params["op"] == "add":
            top[0].data[...] = bottom[0].data + self.value
        else:
            top[0].data[...] = bottom[0].data * self.value

    def backward(self, top, propagate_down, bottom):
        factor = 1 if self.params["op"] == "add" else self.value
        bottom[0].diff[...] = factor * top[0].diff


class Phase(caffe.Layer):
    def setup(self, bottom, top):
        self.phase_at_setup = self.phase

    def reshape(self, bottom, top):
        top[0].reshape(1)

    def forward(self, bottom, top):
        top[0].data[...] = self.phase


class PerFeatureScale(caffe.Layer):
    """top = bottom * w, one learnable w per feature (axis 1), initialised to float(param_str)."""

    def setup(self, bottom, top):
        self.blobs.add_blob(bottom[0].shape[1])
        self.blobs[0].data[...] = float(self.param_str or 1)

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data * self.blobs[0].data

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[...] += (top[0].diff * bottom[0].data).sum(axis=0)
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff * self.blobs[0].data


class EuclideanLoss(caffe.Layer):
    """Caffe's pyloss example, scaled by the top diff (the loss weight) as Caffe's own EuclideanLoss is."""

    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("Need two inputs to compute distance.")

    def reshape(self, bottom, top):
        if bottom[0].count != bottom[1].count:
            raise Exception("Inputs must have the same dimension.")
        self.diff = np.zeros_like(bottom[0].data)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff ** 2) / bottom[0].num / 2.0

    def backward(self, top, propagate_down, bottom):
        for i in range(2):
            if propagate_down[i]:
                sign = 1 if i == 0 else -1
                bottom[i].diff[...] = sign * top[0].diff[0] * self.diff / bottom[i].num


class BuggySetup(caffe.Layer):
    def setup(self, bottom, top):
        int("not a number")

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass


class RaisesRuntimeError(BuggySetup):
    def setup(self, bottom, top):
        raise RuntimeError("from setup")


class BuggyForward(TimesTen):
    def forward(self, bottom, top):
        1 / 0


class NoForward(caffe.Layer):
    def reshape(self, bottom, top):
        pass


class SetupRaises(caffe.Layer):
    """Only setup: its exception must reach the caller before pcn asks for reshape()."""

    def setup(self, bottom, top):
        raise RuntimeError("setup refused")


class NotALayer:
    def setup(self, bottom, top):
        pass


not_a_class = 3
'''

_names = itertools.count()


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """Writes LAYERS (or given source) as a new module on sys.path; returns its name (unique: no import cache)."""
    made = []

    def write(source: str = LAYERS) -> str:
        name = "pcn_user_layers_%d" % next(_names)
        folder = tmp_path / "pythonpath"
        folder.mkdir(exist_ok=True)
        (folder / (name + ".py")).write_text(textwrap.dedent(source))
        monkeypatch.syspath_prepend(str(folder))
        made.append(name)
        return name

    yield write
    for name in made:
        sys.modules.pop(name, None)


def python_layer(module: str, cls: str, name: str = "py", bottoms=("data",), tops=("out",), param_str=None) -> str:
    wiring = "".join(' bottom: "%s"' % b for b in bottoms) + "".join(' top: "%s"' % t for t in tops)
    extra = "" if param_str is None else " param_str: %s" % json.dumps(param_str)  # a quoted prototxt string
    return ('layer { name: "%s" type: "Python"%s python_param { module: "%s" layer: "%s"%s } }\n'
            % (name, wiring, module, cls, extra))


def write_net(tmp_path, text: str, name: str = "net.prototxt") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


INPUT = 'layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 10 dim: 9 dim: 8 } } }\n'


def three_times_ten(module: str) -> str:
    return ('name: "pythonnet" force_backward: true\n' + INPUT
            + python_layer(module, "TimesTen", "one", ["data"], ["one"])
            + python_layer(module, "TimesTen", "two", ["one"], ["two"])
            + python_layer(module, "TimesTen", "three", ["two"], ["three"]))


# --- forward, backward, reshape (pycaffe's test_python_layer) ----------------------------------------------

def test_forward_backward_through_three_layers(tmp_path, user_module):
    module = user_module()
    net = caffe.Net(write_net(tmp_path, three_times_ten(module)), caffe.TRAIN)
    net.blobs["data"].data[...] = 8
    net.forward()
    assert np.all(net.blobs["three"].data == 8000)
    net.blobs["three"].diff[...] = 7
    net.backward()
    assert np.all(net.blobs["data"].diff == 7000)
    layer = net.layer_dict["two"]
    assert type(layer).__name__ == "TimesTen" and isinstance(layer, caffe.Layer)
    assert layer.type == "Python" and layer.name == "two" and list(layer.blobs) == []


def test_reshape_follows_the_input(tmp_path, user_module):
    net = caffe.Net(write_net(tmp_path, three_times_ten(user_module())), caffe.TRAIN)
    net.blobs["data"].reshape(4, 4, 4, 4)
    net.blobs["data"].data[...] = 1
    net.forward()
    assert all(b.shape == (4, 4, 4, 4) for b in net.blobs.values())
    assert np.all(net.blobs["three"].data == 1000)


def layer_from_text(module: str, cls: str, param_str: str = "", phase=caffe.TRAIN):
    p = caffe_pb2.LayerParameter(name="py", type="Python")
    p.python_param.module, p.python_param.layer, p.python_param.param_str = module, cls, param_str
    return create_layer(p, phase)


def test_gradient_times_ten(user_module):
    layer = layer_from_text(user_module(), "TimesTen")
    b, t = make_blob(np.random.RandomState(2).randn(2, 3, 4)), Blob((), dtype=np.float64)
    assert GradientChecker().check(layer, [b], [t]) == 24


def test_gradient_of_input_and_learnable_blob(user_module):
    layer = layer_from_text(user_module(), "PerFeatureScale", "1.5")
    b, t = make_blob(np.random.RandomState(3).randn(4, 5)), Blob((), dtype=np.float64)
    layer.initialize([b], [t])
    assert layer.blobs[0].dtype == np.float64 and layer.param_propagate_down == [True]
    layer.blobs[0].data[...] = np.random.RandomState(4).randn(5)
    n = GradientChecker().check(layer, [b], [t], already_set_up=True)
    assert n == 20 + 5


# --- param_str and phase --------------------------------------------------------------------------------------

def test_param_str_reaches_the_layer(tmp_path, user_module):
    module = user_module()
    layers = [("one", {"op": "add", "value": 2}), ("two", {"op": "mul", "value": 3}),
              ("three", {"op": "add", "value": 10})]
    text, bottom = "force_backward: true\n" + INPUT, "data"
    for name, params in layers:
        text += python_layer(module, "ElemwiseScalar", name, [bottom], [name], param_str=json.dumps(params))
        bottom = name
    net = caffe.Net(write_net(tmp_path, text), caffe.TRAIN)
    assert net.layer_dict["two"].param_str == json.dumps({"op": "mul", "value": 3})
    net.blobs["data"].data[...] = 8
    net.forward()
    assert np.all(net.blobs["three"].data == (8 + 2) * 3 + 10)
    net.blobs["three"].diff[...] = 7
    net.backward()
    assert np.all(net.blobs["data"].diff == 3 * 7)


def test_param_str_defaults_to_empty(user_module):
    assert layer_from_text(user_module(), "TimesTen").param_str == ""


@pytest.mark.parametrize("phase", [caffe.TRAIN, caffe.TEST])
def test_phase(tmp_path, user_module, phase):
    net = caffe.Net(write_net(tmp_path, python_layer(user_module(), "Phase", "phase", [], ["phase"])), phase)
    assert net.forward()["phase"][0] == phase
    assert net.layers[0].phase_at_setup == phase == net.layers[0].phase


# --- learnable blobs and the solver ------------------------------------------------------------------------------

SCALE_NET = """name: "scale"
layer { name: "input" type: "Input" top: "data" top: "target"
        input_param { shape { dim: 8 dim: 4 } shape { dim: 8 dim: 4 } } }
layer { name: "scale" type: "Python" bottom: "data" top: "scaled" param { lr_mult: 2 }
        python_param { module: "%s" layer: "PerFeatureScale" param_str: "0.5" } }
layer { name: "loss" type: "EuclideanLoss" bottom: "scaled" bottom: "target" top: "loss" }
"""


def test_sgd_updates_blobs_added_in_setup(tmp_path, user_module):
    net_path = write_net(tmp_path, SCALE_NET % user_module())
    solver_path = tmp_path / "solver.prototxt"
    solver_path.write_text('net: "%s"\nbase_lr: 0.1\nlr_policy: "fixed"\nmax_iter: 10\ndisplay: 0\n'
                           'snapshot_after_train: false\nsnapshot_prefix: "%s"\n' % (net_path, tmp_path / "snap"))
    solver = caffe.get_solver(str(solver_path))
    w = solver.net.params["scale"][0]
    assert w.shape == (4,) and any(p is w for p in solver.net.learnable_params)
    rng = np.random.RandomState(5)
    for _ in range(3):
        x, target = rng.randn(8, 4), rng.randn(8, 4)
        solver.net.blobs["data"].data[...] = x
        solver.net.blobs["target"].data[...] = target
        before = w.data.astype(np.float64)
        solver.step(1)
        grad = ((x * before - target) * x).sum(axis=0) / 8  # d/dw of sum((xw - t)^2) / (2N)
        np.testing.assert_allclose(w.data, before - 0.1 * 2 * grad, rtol=1e-5, atol=1e-6)
    # The learned blob is saved and loaded like any layer's parameters.
    solver.net.save(str(tmp_path / "scale.caffemodel"))
    test_net = caffe.Net(net_path, str(tmp_path / "scale.caffemodel"), caffe.TEST)
    np.testing.assert_array_equal(test_net.params["scale"][0].data, w.data)


def test_add_blob_takes_integer_shape(user_module):
    layer = layer_from_text(user_module(), "TimesTen")
    layer.blobs.add_blob(2, 3)
    assert layer.blobs[0].shape == (2, 3) and not layer.blobs[0].data.any()
    with pytest.raises(TypeError, match="integers"):
        layer.blobs.add_blob((2, 3))


# --- a Python loss layer ----------------------------------------------------------------------------------------

LOSS_NET = """force_backward: true
layer { name: "input" type: "Input" top: "pred" top: "label"
        input_param { shape { dim: 5 dim: 3 } shape { dim: 5 dim: 3 } } }
layer { name: "loss" type: "%s" bottom: "pred" bottom: "label" top: "loss" %s %s }
"""


@pytest.mark.parametrize("weight", [1, 2])
def test_python_loss_with_loss_weight_matches_builtin(tmp_path, user_module, weight):
    module = user_module()
    py_param = 'python_param { module: "%s" layer: "EuclideanLoss" }' % module
    weight_text = "loss_weight: %d" % weight
    python = caffe.Net(write_net(tmp_path, LOSS_NET % ("Python", weight_text, py_param), "py.prototxt"), caffe.TRAIN)
    builtin = caffe.Net(write_net(tmp_path, LOSS_NET % ("EuclideanLoss", weight_text, ""), "b.prototxt"), caffe.TRAIN)
    rng = np.random.RandomState(6)
    pred, label = rng.randn(5, 3), rng.randn(5, 3)
    losses = []
    for net in (python, builtin):
        net.blobs["pred"].data[...], net.blobs["label"].data[...] = pred, label
        losses.append(net.forward_loss())
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-6)
    for net in (python, builtin):
        net.backward()
    for name in ("pred", "label"):
        np.testing.assert_allclose(python.blobs[name].diff, builtin.blobs[name].diff, rtol=1e-5, atol=1e-7)
    assert python.blob_loss_weights["loss"] == weight


def test_python_loss_needs_explicit_loss_weight(tmp_path, user_module):
    """As in Caffe: without loss_weight a Python layer's top is an output, not a loss."""
    py_param = 'python_param { module: "%s" layer: "EuclideanLoss" }' % user_module()
    net = caffe.Net(write_net(tmp_path, LOSS_NET % ("Python", "", py_param)), caffe.TRAIN)
    net.blobs["pred"].data[...] = 1
    assert net.blob_loss_weights["loss"] == 0 and net.forward_loss() == 0.0
    assert net.forward()["loss"][0] == pytest.approx(0.5 * 3)


# --- errors -----------------------------------------------------------------------------------------------------

def net_with(tmp_path, module: str, cls: str) -> str:
    return write_net(tmp_path, INPUT + python_layer(module, cls, "mine"))


def test_missing_module_names_module_class_and_pythonpath(tmp_path):
    with pytest.raises(NetError, match=r"layer 'mine' \(Python\).*'no_such_pcn_module'.*'Layer0'.*PYTHONPATH"):
        caffe.Net(net_with(tmp_path, "no_such_pcn_module", "Layer0"), caffe.TEST)


def test_missing_class_lists_the_module_layers(tmp_path, user_module):
    module = user_module()
    with pytest.raises(NetError, match=r"has no class 'Missing'.*TimesTen"):
        caffe.Net(net_with(tmp_path, module, "Missing"), caffe.TEST)


@pytest.mark.parametrize("cls", ["NotALayer", "not_a_class"])
def test_not_a_layer_subclass(tmp_path, user_module, cls):
    with pytest.raises(NetError, match=r"is not a subclass of caffe.Layer.*import pycaffe_norm as caffe"):
        caffe.Net(net_with(tmp_path, user_module(), cls), caffe.TEST)


def test_class_without_forward(tmp_path, user_module):
    with pytest.raises(NetError, match=r"does not define forward\(\)"):
        caffe.Net(net_with(tmp_path, user_module(), "NoForward"), caffe.TEST)


def test_exception_from_setup_reaches_the_caller(tmp_path, user_module):
    # As in pycaffe: setup runs first, so its own exception arrives, not a complaint about the missing reshape().
    with pytest.raises(RuntimeError, match="setup refused"):
        caffe.Net(net_with(tmp_path, user_module(), "SetupRaises"), caffe.TEST)


@pytest.fixture
def no_caffe_alias(monkeypatch):
    """Runs a test as if BVLC's pycaffe were not installed, and drops pcn's ``caffe`` aliases afterwards."""
    for name in list(sys.modules):
        if name == "caffe" or name.startswith("caffe."):
            monkeypatch.delitem(sys.modules, name)
    yield
    for name in list(sys.modules):
        if name == "caffe" or name.startswith("caffe."):
            del sys.modules[name]


def test_pycaffe_layer_file_with_import_caffe_runs_unchanged(tmp_path, user_module, no_caffe_alias, caplog):
    if importlib.util.find_spec("caffe") is not None:
        pytest.skip("BVLC pycaffe is installed: 'import caffe' loads it")
    pycaffe_imports = "import caffe\nfrom caffe.proto import caffe_pb2"
    module = user_module(LAYERS.replace("import pycaffe_norm as caffe", pycaffe_imports))
    with caplog.at_level("WARNING", logger="pycaffe_norm"):
        net = caffe.Net(write_net(tmp_path, three_times_ten(module)), caffe.TRAIN)
    assert any("imports 'caffe'" in r.getMessage() for r in caplog.records)
    net.blobs["data"].data[...] = 2
    net.forward()
    assert np.all(net.blobs["three"].data == 2000)
    assert sys.modules["caffe"] is caffe and sys.modules["caffe.proto.caffe_pb2"] is caffe_pb2


def test_module_importing_a_caffe_part_pcn_lacks_gets_a_hint(tmp_path, user_module, no_caffe_alias):
    module = user_module("import caffe.detector\n\n\nclass L(caffe.Layer):\n    pass\n")
    with pytest.raises(NetError, match=r"imports 'caffe.detector'.*import pycaffe_norm as caffe"):
        caffe.Net(net_with(tmp_path, module, "L"), caffe.TEST)


@pytest.mark.parametrize("field", ["module", "layer"])
def test_unset_or_malformed_python_param(tmp_path, field):
    text = INPUT + 'layer { name: "mine" type: "Python" bottom: "data" top: "out" python_param { %s: "m" } }' % (
        "layer" if field == "module" else "module")
    with pytest.raises(NetError, match=r"python_param.%s is not set" % field):
        caffe.Net(write_net(tmp_path, text), caffe.TEST)
    with pytest.raises(NetError, match="is not a Python name"):
        caffe.Net(net_with(tmp_path, "../evil" if field == "module" else "m", "x; y"), caffe.TEST)


def test_user_bugs_keep_their_type_and_traceback(tmp_path, user_module):
    module = user_module()
    with pytest.raises(PythonLayerError, match=r"'mine' .*BuggySetup.*ValueError") as info:
        caffe.Net(net_with(tmp_path, module, "BuggySetup"), caffe.TEST)
    assert isinstance(info.value.__cause__, ValueError)
    assert traceback.extract_tb(info.value.__cause__.__traceback__)[-1].filename.endswith(module + ".py")
    with pytest.raises(RuntimeError, match="from setup"):  # as pycaffe's test_exception
        caffe.Net(net_with(tmp_path, module, "RaisesRuntimeError"), caffe.TEST)
    net = caffe.Net(net_with(tmp_path, module, "BuggyForward"), caffe.TEST)
    with pytest.raises(ZeroDivisionError):
        net.forward()


# --- the command line --------------------------------------------------------------------------------------------

CLI_NET = """name: "cli"
layer { name: "data" type: "DummyData" top: "data" top: "target"
        dummy_data_param { shape { dim: 8 dim: 4 } shape { dim: 8 dim: 4 }
                           data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 } } }
layer { name: "scale" type: "Python" bottom: "data" top: "scaled"
        python_param { module: "%s" layer: "%s" param_str: "0.5" } }
layer { name: "loss" type: "EuclideanLoss" bottom: "scaled" bottom: "target" top: "loss" }
"""


def cli_solver(tmp_path, module: str, cls: str = "PerFeatureScale") -> str:
    net = write_net(tmp_path, CLI_NET % (module, cls))
    path = tmp_path / "solver.prototxt"
    path.write_text('net: "%s"\nbase_lr: 0.01\nlr_policy: "fixed"\nmax_iter: 3\ndisplay: 1\nsolver_mode: CPU\n'
                    'snapshot_after_train: true\nsnapshot_prefix: "%s"\n' % (net, tmp_path / "cli"))
    return str(path)


def test_cli_train_and_test(tmp_path, user_module, capsys):
    module = user_module()
    assert main(["train", "--solver", cli_solver(tmp_path, module)]) == 0
    weights = tmp_path / "cli_iter_3.caffemodel"
    assert weights.exists()
    assert main(["test", "--model", str(tmp_path / "net.prototxt"), "--weights", str(weights),
                 "--iterations", "2"]) == 0
    assert "loss = " in capsys.readouterr().err


def test_cli_config_error_is_one_line(tmp_path, capsys):
    assert main(["train", "--solver", cli_solver(tmp_path, "no_such_pcn_module")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "pcn: error: layer 'scale' (Python)" in err and "PYTHONPATH" in err


def test_cli_user_bug_keeps_traceback(tmp_path, user_module):
    with pytest.raises(ZeroDivisionError):
        main(["train", "--solver", cli_solver(tmp_path, user_module(), "BuggyForward")])
