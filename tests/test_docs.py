"""Every snippet in README.md and docs/*.md runs as written: each ```python block runs in a fresh folder that holds
the repository's models/ and data/ and the files the block names; each command synopsis names a pcn subcommand,
tool and options that exist."""
from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

import pycaffe_norm as caffe
from pycaffe_norm.cli import build_parser

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)


def blocks(language: str):
    found = []
    for path in DOCS:
        text = path.read_text()
        for m in FENCE.finditer(text):
            if m.group(1) == language:
                line = text[:m.start()].count("\n") + 1
                found.append(pytest.param(m.group(2), id="%s:%d" % (path.relative_to(ROOT), line)))
    return found


# A small ImageNet-style deploy net for docs/pycaffe.md's classification example (3-channel input, a "prob" top).
DEPLOY = """name: "tiny_imagenet"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 10 dim: 3 dim: 32 dim: 32 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 5 stride: 4 weight_filler { type: "xavier" } } }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
        inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def workspace(tmp_path: pathlib.Path) -> pathlib.Path:
    """models/ and data/ of the repository, the LeNet snapshot the README's `pcn train` writes (a stand-in with the
    fillers' weights: training 2,000 iterations belongs to the README's own command, not to a unit test), and the
    files of the classification example."""
    for folder in ("models", "data"):
        (tmp_path / folder).symlink_to(ROOT / folder)
    (tmp_path / "snapshots").mkdir()
    caffe.set_random_seed(3)
    caffe.Net(str(ROOT / "models" / "lenet" / "lenet_deploy.prototxt"), caffe.TEST).save(
        str(tmp_path / "snapshots" / "lenet_iter_2000.caffemodel"))
    (tmp_path / "deploy.prototxt").write_text(DEPLOY)
    caffe.Net(str(tmp_path / "deploy.prototxt"), caffe.TEST).save(str(tmp_path / "weights.caffemodel"))
    try:
        from PIL import Image
    except ImportError:
        pass
    else:
        pixels = np.random.RandomState(0).randint(0, 256, (300, 400, 3)).astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / "cat.jpg")
    return tmp_path


def needs(code: str) -> None:
    """Skips a snippet whose optional dependency is not installed."""
    for module, extra in (("onnxruntime", "onnx"), ("onnx", "onnx"), ("PIL", "image")):
        if re.search(r"^\s*import %s\b|^\s*from %s\b" % (module, module), code, re.M) or \
                (module == "PIL" and "load_image" in code):
            pytest.importorskip(module, reason="the snippet needs pycaffe_norm[%s]" % extra)


@pytest.mark.parametrize("code", blocks("python"))
def test_python_snippet_runs(code, tmp_path):
    needs(code)
    cwd = workspace(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT), GLOG_minloglevel="1")
    run = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]


def test_readme_weights_path_is_where_training_writes():
    solver = (ROOT / "models" / "lenet" / "lenet_solver.prototxt").read_text()
    prefix = re.search(r'snapshot_prefix: "([^"]+)"', solver).group(1)
    max_iter = re.search(r"max_iter: (\d+)", solver).group(1)
    readme = (ROOT / "README.md").read_text()
    assert '"%s_iter_%s.caffemodel"' % (prefix, max_iter) in readme


def synopsis_lines():
    lines = []
    for param in blocks(""):
        for line in param.values[0].splitlines():
            command = line.split("#")[0].strip()
            if command.startswith(("pcn ", "python tools/")):
                lines.append(pytest.param(command, id="%s %s" % (param.id, command.split(" [")[0][:40])))
    return lines


def _subparser(parser, names):
    for name in names:
        actions = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
        if not actions or name not in actions[0].choices:
            return parser, name
        parser = actions[0].choices[name]
    return parser, None


@pytest.mark.parametrize("command", synopsis_lines())
def test_command_synopsis_names_real_options(command):
    options = re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", command)
    if command.startswith("pcn "):
        words = [w for w in command.split()[1:] if not w.startswith(("-", "[", "<")) and w.islower()]
        parser, unknown = _subparser(build_parser(), words[:2])
        if unknown is not None and unknown in ("train", "test", "time", "export", "draw", "parse-log", "plot"):
            pytest.fail("pcn has no subcommand %r" % unknown)
        known = {s for a in parser._actions for s in a.option_strings}
    else:
        tool = ROOT / command.split()[1]
        assert tool.is_file(), tool
        source = tool.read_text()
        known = {o for o in options if '"%s"' % o in source or "'%s'" % o in source}
    missing = [o for o in options if o not in known]
    assert not missing, "%s: no option %s" % (command, ", ".join(missing))


def _types(text: str):
    return set(re.findall(r"`([A-Za-z0-9]+)`", text))


def _reference_types(folder: str, source: str):
    import json

    found = set()
    for case in (ROOT / "tests" / folder).glob("*/case.json"):
        meta = json.loads(case.read_text())
        if meta["source"] == source:
            found.update(meta["layer_types"])
    return found


def test_readme_fidelity_lists_say_exactly_how_each_type_is_checked():
    section = (ROOT / "README.md").read_text().split("## Fidelity\n")[1].split("\n## ")[0]
    bullets = {b.split("**")[1]: b.split("\n\n")[0] for b in section.split("\n* ")[1:]}
    listed = {title: _types(text.split(":", 1)[1]) for title, text in bullets.items()}
    bvlc = _reference_types("reference", "bvlc-caffe")
    ssd = _reference_types("reference_ssd", "ssd-caffe")
    formula = _reference_types("reference", "formula")
    assert listed["Compared with BVLC Caffe's output"] == bvlc
    assert listed["Compared with SSD-Caffe's output"] == ssd - bvlc
    assert listed["Compared with float64 formulas only"] - {"Normalize"} == formula - bvlc - ssd
    pytorch = listed.get("Compared with PyTorch's CPU output", set())
    assert pytorch <= set(caffe.layer_type_list()) - bvlc - ssd - formula
    rest = set(caffe.layer_type_list()) - bvlc - ssd - formula - pytorch
    unit_tested = listed["Checked only against formulas and hand-computed values in their unit tests"]
    assert unit_tested <= rest, "README.md's Fidelity section names types that are not registered or are " \
        "compared with Caffe: %s" % sorted(unit_tested - rest)
    if rest - unit_tested:  # a layer type being added right now: a reminder, not a failure of someone's work
        warnings.warn("README.md's Fidelity section does not name %s yet" % sorted(rest - unit_tested))


def test_layer_package_docstring_lists_every_type_by_module():
    import pycaffe_norm.layers as layers
    from pycaffe_norm.layers import base

    listed = {}
    for item in re.split(r"\n- ", layers.__doc__)[1:]:
        module, names = re.match(r"``(\w+)``: ([^(]*)", item.replace("\n", " ")).groups()
        listed[module] = {n.strip() for n in names.split(",") if n.strip()}
    registered = {}
    for name in caffe.layer_type_list():
        registered.setdefault(base.layer_class(name).__module__.rsplit(".", 1)[1], set()).add(name)
    for module, names in listed.items():
        assert names <= registered.get(module, set()), \
            "pycaffe_norm/layers/__init__.py's docstring lists %s under %s" % (sorted(names), module)
    missing = {m: sorted(n - listed.get(m, set())) for m, n in registered.items() if n - listed.get(m, set())}
    if missing:  # a layer module being written right now: a reminder, not a failure of someone's work
        warnings.warn("pycaffe_norm/layers/__init__.py's docstring does not list %s yet" % missing)
