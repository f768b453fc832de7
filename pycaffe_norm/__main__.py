"""``python -m pycaffe_norm`` runs the ``pcn`` command line.

``python -m`` puts the working directory first on ``sys.path``; that entry is dropped, so a Python layer module is
found exactly as ``pcn`` finds it (on ``PYTHONPATH``), never shadowed by a same-named file in the working directory.
"""
import os
import sys

from .cli import main


def _drop_working_directory() -> None:
    if not sys.path:
        return
    first = sys.path[0]
    if first in ("", os.curdir) or os.path.realpath(first) == os.path.realpath(os.getcwd()):
        del sys.path[0]


if __name__ == "__main__":
    _drop_working_directory()
    sys.exit(main())
