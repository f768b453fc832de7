"""``pcn port`` and ``pcn upgrade``: MyCaffe and old BVLC files rewritten as canonical, current BVLC prototxt.

``port`` reads a net or solver in any form pcn reads (BVLC V0/V1/current, MyCaffe's dialect), maps MyCaffe's
spellings and fields (pycaffe_norm.upgrade), turns MyCaffe's image-database Data layers into LMDB Data layers,
writes MyCaffe's defaults out (fillers, LRN, solver settings) and writes protobuf's text format. When it cannot
port a file it raises one :class:`PcnError` naming every unsupported layer type and field. Porting its output
again gives the same output. ``upgrade`` is the same for BVLC's V0/V1 nets and old solvers (Caffe's
upgrade_net_proto_text and upgrade_solver_proto_text); a file that needs none is written back unchanged in
content.
"""
from __future__ import annotations

import logging
import os
from typing import Dict, List, Optional, Tuple

from google.protobuf import text_format

from . import dialect, prototxt, upgrade
from .errors import NetError, PcnError, PrototxtError
from .proto import caffe_pb2

log = logging.getLogger("pycaffe_norm")

# The converter that makes the database a MyCaffe dataset name stands for.
CONVERTERS = {"MNIST": "tools/make_mnist_lmdb.py"}
DEFAULT_CONVERTER = "tools/convert_imageset.py"
_SOLVER_ONLY = {f.name for f in caffe_pb2.SolverParameter.DESCRIPTOR.fields} - {
    f.name for f in caffe_pb2.NetParameter.DESCRIPTOR.fields}


# ----------------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------------

def file_kind(text: str, source: str) -> str:
    """"net" or "solver", from the names at the top level of the file."""
    try:
        names = {node.name for node in dialect.parse_tree(text, source)}
    except PrototxtError:
        names = set()
    extra = {"snapshot_include_weights", "snapshot_include_state", "adamw_decay", "custom_trainer"}
    solver = names & (_SOLVER_ONLY | extra)
    return "solver" if solver and not names & {"layer", "layers"} else "net"


def _read(path: str, msg) -> Tuple[object, bool, dict, list]:
    """``msg`` read from ``path`` with every problem collected: (msg, read as MyCaffe's dialect, bad layer
    types, field problems)."""
    data = prototxt._read_bytes(path, "prototxt file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise PrototxtError("%s: not a text prototxt (is it a binary file?)" % path) from None
    try:
        text_format.Parse(text, msg)
        if not prototxt._needs_dialect(text, msg):
            return msg, False, {}, []
    except text_format.ParseError as e:
        strict_error = prototxt._strict_error(e, path)
    else:
        strict_error = None
    msg.Clear()
    try:
        tree = dialect.parse_tree(text, path)
    except PrototxtError:
        if strict_error is None:
            raise
        raise strict_error from None
    bad_types, problems = upgrade.collect_mycaffe_tree(tree, msg, path)
    return msg, True, bad_types, problems


# ----------------------------------------------------------------------------------------------------
# nets
# ----------------------------------------------------------------------------------------------------

def parse_data_args(items: List[str]) -> Dict[str, str]:
    """``--data NAME=PATH`` arguments as a dict."""
    out = {}
    for item in items or ():
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise PcnError("--data takes NAME=PATH (a MyCaffe dataset or source name and a database), not %r" % item)
        out[name] = path
    return out


def _split_database(folder: str, split: str) -> Optional[str]:
    """The one database under ``folder`` whose name holds ``split`` ("train"/"test"), or None."""
    if not os.path.isdir(folder):
        return None
    found = [os.path.join(folder, n) for n in sorted(os.listdir(folder))
             if split in n.lower() and os.path.isdir(os.path.join(folder, n))]
    return found[0] if len(found) == 1 else None


def _data_source(source: str, data: Dict[str, str], lp) -> str:
    """Where the LMDB for MyCaffe's image-database ``source`` is: ``--data SOURCE=PATH``, or ``--data
    DATASET=FOLDER`` holding one *train* and one *test* database, or a placeholder named after the dataset."""
    dataset = upgrade.dataset_name(source)
    split = "test" if source.endswith(".testing") else "train"
    if source in data:
        return data[source]
    if dataset in data:
        path = data[dataset]
        if source == dataset or not os.path.isdir(path) or _looks_like_database(path):
            return path
        found = _split_database(path, split)
        if found is None:
            raise PcnError("--data %s=%s: the folder holds no single database whose name contains %r (for source "
                           "%r); give --data %s=PATH" % (dataset, path, split, source, source))
        return found
    placeholder = "%s_%s_lmdb" % (dataset.lower().replace("-", "_").replace(" ", "_"), split)
    log.warning("layer %r: MyCaffe's image database %r has no --data %s=PATH; the ported Data layer reads the "
                "placeholder %r: make it with %s or give --data", lp.name, source, dataset, placeholder,
                CONVERTERS.get(dataset.upper(), DEFAULT_CONVERTER))
    return placeholder


def _looks_like_database(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "data.mdb")) or os.path.isfile(os.path.join(path, "CURRENT"))


def _mean_file(dataset: str, data: Dict[str, str], lp) -> str:
    for key in (dataset + ".mean", dataset + "-mean"):
        if key in data:
            return data[key]
    folder = data.get(dataset)
    if folder and os.path.isdir(folder):
        means = [n for n in sorted(os.listdir(folder)) if n.endswith(".binaryproto") and "mean" in n.lower()]
        if len(means) == 1:
            return os.path.join(folder, means[0])
    placeholder = "%s_mean.binaryproto" % dataset.lower().replace("-", "_")
    log.warning("layer %r: use_imagedb_mean has no --data %s.mean=PATH; the ported layer reads the placeholder %r: "
                "make it with tools/compute_image_mean.py", lp.name, dataset, placeholder)
    return placeholder


def _label_source(source: str, data: Dict[str, str], lp) -> str:
    """The label database of MyCaffe's ``label_type: MULTIPLE`` source: ``--data SOURCE.label=PATH``, the one
    database under the ``--data DATASET`` folder whose name holds the split and "label", or a placeholder."""
    dataset = upgrade.dataset_name(source)
    split = "test" if source.endswith(".testing") else "train"
    if source + ".label" in data:
        return data[source + ".label"]
    folder = data.get(dataset)
    if folder and os.path.isdir(folder):
        found = [os.path.join(folder, n) for n in sorted(os.listdir(folder))
                 if split in n.lower() and "label" in n.lower() and os.path.isdir(os.path.join(folder, n))]
        if len(found) == 1:
            return found[0]
    placeholder = "%s_%s_label_lmdb" % (dataset.lower().replace("-", "_").replace(" ", "_"), split)
    log.warning("layer %r: the label arrays of %r (label_type MULTIPLE) have no --data %s.label=PATH; the ported "
                "label layer reads the placeholder %r: make it with %s (one label image per image, in the same "
                "order)", lp.name, source, source, placeholder, DEFAULT_CONVERTER)
    return placeholder


def _split_label_layer(lp, source: str, data: Dict[str, str]):
    """MyCaffe's label_type MULTIPLE as Caffe's FCN examples feed it: a second Data layer reading a label database
    aligned with the image database (no transform: MyCaffe does not transform these labels)."""
    if lp.transform_param.crop_size or lp.transform_param.mirror:
        raise PcnError("layer %r: data_param.label_type MULTIPLE with crop_size or mirror: random crops and mirrors "
                       "cannot be kept aligned with a separate label database" % lp.name)
    label = caffe_pb2.LayerParameter(name=lp.name + "_label", type="Data", top=[lp.top[1]])
    label.include.extend(lp.include)
    label.exclude.extend(lp.exclude)
    label.data_param.source = _label_source(source, data, lp)
    label.data_param.batch_size = lp.data_param.batch_size
    label.data_param.backend = caffe_pb2.DataParameter.LMDB
    del lp.top[1:]
    log.info("layer %r: label_type MULTIPLE (MyCaffe) read from the label database %r by layer %r", lp.name,
             label.data_param.source, label.name)
    return label


def _imagedb_to_lmdb(param: caffe_pb2.NetParameter, data: Dict[str, str]) -> None:
    """MyCaffe's image-database Data layers become LMDB Data layers (and their image-database mean a mean_file)."""
    layers = []
    for lp in param.layer:
        layers.append(lp)
        if not (lp.HasField("data_param") and lp.data_param.backend == caffe_pb2.DataParameter.IMAGEDB):
            continue
        dp = lp.data_param
        source = dp.source
        if dp.label_type == caffe_pb2.DataParameter.MULTIPLE:
            if len(lp.top) > 1:
                layers.append(_split_label_layer(lp, source, data))
            dp.ClearField("label_type")
        dp.source = _data_source(source, data, lp)
        dp.backend = caffe_pb2.DataParameter.LMDB
        dp.ClearField("enable_random_selection")
        tp = lp.transform_param
        if tp.use_imagedb_mean:
            tp.mean_file = _mean_file(upgrade.dataset_name(source), data, lp)
            tp.ClearField("use_imagedb_mean")
        log.info("layer %r: MyCaffe image database %r -> LMDB %r", lp.name, source, dp.source)
    del param.layer[:]
    param.layer.extend(layers)


def _freeze(lp: caffe_pb2.LayerParameter) -> None:
    """MyCaffe's freeze_learning as BVLC writes it: lr_mult 0 and decay_mult 0 on every parameter blob."""
    if not lp.freeze_learning:
        lp.ClearField("freeze_learning")
        return
    n = upgrade.param_blob_count(lp)
    if n is None:
        log.warning("layer %r (%s): freeze_learning kept as written (pcn reads it; BVLC Caffe does not)", lp.name,
                    lp.type)
        return
    while len(lp.param) < n:
        lp.param.add()
    for spec in lp.param:
        spec.lr_mult = 0
        spec.decay_mult = 0
    lp.ClearField("freeze_learning")


def _clean_mycaffe_layer(lp: caffe_pb2.LayerParameter) -> None:
    """Drops what upgrade read and kept but changes nothing in the ported file (engines, cuDNN settings)."""
    for name in ("connect_loss_event", "group_start", "max_bottom_count", "use_halfsize"):
        lp.ClearField(name)
    for block in ("batch_norm_param", "dropout_param", "relu_param", "sigmoid_param", "tanh_param",
                  "softmax_param"):
        if lp.HasField(block):
            sub = getattr(lp, block)
            for field in sub.DESCRIPTOR.fields:
                if field.number > 1000 and field.name == "engine":
                    sub.ClearField("engine")
    if lp.HasField("dropout_param") and lp.dropout_param.HasField("active"):
        lp.dropout_param.ClearField("active")
    tp = lp.transform_param
    if lp.HasField("transform_param") and tp.HasField("color_order") and tp.color_order == tp.BGR:
        tp.ClearField("color_order")
    if lp.HasField("transform_param") and not tp.ListFields():
        lp.ClearField("transform_param")
    norm = lp.normalization2_param
    if lp.HasField("normalization2_param") and norm.HasField("esp"):
        if not norm.HasField("eps"):
            norm.eps = norm.esp
        norm.ClearField("esp")


def port_net(param: caffe_pb2.NetParameter, data: Optional[Dict[str, str]] = None, source: str = "<net>",
             bad_types: Optional[dict] = None, problems: Optional[list] = None) -> caffe_pb2.NetParameter:
    """The ported copy of ``param``; raises one PcnError naming every unsupported type and field."""
    bad_types = dict(bad_types or {})
    problems = list(problems or [])
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    # V1 and input fields first, so that the layer checks below see current layers.
    try:
        out = upgrade._upgrade_format(out)
    except NetError as e:
        problems.append(str(e))
    for lp in out.layer:
        if not bad_types or all(lp.name not in names for names in bad_types.values()):
            reason = upgrade.type_problem(lp)
            if reason is not None:
                bad_types.setdefault(reason, []).append(lp.name)
    refused = {name for names in bad_types.values() for name in names}
    buildable = caffe_pb2.NetParameter()
    buildable.CopyFrom(out)
    del buildable.layer[:]
    buildable.layer.extend(lp for lp in out.layer if lp.name not in refused)
    try:
        _imagedb_to_lmdb(buildable, data or {})
    except PcnError as e:
        problems.append(str(e))
    try:
        if not bad_types and not problems:
            buildable = upgrade.upgrade_net(buildable)
        else:
            upgrade.upgrade_net(buildable)   # only to collect its refusals
    except NetError as e:
        problems.append(str(e))
    upgrade.raise_problems(source, bad_types, problems)
    for lp in buildable.layer:
        _freeze(lp)
        _clean_mycaffe_layer(lp)
    for name in upgrade._NET_FIELDS:
        buildable.ClearField(name)
    return buildable


# ----------------------------------------------------------------------------------------------------
# solvers
# ----------------------------------------------------------------------------------------------------

def upgrade_solver(param: caffe_pb2.SolverParameter) -> caffe_pb2.SolverParameter:
    """Caffe's UpgradeSolverAsNeeded: the ``solver_type`` enum becomes the ``type`` string."""
    from .solvers.solver import _LEGACY_TYPES

    out = caffe_pb2.SolverParameter()
    out.CopyFrom(param)
    if out.HasField("solver_type"):
        if out.HasField("type") and out.type != _LEGACY_TYPES[out.solver_type]:
            raise PcnError("solver: solver_type %s contradicts type %r; give one of them"
                           % (caffe_pb2.SolverParameter.SolverType.Name(out.solver_type), out.type))
        out.type = _LEGACY_TYPES[out.solver_type]
        out.ClearField("solver_type")
    return out


def port_solver(param: caffe_pb2.SolverParameter, mycaffe: bool, source: str = "<solver>",
                problems: Optional[list] = None) -> caffe_pb2.SolverParameter:
    """The ported copy of a solver; a MyCaffe solver gets MyCaffe's defaults written out."""
    problems = list(problems or [])
    out = upgrade_solver(param)
    if mycaffe:
        problems.extend("%s: %s" % (source, p) for p in upgrade.upgrade_mycaffe_solver(out))
    for name, default in (("eval_type", "classification"), ("ap_version", "Integral"),
                          ("show_per_class_result", False)):
        value = getattr(out, name)
        if out.HasField(name) and (value == default or (isinstance(value, str) and value.lower() == default.lower())):
            out.ClearField(name)   # SSD-Caffe's detection settings at their classification defaults
    upgrade.raise_problems(source, {}, problems)
    return out


# ----------------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------------

def port_file(path: str, data: Optional[Dict[str, str]] = None):
    """(kind, ported message) for the net or solver file ``path``."""
    text = prototxt._read_bytes(path, "prototxt file").decode("utf-8-sig", errors="replace")
    kind = file_kind(text, path)
    if kind == "solver":
        msg, used_dialect, _, problems = _read(path, caffe_pb2.SolverParameter())
        return kind, port_solver(msg, used_dialect, path, problems)
    msg, _, bad_types, problems = _read(path, caffe_pb2.NetParameter())
    return kind, port_net(msg, data, path, bad_types, problems)


def upgrade_file(path: str):
    """(kind, upgraded message): Caffe's upgrade_net_proto_text / upgrade_solver_proto_text."""
    text = prototxt._read_bytes(path, "prototxt file").decode("utf-8-sig", errors="replace")
    kind = file_kind(text, path)
    if kind == "solver":
        return kind, upgrade_solver(prototxt.read_text(path, caffe_pb2.SolverParameter(), "solver prototxt"))
    param = prototxt.read_text(path, caffe_pb2.NetParameter(), "net prototxt")
    if upgrade.is_mycaffe(param):
        raise PcnError("%s is a MyCaffe net; use `pcn port`, which maps MyCaffe's fields" % path)
    return kind, upgrade._upgrade_format(param)


def write_text(path: str, msg) -> None:
    """The message in protobuf's text format, written atomically."""
    prototxt.write_text(path, msg)


def run_port(in_path: str, out_path: str, data_args: Optional[List[str]] = None) -> int:
    """``pcn port``: writes the ported file; errors are PcnError (one line, exit status 2)."""
    kind, msg = port_file(in_path, parse_data_args(data_args or []))
    write_text(out_path, msg)
    log.info("ported %s %s -> %s", kind, in_path, out_path)
    return 0


def run_upgrade(in_path: str, out_path: str) -> int:
    """``pcn upgrade``: writes the upgraded file."""
    kind, msg = upgrade_file(in_path)
    write_text(out_path, msg)
    log.info("upgraded %s %s -> %s", kind, in_path, out_path)
    return 0
