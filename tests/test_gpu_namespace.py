"""Every ``xp.`` function pcn calls exists in CuPy with a signature that takes the call, checked without a GPU.

The calls are read from pcn's source (``xp.f(...)``, ``blob.xp.f(...)``, ``cp.f(...)`` in the kernel glue, ``xp.f.at``,
``xp.random.f``); CuPy's namespace is CuPy itself where it is installed, else tests/cupy_namespace.json (CuPy 14.2).
"""
from __future__ import annotations

import ast
import json
import pathlib

import pytest

from pycaffe_norm import backend

ROOT = pathlib.Path(__file__).resolve().parent.parent / "pycaffe_norm"
SNAPSHOT = json.loads((pathlib.Path(__file__).parent / "cupy_namespace.json").read_text())
# names an array module is reached by in pcn's source
XP_NAMES = {"xp", "cp", "_xp"}
# ufunc keywords CuPy's ufuncs take
UFUNC_KWARGS = {"out", "casting", "dtype", "where", "order", "subok"}


def _xp_root(node: ast.AST) -> bool:
    """Whether ``node`` is an array module: ``xp``, ``cp``, ``<expr>.xp``, ``self._xp``."""
    if isinstance(node, ast.Name):
        return node.id in XP_NAMES
    return isinstance(node, ast.Attribute) and node.attr in ("xp", "_xp")


def xp_calls():
    """(file:line, dotted path after xp, positional count, keyword names, has *args/**kwargs) of every call."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        if "proto" in path.parts:
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            chain, f = [], node.func
            while isinstance(f, ast.Attribute) and not _xp_root(f):
                chain.append(f.attr)
                f = f.value
            if not _xp_root(f) or not chain:
                continue
            star = any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords)
            where = "%s:%d" % (path.relative_to(ROOT.parent), node.lineno)
            found.append((where, ".".join(reversed(chain)), len(node.args), [k.arg for k in node.keywords], star))
    return found


def _live_namespace():
    """The snapshot's layout, read from the installed CuPy (so the test follows CuPy upgrades)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("make_cupy_namespace",
                                                  pathlib.Path(__file__).parent / "make_cupy_namespace.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cupy = sys.modules["cupy"]
    doc = {"functions": {n: mod.entry(cupy, getattr(cupy, n)) for n in dir(cupy) if not n.startswith("_")}}
    for sub in ("random", "linalg", "cuda"):
        m = getattr(cupy, sub)
        doc[sub] = {n: mod.entry(cupy, getattr(m, n)) for n in dir(m) if not n.startswith("_")}
    return doc


def namespace():
    return _live_namespace() if backend.cupy_module() is not None else SNAPSHOT


def problem(ns, path: str, npos: int, keywords, star: bool):
    """Why CuPy would not take ``xp.<path>(npos positional, keywords)``, or None."""
    parts = path.split(".")
    table = ns["functions"]
    if parts[0] in ("random", "linalg", "cuda") and len(parts) > 1:
        table, parts = ns[parts[0]], parts[1:]
    entry = table.get(parts[0])
    if entry is None:
        return "CuPy has no %s" % path
    if entry["kind"] == "ufunc":
        if len(parts) > 1:
            return None if parts[1] in entry["methods"] else "CuPy's %s has no .%s" % (parts[0], parts[1])
        if npos > entry["nin"] + entry["nout"]:
            return "%d positional arguments for a ufunc of %d inputs" % (npos, entry["nin"])
        bad = set(keywords) - UFUNC_KWARGS
        return "keywords %s not taken by CuPy's ufunc" % sorted(bad) if bad else None
    if len(parts) > 1:  # a class's method (cuda.Device(...).use is called on the result, not reached here)
        return None
    params = entry.get("params")
    if params is None or star:
        return None
    kinds = {name: kind for name, kind in params}
    positional = [n for n, k in params if k in ("POSITIONAL_ONLY", "POSITIONAL_OR_KEYWORD")]
    if npos > len(positional) and "VAR_POSITIONAL" not in kinds.values():
        return "%d positional arguments, CuPy's %s takes %d" % (npos, path, len(positional))
    if "VAR_KEYWORD" not in kinds.values():
        bad = [k for k in keywords if k not in kinds or kinds[k] in ("POSITIONAL_ONLY", "VAR_POSITIONAL")]
        if bad:
            return "keywords %s not in CuPy's %s%s" % (bad, path, tuple(n for n, _ in params))
    return None


def test_the_source_has_xp_calls():
    calls = xp_calls()
    names = {c[1] for c in calls}
    assert len(calls) > 200 and {"matmul", "where", "add.at", "random.random_sample", "RawModule"} <= names


def test_every_xp_call_is_taken_by_cupy():
    ns = namespace()
    bad = ["%s: xp.%s: %s" % (where, path, why) for where, path, npos, kws, star in xp_calls()
           if (why := problem(ns, path, npos, kws, star))]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("call, reason", [
    (("nonexistent_fn", 1, [], False), "has no"),
    (("add", 4, [], False), "positional"),
    (("add", 2, ["axis"], False), "keywords"),
    (("add.nope", 0, [], False), "has no .nope"),
    (("take_along_axis", 3, ["mode"], False), "keywords"),
    (("where", 4, [], False), "positional"),
])
def test_the_check_finds_wrong_calls(call, reason):
    why = problem(SNAPSHOT, *call)
    assert why is not None and reason in why
