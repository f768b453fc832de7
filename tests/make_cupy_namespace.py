"""Writes tests/cupy_namespace.json: CuPy's public names, their kinds and parameters, and cupy.ndarray's methods.

The signature test (tests/test_gpu_namespace.py) and the fake device (tests/fake_cupy.py) read it, so they run
where CuPy is not installed. Regenerate after a CuPy upgrade: ``pip install cupy-cuda12x && python
tests/make_cupy_namespace.py`` (CuPy imports without a GPU).
"""
from __future__ import annotations

import inspect
import json
import pathlib

OUT = pathlib.Path(__file__).parent / "cupy_namespace.json"


def params(obj):
    """[[name, kind], ...] of a callable's signature, or None where Python cannot read it (Cython, C)."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    return [[p.name, p.kind.name] for p in sig.parameters.values()]


def kind(cupy, obj) -> str:
    if isinstance(obj, cupy.ufunc):
        return "ufunc"
    if inspect.ismodule(obj):
        return "module"
    if inspect.isclass(obj):
        return "class"
    return "function" if callable(obj) else "other"


def entry(cupy, obj) -> dict:
    k = kind(cupy, obj)
    e = {"kind": k}
    if k == "ufunc":
        e["nin"], e["nout"] = obj.nin, obj.nout
        e["methods"] = [m for m in ("at", "reduce", "accumulate", "outer", "reduceat") if hasattr(obj, m)]
    elif k == "function":
        e["params"] = params(obj)
    return e


def main() -> None:
    import cupy

    doc = {"version": cupy.__version__,
           "functions": {n: entry(cupy, getattr(cupy, n)) for n in sorted(dir(cupy)) if not n.startswith("_")},
           "ndarray": {n: params(getattr(cupy.ndarray, n)) if callable(getattr(cupy.ndarray, n)) else None
                       for n in sorted(dir(cupy.ndarray)) if not n.startswith("_")}}
    for sub in ("random", "linalg", "cuda"):
        mod = getattr(cupy, sub)
        doc[sub] = {n: entry(cupy, getattr(mod, n)) for n in sorted(dir(mod)) if not n.startswith("_")}
    OUT.write_text(json.dumps(doc, indent=0, sort_keys=True) + "\n")
    print("wrote %s (CuPy %s, %d names)" % (OUT, cupy.__version__, len(doc["functions"])))


if __name__ == "__main__":
    main()
