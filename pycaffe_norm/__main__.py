"""``python -m pycaffe_norm`` runs the ``pcn`` command line."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
