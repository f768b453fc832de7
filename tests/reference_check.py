"""The reference cases' comparison rule (tests/reference/README.md), in one place for every test that uses them.

``tol(meta, key)``: the case's tolerance for an array key (the longest matching prefix, else "default", on top of
the README's defaults); ``check(got, ref, t, key)``: ``max |g - r| / max(|r|, floor * max|r|, atol) <= rtol``
with equal shapes and finite values."""
from __future__ import annotations

import json
import pathlib

import numpy as np

REF = pathlib.Path(__file__).resolve().parent / "reference"
DEFAULT_TOLERANCE = {"rtol": 1e-4, "floor": 1e-2, "atol": 1e-7}


def load(d: pathlib.Path):
    """(case.json as a dict, data.npz as a dict of arrays) of a case folder."""
    meta = json.loads((d / "case.json").read_text())
    with np.load(d / "data.npz", allow_pickle=False) as z:
        return meta, {k: z[k] for k in z.files}


def tol(meta: dict, key: str) -> dict:
    t = dict(DEFAULT_TOLERANCE)
    t.update(meta["tolerance"].get("default", {}))
    prefixes = [p for p in meta["tolerance"] if p != "default" and key.startswith(p)]
    if prefixes:
        t.update(meta["tolerance"][max(prefixes, key=len)])
    return t


def check(got, ref, t: dict, key: str) -> None:
    g, r = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert g.shape == r.shape, (key, g.shape, r.shape)
    assert np.all(np.isfinite(g)), key
    d = np.maximum(np.abs(r), max(t["floor"] * np.abs(r).max(initial=0.0), t["atol"]))
    err = float((np.abs(g - r) / d).max(initial=0.0))
    assert err <= t["rtol"], "%s: max rel err %.2e > %.0e" % (key, err, t["rtol"])
