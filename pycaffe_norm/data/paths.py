"""How pcn finds data files named by relative paths.

Caffe opens a relative path against the working directory, and so does pcn first. When that fails pcn also
tries the directory of the file that named the path (an HDF5 list file, or a solver / net prototxt registered
with :func:`add_search_dir`) and that directory's parents, nearest first, and then the parents of the working
directory. So ``data/mnist/train_list.txt`` in ``models/lenet/lenet_train_test.prototxt`` works from the
repository root (as in Caffe) and from ``models/lenet`` alike.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterable, Iterator, List, Optional

_search_dirs: List[str] = []


def add_search_dir(directory: str) -> None:
    """Registers ``directory`` (e.g. the solver file's folder) as a place to look for relative data paths."""
    directory = os.path.abspath(os.fspath(directory))
    if directory not in _search_dirs:
        _search_dirs.append(directory)


def remove_search_dir(directory: str) -> None:
    directory = os.path.abspath(os.fspath(directory))
    if directory in _search_dirs:
        _search_dirs.remove(directory)


@contextlib.contextmanager
def search_dirs(*directories: str) -> Iterator[None]:
    """Registers ``directories`` for the duration of a ``with`` block (the CLI wraps a command in it)."""
    added = [os.path.abspath(os.fspath(d)) for d in directories]
    added = [d for d in added if d not in _search_dirs]
    _search_dirs.extend(added)
    try:
        yield
    finally:
        for d in added:
            if d in _search_dirs:
                _search_dirs.remove(d)


def _ancestors(directory: str) -> Iterator[str]:
    directory = os.path.dirname(directory)
    while True:
        yield directory
        parent = os.path.dirname(directory)
        if parent == directory:
            return
        directory = parent


def candidates(path: str, anchors: Iterable[str] = ()) -> List[str]:
    """Where a relative ``path`` is looked for, in order (an absolute path only where it says)."""
    path = os.fspath(path)
    if os.path.isabs(path):
        return [path]
    bases = [os.getcwd()] + [os.path.abspath(a) for a in anchors] + list(_search_dirs)
    order: List[str] = []
    for base in bases:
        if base not in order:
            order.append(base)
    for base in list(order):
        for parent in _ancestors(base):
            if parent not in order:
                order.append(parent)
    return [os.path.join(base, path) for base in order]


def resolve_path(path: str, anchors: Iterable[str] = ()) -> Optional[str]:
    """The first existing file among :func:`candidates`, or None. The working directory comes first, as in Caffe."""
    path = os.fspath(path)
    if not os.path.isabs(path) and os.path.isfile(path):
        return path
    for c in candidates(path, anchors):
        if os.path.isfile(c):
            return c
    return None
