"""Data helpers: where data files are looked up, and the bundled MNIST digits (``data/mnist`` in the repository)."""
from .mnist import bundled_mnist_dir, write_mnist_hdf5  # noqa: F401
from .paths import add_search_dir, remove_search_dir, resolve_path, search_dirs  # noqa: F401
