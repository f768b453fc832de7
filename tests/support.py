"""Test helpers shared by the data-layer and tool tests: loading a script from tools/, writing a small LMDB."""
from __future__ import annotations

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_tool(name: str):
    """Imports ``tools/<name>.py`` (tools/ is not a package) and returns the module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / ("%s.py" % name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_lmdb(path, datums) -> str:
    """An LMDB at ``path`` holding the Datums under keys 00000000, 00000001, ... as Caffe's tools write them."""
    import lmdb

    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i, d in enumerate(datums):
            txn.put(("%08d" % i).encode(), d.SerializeToString())
    env.close()
    return str(path)
